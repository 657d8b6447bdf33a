// The one recovery policy of the core, the embed function and the worker:
// what a failure means (the row's own, or the provider's as a whole) and
// how long to wait (one capped exponential curve with jitter that honours
// Retry-After). The database side settles rows and circuits with the same
// curve (util._backoff_seconds, supabase/schemas/16_jobs.sql).
import { findModel, UNKNOWN_MODEL } from "./providers/registry.ts";
import type { ProviderError } from "./providers/types.ts";

export interface Backoff {
  /** The first pause; it doubles with each attempt. */
  baseMs: number;
  /** The longest pause. */
  capMs: number;
}

/** Reconnecting to a database that went away (a restart, a failover). */
export const RECONNECT: Backoff = { baseMs: 200, capMs: 5_000 };

/** The worker's claims while the database does not answer. */
export const CLAIM_RETRY: Backoff = { baseMs: 500, capMs: 30_000 };

/**
 * Milliseconds to wait before attempt `attempt` + 1 (`attempt` from 1):
 * `baseMs` doubling per attempt, jittered between 75% and 125%, at most
 * `capMs`, and never less than what the other side asked for
 * (`retryAfterMs`). The same curve as util._backoff_seconds.
 */
export function backoffMs(
  attempt: number,
  curve: Backoff,
  retryAfterMs = 0,
  random: () => number = Math.random,
): number {
  const step = curve.baseMs * 2 ** Math.min(Math.max(attempt - 1, 0), 30);
  return Math.min(curve.capMs, Math.max(retryAfterMs, Math.round(step * (0.75 + random() * 0.5))));
}

/**
 * Who serves a model, by the registry: the offline lexical embedder for
 * `local-*` models, the OpenAI-compatible endpoint for any other (known or
 * not). A circuit is per provider (util._provider_of reads the same facts).
 */
export function providerOf(model: string): string {
  return findModel(model)?.provider ?? UNKNOWN_MODEL.provider;
}

/**
 * Whether a provider failure says nothing about the inputs: it is
 * unreachable, overloaded or rate limited, or it timed out or answered
 * garbage (ProviderError.retryable: 408, 409, 429, 5xx, timeouts,
 * connection failures, malformed answers). Such a failure is the
 * provider's, not the rows'. A rejection of the input (400, 413, 422) or of
 * the configuration (401, 403, 404) is permanent and the rows' own.
 */
export function isProviderWide(error: ProviderError): boolean {
  return error.retryable;
}

/** What a provider-wide failure does to the rows of the call it stopped. */
export type ProviderFailureVerdict = "defer" | "fail";

/**
 * How one batch saw each provider: a provider-wide failure while no call to
 * it has succeeded opens its circuit (calls stop, rows are deferred); a
 * success closes it. Once the provider answered in this batch, a failure of
 * one of its calls (other than a rate limit) is charged to that call's
 * rows: the provider is up, so an input that keeps failing must still reach
 * max_attempts instead of being retried forever.
 */
export class ProviderHealth {
  readonly #seen = new Map<string, { ok: boolean; failure?: ProviderError }>();

  succeeded(provider: string): void {
    this.#seen.set(provider, { ok: true });
  }

  /** Records a provider-wide failure and says what it means for the call's rows. */
  failed(provider: string, error: ProviderError): ProviderFailureVerdict {
    const seen = this.#seen.get(provider);
    if (seen?.ok) return error.status === 429 ? "defer" : "fail";
    this.#seen.set(provider, { ok: false, failure: error });
    return "defer";
  }

  /** True while calls to `provider` should not start (it failed as a whole, nothing succeeded). */
  isDown(provider: string): boolean {
    return this.#seen.get(provider)?.ok === false;
  }

  /** What the batch tells the circuits (util._settle_jobs). */
  reports(): { provider: string; ok: boolean; reason?: string; retry_after?: number }[] {
    return [...this.#seen].map(([provider, { ok, failure }]) =>
      ok ? { provider, ok } : {
        provider,
        ok,
        reason: failure?.message,
        retry_after: failure?.retryAfterMs ? Math.ceil(failure.retryAfterMs / 1000) : undefined,
      }
    );
  }
}
