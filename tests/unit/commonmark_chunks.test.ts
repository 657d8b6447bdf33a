// The splitters read markdown as CommonMark does where it matters for
// chunks: fences indented 0-3 spaces or at a list item's content column,
// closing-fence rules, ATX and setext headings; no chunk is only headings;
// CRLF and LF give the same boundaries, chunk texts stay exact slices.
import assert from "node:assert/strict";
import { type Block, parseBlocks } from "../../supabase/functions/_shared/chunking/blocks.ts";
import {
  type ChunkSettings,
  splitIntoChunks,
  type SplitterName,
} from "../../supabase/functions/_shared/chunking/split.ts";
import { tokenCounterFor } from "../../supabase/functions/_shared/providers/tokens.ts";
import { makeDocument } from "../../devtools/documents.ts";

const cl100k = tokenCounterFor("text-embedding-3-small");

const kinds = (text: string) => parseBlocks(text).map((b) => b.kind);
const fenceText = (text: string, blocks: Block[]) =>
  blocks.filter((b) => b.kind === "fence").map((b) => text.slice(b.start, b.end));
const headings = (text: string) =>
  parseBlocks(text).filter((b) => b.kind === "heading").map((b) => b.heading!.label);

Deno.test("fences indented 0-3 spaces are fences; 4 spaces is indented code", () => {
  for (const indent of ["", " ", "  ", "   "]) {
    const text =
      `Intro.\n\n${indent}\`\`\`sh\n${indent}# install it\n${indent}npm i\n${indent}\`\`\`\n\nAfter.\n`;
    assert.deepEqual(kinds(text), ["text", "fence", "text"], JSON.stringify(indent));
    assert.deepEqual(headings(text), [], "a # line inside is not a heading");
  }
  const code = "Intro.\n\n    ```sh\n    # comment\n    ```\n\nAfter.\n";
  assert.deepEqual(kinds(code), ["text", "text", "text"]);
  assert.deepEqual(headings(code), []);
});

Deno.test("fences inside list items sit at the item's content column", () => {
  const text = [
    "1. Install:",
    "",
    "   ```sh",
    "   # a comment, not a heading",
    "   npm install",
    "",
    "   npm test",
    "   ```",
    "",
    "   - Nested:",
    "",
    "     ~~~~js",
    "     # still code",
    "     ~~~",
    "     ~~~~",
    "",
    "2. Next step.",
    "",
  ].join("\n");
  const blocks = parseBlocks(text);
  assert.deepEqual(headings(text), []);
  const fences = fenceText(text, blocks);
  assert.equal(fences.length, 2, JSON.stringify(blocks));
  assert.match(fences[0], /npm install\n\n {3}npm test\n {3}```\n/, "the blank line inside stays");
  assert.match(
    fences[1],
    /~~~~js\n.*# still code\n {5}~~~\n {5}~~~~\n/,
    "a shorter run does not close",
  );
  // A fence opening on the item's own line.
  assert.deepEqual(kinds("- ```js\n  # code\n  ```\n- next\n"), ["fence", "text"]);
  // An item that ends (a line less indented) ends its fence.
  const unclosed = "- ```\n  # code\nOutside\n\n# Title\n";
  assert.deepEqual(headings(unclosed), ["# Title"]);
});

Deno.test("closing fences: same character, at least as long, nothing after", () => {
  const cases: [string, number][] = [
    ["```\ncode\n```\n\n# After\n", 1],
    ["````\ncode\n```\n# inside\n````\n\n# After\n", 1],
    ["```\ncode\n~~~\n# inside\n```\n\n# After\n", 1],
    ["```\ncode\n``` not closing\n# inside\n```\n\n# After\n", 1],
    ["~~~\ncode\n~~~~~\n\n# After\n", 1],
    ["``` js `x`\n# heading, not a fence\n", 0], // a backtick in the info string: inline code
    ["~~~ js `x`\ncode\n~~~\n\n# After\n", 1], // tildes may have one
  ];
  for (const [text, fenceCount] of cases) {
    const blocks = parseBlocks(text);
    assert.equal(fenceText(text, blocks).length, fenceCount, JSON.stringify(text));
    assert.deepEqual(
      headings(text),
      fenceCount ? ["# After"] : ["# heading, not a fence"],
      JSON.stringify(text),
    );
  }
});

Deno.test("ATX and setext headings with their levels", () => {
  assert.deepEqual(headings("Title\n===\n\nText.\n"), ["# Title"]);
  assert.deepEqual(headings("Sub title\n---\n\nText.\n"), ["## Sub title"]);
  assert.deepEqual(headings("   ### Three ###\n\nText.\n"), ["### Three"]);
  assert.deepEqual(headings("Text.\n\n---\n\nMore.\n"), [], "a thematic break");
  assert.deepEqual(headings("- item\n---\n"), [], "not a list item's");
  assert.deepEqual(headings("| a | b |\n|---|---|\n"), [], "not a table's");
  assert.deepEqual(headings("```\nTitle\n===\n```\n"), [], "not inside a fence");
});

const SETTINGS: ChunkSettings[] = (["recursive", "markdown"] as SplitterName[]).flatMap((
  splitter,
) => [
  { splitter, chunkSize: 64, chunkOverlap: 8 },
  { splitter, chunkSize: 256, chunkOverlap: 32 },
]);

/** True when every non-blank line of a chunk's source text is a heading. */
function bareHeading(text: string): boolean {
  const lines = text.split("\n").filter((line) => line.trim() !== "");
  return lines.length > 0 && lines.every((line) => /^ {0,3}#{1,6}(\s|$)/.test(line));
}

Deno.test("no chunk is only headings: at the end, two in a row, before a big fence", () => {
  const para = (n: number) => `Paragraph ${n} says a few words about the part it is in. `.repeat(3);
  const bigFence = "```\n" + Array.from({ length: 60 }, (_, i) => `line_${i}();`).join("\n") +
    "\n```";
  const docs = [
    `# Title\n\n${para(1)}\n\n## Empty section at the end\n`,
    `# A\n\n## B\n\n${para(2)}\n\n${para(3)}\n`,
    `${para(4)}\n\n${para(5)}\n\n## Before code\n\n${bigFence}\n\n${para(6)}\n`,
    `# One\n\n# Two\n\n# Three\n\n${bigFence}\n`,
    `Title\n=====\n\n${para(7)}\n\nEnd\n---\n`,
    // A list that nearly fills a chunk, then a heading with nothing after it.
    `## Fixes\n\n${
      Array.from({ length: 26 }, (_, i) => `* fix ${i} keeps the cookie name`).join("\n")
    }` +
    `\n\n## [10.0.15](https://example.org/compare/v10.0.14...v10.0.15) (2026-10-05)\n\n\n`,
  ];
  for (const doc of docs) {
    for (const settings of SETTINGS) {
      const chunks = splitIntoChunks(doc, settings, cl100k);
      for (const c of chunks) {
        assert.ok(!c.oversize, `within the size: ${JSON.stringify(c.text)}`);
        assert.ok(
          !bareHeading(doc.slice(c.start, c.end)),
          `${settings.splitter} ${settings.chunkSize}: ${JSON.stringify(c.text)}`,
        );
      }
      const covered = chunks.map((c) => doc.slice(c.start, c.end)).join("");
      assert.ok(covered.length >= doc.length, "nothing lost");
    }
  }
});

Deno.test("CRLF and LF give the same boundaries; chunks stay exact slices of the source", () => {
  const docs = [makeDocument(2, 40), makeDocument(9, 25), makeDocument(4, 60)];
  for (const lf of docs) {
    const crlf = lf.replace(/\n/g, "\r\n");
    for (const settings of SETTINGS) {
      const a = splitIntoChunks(lf, settings, cl100k);
      const b = splitIntoChunks(crlf, settings, cl100k);
      assert.deepEqual(
        b.map((c) => c.text.replace(/\r\n/g, "\n")),
        a.map((c) => c.text),
        `${settings.splitter} ${settings.chunkSize}`,
      );
      for (const c of b) {
        assert.ok(c.text.endsWith(crlf.slice(c.start, c.end)), "an exact slice");
        assert.ok(!/\r$/.test(crlf.slice(0, c.start)), "never cut between CR and LF");
        assert.ok(c.tokens <= settings.chunkSize, "within the size as stored");
      }
    }
  }
  // A lone CR is a line end too.
  const cr = "# Title\r\rFirst paragraph.\r\r## Next\r\rSecond.\r";
  assert.deepEqual(
    splitIntoChunks(cr, { splitter: "markdown", chunkSize: 16, chunkOverlap: 0 }, cl100k)
      .map((c) => c.text.replace(/\r/g, "\n")),
    splitIntoChunks(
      cr.replace(/\r/g, "\n"),
      { splitter: "markdown", chunkSize: 16, chunkOverlap: 0 },
      cl100k,
    ).map((c) => c.text),
  );
});
