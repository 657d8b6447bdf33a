// Scenario 1: the provider goes down for several seconds in the middle of a
// drain. User writes keep succeeding (their throughput is measured, not
// asserted), jobs back off instead of dead-lettering, and after recovery
// every row is embedded with no duplicate provider work.
import assert from "node:assert/strict";
import { assertConsistent, checkConsistency, trackJobs } from "../_support/consistency.ts";
import { connect, withTestDb } from "../../devtools/db.ts";
import { createDocuments, queueLength } from "../../devtools/pipeline.ts";
import { drain, insertFor, type Mode, report, sized, startDrive } from "../_support/reliability.ts";
import { sleep } from "../../supabase/functions/_shared/sleep.ts";
import { embeddedCount, insertRows } from "../_support/rows.ts";
import { waitFor } from "../../devtools/wait.ts";

const ROWS = sized(1_000, 5_000);
const OUTAGE_MS = sized(5_000, 30_000);
/** Length of each insert-throughput window. */
const WINDOW_MS = sized(1_000, 3_000);

async function outageScenario(mode: Mode) {
  await withTestDb(async (sql, url) => {
    // Fast recovery for the test: retries after 1, 2, 4, 4, ... s; enough
    // attempts that an outage of OUTAGE_MS never exhausts them.
    await sql`update util.settings set value = '1' where name = 'backoff_base_seconds'`;
    await sql`update util.settings set value = '4' where name = 'backoff_max_seconds'`;
    await sql`update util.settings set value = '20' where name = 'max_attempts'`;
    await createDocuments(sql);
    await trackJobs(sql);
    await insertRows(sql, ROWS);
    const drive = await startDrive(mode, sql, url, { latencyMs: 100, batchSize: 50, parallel: 2 });
    const writer = connect(url, { max: 1 });
    try {
      const before = await insertFor(writer, WINDOW_MS, "before");
      const embeddedBefore = await embeddedCount(sql);
      const outageEnds = Date.now() + OUTAGE_MS;
      drive.fake.setFault({ kind: "outage", untilMs: outageEnds });
      const during = await insertFor(writer, Math.min(WINDOW_MS, OUTAGE_MS - 500), "during");
      // The fault's own duration, not a premise: the outage is over when its time is up.
      await sleep(Math.max(0, outageEnds - Date.now()));
      const faults = drive.fake.stats.failedRequests;
      const [errors] = await sql`
        select count(*)::int as n, max(attempt)::int as max_attempt from util.embedding_errors`;
      const [atOutageEnd, backlog] = [await embeddedCount(sql), await queueLength(sql)];
      const recovering = performance.now();
      await waitFor(async () => await embeddedCount(sql) > atOutageEnd, {
        what: "the first embedding after the outage",
        timeoutMs: 120_000,
      });
      const firstEmbedAfterOutageMs = Math.round(performance.now() - recovering);
      const recoverMs = firstEmbedAfterOutageMs +
        await drain(sql, { timeoutMs: 120_000, what: "the backlog after the outage" });
      const consistency = await checkConsistency(sql, { fake: drive.fake });
      report(`outage (${mode})`, {
        rows: consistency.rowsChecked,
        outageMs: OUTAGE_MS,
        embeddedBeforeOutage: embeddedBefore,
        faultsInjected: faults,
        errorsRecorded: errors.n,
        maxAttempt: errors.max_attempt,
        insertsPerSecondBefore: before.perSecond,
        insertsPerSecondDuring: during.perSecond,
        insertP99MsBefore: before.p99Ms,
        insertP99MsDuring: during.p99Ms,
        backlogAtOutageEnd: backlog,
        jobsProcessed: consistency.jobsDone,
        firstEmbedAfterOutageMs,
        recoverMs,
      }, consistency);
      assert.equal(before.failed, 0, "inserts before the outage succeed");
      assert.equal(during.failed, 0, "inserts during the outage succeed");
      assert.ok(during.ok > 0, "inserts were made during the outage");
      assert.ok(faults > 0, "the outage was hit");
      assert.ok(embeddedBefore < consistency.rowsChecked, "the outage began mid-drain");
      assertConsistent(consistency);
    } finally {
      await writer.end();
      await drive.stop();
    }
  });
}

Deno.test(`reliability: provider outage of ${OUTAGE_MS / 1000} s mid-drain, push mode`, () =>
  outageScenario("push"));

Deno.test(`reliability: provider outage of ${OUTAGE_MS / 1000} s mid-drain, worker mode`, () =>
  outageScenario("worker"));
