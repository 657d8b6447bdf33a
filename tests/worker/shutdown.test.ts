// How the worker process ends: SIGTERM during a database outage (every sleep
// ends at once), and errors nobody catches (only postgres.js's known
// disconnect failures are absorbed; anything else ends the process).
import assert from "node:assert/strict";
import { startEphemeralCluster } from "../../local/cluster.ts";
import { applyMigrations } from "../../local/migrate.ts";
import { providerEnv, spawnScript, spawnWorker, type WorkerProcess } from "../../devtools/cli.ts";
import { withTestDb } from "../../devtools/db.ts";
import { startFakeOpenAI } from "../../devtools/fake_openai.ts";
import { waitFor } from "../../devtools/wait.ts";

/** The README's grace period is 10 s; the bound allows for a slow machine. */
const EXIT_BOUND_MS = 15_000;

/** The worker's JSON log lines (stdout and stderr) as objects. */
function events(worker: WorkerProcess): Record<string, unknown>[] {
  return worker.lines.filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
}

Deno.test("SIGTERM during a database outage: the worker exits 0 within the grace period", async () => {
  const cluster = await startEphemeralCluster();
  const fake = await startFakeOpenAI();
  let worker: WorkerProcess | undefined;
  try {
    const url = cluster.url("postgres");
    await applyMigrations(url);
    worker = spawnWorker(["--poll-interval", "200ms"], providerEnv(fake, url));
    await worker.waitForLine(/"event":"started"/);
    await cluster.stop();
    // The premise: the worker knows the database is gone and waits out a
    // reconnect backoff longer than the bound, so only a sleep that SIGTERM
    // ends lets it exit in time.
    const running = worker;
    const backoff = await waitFor(
      () =>
        events(running).find((e) =>
          e.event === "db_unavailable" && Number(e.retryInMs) > EXIT_BOUND_MS + 1_000
        ),
      {
        what: `a reconnect backoff longer than ${EXIT_BOUND_MS + 1_000} ms`,
        timeoutMs: 120_000,
        describe: () => running.lines.slice(-10).join("\n"),
      },
    );
    const signalledAt = Date.now();
    const code = await worker.stop("SIGTERM");
    const exitMs = Date.now() - signalledAt;
    assert.equal(code, 0, worker.lines.join("\n"));
    assert.ok(
      exitMs < EXIT_BOUND_MS,
      `exited ${exitMs} ms after SIGTERM during a backoff of ${backoff.retryInMs} ms (grace 10 s)`,
    );
    assert.ok(events(worker).some((e) => e.event === "stopped"), worker.lines.join("\n"));
  } finally {
    await worker?.stop("SIGKILL");
    await fake.close();
    await cluster.destroy();
  }
});

/** Runs tests/worker/_uncaught.ts: a worker that lets `kind` escape once started. */
async function withUncaught(kind: string, fn: (worker: WorkerProcess) => Promise<void>) {
  await withTestDb(async (_sql, url) => {
    const worker = spawnScript("tests/worker/_uncaught.ts", [url, kind], {});
    try {
      await worker.waitForLine(/"event":"started"/);
      await fn(worker);
    } finally {
      await worker.stop("SIGKILL");
    }
  });
}

for (
  const [kind, says] of [
    ["bug-throw", "Uncaught TypeError: Cannot read properties of undefined (reading 'batchSize')"],
    ["bug-rejection", "Uncaught (in promise) RangeError: a bug nobody awaited"],
  ]
) {
  Deno.test(`an uncaught programming error (${kind}) is logged and ends the worker non-zero`, async () => {
    await withUncaught(kind, async (worker) => {
      let ended: Deno.CommandStatus | undefined;
      worker.status.then((status) => (ended = status));
      const status = await waitFor(() => ended, {
        what: "the worker to end after the error",
        describe: () => worker.lines.join("\n"),
      });
      assert.notEqual(status.code, 0);
      assert.ok(worker.lines.some((l) => l.includes(says)), worker.lines.join("\n"));
      assert.ok(!worker.lines.some((l) => l.includes('"event":"client_reset"')), "not absorbed");
    });
  });
}

for (const kind of ["disconnect-throw", "disconnect-rejection"]) {
  Deno.test(`postgres.js's disconnect failure (${kind}) is absorbed with a fresh pool`, async () => {
    await withUncaught(kind, async (worker) => {
      await worker.waitForLine(/"event":"client_reset"/);
      assert.ok(
        worker.lines.some((l) => l.includes('"event":"database_disconnect_survived"')),
        worker.lines.join("\n"),
      );
      assert.equal(await worker.stop("SIGTERM"), 0, worker.lines.join("\n"));
      assert.ok(
        worker.lines.some((l) => l.includes('"event":"stopped"')),
        "still running until stopped",
      );
    });
  });
}
