// The offline embedder behind `local-*` models: lets the demo and the tests
// run with no API key and no network.
import { LOCAL_MODEL_PREFIX, modelFacts, ModelFactsError } from "./registry.ts";
import { tokenCounterFor } from "./tokens.ts";
import { type EmbeddingProvider, ProviderError } from "./types.ts";
import { hash32 } from "../hash32.ts";

/**
 * A deterministic, dependency-free embedder by feature hashing: every
 * lower-cased word and every character 3-gram of a word (with boundary
 * marks) adds a signed weight to one of `dimensions` buckets; the result is
 * L2-normalised.
 *
 * It is lexical, not semantic: texts sharing words or word pieces come out
 * close ("embedding" ~ "embeddings"), but synonyms and paraphrases do not
 * ("car" is no nearer to "automobile" than to "banana"). Good for demos,
 * tests and keyword-like similarity; use a real model for meaning.
 *
 * Text with no letters or digits is hashed by its other characters; text
 * with nothing but whitespace maps to a fixed unit vector (first dimension
 * 1), never to a zero vector, whose cosine distance is undefined.
 */
/** Its vectors are plain numbers (computed here, never decoded). */
export interface LocalProvider extends EmbeddingProvider {
  embed(texts: string[], signal?: AbortSignal): Promise<number[][]>;
}

export function createLocalProvider(
  opts: { model: string; dimensions: number },
): LocalProvider {
  const { model, dimensions } = opts;
  // The limits of the local family in the registry, whatever the name, so
  // the embedder behaves the same under any name it is given.
  let facts;
  try {
    facts = modelFacts(
      model.startsWith(LOCAL_MODEL_PREFIX) ? model : LOCAL_MODEL_PREFIX,
      dimensions,
    );
  } catch (err) {
    if (!(err instanceof ModelFactsError)) throw err;
    throw new ProviderError(
      `the local embedder needs a positive whole number of dimensions, got ${dimensions}`,
      { retryable: false, cause: err },
    );
  }
  return {
    model,
    dimensions,
    maxBatchInputs: facts.maxBatchInputs,
    maxBatchTokens: facts.maxBatchTokens,
    maxInputTokens: facts.maxInputTokens,
    tokens: tokenCounterFor(model),
    embed(texts: string[], signal?: AbortSignal): Promise<number[][]> {
      try {
        signal?.throwIfAborted();
        return Promise.resolve(texts.map((text) => hashEmbed(text, dimensions)));
      } catch (err) {
        return Promise.reject(err);
      }
    },
  };
}

const WORD_WEIGHT = 1;
const TRIGRAM_WEIGHT = 0.5;

/** The lexical feature-hashing vector of one text (exported for tests). */
export function hashEmbed(text: string, dimensions: number): number[] {
  const vector = new Float64Array(dimensions);
  const add = (feature: string, weight: number) => {
    const h = hash32(feature);
    // Bucket from the hash, sign from an independent bit, so collisions
    // cancel out on average instead of piling up.
    vector[h % dimensions] += (h & 0x80000000 ? -1 : 1) * weight;
  };
  const normalised = text.normalize("NFKC").toLowerCase();
  const words = normalised.match(/[\p{L}\p{N}]+/gu) ?? [];
  for (const word of words) {
    add(`w:${word}`, WORD_WEIGHT);
    const chars = Array.from(`<${word}>`);
    for (let i = 0; i + 3 <= chars.length; i++) {
      add(`g:${chars.slice(i, i + 3).join("")}`, TRIGRAM_WEIGHT);
    }
  }
  if (words.length === 0) {
    for (const char of normalised.replace(/\s+/gu, "")) add(`c:${char}`, WORD_WEIGHT);
  }
  let norm = 0;
  for (const value of vector) norm += value * value;
  norm = Math.sqrt(norm);
  if (norm === 0) {
    // Nothing to hash, or features that cancelled out exactly.
    const unit = new Array<number>(dimensions).fill(0);
    unit[0] = 1;
    return unit;
  }
  return Array.from(vector, (value) => value / norm);
}
