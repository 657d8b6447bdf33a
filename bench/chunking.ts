// `deno run -A bench/chunking.ts [rounds]`: what token counting and splitting
// cost, on the generated 60-paragraph markdown document
// (devtools/documents.ts) and on texts that are hard for BPE (a long
// CJK run, one 10,000-letter word). Pure CPU, no stack; prints a Markdown
// table. Figures are medians over `rounds` runs (default 20).
import { Tiktoken } from "js-tiktoken/lite";
import cl100kBase from "js-tiktoken/ranks/cl100k_base";
import {
  splitIntoChunks,
  type SplitterName,
} from "../supabase/functions/_shared/chunking/split.ts";
import { createBpeCounter } from "../supabase/functions/_shared/providers/bpe.ts";
import { tokenCounterFor } from "../supabase/functions/_shared/providers/tokens.ts";
import { editParagraph, makeDocument } from "../devtools/documents.ts";
import { fmt, median, table } from "./report.ts";

const rounds = Number(Deno.args[0] ?? 20);

function timed(run: () => void): number {
  const times: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const start = performance.now();
    run();
    times.push(performance.now() - start);
  }
  return median(times);
}

const loadStart = performance.now();
const fresh = createBpeCounter("cl100k_base", cl100kBase);
fresh.count("warm up");
const loadMs = performance.now() - loadStart;
const referenceStart = performance.now();
const reference = new Tiktoken(cl100kBase);
const referenceLoadMs = performance.now() - referenceStart;

const counter = tokenCounterFor("text-embedding-3-small");
const doc = makeDocument(1);
const docTokens = counter.count(doc);
const cjk = "向量嵌入让数据库里的每一行都保持新鲜它在后台处理队列并且只为改变了的文本付费".repeat(
  10,
);
const word = "abcdefghij".repeat(1000);

const rows: (string | number)[][] = [
  ["load the cl100k_base ranks (once per process)", `${fmt(loadMs)} ms`, "", ""],
  ["js-tiktoken `new Tiktoken(cl100k_base)`, for comparison", `${fmt(referenceLoadMs)} ms`, "", ""],
];
const countRow = (label: string, text: string, slowReference: boolean) => {
  const tokens = counter.count(text);
  const ms = timed(() => counter.count(text));
  const referenceMs = slowReference ? NaN : timed(() => reference.encode(text, [], []));
  rows.push([
    `count: ${label} (${fmt(tokens)} tokens)`,
    `${fmt(ms, 2)} ms`,
    `${fmt(tokens / ms * 1000)} tokens/s`,
    slowReference
      ? "js-tiktoken: minutes (quadratic)"
      : `js-tiktoken ${fmt(tokens / referenceMs * 1000)} tokens/s`,
  ]);
};
countRow("60-paragraph document", doc, false);
countRow("CJK run of 400 characters", cjk, false);
countRow("one 10,000-letter word", word, true);

const settings: [SplitterName, number, number][] = [
  ["recursive", 512, 64],
  ["recursive", 128, 16],
  ["markdown", 512, 64],
  ["markdown", 128, 16],
];
for (const [splitter, chunkSize, chunkOverlap] of settings) {
  const config = { splitter, chunkSize, chunkOverlap };
  const chunks = splitIntoChunks(doc, config, counter);
  const ms = timed(() => splitIntoChunks(doc, config, counter));
  const before = new Set(chunks.map((c) => c.text));
  const changed = Array.from(
    { length: 60 },
    (_, i) =>
      splitIntoChunks(editParagraph(doc, i), config, counter).filter((c) => !before.has(c.text))
        .length,
  );
  const meanTokens = chunks.reduce((sum, c) => sum + c.tokens, 0) / chunks.length;
  rows.push([
    `split: ${splitter} ${chunkSize}/${chunkOverlap}, ${chunks.length} chunks of ${
      fmt(meanTokens)
    } tokens on average`,
    `${fmt(ms, 2)} ms`,
    `${fmt(docTokens / ms * 1000)} tokens/s`,
    `chunks changed per one-paragraph edit: max ${Math.max(...changed)}, mean ${
      fmt(changed.reduce((a, b) => a + b, 0) / changed.length)
    }`,
  ]);
}

console.log(table(["what", "time (median)", "rate", "note"], rows));
