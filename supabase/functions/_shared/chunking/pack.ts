// Packing a text's blocks (blocks.ts) into chunks that fill the size asked
// for, with boundaries an edit moves only around itself.
//
// 1. Groups: a heading travels with the block after it (two headings in a
//    row with the one after them), so no chunk is a bare heading; headings
//    with nothing after them join the group before.
// 2. Atoms: a group that fits a chunk is one atom; a bigger one is cut at
//    lines, then sentences, words and grapheme clusters until every piece
//    fits (a grapheme cluster alone over the size is "oversize"), its first
//    piece small enough to carry the group's headings.
// 3. Boundaries: the end of each atom is a boundary of a level: inside a
//    block (grapheme < word < sentence < line), between blocks, and, for the
//    markdown splitter, before a heading (stronger the higher the heading).
//    Within a level, boundaries rank by a hash of the first HASHED_PREFIX
//    characters of the atom before them: the rank is the text's, not the
//    position's, and an edit past a block's first words leaves it as it was.
// 4. Anchors and filling: a boundary that ranks above every other within
//    half a chunk on both sides is an anchor (the text's ends count as
//    ranking above all). Anchors depend on the text alone. A chunk ends at
//    the next anchor when the rest up to it fits; else at the best-ranked
//    boundary that fills at least FILL of it and leaves at least half that
//    before the anchor. Every chunk chain therefore passes through every
//    anchor: an edit changes the chunks between the anchors around it (and
//    mostly just its own), never beyond.
// 5. Overlap: only where a chunk ends inside a block that had to be cut,
//    the next chunk starts with the trailing whole atoms (else finer units)
//    of that block, at most chunkOverlap tokens and never a whole chunk.
//    Between whole blocks there is none: nothing is paid twice.
// 6. Heading path (markdown): a chunk's text starts with the headings above
//    where it starts, on one line ("# Guide > ## Install\n"), leaving out
//    those its own text starts with, shortened from the top to PREFIX_SHARE
//    of the size (the nearest headings are what helps retrieval; the top of
//    the path is repeated on every chunk and costs the most). It counts
//    within the size.
// 7. Portions: a chunk depends only on where it starts and the atoms and
//    anchors after it, so packing can stop after any chunk and resume there
//    (PackResume), rebuilding atoms from half a chunk before, with exactly
//    the chunks of one pass.
//
// Sizes are packed by the sum of atoms' tokens, within a small margin of the
// size; every chunk is then counted whole, and ends at an earlier boundary in
// the rare case it is over.
//
// Measured on 415 real markdown documents (bench/corpus.ts, `deno task bench
// --only chunking`): see bench/RESULTS.md for the figures beside LangChain's.
import type { TokenCounter } from "../providers/tokens.ts";
import { hash32 } from "../hash32.ts";
import type { Block } from "./blocks.ts";
import { Level, type Span, unitsAt } from "./units.ts";

export interface PackedChunk extends Span {
  /** The heading-path line (markdown), or "". */
  prefix: string;
}

export interface PackOptions {
  chunkSize: number;
  chunkOverlap: number;
  counter: TokenCounter;
  /** Markdown: heading paths before chunks, and heading boundaries ranked above others. */
  markdown: boolean;
  /**
   * The size the chunks are checked against, given the prefix and the span:
   * split.ts counts the source text too when its line ends differ.
   */
  tokensOf?: (prefix: string, span: Span) => number;
  /** Where an earlier portion stopped. */
  resume?: PackResume;
  /** Asked after each chunk with the chunks packed so far: true stops there. */
  stop?: (packed: number) => boolean;
}

/** Where packing stopped: the next chunk's body starts at `at`, its text (with overlap) at `start`. */
export interface PackResume {
  at: number;
  start: number;
}

export interface PackedPortion {
  chunks: PackedChunk[];
  next: PackResume | null;
}

/** Between blocks; a boundary before a heading of level h ranks BLOCK + 7 - h. */
const BLOCK = Level.Paragraph;
/** Share of a chunk a boundary must fill to be a candidate (see 4). */
const FILL = 0.65;
/** Share of the size a heading-path line may take. */
const PREFIX_SHARE = 1 / 16;

interface Atom extends Span {
  tokens: number;
  /** Level of the boundary at its end. */
  level: number;
  hash: number;
  /** Index of the block it is in (a heading glued to a block is in that block). */
  block: number;
}

interface Group extends Span {
  /** Leading heading blocks, then the body block (absent: a text of only headings). */
  headings: Block[];
  body: Block | null;
  bodyIndex: number;
  /** Headings above the group's body: its ancestors' and its own. */
  pathAfter: PathEntry[];
}

interface PathEntry {
  label: string;
  level: number;
  /** The heading block's start: tells a group's own headings from its ancestors. */
  at: number;
}

/** The chunks of `text`'s `blocks` (or, with `stop`, a portion of them). */
export function pack(text: string, blocks: Block[], options: PackOptions): PackedPortion {
  const { chunkSize, chunkOverlap, counter, markdown } = options;
  const count = (span: Span) => counter.count(text.slice(span.start, span.end));
  const tokensOf = options.tokensOf ??
    ((prefix: string, span: Span) => counter.count(prefix + text.slice(span.start, span.end)));
  const margin = Math.max(1, Math.floor(chunkSize / 64));
  const groups = groupsOf(blocks);

  const lines = new Map<string, { line: string; tokens: number }>();
  /** The heading-path line of `path`, shortened from the top to PREFIX_SHARE of the size. */
  const pathLine = (path: PathEntry[]) => {
    if (!markdown || path.length === 0) return { line: "", tokens: 0 };
    const key = path.map((entry) => entry.at).join(",");
    let found = lines.get(key);
    if (!found) {
      found = { line: "", tokens: 0 };
      for (let drop = 0; drop < path.length; drop++) {
        const line = `${path.slice(drop).map((entry) => entry.label).join(" > ")}\n`;
        const tokens = counter.count(line);
        if (tokens <= Math.floor(chunkSize * PREFIX_SHARE)) {
          found = { line, tokens };
          break;
        }
      }
      lines.set(key, found);
    }
    return found;
  };
  const ownHeadings = (group: Group) => new Set(group.headings.map((h) => h.start));
  /** The prefix of a chunk starting at `start` in `group`. */
  const prefixAt = (group: Group, start: number) =>
    start === group.start
      ? pathLine(group.pathAfter.filter((entry) => !ownHeadings(group).has(entry.at)))
      : pathLine(group.pathAfter);

  // Atoms, group by group, from far enough before where this portion starts
  // that the anchors after it are those of one pass.
  const reach = Math.floor((chunkSize - margin) / 2);
  const atomsOfGroup = (g: number) => {
    const group = groups[g];
    const next = groups[g + 1];
    const endLevel = markdown && next?.headings.length
      ? BLOCK + 7 - next.headings[0].heading!.level
      : BLOCK;
    const budget = chunkSize - margin - pathLine(group.pathAfter).tokens;
    return groupAtoms(text, group, budget, endLevel, count);
  };
  const resume = options.resume;
  let from = resume ? Math.max(0, groups.findIndex((g) => g.end > resume.at)) : 0;
  const before: Atom[][] = [];
  for (let tokens = 0; resume && from > 0 && tokens < reach;) {
    before.unshift(atomsOfGroup(--from));
    tokens += before[0].reduce((sum, atom) => sum + atom.tokens, 0);
  }
  const atoms: Atom[] = before.flat();
  const groupOfAtom: Group[] = before.flatMap((made, k) => made.map(() => groups[from + k]));
  for (let g = from + before.length; g < groups.length; g++) {
    for (const atom of atomsOfGroup(g)) {
      atoms.push(atom);
      groupOfAtom.push(groups[g]);
    }
  }
  const anchor = anchorsOf(atoms, reach, from === 0);
  /** Tokens of atoms before index j, by their sums. */
  const upTo = [0];
  for (const atom of atoms) upTo.push(upTo[upTo.length - 1] + atom.tokens);

  const chunks: PackedChunk[] = [];
  let i = resume ? atoms.findIndex((atom) => atom.end > resume.at) : 0;
  let start = resume ? resume.start : 0;
  while (i < atoms.length) {
    const group = groupOfAtom[i];
    let anchorAt = i;
    while (!anchor[anchorAt]) anchorAt++;
    let withOverlap = start < atoms[i].start;
    let withPrefix = true;
    let end = -1;
    for (let limit = anchorAt + 1;;) {
      const chunkStart = withOverlap ? start : atoms[i].start;
      const prefix = withPrefix ? prefixAt(group, chunkStart).line : "";
      const fixed = (withPrefix ? prefixAt(group, chunkStart).tokens : 0) +
        (withOverlap ? count({ start: chunkStart, end: atoms[i].start }) : 0);
      end = chooseEnd(atoms, upTo, i, limit, chunkSize - margin - fixed);
      const tokens = tokensOf(prefix, { start: chunkStart, end: atoms[end].end });
      if (tokens <= chunkSize) {
        chunks.push({ start: chunkStart, end: atoms[end].end, prefix });
        break;
      }
      // Over by the exact count: an earlier end, then no overlap, then no prefix.
      if (end > i) limit = end;
      else if (withOverlap) withOverlap = false;
      else if (withPrefix && prefix) withPrefix = false;
      else {
        chunks.push({ start: chunkStart, end: atoms[end].end, prefix }); // one indivisible unit
        break;
      }
    }
    const last = atoms[end];
    const earliest = i + 1; // the overlap never repeats a whole chunk
    i = end + 1;
    if (i >= atoms.length) break;
    start = last.level < BLOCK && atoms[i].block === last.block
      ? overlapStart(text, atoms, i, earliest, chunkOverlap, counter)
      : atoms[i].start;
    if (options.stop?.(chunks.length)) {
      return { chunks, next: { at: atoms[i].start, start } };
    }
  }
  return { chunks, next: null };
}

/**
 * Anchors: the ends of atoms whose boundary ranks above every other within
 * `reach` tokens on both sides, and the end of the last atom. The text's
 * start (when `atoms` start there) and end rank above every boundary but a
 * heading's, so no anchor but one before a heading is within reach of them
 * (the last section of a markdown text ends a chunk, however small). Anchors
 * do not depend on where chunks start, and every chunk that can reach one
 * ends there (see 4).
 */
function anchorsOf(atoms: Atom[], reach: number, fromTextStart: boolean): boolean[] {
  const last = atoms.length - 1;
  const edge = (BLOCK + 1) * 2 ** 32 - 1;
  const rank = (j: number) => j < last ? atoms[j].level * 2 ** 32 + atoms[j].hash : edge;
  const at: number[] = [];
  let sum = 0;
  for (const atom of atoms) at.push(sum += atom.tokens);
  /** For each j, the highest rank of the boundaries within reach on one side. */
  const highest = (order: number[], textEdge: number) => {
    const result = new Array<number>(atoms.length).fill(-1);
    const window: number[] = []; // indexes, ranks decreasing
    for (const j of order) {
      while (window.length > 0 && Math.abs(at[j] - at[window[0]]) > reach) window.shift();
      result[j] = window.length > 0
        ? rank(window[0])
        : Math.abs(at[j] - textEdge) <= reach
        ? edge
        : -1;
      while (window.length > 0 && rank(window[window.length - 1]) <= rank(j)) window.pop();
      window.push(j);
    }
    return result;
  };
  const forward = atoms.map((_, j) => j);
  const left = highest(forward, fromTextStart ? 0 : -Infinity);
  const right = highest(forward.reverse(), Infinity);
  return atoms.map((_, j) => j === last || (rank(j) > left[j] && rank(j) > right[j]));
}

/**
 * The index of the atom a chunk from atom `i` ends with, the next anchor
 * being atom `limit - 1`, within `room` tokens by the sums (see 4): the
 * anchor if the rest fits; else the best-ranked boundary that fills at least
 * FILL of the room and leaves at least half that to the anchor; failing
 * that (big atoms), as full as it fits.
 */
function chooseEnd(atoms: Atom[], upTo: number[], i: number, limit: number, room: number): number {
  const base = upTo[i];
  const rest = upTo[limit] - base;
  if (rest <= room) return limit - 1;
  const least = FILL * room;
  let best = -1;
  let last = i;
  for (let j = i; j < limit - 1; j++) {
    const filled = upTo[j + 1] - base;
    if (filled > room) break;
    last = j;
    const even = filled >= least && rest - filled >= least / 2;
    if (even && (best < 0 || ranksAbove(atoms[j], atoms[best]))) best = j;
  }
  return best >= 0 ? best : last;
}

function ranksAbove(a: Atom, b: Atom): boolean {
  return a.level > b.level || (a.level === b.level && a.hash > b.hash);
}

/** Headings with the block after them; trailing headings with the group before. */
function groupsOf(blocks: Block[]): Group[] {
  const groups: Group[] = [];
  const path: PathEntry[] = [];
  let pending: Block[] = [];
  blocks.forEach((block, index) => {
    if (block.kind === "heading") {
      pending.push(block);
      const { level, label } = block.heading!;
      while (path.length > 0 && path[path.length - 1].level >= level) path.pop();
      path.push({ label, level, at: block.start });
      return;
    }
    groups.push({
      start: pending[0]?.start ?? block.start,
      end: block.end,
      headings: pending,
      body: block,
      bodyIndex: index,
      pathAfter: [...path],
    });
    pending = [];
  });
  if (pending.length > 0) {
    const last = groups[groups.length - 1];
    if (last) last.end = pending[pending.length - 1].end;
    else {
      groups.push({
        start: pending[0].start,
        end: pending[pending.length - 1].end,
        headings: [],
        body: null,
        bodyIndex: blocks.length - 1,
        pathAfter: [],
      });
    }
  }
  return groups;
}

/** The atoms of `group` (see 2); the last one's boundary is `endLevel`. */
function groupAtoms(
  text: string,
  group: Group,
  budget: number,
  endLevel: number,
  count: (span: Span) => number,
): Atom[] {
  const block = group.bodyIndex;
  const atom = (span: Span, tokens: number, level: number): Atom => ({
    ...span,
    tokens,
    level,
    hash: startHash(text, span),
    block,
  });
  const bodyStart = group.body?.start ?? group.start;
  const bodyEnd = group.body?.end ?? group.end;
  const headTokens = bodyStart > group.start ? count({ start: group.start, end: bodyStart }) : 0;
  const tailTokens = group.end > bodyEnd ? count({ start: bodyEnd, end: group.end }) : 0;
  // Headings too long to carry (over half a chunk) are cut like text.
  const head = headTokens > 0 && headTokens <= budget / 2 ? headTokens : 0;
  const tail = tailTokens > 0 && tailTokens <= budget / 2 ? tailTokens : 0;
  const span = {
    start: head ? bodyStart : group.start,
    end: tail || group.end === bodyEnd ? bodyEnd : group.end,
  };
  const tokens = count(span);
  const atoms = tokens <= budget - head - tail
    ? [atom(span, tokens, endLevel)]
    : atomsWithin(text, span, tokens, BLOCK, endLevel, count, { budget, head, tail }, atom);
  if (head) {
    const first = atoms[0];
    atoms[0] = atom({ start: group.start, end: first.end }, head + first.tokens, first.level);
  }
  // Headings at the end of the text, after the body: with its last atom.
  if (tail) {
    const last = atoms[atoms.length - 1];
    atoms[atoms.length - 1] = atom(
      { start: last.start, end: group.end },
      last.tokens + tail,
      last.level,
    );
  }
  return atoms;
}

/**
 * The atoms of `span` (of `spanTokens` tokens): its units at the level below
 * `parentLevel`, each cut further at finer levels while over `budget` (less
 * the `head` tokens the first will carry and the `tail` tokens the last
 * will). The last atom's boundary is `endLevel`.
 */
function atomsWithin(
  text: string,
  span: Span,
  spanTokens: number,
  parentLevel: Level,
  endLevel: number,
  count: (span: Span) => number,
  sizes: { budget: number; head: number; tail: number },
  atom: (span: Span, tokens: number, level: number) => Atom,
): Atom[] {
  const level = parentLevel - 1 as Level;
  const units = unitsAt(text, span, level);
  const atoms: Atom[] = [];
  units.forEach((unit, i) => {
    const last = i === units.length - 1;
    const unitEnd = last ? endLevel : level;
    // A span that is one unit at this level keeps its count (counting a long
    // span again is what costs).
    const tokens = units.length === 1 ? spanTokens : count(unit);
    const inner = {
      budget: sizes.budget,
      head: i === 0 ? sizes.head : 0,
      tail: last ? sizes.tail : 0,
    };
    if (level === Level.Grapheme || tokens <= inner.budget - inner.head - inner.tail) {
      atoms.push(atom(unit, tokens, unitEnd));
    } else atoms.push(...atomsWithin(text, unit, tokens, level, unitEnd, count, inner, atom));
  });
  return atoms;
}

/**
 * Where the next chunk's overlap starts, the chunk before having ended right
 * before atom `i` inside a block: the longest run of the block's trailing
 * whole atoms (from atom `earliest` on) within `overlap` tokens, or when the
 * last alone is over, the trailing whole units of that atom at the finest
 * level needed (not all of it).
 */
function overlapStart(
  text: string,
  atoms: Atom[],
  i: number,
  earliest: number,
  overlap: number,
  counter: TokenCounter,
): number {
  const end = atoms[i].start;
  if (overlap <= 0) return end;
  // Whitespace alone is no useful context: it is not taken as overlap.
  const within = (start: number) =>
    counter.count(text.slice(start, end)) <= overlap || text.slice(start, end).trim() === "";
  const found = (start: number) => start < end && text.slice(start, end).trim() !== "";
  let start = end;
  for (
    let k = i - 1;
    k >= earliest && atoms[k].block === atoms[i].block && within(atoms[k].start);
    k--
  ) start = atoms[k].start;
  if (found(start)) return start;
  let span: Span = atoms[i - 1];
  for (let level = Level.Line; level >= Level.Grapheme; level--) {
    const units = unitsAt(text, span, level);
    for (let k = units.length - 1; k >= 1 && within(units[k].start); k--) start = units[k].start;
    if (found(start)) return start;
    span = units[units.length - 1];
  }
  return end;
}

/**
 * Characters of an atom's start that its boundary's rank depends on: an edit
 * past them leaves the rank as it was.
 */
const HASHED_PREFIX = 24;

function startHash(text: string, span: Span): number {
  return hash32(text.slice(span.start, Math.min(span.end, span.start + HASHED_PREFIX)));
}
