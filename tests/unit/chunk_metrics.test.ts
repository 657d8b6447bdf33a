// The chunking bench's measuring helpers (bench/chunk_metrics.ts) and its
// corpus rules (bench/corpus.ts), on hand-made inputs: a wrong metric would
// make every figure of the bench wrong without anyone seeing it.
import assert from "node:assert/strict";
import {
  ADDED_PARAGRAPH,
  ADDED_SENTENCE,
  carriesHeading,
  editParagraphAt,
  fencesCut,
  type Heading,
  isBareHeading,
  locateChunks,
  lostCharacters,
  markdownFacts,
  type MeasuredChunk,
  spreadEvenly,
} from "../../bench/chunk_metrics.ts";
import { capChangelog, isChangelog, isCorpusPath, tarEntries } from "../../bench/corpus.ts";

const DOC = [
  "Intro line.", //                                    0
  "", //                                               12
  "# Guide", //                                        13
  "", //                                               21
  "Some prose that explains things.", //               22
  "", //                                               55
  "```js", //                                          56
  "const a = 1;", //                                   62
  "```", //                                            75
  "", //                                               79
  "Setext title", //                                   80
  "------------", //                                   93
  "", //                                               106
  "- item", //                                         107
  "  ~~~", //                                          114
  "  # not a heading", //                              120
  "  ~~~", //                                          138
  "", //                                               144
  "Last paragraph.", //                                145
].join("\n");

const chunk = (start: number, end: number, prefix = ""): MeasuredChunk => ({
  start,
  end,
  text: prefix + DOC.slice(start, end),
  tokens: 0,
  oversize: false,
});

Deno.test("markdownFacts finds fences, top-level headings and paragraphs by offsets", () => {
  const facts = markdownFacts(DOC);
  assert.deepEqual(
    facts.fences.map((f) => DOC.slice(f.start, f.end)),
    ["```js\nconst a = 1;\n```", "~~~\n  # not a heading\n  ~~~"],
  );
  assert.deepEqual(facts.headings, [
    { at: 13, level: 1, title: "Guide" },
    { at: 80, level: 2, title: "Setext title" },
  ]);
  assert.deepEqual(
    facts.paragraphs.map((p) => DOC.slice(p.start, p.end)),
    ["Intro line.", "Some prose that explains things.", "Last paragraph."],
  );
  // An unclosed fence runs to the end of the text.
  const open = "Text\n\n```\ncode\n";
  assert.deepEqual(
    markdownFacts(open).fences.map((f) => open.slice(f.start, f.end)),
    ["```\ncode"],
  );
});

Deno.test("fencesCut: a fence is cut unless one chunk's span holds it whole", () => {
  const fence = { start: 56, end: 78 };
  assert.deepEqual(fencesCut([fence], [chunk(0, 56), chunk(56, DOC.length)]), []);
  assert.deepEqual(fencesCut([fence], [chunk(0, 70), chunk(70, DOC.length)]), [fence]);
  // Overlapping spans: the second holds it whole.
  assert.deepEqual(fencesCut([fence], [chunk(0, 70), chunk(50, 90)]), []);
  assert.deepEqual(fencesCut([fence], [chunk(0, 77), chunk(57, 90)]), [fence]);
});

Deno.test("isBareHeading: every non-blank line an ATX heading or a setext pair", () => {
  const cases: [string, boolean][] = [
    ["# Title", true],
    ["# Guide > ## Install\n", true],
    ["# Guide > ## Install\n### Linux\n\n", true],
    ["Title\n=====\n\n## Sub\n", true],
    ["Title\r\n-----\r\n", true],
    ["   ## Indented up to three", true],
    ["# Title\n\nSome text.", false],
    ["    # indented four: code", false],
    ["#hashtag", false],
    ["```sh\n# a comment\n```", false],
    ["---", false],
    ["", false],
    ["\n\n", false],
  ];
  for (const [text, bare] of cases) assert.equal(isBareHeading(text), bare, JSON.stringify(text));
});

Deno.test("carriesHeading: the governing heading at the span's start or in the prefix line", () => {
  const { headings } = markdownFacts(DOC);
  assert.equal(carriesHeading(chunk(0, 12), DOC, headings), null, "before any heading");
  assert.equal(
    carriesHeading(chunk(12, 60), DOC, headings),
    true,
    "starts (after a blank) with it",
  );
  assert.equal(carriesHeading(chunk(22, 79), DOC, headings), false, "under # Guide, no prefix");
  assert.equal(carriesHeading(chunk(22, 79, "# Guide\n"), DOC, headings), true);
  assert.equal(carriesHeading(chunk(22, 79, "# Other\n"), DOC, headings), false);
  // Under the setext heading, whose title the path line must name.
  assert.equal(carriesHeading(chunk(107, 144, "# Guide\n"), DOC, headings), false);
  assert.equal(carriesHeading(chunk(107, 144, "# Guide > Setext title\n"), DOC, headings), true);
  assert.equal(carriesHeading(chunk(80, 144), DOC, headings), true);
  const none: Heading[] = [];
  assert.equal(carriesHeading(chunk(22, 79), DOC, none), null);
});

Deno.test("lostCharacters counts text outside every span, not white space", () => {
  assert.equal(lostCharacters(DOC, [chunk(0, DOC.length)]), 0);
  assert.equal(lostCharacters(DOC, [chunk(0, 12), chunk(13, DOC.length)]), 0, "only a newline");
  assert.equal(lostCharacters(DOC, [chunk(0, 13), chunk(20, DOC.length)]), 6, "'Guide' and '#'");
  assert.equal(lostCharacters(DOC, [chunk(0, 140)]), "~~~Lastparagraph.".length);
  assert.equal(lostCharacters("abc", []), 3);
});

Deno.test("locateChunks: in order, each ending past the previous one", () => {
  // The second chunk, a closing fence, also occurs twice inside the first.
  assert.deepEqual(locateChunks("a ``` b ``` c\n```", ["a ``` b ``` c", "```"]), [
    { start: 0, end: 13 },
    { start: 14, end: 17 },
  ]);
  // Overlap: the next chunk starts inside the one before.
  assert.deepEqual(locateChunks("a b c d", ["a b c", "c d"]), [
    { start: 0, end: 5 },
    { start: 4, end: 7 },
  ]);
  assert.deepEqual(locateChunks("a b", ["a", "z"]), [{ start: 0, end: 1 }, null]);
});

Deno.test("editParagraphAt: a sentence in the middle, a paragraph after, or none", () => {
  const text = "First para.\n\nOne two. Three four. Five six.\n\nLast.";
  const start = text.indexOf("One");
  const paragraph = { start, end: start + "One two. Three four. Five six.".length };
  assert.equal(
    editParagraphAt(text, paragraph, "edit"),
    `First para.\n\nOne two. Three four. ${ADDED_SENTENCE} Five six.\n\nLast.`,
  );
  assert.equal(
    editParagraphAt(text, paragraph, "insert"),
    `First para.\n\nOne two. Three four. Five six.\n\n${ADDED_PARAGRAPH}\n\nLast.`,
  );
  assert.equal(editParagraphAt(text, paragraph, "delete"), "First para.\n\nLast.");
  // No sentence end past the middle: the first space there.
  assert.equal(
    editParagraphAt("alpha beta gamma delta", { start: 0, end: 22 }, "edit"),
    `alpha beta gamma ${ADDED_SENTENCE} delta`,
  );
  assert.equal(ADDED_SENTENCE.split(" ").length, 15);
  assert.equal(ADDED_PARAGRAPH.split(" ").length, 60);
});

Deno.test("spreadEvenly takes the first, the last and evenly between", () => {
  const items = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
  assert.deepEqual(spreadEvenly(items, 3), [0, 5, 9]);
  assert.deepEqual(spreadEvenly(items, 20), items);
  assert.deepEqual(spreadEvenly(items, 1), [4]);
  assert.deepEqual(spreadEvenly([], 8), []);
});

Deno.test("corpus rules: markdown files kept, licences and bundled files not, changelogs capped", () => {
  assert.ok(isCorpusPath("README.md"));
  assert.ok(isCorpusPath("docs/Guides/Getting-Started.md"));
  assert.ok(!isCorpusPath("LICENSE.md"));
  assert.ok(!isCorpusPath("THIRD-PARTY-NOTICES.md"));
  assert.ok(!isCorpusPath("node_modules/dep/README.md"));
  assert.ok(!isCorpusPath("docs/index.html"));
  assert.ok(isChangelog("CHANGELOG.md") && isChangelog("History.md") && !isChangelog("api.md"));
  const log = "# Changelog\n\n## 2.0.0\n\n- a\n\n## 1.0.0\n\n- b\n";
  assert.equal(capChangelog(log, 1000), log);
  assert.equal(capChangelog(log, 35), "# Changelog\n\n## 2.0.0\n\n- a\n\n");
});

/** A tar archive of `files`, long names through a pax record. */
function tar(files: [string, string][]): Uint8Array {
  const blocks: Uint8Array[] = [];
  const header = (name: string, size: number, type: string) => {
    const block = new Uint8Array(512);
    block.set(new TextEncoder().encode(name.slice(0, 100)), 0);
    block.set(new TextEncoder().encode(size.toString(8).padStart(11, "0")), 124);
    block[156] = type.charCodeAt(0);
    block.set(new TextEncoder().encode("ustar\u000000"), 257);
    return block;
  };
  const body = (bytes: Uint8Array) => {
    const padded = new Uint8Array(Math.ceil(bytes.length / 512) * 512);
    padded.set(bytes);
    return padded;
  };
  for (const [name, text] of files) {
    if (name.length > 100) {
      const line = ` path=${name}\n`;
      const length = line.length + String(line.length + 3).length;
      const record = new TextEncoder().encode(`${length}${line}`);
      blocks.push(header("PaxHeader", record.length, "x"), body(record));
    }
    const data = new TextEncoder().encode(text);
    blocks.push(header(name, data.length, "0"), body(data));
  }
  blocks.push(new Uint8Array(1024));
  const out = new Uint8Array(blocks.reduce((n, b) => n + b.length, 0));
  let at = 0;
  for (const b of blocks) {
    out.set(b, at);
    at += b.length;
  }
  return out;
}

Deno.test("tarEntries reads ustar files and pax long names", () => {
  const long = `package/docs/${"deep/".repeat(30)}guide.md`;
  const entries = [...tarEntries(tar([["package/README.md", "# Hi\n"], [long, "x".repeat(600)]]))];
  assert.deepEqual(entries.map((e) => e.path), ["package/README.md", long]);
  assert.equal(new TextDecoder().decode(entries[0].data), "# Hi\n");
  assert.equal(entries[1].data.length, 600);
});
