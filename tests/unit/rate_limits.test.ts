// Reading a provider's rate-limit headers (providers/rate_limits.ts) and
// the fake provider's durations, which must read back the same.
import assert from "node:assert/strict";
import { goDuration } from "../../devtools/fake_openai.ts";
import {
  parseDurationMs,
  rateLimitsOf,
} from "../../supabase/functions/_shared/providers/rate_limits.ts";

Deno.test("parseDurationMs reads OpenAI's durations and bare seconds; refuses the rest", () => {
  const cases: [string | null, number | undefined][] = [
    ["6m0s", 360_000],
    ["120ms", 120],
    ["1s", 1000],
    ["0.5s", 500],
    ["1h2m3s", 3_723_000],
    ["17.2s", 17_200],
    ["2", 2000],
    ["250us", 0],
    ["", undefined],
    [null, undefined],
    ["soon", undefined],
    ["5m later", undefined],
    ["-1s", undefined],
  ];
  for (const [text, ms] of cases) assert.equal(parseDurationMs(text), ms, String(text));
});

Deno.test("goDuration writes what parseDurationMs reads", () => {
  for (const ms of [0, 1, 120, 999, 1000, 6500, 59_990, 60_000, 61_500, 360_000]) {
    const back = parseDurationMs(goDuration(ms))!;
    assert.ok(Math.abs(back - ms) <= 10, `${ms} -> ${goDuration(ms)} -> ${back}`);
  }
});

Deno.test("rateLimitsOf: OpenAI's x-ratelimit-* headers, absent or unreadable ones left out", () => {
  const headers = new Headers({
    "x-ratelimit-limit-requests": "3000",
    "x-ratelimit-limit-tokens": "1000000",
    "x-ratelimit-remaining-requests": "2999",
    "x-ratelimit-remaining-tokens": "999989",
    "x-ratelimit-reset-requests": "20ms",
    "x-ratelimit-reset-tokens": "0s",
  });
  assert.deepEqual(rateLimitsOf(headers), {
    limitRequests: 3000,
    limitTokens: 1_000_000,
    remainingRequests: 2999,
    remainingTokens: 999_989,
    resetRequestsMs: 20,
    resetTokensMs: 0,
  });
  assert.deepEqual(rateLimitsOf(new Headers()), {});
  assert.deepEqual(rateLimitsOf(undefined), {});
  assert.deepEqual(
    rateLimitsOf(
      new Headers({ "x-ratelimit-limit-tokens": "lots", "x-ratelimit-reset-tokens": "?" }),
    ),
    {},
  );
});
