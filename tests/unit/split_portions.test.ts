// Splitting in portions (splitPortion): a split stopped after any segment or
// section and resumed there gives exactly the chunks of one pass, so a long
// document can be chunked across calls of the function.
import assert from "node:assert/strict";
import {
  type ChunkSettings,
  splitIntoChunks,
  splitPortion,
  type TextChunk,
} from "../../supabase/functions/_shared/chunking/split.ts";
import { tokenCounterFor } from "../../supabase/functions/_shared/providers/tokens.ts";
import { makeDocument } from "../../devtools/documents.ts";

const cl100k = tokenCounterFor("text-embedding-3-small");

/** Every portion, resuming each where the last stopped; `stopAt(n)` answers the n-th ask. */
function inPortions(
  text: string,
  settings: ChunkSettings,
  stopAt: (ask: number) => boolean,
): { chunks: TextChunk[]; portions: number } {
  const chunks: TextChunk[] = [];
  let from;
  let asks = 0;
  for (let portions = 1;; portions++) {
    const portion = splitPortion(text, settings, cl100k, { from, stop: () => stopAt(++asks) });
    assert.ok(portion.chunks.length > 0, "every portion makes progress");
    chunks.push(...portion.chunks);
    if (!portion.next) return { chunks, portions };
    from = portion.next;
  }
}

const TEXTS: [string, string][] = [
  ["a 60-paragraph document", makeDocument(1)],
  ["a 200-paragraph document", makeDocument(7, 200)],
  ["paragraphs without headings", makeDocument(3, 80).replace(/^#+ /gm, "")],
  [
    "a long code block and a long paragraph",
    `# Title\n\n${"word ".repeat(3000)}\n\n\`\`\`\n${"x = 1\n".repeat(2000)}\`\`\`\n\n## Next\n\n${
      makeDocument(2, 30)
    }`,
  ],
];

Deno.test("portions resumed after every segment give the chunks of one pass", () => {
  for (const splitter of ["recursive", "markdown"] as const) {
    for (const [chunkSize, chunkOverlap] of [[512, 64], [128, 16], [64, 0]]) {
      const settings = { splitter, chunkSize, chunkOverlap };
      for (const [label, text] of TEXTS) {
        const whole = splitIntoChunks(text, settings, cl100k);
        const { chunks, portions } = inPortions(text, settings, () => true);
        // Premise: the text is long enough to be cut.
        assert.ok(portions > 2, `${label}, ${splitter} ${chunkSize}: ${portions} portions`);
        assert.deepEqual(chunks, whole, `${label}, ${splitter} ${chunkSize}/${chunkOverlap}`);
      }
    }
  }
});

Deno.test("portions cut at irregular places give the chunks of one pass", () => {
  const text = makeDocument(11, 150);
  for (const splitter of ["recursive", "markdown"] as const) {
    const settings = { splitter, chunkSize: 256, chunkOverlap: 32 };
    const whole = splitIntoChunks(text, settings, cl100k);
    for (const every of [2, 3, 7, 13]) {
      const { chunks, portions } = inPortions(text, settings, (ask) => ask % every === 0);
      assert.ok(portions > 1, `${splitter}, every ${every}: ${portions} portions`);
      assert.deepEqual(chunks, whole, `${splitter}, stopped every ${every} asks`);
    }
  }
});

Deno.test("without a stop, or for the none splitter, one portion is the whole split", () => {
  const text = makeDocument(4, 40);
  for (const splitter of ["recursive", "markdown", "none"] as const) {
    const settings = { splitter, chunkSize: 128, chunkOverlap: 16 };
    const whole = splitIntoChunks(text, settings, cl100k);
    const free = splitPortion(text, settings, cl100k);
    assert.deepEqual(free, { chunks: whole, next: null });
    if (splitter === "none") {
      assert.deepEqual(splitPortion(text, settings, cl100k, { stop: () => true }), free);
    }
  }
  assert.deepEqual(
    splitPortion("  \n ", { splitter: "recursive", chunkSize: 64, chunkOverlap: 0 }, cl100k, {
      stop: () => true,
    }),
    { chunks: [], next: null },
  );
});
