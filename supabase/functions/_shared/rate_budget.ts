// The one rate budget per provider account and model (I17), kept in
// Postgres (util._budget_reserve and util._budget_settle,
// supabase/schemas/17_budgets.sql) so that every worker process, every push
// call and every search draws from it. A call reserves its request and its
// tokens, sleeps as long as the budget says (callers wake in the order they
// reserved), calls, and settles: unused tokens go back, the response's
// rate-limit headers correct the budget. A 429 that happens anyway pauses
// and shrinks the budget, and the same call (the whole batch) goes again
// after the wait; it is never split.
import type postgres from "postgres";
import type { RateLimitInfo } from "./providers/rate_limits.ts";
import {
  type BudgetKey,
  type CallReport,
  type EmbeddingProvider,
  ProviderError,
} from "./providers/types.ts";
import { sleep } from "./sleep.ts";
import type { Vector } from "./vectors.ts";

export type BudgetPriority = "backfill" | "search";

export interface Grant {
  /** Milliseconds to wait before calling. */
  waitMs: number;
  /** False when the wait is over the caller's limit: nothing was reserved. */
  granted: boolean;
  /**
   * The bucket drawn from ("search" or "backfill"), for the settle; or
   * "learning": nothing was booked, reserve again after the wait.
   */
  lane: string;
}

export interface Settlement {
  reservedTokens: number;
  /** Tokens the provider counted (0 for a call it did not count). */
  usedTokens: number;
  rateLimited?: boolean;
  retryAfterMs?: number;
  limits?: RateLimitInfo;
}

/** Where reservations are made: Postgres in the pipeline, anything in unit tests. */
export interface RateBudget {
  reserve(
    key: BudgetKey,
    tokens: number,
    priority: BudgetPriority,
    maxWaitMs: number,
  ): Promise<Grant>;
  settle(key: BudgetKey, lane: string, settlement: Settlement): Promise<void>;
  /** Tokens one backfill call may carry to fit the budget's burst, when a limit is known. */
  burstTokens(key: BudgetKey): number | undefined;
}

const keyText = (key: BudgetKey) => `${key.baseURL}\u0000${key.keyFingerprint}\u0000${key.model}`;

/** The budget in Postgres, reached through `sql`. */
export class SqlRateBudget implements RateBudget {
  readonly #burst = new Map<string, number>();

  constructor(readonly sql: postgres.Sql) {}

  async reserve(
    key: BudgetKey,
    tokens: number,
    priority: BudgetPriority,
    maxWaitMs: number,
  ): Promise<Grant> {
    const [row] = await this.sql<
      { wait_ms: number; granted: boolean; lane: string; burst_tokens: number | null }[]
    >`
      select wait_ms, granted, lane, burst_tokens
        from util._budget_reserve(${key.baseURL}, ${key.keyFingerprint}, ${key.model},
                                  ${Math.ceil(tokens)}::int, 1, ${priority},
                                  ${Math.max(0, Math.floor(maxWaitMs))}::int)`;
    if (row.burst_tokens === null) this.#burst.delete(keyText(key));
    else this.#burst.set(keyText(key), Number(row.burst_tokens));
    return { waitMs: Math.max(0, row.wait_ms), granted: row.granted, lane: row.lane };
  }

  async settle(key: BudgetKey, lane: string, s: Settlement): Promise<void> {
    const limits: Record<string, number> = {};
    const l = s.limits ?? {};
    if (l.limitRequests !== undefined) limits.limit_requests = l.limitRequests;
    if (l.limitTokens !== undefined) limits.limit_tokens = l.limitTokens;
    if (l.remainingRequests !== undefined) limits.remaining_requests = l.remainingRequests;
    if (l.remainingTokens !== undefined) limits.remaining_tokens = l.remainingTokens;
    await this.sql`
      select util._budget_settle(${key.baseURL}, ${key.keyFingerprint}, ${key.model}, ${lane},
                                 ${Math.ceil(s.reservedTokens)}::int, ${
      Math.ceil(s.usedTokens)
    }::int,
                                 ${s.rateLimited ?? false}, ${s.retryAfterMs ?? null}::int,
                                 ${JSON.stringify(limits)}::text::jsonb)`;
  }

  burstTokens(key: BudgetKey): number | undefined {
    return this.#burst.get(keyText(key));
  }
}

const budgets = new WeakMap<postgres.Sql, SqlRateBudget>();

/** The budget reached through `sql`: one per client, so what it learned is kept between batches. */
export function budgetOf(sql: postgres.Sql): SqlRateBudget {
  let budget = budgets.get(sql);
  if (!budget) budgets.set(sql, budget = new SqlRateBudget(sql));
  return budget;
}

/** The budget would have the call wait past the caller's time: its work is handed back. */
export class BudgetSpent extends Error {
  constructor(readonly waitMs: number) {
    super(`the provider's rate budget is spent for ${Math.ceil(waitMs / 1000)} s`);
    this.name = "BudgetSpent";
  }
}

export interface BudgetedCall {
  budget?: RateBudget;
  priority: BudgetPriority;
  /** Longest sleep before a call, ms. */
  maxWaitMs: number;
  /** Epoch ms after which no call starts (and no 429 is retried). */
  deadline?: number;
  signal?: AbortSignal;
  /** Calls of the same texts after 429s, at most (default 3). */
  retriesAfter429?: number;
  /** Tokens of `texts` by the model's tokenizer, when already counted. */
  tokens?: number;
  /** Hears each request made to the provider (429s included). */
  onCall?: () => void;
  /** Hears each sleep for the budget before a request, ms. */
  onWait?: (ms: number) => void;
  /** Hears each 429 that is retried here (the last one is thrown). */
  onRateLimited?: () => void;
}

/**
 * `provider.embed(texts)` within its rate budget: reserve, wait, call,
 * settle; after a 429, the same call again once the budget allows. A
 * provider with no budget key (one that runs here), or a budget that cannot
 * be reached, is called at once as before. Throws BudgetSpent when the wait
 * would pass `maxWaitMs` or the deadline, and the last ProviderError when
 * 429s outlast the retries.
 */
export async function embedWithinBudget(
  provider: EmbeddingProvider,
  texts: string[],
  call: BudgetedCall,
): Promise<Vector[]> {
  const key = provider.budgetKey;
  const budget = call.budget;
  const embed = (report?: (r: CallReport) => void) => {
    call.onCall?.();
    return provider.embed(texts, call.signal, report);
  };
  if (!key || !budget) return await embed();
  const tokens = call.tokens ?? texts.reduce((sum, t) => sum + provider.tokens.count(t), 0);
  const retries = call.retriesAfter429 ?? 3;
  for (let limited429 = 0;;) {
    const room = call.deadline === undefined ? Infinity : call.deadline - Date.now();
    let grant: Grant;
    try {
      grant = await budget.reserve(key, tokens, call.priority, Math.min(call.maxWaitMs, room));
    } catch {
      // The budget is a help, not a gate: without it the call goes as it did before.
      return await embed();
    }
    if (!grant.granted) throw new BudgetSpent(grant.waitMs);
    if (grant.waitMs > 0) {
      call.onWait?.(grant.waitMs);
      await sleep(grant.waitMs, call.signal);
    }
    // The budget is learning its limits from another caller's answer: ask again.
    if (grant.lane === "learning" && !call.signal?.aborted) continue;
    if (call.signal?.aborted) {
      if (grant.lane !== "learning") {
        await settleQuietly(budget, key, grant.lane, { reservedTokens: tokens, usedTokens: 0 });
      }
      throw call.signal.reason ?? new DOMException("aborted", "AbortError");
    }
    let report: CallReport | undefined;
    try {
      const vectors = await embed((r) => report = r);
      await settleQuietly(budget, key, grant.lane, {
        reservedTokens: tokens,
        usedTokens: report?.usedTokens ?? tokens,
        limits: report?.limits,
      });
      return vectors;
    } catch (err) {
      const limited = err instanceof ProviderError && err.status === 429;
      await settleQuietly(budget, key, grant.lane, {
        reservedTokens: tokens,
        usedTokens: 0,
        rateLimited: limited,
        retryAfterMs: limited ? err.retryAfterMs : undefined,
        limits: err instanceof ProviderError ? err.rateLimits : undefined,
      });
      const timeLeft = call.deadline === undefined || Date.now() < call.deadline;
      if (!limited || limited429++ >= retries || !timeLeft || call.signal?.aborted) throw err;
      call.onRateLimited?.();
    }
  }
}

async function settleQuietly(
  budget: RateBudget,
  key: BudgetKey,
  lane: string,
  settlement: Settlement,
): Promise<void> {
  try {
    await budget.settle(key, lane, settlement);
  } catch {
    // What a settle would have taught the budget is lost; the next one teaches it again.
  }
}
