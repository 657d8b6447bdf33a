// What a provider's response says about its rate limits: OpenAI's
// x-ratelimit-* headers (limits per minute, what remains, and durations
// like `6m0s` or `120ms` until the limit is whole again), read once here
// for the rate budget (rate_budget.ts).

export interface RateLimitInfo {
  limitRequests?: number;
  limitTokens?: number;
  remainingRequests?: number;
  remainingTokens?: number;
  resetRequestsMs?: number;
  resetTokensMs?: number;
}

const UNIT_MS: Record<string, number> = { h: 3_600_000, m: 60_000, s: 1_000, ms: 1, us: 0.001 };

/**
 * Milliseconds of a Go-style duration as OpenAI writes them (`6m0s`,
 * `1.5s`, `120ms`, `1h2m3s`), or of a bare number of seconds; undefined
 * when unreadable.
 */
export function parseDurationMs(text: string | null | undefined): number | undefined {
  const value = text?.trim();
  if (!value) return undefined;
  if (/^\d+(\.\d+)?$/.test(value)) return Math.round(Number(value) * 1000);
  const parts = [...value.matchAll(/(\d+(?:\.\d+)?)(ms|us|h|m|s)/g)];
  if (parts.length === 0 || parts.map((p) => p[0]).join("") !== value) return undefined;
  return Math.round(parts.reduce((sum, [, n, unit]) => sum + Number(n) * UNIT_MS[unit], 0));
}

function count(text: string | null): number | undefined {
  if (text === null || !/^\s*\d+\s*$/.test(text)) return undefined;
  return Number(text);
}

/** The rate-limit headers of a response; an empty object when it sent none. */
export function rateLimitsOf(headers: Headers | undefined): RateLimitInfo {
  if (!headers) return {};
  const info: RateLimitInfo = {
    limitRequests: count(headers.get("x-ratelimit-limit-requests")),
    limitTokens: count(headers.get("x-ratelimit-limit-tokens")),
    remainingRequests: count(headers.get("x-ratelimit-remaining-requests")),
    remainingTokens: count(headers.get("x-ratelimit-remaining-tokens")),
    resetRequestsMs: parseDurationMs(headers.get("x-ratelimit-reset-requests")),
    resetTokensMs: parseDurationMs(headers.get("x-ratelimit-reset-tokens")),
  };
  for (const key of Object.keys(info) as (keyof RateLimitInfo)[]) {
    if (info[key] === undefined) delete info[key];
  }
  return info;
}
