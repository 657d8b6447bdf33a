// Packing blocks (paragraphs, or markdown blocks) into chunks of at most
// chunkSize tokens with content-defined boundaries, so that editing one part
// of a long text changes only the chunks around the edit.
//
// 1. Atoms: a block over the budget is cut at lines, then sentences, words,
//    grapheme clusters, until every piece fits (a single grapheme cluster
//    that does not is "oversize").
// 2. Segments: the text is always cut after a block whose strength
//    (tokens / hash of its first 64 characters) is over budget / 2³³, i.e.
//    with probability 2·tokens/budget: about every budget/2 tokens. Whether
//    a block ends a segment depends on that block alone, so segments
//    resynchronise right after an edit (and an edit past a block's first
//    64 characters rarely changes the decision at all).
// 3. Inside a segment over the budget: cut at the strongest boundary, by
//    (both sides within the budget, coarsest level: paragraph, line,
//    sentence, word, grapheme; then strength), and again in each part until
//    every part fits. The cut points again depend on the text around them,
//    not on where the segment starts (unlike greedy packing, where one
//    length change moves every later boundary).
// 4. Overlap: each chunk after the first also starts with the trailing whole
//    units (atoms, else finer units) of the chunk before, at most
//    chunkOverlap tokens; bodies are packed to chunkSize - chunkOverlap so
//    the whole fits (if it still does not, the overlap is dropped).
// 5. In portions: since a segment's chunks depend on its own blocks alone
//    (and its first chunk's overlap on the body before), packing can stop
//    after any segment and resume there (PackResume) with exactly the
//    chunks a single pass gives: a long text is split across calls.
//
// Measured on generated 60-paragraph documents (tests/_support/documents.ts,
// 10 seeds, first/middle/last sentence of each paragraph edited, recursive
// and markdown at 512/64 and 128/16): one edit changed 1 to 3 chunk texts,
// except 1 edit in 7,200 that changed 4 (two segments joined when the
// edited block stopped ending one).
import type { TokenCounter } from "../providers/tokens.ts";
import { Level, type Span, unitsAt } from "./units.ts";
import { hash32 } from "../hash32.ts";

export interface Block extends Span {
  /** Split only when it alone exceeds chunkSize (a fenced code block). */
  keepWhole?: boolean;
  /** Never cut right after it unless it alone fills a chunk (a heading line). */
  keepWithNext?: boolean;
}

export interface PackedChunk extends Span {
  text: string;
  tokens: number;
  oversize: boolean;
}

export interface PackOptions {
  chunkSize: number;
  chunkOverlap: number;
  counter: TokenCounter;
  /**
   * Context put before a chunk's text (markdown heading path), given where
   * the chunk starts; `longestPrefix` is the longest it returns, used to
   * size bodies.
   */
  prefix?: (start: number) => string;
  longestPrefix?: string;
  /** Where an earlier portion stopped: `blocks` start at its `at`. */
  resume?: PackResume;
  /**
   * Asked after each segment with the chunks packed so far: true stops the
   * packing there (never before the first).
   */
  stop?: (packed: number) => boolean;
}

/**
 * Where packing stopped: the next chunk's body starts at `at` (a segment's
 * start, which is a block's), its text, with the overlap taken from the
 * body before, at `start`.
 */
export interface PackResume {
  at: number;
  start: number;
}

export interface PackedPortion {
  chunks: PackedChunk[];
  /** Where to resume; null when the blocks are done. */
  next: PackResume | null;
}

interface Atom extends Span {
  /** Level of the boundary at its end. */
  level: Level;
  /** Hash of its first characters (see startHash): ranks boundaries of the same level. */
  hash: number;
  tokens: number;
}

/**
 * Chunks covering `blocks` (contiguous spans of `text`), in order; with
 * `stop`, those of the segments packed until it said stop, and where to
 * resume.
 */
export function packBlocks(text: string, blocks: Block[], options: PackOptions): PackedPortion {
  const { chunkSize, chunkOverlap, counter } = options;
  const longestPrefix = options.longestPrefix ?? "";
  const prefixTokens = longestPrefix ? counter.count(longestPrefix) : 0;
  const budget = Math.max(1, chunkSize - chunkOverlap - prefixTokens);
  const count = (span: Span) => counter.count(text.slice(span.start, span.end));
  const fits = (span: Span) =>
    counter.count(longestPrefix + text.slice(span.start, span.end)) <= budget + prefixTokens;

  const bodies: Span[] = [];
  const atomsOf: Atom[][] = [];
  let segment: Atom[] = [];
  const endSegment = () => {
    for (const leaf of splitSegment(segment, fits, budget)) {
      bodies.push({ start: leaf[0].start, end: leaf[leaf.length - 1].end });
      atomsOf.push(leaf);
    }
    segment = [];
  };
  let next: PackResume | null = null;
  for (const [b, block] of blocks.entries()) {
    const tokens = count(block);
    const limit = block.keepWhole ? chunkSize - prefixTokens : budget;
    const blockHash = startHash(text, block);
    // A heading's boundary ranks below every other: it is cut after only
    // when nothing else is left to cut.
    const level = block.keepWithNext ? Level.Grapheme : Level.Paragraph;
    if (tokens <= limit) {
      segment.push({ start: block.start, end: block.end, level, hash: blockHash, tokens });
    } else {
      segment.push(...atomsWithin(text, block, tokens, Level.Paragraph, level, count, budget));
    }
    if (!block.keepWithNext && blockHash / 2 ** 32 < (2 * tokens) / budget) {
      endSegment();
      if (b + 1 < blocks.length && options.stop?.(bodies.length)) {
        next = {
          at: blocks[b + 1].start,
          start: overlapStart(text, atomsOf[atomsOf.length - 1], chunkOverlap, counter),
        };
        break;
      }
    }
  }
  if (segment.length > 0) endSegment();

  const chunks: PackedChunk[] = [];
  bodies.forEach((body, i) => {
    let start = i > 0
      ? overlapStart(text, atomsOf[i - 1], chunkOverlap, counter)
      : options.resume?.start ?? body.start;
    let withPrefix = true;
    for (;;) {
      const prefix = withPrefix ? options.prefix?.(start) ?? "" : "";
      const chunkText = prefix + text.slice(start, body.end);
      const tokens = counter.count(chunkText);
      // Over the size only beside one indivisible unit (or a code block that
      // fills the chunk): drop the overlap, then the context line.
      if (tokens > chunkSize && start < body.start) {
        start = body.start;
        continue;
      }
      if (tokens > chunkSize && prefix) {
        withPrefix = false;
        continue;
      }
      chunks.push({ start, end: body.end, text: chunkText, tokens, oversize: tokens > chunkSize });
      break;
    }
  });
  return { chunks, next };
}

/**
 * The atoms of `span` (of `spanTokens` tokens): its units at the level
 * below `parentLevel`, each cut further at finer levels while over
 * `budget`. The last atom's boundary is `endLevel`.
 */
function atomsWithin(
  text: string,
  span: Span,
  spanTokens: number,
  parentLevel: Level,
  endLevel: Level,
  count: (span: Span) => number,
  budget: number,
): Atom[] {
  const level = parentLevel - 1 as Level;
  const units = unitsAt(text, span, level);
  const atoms: Atom[] = [];
  units.forEach((unit, i) => {
    const unitEnd = i === units.length - 1 ? endLevel : level;
    // A span that is one unit at this level keeps its count (counting a
    // long span again is what costs).
    const tokens = units.length === 1 ? spanTokens : count(unit);
    if (level === Level.Grapheme || tokens <= budget) {
      const hash = startHash(text, unit);
      atoms.push({ ...unit, level: unitEnd, hash, tokens });
    } else atoms.push(...atomsWithin(text, unit, tokens, level, unitEnd, count, budget));
  });
  return atoms;
}

/**
 * Leaves of the segment: the whole if it fits, else both sides of its
 * strongest inner boundary (coarsest level, then highest hash of the atom
 * before it), recursively. Boundaries that leave both sides within the
 * budget (by the sum of their atoms' tokens) are preferred, so that a
 * segment just over the budget becomes two chunks, not three.
 */
function splitSegment(atoms: Atom[], fits: (span: Span) => boolean, budget: number): Atom[][] {
  if (atoms.length === 0) return [];
  const span = { start: atoms[0].start, end: atoms[atoms.length - 1].end };
  const total = atoms.reduce((sum, atom) => sum + atom.tokens, 0);
  // Far over the budget by the sum of its atoms: no need to count the span
  // (cutting is always safe; only keeping a span whole needs the exact count).
  if (atoms.length === 1 || (total <= 2 * budget && fits(span))) {
    return [atoms];
  }
  let best = 1;
  let bestKey = [-1, -1, -1];
  let left = 0;
  for (let i = 0; i < atoms.length - 1; i++) {
    left += atoms[i].tokens;
    const balanced = left <= budget && total - left <= budget ? 1 : 0;
    const key = [balanced, atoms[i].level, strength(atoms[i])];
    const order = compareKeys(key, bestKey);
    // Equal keys (repeated text, e.g. a run of one character): the one
    // nearest the middle, so that the recursion stays shallow.
    const nearer = Math.abs(i + 1 - atoms.length / 2) < Math.abs(best - atoms.length / 2);
    if (order > 0 || (order === 0 && nearer)) {
      bestKey = key;
      best = i + 1;
    }
  }
  return [
    ...splitSegment(atoms.slice(0, best), fits, budget),
    ...splitSegment(atoms.slice(best), fits, budget),
  ];
}

/**
 * How strongly a unit's end is a boundary: its share of a chunk over its
 * hash, the same ratio that makes a block end a segment when over 1.
 */
function strength(unit: { tokens: number; hash: number }): number {
  return unit.tokens / (unit.hash + 1);
}

function compareKeys(a: number[], b: number[]): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
  return 0;
}

/**
 * Where the overlap taken from the previous chunk's body (`atoms`) starts:
 * the longest run of its trailing whole atoms within `overlap` tokens, or,
 * when its last atom alone is over, the trailing whole units of that atom
 * at the finest level needed (lines, sentences, words, grapheme clusters).
 */
function overlapStart(
  text: string,
  atoms: Atom[],
  overlap: number,
  counter: TokenCounter,
): number {
  const end = atoms[atoms.length - 1].end;
  if (overlap <= 0) return end;
  // Whitespace alone is no useful context: it is not taken as overlap.
  const within = (start: number) =>
    counter.count(text.slice(start, end)) <= overlap || text.slice(start, end).trim() === "";
  const found = (start: number) => start < end && text.slice(start, end).trim() !== "";
  let start = end;
  for (let i = atoms.length - 1; i >= 0 && within(atoms[i].start); i--) start = atoms[i].start;
  if (found(start)) return start;
  let span: Span = atoms[atoms.length - 1];
  for (let level = Level.Line; level >= Level.Grapheme; level--) {
    const units = unitsAt(text, span, level);
    for (let i = units.length - 1; i >= 0 && within(units[i].start); i--) start = units[i].start;
    if (found(start)) return start;
    span = units[units.length - 1];
  }
  return end;
}

/**
 * Characters of a unit's start that its boundary ranks depend on. An edit
 * past them leaves the unit's rank (and so the cut decisions around it) as
 * they were, unless it changes the unit's size a lot.
 */
const HASHED_PREFIX = 64;

/** Hash of the first HASHED_PREFIX characters of `span`. */
function startHash(text: string, span: Span): number {
  return hash32(text.slice(span.start, Math.min(span.end, span.start + HASHED_PREFIX)));
}
