// embedWithinBudget (rate_budget.ts) against a budget and a provider kept
// in memory: reserve, wait, call, settle; a 429 retried whole; a wait too
// long refused; a budget that fails lets the call through.
import assert from "node:assert/strict";
import {
  BudgetSpent,
  embedWithinBudget,
  type Grant,
  type RateBudget,
  type Settlement,
} from "../../supabase/functions/_shared/rate_budget.ts";
import {
  type EmbeddingProvider,
  ProviderError,
} from "../../supabase/functions/_shared/providers/types.ts";
import { estimateCounter } from "../../supabase/functions/_shared/providers/tokens.ts";

function provider(answers: (Error | null)[], calls: string[][]): EmbeddingProvider {
  return {
    model: "m",
    dimensions: 2,
    maxBatchInputs: 10,
    maxBatchTokens: 1000,
    maxInputTokens: 100,
    tokens: estimateCounter,
    budgetKey: { baseURL: "u", keyFingerprint: "f", model: "m" },
    embed(texts, _signal, report) {
      calls.push([...texts]);
      const answer = answers.shift();
      if (answer) return Promise.reject(answer);
      report?.({ usedTokens: 3, limits: { limitTokens: 1000 } });
      return Promise.resolve(texts.map(() => new Float32Array([1, 0])));
    },
  };
}

function budget(grants: Grant[] | "fails") {
  const settled: Settlement[] = [];
  const reserved: { tokens: number; priority: string; maxWaitMs: number }[] = [];
  const b: RateBudget = {
    reserve(_key, tokens, priority, maxWaitMs) {
      if (grants === "fails") return Promise.reject(new Error("database gone"));
      reserved.push({ tokens, priority, maxWaitMs });
      return Promise.resolve(grants.shift() ?? { waitMs: 0, granted: true, lane: "backfill" });
    },
    settle(_key, _lane, s) {
      settled.push(s);
      return Promise.resolve();
    },
    burstTokens: () => undefined,
  };
  return { b, settled, reserved };
}

const limited = () =>
  new ProviderError("rate limited", { retryable: true, status: 429, retryAfterMs: 1 });

Deno.test("a call reserves its tokens, and settles with what the provider used and said", async () => {
  const calls: string[][] = [];
  const { b, settled, reserved } = budget([]);
  const vectors = await embedWithinBudget(provider([], calls), ["aaa", "bbbbbb"], {
    budget: b,
    priority: "backfill",
    maxWaitMs: 5000,
  });
  assert.equal(vectors.length, 2);
  assert.deepEqual(reserved, [{ tokens: 3, priority: "backfill", maxWaitMs: 5000 }]);
  assert.deepEqual(settled, [{ reservedTokens: 3, usedTokens: 3, limits: { limitTokens: 1000 } }]);
});

Deno.test("a 429 goes back to the budget and the same batch is called again whole", async () => {
  const calls: string[][] = [];
  const { b, settled } = budget([]);
  await embedWithinBudget(provider([limited(), limited()], calls), ["a", "b", "c"], {
    budget: b,
    priority: "backfill",
    maxWaitMs: 5000,
    tokens: 30,
  });
  assert.deepEqual(calls, [["a", "b", "c"], ["a", "b", "c"], ["a", "b", "c"]]);
  assert.deepEqual(settled.map((s) => [s.rateLimited ?? false, s.retryAfterMs, s.usedTokens]), [
    [true, 1, 0],
    [true, 1, 0],
    [false, undefined, 3],
  ]);
  // Past its retries the 429 is the caller's (the rows are deferred, not failed).
  await assert.rejects(
    embedWithinBudget(provider([limited(), limited()], []), ["a"], {
      budget: b,
      priority: "search",
      maxWaitMs: 5000,
      retriesAfter429: 1,
    }),
    (err) => err instanceof ProviderError && err.status === 429,
  );
});

Deno.test("a wait longer than the caller may wait is refused before any call; a failing budget is no gate", async () => {
  const calls: string[][] = [];
  const { b } = budget([{ waitMs: 9000, granted: false, lane: "backfill" }]);
  await assert.rejects(
    embedWithinBudget(provider([], calls), ["a"], {
      budget: b,
      priority: "backfill",
      maxWaitMs: 10,
    }),
    (err) => err instanceof BudgetSpent && err.waitMs === 9000,
  );
  assert.equal(calls.length, 0);
  const { b: broken } = budget("fails");
  await embedWithinBudget(provider([], calls), ["a"], {
    budget: broken,
    priority: "backfill",
    maxWaitMs: 10,
  });
  assert.equal(calls.length, 1);
});
