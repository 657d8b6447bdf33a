// Text splitters: coverage of all text, size limits with the real
// tokenizer, overlap, markdown headings and code fences, Unicode, edge
// cases, and stable boundaries under a one-paragraph edit.
import assert from "node:assert/strict";
import {
  type ChunkSettings,
  splitIntoChunks,
  type SplitterName,
  type TextChunk,
  validateChunkSettings,
} from "../../supabase/functions/_shared/chunking/split.ts";
import {
  estimateCounter,
  tokenCounterFor,
} from "../../supabase/functions/_shared/providers/tokens.ts";
import { parseBlocks } from "../../supabase/functions/_shared/chunking/blocks.ts";
import { editParagraph, makeDocument } from "../../devtools/documents.ts";

const cl100k = tokenCounterFor("text-embedding-3-small");
const SPLITTERS: SplitterName[] = ["recursive", "markdown", "none"];

/** The prefix the markdown splitter may put before the source text. */
function sourcePart(chunk: TextChunk, source: string): string {
  const span = source.slice(chunk.start, chunk.end);
  assert.ok(
    chunk.text.endsWith(span),
    `chunk text ends with its span ${chunk.start}..${chunk.end}`,
  );
  return chunk.text.slice(0, chunk.text.length - span.length);
}

/** Coverage, order, size and token-count invariants of any split. */
function assertWellFormed(source: string, settings: ChunkSettings, chunks: TextChunk[]) {
  const counter = cl100k;
  if (source.trim() === "") return assert.deepEqual(chunks, []);
  assert.ok(chunks.length > 0);
  assert.equal(chunks[0].start, 0, "starts at 0");
  assert.equal(chunks[chunks.length - 1].end, source.length, "ends at the end");
  for (let i = 0; i < chunks.length; i++) {
    const c = chunks[i];
    assert.ok(c.start < c.end, "non-empty span");
    if (i > 0) {
      assert.ok(c.start >= chunks[i - 1].start, "starts do not decrease");
      assert.ok(c.start <= chunks[i - 1].end, "no gap between spans");
      assert.ok(c.end > chunks[i - 1].end, "ends increase");
    }
    const prefix = sourcePart(c, source);
    if (settings.splitter !== "markdown") assert.equal(prefix, "");
    else assert.ok(prefix === "" || /^#{1,6} [^\n]*\n$/.test(prefix), JSON.stringify(prefix));
    assert.equal(c.tokens, counter.count(c.text), "tokens is the text's count");
    assert.equal(c.oversize, c.tokens > settings.chunkSize, "oversize exactly when over");
  }
}

Deno.test("validateChunkSettings accepts good settings and explains bad ones", () => {
  const cases: [ChunkSettings, RegExp | null][] = [
    [{ splitter: "recursive", chunkSize: 512, chunkOverlap: 64 }, null],
    [{ splitter: "markdown", chunkSize: 16, chunkOverlap: 8 }, null],
    [{ splitter: "none", chunkSize: 8191, chunkOverlap: 0 }, null],
    [
      { splitter: "words" as SplitterName, chunkSize: 512, chunkOverlap: 0 },
      /unknown splitter "words"/,
    ],
    [{ splitter: "recursive", chunkSize: 15, chunkOverlap: 0 }, /chunk size .* 16 to 8191, got 15/],
    [{ splitter: "recursive", chunkSize: 8192, chunkOverlap: 0 }, /got 8192/],
    [{ splitter: "recursive", chunkSize: 100.5, chunkOverlap: 0 }, /whole number/],
    [{ splitter: "recursive", chunkSize: 100, chunkOverlap: 51 }, /overlap .* \(50\), got 51/],
    [{ splitter: "recursive", chunkSize: 100, chunkOverlap: -1 }, /got -1/],
    [{ splitter: "recursive", chunkSize: NaN, chunkOverlap: 0 }, /got NaN/],
  ];
  for (const [settings, want] of cases) {
    const message = validateChunkSettings(settings);
    if (want === null) assert.equal(message, null, JSON.stringify(settings));
    else assert.match(message ?? "", want, JSON.stringify(settings));
  }
  assert.throws(
    () => splitIntoChunks("text", { splitter: "recursive", chunkSize: 1, chunkOverlap: 0 }, cl100k),
    RangeError,
  );
});

Deno.test("empty and whitespace-only text has no chunks", () => {
  for (const splitter of SPLITTERS) {
    for (const text of ["", " ", "\n\n\t  \n"]) {
      assert.deepEqual(
        splitIntoChunks(text, { splitter, chunkSize: 64, chunkOverlap: 8 }, cl100k),
        [],
      );
    }
  }
});

Deno.test("every splitter covers generated documents in order within the size limit", () => {
  const sizes: [number, number][] = [[16, 0], [16, 8], [48, 12], [128, 16], [512, 64], [2000, 0]];
  for (let seed = 1; seed <= 6; seed++) {
    const doc = makeDocument(seed, 5 + seed * 4);
    for (const splitter of SPLITTERS) {
      for (const [chunkSize, chunkOverlap] of sizes) {
        const settings = { splitter, chunkSize, chunkOverlap };
        const chunks = splitIntoChunks(doc, settings, cl100k);
        assertWellFormed(doc, settings, chunks);
        if (splitter !== "none") {
          for (const c of chunks) {
            assert.ok(!c.oversize, `${splitter} ${chunkSize}: nothing indivisible`);
          }
        }
      }
    }
  }
});

/** Random text from fragments that are hard for splitters, the same for a seed. */
function nastyText(seed: number): string {
  const fragments = [
    "word ",
    "Sentence ends here. ",
    "Question? ",
    "\n",
    "\n\n",
    "\r\n",
    "\t",
    "   ",
    "# Heading\n",
    "## Sub #\n",
    "```\n",
    "~~~~\n",
    "code();\n",
    "- item\n",
    "向量嵌入。",
    "数据库",
    "👨‍👩‍👧",
    "🇯🇵",
    "e\u0301",
    "ﬁ",
    "x".repeat(50),
    "<|endoftext|>",
    "1234567",
  ];
  let state = seed;
  const next = () => (state = (Math.imul(state, 1103515245) + 12345) >>> 0) / 2 ** 32;
  let text = "";
  const length = 20 + Math.floor(next() * 400);
  for (let i = 0; i < length; i++) text += fragments[Math.floor(next() * fragments.length)];
  return text;
}

Deno.test("every splitter covers random hard text, cutting only between graphemes", () => {
  const graphemes = new Intl.Segmenter(undefined, { granularity: "grapheme" });
  for (let seed = 1; seed <= 30; seed++) {
    const text = nastyText(seed);
    const starts = new Set([...graphemes.segment(text)].map((s) => s.index));
    starts.add(text.length);
    for (const splitter of SPLITTERS) {
      for (const [chunkSize, chunkOverlap] of [[16, 8], [64, 0], [200, 50]]) {
        const settings = { splitter, chunkSize, chunkOverlap };
        const chunks = splitIntoChunks(text, settings, cl100k);
        assertWellFormed(text, settings, chunks);
        for (const c of chunks) {
          assert.ok(starts.has(c.start) && starts.has(c.end), `seed ${seed}: grapheme cut`);
          if (c.oversize) assert.equal(splitter, "none", `seed ${seed}: oversize ${c.text}`);
        }
      }
    }
  }
});

Deno.test("none gives the whole text as one chunk, oversize when over", () => {
  const doc = makeDocument(3, 10);
  const [small] = splitIntoChunks(
    "just this",
    { splitter: "none", chunkSize: 16, chunkOverlap: 0 },
    cl100k,
  );
  assert.deepEqual(small, { text: "just this", start: 0, end: 9, tokens: 2, oversize: false });
  const chunks = splitIntoChunks(doc, { splitter: "none", chunkSize: 64, chunkOverlap: 0 }, cl100k);
  assert.equal(chunks.length, 1);
  assert.equal(chunks[0].text, doc);
  assert.equal(chunks[0].oversize, true);
});

Deno.test("recursive prefers paragraph, then sentence boundaries", () => {
  const para = (n: number) =>
    `Paragraph ${n} says one thing about tokens. It then says another thing about chunks.`;
  const text = [1, 2, 3, 4, 5, 6].map(para).join("\n\n");
  const chunks = splitIntoChunks(
    text,
    { splitter: "recursive", chunkSize: 30, chunkOverlap: 0 },
    cl100k,
  );
  assertWellFormed(text, { splitter: "recursive", chunkSize: 30, chunkOverlap: 0 }, chunks);
  for (const c of chunks) assert.match(c.text, /^Paragraph \d/, "chunks start at paragraphs");
  const small = splitIntoChunks(
    para(1),
    { splitter: "recursive", chunkSize: 16, chunkOverlap: 0 },
    cl100k,
  );
  assert.deepEqual(small.map((c) => c.text), [
    "Paragraph 1 says one thing about tokens. ",
    "It then says another thing about chunks.",
  ]);
});

Deno.test("overlap only where a chunk ends inside a block, whole trailing units within the budget", () => {
  const doc = makeDocument(11, 30);
  const blocks = parseBlocks(doc);
  for (const [chunkSize, chunkOverlap] of [[64, 16], [64, 32], [128, 16], [512, 64]]) {
    const settings = { splitter: "recursive" as const, chunkSize, chunkOverlap };
    const chunks = splitIntoChunks(doc, settings, cl100k);
    assertWellFormed(doc, settings, chunks);
    let inside = 0;
    for (let i = 1; i < chunks.length; i++) {
      const cut = chunks[i - 1].end;
      const shared = doc.slice(chunks[i].start, cut);
      // A cut where a block starts is between blocks: nothing repeated.
      const betweenBlocks = blocks.some((block) => block.start === cut);
      if (betweenBlocks) assert.equal(shared, "", `no overlap between blocks at ${cut}`);
      else {
        inside++;
        assert.ok(cl100k.count(shared) <= chunkOverlap, `overlap ${i} within ${chunkOverlap}`);
        assert.ok(shared.trim() !== "", `an overlap after the cut inside a block at ${cut}`);
        assert.ok(chunks[i].start > chunks[i - 1].start, "never a whole chunk again");
        assert.match(doc.slice(chunks[i].start - 1, chunks[i].start + 1), /^[\s\p{P}]\S/u);
      }
    }
    // Premise: at 64 tokens paragraphs must be cut inside.
    if (chunkSize === 64) assert.ok(inside > 5, `${inside} cuts inside blocks`);
  }
  const none = splitIntoChunks(
    doc,
    { splitter: "recursive", chunkSize: 64, chunkOverlap: 0 },
    cl100k,
  );
  for (let i = 1; i < none.length; i++) assert.equal(none[i].start, none[i - 1].end);
});

Deno.test("chunks fill the size: whole paragraphs packed up to it, not cut at half", () => {
  const doc = makeDocument(5, 120).replace(/^#+ .*\n\n/gm, "");
  for (const chunkSize of [256, 512]) {
    const settings = { splitter: "recursive" as const, chunkSize, chunkOverlap: chunkSize / 8 };
    const chunks = splitIntoChunks(doc, settings, cl100k);
    assertWellFormed(doc, settings, chunks);
    const sizes = chunks.slice(0, -1).map((c) => c.tokens).sort((a, b) => a - b);
    const median = sizes[sizes.length >> 1];
    assert.ok(median >= 0.65 * chunkSize, `median ${median} of ${chunkSize}`);
    const paid = chunks.reduce((sum, c) => sum + c.tokens, 0) / cl100k.count(doc);
    assert.ok(paid <= 1.05, `paid ${paid.toFixed(3)} tokens per document token`);
  }
});

Deno.test("markdown chunks carry their heading path and keep code fences whole", () => {
  const prose = (topic: string, n: number) =>
    Array.from(
      { length: n },
      (_, i) =>
        `The ${topic} step ${i} copies files and checks them. It then waits for the stack to answer on its port.`,
    ).join("\n\n");
  const text = [
    "Intro before any heading.",
    "# Guide",
    "## Install",
    prose("install", 14),
    "```sh\n# a comment, not a heading\nnpm start\n\nnpm test\n```",
    "### Options",
    prose("options", 14),
    "## Use",
    prose("use", 14),
  ].join("\n\n") + "\n";
  const settings = { splitter: "markdown" as const, chunkSize: 256, chunkOverlap: 0 };
  const chunks = splitIntoChunks(text, settings, cl100k);
  assertWellFormed(text, settings, chunks);
  assert.ok(chunks.length >= 4, `premise: several chunks (${chunks.length})`);
  const fence = chunks.filter((c) => c.text.includes("npm start"));
  assert.equal(fence.length, 1, "the fence is in one chunk");
  assert.match(fence[0].text, /```sh\n# a comment, not a heading\nnpm start\n\nnpm test\n```/);
  for (const c of chunks) {
    const prefix = sourcePart(c, text);
    const body = text.slice(c.start, c.end);
    assert.ok(!prefix.includes("a comment"), "no heading from inside a fence");
    // The headings above the chunk's start, less those its text starts with.
    const level = (heading: string) => heading.indexOf(" ");
    let path: string[] = [];
    for (const m of text.slice(0, c.start).matchAll(/^(#{1,3}) (\w+)$/gm)) {
      while (path.length && level(path[path.length - 1]) >= m[1].length) path.pop();
      path.push(`${m[1]} ${m[2]}`);
    }
    for (const m of body.matchAll(/^(#{1,3}) (\w+)\n\n/gy)) {
      path = path.filter((heading) => level(heading) < m[1].length);
    }
    assert.equal(prefix, path.length ? `${path.join(" > ")}\n` : "", JSON.stringify(body));
    const lines = body.split("\n").filter((line) => line.trim() !== "");
    assert.ok(lines.some((line) => !line.startsWith("#")), "not bare headings");
  }
  assert.ok(
    chunks.some((c) => c.text.startsWith("# Guide > ## Install\nThe install step")),
    "a chunk inside a section carries its path",
  );
});

Deno.test("markdown heading lines: closing hashes dropped, long paths shortened from the top", () => {
  const body = "Some words about the section that make it long enough to need two chunks. ".repeat(
    20,
  );
  const text = `# Top ##\n\n## Middle part of the guide\n\n### Leaf #\n\n${body}\n\n${body}\n`;
  // A sixteenth of 512 tokens holds the whole path; of 128, "### Leaf" only.
  const roomy = splitIntoChunks(
    text,
    { splitter: "markdown", chunkSize: 512, chunkOverlap: 0 },
    cl100k,
  );
  assert.ok(
    roomy.some((c) => c.text.startsWith("# Top > ## Middle part of the guide > ### Leaf\n")),
    JSON.stringify(roomy.map((c) => c.text.slice(0, 60))),
  );
  const tight = splitIntoChunks(
    text,
    { splitter: "markdown", chunkSize: 128, chunkOverlap: 0 },
    cl100k,
  );
  assertWellFormed(text, { splitter: "markdown", chunkSize: 128, chunkOverlap: 0 }, tight);
  assert.ok(
    tight.some((c) => c.text.startsWith("### Leaf\n")),
    JSON.stringify(tight.map((c) => c.text.slice(0, 40))),
  );
  // A one-line document that is a heading is one long section, quickly.
  const line = `# ${"word ".repeat(20000)}`;
  const chunks = splitIntoChunks(
    line,
    { splitter: "markdown", chunkSize: 512, chunkOverlap: 64 },
    cl100k,
  );
  assertWellFormed(line, { splitter: "markdown", chunkSize: 512, chunkOverlap: 64 }, chunks);
});

Deno.test("parseBlocks: ATX and setext headings, outside fences, covering the text", () => {
  const cases: [string, string[]][] = [
    ["# A\n\ntext\n\n## B\n\ntext\n", ["# A", "## B"]],
    ["## C#\n\ntext\n", ["## C#"]],
    ["# Closed ###\n\ntext\n", ["# Closed"]],
    ["#\n\ntext\n", ["#"]],
    ["#NoSpace\n\n####### seven\n", []],
    ["    # indented code\n\ntext\n", []],
    ["# A\n\n```\n# in code\n```\n\n### C\n\nx\n\n## D\n\ny\n", ["# A", "### C", "## D"]],
    ["~~~\n# open fence to the end\n", []],
    ["Title\n=====\n\ntext\n", ["# Title"]],
    ["Two line\ntitle\n---\n\ntext\n", ["## Two line title"]],
    ["- item\n---\n", []],
    ["| a | b |\n|---|---|\n", []],
    ["text\n\n---\n\nmore\n", []],
  ];
  for (const [text, headings] of cases) {
    const blocks = parseBlocks(text);
    assert.deepEqual(
      blocks.filter((b) => b.kind === "heading").map((b) => b.heading!.label),
      headings,
      JSON.stringify(text),
    );
    assert.equal(blocks[0].start, 0);
    assert.equal(blocks[blocks.length - 1].end, text.length);
    for (let i = 1; i < blocks.length; i++) assert.equal(blocks[i].start, blocks[i - 1].end);
  }
});

Deno.test("markdown splits a code block only when it alone exceeds chunkSize", () => {
  const code = Array.from({ length: 40 }, (_, i) => `  step_${i}();`).join("\n");
  const text = `# Code\n\nSome text.\n\n~~~js\n${code}\n~~~\n\nAfter.\n`;
  const settings = { splitter: "markdown" as const, chunkSize: 64, chunkOverlap: 0 };
  const chunks = splitIntoChunks(text, settings, cl100k);
  assertWellFormed(text, settings, chunks);
  const inside = chunks.filter((c) => c.text.includes("step_"));
  assert.ok(inside.length > 1, "the block is split");
  for (const c of inside) assert.match(c.text, /^# Code\n/, "with its heading path");
  for (const c of inside.slice(1)) assert.match(text.slice(c.start - 1, c.start), /\n/, "at lines");
  const big = { splitter: "markdown" as const, chunkSize: 512, chunkOverlap: 0 };
  const whole = splitIntoChunks(text, big, cl100k);
  assert.equal(whole.filter((c) => c.text.includes("step_")).length, 1);
});

Deno.test("Unicode: CJK without spaces, emoji sequences and combining marks are never cut", () => {
  const cjk = "向量嵌入让数据库里的每一行都保持新鲜。它在后台处理队列，并且只为改变了的文本付费。"
    .repeat(6);
  const family = "👨‍👩‍👧‍👦";
  const flags = "🇫🇷🇯🇵";
  const combining = "e\u0301\u0302a\u0308o\u0303";
  const texts = [
    cjk,
    `${family}${flags}`.repeat(40),
    combining.repeat(60),
    `mixed ${cjk} ${family} é`,
  ];
  const graphemes = new Intl.Segmenter(undefined, { granularity: "grapheme" });
  for (const text of texts) {
    const starts = new Set([...graphemes.segment(text)].map((s) => s.index));
    starts.add(text.length);
    for (const [chunkSize, chunkOverlap] of [[16, 0], [16, 8], [40, 10]]) {
      const settings = { splitter: "recursive" as const, chunkSize, chunkOverlap };
      const chunks = splitIntoChunks(text, settings, cl100k);
      assertWellFormed(text, settings, chunks);
      for (const c of chunks) {
        assert.ok(
          starts.has(c.start) && starts.has(c.end),
          `cut between graphemes at ${c.start}..${c.end}`,
        );
      }
    }
  }
  // CJK sentences are units: a sentence that fits is not cut.
  const sentences = splitIntoChunks(
    cjk,
    { splitter: "recursive", chunkSize: 40, chunkOverlap: 0 },
    cl100k,
  );
  for (const c of sentences) assert.match(c.text, /[。，]$/, "ends at a sentence or clause");
});

Deno.test("edge cases: one huge word, a grapheme over the limit, the estimate counter", () => {
  const word = "x".repeat(5000);
  const settings = { splitter: "recursive" as const, chunkSize: 16, chunkOverlap: 4 };
  const chunks = splitIntoChunks(word, settings, cl100k);
  assertWellFormed(word, settings, chunks);
  assert.ok(chunks.every((c) => !c.oversize));
  // One grapheme cluster of 40 combining marks is indivisible.
  const cluster = "a" + "\u0301".repeat(40);
  const lone = splitIntoChunks(`ok ${cluster} ok`, { ...settings, chunkOverlap: 0 }, cl100k);
  assertWellFormed(`ok ${cluster} ok`, { ...settings, chunkOverlap: 0 }, lone);
  assert.equal(lone.filter((c) => c.oversize).length, 1);
  assert.ok(lone.find((c) => c.oversize)!.text.includes(cluster));
  // Any counter works: the estimate for models without a tokenizer.
  const doc = makeDocument(5, 20);
  const est = splitIntoChunks(
    doc,
    { splitter: "markdown", chunkSize: 128, chunkOverlap: 16 },
    estimateCounter,
  );
  assert.ok(est.every((c) => c.tokens === estimateCounter.count(c.text) && c.tokens <= 128));
});

/** For each prose paragraph: chunks of the edited document whose text was not a chunk before. */
function changedPerEdit(
  settings: ChunkSettings,
  seed: number,
  where: "first" | "middle" | "last",
): number[] {
  const doc = makeDocument(seed);
  const before = new Set(splitIntoChunks(doc, settings, cl100k).map((c) => c.text));
  return Array.from({ length: 60 }, (_, i) => {
    const after = splitIntoChunks(editParagraph(doc, i, where), settings, cl100k);
    return after.filter((c) => !before.has(c.text)).length;
  });
}

Deno.test("stable boundaries: editing one paragraph of 60 changes at most 3 chunks", () => {
  for (const splitter of ["recursive", "markdown"] as const) {
    for (const [chunkSize, chunkOverlap] of [[512, 64], [128, 16]]) {
      const settings = { splitter, chunkSize, chunkOverlap };
      const changed = (["first", "middle", "last"] as const).flatMap((where) =>
        changedPerEdit(settings, 1, where)
      );
      const histogram: Record<number, number> = {};
      for (const n of changed) histogram[n] = (histogram[n] ?? 0) + 1;
      console.log(`${splitter} ${chunkSize}/${chunkOverlap}: chunks changed per edit`, histogram);
      assert.ok(
        Math.max(...changed) <= 3,
        `${splitter} ${chunkSize}: ${JSON.stringify(histogram)}`,
      );
      assert.ok(changed.every((n) => n >= 1), "an edit changes its own chunk");
    }
  }
});

Deno.test("editParagraph changes one paragraph's length at one place", () => {
  const doc = makeDocument(1);
  for (const where of ["first", "middle", "last"] as const) {
    const edited = editParagraph(doc, 10, where);
    assert.ok(edited.length > doc.length);
    let from = 0;
    while (edited[from] === doc[from]) from++;
    let back = 0;
    while (edited[edited.length - 1 - back] === doc[doc.length - 1 - back]) back++;
    assert.ok(edited.length - back - from < 200, `${where}: within one sentence`);
  }
  assert.equal(makeDocument(1), doc, "deterministic");
  assert.throws(() => editParagraph(doc, 60), RangeError);
});

Deno.test("recursive: CRLF line ends find the paragraph breaks LF ones do; chunks stay exact slices", () => {
  const settings: ChunkSettings = { splitter: "recursive", chunkSize: 128, chunkOverlap: 16 };
  for (const seed of [3, 7, 11]) {
    const lf = makeDocument(seed, 40);
    const crlf = lf.replaceAll("\n", "\r\n");
    const fromLf = splitIntoChunks(lf, settings, cl100k);
    const fromCrlf = splitIntoChunks(crlf, settings, cl100k);
    assertWellFormed(crlf, settings, fromCrlf);
    for (const c of fromCrlf) assert.equal(c.text, crlf.slice(c.start, c.end));
    // As many chunks within a tenth (a CR is a token more here and there);
    // without CRLF blank lines the split fell back to lines and sentences.
    const ratio = fromCrlf.length / fromLf.length;
    assert.ok(ratio > 0.9 && ratio < 1.1, `seed ${seed}: ${fromCrlf.length} vs ${fromLf.length}`);
  }
});
