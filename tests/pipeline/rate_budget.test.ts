// One rate budget per provider account and model (I17): the reservations in
// SQL (order, the search share, refunds, 429s, headers, limits by hand),
// then the whole pipeline against a fake provider that enforces OpenAI-style
// limits: three workers and push on one backlog, a search during a
// backfill, a provider that sends no headers; and budget rows across a
// Postgres restart.
import assert from "node:assert/strict";
import { startEphemeralCluster } from "../../local/cluster.ts";
import { applyMigrations } from "../../local/migrate.ts";
import { providerEnv, spawnWorker } from "../../devtools/cli.ts";
import { connect, type Sql, withTestDb } from "../../devtools/db.ts";
import { startFakeOpenAI } from "../../devtools/fake_openai.ts";
import {
  createDocuments,
  queueLength,
  startPipeline,
  TEST_DIMENSIONS,
  TEST_MODEL,
} from "../../devtools/pipeline.ts";
import { waitFor } from "../../devtools/wait.ts";
import { createOpenAIProvider } from "../../supabase/functions/_shared/providers/openai.ts";
import {
  embedWithinBudget,
  type Grant,
  SqlRateBudget,
} from "../../supabase/functions/_shared/rate_budget.ts";
import { cronTick, workerArgs } from "../_support/reliability.ts";
import { assertAllFresh, insertRows } from "../_support/rows.ts";

const URL_A = "https://api.example.test/v1";

interface Reserved {
  wait_ms: number;
  granted: boolean;
  lane: string;
  burst_tokens: number | null;
}

function reserve(
  sql: Sql,
  tokens: number,
  priority = "backfill",
  maxWaitMs = 600_000,
): Promise<Reserved> {
  return sql<Reserved[]>`
    select * from util._budget_reserve(${URL_A}, 'fp', 'm', ${tokens}, 1, ${priority}, ${maxWaitMs})`
    .then(([row]) => row);
}

async function deadLetters(sql: Sql): Promise<number> {
  const [{ n }] = await sql`select count(*)::int as n from pgmq.a_embedding_jobs`;
  return n;
}

Deno.test("budget: with no limit known, the first call learns them; hand-set limits queue backfill in order", async () => {
  await withTestDb(async (sql) => {
    // No limit known: the first call goes; the others ask again shortly, until it answers.
    const learner = await reserve(sql, 10_000);
    assert.deepEqual([learner.wait_ms, learner.granted, learner.lane, learner.burst_tokens], [
      0,
      true,
      "backfill",
      null,
    ]);
    const next = await reserve(sql, 10_000);
    assert.equal(next.lane, "learning");
    assert.ok(next.wait_ms > 0 && next.wait_ms <= 250, `asks again in ${next.wait_ms} ms`);
    assert.equal((await reserve(sql, 10, "search")).wait_ms, 0, "search does not wait to learn");
    // Nothing learned within budget_learning_seconds (a provider without headers): all at once.
    await sql`update util.provider_budgets set learning_until = now() - interval '1 second'`;
    for (let i = 0; i < 3; i++) {
      const r = await reserve(sql, 10_000);
      assert.deepEqual([r.wait_ms, r.granted, r.lane], [0, true, "backfill"]);
    }
    // 60,000 tokens a minute: a burst of 5% (3,000: set here, 2% by default), backfill
    // refilled at 91% (what the burst and twice the search share of 2% leave).
    await sql`update util.settings set value = '5' where name = 'budget_burst_percent'`;
    await sql`select util.set_provider_limits('m', 600, 60000)`;
    const first = await reserve(sql, 3000);
    assert.equal(first.wait_ms, 0);
    assert.equal(Number(first.burst_tokens), 3000);
    const waits = [];
    for (let i = 0; i < 3; i++) waits.push((await reserve(sql, 3000)).wait_ms);
    // Each 3,000 tokens is 3000 / (54,600 / 60) = 3.3 s of the rate after the one before.
    for (const [i, wait] of waits.entries()) {
      assert.ok(Math.abs(wait - (i + 1) * 3297) < 500, `wait ${i}: ${wait}`);
    }
    // Over the caller's wait: not booked, so the next one waits no longer.
    const refused = await reserve(sql, 3000, "backfill", 1000);
    assert.equal(refused.granted, false);
    assert.ok(refused.wait_ms > 1000);
    const again = await reserve(sql, 3000, "backfill", 1000);
    assert.ok(
      Math.abs(again.wait_ms - refused.wait_ms) < 300,
      `${again.wait_ms} vs ${refused.wait_ms}`,
    );
    // A search does not queue behind them: it has its own share.
    const search = await reserve(sql, 20, "search");
    assert.deepEqual([search.wait_ms, search.granted, search.lane], [0, true, "search"]);
  });
});

Deno.test("budget: unused tokens come back, a 429 pauses every lane, headers teach the limits", async () => {
  await withTestDb(async (sql) => {
    await sql`update util.settings set value = '5' where name = 'budget_burst_percent'`;
    await sql`select util.set_provider_limits('m', 600, 60000)`;
    await reserve(sql, 3000);
    const queued = (await reserve(sql, 3000)).wait_ms;
    // The first call used 300 of its 3,000 tokens: 2,700 go back.
    await sql`select util._budget_settle(${URL_A}, 'fp', 'm', 'backfill', 3000, 300)`;
    const after = (await reserve(sql, 300)).wait_ms;
    assert.ok(after < queued, `after the refund ${after} ms, before ${queued} ms`);

    await sql`select util._budget_settle(${URL_A}, 'fp', 'm', 'backfill', 0, 0, true, 4000)`;
    const paused = await reserve(sql, 1, "search");
    assert.ok(paused.wait_ms > 3000, `search waits out the 429: ${paused.wait_ms}`);
    const [row] = await sql`
      select rate_limited, scale, learned_at from util.provider_budgets where model = 'm'`;
    assert.equal(Number(row.rate_limited), 1);
    assert.ok(row.scale < 1, "a 429 shrinks the budget");

    // Headers of another budget: learned, and a small remainder moves the bucket.
    const key = (t: number) =>
      sql`select * from util._budget_reserve(${URL_A}, 'fp', 'learned', ${t}, 1, 'backfill', 600000)`;
    await key(10);
    await sql`select util._budget_settle(${URL_A}, 'fp', 'learned', 'backfill', 10, 10, false, null,
                '{"limit_requests": 100, "limit_tokens": 6000, "remaining_requests": 99, "remaining_tokens": 0}')`;
    const [learned] = await sql`
      select learned_requests_per_minute, learned_tokens_per_minute
        from util.provider_budgets where model = 'learned'`;
    assert.deepEqual([
      learned.learned_requests_per_minute,
      Number(learned.learned_tokens_per_minute),
    ], [
      100,
      6000,
    ]);
    const [{ wait_ms }] = await key(100);
    // Nothing remains: 100 tokens wait their share of the refill, 100 / (5,460 / 60) s.
    assert.ok(wait_ms > 800, `wait ${wait_ms}`);
    // Hand-set limits win over headers; bad ones are refused with AE003.
    await sql`select util.set_provider_limits('learned', null, 1000000)`;
    const [{ burst_tokens }] = await key(1);
    assert.equal(Number(burst_tokens), 50_000);
    await assert.rejects(sql`select util.set_provider_limits('m', 0, 10)`, /must be positive/);
  });
});

Deno.test("I17: three workers and push drain one backlog within the provider's limits: few 429s, every row embedded, no dead letter", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url, {
      rateLimits: { requestsPerMinute: 600, tokensPerMinute: 12_000 },
    });
    const env = providerEnv(p.fake, url, { EMBEDDING_TIMEOUT_MS: "10000" });
    const workers = Array.from(
      { length: 3 },
      () => spawnWorker(workerArgs(100, 2, 60_000), env),
    );
    const tick = cronTick(sql, 500, { batchSize: 100, maxRequests: 2, timeoutMs: 60_000 });
    try {
      await createDocuments(sql);
      await insertRows(sql, 400);
      await waitFor(async () => await queueLength(sql) === 0, {
        what: "the backlog to drain",
        timeoutMs: 180_000,
        intervalMs: 250,
      });
      await assertAllFresh(sql);
      assert.equal(await deadLetters(sql), 0);
      const { requests, rateLimited } = p.fake.stats;
      assert.ok(rateLimited <= 3, `${rateLimited} of ${requests} requests answered 429`);
      const [budget] = await sql`
        select count(*)::int as n, sum(calls)::int as calls, max(learned_tokens_per_minute) as tpm
          from util.provider_budgets`;
      assert.equal(budget.n, 1, "one budget for the account and model");
      assert.equal(Number(budget.tpm), 12_000, "the limit learned from the headers");
      assert.ok(budget.calls >= requests - rateLimited, `${budget.calls} reservations`);
    } finally {
      await tick.stop();
      await Promise.all(workers.map((w) => w.stop("SIGTERM")));
      await p.stop();
    }
  });
});

Deno.test("I17: a search during a backfill gets its budget at once while backfill calls wait", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI({
      rateLimits: { requestsPerMinute: 600, tokensPerMinute: 3_000 },
    });
    const worker = spawnWorker(workerArgs(100, 1, 60_000), providerEnv(fake, url));
    try {
      await createDocuments(sql);
      await insertRows(sql, 400);
      const budget = new SqlRateBudget(sql);
      // The backfill is under way and waiting on the budget.
      await waitFor(async () => {
        const [row] = await sql`
          select tokens_tat > now() + interval '1 second' as queued from util.provider_budgets`;
        return row?.queued === true;
      }, {
        what: "backfill calls queued on the budget",
        timeoutMs: 60_000,
        describe: async () =>
          JSON.stringify({
            budgets: await sql`select * from util.provider_budgets`,
            queue: await queueLength(sql),
            fake: { requests: fake.stats.requests, rateLimited: fake.stats.rateLimited },
            worker: worker.lines.slice(-5),
          }),
      });
      const grants: Grant[] = [];
      const spy = {
        reserve: async (...args: Parameters<SqlRateBudget["reserve"]>) => {
          const grant = await budget.reserve(...args);
          grants.push(grant);
          return grant;
        },
        settle: budget.settle.bind(budget),
        burstTokens: budget.burstTokens.bind(budget),
      };
      const provider = createOpenAIProvider({
        apiKey: "sk-test-key-not-secret",
        baseURL: fake.baseURL,
        model: TEST_MODEL,
        dimensions: TEST_DIMENSIONS,
        timeoutMs: 10_000,
      });
      const [vector] = await embedWithinBudget(provider, ["a question from the app"], {
        budget: spy,
        priority: "search",
        maxWaitMs: 10_000,
      });
      assert.equal(vector.length, TEST_DIMENSIONS);
      assert.deepEqual(grants.map((g) => [g.waitMs, g.lane]), [[0, "search"]]);
      assert.ok(await queueLength(sql) > 0, "the backfill was still going");
      const backfill = await sql`
        select wait_ms from util._budget_reserve(${provider.budgetKey!.baseURL},
               ${provider.budgetKey!.keyFingerprint}, ${TEST_MODEL}, 100, 1, 'backfill', 0)`;
      assert.ok(backfill[0].wait_ms > 0, "a backfill call would have waited");
    } finally {
      await worker.stop("SIGTERM");
      await fake.close();
    }
  });
});

Deno.test("I17: a provider that sends no headers, with limits set by hand: drained with few 429s", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI({
      rateLimits: { requestsPerMinute: 60, tokensPerMinute: 8_000, headers: false },
    });
    const env = providerEnv(fake, url);
    await sql`select util.set_provider_limits(${TEST_MODEL}, 60, 8000, ${fake.baseURL})`;
    const workers = [
      spawnWorker(workerArgs(50, 2, 60_000), env),
      spawnWorker(workerArgs(50, 2, 60_000), env),
    ];
    try {
      await createDocuments(sql);
      await insertRows(sql, 300);
      await waitFor(async () => await queueLength(sql) === 0, {
        what: "the backlog to drain",
        timeoutMs: 180_000,
        intervalMs: 250,
      });
      await assertAllFresh(sql);
      assert.equal(await deadLetters(sql), 0);
      assert.ok(fake.stats.rateLimited <= 2, `${fake.stats.rateLimited} of ${fake.stats.requests}`);
      const [row] = await sql`
        select learned_at, (util._budget_limits(b)).source as source from util.provider_budgets b`;
      assert.equal(row.learned_at, null, "no headers, nothing learned");
      assert.equal(row.source, "manual");
    } finally {
      await Promise.all(workers.map((w) => w.stop("SIGTERM")));
      await fake.close();
    }
  });
});

Deno.test("budget rows survive a Postgres restart", async () => {
  const cluster = await startEphemeralCluster();
  const url = cluster.url("postgres");
  let sql = connect(url);
  try {
    await applyMigrations(url);
    await sql`select util.set_provider_limits('m', 600, 60000)`;
    await sql`select * from util._budget_reserve(${URL_A}, 'fp', 'm', 30000, 1, 'backfill', 600000)`;
    await sql`select util._budget_settle(${URL_A}, 'fp', 'm', 'backfill', 30000, 30000, false, null,
                '{"limit_requests": 500, "limit_tokens": 50000}')`;
    const read = () =>
      sql`select tokens_tat, learned_tokens_per_minute, calls from util.provider_budgets`;
    const [before] = await read();
    await sql.end();
    await cluster.restart("fast");
    sql = connect(url);
    const [after] = await read();
    assert.deepEqual(after, before);
    const [limits] = await sql`select tokens_per_minute from util.provider_rate_limits`;
    assert.equal(Number(limits.tokens_per_minute), 60000);
  } finally {
    await sql.end({ timeout: 1 }).catch(() => {});
    await cluster.destroy();
  }
});
