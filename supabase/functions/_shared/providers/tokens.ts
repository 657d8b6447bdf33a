// Token counts and request batching for embedding providers: the model's
// real tokenizer where one is known (OpenAI's models, through js-tiktoken's
// rank files), else an estimate that errs on the side of too many tokens.
import cl100kBase from "js-tiktoken/ranks/cl100k_base";
import { createBpeCounter } from "./bpe.ts";
import { modelLimits, type TokenizerName } from "./registry.ts";

export interface TokenCounter {
  /** Stable name of the encoding, e.g. "cl100k_base", or "estimate" */
  readonly name: string;
  count(text: string): number;
  /** longest prefix of text with at most maxTokens tokens, cut between code points */
  truncate(text: string, maxTokens: number): string;
}

/** The conservative estimate (see estimateTokens), for models with no known tokenizer. */
export const estimateCounter: TokenCounter = {
  name: "estimate",
  count: estimateTokens,
  truncate: truncateToTokens,
};

/**
 * One counter per encoding for the whole process: its rank table is parsed
 * on first use only (a few hundred milliseconds), then kept.
 */
const cl100kCounter: TokenCounter = createBpeCounter("cl100k_base", cl100kBase);

/** The counter of each tokenizer the registry names. */
const COUNTERS: Record<TokenizerName, TokenCounter> = {
  cl100k_base: cl100kCounter,
  estimate: estimateCounter,
};

/**
 * The token counter of `model`, as the registry (registry.ts) names it: the
 * real tokenizer for OpenAI's embedding models, the estimate for any other
 * name (local models, and models served by other OpenAI-compatible
 * endpoints, whose tokenizers are not shipped).
 */
export function tokenCounterFor(model: string): TokenCounter {
  return COUNTERS[modelLimits(model).tokenizer];
}

/** Bytes of the UTF-8 encoding of the code point starting at `text[i]`, and its UTF-16 length. */
function codePointAt(text: string, i: number): { bytes: number; units: number } {
  const unit = text.charCodeAt(i);
  if (unit < 0x80) return { bytes: 1, units: 1 };
  if (unit < 0x800) return { bytes: 2, units: 1 };
  if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length) {
    const next = text.charCodeAt(i + 1);
    if (next >= 0xdc00 && next <= 0xdfff) return { bytes: 4, units: 2 };
  }
  return { bytes: 3, units: 1 };
}

/**
 * Estimated token count: UTF-8 bytes / 3, rounded up, so at least 1 for any
 * non-empty text. An estimate, not a tokenizer: BPE tokenizers average about
 * 4 bytes per token on English, so this over-counts prose, and is close for
 * CJK (3 bytes, usually one token per character).
 */
export function estimateTokens(text: string): number {
  let bytes = 0;
  for (let i = 0; i < text.length;) {
    const cp = codePointAt(text, i);
    bytes += cp.bytes;
    i += cp.units;
  }
  return Math.ceil(bytes / 3);
}

/**
 * The longest prefix of `text` whose estimate is at most `maxTokens`. Cuts
 * between code points, never inside a surrogate pair.
 */
export function truncateToTokens(text: string, maxTokens: number): string {
  const maxBytes = Math.max(0, Math.floor(maxTokens)) * 3;
  let bytes = 0;
  for (let i = 0; i < text.length;) {
    const cp = codePointAt(text, i);
    if (bytes + cp.bytes > maxBytes) return text.slice(0, i);
    bytes += cp.bytes;
    i += cp.units;
  }
  return text;
}

/**
 * Whether `text` can have more than `maxTokens` tokens by any counter here:
 * false when it has at most `maxTokens` UTF-8 bytes (every token is at least
 * one byte, and a UTF-16 unit at most three), so short texts are never
 * tokenized (and a process that sees only short texts never loads a rank
 * table).
 */
export function mayExceedTokens(text: string, maxTokens: number): boolean {
  return 3 * text.length > maxTokens;
}

/**
 * Splits the indices of `texts` into consecutive batches of at most
 * `maxInputs` texts and at most `maxTokens` tokens by `count` (default: the
 * estimate). A text that is
 * over `maxTokens` on its own gets a batch of its own (the provider then
 * rejects or truncates it, without taking others down). Every index appears
 * exactly once, in order.
 */
export function planBatches(
  texts: string[],
  limits: { maxInputs: number; maxTokens: number },
  count: (text: string) => number = estimateTokens,
): number[][] {
  const maxInputs = Math.max(1, Math.floor(limits.maxInputs));
  // When all texts together cannot exceed the token limit, only the number
  // of inputs matters, and no text needs counting.
  const length = texts.reduce((sum, text) => sum + text.length, 0);
  const costOf = 3 * length > limits.maxTokens ? count : () => 0;
  const batches: number[][] = [];
  let current: number[] = [];
  let tokens = 0;
  texts.forEach((text, index) => {
    const cost = costOf(text);
    if (current.length > 0 && (current.length >= maxInputs || tokens + cost > limits.maxTokens)) {
      batches.push(current);
      current = [];
      tokens = 0;
    }
    current.push(index);
    tokens += cost;
  });
  if (current.length > 0) batches.push(current);
  return batches;
}
