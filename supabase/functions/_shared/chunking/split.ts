// Splitting a row's text into the chunks a chunked target embeds: the
// public entry of the chunking modules. Pure functions, no I/O.
//
// Splitters: `recursive` (default) cuts at paragraphs, then lines,
// sentences, words and grapheme clusters, with content-defined boundaries
// (recursive.ts); `markdown` first cuts at ATX headings and puts the heading
// path before each chunk, keeping fenced code whole (markdown.ts); `none`
// gives the whole text as one chunk.
//
// Every chunk's `text` is `source.slice(start, end)`, after a heading-path
// line for the markdown splitter. The spans cover the whole source in
// order; a span repeats at most chunkOverlap tokens (whole units) from the
// end of the one before. No chunk has more than chunkSize tokens by the
// counter given, unless one indivisible unit (a grapheme cluster, or for
// `none` the text) alone has more: that chunk is marked `oversize`. A text
// that is empty or only whitespace has no chunks (there is nothing to embed,
// as for an empty whole-row text).
//
// A long text may be split in portions (splitPortion): each stops where its
// caller says (a CPU budget), after a segment or a markdown section, and the
// next resumes there; together they give exactly the chunks of one pass.
import { LARGEST_INPUT_TOKENS } from "../providers/registry.ts";
import type { TokenCounter } from "../providers/tokens.ts";
import { headingPrefix, markdownSections } from "./markdown.ts";
import { packBlocks, type PackResume } from "./recursive.ts";
import { paragraphs } from "./units.ts";

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
 * default its start) on. With `stop`, asked after each segment or markdown
 * section (never before the first of the portion) with the number of chunks
 * of the portion so far, it stops there when told and says where to resume.
 * Portions resumed one after the other give exactly the chunks of
 * splitIntoChunks; `none` is never cut.
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
  const { from, stop } = options;
  switch (settings.splitter) {
    case "none": {
      const tokens = counter.count(text);
      return {
        chunks: [{ text, start: 0, end: text.length, tokens, oversize: tokens > chunkSize }],
        next: null,
      };
    }
    case "recursive":
      return packBlocks(text, paragraphs(text, { start: from?.at ?? 0, end: text.length }), {
        chunkSize,
        chunkOverlap,
        counter,
        resume: from,
        stop,
      });
    case "markdown": {
      // A heading path may take at most a quarter of a chunk: outer headings
      // are dropped first.
      const maxPrefix = Math.floor(chunkSize / 4);
      const chunks: TextChunk[] = [];
      const sections = markdownSections(text).filter((section) => section.end > (from?.at ?? 0));
      for (const [i, section] of sections.entries()) {
        const shortened = (start: number) => {
          let line = headingPrefix(section, start);
          for (let drop = 1; line && counter.count(line) > maxPrefix; drop++) {
            line = headingPrefix({ ...section, path: section.path.slice(drop) }, start);
          }
          return line;
        };
        const first = shortened(section.start);
        const rest = shortened(-1);
        // A section resumed inside continues with its blocks from there.
        const inside = from && i === 0 && from.at > section.start ? from : undefined;
        const portion = packBlocks(
          text,
          inside ? section.blocks.filter((b) => b.start >= inside.at) : section.blocks,
          {
            chunkSize,
            chunkOverlap,
            counter,
            prefix: (start) => (start === section.start ? first : rest),
            // Shortening can leave a section's first line longer than the rest's.
            longestPrefix: counter.count(first) > counter.count(rest) ? first : rest,
            resume: inside,
            stop: stop && ((packed) => stop(chunks.length + packed)),
          },
        );
        chunks.push(...portion.chunks);
        if (portion.next) return { chunks, next: portion.next };
        // Sections share no overlap: the next one starts afresh.
        if (i + 1 < sections.length && chunks.length > 0 && stop?.(chunks.length)) {
          return { chunks, next: { at: section.end, start: section.end } };
        }
      }
      return { chunks, next: null };
    }
  }
}
