// Logical capture (issue 25): what following the write-ahead log costs the
// application's writes, single-row and bulk, and what it does to freshness
// and to the WAL the slot holds, against the triggers and an unattached
// table; on one throw-away cluster at wal_level logical, fsync off and then
// durable.
import { fmt, median, percentile, Section, spread } from "../report.ts";
import { startEphemeralCluster } from "../../local/cluster.ts";
import { databaseUrl } from "../../local/config.ts";
import { waitFor } from "../../devtools/wait.ts";
import { sleep } from "../../supabase/functions/_shared/sleep.ts";
import {
  type BenchContext,
  type BenchDb,
  type BenchWorker,
  buildTemplate,
  cloneDb,
  connect,
  insertRows,
  machineCpuSeconds,
  makeDurable,
  MODEL,
  processCpuSeconds,
  PROVIDER_LATENCY_MS,
  providerEnv,
  rowsSql,
  type Sql,
  startWorker,
  useServer,
} from "../stack.ts";
import { CLIENTS, pgbench, SCRIPTS } from "./write_path.ts";

const MODES = ["unattached", "triggers", "logical"] as const;
type Mode = typeof MODES[number];
/**
 * The single-row runs add a fourth way: logical with no worker following
 * the slot while pgbench runs (one follows it afterwards and catches up):
 * the write path alone, without the decoding and the worker's statements
 * competing for the same cores.
 */
const INSERT_MODES = [...MODES, "deferred"] as const;
type InsertMode = typeof INSERT_MODES[number];

const LABELS: Record<InsertMode, string> = {
  unattached: "unattached (no pipeline)",
  triggers: "triggers (`util.enable_embeddings` default)",
  logical: "logical (`capture => 'logical'`, a worker following the slot)",
  deferred: "logical, the slot followed only after the run (the write path alone)",
};

const DESCRIPTIONS: Record<InsertMode, string> = {
  deferred: "logical, with no worker following the slot while pgbench runs; one follows it " +
    "afterwards and catches up (its time and CPU are in the columns after)",
  unattached: "the table alone, no pipeline",
  triggers: "`util.enable_embeddings` as it attaches by default: statement-level triggers " +
    "queue the jobs in the writing transaction (this install has no pg_cron: a NOTIFY per " +
    "transaction for listening workers)",
  logical: "`util.enable_embeddings(..., capture => 'logical')`: no trigger, the table in the " +
    "publication, `deno task autoembed worker` following the slot",
};

/** Rows in the table before the single-row runs, as section 4. */
const PREFILL = 100_000;
/** Single-row inserts a second in the freshness runs. */
const RATE_PER_SECOND = 20;

/**
 * A fresh clone with bench_docs attached the way `mode` says (no backfill).
 * A logical one gets its own slot (slot names are the server's) and an idle
 * attached table `bench_idle` that capture-only workers claim from (below).
 * The slot is made here, after the publication exists: the worker then finds
 * it and sweeps nothing (a worker that creates the slot sweeps the table, a
 * slice at each poll: the prefilled rows, or rows a measurement inserts,
 * queued a second time).
 */
async function prepare(label: string, mode: InsertMode, prefill: number) {
  const db = await cloneDb(`capture_${label}_${mode}`);
  if (prefill > 0) await insertRows(db.sql, prefill, "prefill");
  if (mode === "triggers") {
    await db.sql`
      select util.enable_embeddings('public.bench_docs', 'bench_docs_input', model => ${MODEL},
                                    backfill => false)`;
  }
  if (mode === "logical" || mode === "deferred") {
    await db.sql`update util.settings set value = ${db.name} where name = 'capture_slot'`;
    await db.sql`
      select util.enable_embeddings('public.bench_docs', 'bench_docs_input', model => ${MODEL},
                                    backfill => false, capture => 'logical')`;
    await db.sql.unsafe(`
      create table public.bench_idle (id bigint primary key, body text not null, embedding halfvec(8));
      create function public.bench_idle_input(d public.bench_idle) returns text
        language sql immutable set search_path = '' as $$ select d.body $$;
    `).simple();
    await db.sql`
      select util.enable_embeddings('public.bench_idle', 'bench_idle_input', model => ${MODEL},
                                    backfill => false)`;
    await db.sql`select pg_create_logical_replication_slot(${db.name}, 'pgoutput')`;
  }
  await db.sql`vacuum analyze bench_docs`;
  return db;
}

/**
 * `deno task autoembed worker`, as users run it, once it follows the slot.
 * `captureOnly`: its claims are kept to the idle table (`--table
 * bench_idle`), so it follows the slot and queues jobs but embeds nothing:
 * the embedding work, the same whichever way changes are seen, stays out of
 * the write path's figures, as section 4 measures the triggers with no
 * worker. Its claims still run (each flush that queued jobs wakes it); the
 * queue is emptied before every run so they stay small.
 */
async function follower(ctx: BenchContext, db: BenchDb, captureOnly: boolean) {
  const args = captureOnly ? ["--table", "public.bench_idle"] : ["-c", "1"];
  const worker = startWorker(args, { DATABASE_URL: db.url, ...providerEnv(ctx.fake) }, {
    asTask: true,
  });
  try {
    await worker.process.waitForLine(/"event":"capture_following"/, 60_000);
  } catch (err) {
    await worker.stop();
    throw err;
  }
  return worker;
}

/** WAL bytes the slot holds beyond its confirmed position. */
async function slotLag(sql: Sql, slot: string): Promise<number> {
  const [row] = await sql<{ lag: string }[]>`
    select pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint as lag
      from pg_replication_slots where slot_name = ${slot}`;
  return Number(row.lag);
}

/** Seconds until the slot confirmed everything written so far (the worker flushed its jobs). */
async function caughtUp(sql: Sql, slot: string, timeoutMs = 120_000): Promise<number> {
  const started = performance.now();
  const [{ lsn }] = await sql<{ lsn: string }[]>`select pg_current_wal_lsn()::text as lsn`;
  await waitFor(async () => {
    const [row] = await sql`
      select confirmed_flush_lsn >= ${lsn}::pg_lsn as done from pg_replication_slots
       where slot_name = ${slot}`;
    return row?.done === true;
  }, { what: `the slot ${slot} to confirm ${lsn}`, timeoutMs, intervalMs: 20 });
  return (performance.now() - started) / 1000;
}

async function queuedRows(sql: Sql): Promise<number> {
  const [row] = await sql`
    select coalesce(sum(util._job_rows(message)), 0)::int as n from pgmq.q_embedding_jobs`;
  return row.n;
}

async function tableRows(sql: Sql): Promise<number> {
  const [row] = await sql`select count(*)::int as n from public.bench_docs`;
  return row.n;
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  await fn();
  return (performance.now() - started) / 1000;
}

interface InsertRun {
  tps: number;
  /** CPU seconds of the whole machine from pgbench's start until the slot caught up (logical). */
  machineCpu: number;
  /** Logical: CPU seconds of the worker (with its task runner) and of the walsender meanwhile. */
  workerCpu?: number;
  walsenderCpu?: number;
  /** Logical: WAL the slot held when pgbench ended, and seconds until it confirmed it all. */
  lagAtEnd?: number;
  catchUp?: number;
  /** Rows the run inserted, and rows queued for it (once captured). */
  inserted: number;
  queued: number;
}

/** pgbench single-row inserts, the three ways interleaved. */
async function singleRowInserts(
  ctx: BenchContext,
  cluster: string,
  script: string,
  reps: number,
  seconds: number,
): Promise<Record<InsertMode, InsertRun[]>> {
  const runs: Record<InsertMode, InsertRun[]> = {
    unattached: [],
    triggers: [],
    logical: [],
    deferred: [],
  };
  const dbs: BenchDb[] = [];
  try {
    for (const mode of INSERT_MODES) dbs.push(await prepare("insert", mode, PREFILL));
    for (const db of dbs) await db.sql`checkpoint`;
    for (let rep = 0; rep < reps; rep++) {
      for (const [i, mode] of INSERT_MODES.entries()) {
        const db = dbs[i];
        await db.sql`select pgmq.purge_queue('embedding_jobs')`;
        const before = await tableRows(db.sql);
        let worker: BenchWorker | undefined;
        const run: InsertRun = { tps: 0, machineCpu: 0, inserted: 0, queued: 0 };
        try {
          let walsender = 0;
          const workerCpu = () => sum(worker!.pids().map((pid) => processCpuSeconds(pid) || 0));
          if (mode === "logical") {
            worker = await follower(ctx, db, true);
            // What other runs wrote since this worker's last stop: decoded first.
            await caughtUp(db.sql, db.name);
            const [slot] = await db.sql`
              select active_pid from pg_replication_slots where slot_name = ${db.name}`;
            walsender = slot.active_pid;
          }
          const cpu = {
            machine: machineCpuSeconds(),
            worker: worker ? workerCpu() : 0,
            walsender: walsender ? processCpuSeconds(walsender) : 0,
          };
          run.tps = await pgbench(db.url, script, seconds);
          if (mode === "deferred") {
            worker = await follower(ctx, db, true);
            const [slot] = await db.sql`
              select active_pid from pg_replication_slots where slot_name = ${db.name}`;
            walsender = slot?.active_pid ?? 0;
          }
          if (worker) {
            run.lagAtEnd = await slotLag(db.sql, db.name);
            run.catchUp = await caughtUp(db.sql, db.name);
            run.workerCpu = workerCpu() - cpu.worker;
            run.walsenderCpu = processCpuSeconds(walsender) - cpu.walsender;
          }
          run.machineCpu = machineCpuSeconds() - cpu.machine;
        } finally {
          await worker?.stop();
        }
        run.inserted = (await tableRows(db.sql)) - before;
        run.queued = await queuedRows(db.sql);
        runs[mode].push(run);
        ctx.log(
          `  ${cluster} ${mode}: ${fmt(run.tps)} inserts/s` + (run.catchUp === undefined
            ? ""
            : `; slot ${run.lagAtEnd} B behind at the end, caught up in ${fmt(run.catchUp)} s; ` +
              `CPU ${fmt(run.workerCpu!)} s worker, ${fmt(run.walsenderCpu!)} s walsender`) +
            `; CPU ${fmt(run.machineCpu)} s machine (${run.queued}/${run.inserted} rows queued)`,
        );
      }
    }
  } finally {
    for (const db of dbs) await db.drop();
  }
  return runs;
}

interface BulkRun {
  insert: number;
  copy: number;
  /** Logical: seconds from the statement's end until the slot confirmed it (its jobs queued). */
  insertCapture?: number;
  copyCapture?: number;
  queued: number;
}

/** COPY text of rows `from`..`to` (as rowsSql's), in chunks of about 1 MB, built before timing. */
function copyChunks(count: number, seed: string, offset: number): Uint8Array[] {
  const encoder = new TextEncoder();
  const chunks: Uint8Array[] = [];
  let lines: string[] = [];
  let size = 0;
  for (let g = 1; g <= count; g++) {
    const n = g + offset;
    const line = `document ${n} ${seed}\t${
      "lorem ipsum dolor sit amet consectetur ".repeat(10)
    }${seed} ${n}\n`;
    lines.push(line);
    size += line.length;
    if (size >= 1 << 20 || g === count) {
      chunks.push(encoder.encode(lines.join("")));
      lines = [];
      size = 0;
    }
  }
  return chunks;
}

async function copyRows(sql: Sql, chunks: Uint8Array[]): Promise<void> {
  const stream = await sql`copy public.bench_docs (title, body) from stdin`.writable();
  for (const chunk of chunks) {
    if (!stream.write(chunk)) await new Promise((r) => stream.once("drain", r));
  }
  stream.end();
  await new Promise((resolve, reject) => {
    stream.once("finish", resolve);
    stream.once("error", reject);
  });
}

/** One INSERT ... SELECT of `rows` into an empty table, then one COPY of as many; fresh database each. */
async function bulkInserts(
  ctx: BenchContext,
  cluster: string,
  rows: number,
  reps: number,
): Promise<Record<Mode, BulkRun[]>> {
  const runs: Record<Mode, BulkRun[]> = { unattached: [], triggers: [], logical: [] };
  const chunks = copyChunks(rows, "copy", rows);
  for (let rep = 0; rep < reps; rep++) {
    for (const mode of MODES) {
      const db = await prepare("bulk", mode, 0);
      let worker: BenchWorker | undefined;
      try {
        if (mode === "logical") worker = await follower(ctx, db, true);
        await db.sql`checkpoint`;
        const run: BulkRun = {
          insert: await timed(() =>
            db.sql.unsafe(`insert into public.bench_docs (title, body) ${rowsSql(rows, "bulk")}`)
          ),
          copy: 0,
          queued: 0,
        };
        if (worker) run.insertCapture = await caughtUp(db.sql, db.name);
        await db.sql`checkpoint`;
        run.copy = await timed(() => copyRows(db.sql, chunks));
        if (worker) run.copyCapture = await caughtUp(db.sql, db.name);
        run.queued = await queuedRows(db.sql);
        runs[mode].push(run);
        ctx.log(
          `  ${cluster} bulk ${mode}: insert ${fmt(run.insert)} s, copy ${fmt(run.copy)} s` +
            (worker
              ? `; captured ${fmt(run.insertCapture!)} s / ${fmt(run.copyCapture!)} s after`
              : "") +
            ` (${run.queued} rows queued)`,
        );
      } finally {
        await worker?.stop();
        await db.drop();
      }
    }
  }
  return runs;
}

/**
 * `seconds` × RATE_PER_SECOND single-row inserts at that rate; per row, its
 * fingerprint's embedded_at minus the time its insert's reply (after its
 * commit) reached the client, ms.
 */
async function freshnessRun(db: BenchDb, seconds: number, run: number): Promise<number[]> {
  const count = seconds * RATE_PER_SECOND;
  const committedAt = new Map<string, number>();
  const started = performance.now();
  const inserts: Promise<void>[] = [];
  for (let i = 0; i < count; i++) {
    const wait = started + (i * 1000) / RATE_PER_SECOND - performance.now();
    if (wait > 0) await sleep(wait);
    const title = `fresh ${run} ${i}`;
    inserts.push(
      db.sql<{ id: string }[]>`
        insert into public.bench_docs (title, body)
        values (${title}, ${`${
        "lorem ipsum dolor sit amet consectetur ".repeat(10)
      }${crypto.randomUUID()}`})
        returning id::text`.then(([row]) => void committedAt.set(row.id, Date.now())),
    );
  }
  await Promise.all(inserts);
  const ids = [...committedAt.keys()];
  const embedded = await waitFor(async () => {
    const rows = await db.sql<{ id: string; at: number }[]>`
      select row_id as id, extract(epoch from embedded_at) * 1000 as at
        from util.embedding_fingerprints where row_id = any(${ids})`;
    return rows.length === ids.length && rows;
  }, { what: `${ids.length} rows embedded`, timeoutMs: 60_000, intervalMs: 100 });
  return embedded.map((r) => Number(r.at) - committedAt.get(r.id)!);
}

interface LagRun {
  drainSeconds: number;
  /** WAL bytes held (pg_replication_slots) and util.embedding_status' figures, by seconds after the drain. */
  at: { seconds: number; slotBytes: number; statusBytes: number; statusSeconds: number }[];
}

/** `rows` inserted in one statement, drained by the running worker; then the slot's lag. */
async function lagAfterDrain(db: BenchDb, rows: number, run: number): Promise<LagRun> {
  const started = performance.now();
  await insertRows(db.sql, rows, `lag${run}`, 1_000_000 * (run + 1));
  const [{ total }] = await db.sql`select count(*)::int as total from public.bench_docs`;
  await waitFor(async () => {
    const [row] = await db.sql`
      select (select count(*) from util.embedding_fingerprints)::int as embedded,
             (select count(*) from pgmq.q_embedding_jobs)::int as queued`;
    return row.embedded >= total && row.queued === 0;
  }, { what: `${rows} rows drained`, timeoutMs: 120_000, intervalMs: 20 });
  const drainSeconds = (performance.now() - started) / 1000;
  const at: LagRun["at"] = [];
  const drained = performance.now();
  for (const seconds of [0, 1, 5]) {
    const wait = drained + seconds * 1000 - performance.now();
    if (wait > 0) await sleep(wait);
    const [row] = await db.sql`
      select pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint as slot,
             e.capture_lag_bytes as status, e.capture_lag_seconds as status_seconds
        from pg_replication_slots s, util.embedding_status e
       where s.slot_name = ${db.name} and e.table_name = 'bench_docs'`;
    at.push({
      seconds,
      slotBytes: Number(row.slot),
      statusBytes: Number(row.status),
      statusSeconds: Number(row.status_seconds),
    });
  }
  return { drainSeconds, at };
}

interface Latency {
  ms: number[];
  perRunP50: number[];
}

/** Freshness, triggers with the listening worker vs logical with the following one, interleaved; then the lag. */
async function freshnessAndLag(
  ctx: BenchContext,
  cluster: string,
  seconds: number,
  reps: number,
  lagRows: number,
) {
  const latency: Record<"triggers" | "logical", Latency> = {
    triggers: { ms: [], perRunP50: [] },
    logical: { ms: [], perRunP50: [] },
  };
  const lag: LagRun[] = [];
  const dbs = {
    triggers: await prepare("fresh", "triggers", 0),
    logical: await prepare("fresh", "logical", 0),
  };
  const workers: BenchWorker[] = [];
  try {
    const listening = startWorker(
      ["-c", "1"],
      { DATABASE_URL: dbs.triggers.url, ...providerEnv(ctx.fake) },
      { asTask: true },
    );
    workers.push(listening);
    await listening.process.waitForLine(/"event":"started".*"listening":true/, 60_000);
    workers.push(await follower(ctx, dbs.logical, false));
    let run = 0;
    for (let rep = 0; rep < reps; rep++) {
      for (const mode of ["triggers", "logical"] as const) {
        const ms = await freshnessRun(dbs[mode], seconds, run++);
        latency[mode].ms.push(...ms);
        latency[mode].perRunP50.push(percentile(ms, 50));
        ctx.log(
          `  ${cluster} freshness ${mode}: p50 ${fmt(percentile(ms, 50))} ms, p99 ${
            fmt(percentile(ms, 99))
          } ms (${ms.length} rows)`,
        );
      }
    }
    for (let rep = 0; rep < reps; rep++) {
      const r = await lagAfterDrain(dbs.logical, lagRows, rep);
      lag.push(r);
      ctx.log(
        `  ${cluster} lag after draining ${lagRows} rows (${fmt(r.drainSeconds)} s): ` +
          r.at.map((a) => `+${a.seconds} s: ${a.slotBytes} B (status ${a.statusBytes} B)`).join(
            ", ",
          ),
      );
    }
  } finally {
    for (const w of workers) await w.stop();
    for (const db of Object.values(dbs)) await db.drop();
  }
  return { latency, lag };
}

interface ClusterFigures {
  inserts: Record<InsertMode, InsertRun[]>;
  bulk: Record<Mode, BulkRun[]>;
}

export interface CaptureFigures {
  section: Section;
  /** Median inserts/s of logical / unattached, durable and fsync off. */
  durableShare: number;
  fastShare: number;
  /** Median bulk INSERT seconds of logical / unattached, durable. */
  bulkRatio: number;
  /** p50 and p99 of logical / of the listening worker with triggers. */
  p50Ratio: number;
  p99Ratio: number;
  /** Inserts a second of the freshness runs. */
  freshRate: number;
}

export async function captureScenario(ctx: BenchContext): Promise<CaptureFigures> {
  const reps = ctx.quick ? 1 : 5;
  const seconds = ctx.quick ? 3 : 6;
  const bulkRows = ctx.quick ? 20_000 : 100_000;
  const bulkReps = ctx.quick ? 1 : 3;
  const freshSeconds = ctx.quick ? 5 : 20;
  const freshReps = ctx.quick ? 1 : 2;
  const lagRows = ctx.quick ? 2_000 : 10_000;
  ctx.log(
    `logical capture: pgbench ${CLIENTS} clients × ${seconds} s × ${reps}, bulk ${bulkRows} × ` +
      `${bulkReps}, freshness ${RATE_PER_SECOND}/s × ${freshSeconds} s × ${freshReps}, lag ` +
      `after ${lagRows} rows`,
  );
  const dir = await Deno.makeTempDir({ prefix: "autoembed-bench-" });
  const script = `${dir}/insert.sql`;
  await Deno.writeTextFile(script, SCRIPTS.insert);

  const figures: Record<string, ClusterFigures> = {};
  let fresh: Awaited<ReturnType<typeof freshnessAndLag>>;
  const cluster = await startEphemeralCluster();
  try {
    useServer(cluster.url);
    await buildTemplate();
    const check = async () => {
      const admin = connect(cluster.url("postgres"), 1);
      try {
        const rows = await admin`
          select name, setting from pg_settings
           where name in ('wal_level', 'fsync', 'full_page_writes', 'synchronous_commit')
           order by name`;
        return rows.map((r) => `${r.name}=${r.setting}`).join(", ");
      } finally {
        await admin.end();
      }
    };
    ctx.log(`  fsync off cluster: ${await check()}`);
    figures["fsync off"] = {
      inserts: await singleRowInserts(ctx, "fsync off", script, reps, seconds),
      bulk: await bulkInserts(ctx, "fsync off", bulkRows, bulkReps),
    };
    await makeDurable(cluster);
    ctx.log(`  durable cluster: ${await check()}`);
    figures.durable = {
      inserts: await singleRowInserts(ctx, "durable", script, reps, seconds),
      bulk: await bulkInserts(ctx, "durable", bulkRows, bulkReps),
    };
    fresh = await freshnessAndLag(ctx, "durable", freshSeconds, freshReps, lagRows);
  } finally {
    useServer(databaseUrl);
    await cluster.destroy();
    await Deno.remove(dir, { recursive: true });
  }
  return report(figures, fresh, {
    reps,
    seconds,
    bulkRows,
    bulkReps,
    freshSeconds,
    freshReps,
    lagRows,
  });
}

function report(
  figures: Record<string, ClusterFigures>,
  fresh: Awaited<ReturnType<typeof freshnessAndLag>>,
  size: {
    reps: number;
    seconds: number;
    bulkRows: number;
    bulkReps: number;
    freshSeconds: number;
    freshReps: number;
    lagRows: number;
  },
): CaptureFigures {
  const section = new Section(
    "Logical capture: the write path, bulk inserts and freshness (issue 25)",
  );
  const rows = (n: number) => n.toLocaleString("en-US");
  section.text(`
One throw-away cluster (local/cluster.ts's ephemeral one) at **wal_level = logical for all three
ways**, first with fsync off (the development cluster's settings), then **durable** (fsync,
full_page_writes and synchronous_commit on, restarted). Three ways of attaching bench_docs (the
table of section 4): ${
    INSERT_MODES.map((m) => `**${m}**: ${DESCRIPTIONS[m]}`).join("; ")
  }. Each way has its
own database; a logical one its own slot (setting capture_slot). In the write-path runs the
logical worker follows the slot and queues the jobs, but its claims are kept to an idle attached
table (\`--table bench_idle\`): the embedding work, the same whichever way changes are seen, stays
out of these figures, as section 4 measures the triggers with no worker. So the triggers queue
their jobs inside the writing transaction, the logical way in the worker's own transactions
(one \`util._capture_changes\` per flush, then a wake-up and a claim that finds nothing), plus
the server's walsender decoding the log. The queue is emptied before every run, for both ways.

**Single-row inserts**: pgbench, ${CLIENTS} clients, 2 threads, ${size.seconds} s per run, ${size.reps}
runs per way interleaved (unattached, triggers, logical, unattached, ...), median (min–max),
section 4's insert script on a table of ${rows(PREFILL)} rows. The logical worker is started
before each of its runs and waits until the slot confirmed everything written so far (what the
other ways' runs wrote meanwhile), and is stopped after it; "behind at the end" is the WAL the slot
held when pgbench ended, "caught up" how long until it confirmed it all. CPU: the whole machine's
busy time from pgbench's start until then (pgbench, the backends, and for the logical way the
walsender and the worker, named in brackets), per 1,000 rows inserted; what is left beyond the
unattached way's is the server's own work (for the logical way: the worker's statements, a
\`util._capture_changes\` and a commit per flush and a claim per wake-up, which scans the queue for
the idle table's jobs). "queued / inserted": rows queued for the runs' inserted rows, all runs.`);
  for (const [name, f] of Object.entries(figures).reverse()) {
    const base = median(f.inserts.unattached.map((r) => r.tps));
    section.text(`\n**${name === "durable" ? "Durable (fsync on)" : "fsync off"}**:`);
    section.table(
      [
        "way",
        "inserts/s",
        "% of unattached",
        "CPU ms / 1,000 inserts: machine (worker + walsender)",
        "slot behind at the end",
        "caught up",
        "queued / inserted",
      ],
      INSERT_MODES.map((m) => {
        const runs = f.inserts[m];
        const tps = runs.map((r) => r.tps);
        const logical = m === "logical" || m === "deferred";
        const per1000 = (cpu: (r: InsertRun) => number) =>
          spread(runs.map((r) => (cpu(r) * 1e6) / r.inserted));
        return [
          LABELS[m],
          spread(tps),
          `${fmt((median(tps) / base) * 100)}%`,
          per1000((r) => r.machineCpu) +
          (logical
            ? ` (${per1000((r) => r.workerCpu!)} + ${per1000((r) => r.walsenderCpu!)})`
            : ""),
          logical ? `${spread(runs.map((r) => r.lagAtEnd!))} B` : "",
          logical ? `${spread(runs.map((r) => r.catchUp! * 1000))} ms` : "",
          m === "unattached"
            ? ""
            : `${sum(runs.map((r) => r.queued)).toLocaleString("en-US")} / ${
              sum(runs.map((r) => r.inserted)).toLocaleString("en-US")
            }`,
        ];
      }),
    );
  }
  section.text(`
**Bulk inserts**: one \`insert into bench_docs ... select ... from generate_series(1, ${
    rows(size.bulkRows)
  })\` into an empty table, then one \`copy bench_docs (title, body) from stdin\` of as many more
rows (the text built before timing), each way in a fresh database, ${size.bulkReps} rounds
interleaved, a checkpoint before each statement. Time of the statement as the client sees it;
for the logical way also how long after the statement's end the slot confirmed it (the worker had
queued every job by then).`);
  section.table(
    [
      "cluster",
      "way",
      "INSERT ... SELECT s",
      "vs unattached",
      "COPY s",
      "vs unattached",
      "captured after (INSERT / COPY)",
    ],
    Object.entries(figures).reverse().flatMap(([name, f]) =>
      MODES.map((m) => {
        const b = f.bulk[m];
        const base = f.bulk.unattached;
        return [
          name,
          m,
          spread(b.map((r) => r.insert)),
          `${fmt(median(b.map((r) => r.insert)) / median(base.map((r) => r.insert)))}×`,
          spread(b.map((r) => r.copy)),
          `${fmt(median(b.map((r) => r.copy)) / median(base.map((r) => r.copy)))}×`,
          m === "logical"
            ? `${spread(b.map((r) => r.insertCapture!))} s / ${
              spread(b.map((r) => r.copyCapture!))
            } s`
            : "",
        ];
      })
    ),
  );
  const t = fresh.latency.triggers;
  const l = fresh.latency.logical;
  section.text(`
**Commit → embedding** (durable): ${RATE_PER_SECOND} single-row inserts a second for ${size.freshSeconds} s,
${size.freshReps} runs per way interleaved, the fake provider (${PROVIDER_LATENCY_MS} ms a request). Latency = the
row's fingerprint's \`embedded_at\` (util.embedding_fingerprints: \`now()\` of the transaction
that writes the embedding, so its own few ms are not in it) minus the time the insert's reply
reached the client (after its commit). Triggers: \`deno task autoembed worker -c 1\` LISTENing (a
NOTIFY per transaction wakes it). Logical: the same worker following the slot: the walsender sends
the committed insert, the worker queues its job (\`util._capture_changes\`, its own commit) and
wakes its slot.`);
  section.table(["way", "p50 ms", "p95 ms", "p99 ms", "max ms", "p50 per run", "rows"], [
    latencyRow("triggers, listening worker", t),
    latencyRow("logical, worker following the slot", l),
  ]);
  section.text(`
**The slot's lag after a drain** (durable, the same logical database and worker): ${
    rows(size.lagRows)
  } rows inserted in one statement, drained by the worker (every row embedded, the queue empty);
then the WAL the slot holds beyond its confirmed position, from pg_replication_slots
(\`pg_current_wal_lsn() - confirmed_flush_lsn\`) and from util.embedding_status
(\`capture_lag_bytes\`, \`capture_lag_seconds\`), at once, 1 s and 5 s later; ${size.freshReps} runs.
The embeddings' own writes are in the
log too: the worker decodes them and drops them (they carry its marker), and confirms their position
once nothing is waiting.`);
  const drain = fresh.lag;
  section.table(
    ["after the drain", "slot lag bytes", "status capture_lag_bytes", "status capture_lag_seconds"],
    drain[0].at.map((_, i) => [
      `+${drain[0].at[i].seconds} s`,
      spread(drain.map((d) => d.at[i].slotBytes)),
      spread(drain.map((d) => d.at[i].statusBytes)),
      spread(drain.map((d) => d.at[i].statusSeconds)),
    ]),
  );
  section.text(
    `Drain of ${rows(size.lagRows)} rows (insert → every row embedded): ${
      spread(drain.map((d) => d.drainSeconds))
    } s.`,
  );
  const share = (cluster: string) => {
    const f = figures[cluster].inserts;
    return median(f.logical.map((r) => r.tps)) / median(f.unattached.map((r) => r.tps));
  };
  const bulk = figures.durable.bulk;
  return {
    section,
    durableShare: share("durable"),
    fastShare: share("fsync off"),
    bulkRatio: median(bulk.logical.map((r) => r.insert)) /
      median(bulk.unattached.map((r) => r.insert)),
    p50Ratio: percentile(l.ms, 50) / percentile(t.ms, 50),
    p99Ratio: percentile(l.ms, 99) / percentile(t.ms, 99),
    freshRate: RATE_PER_SECOND,
  };
}

function latencyRow(label: string, l: Latency): string[] {
  return [
    label,
    fmt(percentile(l.ms, 50)),
    fmt(percentile(l.ms, 95)),
    fmt(percentile(l.ms, 99)),
    fmt(Math.max(...l.ms)),
    spread(l.perRunP50),
    String(l.ms.length),
  ];
}

function sum(values: number[]): number {
  return values.reduce((a, b) => a + b, 0);
}
