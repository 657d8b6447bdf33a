// Scenario 2: the provider misbehaves in every way the fake can: 429 storms
// with Retry-After, 5xx bursts (one with Retry-After), answers slower than
// the client timeout, malformed JSON and wrong vector sizes. Each transient
// fault is retried (after Retry-After when given) with its error recorded; a
// fault that persists dead-letters the jobs with a clear error instead of
// leaving the queue stuck; an input the provider rejects fails alone.
import assert from "node:assert/strict";
import { assertConsistent, checkConsistency, trackJobs } from "../_support/consistency.ts";
import { withTestDb } from "../../devtools/db.ts";
import type { Fault } from "../../devtools/fake_openai.ts";
import { createDocuments } from "../../devtools/pipeline.ts";
import { drain, type Mode, report, sized, startDrive } from "../_support/reliability.ts";
import { insertRows } from "../_support/rows.ts";
import { waitFor } from "../../devtools/wait.ts";

const ROWS_PER_PHASE = sized(200, 1_000);
// Well above a normal answer on a loaded 2-core machine, so only the slow phase times out.
const CLIENT_TIMEOUT_MS = 1_000;

interface Phase {
  name: string;
  fault: Fault;
  /** What every error recorded in this phase says. */
  says: RegExp;
  /** The retry must wait at least this long (the fault's Retry-After). */
  retryAfterS?: number;
}

const TRANSIENT: Phase[] = [
  {
    name: "429 storm with Retry-After",
    fault: { kind: "status", status: 429, retryAfter: "1", times: 6 },
    says: /rate limited by the endpoint \(429[^)]*\); retrying after 1 s/,
    retryAfterS: 1,
  },
  {
    name: "500 burst",
    fault: { kind: "status", status: 500, times: 4 },
    says: /the endpoint failed \(500[^)]*\); retrying with backoff/,
  },
  {
    name: "503 burst with Retry-After",
    fault: { kind: "status", status: 503, retryAfter: "1", times: 3 },
    says: /the endpoint failed \(503[^)]*\); retrying after 1 s/,
    retryAfterS: 1,
  },
  {
    name: "answers slower than the client timeout",
    fault: { kind: "slow", delayMs: 3_000, times: 3 },
    says: new RegExp(`did not answer within ${CLIENT_TIMEOUT_MS} ms \\(EMBEDDING_TIMEOUT_MS\\)`),
  },
  {
    name: "malformed JSON",
    fault: { kind: "malformed", times: 3 },
    says: /answered with malformed JSON/,
  },
  {
    name: "wrong vector dimensions",
    fault: { kind: "wrong-dimensions", times: 3 },
    says: /vectors of 17 dimensions, expected 16/,
  },
];

async function faultsScenario(mode: Mode) {
  await withTestDb(async (sql, url) => {
    // Backoff 0 so only Retry-After delays a retry (and the phases run quickly).
    await sql`update util.settings set value = '0' where name = 'backoff_base_seconds'`;
    await sql`update util.settings set value = '5' where name = 'max_attempts'`;
    await createDocuments(sql);
    await trackJobs(sql);
    const drive = await startDrive(mode, sql, url, {
      batchSize: 50,
      parallel: 2,
      env: { EMBEDDING_TIMEOUT_MS: String(CLIENT_TIMEOUT_MS) },
    });
    const phases: Record<string, unknown>[] = [];
    let lastErrorId = 0;
    let faultsTotal = 0;
    /** Errors recorded since the previous phase. */
    const phaseErrors = async () => {
      const rows = await sql`
        select id::int, job_id::int, row_id, attempt, retryable, dead_lettered, error, created_at
          from util.embedding_errors where id > ${lastErrorId} order by id`;
      if (rows.length) lastErrorId = rows.at(-1)!.id;
      return rows;
    };
    const runPhase = async (name: string, fault: Fault, prefix: string, extraRow?: string) => {
      const failedBefore = drive.fake.stats.failedRequests;
      drive.fake.setFault(fault);
      await insertRows(sql, ROWS_PER_PHASE, { prefix });
      if (extraRow) await sql`insert into documents (title, content) values ('extra', ${extraRow})`;
      const drainMs = await drain(sql, { timeoutMs: 60_000, what: `the queue (${name})` });
      // A slow answer counts as a fault when the fake sends it, after the client gave up.
      await waitFor(() => drive.fake.inFlight === 0, {
        what: "the provider to finish its answers",
        timeoutMs: 10_000,
      });
      const faults = drive.fake.stats.failedRequests - failedBefore;
      faultsTotal += faults;
      return { drainMs, faults, errors: await phaseErrors() };
    };
    try {
      for (const [i, phase] of TRANSIENT.entries()) {
        const { drainMs, faults, errors } = await runPhase(phase.name, phase.fault, `p${i}`);
        assert.ok(faults > 0, `${phase.name}: the fault was hit`);
        assert.ok(errors.length > 0, `${phase.name}: errors are recorded`);
        for (const e of errors) {
          assert.match(e.error, phase.says, phase.name);
          assert.equal(e.retryable, true, `${phase.name}: retryable`);
          assert.equal(e.dead_lettered, false, `${phase.name}: not dead-lettered`);
        }
        let minWaitS: number | null = null;
        if (phase.retryAfterS) {
          // The retry came no earlier than Retry-After: from each failed row's
          // last error to the moment its embedding was written.
          const [{ min_wait }] = await sql`
            select min(extract(epoch from f.embedded_at - e.last_error))::float8 as min_wait
              from (select row_id, max(created_at) as last_error from util.embedding_errors
                     where id = any(${errors.map((e) => e.id)}::int[]) group by row_id) e
              join util.embedding_fingerprints f on f.row_id = e.row_id`;
          minWaitS = Number(min_wait.toFixed(3));
          assert.ok(
            min_wait >= phase.retryAfterS - 0.05,
            `${phase.name}: retried ${min_wait} s after the error, before Retry-After`,
          );
        }
        phases.push({
          phase: phase.name,
          faultsInjected: faults,
          errorsRecorded: errors.length,
          jobsRetried: new Set(errors.map((e) => e.job_id)).size,
          maxAttempt: Math.max(...errors.map((e) => e.attempt)),
          minRetryWaitS: minWaitS ?? undefined,
          drainMs,
        });
      }

      // A fault that never clears: every job of the phase is dead-lettered
      // after max_attempts with the error, and the queue empties.
      await sql`update util.settings set value = '3' where name = 'max_attempts'`;
      const persistent = await runPhase(
        "persistent wrong dimensions",
        { kind: "wrong-dimensions" },
        "persistent",
      );
      const dead = persistent.errors.filter((e) => e.dead_lettered);
      assert.equal(dead.length, ROWS_PER_PHASE, "every job of the phase dead-lettered");
      for (const e of dead) {
        assert.equal(e.attempt, 3);
        assert.match(e.error, /vectors of 17 dimensions, expected 16/);
      }
      const [status] = await sql`select dead_lettered::int, last_error from util.embedding_status`;
      assert.equal(status.dead_lettered, ROWS_PER_PHASE);
      assert.match(status.last_error, /17 dimensions/);
      drive.fake.setFault(null);
      const [{ requeued }] = await sql`select util.retry_failed() as requeued`;
      assert.equal(Number(requeued), ROWS_PER_PHASE);
      const retryMs = await drain(sql, { timeoutMs: 60_000, what: "the re-queued jobs" });
      phases.push({
        phase: "persistent wrong dimensions, then retry_failed",
        faultsInjected: persistent.faults,
        errorsRecorded: persistent.errors.length,
        deadLettered: dead.length,
        drainMs: persistent.drainMs,
        retryDrainMs: retryMs,
      });

      // The provider rejects one input (400): the batch is split around it,
      // the others embed, and that row alone is dead-lettered at once.
      const rejected = await runPhase(
        "one input rejected (400)",
        { kind: "reject-text", contains: "REJECTME" },
        "reject",
        "REJECTME please",
      );
      const rejectedRows = new Set(rejected.errors.map((e) => e.row_id));
      assert.equal(rejectedRows.size, 1, "only the rejected row failed");
      for (const e of rejected.errors) {
        assert.equal(e.retryable, false);
        assert.equal(e.dead_lettered, true);
        assert.match(e.error, /rejected the request \(400/);
      }
      drive.fake.setFault(null);
      phases.push({
        phase: "one input rejected (400)",
        faultsInjected: rejected.faults,
        errorsRecorded: rejected.errors.length,
        deadLettered: rejected.errors.length,
        drainMs: rejected.drainMs,
      });

      const consistency = await checkConsistency(sql, { fake: drive.fake });
      report(`provider faults (${mode})`, {
        rows: consistency.rowsChecked,
        faultsInjected: faultsTotal,
        jobsProcessed: consistency.jobsDone,
        phases,
      }, consistency);
      assertConsistent(consistency, { deadLetteredRows: 1 });
    } finally {
      await drive.stop();
    }
  });
}

Deno.test("reliability: provider faults are retried or failed per row, push mode", () =>
  faultsScenario("push"));

Deno.test("reliability: provider faults are retried or failed per row, worker mode", () =>
  faultsScenario("worker"));
