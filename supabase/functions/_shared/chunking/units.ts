// Cutting a span of a block into units at one level of the splitters: lines,
// sentences, words, then grapheme clusters (blocks.ts finds the blocks). Units are
// contiguous and cover the span: whitespace and separators stay with the
// unit before them (leading whitespace with the first unit).

/** From fine to coarse; a boundary's level is the coarsest level it separates (Paragraph: between blocks). */
export enum Level {
  Grapheme = 0,
  Word = 1,
  Sentence = 2,
  Line = 3,
  Paragraph = 4,
}

export interface Span {
  start: number;
  end: number;
}

const sentences = new Intl.Segmenter(undefined, { granularity: "sentence" });
const words = new Intl.Segmenter(undefined, { granularity: "word" });
const graphemes = new Intl.Segmenter(undefined, { granularity: "grapheme" });

/**
 * The units of `text.slice(span.start, span.end)` at `level` (one of
 * Line, Sentence, Word, Grapheme), as spans of `text`.
 */
export function unitsAt(text: string, span: Span, level: Level): Span[] {
  const part = text.slice(span.start, span.end);
  let cuts: number[];
  switch (level) {
    case Level.Paragraph:
      throw new RangeError("paragraphs are blocks (blocks.ts)");
    case Level.Line:
      cuts = cutsAfter(part, /\n/g);
      break;
    case Level.Sentence:
      cuts = segmentCuts(sentences, part, false);
      break;
    case Level.Word:
      cuts = segmentCuts(words, part, true);
      break;
    case Level.Grapheme:
      cuts = segmentCuts(graphemes, part, false);
      break;
  }
  return spansFrom(cuts, part, span.start);
}

/** Offsets (in `part`) right after each match of `separator`, excluding the ends. */
function cutsAfter(part: string, separator: RegExp): number[] {
  const cuts: number[] = [];
  for (const match of part.matchAll(separator)) {
    const end = match.index! + match[0].length;
    if (match.index! > 0 && end < part.length) cuts.push(end);
  }
  return cuts;
}

/**
 * Segment starts of `part`. For words, only starts of word-like segments
 * count (spaces and punctuation stay with the word before them).
 */
function segmentCuts(segmenter: Intl.Segmenter, part: string, wordLike: boolean): number[] {
  const cuts: number[] = [];
  let seenContent = false;
  for (const segment of segmenter.segment(part)) {
    const isWord = !wordLike || segment.isWordLike === true;
    if (segment.index > 0 && isWord && seenContent) cuts.push(segment.index);
    if (isWord && !/^\s*$/.test(segment.segment)) seenContent = true;
  }
  return cuts;
}

/** Spans between the cuts; a unit of only whitespace joins the one before it. */
function spansFrom(cuts: number[], part: string, offset: number): Span[] {
  const spans: Span[] = [];
  let start = 0;
  for (const cut of [...cuts, part.length]) {
    if (cut <= start || cut > part.length) continue;
    if (spans.length > 0 && part.slice(start, cut).trim() === "") {
      spans[spans.length - 1].end = offset + cut;
    } else {
      spans.push({ start: offset + start, end: offset + cut });
    }
    start = cut;
  }
  return spans;
}
