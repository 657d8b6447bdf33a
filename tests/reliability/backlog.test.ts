// Scenario 7: a deep backlog. Half the jobs come from a bulk insert through
// the trigger, the other half are re-deliveries of the same rows sent with
// pgmq.send_batch. With the queue that deep, user writes, a claim, the status
// view and a worker must stay responsive. Times are measured and reported,
// never asserted; what is asserted is that everything completes and ends
// consistent.
import assert from "node:assert/strict";
import { assertConsistent, checkConsistency, trackJobs } from "../_support/consistency.ts";
import { type Sql, withTestDb } from "../../devtools/db.ts";
import { createDocuments, queueLength } from "../../devtools/pipeline.ts";
import { drain, report, sized, startDrive } from "../_support/reliability.ts";
import { sleep } from "../../supabase/functions/_shared/sleep.ts";
import { insertRows } from "../_support/rows.ts";

const JOBS = sized(50_000, 200_000);
const BATCH = 500;
const CONCURRENCY = 2;

/** Runs `fn` `times` times; returns the median and the worst duration, ms. */
async function timed(times: number, fn: () => Promise<unknown>) {
  const durations: number[] = [];
  for (let i = 0; i < times; i++) {
    const started = performance.now();
    await fn();
    durations.push(performance.now() - started);
  }
  durations.sort((a, b) => a - b);
  const round = (ms: number) => Number(ms.toFixed(1));
  return { medianMs: round(durations[Math.floor(times / 2)]), maxMs: round(durations.at(-1)!) };
}

const statusQuery = (sql: Sql) => sql`select * from util.embedding_status`;

Deno.test(`reliability: a backlog of ${JOBS} queued jobs stays responsive`, async () => {
  await withTestDb(async (sql, url) => {
    await createDocuments(sql);
    await trackJobs(sql);
    const rows = JOBS / 2;
    let started = performance.now();
    await insertRows(sql, rows, { prefix: "backlog" });
    await sql`
      select pgmq.send_batch('embedding_jobs', array(
        select jsonb_build_object('id', id, 'schema', 'public', 'table', 'documents',
                                  'contentFunction', 'documents_input', 'embeddingColumn', 'embedding')
          from documents order by id))`;
    const enqueueMs = Math.round(performance.now() - started);
    assert.equal(await queueLength(sql), JOBS);
    await sql`analyze pgmq.q_embedding_jobs`;

    const statusIdle = await timed(3, () => statusQuery(sql));
    const [status] = await statusQuery(sql);
    assert.equal(Number(status.queued), JOBS, "the status view counts the backlog");
    assert.equal(Number(status.missing), rows);
    const insertWithBacklog = await timed(
      20,
      () =>
        sql`insert into documents (title, content) values ('live', 'written during the backlog')`,
    );
    // A claim at full depth, handed straight back (vt 0).
    const claim = await timed(3, () => sql`select * from pgmq.read('embedding_jobs', 0, ${BATCH})`);
    // The same with the first 90% of the queue hidden (e.g. backing off after an outage).
    await sql`update pgmq.q_embedding_jobs set vt = now() + interval '1 hour'
               where msg_id <= (select min(msg_id) + 0.9 * count(*) from pgmq.q_embedding_jobs)`;
    const claimBehindHidden = await timed(
      3,
      () => sql`select * from pgmq.read('embedding_jobs', 0, ${BATCH})`,
    );
    await sql`update pgmq.q_embedding_jobs set vt = now() where vt > now()`;

    const drive = await startDrive("worker", sql, url, {
      batchSize: BATCH,
      parallel: CONCURRENCY,
      timeoutMs: 60_000,
    });
    try {
      started = performance.now();
      const firstBatch = await drive.workers[0].waitForLine(/"event":"batch","jobs":[1-9]/, 60_000);
      const firstBatchMs = Math.round(performance.now() - started);
      // Pacing only: let the drain get going before the responsiveness figures are taken.
      await sleep(500);
      const statusDraining = await timed(3, () => statusQuery(sql));
      const insertDraining = await timed(
        20,
        () => sql`insert into documents (title, content) values ('live', 'written while draining')`,
      );
      const drainMs = Math.round(performance.now() - started) +
        await drain(sql, { timeoutMs: sized(180_000, 600_000), what: "the backlog" });
      const consistency = await checkConsistency(sql, { fake: drive.fake });
      const allowed = CONCURRENCY * BATCH;
      report("backlog", {
        jobs: JOBS,
        rows: consistency.rowsChecked,
        enqueueMs,
        statusViewIdle: statusIdle,
        statusViewDraining: statusDraining,
        insertWithBacklog,
        insertDraining,
        claimOfBatch: claim,
        claimBehindHiddenHead: claimBehindHidden,
        firstBatchMs,
        firstBatchDurationMs: JSON.parse(firstBatch).durationMs,
        drainMs,
        jobsPerSecond: Math.round(consistency.jobsDone / (drainMs / 1000)),
        providerRequests: drive.fake.stats.requests,
        jobsProcessed: consistency.jobsDone,
        allowedDuplicates: allowed,
      }, consistency);
      assertConsistent(consistency, { allowedDuplicates: allowed });
      assert.ok(
        drive.fake.stats.requests <= Math.ceil(consistency.rowsChecked / BATCH) * 2,
        `provider requests ${drive.fake.stats.requests}: about one per batch of distinct texts`,
      );
    } finally {
      await drive.stop();
    }
  });
});
