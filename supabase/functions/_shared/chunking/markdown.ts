// Markdown sections and blocks for the `markdown` splitter.
//
// A section runs from an ATX heading (`#` to `######`, outside fenced code)
// to the next heading of any level; text before the first heading is a
// section with no heading. A section with nothing but its heading is joined
// to the next one, so no chunk is a bare heading. Chunks never span two
// sections.
//
// Heading path: every chunk of a section carries the headings above it, as
// one first line before the chunk's source text, the headings as written
// (closing `#`s dropped) joined by " > ", e.g. "# Guide > ## Install\n".
// Headings that the chunk's own text starts with are left out of that line
// (a section's first chunk shows its ancestors only); a chunk with nothing
// to add has no such line. Setext headings (underlined with === or ---) are
// ordinary text.
//
// Blocks: paragraphs (blank-line separated), and fenced code blocks (``` or
// ~~~, to the closing fence of the same character and at least the same
// length, or to the end of the text) as one block each, cut only when the
// block alone exceeds chunkSize.
import type { Block } from "./recursive.ts";
import type { Span } from "./units.ts";

export interface Section extends Span {
  /** Headings from the top level down to this section's own, as "## Title". */
  path: string[];
  /** Headings the section's text starts with (its own, and those of joined empty sections). */
  leading: string[];
  blocks: Block[];
}

interface Line extends Span {
  /** The line's text without its line break. */
  content: string;
}

const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const FENCE_OPEN = /^ {0,3}(`{3,}|~{3,})/;

/** The sections of a markdown text, covering it in order. */
export function markdownSections(text: string): Section[] {
  const raw: { start: number; heading?: string; blocks: Block[] }[] = [];
  const path: string[] = [];
  const paths: string[][] = [];
  let blockStart = 0;
  let fence: { char: string; length: number } | null = null;
  let blank = false;
  let current: { start: number; heading?: string; blocks: Block[] } = { start: 0, blocks: [] };
  let kind: "fence" | "heading" | "text" = "text";
  const cut = (at: number) => {
    if (at > blockStart) {
      current.blocks.push({
        start: blockStart,
        end: at,
        ...(kind === "fence"
          ? { keepWhole: true }
          : kind === "heading"
          ? { keepWithNext: true }
          : {}),
      });
    }
    blockStart = at;
    kind = "text";
  };

  for (const line of linesOf(text)) {
    const isBlank = line.content.trim() === "";
    if (fence) {
      const close = line.content.match(/^ {0,3}(`+|~+)[ \t]*$/);
      if (close && close[1][0] === fence.char && close[1].length >= fence.length) fence = null;
      continue;
    }
    if (isBlank) {
      blank = true;
      continue;
    }
    // First non-blank line after blank lines: a paragraph break.
    if (blank) cut(line.start);
    blank = false;
    const heading = line.content.match(HEADING);
    const open = line.content.match(FENCE_OPEN);
    if (heading) {
      cut(line.start);
      if (line.start > current.start || current.blocks.length > 0 || current.heading) {
        raw.push(current);
        paths.push([...path]);
      }
      const level = heading[1].length;
      const title = (heading[2] ?? "").trim();
      const label = title ? `${heading[1]} ${title}` : heading[1];
      while (path.length > 0 && levelOf(path[path.length - 1]) >= level) path.pop();
      path.push(label);
      current = { start: line.start, heading: label, blocks: [] };
      kind = "heading";
      blank = true; // the heading line is a block of its own
    } else if (
      open &&
      (open[1][0] === "~" || !line.content.slice(open.index! + open[1].length).includes("`"))
    ) {
      cut(line.start);
      kind = "fence";
      fence = { char: open[1][0], length: open[1].length };
      blank = true; // whatever follows the closing fence starts a new block
    }
  }
  cut(text.length);
  raw.push(current);
  paths.push([...path]);
  return joinEmptySections(text, raw, paths);
}

/** Sections whose text is only their heading (and blank lines) joined to the next. */
function joinEmptySections(
  text: string,
  raw: { start: number; heading?: string; blocks: Block[] }[],
  paths: string[][],
): Section[] {
  const sections: Section[] = [];
  let pending: { start: number; leading: string[]; blocks: Block[] } | null = null;
  raw.forEach((section, i) => {
    const end = i + 1 < raw.length ? raw[i + 1].start : text.length;
    const leading = [...(pending?.leading ?? []), ...(section.heading ? [section.heading] : [])];
    const blocks = [...(pending?.blocks ?? []), ...section.blocks];
    const start = pending?.start ?? section.start;
    const headingOnly = section.heading !== undefined
      ? section.blocks.length <= 1
      : text.slice(section.start, end).trim() === "";
    if (headingOnly && i + 1 < raw.length) {
      pending = { start, leading, blocks };
      return;
    }
    pending = null;
    sections.push({ start, end, path: paths[i], leading, blocks });
  });
  return sections;
}

/** The heading path line for a chunk of `section` starting at `start`. */
export function headingPrefix(section: Section, start: number): string {
  const shown = start === section.start
    ? section.path.filter((heading) => !section.leading.includes(heading))
    : section.path;
  return shown.length > 0 ? `${shown.join(" > ")}\n` : "";
}

function levelOf(label: string): number {
  return label.match(/^#+/)![0].length;
}

function* linesOf(text: string): Generator<Line> {
  let start = 0;
  while (start < text.length) {
    const newline = text.indexOf("\n", start);
    const end = newline < 0 ? text.length : newline + 1;
    yield {
      start,
      end,
      content: text.slice(start, newline < 0 ? end : newline).replace(/\r$/, ""),
    };
    start = end;
  }
}
