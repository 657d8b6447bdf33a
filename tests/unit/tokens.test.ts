// Token counters: the real cl100k_base encoding (pinned counts, and the same
// tokens as js-tiktoken's own encoder), the estimate for other models, and
// truncation that never cuts a code point.
import assert from "node:assert/strict";
import { Tiktoken } from "js-tiktoken/lite";
import cl100kBase from "js-tiktoken/ranks/cl100k_base";
import {
  estimateCounter,
  mayExceedTokens,
  planBatches,
  tokenCounterFor,
} from "../../supabase/functions/_shared/providers/tokens.ts";
import { createLocalProvider } from "../../supabase/functions/_shared/providers/local.ts";
import { createOpenAIProvider } from "../../supabase/functions/_shared/providers/openai.ts";
import { makeDocument } from "../../devtools/documents.ts";

const cl100k = tokenCounterFor("text-embedding-3-small");
const reference = new Tiktoken(cl100kBase);

Deno.test("tokenCounterFor picks cl100k_base for OpenAI's embedding models, else the estimate", () => {
  const cases: [string, string][] = [
    ["text-embedding-3-small", "cl100k_base"],
    ["text-embedding-3-large", "cl100k_base"],
    ["text-embedding-ada-002", "cl100k_base"],
    ["local-hash-v1", "estimate"],
    ["nomic-embed-text", "estimate"],
    ["toString", "estimate"],
  ];
  for (const [model, name] of cases) assert.equal(tokenCounterFor(model).name, name, model);
  assert.equal(tokenCounterFor("text-embedding-3-large"), cl100k, "one counter per encoding");
});

Deno.test("cl100k_base counts known texts exactly", () => {
  const cases: [string, number][] = [
    ["", 0],
    ["hello world", 2],
    ["Hello, world!", 4],
    ["tiktoken is great!", 6],
    ["antidisestablishmentarianism", 6],
    ["  ", 1],
    ["\n\n", 1],
    ["1234567", 3],
  ];
  for (const [text, want] of cases) assert.equal(cl100k.count(text), want, JSON.stringify(text));
});

const SAMPLES = [
  "hello world",
  "  leading  and  trailing  ",
  "naïve café — “quotes” 😀👨‍👩‍👧 e\u0301 ﬁ",
  "向量嵌入保持新鲜。数据库中的每一行都有对应的嵌入！",
  "日本語のテキストとカタカナ、ひらがな",
  "x".repeat(300),
  "abcdefghij".repeat(40),
  "I'm here. You'll see, they've done it!\n\n\nnew para\r\n",
  "12345678901 3.14159 $100 1e-9",
  "<|endoftext|> is ordinary text here",
  "\t\tcode();\n    return x; // ok\n",
  "https://example.com/a/b?c=d&e=f#g",
  "Ünïcödé wörds ând ÇÅPS",
  "🙂".repeat(20),
];

Deno.test("cl100k_base gives the same tokens as js-tiktoken's encoder", () => {
  for (const text of [...SAMPLES, makeDocument(7, 12)]) {
    assert.equal(
      cl100k.count(text),
      reference.encode(text, [], []).length,
      JSON.stringify(text.slice(0, 40)),
    );
  }
});

Deno.test("a long word or a long CJK run is counted quickly (no quadratic merge)", () => {
  // js-tiktoken's encoder needs about a minute for the word; a test timeout
  // would show a regression to it.
  assert.equal(cl100k.count("abcdefghij".repeat(1000)), 2000);
  assert.ok(cl100k.count("向量嵌入保持新鲜".repeat(500)) > 2000);
});

Deno.test("truncate keeps a prefix within the limit and never cuts a code point", () => {
  for (const text of SAMPLES) {
    for (const max of [0, 1, 2, 3, 5, 8, 13, 1000]) {
      const cut = cl100k.truncate(text, max);
      assert.ok(text.startsWith(cut), "a prefix");
      assert.ok(cl100k.count(cut) <= max, `${JSON.stringify(cut)} within ${max}`);
      const last = cut.charCodeAt(cut.length - 1);
      assert.ok(!(last >= 0xd800 && last <= 0xdbff), "no lone high surrogate at the end");
      if (cl100k.count(text) <= max) assert.equal(cut, text, "whole text when it fits");
    }
  }
  const text = "hello world, hello tokens";
  assert.equal(cl100k.truncate(text, 2), "hello world");
  assert.equal(cl100k.truncate(text, 0), "");
});

Deno.test("the estimate counter is the conservative estimate", () => {
  assert.equal(estimateCounter.name, "estimate");
  assert.equal(estimateCounter.count("abcd"), 2);
  assert.equal(estimateCounter.truncate("abcdefg", 2), "abcdef");
});

Deno.test("planBatches counts with the counter it is given", () => {
  const texts = ["hello world", "hello world", "hello world"];
  // Real count: 2 tokens each; the estimate says 4.
  assert.deepEqual(planBatches(texts, { maxInputs: 10, maxTokens: 4 }, cl100k.count), [[0, 1], [
    2,
  ]]);
  assert.deepEqual(planBatches(texts, { maxInputs: 10, maxTokens: 4 }), [[0], [1], [2]]);
});

Deno.test("mayExceedTokens is false only when no counter can exceed the limit", () => {
  const cases: [string, number, boolean][] = [
    ["", 0, false],
    ["abc", 9, false],
    ["abcd", 9, true],
    ["😀😀", 12, false], // 8 bytes, 4 UTF-16 units
    ["x".repeat(2730), 8191, false],
    ["x".repeat(2731), 8191, true],
  ];
  for (const [text, max, want] of cases) {
    assert.equal(mayExceedTokens(text, max), want, `${text.length} units within ${max}`);
    if (!want) {
      for (const counter of [cl100k, estimateCounter]) assert.ok(counter.count(text) <= max);
    }
  }
});

Deno.test("providers expose their model's token counter", () => {
  const openai = createOpenAIProvider({
    apiKey: "sk-test",
    model: "text-embedding-3-small",
    dimensions: 8,
    timeoutMs: 1000,
  });
  assert.equal(openai.tokens, cl100k);
  const other = createOpenAIProvider({
    apiKey: "sk-test",
    baseURL: "http://127.0.0.1:9/v1",
    model: "nomic-embed-text",
    dimensions: 8,
    timeoutMs: 1000,
  });
  assert.equal(other.tokens.name, "estimate");
  assert.equal(
    createLocalProvider({ model: "local-hash-v1", dimensions: 8 }).tokens.name,
    "estimate",
  );
});
