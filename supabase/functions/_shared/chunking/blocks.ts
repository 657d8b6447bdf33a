// The blocks of a text, for both splitters: paragraphs (blank-line
// separated), fenced code blocks and headings, read as CommonMark reads them
// where it matters for chunking. The text has LF line ends (split.ts
// normalises them first).
//
// - Fences: three or more backticks or tildes, indented 0-3 spaces, or 0-3
//   spaces past the content column of the list item they sit in (a fence in
//   "1. Step:" is indented 3, one in a nested item more). A backtick fence's
//   info string has no backtick. It closes at a line of the same character,
//   at least as long, with nothing but spaces after; at a line indented less
//   than its list item's content (the item has ended); or at the end of the
//   text. Nothing inside a fence is a heading or a paragraph break.
// - Headings: ATX (`#` to `######` indented 0-3 spaces, then a space, a tab
//   or the line end) and setext (a paragraph underlined with `=` for level 1
//   or `-` for level 2; not a list item's or a table's).
// - Whatever else is text: a block runs to the next blank line, heading or
//   fence. Blank lines stay with the block before them; leading blank lines
//   with the first block.
//
// Blocks are contiguous and cover the text. A heading's label is its level's
// `#`s and its title ("## Install"), as the markdown splitter's heading path
// shows it.
import type { Span } from "./units.ts";

export interface Block extends Span {
  kind: "text" | "fence" | "heading";
  /** A heading's level (1-6) and label ("## Install"). */
  heading?: { level: number; label: string };
}

const ATX = /^ {0,3}(#{1,6})(?:[ \t]|$)/;
const SETEXT = /^ {0,3}(=+|-+)[ \t]*$/;
const FENCE = /^(`{3,}|~{3,})(.*)$/;
/** A list item's marker and the spaces after it: its content column is their length. */
const LIST_ITEM = /^( *)([-+*]|\d{1,9}[.)])( {1,4}(?=\S)|[ \t]*$)/;

interface Fence {
  char: string;
  length: number;
  /** Content column of the list item it is in (0 outside lists). */
  base: number;
}

/** The blocks of `text` (LF line ends), covering it in order. */
export function parseBlocks(text: string): Block[] {
  const blocks: Block[] = [];
  let start = 0;
  let kind: Block["kind"] = "text";
  let heading: Block["heading"];
  // The current paragraph: where it starts, and whether it can become a setext heading.
  let paragraph: { start: number; plain: boolean } | null = null;
  let fence: Fence | null = null;
  let blank = true;
  /** Content columns of the list items the current line may continue. */
  let lists: number[] = [];
  const cut = (at: number, next: Block["kind"]) => {
    // Leading blank lines stay with the first block.
    if (at > start && (blocks.length > 0 || text.slice(start, at).trim() !== "")) {
      blocks.push({ start, end: at, kind, ...(heading ? { heading } : {}) });
      start = at;
    }
    kind = next;
    heading = undefined;
  };

  for (let lineStart = 0; lineStart < text.length;) {
    const newline = text.indexOf("\n", lineStart);
    const lineEnd = newline < 0 ? text.length : newline + 1;
    const content = text.slice(lineStart, newline < 0 ? text.length : newline);
    const at = lineStart;
    lineStart = lineEnd;
    const isBlank = content.trim() === "";
    const indent = isBlank ? 0 : indentOf(content);

    if (fence) {
      // A line indented less than the fence's list item ends the item, and the fence.
      if (isBlank || fence.base === 0 || indent >= fence.base) {
        if (!isBlank && closes(content, indent, fence)) {
          fence = null;
          blank = true; // what follows the closing fence is a new block
        }
        continue;
      }
      fence = null;
      blank = true;
    }
    if (isBlank) {
      blank = true;
      paragraph = null;
      continue;
    }
    if (blank) lists = lists.filter((column) => column <= indent);
    const item = content.match(LIST_ITEM);
    let base = 0;
    for (const column of lists) if (column <= indent) base = Math.max(base, column);
    // A fence may open a list item's content ("- ```js") or sit at the item's column.
    let fenceAt: { column: number; base: number } | null = null;
    if (item) {
      // An item with nothing after its marker: its content starts a column later.
      const column = item[3].length === 0 ? item[0].length + 1 : item[0].length;
      lists = [...lists.filter((c) => c <= item[1].length), column];
      if (FENCE.test(content.slice(item[0].length))) {
        fenceAt = { column: item[0].length, base: column };
      }
    } else if (indent - base <= 3) fenceAt = { column: indent, base };
    const open = fenceAt && opensFence(content.slice(fenceAt.column));

    if (!item && paragraph?.plain && !blank && SETEXT.test(content)) {
      // The paragraph above becomes a heading of level 1 (=) or 2 (-).
      const level = content.trim()[0] === "=" ? 1 : 2;
      const title = text.slice(paragraph.start, at).trim().replace(/\s*\n\s*/g, " ");
      kind = "heading";
      heading = { level, label: `${"#".repeat(level)} ${title}` };
      paragraph = null;
      blank = true;
      continue;
    }
    const atx = indent <= 3 && !item ? content.match(ATX) : null;
    if (atx) {
      cut(at, "heading");
      const title = headingTitle(content.slice(atx[0].length));
      heading = { level: atx[1].length, label: title ? `${atx[1]} ${title}` : atx[1] };
      lists = [];
      paragraph = null;
      blank = true; // the heading line is a block of its own
      continue;
    }
    if (open && fenceAt) {
      cut(at, "fence");
      fence = { ...open, base: fenceAt.base };
      paragraph = null;
      blank = false;
      continue;
    }
    if (blank) {
      cut(at, "text");
      paragraph = { start: at, plain: !item && !content.includes("|") };
    } else if (!paragraph) paragraph = { start: at, plain: false };
    blank = false;
  }
  cut(text.length, "text");
  if (blocks.length === 0) blocks.push({ start: 0, end: text.length, kind: "text" });
  return blocks;
}

/** Columns of leading white space (a tab to the next multiple of 4). */
function indentOf(line: string): number {
  let column = 0;
  for (const ch of line) {
    if (ch === " ") column++;
    else if (ch === "\t") column += 4 - (column % 4);
    else break;
  }
  return column;
}

/** The fence `rest` (a line from its first non-space) opens, if any. */
function opensFence(rest: string): { char: string; length: number } | null {
  const match = rest.trimStart().match(FENCE);
  if (!match || rest.length - rest.trimStart().length > 3) return null;
  // A backtick fence's info string has no backtick (else it is inline code).
  if (match[1][0] === "`" && match[2].includes("`")) return null;
  return { char: match[1][0], length: match[1].length };
}

function closes(content: string, indent: number, fence: Fence): boolean {
  if (indent - fence.base > 3) return false;
  const rest = content.trim();
  return rest.length >= fence.length && rest.split("").every((ch) => ch === fence.char);
}

/**
 * An ATX heading's title: the rest of its line, trimmed, without a closing
 * sequence of `#`s (one that stands alone or follows a space). Scanned by
 * hand: a heading line can be very long.
 */
function headingTitle(rest: string): string {
  const title = rest.trim();
  let end = title.length;
  while (end > 0 && title[end - 1] === "#") end--;
  if (end === 0) return "";
  if (end < title.length && (title[end - 1] === " " || title[end - 1] === "\t")) {
    return title.slice(0, end).trim();
  }
  return title;
}
