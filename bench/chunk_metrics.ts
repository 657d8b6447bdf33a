// What the chunking bench measures about one split of one markdown document:
// where its fenced code blocks, headings and paragraphs are, as a real
// markdown parser (markdown-it, not our splitters' own scanning) finds
// them; whether a split cuts a fence, carries a chunk's heading, leaves a
// chunk that is only headings, or loses text; where the chunks of a splitter
// that gives only texts (LangChain's) lie in the source; and the
// one-paragraph changes the bench re-splits a document after.
//
// markdown-it is a dependency of the bench only: inline, out of deno.json.
// @ts-types="npm:@types/markdown-it@14.1.2"
// deno-lint-ignore no-import-prefix
import MarkdownIt from "npm:markdown-it@15.0.3";

/** UTF-16 offsets into a document, end exclusive. */
export interface Span {
  start: number;
  end: number;
}

/** One chunk of a split: the text embedded and the source span it covers. */
export interface MeasuredChunk extends Span {
  text: string;
  tokens: number;
  oversize: boolean;
}

export interface Heading {
  /** Offset of the heading's first character that is not white space. */
  at: number;
  level: number;
  /** The title as written (markdown-it's inline source), e.g. "`pg.Pool` options". */
  title: string;
}

export interface MarkdownFacts {
  /** Fenced code blocks, fence lines included, without surrounding white space. */
  fences: Span[];
  /** Top-level headings (ATX and setext), in order. */
  headings: Heading[];
  /** Top-level paragraphs (not in lists, quotes or tables), without surrounding white space. */
  paragraphs: Span[];
}

// HTML blocks on: READMEs are full of them, and without this markdown-it
// would take them for paragraphs.
const parser = new MarkdownIt({ html: true });

/** Fences, headings and paragraphs of `text` (LF line ends) by markdown-it's block tokens. */
export function markdownFacts(text: string): MarkdownFacts {
  const lineStarts = [0];
  for (let i = text.indexOf("\n"); i >= 0; i = text.indexOf("\n", i + 1)) lineStarts.push(i + 1);
  const spanOf = (map: [number, number]): Span => {
    let start = lineStarts[map[0]];
    let end = map[1] < lineStarts.length ? lineStarts[map[1]] : text.length;
    while (start < end && /\s/.test(text[start])) start++;
    while (end > start && /\s/.test(text[end - 1])) end--;
    return { start, end };
  };
  const facts: MarkdownFacts = { fences: [], headings: [], paragraphs: [] };
  const tokens = parser.parse(text, {});
  for (const [i, token] of tokens.entries()) {
    if (!token.map) continue;
    if (token.type === "fence") facts.fences.push(spanOf(token.map));
    else if (token.level === 0 && token.type === "heading_open") {
      facts.headings.push({
        at: spanOf(token.map).start,
        level: Number(token.tag.slice(1)),
        title: tokens[i + 1].content.trim(),
      });
    } else if (token.level === 0 && token.type === "paragraph_open") {
      facts.paragraphs.push(spanOf(token.map));
    }
  }
  return facts;
}

/** Whether some chunk's source span holds all of `block`. */
export function wholeInSomeChunk(block: Span, chunks: Span[]): boolean {
  return chunks.some((c) => c.start <= block.start && block.end <= c.end);
}

/** The fences of `fences` that no one chunk holds whole. */
export function fencesCut(fences: Span[], chunks: Span[]): Span[] {
  return fences.filter((fence) => !wholeInSomeChunk(fence, chunks));
}

const ATX_HEADING = /^ {0,3}#{1,6}(?:[ \t]|$)/;
const SETEXT_UNDERLINE = /^ {0,3}(?:=+|-+)[ \t]*$/;

/**
 * Whether every non-blank line of `text` belongs to a heading: an ATX line
 * (`## Title`, which includes the markdown splitter's heading-path line) or
 * a line followed by a setext underline (`===` or `---`) and that underline.
 * Text with no line at all is not a bare heading.
 */
export function isBareHeading(text: string): boolean {
  const lines = text.split(/\r?\n/);
  let headings = 0;
  for (let i = 0; i < lines.length; i++) {
    if (lines[i].trim() === "") continue;
    if (ATX_HEADING.test(lines[i])) headings++;
    else if (i + 1 < lines.length && SETEXT_UNDERLINE.test(lines[i + 1])) {
      headings++;
      i++;
    } else return false;
  }
  return headings > 0;
}

/** The last heading at or before `at` (headings in order), or null. */
export function headingGoverning(headings: Heading[], at: number): Heading | null {
  let lo = 0;
  let hi = headings.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (headings[mid].at <= at) lo = mid + 1;
    else hi = mid;
  }
  return lo > 0 ? headings[lo - 1] : null;
}

/**
 * Whether `chunk` carries the innermost heading that governs where its
 * source text starts (its first character that is not white space): the
 * span begins with that heading, or the text before the source slice (a
 * heading-path line) contains its title. Null when no heading governs it.
 */
export function carriesHeading(
  chunk: MeasuredChunk,
  source: string,
  headings: Heading[],
): boolean | null {
  let first = chunk.start;
  while (first < chunk.end && /\s/.test(source[first])) first++;
  const heading = headingGoverning(headings, first);
  if (!heading) return null;
  if (heading.at >= chunk.start) return true;
  const span = chunk.end - chunk.start;
  const prefix = chunk.text.length > span ? chunk.text.slice(0, chunk.text.length - span) : "";
  return prefix.includes(heading.title);
}

/** Characters of `source` other than white space that no span covers. */
export function lostCharacters(source: string, spans: Span[]): number {
  const sorted = [...spans].sort((a, b) => a.start - b.start);
  let lost = 0;
  let covered = 0;
  const count = (from: number, to: number) => {
    for (let i = from; i < to; i++) if (!/\s/.test(source[i])) lost++;
  };
  for (const span of sorted) {
    if (span.start > covered) count(covered, span.start);
    covered = Math.max(covered, span.end);
  }
  count(covered, source.length);
  return lost;
}

/**
 * Where chunk texts that are verbatim slices of `source`, given in order,
 * lie: each at its first occurrence after the previous one's start (as
 * LangChain's own `createDocuments` places them) that ends past the
 * previous one's end. Every chunk of LangChain's splitters takes in text
 * past the one before, and without that second condition a short chunk
 * such as a closing fence is found inside the previous chunk. Null for a
 * text not found.
 */
export function locateChunks(source: string, texts: string[]): (Span | null)[] {
  let previous: Span = { start: -1, end: 0 };
  return texts.map((text) => {
    let at = source.indexOf(text, previous.start + 1);
    while (at >= 0 && at + text.length <= previous.end) at = source.indexOf(text, at + 1);
    if (at < 0) return null;
    previous = { start: at, end: at + text.length };
    return previous;
  });
}

/** Up to `count` items spread evenly over `items`, first and last included. */
export function spreadEvenly<T>(items: T[], count: number): T[] {
  const n = Math.min(count, items.length);
  if (n <= 0) return [];
  if (n === 1) return [items[Math.floor((items.length - 1) / 2)]];
  return Array.from({ length: n }, (_, i) => items[Math.round((i * (items.length - 1)) / (n - 1))]);
}

/** 15 words, put into the middle of a paragraph. */
export const ADDED_SENTENCE =
  "The maintainers added this sentence later to explain one more detail of the behaviour above.";
/** 60 words, put after a paragraph as a paragraph of its own. */
export const ADDED_PARAGRAPH =
  "A later revision of this page adds a paragraph here. It describes how the feature behaves " +
  "when the configuration changes while requests are still in flight, which options take " +
  "effect at once and which only after a restart, and what the logs show in each case. It " +
  "finally closes with a short note on upgrading from the previous major version.";

export type EditKind = "edit" | "insert" | "delete";

/**
 * `text` after one change to the paragraph at `paragraph`: `edit` puts
 * ADDED_SENTENCE in its middle (after the first sentence end at or past its
 * middle, else at the first space there, else at its end); `insert` puts
 * ADDED_PARAGRAPH after it; `delete` removes it and the white space up to
 * what follows.
 */
export function editParagraphAt(text: string, paragraph: Span, kind: EditKind): string {
  const { start, end } = paragraph;
  switch (kind) {
    case "edit": {
      const middle = Math.floor((start + end) / 2);
      const body = text.slice(middle, end);
      const sentenceEnd = body.search(/[.!?] /);
      if (sentenceEnd >= 0) {
        const at = middle + sentenceEnd + 2;
        return `${text.slice(0, at)}${ADDED_SENTENCE} ${text.slice(at)}`;
      }
      const space = body.indexOf(" ");
      const at = space >= 0 ? middle + space : end;
      return `${text.slice(0, at)} ${ADDED_SENTENCE}${text.slice(at)}`;
    }
    case "insert":
      return `${text.slice(0, end)}\n\n${ADDED_PARAGRAPH}${text.slice(end)}`;
    case "delete": {
      let next = end;
      while (next < text.length && /\s/.test(text[next])) next++;
      return text.slice(0, start) + text.slice(next);
    }
  }
}
