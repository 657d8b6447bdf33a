// Embeddings from OpenAI or any OpenAI-compatible endpoint (gateways, Ollama,
// vLLM, TEI, LM Studio) through the official SDK.
import { createHash } from "node:crypto";
import OpenAI from "openai";
import type { Vector } from "../vectors.ts";
import { rateLimitsOf } from "./rate_limits.ts";
import { modelLimits } from "./registry.ts";
import { tokenCounterFor } from "./tokens.ts";
import { classifyProviderError, type EmbeddingProvider, ProviderError } from "./types.ts";

export const OPENAI_BASE_URL = "https://api.openai.com/v1";

export interface OpenAIProviderOptions {
  apiKey: string;
  /** An OpenAI-compatible endpoint, e.g. `http://localhost:11434/v1`; default OpenAI. */
  baseURL?: string;
  model: string;
  dimensions: number;
  /** Per request; a request that takes longer fails as retryable. */
  timeoutMs: number;
  /** Inputs per request; default the model's limit in the registry. */
  maxBatchInputs?: number;
}

/**
 * A fingerprint of an API key for naming its rate budget: the first 16 hex
 * digits of its SHA-256, which does not give the key back.
 */
export function keyFingerprint(apiKey: string): string {
  return createHash("sha256").update(apiKey).digest("hex").slice(0, 16);
}

/**
 * Whether to send `dimensions` with the request: as the registry says for a
 * model it knows (OpenAI's text-embedding-3-* models shorten their vectors
 * to it; ada-002 rejects it). Other model names only exist on other
 * endpoints (with `baseURL`), where it is sent so that servers supporting it
 * return the configured size; a server that does not support it either
 * ignores it (its vectors are then checked against the configured
 * dimensions) or rejects the request as permanent.
 */
export function sendsDimensions(model: string, hasBaseURL: boolean): boolean {
  return modelLimits(model).dimensionsParameter ?? hasBaseURL;
}

export function createOpenAIProvider(opts: OpenAIProviderOptions): EmbeddingProvider {
  const { apiKey, model, dimensions, timeoutMs } = opts;
  // Retries belong to the queue (with backoff and Retry-After), not the SDK:
  // an SDK retry inside a call would hold the batch and hide the failure.
  // The base URL is always explicit so the SDK never falls back to its own
  // reading of OPENAI_BASE_URL from the process environment.
  const client = new OpenAI({
    apiKey,
    baseURL: opts.baseURL ?? OPENAI_BASE_URL,
    timeout: timeoutMs,
    maxRetries: 0,
  });
  const withDimensions = sendsDimensions(model, opts.baseURL !== undefined);
  // The size itself is checked by the caller (settings.ts, through
  // modelFacts) and against every response; here only the limits are read.
  const limits = modelLimits(model);

  return {
    model,
    dimensions,
    maxBatchInputs: opts.maxBatchInputs ?? limits.maxBatchInputs,
    maxBatchTokens: limits.maxBatchTokens,
    maxInputTokens: limits.maxInputTokens,
    tokens: tokenCounterFor(model),
    budgetKey: {
      baseURL: opts.baseURL ?? OPENAI_BASE_URL,
      keyFingerprint: keyFingerprint(apiKey),
      model,
    },
    async embed(texts, signal, report): Promise<Vector[]> {
      if (texts.length === 0) return [];
      try {
        const { data: response, response: raw } = await client.embeddings.create({
          model,
          input: texts,
          ...(withDimensions ? { dimensions } : {}),
          // base64 float32: a quarter of the JSON of floats. Asked for
          // explicitly, the SDK hands the text over as it came and it is
          // decoded here straight into a Float32Array (the SDK's own decoding
          // makes an array of numbers of each vector, several times the CPU).
          // Endpoints that answer floats anyway work too.
          encoding_format: "base64",
        }, { signal }).withResponse();
        const vectors = vectorsInOrder(response.data, texts.length, dimensions, model);
        const used = response.usage?.prompt_tokens;
        report?.({
          usedTokens: typeof used === "number" && Number.isFinite(used) ? used : undefined,
          limits: rateLimitsOf(raw.headers),
        });
        return vectors;
      } catch (err) {
        // The caller tells its own abort apart by `signal.aborted`.
        if (signal?.aborted) throw err;
        throw classifyProviderError(err, { model, timeoutMs, redact: [apiKey, ...texts] });
      }
    },
  };
}

/**
 * The response's vectors ordered by `index`, checked against the request:
 * one vector per input, each of `dimensions` finite numbers. A mismatch is
 * treated as a transient fault of the endpoint (retryable); if it persists,
 * the message says what to fix.
 */
export function vectorsInOrder(
  data: unknown,
  count: number,
  dimensions: number,
  model: string,
): Vector[] {
  const malformed = (detail: string) =>
    new ProviderError(`embedding with ${model} failed: the endpoint answered ${detail}`, {
      retryable: true,
    });
  if (!Array.isArray(data)) throw malformed("without a data array");
  if (data.length !== count) {
    throw malformed(`${data.length} vectors for ${count} inputs`);
  }
  const vectors: Vector[] = new Array(count);
  data.forEach((item: { index?: unknown; embedding?: unknown }, position) => {
    const index = item?.index === undefined ? position : item.index;
    if (typeof index !== "number" || !Number.isInteger(index) || index < 0 || index >= count) {
      throw malformed(`an embedding with index ${JSON.stringify(index)} for ${count} inputs`);
    }
    if (vectors[index] !== undefined) throw malformed(`two embeddings with index ${index}`);
    const embedding = typeof item.embedding === "string"
      ? float32FromBase64(item.embedding)
      : item.embedding;
    if (!Array.isArray(embedding) && !(embedding instanceof Float32Array)) {
      throw malformed("an embedding that is neither base64 float32 nor a list of numbers");
    }
    if (embedding.length !== dimensions) {
      throw malformed(
        `vectors of ${embedding.length} dimensions, expected ${dimensions}: make the table's ` +
          `dimensions match the model (or use a model that accepts a dimensions parameter)`,
      );
    }
    if (!allFinite(embedding)) {
      throw malformed("a vector with values that are not finite numbers");
    }
    vectors[index] = embedding;
  });
  return vectors;
}

/** Whether every value is a finite number. */
function allFinite(values: Float32Array | unknown[]): boolean {
  if (values instanceof Float32Array) {
    // One branch-free pass: x * 0 is NaN for NaN and ±Infinity, 0 otherwise.
    let sum = 0;
    for (let i = 0; i < values.length; i++) sum += values[i] * 0;
    return sum === 0;
  }
  return values.every((v) => typeof v === "number" && Number.isFinite(v));
}

/** Little-endian float32 values from base64, as the embeddings API sends them; null if not whole floats. */
function float32FromBase64(text: string): Float32Array | null {
  let bytes: Uint8Array;
  try {
    bytes = Uint8Array.fromBase64(text);
  } catch {
    return null;
  }
  if (bytes.length % 4 !== 0) return null;
  // On a little-endian host the decoded bytes are the floats: no copy.
  if (LITTLE_ENDIAN) return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
  const view = new DataView(bytes.buffer);
  const floats = new Float32Array(bytes.length / 4);
  for (let i = 0; i < floats.length; i++) floats[i] = view.getFloat32(i * 4, true);
  return floats;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
