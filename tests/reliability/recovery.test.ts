// Scenario 8: faults in a row under the default push settings (pg_cron's
// 10 s tick, process_embeddings(100, 4, 120000): claims hidden for 125 s).
// The embed function is killed mid-drain and comes back 15 s later, then
// Postgres restarts mid-drain. Calls that ended without reporting back must
// not leave their jobs hidden for the rest of their 125 s: every row is
// fresh well before that, counted from the end of the last fault. In worker
// mode the same restart, with the worker's default 120 s visibility timeout.
import assert from "node:assert/strict";
import { startEphemeralCluster } from "../../local/cluster.ts";
import { applyMigrations } from "../../local/migrate.ts";
import { surviveDatabaseDisconnects } from "../../supabase/functions/_shared/postgres_guard.ts";
import { providerEnv, spawnWorker } from "../../devtools/cli.ts";
import { assertConsistent, checkConsistency, trackJobs } from "../_support/consistency.ts";
import { connect, type Sql } from "../../devtools/db.ts";
import { startFakeOpenAI } from "../../devtools/fake_openai.ts";
import { createDocuments, startPipeline } from "../../devtools/pipeline.ts";
import { report, sized } from "../_support/reliability.ts";
import { sleep } from "../../supabase/functions/_shared/sleep.ts";
import { embeddedCount, insertRows } from "../_support/rows.ts";
import { waitFor } from "../../devtools/wait.ts";

const ROWS = sized(2_000, 3_000);
/** How long the function stays down, as in the finding this scenario reproduces. */
const FUNCTION_DOWN_MS = 15_000;
/** Claims are hidden this long by default (push: timeout 120 s + 5 s; worker: 120 s). */
const DEFAULT_VISIBILITY_MS = 120_000;

/** Waits, across a restart, until every row is embedded and nothing is queued; returns ms. */
async function untilFresh(sql: Sql, timeoutMs: number): Promise<number> {
  const started = performance.now();
  await waitFor(async () => {
    try {
      const [row] = await sql`
        select (select count(*) from pgmq.q_embedding_jobs)::int as queued,
               (select count(*) from documents where embedding is null)::int as missing`;
      return row.queued === 0 && row.missing === 0;
    } catch {
      return false;
    }
  }, { what: "every row fresh", timeoutMs, intervalMs: 100, describe: () => pipelineState(sql) });
  return Math.round(performance.now() - started);
}

/** What a timeout should say: where the jobs are, and the leases and requests that hold them. */
async function pipelineState(sql: Sql): Promise<string> {
  try {
    const [s] = await sql`
      select (select count(*) from pgmq.q_embedding_jobs)::int as queued,
             (select count(*) from pgmq.q_embedding_jobs where vt > now())::int as hidden,
             (select round(extract(epoch from max(vt) - now()))::int from pgmq.q_embedding_jobs) as last_vt_s,
             (select count(*) from documents where embedding is null)::int as missing,
             (select count(*) from util.embedding_requests)::int as leases,
             (select count(*) from util.embedding_requests
               where started_at < pg_postmaster_start_time())::int as leases_before_restart,
             (select count(*) from net.http_request_queue)::int as net_queued,
             (select count(*) from net._http_response)::int as responses,
             (select count(*) from pg_stat_activity
               where application_name = 'autoembed pg_net dispatcher')::int as dispatcher_sessions`;
    return JSON.stringify(s);
  } catch (err) {
    return `state unreadable: ${(err as Error).message}`;
  }
}

/** The pg_cron tick at its Supabase rate, with the default parameters. */
function tick(sql: Sql) {
  let running = true;
  const loop = (async () => {
    while (running) {
      await sql`select util.process_embeddings()`.catch(() => {});
      await sleep(10_000); // pacing: the tick's own interval
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
    },
  };
}

Deno.test("reliability: function killed for 15 s, then Postgres restarted, push mode with default settings", async () => {
  const guarded: string[] = [];
  const unguard = surviveDatabaseDisconnects((line) => guarded.push(line));
  const cluster = await startEphemeralCluster();
  const url = cluster.url("postgres");
  const sql = connect(url);
  let pipeline;
  let cron;
  try {
    await applyMigrations(url);
    await createDocuments(sql);
    await trackJobs(sql);
    await insertRows(sql, ROWS);
    pipeline = await startPipeline(sql, url, { latencyMs: 200 });
    cron = tick(sql);
    const drainStarted = performance.now();

    await waitFor(async () => await embeddedCount(sql) >= 200, {
      what: "a part of the drain done before the kill",
    });
    // The premise: calls in flight when the function dies.
    await waitFor(async () => {
      const [{ n }] = await sql`select count(*)::int as n from util.embedding_requests`;
      return n > 0;
    }, { what: "calls in flight" });
    const beforeKill = await embeddedCount(sql);
    await pipeline.kill();
    await sleep(FUNCTION_DOWN_MS); // the fault's own length
    await pipeline.revive();
    const [{ hidden }] = await sql`
      select count(*)::int as hidden from pgmq.q_embedding_jobs where vt > now()`;

    await waitFor(async () => await embeddedCount(sql) > beforeKill + 100, {
      what: "progress after the function came back",
      timeoutMs: 60_000,
    });
    const beforeRestart = await embeddedCount(sql);
    const restartStarted = performance.now();
    await cluster.restart("fast");
    const restartMs = Math.round(performance.now() - restartStarted);
    // Fresh after the last fault: well before the claims' 125 s would run out.
    const freshMs = await untilFresh(sql, DEFAULT_VISIBILITY_MS - 20_000);

    const consistency = await checkConsistency(sql, { fake: pipeline.fake });
    const allowed = 4 * 100 * 2; // two faults, each may cut off 4 calls of 100 jobs
    report("function killed 15 s, then Postgres restart (push, default settings)", {
      rows: ROWS,
      embeddedBeforeKill: beforeKill,
      jobsHiddenWhenFunctionCameBack: hidden,
      embeddedBeforeRestart: beforeRestart,
      faultsInjected: 2,
      functionDownMs: FUNCTION_DOWN_MS,
      restartMs,
      timeToFreshAfterLastFaultMs: freshMs,
      wholeDrainMs: Math.round(performance.now() - drainStarted),
      disconnectErrorsSurvived: guarded.length,
      allowedDuplicates: allowed,
    }, consistency);
    assert.ok(beforeKill < ROWS && beforeRestart < ROWS, "both faults came mid-drain");
    assertConsistent(consistency, { allowedDuplicates: allowed });
  } finally {
    await cron?.stop();
    await sql.end({ timeout: 1 }).catch(() => {});
    await pipeline?.stop();
    await cluster.destroy();
    unguard();
  }
});

Deno.test("reliability: Postgres restarted mid-batch, worker mode with the default visibility timeout", async () => {
  const cluster = await startEphemeralCluster();
  const url = cluster.url("postgres");
  const sql = connect(url);
  const fake = await startFakeOpenAI({ latencyMs: 200 });
  let worker;
  try {
    await applyMigrations(url);
    await createDocuments(sql);
    await trackJobs(sql);
    await insertRows(sql, ROWS);
    worker = spawnWorker(["-c", "2", "--poll-interval", "1s"], providerEnv(fake, url));
    await waitFor(async () => await embeddedCount(sql) >= 200, {
      what: "a part of the drain done before the restart",
    });
    // The premise: batches in flight (provider calls pending) when Postgres goes.
    await waitFor(() => fake.inFlight > 0, {
      what: "provider calls in flight",
    });
    const beforeRestart = await embeddedCount(sql);
    const restartStarted = performance.now();
    await cluster.restart("fast");
    const restartMs = Math.round(performance.now() - restartStarted);
    const freshMs = await untilFresh(sql, DEFAULT_VISIBILITY_MS - 20_000);
    const consistency = await checkConsistency(sql, { fake });
    const allowed = 2 * 100;
    report("Postgres restart (worker, default visibility timeout)", {
      rows: ROWS,
      embeddedBeforeRestart: beforeRestart,
      faultsInjected: 1,
      restartMs,
      timeToFreshAfterLastFaultMs: freshMs,
      handedBack: worker.lines.filter((l) => l.includes("handed_back_interrupted")).length,
      allowedDuplicates: allowed,
    }, consistency);
    assert.ok(beforeRestart < ROWS, "the restart came mid-drain");
    assertConsistent(consistency, { allowedDuplicates: allowed });
  } finally {
    await worker?.stop();
    await sql.end({ timeout: 1 }).catch(() => {});
    await fake.close();
    await cluster.destroy();
  }
});
