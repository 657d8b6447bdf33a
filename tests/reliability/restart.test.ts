// Scenario 4: Postgres restarts (fast shutdown) in the middle of a drain, in
// both modes, on a throw-away cluster so the shared one is never touched.
// Workers, the pg_net dispatcher and the function's pool reconnect; claims
// cut off by the restart come back after their visibility timeout.
import assert from "node:assert/strict";
import { startEphemeralCluster } from "../../local/cluster.ts";
import { surviveDatabaseDisconnects } from "../../supabase/functions/_shared/postgres_guard.ts";
import { applyMigrations } from "../../local/migrate.ts";
import { assertConsistent, checkConsistency, trackJobs } from "../_support/consistency.ts";
import { connect } from "../../devtools/db.ts";
import { createDocuments } from "../../devtools/pipeline.ts";
import { drain, type Mode, report, sized, startDrive } from "../_support/reliability.ts";
import { embeddedCount, insertRows } from "../_support/rows.ts";
import { waitFor } from "../../devtools/wait.ts";

const ROWS = sized(1_000, 5_000);
const BATCH = 25;
const PARALLEL = 2;
/** Worker --visibility-timeout; in push mode timeout_milliseconds (claims hidden 1 + 5 s). */
const TIMEOUT_MS = sized(3_000, 3_000);

async function restartScenario(mode: Mode) {
  // This process hosts the embed function and the pg_net dispatcher in push
  // mode: guarded as index.ts guards the function (postgres.js can throw from a
  // timer when the server closes a connection).
  const guarded: string[] = [];
  const unguard = surviveDatabaseDisconnects((line) => guarded.push(line));
  const cluster = await startEphemeralCluster();
  const url = cluster.url("postgres");
  let drive;
  const sql = connect(url);
  try {
    await applyMigrations(url);
    await createDocuments(sql);
    await trackJobs(sql);
    await insertRows(sql, ROWS);
    drive = await startDrive(mode, sql, url, {
      latencyMs: 50,
      batchSize: BATCH,
      parallel: PARALLEL,
      timeoutMs: mode === "push" ? 1_000 : TIMEOUT_MS,
    });
    await waitFor(async () => await embeddedCount(sql) >= BATCH, {
      what: "a batch embedded before the restart",
      intervalMs: 20,
    });
    const beforeRestart = await embeddedCount(sql);
    const restartStarted = performance.now();
    await cluster.restart("fast");
    const restartMs = Math.round(performance.now() - restartStarted);
    const drainMs = await drain(sql, { timeoutMs: 120_000, what: "the queue after the restart" });
    const consistency = await checkConsistency(sql, { fake: drive.fake });
    const allowed = PARALLEL * BATCH;
    const noticed = mode === "worker"
      ? drive.workers[0].lines.filter((l) =>
        /db_unavailable|batch_interrupted|client_reset/.test(l)
      )
        .length
      : drive.pipeline!.logs.filter((l) => /unavailable|error|continue_failed/.test(l)).length;
    report(`postgres restart (${mode})`, {
      rows: ROWS,
      embeddedBeforeRestart: beforeRestart,
      faultsInjected: 1,
      restartMs,
      disconnectionsLogged: noticed,
      disconnectErrorsSurvived: guarded.length,
      jobsProcessed: consistency.jobsDone,
      recoverMs: restartMs + drainMs,
      allowedDuplicates: allowed,
    }, consistency);
    assert.ok(beforeRestart < ROWS, "the restart came mid-drain");
    assertConsistent(consistency, { allowedDuplicates: allowed });
  } finally {
    await sql.end({ timeout: 1 }).catch(() => {});
    await drive?.stop();
    await cluster.destroy();
    unguard();
  }
}

Deno.test("reliability: Postgres restarted mid-drain, push mode", () => restartScenario("push"));

Deno.test("reliability: Postgres restarted mid-drain, worker mode", () =>
  restartScenario("worker"));
