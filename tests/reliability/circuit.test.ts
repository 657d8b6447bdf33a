// I14: a provider-wide outage of any length dead-letters nothing. During a
// drain by push mode and a worker at once, with the default settings
// (max_attempts 5), the provider answers 503 to every call, then refuses
// connections. Its circuit opens (status says since when and why), the rows
// wait in the queue without spending attempts, user writes go on, and once
// the provider answers again every row is fresh within 60 s. The default run
// (npm test) has a 20 s outage; `npm run reliability` the 4 minutes of the
// issue.
import assert from "node:assert/strict";
import { providerEnv, spawnWorker } from "../../devtools/cli.ts";
import { assertConsistent, checkConsistency, trackJobs } from "../_support/consistency.ts";
import { connect, withTestDb } from "../../devtools/db.ts";
import { createDocuments, queueLength, startPipeline } from "../../devtools/pipeline.ts";
import { cronTick, insertFor, report, sized, workerArgs } from "../_support/reliability.ts";
import { sleep } from "../../supabase/functions/_shared/sleep.ts";
import { embeddedCount, insertRows } from "../_support/rows.ts";
import { startSwitchProxy } from "../_support/switch_proxy.ts";
import { waitFor } from "../../devtools/wait.ts";

const ROWS = sized(2_000, 5_000);
/** 503 on every call for the first half, connection refused for the second. */
const OUTAGE_MS = sized(20_000, 240_000);

Deno.test(`reliability: a ${OUTAGE_MS / 1000} s provider outage (503, then refused) during a push and worker drain dead-letters nothing`, async () => {
  await withTestDb(async (sql, url) => {
    await createDocuments(sql);
    await trackJobs(sql);
    const proxy = startSwitchProxy();
    const pipeline = await startPipeline(sql, url, {
      latencyMs: 20,
      env: { OPENAI_BASE_URL: proxy.baseURL, EMBEDDING_TIMEOUT_MS: "5000" },
    });
    proxy.forwardTo(Number(new URL(pipeline.fake.baseURL).port));
    const fake = pipeline.fake;
    const tick = cronTick(sql, 1000, { batchSize: 50, maxRequests: 2, timeoutMs: 10_000 });
    const worker = spawnWorker(
      workerArgs(50, 2, 10_000),
      providerEnv({ ...fake, baseURL: proxy.baseURL }, url, { EMBEDDING_TIMEOUT_MS: "5000" }),
    );
    const writer = connect(url, { max: 1 });
    try {
      await worker.waitForLine(/"event":"started"/);
      await insertRows(sql, ROWS);
      await waitFor(async () => await embeddedCount(sql) > 0, { what: "the drain to start" });

      const returns = Date.now() + OUTAGE_MS;
      fake.setFault({ kind: "outage", untilMs: returns - OUTAGE_MS / 2 });
      await waitFor(async () => {
        const [s] = await sql`
          select circuit_open_since is not null as open, circuit_reason from util.embedding_status`;
        return s.open && /503/.test(s.circuit_reason);
      }, { what: "the circuit to open on 503s" });
      const embeddedAtOutage = await embeddedCount(sql);
      assert.ok(embeddedAtOutage < ROWS, "the premise: the outage began mid-drain");
      const during = await insertFor(writer, Math.min(3_000, OUTAGE_MS / 2 - 1_000), "during");
      await sleep(Math.max(0, returns - OUTAGE_MS / 2 - Date.now()));
      proxy.down();
      await waitFor(async () => {
        const [s] = await sql`select circuit_reason from util.embedding_status`;
        return /could not reach/.test(s.circuit_reason ?? "");
      }, { what: "the circuit to record connections refused" });
      await sleep(Math.max(0, returns - Date.now()));
      const [outage] = await sql`
        select (select count(*) from pgmq.a_embedding_jobs)::int as dead,
               (select count(*) from util.embedding_errors)::int as errors,
               (select max(failures) from util.provider_circuits)::int as probes`;
      const backlog = await queueLength(sql);

      proxy.up();
      const returned = performance.now();
      await waitFor(async () => await queueLength(sql) === 0 && await embeddedCount(sql) >= ROWS, {
        what: "every row fresh within 60 s of the provider's return",
        timeoutMs: 60_000,
      });
      const freshMs = Math.round(performance.now() - returned);
      const consistency = await checkConsistency(sql, { fake });
      const [after] = await sql`
        select (select count(*) from pgmq.a_embedding_jobs)::int as dead,
               (select count(*) from util.provider_circuits)::int as open,
               (select max(attempt) from util.embedding_errors)::int as max_attempt`;
      report("provider outage, push and worker at once", {
        rows: ROWS,
        outageMs: OUTAGE_MS,
        embeddedAtOutage,
        backlogAtReturn: backlog,
        failedProviderCalls: fake.stats.failedRequests,
        probesFailed: outage.probes,
        errorsRecorded: outage.errors,
        maxAttempt: after.max_attempt,
        insertsDuring: during.ok,
        insertP99MsDuring: during.p99Ms,
        freshMsAfterReturn: freshMs,
        deadLettered: after.dead,
      }, consistency);
      assert.equal(outage.dead, 0, "nothing dead-lettered during the outage");
      assert.equal(after.dead, 0, "nor after it");
      assert.equal(after.open, 0, "the circuit closed");
      assert.ok((after.max_attempt ?? 0) < 5, "no row came near max_attempts");
      assert.equal(during.failed, 0, "user writes unaffected");
      assert.ok(during.ok > 0);
      assertConsistent(consistency);
    } finally {
      await writer.end();
      await worker.stop("SIGKILL");
      await tick.stop();
      await pipeline.stop();
      await proxy.close();
    }
  });
});
