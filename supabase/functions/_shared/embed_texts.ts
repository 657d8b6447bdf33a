// The provider calls of a batch: each distinct (model, dimensions, text)
// once, in provider batches planned by count and token estimate, a few in
// flight at a time. A permanent rejection of a multi-input batch is split in
// halves to find the one bad input, so the others still embed (I5). A
// provider-wide failure (recovery.ts) stops the calls to that provider and
// defers their texts instead of failing them. Every call draws from the
// provider account's rate budget (rate_budget.ts), and carries at most one
// burst of it.
import { type EmbeddingProvider, ProviderError } from "./providers/types.ts";
import { isProviderWide, ProviderHealth, providerOf } from "./recovery.ts";
import { planBatches } from "./providers/tokens.ts";
import { BudgetSpent, embedWithinBudget, type RateBudget } from "./rate_budget.ts";
import type { Vector } from "./vectors.ts";

export interface EmbedRequest {
  text: string;
  model: string;
  dimensions: number;
  /** Its tokens, when already counted (else counted here, if the batching needs it). */
  tokens?: number;
}

export type EmbedOutcome =
  | { vector: Vector }
  | { error: string; retryable: boolean; retryAfterMs?: number }
  /** Stopped by a failure of the provider as a whole: no attempt spent. */
  | { deferred: true; error: string; retryAfterMs?: number }
  | { handedBack: true };

export interface EmbedOptions {
  providerFor: (model: string, dimensions: number) => EmbeddingProvider;
  /** Epoch ms after which no new provider call starts. */
  deadline?: number;
  signal?: AbortSignal;
  concurrency?: number;
  /** How the providers fared: shared by the calls of a batch, reported to the circuits. */
  health?: ProviderHealth;
  /** The providers' rate budget (rate_budget.ts); without it calls go at once. */
  budget?: RateBudget;
  /** Longest wait for the budget before a call, ms (default 60 s, and never past the deadline). */
  budgetMaxWaitMs?: number;
}

/** How long a call may wait for its rate budget by default: well inside a claim's 120 s lease. */
export const DEFAULT_BUDGET_MAX_WAIT_MS = 60_000;

export interface EmbedCounts {
  providerCalls: number;
  providerInputs: number;
  embedded: number;
  /** Calls the provider answered 429 (rate limited). */
  rateLimited: number;
  /** Sleeps for the rate budget before calls, and their milliseconds. */
  budgetWaits?: number;
  budgetWaitMs?: number;
}

/**
 * Provider statuses that may come from one bad input of a batch, so halving the
 * batch isolates it; a bad key (401/403) or an unknown model (404) fails every
 * half alike and is not split.
 */
const SPLITTABLE_STATUSES = new Set([400, 413, 422]);

/** Embeds `requests`; the outcome of each, in order. */
export async function embedTexts(
  requests: EmbedRequest[],
  options: EmbedOptions,
  counts: EmbedCounts,
): Promise<EmbedOutcome[]> {
  const outcomes = new Array<EmbedOutcome>(requests.length);
  // Group by model and dimensions, then by text: one input per distinct text.
  const health = options.health ?? new ProviderHealth();
  const groups = new Map<
    string,
    { provider: EmbeddingProvider; byText: Map<string, number[]>; counted: Map<string, number> }
  >();
  requests.forEach((r, i) => {
    const key = `${r.model}\u0000${r.dimensions}`;
    let group = groups.get(key);
    if (!group) {
      groups.set(
        key,
        group = {
          provider: options.providerFor(r.model, r.dimensions),
          byText: new Map(),
          counted: new Map(),
        },
      );
    }
    if (r.tokens !== undefined) group.counted.set(r.text, r.tokens);
    const same = group.byText.get(r.text);
    if (same) same.push(i);
    else group.byText.set(r.text, [i]);
  });
  const settle = (byText: Map<string, number[]>, texts: string[], outcome: EmbedOutcome) => {
    for (const text of texts) for (const i of byText.get(text) ?? []) outcomes[i] = outcome;
  };

  async function call(
    provider: EmbeddingProvider,
    texts: string[],
    byText: Map<string, number[]>,
    counted: Map<string, number>,
  ) {
    if ((options.deadline && Date.now() > options.deadline) || options.signal?.aborted) {
      return settle(byText, texts, { handedBack: true });
    }
    const name = providerOf(provider.model);
    if (health.isDown(name)) {
      return settle(byText, texts, { deferred: true, error: "the provider is failing" });
    }
    try {
      // Reserved with the model's tokenizer: counted here when planning did not.
      const tokens = provider.budgetKey && options.budget
        ? texts.reduce((sum, text) => sum + (counted.get(text) ?? provider.tokens.count(text)), 0)
        : 0;
      const vectors = await embedWithinBudget(provider, texts, {
        budget: options.budget,
        priority: "backfill",
        maxWaitMs: options.budgetMaxWaitMs ?? DEFAULT_BUDGET_MAX_WAIT_MS,
        deadline: options.deadline,
        signal: options.signal,
        tokens,
        onCall: () => {
          counts.providerCalls++;
          counts.providerInputs += texts.length;
        },
        onRateLimited: () => counts.rateLimited++,
        onWait: (ms) => {
          counts.budgetWaits = (counts.budgetWaits ?? 0) + 1;
          counts.budgetWaitMs = (counts.budgetWaitMs ?? 0) + ms;
        },
      });
      health.succeeded(name);
      texts.forEach((text, t) => settle(byText, [text], { vector: vectors[t] }));
      counts.embedded += texts.length;
    } catch (err) {
      if (options.signal?.aborted) return settle(byText, texts, { handedBack: true });
      if (err instanceof BudgetSpent) {
        // Booked further ahead than this call may wait: the rows wait behind
        // the provider's circuit for that long (no attempt spent) instead of
        // coming straight back to be claimed and refused again.
        const spent = new ProviderError(`embedding with ${provider.model} waits: ${err.message}`, {
          retryable: true,
          status: 429,
          retryAfterMs: err.waitMs,
        });
        health.failed(name, spent);
        return settle(byText, texts, {
          deferred: true,
          error: spent.message,
          retryAfterMs: err.waitMs,
        });
      }
      const error = err instanceof ProviderError
        ? err
        : new ProviderError(`embedding failed: ${(err as Error)?.message ?? err}`, {
          retryable: true,
        });
      if (error.status === 429) counts.rateLimited++;
      if (!error.retryable && texts.length > 1 && SPLITTABLE_STATUSES.has(error.status ?? 0)) {
        const half = Math.ceil(texts.length / 2);
        await call(provider, texts.slice(0, half), byText, counted);
        await call(provider, texts.slice(half), byText, counted);
        return;
      }
      if (isProviderWide(error) && health.failed(name, error) === "defer") {
        return settle(byText, texts, {
          deferred: true,
          error: error.message,
          retryAfterMs: error.retryAfterMs,
        });
      }
      settle(byText, texts, {
        error: error.message,
        retryable: error.retryable,
        retryAfterMs: error.retryAfterMs,
      });
    }
  }

  const tasks: (() => Promise<void>)[] = [];
  for (const { provider, byText, counted } of groups.values()) {
    const texts = [...byText.keys()];
    // A call fits the budget's burst, so that it never goes over a limit in one draw.
    const burst = provider.budgetKey && options.budget?.burstTokens(provider.budgetKey);
    const plan = planBatches(texts, {
      maxInputs: provider.maxBatchInputs,
      maxTokens: burst
        ? Math.min(provider.maxBatchTokens, Math.max(1, burst))
        : provider.maxBatchTokens,
    }, (text) => counted.get(text) ?? provider.tokens.count(text));
    for (const indices of plan) {
      tasks.push(() => call(provider, indices.map((i) => texts[i]), byText, counted));
    }
  }
  const concurrency = Math.max(1, options.concurrency ?? 2);
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(concurrency, tasks.length) }, async () => {
    while (next < tasks.length) await tasks[next++]();
  }));
  return outcomes;
}
