// Scenario 5: a concurrency race. Four pull workers and the push path drain
// the same queue while a writer makes random updates, no-op updates, bulk
// updates, deletes and re-inserts (same keys) on two tables — one with a
// bigint key, one with a text key and clear_on_change — and the provider's
// latency changes at random. While it runs, every stored embedding must be
// the one its fingerprint describes; at the end I1 and I2 hold for every row.
// Seeded: AUTOEMBED_RELIABILITY_SEED=<seed> replays a run's operations.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { providerEnv, spawnWorker } from "../../devtools/cli.ts";
import { assertConsistent, checkConsistency, trackJobs } from "../_support/consistency.ts";
import { withTestDb } from "../../devtools/db.ts";
import {
  createDocuments,
  startPipeline,
  TEST_DIMENSIONS,
  TEST_MODEL,
} from "../../devtools/pipeline.ts";
import { embeddingProblem } from "../_support/rows.ts";
import {
  cronTick,
  drain,
  report,
  seed,
  seededRandom,
  sized,
  workerArgs,
} from "../_support/reliability.ts";
import { sleep } from "../../supabase/functions/_shared/sleep.ts";

const ROWS_PER_TABLE = sized(100, 100);
const OPS = sized(300, 1_000);
const DURATION_MS = sized(6_000, 20_000);
const WORKERS = 4;
/** Provider latency is redrawn every LATENCY_STEP_MS from [0, MAX_LATENCY_MS). */
const MAX_LATENCY_MS = 300;
const LATENCY_STEP_MS = 25;
/** Most edits go to a few hot rows, so edits meet jobs in flight for the same row. */
const HOT_ROWS = 10;
const HOT_SHARE = 0.7;
const AUDIT_EVERY_MS = 100;

const sha256 = (text: string) => createHash("sha256").update(text, "utf8").digest("hex");

interface Table {
  name: "documents" | "notes";
  /** Keys ever used; `live` those present now. */
  keys: string[];
  live: Set<string>;
}

Deno.test("reliability: 4 workers and push mode race random edits, deletes and re-inserts", async () => {
  const seedValue = seed();
  console.log(`race seed ${seedValue} (replay with AUTOEMBED_RELIABILITY_SEED=${seedValue})`);
  const random = seededRandom(seedValue);
  // Its own stream: the latency loop's timing must not shift the operations' draws.
  const latencyRandom = seededRandom(seedValue ^ 0x9e3779b9);
  const pick = <T>(items: T[]): T => items[Math.floor(random() * items.length)];
  /** A live key of `table`, most often one of its hot rows. */
  const pickKey = (table: Table, live: string[]): string => {
    const hot = table.keys.slice(0, HOT_ROWS).filter((k) => table.live.has(k));
    return hot.length && random() < HOT_SHARE ? pick(hot) : pick(live);
  };
  let textCounter = 0;
  /** Every text ever written, by hash: what a fingerprint says was embedded. */
  const textByHash = new Map<string, string>();
  const newText = (label: string) => {
    const words = ["queue", "vector", "index", "cron", "trigger", "batch", "lease", "model"];
    const text = `${label} ${++textCounter} ${pick(words)} ${pick(words)} ${
      Math.floor(random() * 1e6)
    }`;
    textByHash.set(sha256(text), text);
    return text;
  };

  await withTestDb(async (sql, url) => {
    await createDocuments(sql);
    await sql.unsafe(`
      create table notes (id text primary key, body text not null, embedding halfvec(${TEST_DIMENSIONS}));
      create function notes_input(n notes) returns text language sql immutable as $$ select n.body $$;
    `).simple();
    await sql`select util.enable_embeddings('notes', 'notes_input', model => ${TEST_MODEL},
                                            clear_on_change => true)`;
    await trackJobs(sql);
    const tables: Table[] = [
      { name: "documents", keys: [], live: new Set() },
      { name: "notes", keys: [], live: new Set() },
    ];
    for (let i = 1; i <= ROWS_PER_TABLE; i++) {
      const docText = newText("doc");
      // documents_input(d) is title || ': ' || content
      const [title, content] = [`t${i}`, docText];
      textByHash.set(sha256(`${title}: ${content}`), `${title}: ${content}`);
      await sql`insert into documents (id, title, content) values (${i}, ${title}, ${content})`;
      const key = `note/${i}/${pick(["a", "b's", "ü", "x y"])}`;
      await sql`insert into notes (id, body) values (${key}, ${newText("note")})`;
      tables[0].keys.push(String(i));
      tables[0].live.add(String(i));
      tables[1].keys.push(key);
      tables[1].live.add(key);
    }

    const p = await startPipeline(sql, url);
    const push = { batchSize: 20, maxRequests: 2, timeoutMs: 2_000 };
    const tick = cronTick(sql, 150, push);
    const env = providerEnv(p.fake, url);
    const workers = Array.from(
      { length: WORKERS },
      () => spawnWorker(workerArgs(10, 1, 3_000), env),
    );
    const counts = { update: 0, noop: 0, bulk: 0, delete: 0, reinsert: 0, audits: 0 };
    const auditProblems: string[] = [];
    let running = true;

    /**
     * I2 while it runs, on one snapshot per table: every stored embedding is
     * the vector of the text its fingerprint names, and that is the row's
     * current text unless a job for the row is still queued (a stale write
     * that lands after the row's last job would otherwise stay for good).
     */
    const audit = async () => {
      for (const table of ["documents", "notes"]) {
        const rows = await sql.unsafe(
          `select r.id::text, r.embedding::text, encode(f.content_hash, 'hex') as fp,
                  f.content_hash is distinct from
                    sha256(convert_to(coalesce(${table}_input(r), ''), 'UTF8')) as stale,
                  exists (select from pgmq.q_embedding_jobs q
                           where q.message ->> 'table' = '${table}'
                             and coalesce(q.message -> 'ids', jsonb_build_array(q.message -> 'id'))
                                 @> jsonb_build_array(r.id)) as pending
             from ${table} r
             join util.embedding_targets t on t.table_oid = '${table}'::regclass
             left join util.embedding_fingerprints f on f.target_id = t.id and f.row_id = r.id::text
            where r.embedding is not null`,
        );
        for (const row of rows) {
          const text = row.fp ? textByHash.get(row.fp) : undefined;
          if (text === undefined || embeddingProblem(row.embedding, text) !== null) {
            auditProblems.push(`${table} ${row.id}: embedding disagrees with its fingerprint`);
          }
          if (row.stale && !row.pending) {
            auditProblems.push(`${table} ${row.id}: embedding of old text and no job queued`);
          }
        }
      }
      counts.audits++;
    };
    const auditing = (async () => {
      while (running) {
        await audit();
        await sleep(AUDIT_EVERY_MS);
      }
    })();
    const latency = (async () => {
      while (running) {
        p.fake.setLatency(Math.floor(latencyRandom() * MAX_LATENCY_MS));
        await sleep(LATENCY_STEP_MS);
      }
      p.fake.setLatency(0);
    })();

    const started = performance.now();
    try {
      await Promise.all(workers.map((w) => w.waitForLine(/"event":"started"/)));
      for (let op = 0; op < OPS; op++) {
        const table = pick(tables);
        const live = [...table.live];
        const dead = table.keys.filter((k) => !table.live.has(k));
        const roll = random();
        if (roll < 0.55 && live.length) {
          const key = pickKey(table, live);
          if (table.name === "documents") {
            const content = newText("doc");
            const [{ title }] =
              await sql`update documents set content = ${content} where id = ${key} returning title`;
            textByHash.set(sha256(`${title}: ${content}`), `${title}: ${content}`);
          } else {
            await sql`update notes set body = ${newText("note")} where id = ${key}`;
          }
          counts.update++;
        } else if (roll < 0.65 && live.length) {
          // I4 under the race: a no-op update must neither enqueue nor clear.
          const key = pickKey(table, live);
          if (table.name === "documents") {
            await sql`update documents set title = title where id = ${key}`;
          } else await sql`update notes set body = body where id = ${key}`;
          counts.noop++;
        } else if (roll < 0.72 && live.length) {
          // One statement, several rows: the statement-level trigger path.
          const keys = Array.from({ length: 5 }, () => pickKey(table, live));
          if (table.name === "documents") {
            const suffix = newText("bulk");
            const rows = await sql`
              update documents set content = content || ${suffix}
               where id = any(${keys.map(Number)}::bigint[]) returning title, content`;
            for (const r of rows) {
              textByHash.set(sha256(`${r.title}: ${r.content}`), `${r.title}: ${r.content}`);
            }
          } else {
            const suffix = newText("bulk");
            const rows =
              await sql`update notes set body = body || ${suffix} where id = any(${keys}) returning body`;
            for (const r of rows) textByHash.set(sha256(r.body), r.body);
          }
          counts.bulk++;
        } else if (roll < 0.86 && live.length > 1) {
          const key = pickKey(table, live);
          await sql.unsafe(`delete from ${table.name} where id::text = $1`, [key]);
          table.live.delete(key);
          counts.delete++;
        } else if (dead.length) {
          // Re-insert a deleted key: its old fingerprint and any late job must not confuse it.
          const key = pick(dead);
          if (table.name === "documents") {
            const content = newText("doc");
            await sql`insert into documents (id, title, content) values (${key}, 'again', ${content})`;
            textByHash.set(sha256(`again: ${content}`), `again: ${content}`);
          } else {
            await sql`insert into notes (id, body) values (${key}, ${newText("note")})`;
          }
          table.live.add(key);
          counts.reinsert++;
        }
        const due = started + ((op + 1) * DURATION_MS) / OPS;
        await sleep(Math.max(0, due - performance.now()));
      }
      const opsMs = Math.round(performance.now() - started);
      running = false;
      await latency;
      await auditing;
      const drainMs = await drain(sql, { timeoutMs: 120_000, what: "the queue after the race" });
      await audit();
      const consistency = await checkConsistency(sql, { fake: p.fake });
      const batchesByWorker = workers.map((w) =>
        w.lines.filter((l) => /"event":"batch","jobs":[1-9]/.test(l)).length
      );
      const pushBatches = p.logs.filter((l) => l.includes('"event":"batch"')).length;
      report("concurrency race", {
        seed: seedValue,
        rows: ROWS_PER_TABLE * 2,
        ops: counts,
        opsMs,
        workers: WORKERS,
        batchesByWorker,
        pushBatches,
        jobsProcessed: consistency.jobsDone,
        auditProblems: auditProblems.length,
        drainMs,
      }, consistency);
      assert.deepEqual(
        auditProblems.slice(0, 10),
        [],
        "embeddings always match their fingerprints",
      );
      assert.ok(batchesByWorker.filter((n) => n > 0).length >= 2, "several workers took part");
      assert.ok(pushBatches > 0, "push mode took part");
      // Jobs for the same text can meet in two processes at once; each costs one input at most.
      assertConsistent(consistency, {
        allowedDuplicates: consistency.jobsTracked - consistency.rowsChecked,
      });
    } finally {
      running = false;
      await latency;
      await auditing;
      await tick.stop();
      for (const w of workers) await w.stop("SIGKILL");
      await p.stop();
    }
  });
});
