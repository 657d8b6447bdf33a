// Scenario 2: the provider misbehaves in every way the fake can: 429 storms
// with Retry-After, 5xx bursts (one with Retry-After), answers slower than
// the client timeout, malformed JSON and wrong vector sizes. Each is a
// failure of the provider as a whole, not of the rows (I14): its circuit
// opens with the error (probed again no sooner than Retry-After when given),
// no row is dead-lettered, and everything embeds once it answers again. A
// fault that persists keeps the circuit open, status saying why, without
// dead-lettering anything; the backlog drains as soon as it clears. An input
// the provider rejects fails alone.
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
  /**
   * A 429: the rate budget (I17) pauses every caller for its Retry-After and
   * the batch goes again whole, so the circuit opens only if 429s outlast
   * the retries of a call.
   */
  rateLimit?: boolean;
}

const TRANSIENT: Phase[] = [
  {
    name: "429 storm with Retry-After",
    fault: { kind: "status", status: 429, retryAfter: "1", times: 6 },
    says: /rate limited by the endpoint \(429[^)]*\); retrying after 1 s/,
    retryAfterS: 1,
    rateLimit: true,
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
    // Backoffs of 0 to 1 s so only Retry-After delays a retry (and the phases run quickly).
    await sql`update util.settings set value = '0' where name = 'backoff_base_seconds'`;
    await sql`update util.settings set value = '0' where name = 'circuit_base_seconds'`;
    await sql`update util.settings set value = '1' where name = 'circuit_max_seconds'`;
    await sql`update util.settings set value = '5' where name = 'max_attempts'`;
    await createDocuments(sql);
    await trackJobs(sql);
    // Every opening (or renewal) of a circuit, as it happens: a phase's may
    // close again within milliseconds.
    await sql.unsafe(`
      create table circuit_log (id serial, reason text, failures int, waits float8, at timestamptz);
      create function log_circuit() returns trigger language plpgsql as $$
      begin
        insert into public.circuit_log (reason, failures, waits, at)
        values (new.reason, new.failures, extract(epoch from new.retry_at - clock_timestamp()),
                clock_timestamp());
        return null;
      end $$;
      create trigger log_circuit after insert or update on util.provider_circuits
        for each row execute function log_circuit();`).simple();
    let lastCircuitId = 0;
    /** Circuit openings since the previous phase (probes moving retry_at on are not openings). */
    const phaseCircuits = async () => {
      const rows = await sql`
        select id, reason, failures, waits from circuit_log where id > ${lastCircuitId} order by id`;
      if (rows.length) lastCircuitId = rows.at(-1)!.id;
      return rows.filter((r) => r.reason !== null);
    };
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
        const circuits = await phaseCircuits();
        assert.ok(faults > 0, `${phase.name}: the fault was hit`);
        if (phase.rateLimit) {
          const [budget] = await sql`
            select sum(rate_limited)::int as limited,
                   max(extract(epoch from paused_until - last_rate_limited_at))::float8 as paused_s
              from util.provider_budgets`;
          assert.ok(budget.limited > 0, `${phase.name}: the rate budget heard the 429s`);
          assert.ok(
            budget.paused_s >= phase.retryAfterS! - 0.25,
            `${phase.name}: the budget paused ${budget.paused_s} s, less than Retry-After`,
          );
        } else assert.ok(circuits.length > 0, `${phase.name}: the provider's circuit opened`);
        // A failure of one call while others succeed is charged to its rows: recorded, retried.
        for (const reason of [...circuits.map((c) => c.reason), ...errors.map((e) => e.error)]) {
          assert.match(reason, phase.says, phase.name);
        }
        for (const e of errors) {
          assert.equal(e.retryable, true, `${phase.name}: retryable`);
          assert.equal(e.dead_lettered, false, `${phase.name}: not dead-lettered`);
        }
        let minWaitS: number | null = null;
        if (phase.retryAfterS && !phase.rateLimit) {
          // The provider was asked again no sooner than its Retry-After: the
          // circuit's pause as the log saw it, measured a few statements after
          // it was set (hence the tolerance, which a missing Retry-After's
          // pause of 0 to 1 s would not meet).
          const waits = circuits.filter((c) => c.waits > 0.5).map((c) => Number(c.waits));
          minWaitS = Number(Math.min(...waits).toFixed(3));
          assert.ok(waits.length > 0, `${phase.name}: a circuit waited`);
          assert.ok(
            minWaitS >= phase.retryAfterS - 0.25,
            `${phase.name}: probed ${minWaitS} s after the error, before Retry-After`,
          );
        }
        phases.push({
          phase: phase.name,
          faultsInjected: faults,
          circuitOpenings: circuits.length,
          rowErrorsRecorded: errors.length,
          minRetryWaitS: minWaitS ?? undefined,
          drainMs,
        });
      }
      const [{ dead: deadAfterTransient }] =
        await sql`select count(*)::int as dead from pgmq.a_embedding_jobs`;
      assert.equal(deadAfterTransient, 0, "no transient fault dead-lettered a row");

      // A fault that never clears: the circuit stays open and says why; no row
      // spends its attempts (max_attempts 3) or is dead-lettered; the backlog
      // drains as soon as the fault clears, without retry_failed.
      await sql`update util.settings set value = '3' where name = 'max_attempts'`;
      const failedBefore = drive.fake.stats.failedRequests;
      drive.fake.setFault({ kind: "wrong-dimensions" });
      await insertRows(sql, ROWS_PER_PHASE, { prefix: "persistent" });
      await waitFor(async () => {
        const [c] = await sql`select max(failures)::int as failures from util.provider_circuits`;
        return (c.failures ?? 0) >= 6;
      }, { what: "six failed probes in a row", timeoutMs: 60_000 });
      const [status] = await sql`
        select dead_lettered::int, queued::int, circuit_reason, circuit_open_since is not null as open
          from util.embedding_status`;
      assert.equal(status.open, true, "status: the circuit is open");
      assert.match(status.circuit_reason, /vectors of 17 dimensions, expected 16/);
      assert.equal(status.dead_lettered, 0, "nothing dead-lettered, however many probes failed");
      assert.ok(status.queued >= ROWS_PER_PHASE, "the rows wait in the queue");
      const persistentFaults = drive.fake.stats.failedRequests - failedBefore;
      drive.fake.setFault(null);
      const retryMs = await drain(sql, { timeoutMs: 60_000, what: "the backlog after the fault" });
      await phaseErrors();
      await phaseCircuits();
      phases.push({
        phase: "persistent wrong dimensions, then cleared",
        faultsInjected: persistentFaults,
        deadLettered: 0,
        drainAfterClearMs: retryMs,
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
