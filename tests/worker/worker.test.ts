// The pull-mode worker as users run it (`deno task autoembed worker`), as a
// real subprocess against the real local cluster and the fake provider.
import assert from "node:assert/strict";
import { startEphemeralCluster } from "../../local/cluster.ts";
import { applyMigrations } from "../../local/migrate.ts";
import { WORKER_V8_FLAGS } from "../../bench/scenarios/drain.ts";
import { providerEnv, runCli, spawnWorker } from "../../devtools/cli.ts";
import { connect, withTestDb } from "../../devtools/db.ts";
import { startFakeOpenAI } from "../../devtools/fake_openai.ts";
import { createDocuments, queueLength } from "../../devtools/pipeline.ts";
import { assertAllFresh, embeddedCount, insertRows } from "../_support/rows.ts";
import { waitFor } from "../../devtools/wait.ts";

Deno.test("worker --once drains a backlog and exits 0", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI();
    try {
      await createDocuments(sql);
      await insertRows(sql, 450);
      const result = await runCli(
        ["worker", "--once", "--batch-size", "100"],
        providerEnv(fake, url),
      );
      assert.equal(result.code, 0, result.stderr);
      assert.equal(await queueLength(sql), 0);
      await assertAllFresh(sql);
      assert.equal(fake.stats.requests, 5, "ceil(450 / 100) provider calls");
      assert.ok(!result.stdout.includes("content of"), "no embedded text in the worker's output");
      assert.ok(!result.stderr.includes("sk-test-key"), "no key in the worker's output");
      const batches = result.stdout.split("\n").filter((l) => l.includes('"event":"batch"'));
      assert.equal(batches.length, 5, "one structured line per batch when not on a terminal");
    } finally {
      await fake.close();
    }
  });
});

Deno.test("3 concurrent workers over 2,000 rows embed every text exactly once", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI({ latencyMs: 50 });
    try {
      await createDocuments(sql);
      await insertRows(sql, 2000);
      const env = providerEnv(fake, url);
      const results = await Promise.all(
        [1, 2, 3].map(() => runCli(["worker", "--once", "-c", "2", "--batch-size", "50"], env)),
      );
      for (const r of results) assert.equal(r.code, 0, r.stderr);
      await assertAllFresh(sql);
      assert.equal(fake.stats.inputs, 2000, "provider inputs equal the number of distinct texts");
      assert.equal(new Set(fake.stats.texts).size, 2000, "no text sent twice");
      const worked = results.filter((r) => r.stdout.includes('"event":"batch"')).length;
      assert.ok(worked >= 2, `batches were shared between workers (${worked} of 3 did work)`);
    } finally {
      await fake.close();
    }
  });
});

Deno.test("a listening worker embeds a commit without waiting for the poll interval", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI({ latencyMs: 20 });
    await createDocuments(sql);
    const worker = spawnWorker(["--poll-interval", "10m"], providerEnv(fake, url));
    try {
      await worker.waitForLine(/"event":"started".*"listening":true/);
      // The start-up claim found the queue empty: from now on only a NOTIFY can
      // wake the worker before the poll interval (10 min) ends.
      await worker.waitForLine(/"event":"idle"/);
      await insertRows(sql, 1, { prefix: "fresh" });
      await waitFor(async () => await embeddedCount(sql) === 1, {
        what: "the listening worker to embed the new row",
        timeoutMs: 20_000,
      });
      await assertAllFresh(sql);
      assert.equal(await worker.stop("SIGTERM"), 0);
    } finally {
      await worker.stop("SIGKILL");
      await fake.close();
    }
  });
});

Deno.test("SIGTERM mid-batch: the worker exits 0 within the grace period and nothing is lost", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI({ latencyMs: 1500 });
    await createDocuments(sql);
    await insertRows(sql, 200);
    const env = providerEnv(fake, url);
    const worker = spawnWorker(["-c", "2", "--batch-size", "50", "--poll-interval", "1m"], env);
    try {
      await waitFor(async () => {
        const [{ n }] =
          await sql`select count(*)::int as n from pgmq.q_embedding_jobs where read_ct > 0`;
        return n > 0;
      }, { what: "a batch in flight" });
      const signalledAt = Date.now();
      assert.equal(await worker.stop("SIGTERM"), 0);
      const exitMs = Date.now() - signalledAt;
      assert.ok(exitMs < 15_000, `exited ${exitMs} ms after SIGTERM (grace 10 s)`);
      assert.ok(worker.lines.some((l) => l.includes('"event":"stopped"')), worker.lines.join("\n"));
      // Every row is embedded or still has a job that can be claimed now or after its vt.
      const [{ unaccounted }] = await sql`
        select count(*)::int as unaccounted from documents d
         where d.embedding is null
           and not exists (select 1 from pgmq.q_embedding_jobs q
                            where coalesce(q.message -> 'ids', jsonb_build_array(q.message -> 'id'))
                                  @> jsonb_build_array(d.id))`;
      assert.equal(unaccounted, 0);
      fake.setLatency(0);
      await sql`update pgmq.q_embedding_jobs set vt = now()`; // skip the wait for the visibility timeout
      const again = await runCli(["worker", "--once"], env);
      assert.equal(again.code, 0, again.stderr);
      await assertAllFresh(sql);
    } finally {
      await worker.stop("SIGKILL");
      await fake.close();
    }
  });
});

Deno.test("Postgres restarted mid-drain: the worker reconnects and everything is embedded", async () => {
  const cluster = await startEphemeralCluster();
  const fake = await startFakeOpenAI({ latencyMs: 30 });
  const url = cluster.url("postgres");
  await applyMigrations(url);
  const sql = connect(url);
  const worker = spawnWorker(
    ["-c", "2", "--batch-size", "25", "--poll-interval", "200ms", "--visibility-timeout", "5s"],
    providerEnv(fake, url),
  );
  try {
    await createDocuments(sql);
    await insertRows(sql, 1500);
    await waitFor(async () => await embeddedCount(sql) > 0, { what: "the drain to start" });
    await sql.end();
    await cluster.restart("fast");
    const after = connect(url);
    try {
      await waitFor(async () => await queueLength(after) === 0, {
        what: "the drain to finish after the restart",
        timeoutMs: 60_000,
        describe: async () => {
          const queue =
            await after`select count(*)::int as n, min(vt) as next_vt from pgmq.q_embedding_jobs`;
          return `queue ${JSON.stringify(queue)}; worker said:\n` +
            worker.lines.filter((l) => !l.includes(`"event":"batch"`)).slice(-40).join("\n");
        },
      });
      await assertAllFresh(after);
      assert.ok(
        worker.lines.some((l) => /db_unavailable|batch_interrupted/.test(l)),
        "the worker noticed the restart",
      );
      assert.equal(await worker.stop("SIGTERM"), 0);
    } finally {
      await after.end();
    }
  } finally {
    await worker.stop("SIGKILL");
    await fake.close();
    await cluster.destroy();
  }
});

Deno.test("CLI: bad input gives a one-line error and exit code 2", async () => {
  await withTestDb(async (sql, url) => {
    await createDocuments(sql);
    const cases: { args: string[]; env?: Record<string, string>; message: RegExp }[] = [
      { args: ["status"], message: /no database: pass -d\/--db-url/ },
      { args: ["status", "-d", "mysql://x"], message: /--db-url must start with postgresql:\/\// },
      {
        args: ["status", "-d", "postgresql://postgres:postgres@127.0.0.1:1/postgres"],
        message: /cannot connect to the database/,
      },
      {
        args: ["backfill", "nope", "-d", url],
        message: /table "nope".*is not attached.*public\.documents/,
      },
      {
        args: ["worker", "-d", url, "--concurrency", "zero"],
        message: /--concurrency: "zero" is not a positive/,
      },
      {
        args: ["worker", "-d", url, "--poll-interval", "soon"],
        message: /--poll-interval: "soon" is not a duration/,
      },
      {
        args: ["worker", "-d", url, "--table", "nope", "--once"],
        message: /table "nope".*not attached/,
      },
      { args: ["status", "-d", url, "--frobnicate"], message: /unknown option --frobnicate/ },
      { args: ["launch", "-d", url], message: /unknown command "launch"/ },
      { args: ["backfill", 'a b"; drop table documents', "-d", url], message: /is not attached/ },
      {
        args: ["reembed", "documents", "-d", url, "--dimensions", "-3"],
        message: /needs a value|not a positive/,
      },
    ];
    for (const c of cases) {
      const r = await runCli(c.args, c.env);
      assert.equal(r.code, 2, `${c.args.join(" ")}: exit ${r.code}\n${r.stderr}`);
      const lines = r.stderr.trim().split("\n");
      assert.equal(lines.length, 1, `${c.args.join(" ")}: one line, got:\n${r.stderr}`);
      assert.match(lines[0], c.message, c.args.join(" "));
      assert.doesNotMatch(r.stderr, /\bat .*\.ts:\d+/, "no stack trace");
    }
  });
});

Deno.test("CLI: status, backfill, reembed and retry-failed report what they did", async () => {
  await withTestDb(async (sql, url) => {
    await createDocuments(sql);
    await insertRows(sql, 12);
    let r = await runCli(["status", "-d", url, "--json"]);
    assert.equal(r.code, 0, r.stderr);
    const [status] = JSON.parse(r.stdout);
    assert.equal(status.table, "public.documents");
    assert.equal(Number(status.queued), 12);
    r = await runCli(["status", "-d", url]);
    assert.match(r.stdout, /public\.documents\s+embedding/);
    await sql`select pgmq.purge_queue('embedding_jobs')`;
    r = await runCli(["backfill", "documents", "-d", url]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /enqueued 12 row\(s\) of public\.documents/);
    r = await runCli(["reembed", "documents", "-d", url, "--model", "local-hash-v1"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /enqueued 12 row\(s\) of public\.documents for model local-hash-v1/);
    await sql`select pgmq.archive('embedding_jobs', array(select msg_id from pgmq.q_embedding_jobs))`;
    r = await runCli(["retry-failed", "-d", url]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /re-queued 24 dead-lettered job\(s\)/);
  });
});

Deno.test("CLI: `deno task autoembed` works as the README documents it", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["task", "autoembed", "--help"],
    cwd: new URL("../..", import.meta.url),
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  assert.match(stdout, /usage: autoembed <command>/);
  // The heap limits the benchmarks measure the worker's footprint with are the task's.
  const config = JSON.parse(await Deno.readTextFile(new URL("../../deno.json", import.meta.url)));
  assert.ok(
    config.tasks.autoembed.includes(`--v8-flags=${WORKER_V8_FLAGS} `),
    config.tasks.autoembed,
  );
});
