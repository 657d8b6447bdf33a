// Splitting a row's text into the chunks a chunked target embeds: the
// public entry of the chunking modules. Pure functions, no I/O.
//
// Splitters: `recursive` (default) and `markdown` read the text's blocks
// (paragraphs, fenced code, headings; blocks.ts) and pack them into chunks
// that fill the size asked for, cutting inside a block only when it does not
// fit, at lines, then sentences, words and grapheme clusters (pack.ts);
// `markdown` also ranks boundaries before headings first and starts each
// chunk with its heading path. `none` gives the whole text as one chunk.
//
// Line ends are normalised (CRLF and CR to LF) before splitting, so a text
// with CRLF line ends is cut where its LF version is; every chunk's `text`
// is still `source.slice(start, end)` of the text as given, after a
// heading-path line for the markdown splitter. The spans cover the whole
// source in order; a span repeats at most chunkOverlap tokens of the one
// before, and only where that one ended inside a block. No chunk has more
// than chunkSize tokens by the counter given, unless one indivisible unit (a
// grapheme cluster, or for `none` the text) alone has more: that chunk is
// marked `oversize`. A text that is empty or only whitespace has no chunks
// (there is nothing to embed, as for an empty whole-row text).
//
// A long text may be split in portions (splitPortion): each stops where its
// caller says (a CPU budget), after a chunk, and the next resumes there;
// together they give exactly the chunks of one pass.
import { LARGEST_INPUT_TOKENS } from "../providers/registry.ts";
import type { TokenCounter } from "../providers/tokens.ts";
import { parseBlocks } from "./blocks.ts";
import { pack, type PackResume } from "./pack.ts";

export type SplitterName = "recursive" | "markdown" | "none";

export interface ChunkSettings {
  splitter: SplitterName;
  chunkSize: number;
  chunkOverlap: number;
}

export interface TextChunk {
  /** Exactly the text to embed and store in the `chunk` column. */
  text: string;
  /** UTF-16 offsets of the source span this chunk covers (overlap included). */
  start: number;
  end: number;
  /** Token count of `text` by the counter used. */
  tokens: number;
  /** True only when one indivisible unit alone exceeds chunkSize. */
  oversize: boolean;
}

export const SPLITTERS: readonly SplitterName[] = ["recursive", "markdown", "none"];
export const MIN_CHUNK_SIZE = 16;
/** A chunk is one input: at most what the model with the longest inputs takes (registry.ts). */
export const MAX_CHUNK_SIZE = LARGEST_INPUT_TOKENS;

/** A message saying what is wrong with `s`, or null when the settings are usable. */
export function validateChunkSettings(s: ChunkSettings): string | null {
  if (!SPLITTERS.includes(s.splitter)) {
    return `unknown splitter ${JSON.stringify(s.splitter)}: use one of ${SPLITTERS.join(", ")}`;
  }
  if (
    !Number.isInteger(s.chunkSize) || s.chunkSize < MIN_CHUNK_SIZE || s.chunkSize > MAX_CHUNK_SIZE
  ) {
    return `chunk size must be a whole number of tokens from ${MIN_CHUNK_SIZE} to ${MAX_CHUNK_SIZE}, got ${s.chunkSize}`;
  }
  const maxOverlap = Math.floor(s.chunkSize / 2);
  if (!Number.isInteger(s.chunkOverlap) || s.chunkOverlap < 0 || s.chunkOverlap > maxOverlap) {
    return `chunk overlap must be a whole number of tokens from 0 to half the chunk size (${maxOverlap}), got ${s.chunkOverlap}`;
  }
  return null;
}

/** Where a portion of a split stopped, and the next one resumes (see PackResume). */
export type SplitResume = PackResume;

export interface SplitPortion {
  chunks: TextChunk[];
  /** Where the next portion starts; null when the text is done. */
  next: SplitResume | null;
}

/** The chunks of `text` (see the module comment); throws on invalid settings. */
export function splitIntoChunks(
  text: string,
  settings: ChunkSettings,
  counter: TokenCounter,
): TextChunk[] {
  return splitPortion(text, settings, counter).chunks;
}

/**
 * The chunks of `text` from `from` (where an earlier portion stopped; by
 * default its start) on. With `stop`, asked after each chunk (never before
 * the first of the portion) with the number of chunks of the portion so far,
 * it stops there when told and says where to resume. Portions resumed one
 * after the other give exactly the chunks of splitIntoChunks; `none` is
 * never cut.
 */
export function splitPortion(
  text: string,
  settings: ChunkSettings,
  counter: TokenCounter,
  options: { from?: SplitResume; stop?: (chunks: number) => boolean } = {},
): SplitPortion {
  const problem = validateChunkSettings(settings);
  if (problem) throw new RangeError(problem);
  if (text.trim() === "") return { chunks: [], next: null };
  const { chunkSize, chunkOverlap } = settings;
  if (settings.splitter === "none") {
    const tokens = counter.count(text);
    return {
      chunks: [{ text, start: 0, end: text.length, tokens, oversize: tokens > chunkSize }],
      next: null,
    };
  }
  const lf = withLineFeeds(text);
  const { from, stop } = options;
  // With other line ends, a chunk must fit both as split (LF) and as stored.
  const tokensOf = (prefix: string, span: { start: number; end: number }) => {
    const tokens = counter.count(prefix + lf.text.slice(span.start, span.end));
    if (lf.text === text) return tokens;
    const stored = counter.count(
      prefix + text.slice(lf.toSource(span.start), lf.toSource(span.end)),
    );
    return Math.max(tokens, stored);
  };
  const portion = pack(lf.text, parseBlocks(lf.text), {
    chunkSize,
    chunkOverlap,
    counter,
    markdown: settings.splitter === "markdown",
    tokensOf,
    resume: from && { at: lf.toText(from.at), start: lf.toText(from.start) },
    stop,
  });
  return {
    chunks: portion.chunks.map((chunk) => {
      const start = lf.toSource(chunk.start);
      const end = lf.toSource(chunk.end);
      const chunkText = chunk.prefix + text.slice(start, end);
      const tokens = counter.count(chunkText);
      return { text: chunkText, start, end, tokens, oversize: tokens > chunkSize };
    }),
    next: portion.next &&
      { at: lf.toSource(portion.next.at), start: lf.toSource(portion.next.start) },
  };
}

/**
 * `source` with CRLF and lone CR line ends as LF, and offsets both ways. An
 * offset in the LF text maps to the source offset before the CR of a CRLF
 * (cuts fall at line starts, never between CR and LF).
 */
function withLineFeeds(source: string): {
  text: string;
  toSource: (at: number) => number;
  toText: (at: number) => number;
} {
  if (!source.includes("\r")) return { text: source, toSource: (at) => at, toText: (at) => at };
  /** Offsets in the LF text of the LFs whose CR was dropped. */
  const dropped: number[] = [];
  const text = source.replace(/\r\n?/g, (match, offset: number) => {
    if (match.length === 2) dropped.push(offset - dropped.length);
    return "\n";
  });
  /** How many of `dropped` are below `at`. */
  const below = (at: number) => {
    let low = 0;
    let high = dropped.length;
    while (low < high) {
      const mid = (low + high) >> 1;
      if (dropped[mid] < at) low = mid + 1;
      else high = mid;
    }
    return low;
  };
  return {
    text,
    toSource: (at) => at + below(at),
    // A source offset past k dropped CRs is k more than its text offset.
    toText: (at) => {
      let k = below(at);
      while (k > 0 && dropped[k - 1] + k > at) k--;
      return at - k;
    },
  };
}
