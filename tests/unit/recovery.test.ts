// The recovery policy (recovery.ts), pure: the one backoff curve and what a
// provider failure means for the rows of the call it stopped.
import assert from "node:assert/strict";
import { ProviderError } from "../../supabase/functions/_shared/providers/types.ts";
import {
  backoffMs,
  isProviderWide,
  ProviderHealth,
  providerOf,
} from "../../supabase/functions/_shared/recovery.ts";

const CURVE = { baseMs: 1_000, capMs: 30_000 };
const middle = () => 0.5; // no jitter: factor 1
const low = () => 0; // factor 0.75
const high = () => 0.999999; // factor ~1.25

Deno.test("backoffMs: doubles from the base, capped, jittered 75-125%, never below Retry-After", () => {
  const cases: [attempt: number, retryAfterMs: number, random: () => number, want: number][] = [
    [1, 0, middle, 1_000],
    [2, 0, middle, 2_000],
    [3, 0, middle, 4_000],
    [5, 0, middle, 16_000],
    [6, 0, middle, 30_000], // 32 s capped
    [60, 0, middle, 30_000], // no overflow far out
    [0, 0, middle, 1_000], // attempt 0 reads as the first
    [1, 0, low, 750],
    [1, 0, high, 1_250],
    [1, 7_000, middle, 7_000], // the provider's Retry-After wins
    [1, 90_000, middle, 30_000], // but not past the cap
  ];
  for (const [attempt, retryAfter, random, want] of cases) {
    assert.equal(backoffMs(attempt, CURVE, retryAfter, random), want, `${attempt}/${retryAfter}`);
  }
});

const error = (status: number | undefined, retryable: boolean) =>
  new ProviderError(`failed ${status}`, { retryable, status });

Deno.test("isProviderWide: 429, 5xx, timeouts and unreachable are the provider's; rejections are the rows'", () => {
  for (const status of [408, 409, 429, 500, 502, 503, 504, undefined]) {
    assert.equal(isProviderWide(error(status, true)), true, String(status));
  }
  for (const status of [400, 401, 403, 404, 413, 422]) {
    assert.equal(isProviderWide(error(status, false)), false, String(status));
  }
});

Deno.test("ProviderHealth: a failure before any success defers and opens; after a success it is the rows'", () => {
  const health = new ProviderHealth();
  assert.equal(health.failed("openai", error(503, true)), "defer");
  assert.equal(health.isDown("openai"), true, "calls stop");
  assert.equal(health.isDown("local"), false, "other providers go on");
  assert.deepEqual(health.reports(), [{
    provider: "openai",
    ok: false,
    reason: "failed 503",
    retry_after: undefined,
  }]);

  health.succeeded("openai");
  assert.equal(health.isDown("openai"), false);
  assert.equal(health.failed("openai", error(500, true)), "fail", "the provider answers others");
  assert.equal(health.failed("openai", error(429, true)), "defer", "a rate limit is never a row's");
  assert.deepEqual(health.reports(), [{ provider: "openai", ok: true }]);
});

Deno.test("ProviderHealth: Retry-After reaches the circuit in whole seconds", () => {
  const health = new ProviderHealth();
  health.failed(
    "openai",
    new ProviderError("rate limited", { retryable: true, status: 429, retryAfterMs: 1_500 }),
  );
  assert.equal(health.reports()[0].retry_after, 2);
});

Deno.test("providerOf: local-* models are the offline embedder's, any other the endpoint's", () => {
  assert.equal(providerOf("local-hash-v1"), "local");
  assert.equal(providerOf("text-embedding-3-small"), "openai");
  assert.equal(providerOf("nomic-embed-text"), "openai");
});
