// Settings of the function and the worker, read once from the environment.
// The model and dimensions of each table are database configuration
// (util.embedding_targets); the environment supplies credentials and limits.
import { type Env, flag, nonNegativeInt, positiveInt } from "./env.ts";
import { createLocalProvider } from "./providers/local.ts";
import { createOpenAIBatchClient } from "./providers/batches.ts";
import { createOpenAIProvider, keyFingerprint, OPENAI_BASE_URL } from "./providers/openai.ts";
import type { BatchAccount } from "./batch_tick.ts";
import { type ModelFacts, modelFacts, ModelFactsError } from "./providers/registry.ts";
import { type EmbeddingProvider, ProviderError } from "./providers/types.ts";

export { type Env, SettingsError } from "./env.ts";

/** The registry's facts of a target's model and size; a size it does not make is permanent. */
function checkedFacts(model: string, dimensions: number): ModelFacts {
  try {
    return modelFacts(model, dimensions);
  } catch (err) {
    if (!(err instanceof ModelFactsError)) throw err;
    throw new ProviderError(err.message, { retryable: false, cause: err });
  }
}

/**
 * What one call of the embed function takes on by default (core.ts,
 * call_budget.ts): 300 ms of splitting and counting (EMBED_CPU_BUDGET_MS)
 * and 128 chunks (EMBED_MAX_CHUNKS_PER_CALL), so that with the rest of a
 * call (start-up, the provider's answers, the write) it stays under half of
 * the hosted 2 s CPU limit and 256 MB (bench/RESULTS.md, "Hosted limits").
 */
export const DEFAULT_CPU_BUDGET_MS = 300;
export const DEFAULT_MAX_CHUNKS_PER_CALL = 128;

/**
 * The embed function's default time budget, ms (EMBED_TIME_BUDGET_MS): no
 * provider request starts after it, so with the last one's timeout
 * (EMBEDDING_TIMEOUT_MS, 30 s) and the write a call ends within about
 * 115 s: inside pg_net's timeout of the call (util.process_embeddings'
 * timeout_milliseconds, 120 s) and the hosted wall limit (150 s).
 */
export const DEFAULT_TIME_BUDGET_MS = 80_000;

export interface CoreSettings {
  /** Epoch-relative budget of one call, ms (see DEFAULT_TIME_BUDGET_MS). */
  timeBudgetMs: number;
  /** What one call of the embed function takes on: ms of splitting and counting, chunks. */
  callLimits: { cpuMs: number; chunks: number };
  providerTimeoutMs: number;
  providerConcurrency: number;
  truncate: boolean;
  /**
   * Send the write's vectors as text through postgres.js instead of binary
   * through node-postgres (EMBEDDING_TEXT_VECTORS): for comparing the two
   * (bench/drain_pull.ts), or a connection path that refuses binary parameters.
   */
  textVectors: boolean;
  providerFor: (model: string, dimensions: number) => EmbeddingProvider;
  /**
   * The batch API account for a model (batch_tick.ts): the OpenAI-compatible
   * endpoint's, for a model it serves; null for models embedded here, or
   * without a key. The batch lane sends such models' bulk work online.
   */
  batchAccountFor: (model: string, dimensions: number) => BatchAccount | null;
  /**
   * Output lines one call of the embed function applies from a finished
   * batch (EMBED_BATCH_LINES_PER_CALL): parsing and writing a line of a
   * 1536-dimension vector costs about 0.2-0.3 ms of CPU, so 2,000 stay well
   * inside the hosted 2 s; the next tick goes on from there.
   */
  batchLinesPerCall: number;
}

/**
 * Reads settings from the environment. The registry (providers/registry.ts)
 * says which provider serves a model and which sizes it makes: `local-*`
 * models use the offline embedder; any other model goes to the
 * OpenAI-compatible endpoint (`OPENAI_BASE_URL`, default OpenAI) with
 * `OPENAI_API_KEY`. A size the model does not make fails the target's rows
 * as permanent, with a message that says so.
 */
export function coreSettings(env: Env): CoreSettings {
  const providerTimeoutMs = positiveInt(env, "EMBEDDING_TIMEOUT_MS", 30_000);
  const apiKey = env("OPENAI_API_KEY");
  const baseURL = env("OPENAI_BASE_URL") || undefined;
  const providers = new Map<string, EmbeddingProvider>();
  const providerFor = (model: string, dimensions: number): EmbeddingProvider => {
    const key = `${model}\u0000${dimensions}`;
    let provider = providers.get(key);
    if (provider) return provider;
    if (checkedFacts(model, dimensions).provider === "local") {
      provider = createLocalProvider({ model, dimensions });
    } else {
      if (!apiKey) {
        throw new ProviderError(
          `OPENAI_API_KEY is not set, so model ${model} cannot be used: set the secret ` +
            `(supabase secrets set OPENAI_API_KEY=...) or switch the table to a local-* model`,
          { retryable: false },
        );
      }
      provider = createOpenAIProvider({
        apiKey,
        baseURL,
        model,
        dimensions,
        timeoutMs: providerTimeoutMs,
      });
    }
    providers.set(key, provider);
    return provider;
  };
  const accounts = new Map<string, BatchAccount | null>();
  const batchAccountFor = (model: string, dimensions: number): BatchAccount | null => {
    const key = `${model}\u0000${dimensions}`;
    if (accounts.has(key)) return accounts.get(key)!;
    let account: BatchAccount | null = null;
    try {
      if (apiKey && checkedFacts(model, dimensions).provider !== "local") {
        account = {
          client: createOpenAIBatchClient({
            apiKey,
            baseURL,
            model,
            dimensions,
            timeoutMs: providerTimeoutMs * 4,
          }),
          baseURL: baseURL ?? OPENAI_BASE_URL,
          keyFingerprint: keyFingerprint(apiKey),
        };
      }
    } catch {
      account = null; // a size the model does not make: its rows fail online, with the reason
    }
    accounts.set(key, account);
    return account;
  };
  return {
    timeBudgetMs: positiveInt(env, "EMBED_TIME_BUDGET_MS", DEFAULT_TIME_BUDGET_MS),
    callLimits: {
      cpuMs: nonNegativeInt(env, "EMBED_CPU_BUDGET_MS", DEFAULT_CPU_BUDGET_MS),
      chunks: positiveInt(env, "EMBED_MAX_CHUNKS_PER_CALL", DEFAULT_MAX_CHUNKS_PER_CALL),
    },
    providerTimeoutMs,
    providerConcurrency: positiveInt(env, "EMBEDDING_CONCURRENCY", 2),
    truncate: flag(env, "EMBEDDING_TRUNCATE"),
    textVectors: flag(env, "EMBEDDING_TEXT_VECTORS"),
    providerFor,
    batchAccountFor,
    batchLinesPerCall: positiveInt(env, "EMBED_BATCH_LINES_PER_CALL", 2000),
  };
}
