// Settings of the function and the worker, read once from the environment.
// The model and dimensions of each table are database configuration
// (util.embedding_targets); the environment supplies credentials and limits.
import { type Env, flag, nonNegativeInt, positiveInt } from "./env.ts";
import { createLocalProvider } from "./providers/local.ts";
import { createOpenAIProvider } from "./providers/openai.ts";
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
 * The embed function's default CPU budget for splitting and counting, ms
 * (EMBED_CPU_BUDGET_MS): with the rest of a call (start-up, provider
 * answers, the write) a call stays under half of the hosted 2 s CPU limit
 * (bench/RESULTS.md, "Hosted limits").
 */
export const DEFAULT_CPU_BUDGET_MS = 300;

export interface CoreSettings {
  /** Epoch-relative budget of one call, ms (hosted edge functions stop at ~150 s). */
  timeBudgetMs: number;
  /** The embed function's CPU budget for splitting and counting per call, ms (core.ts). */
  cpuBudgetMs: number;
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
  return {
    timeBudgetMs: positiveInt(env, "EMBED_TIME_BUDGET_MS", 100_000),
    cpuBudgetMs: nonNegativeInt(env, "EMBED_CPU_BUDGET_MS", DEFAULT_CPU_BUDGET_MS),
    providerTimeoutMs,
    providerConcurrency: positiveInt(env, "EMBEDDING_CONCURRENCY", 2),
    truncate: flag(env, "EMBEDDING_TRUNCATE"),
    textVectors: flag(env, "EMBEDDING_TEXT_VECTORS"),
    providerFor,
  };
}
