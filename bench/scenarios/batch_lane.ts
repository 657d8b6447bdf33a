// Issue 24: a backfill of 50,000 rows through the online lane and through the
// batch lane (the provider's batch API, completion delay 0), side by side, on
// the development cluster (fsync off) and on a durable one: provider calls,
// tokens, money at the registry's list prices, time from enable_embeddings to
// every row written, and where the batch lane's time goes (the batch tick's
// stamped log events).
import { join } from "node:path";
import { startEphemeralCluster } from "../../local/cluster.ts";
import { databaseUrl } from "../../local/config.ts";
import { sleep } from "../../supabase/functions/_shared/sleep.ts";
import {
  type FunctionTime,
  type ProfileSummary,
  readProfile,
  summarizeProfile,
} from "../cpu_profile.ts";
import { fmt, Section } from "../report.ts";
import {
  type BenchContext,
  buildTemplate,
  cloneDb,
  connect,
  CpuMeter,
  insertRows,
  makeDurable,
  MODEL,
  processTree,
  PROVIDER_LATENCY_MS,
  PROVIDER_PER_INPUT_MS,
  providerEnv,
  type Sql,
  startWorker,
  useServer,
} from "../stack.ts";
import { BATCH_SIZE, WORKER_V8_FLAGS } from "./drain.ts";

type Lane = "online" | "batch";

/** The worker as users run it, -c 4 as the drain's; its poll interval paces the batch tick. */
const CONCURRENCY = 4;
const POLL_INTERVAL = "1s";
/** util.settings for the run: batches go and are polled within a second. */
const BATCH_SETTINGS = { batch_stage_seconds: "1", batch_poll_seconds: "1" };
/** How often the bench looks at the table and the queue. */
const WATCH_MS = 250;
const RUN_LIMIT_MS = 9 * 60_000;

/** A batch's steps, ms since the run's start (enable_embeddings). */
interface BatchSteps {
  id: string;
  texts: number;
  /** Its staging batch made (util.embedding_batches.created_at). */
  created: number;
  /** The tick took it (cut to the limits), uploaded its file, created it. */
  submitting?: number;
  uploading?: number;
  submitted?: number;
  /** The poll that found it ended: the output's download starts. */
  applying?: number;
  /** Its vectors written to util.embedding_batch_inputs, its parked jobs released. */
  ended?: number;
  /** Its rows written to the table (the re-run of their parked jobs), ms since the start. */
  written?: { rows: number; first: number; last: number };
  applyMs?: number;
  /** Of applyMs: the statements writing the vectors (the rest: download and parse). */
  writeMs?: number;
  releaseMs?: number;
}

export interface LaneRun {
  lane: Lane;
  cluster: string;
  rows: number;
  /** enable_embeddings → every row has its embedding (the last write's transaction). */
  seconds: number;
  /** ... and the queue is empty. */
  freshSeconds: number;
  embeddingsRequests: number;
  inputs: number;
  tokens: number;
  /** Every call to /v1/files and /v1/batches; uploads and batches created among them. */
  batchApiCalls: number;
  uploads: number;
  batches: number;
  polls: number;
  /** Rows the core was given (the worker's `batch` events' jobs), and its batches. */
  coreRows: number;
  coreBatches: number;
  batchInputs: number;
  batchTokens: number;
  /** At the registry's list prices (util.embedding_models). */
  usd: number;
  prices: Prices;
  /** The same work all online, at the online price. */
  onlineUsd: number;
  usage: Record<string, number>;
  /** Batch lane: every text staged in util.embedding_batch_inputs (ms since the start). */
  stagedAt?: number;
  firstWrittenAt: number;
  /**
   * Parked jobs left with no batch open to release them (ms since the start,
   * rows), which the bench released after STRANDED_MS; expected none.
   */
  stranded: { at: number; rows: number }[];
  steps: BatchSteps[];
  /** CPU seconds: the worker, this process (the fake provider), the cluster's processes. */
  cpu: { worker: number; bench: number; postgres: number };
  /** With `profile`: Postgres's statements by total execution time (pg_stat_statements). */
  statements?: Statement[];
  /** With `cpuProfileDir`: the worker's CPU profile. */
  workerProfile?: ProfileSummary;
}

export interface Statement {
  query: string;
  toplevel: boolean;
  calls: number;
  ms: number;
  rows: number;
}

interface Prices {
  online: number;
  batch: number;
}

async function prices(sql: Sql): Promise<Prices> {
  const [row] = await sql`
    select price_per_mtok::float8 as online, batch_price_per_mtok::float8 as batch
      from util.embedding_models where model = util._model_registry_key(${MODEL})`;
  if (!row) throw new Error(`no registry entry for ${MODEL}`);
  return { online: row.online, batch: row.batch };
}

/**
 * Progress, cheaply (the bench's own load counts in Postgres's CPU): whether
 * any job is queued (parked ones too), the texts staged (the batches'
 * request counts: a batch cut to the limits passes its rest on), and, once
 * the queue is empty, the rows written (their fingerprints, written by the
 * same statement as the vectors).
 */
async function watch(sql: Sql) {
  const [row] = await sql`
    select exists (select from pgmq.q_embedding_jobs) as queued,
           (select coalesce(sum(requests), 0) from util.embedding_batches)::int as staged,
           -- Only parked jobs left and no batch open: nothing will release them
           -- before batch_park_seconds (see "stranded" in the report).
           not exists (select from pgmq.q_embedding_jobs
                        where not message ? 'parked' or vt <= now())
             and not exists (select from util.embedding_batches
                              where state in ('staging', 'submitting', 'submitted')) as stranded`;
  let embedded = 0;
  if (!row.queued) {
    [{ embedded }] = await sql`select count(*)::int as embedded from util.embedding_fingerprints`;
  }
  return {
    queued: row.queued as boolean,
    staged: row.staged as number,
    embedded,
    stranded: row.queued && row.stranded as boolean,
  };
}

/** How long only stranded parked jobs must be left before the bench releases them. */
const STRANDED_MS = 5_000;

/** The server's postmaster: the parent of this session's backend. */
async function postmasterPid(sql: Sql): Promise<number> {
  const [{ pid }] = await sql`select pg_backend_pid() as pid`;
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
  return Number(stat.split(") ")[1].split(" ")[1]);
}

/** The batch tick's stamped events of the worker's log, as steps per batch. */
function batchSteps(
  lines: string[],
  startMs: number,
  created: Map<string, { created: number; texts: number }>,
) {
  const steps = new Map<string, BatchSteps>();
  let polls = 0;
  let coreRows = 0;
  let coreBatches = 0;
  for (const line of lines) {
    if (!line.startsWith("{")) continue;
    let e: Record<string, unknown>;
    try {
      e = JSON.parse(line);
    } catch {
      continue;
    }
    if (e.event === "batch_tick") polls += Number(e.polled ?? 0);
    if (e.event === "batch") {
      coreBatches++;
      coreRows += Number(e.jobs ?? 0);
    }
    if (typeof e.batch !== "string" || typeof e.at !== "string") continue;
    const at = Date.parse(e.at) - startMs;
    const made = created.get(e.batch);
    const s = steps.get(e.batch) ??
      { id: e.batch, texts: made?.texts ?? 0, created: made?.created ?? NaN };
    steps.set(e.batch, s);
    if (e.event === "batch_submitting") s.submitting ??= at;
    else if (e.event === "batch_uploading") s.uploading ??= at;
    else if (e.event === "batch_submitted") s.submitted = at;
    else if (e.event === "batch_applying") s.applying = at;
    else if (e.event === "batch_ended") {
      s.ended = at;
      s.applyMs = Number(e.applyMs);
      s.writeMs = Number(e.writeMs);
      s.releaseMs = Number(e.releaseMs);
    }
  }
  return {
    steps: [...steps.values()].sort((a, b) => Number(a.id) - Number(b.id)),
    polls,
    coreRows,
    coreBatches,
  };
}

/**
 * One backfill: `rows` rows inserted, a worker started (`deno task autoembed
 * worker -c 4 --batch-size 100 --poll-interval 1s`), then the clock runs from
 * enable_embeddings(lane) until every row has its embedding and the queue is
 * empty.
 */
export async function backfill(
  ctx: BenchContext,
  lane: Lane,
  rows: number,
  cluster: string,
  /** profile: pg_stat_statements (installed on the server); cpuProfileDir: the worker's CPU profile there. */
  options: { profile?: boolean; cpuProfileDir?: string } = {},
): Promise<LaneRun> {
  const db = await cloneDb(`batch_lane_${lane}`);
  try {
    if (options.profile) await db.sql`create extension pg_stat_statements`;
    await insertRows(db.sql, rows, "batchlane");
    for (const [name, value] of Object.entries(BATCH_SETTINGS)) {
      await db.sql`update util.settings set value = ${value} where name = ${name}`;
    }
    const price = await prices(db.sql);
    ctx.fake.setBatchBehaviour({ completionDelayMs: 0 });
    ctx.fake.resetStats();
    const worker = startWorker(
      [
        "-c",
        String(CONCURRENCY),
        "--batch-size",
        String(BATCH_SIZE),
        "--poll-interval",
        POLL_INTERVAL,
      ],
      { DATABASE_URL: db.url, ...providerEnv(ctx.fake) },
      // Profiled: the same flags as the task, and V8's sampling profiler.
      options.cpuProfileDir
        ? {
          command: [
            "run",
            "-A",
            "--cpu-prof",
            `--cpu-prof-dir=${options.cpuProfileDir}`,
            `--v8-flags=${WORKER_V8_FLAGS}`,
            "cli/autoembed.ts",
          ],
        }
        : { asTask: true },
    );
    let stagedAt: number | undefined;
    let freshSeconds = NaN;
    let strandedSince: number | undefined;
    const stranded: { at: number; rows: number }[] = [];
    let start = 0;
    const meters: { worker?: CpuMeter; postgres?: CpuMeter } = {};
    try {
      await worker.process.waitForLine(/"event":"started"/, 60_000);
      const postmaster = await postmasterPid(db.sql);
      if (options.profile) await db.sql`select pg_stat_statements_reset()`;
      meters.worker = new CpuMeter(() => worker.pids());
      meters.postgres = new CpuMeter(() => processTree(postmaster));
      start = Date.now();
      await db.sql`
        select util.enable_embeddings('public.bench_docs', 'bench_docs_input',
                                      model => ${MODEL}, lane => ${lane})`;
      for (;;) {
        const now = Date.now() - start;
        const w = await watch(db.sql);
        if (lane === "batch" && stagedAt === undefined && w.staged >= rows) stagedAt = now;
        strandedSince = w.stranded ? strandedSince ?? now : undefined;
        if (strandedSince !== undefined && now - strandedSince >= STRANDED_MS) {
          // The stand-in for the release that never comes (as drain's rescue tick).
          const [{ n }] = await db.sql`
            select coalesce(sum(util._release_parked(t.id)), 0)::int as n
              from util.embedding_targets t`;
          stranded.push({ at: strandedSince, rows: n });
          ctx.log(
            `    ${n} parked rows stranded at ${fmt(strandedSince)} ms: released by the bench`,
          );
          strandedSince = undefined;
        }
        if (!w.queued && w.embedded >= rows) {
          freshSeconds = now / 1000;
          break;
        }
        if (now > RUN_LIMIT_MS) {
          throw new Error(
            `${lane} backfill: ${w.staged}/${rows} staged, jobs queued: ${w.queued}, after ${
              RUN_LIMIT_MS / 1000
            } s:\n${worker.process.lines.slice(-20).join("\n")}`,
          );
        }
        await sleep(WATCH_MS);
      }
    } finally {
      await worker.stop();
    }
    const cpu = meters.worker!.stop();
    const postgresCpu = meters.postgres!.stop();
    const statements = options.profile
      ? await db.sql<Statement[]>`
          select regexp_replace(query, '[[:space:]]+', ' ', 'g') as query, toplevel,
                 calls::int, total_exec_time::float8 as ms, rows::float8 as rows
            from pg_stat_statements
           where query not like '%pg_stat_statements%'
           order by total_exec_time desc limit 14`
      : undefined;
    // When the rows were written: their fingerprints' embedded_at (the write's transaction).
    const ms = (column: string) =>
      db.sql.unsafe(`(extract(epoch from ${column}) * 1000)::float8 - ${start}`);
    const [written] = await db.sql`
      select count(*)::int as n, ${ms("min(embedded_at)")} as first, ${
      ms("max(embedded_at)")
    } as last
        from util.embedding_fingerprints`;
    const [{ embedded }] = await db.sql`
      select count(*)::int as embedded from public.bench_docs where embedding is not null`;
    if (embedded !== rows || written.n !== rows) {
      throw new Error(`${lane} backfill: ${embedded} rows embedded, ${written.n} fingerprints`);
    }
    // Which batch brought each row's vector: its text's sha256 is the line's custom_id.
    const writtenByBatch = await db.sql<
      { id: string; rows: number; first: number; last: number }[]
    >`
      select i.batch_id::text as id, count(*)::int as rows,
             ${ms("min(f.embedded_at)")} as first, ${ms("max(f.embedded_at)")} as last
        from util.embedding_batch_inputs i
        join util.embedding_fingerprints f
          on f.target_id = i.target_id and encode(f.content_hash, 'hex') = i.custom_id
       group by i.batch_id`;
    const made = await db.sql<{ id: string; created: number; texts: number }[]>`
      select id::text, (extract(epoch from created_at) * 1000)::float8 - ${start} as created,
             requests as texts
        from util.embedding_batches order by id`;
    const { steps, polls, coreRows, coreBatches } = batchSteps(
      worker.process.lines,
      start,
      new Map(made.map((m) => [m.id, { created: m.created, texts: m.texts }])),
    );
    for (const w of writtenByBatch) {
      const step = steps.find((b) => b.id === w.id);
      if (step) step.written = { rows: w.rows, first: w.first, last: w.last };
    }
    const [usage] = await db.sql`
      select coalesce(sum(online_tokens), 0)::float8 as online_tokens,
             coalesce(sum(batch_tokens), 0)::float8 as batch_tokens,
             coalesce(sum(online_inputs), 0)::float8 as online_inputs,
             coalesce(sum(batch_inputs), 0)::float8 as batch_inputs,
             coalesce(sum(online_usd), 0)::float8 as online_usd,
             coalesce(sum(batch_usd), 0)::float8 as batch_usd,
             coalesce(sum(cost_usd), 0)::float8 as cost_usd,
             coalesce(sum(batch_saved_usd), 0)::float8 as batch_saved_usd
        from util.embedding_usage`;
    const s = ctx.fake.stats;
    const usd = (s.tokens * price.online + s.batchTokens * price.batch) / 1e6;
    return {
      lane,
      cluster,
      rows,
      seconds: written.last / 1000,
      freshSeconds,
      embeddingsRequests: s.requests,
      inputs: s.inputs,
      tokens: s.tokens,
      batchApiCalls: s.batchRequests,
      uploads: s.filesUploaded,
      batches: s.batches,
      polls,
      coreRows,
      coreBatches,
      batchInputs: s.batchInputs,
      batchTokens: s.batchTokens,
      usd,
      prices: price,
      onlineUsd: ((s.tokens + s.batchTokens) * price.online) / 1e6,
      usage: usage as unknown as Record<string, number>,
      stagedAt,
      firstWrittenAt: written.first,
      stranded,
      steps,
      cpu: { worker: cpu.tracked, bench: cpu.bench, postgres: postgresCpu.tracked },
      statements,
    };
  } finally {
    ctx.fake.setBatchBehaviour({});
    ctx.fake.resetStats();
    await db.drop();
  }
}

function print(ctx: BenchContext, r: LaneRun) {
  ctx.log(
    `  ${r.cluster}, ${r.lane} lane: ${r.rows} rows written in ${fmt(r.seconds)} s ` +
      `(queue empty ${fmt(r.freshSeconds)} s); embeddings requests ${r.embeddingsRequests}, ` +
      `inputs ${r.inputs}, tokens ${r.tokens}; batch API calls ${r.batchApiCalls} ` +
      `(${r.uploads} uploads, ${r.batches} batches, ${r.polls} polls), batch inputs ${r.batchInputs}, ` +
      `tokens ${r.batchTokens}; $${
        r.usd.toFixed(6)
      }; core ${r.coreBatches} batches, ${r.coreRows} rows; CPU s worker ${
        fmt(r.cpu.worker)
      }, bench ${fmt(r.cpu.bench)}, Postgres ${fmt(r.cpu.postgres)}`,
  );
  if (r.stagedAt !== undefined) ctx.log(`    every text staged at ${fmt(r.stagedAt)} ms`);
  for (const b of r.steps) {
    ctx.log(
      `    batch ${b.id}: ${b.texts} texts, created ${fmt(b.created)}, submitting ${
        fmt(b.submitting ?? NaN)
      }, uploading ${fmt(b.uploading ?? NaN)}, submitted ${fmt(b.submitted ?? NaN)}, applying ${
        fmt(b.applying ?? NaN)
      }, ended ${
        fmt(b.ended ?? NaN)
      } (apply ${b.applyMs} ms of which write ${b.writeMs} ms, release ${b.releaseMs} ms)` +
        (b.written
          ? `, ${b.written.rows} rows written ${fmt(b.written.first)}–${fmt(b.written.last)}`
          : ""),
    );
  }
}

export interface BatchLaneFigures {
  section: Section;
  runs: LaneRun[];
}

/** Runs both lanes on the current server. */
async function bothLanes(ctx: BenchContext, rows: number, cluster: string): Promise<LaneRun[]> {
  const runs: LaneRun[] = [];
  for (const lane of ["online", "batch"] as const) {
    const r = await backfill(ctx, lane, rows, cluster);
    print(ctx, r);
    runs.push(r);
  }
  return runs;
}

/**
 * The batch lane's backfill again on a throw-away cluster (fsync off) with
 * pg_stat_statements tracking nested statements too (the functions' own).
 */
export async function profiledRun(
  ctx: BenchContext,
  rows: number,
  lane: Lane = "batch",
): Promise<LaneRun> {
  const cluster = await startEphemeralCluster();
  try {
    const admin = connect(cluster.url("postgres"), 1);
    const [{ setting }] =
      await admin`select setting from pg_settings where name = 'data_directory'`;
    await admin.end();
    const conf = join(setting, "postgresql.auto.conf");
    await Deno.writeTextFile(
      conf,
      `${await Deno.readTextFile(conf)}\nshared_preload_libraries = 'pg_stat_statements'\n` +
        `pg_stat_statements.track = 'all'\n`,
    );
    await cluster.restart();
    useServer(cluster.url);
    await buildTemplate();
    const dir = await Deno.makeTempDir({ prefix: "autoembed-cpuprof-" });
    let run: LaneRun;
    try {
      run = await backfill(ctx, lane, rows, "profiled", { profile: true, cpuProfileDir: dir });
      run.workerProfile = summarizeProfile(await readProfile(dir));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
    print(ctx, run);
    const wp = run.workerProfile;
    ctx.log(`    worker JS thread: ${fmt(wp.sampledMs)} ms sampled, ${fmt(wp.idleMs)} ms idle`);
    for (const f of [...wp.functions].sort((a, b) => b.selfMs - a.selfMs).slice(0, 25)) {
      ctx.log(`    self ${fmt(f.selfMs)} ms, total ${fmt(f.totalMs)} ms: ${f.name}`);
    }
    for (const f of [...wp.functions].sort((a, b) => b.totalMs - a.totalMs).slice(0, 40)) {
      ctx.log(`    total ${fmt(f.totalMs)} ms: ${f.name}`);
    }
    for (const st of run.statements ?? []) {
      ctx.log(
        `    ${fmt(st.ms)} ms / ${st.calls} calls / ${st.rows} rows${
          st.toplevel ? "" : " (nested)"
        }: ${st.query.slice(0, 160)}`,
      );
    }
    return run;
  } finally {
    useServer(databaseUrl);
    await cluster.destroy();
  }
}

/** Total length of the union of intervals [from, to] (ms). */
function covered(intervals: [number, number][]): number {
  const sorted = intervals.filter(([a, b]) => b > a).sort((x, y) => x[0] - y[0]);
  let total = 0;
  let end = -Infinity;
  for (const [a, b] of sorted) {
    if (b <= end) continue;
    total += b - Math.max(a, end);
    end = b;
  }
  return total;
}

const seconds = (ms: number) => fmt(ms / 1000);

/** The batch lane's clock, phase by phase (ms): each the union of its batches' intervals. */
export function phases(r: LaneRun) {
  const done = r.steps.filter((b) => b.submitting !== undefined && b.ended !== undefined);
  const staging: [number, number][] = [[0, r.stagedAt ?? 0]];
  const submission = done.map((b): [number, number] => [b.submitting!, b.submitted!]);
  // Waiting for the tick: a staging batch due (its stage wait over) not yet taken, a submitted
  // one not yet found done (the poll interval, or the tick busy with another batch).
  const stageMs = Number(BATCH_SETTINGS.batch_stage_seconds) * 1000;
  const waiting = done.flatMap((b): [number, number][] => [
    [Math.min(b.created + stageMs, b.submitting!), b.submitting!],
    [b.submitted!, b.applying!],
  ]);
  const apply = done.map((b): [number, number] => [b.applying!, b.ended!]);
  const rerun = done.filter((b) => b.written).map((b): [number, number] => [
    b.ended!,
    b.written!.last,
  ]);
  const total = r.seconds * 1000;
  return {
    total,
    staging: covered(staging),
    submission: covered(submission),
    waiting: covered(waiting),
    apply: covered(apply),
    applyWrite: done.reduce((sum, b) => sum + (b.writeMs ?? 0), 0),
    rerun: covered(rerun),
    /** Time in none of the phases (the stage wait of the first batch, polls not yet due). */
    idle: total - covered([...staging, ...submission, ...apply, ...rerun]),
  };
}

/** A statement of a profile by the start of its text. */
function statement(r: LaneRun, start: string): Statement | undefined {
  return r.statements?.find((st) => st.query.trim().startsWith(start));
}

/** Where the batch lane's time goes, with this run's figures. */
function analysis(runs: LaneRun[], profile: { batch: LaneRun; online: LaneRun }): string {
  const run = (cluster: string, lane: Lane) =>
    runs.find((r) => r.cluster === cluster && r.lane === lane)!;
  const ratio = (cluster: string) =>
    fmt(run(cluster, "batch").seconds / run(cluster, "online").seconds);
  const passes = (r: LaneRun) => fmt(r.coreRows / r.rows);
  const small = (r: LaneRun) => r.steps.filter((b) => b.texts <= BATCH_SIZE).length;
  const settle = (r: LaneRun) => {
    const st = statement(r, "select job_id, row_id, dead_lettered from util._settle_batch");
    return st ? `${fmt(st.ms / st.calls)} ms` : "n/a";
  };
  const batchRuns = runs.filter((r) => r.lane === "batch");
  const p = profile.batch;
  return `
**Where the batch lane's time goes** (the provider's delay excluded). Wall time: ${
    ratio("fsync off")
  }× the online lane's with fsync off, ${ratio("durable")}× durable; CPU (worker + Postgres): ${
    batchRuns.map((r) =>
      `${fmt(r.cpu.worker + r.cpu.postgres)} s against ${
        fmt(run(r.cluster, "online").cpu.worker + run(r.cluster, "online").cpu.postgres)
      } s (${r.cluster})`
    ).join(", ")
  }. In order of weight:

1. **Every parked job runs again at every batch's end.** util._finish_batch releases *all* of
   the target's parked jobs (util._release_parked(target_id)), not those whose texts that batch
   answered; a job whose text is still in another batch parks again at once, and one whose text's
   vector has just been written by a batch still being applied writes it. So parked rows are
   claimed, read, hashed, tokenized, looked up and settled once per batch end: the core was given
   ${batchRuns.map((r) => `${passes(r)} rows per row (${r.cluster})`).join(", ")}, against 1 online
   and 2 at the design's minimum (stage, then write). Parking is the costliest settle:
   util._settle_batch took ${settle(p)} per call in the batch lane's profile against ${
    settle(profile.online)
  } online (a packed message's parked rows are copied into a new message).
2. **Batches come in small pieces.** Concurrent stagers race for the target's one staging batch
   (util._stage_batch_inputs: \`select ... for update\` finds none, and each inserts one), so at
   the start, and again after each submission, up to -c staging batches are made: ${
    batchRuns.map((r) =>
      `${small(r)} of ${r.steps.length} batches held ≤ ${BATCH_SIZE} texts (${r.cluster})`
    )
      .join(", ")
  }. Each costs six batch API calls (upload, create, poll, download, two deletes), a turn of the
   tick, and a release of every parked job (1).
3. **The tick is serial.** It takes its due batches one after the other, so one batch's apply
   (tens of seconds for 25,000 vectors) holds back the submissions and polls of the others: the
   "waiting for the tick" phase above.
4. **Every vector is written twice, as hex text first.** The apply writes it into
   util.embedding_batch_inputs (hex inside a text[] literal of about 12 MB per 1,000 vectors,
   decoded by Postgres, stored as a TOASTed bytea), the re-run reads it back (hex again) and the
   core writes it to the table. The worker's profile above shows the cost: the garbage collector,
   socket writes, postgres.js's parameter strings, hex encoding and decoding, next to the BPE
   token counts (every text is counted again on each pass). \`deno run -A bench/batch_apply.ts\`
   times the first write alone, today's hex text[] against a binary bytea[].
5. **A release wakes nobody.** Released jobs wait for a worker's next poll (--poll-interval
   ${POLL_INTERVAL} here, 5s by default): util._release_parked sends no NOTIFY.

6. **A release can be lost.** The core looks a batch-lane job's texts up (still pending), then
   settles the job as parked (hidden for batch_park_seconds, an hour by default); if the batch
   ends and util._finish_batch releases the target's parked jobs between the two, this job was
   not parked yet, is parked after, and nothing releases it: its row waits out the hour (unless a
   later batch of the target ends). Rows stranded so: ${
    batchRuns.map((r) => `${r.stranded.reduce((n, x) => n + x.rows, 0)} (${r.cluster})`).join(", ")
  } in this run; in an earlier run (durable, load average about 10) 9 of 50,000 rows were still
   unwritten when the bench gave up after 9 minutes, the worker idle and the queue not empty,
   before the bench learnt to look for them. \`deno run -A bench/batch_lost_release.ts\` plays
   the interleaving step by step with the core's and the tick's statements (and, with
   \`--in-order\`, the control).

What would fix it (not done here: schema and core changes): (a) release only the jobs a batch
answered: a parked message names the batch its texts wait for (the latest), and
util._finish_batch releases those; (b) one staging batch per target for real: an advisory
transaction lock on the target's id in util._stage_batch_inputs, or a unique partial index on
(target_id) where state = 'staging' with \`insert ... on conflict do nothing\` before the
\`select ... for update\`; (c) let the tick submit and poll before it applies, or apply batches
concurrently (each is leased already), and stream an output's next slice while the previous one is
written; (d) write a batch's vectors straight into the store under the usual compare-and-set (the
line's custom_id is the text's sha256, the fingerprint's hash), so only rows edited meanwhile need
their job again; short of that, bind the vectors in binary as the core's own write does; (e)
\`pg_notify\` in util._release_parked; (f) keep each text's tokens from staging
(util.embedding_batch_inputs.tokens) instead of counting them again; (g) when every row of a packed
message parks, mark the message parked in place; (h) close the lost release (6): the parking
settle locks the target's open batches \`for share\` (util._finish_batch holds its batch \`for
update\`) and parks with no delay when none is open any more, or util._finish_batch also releases
jobs parked after it, e.g. a parked message keeps the batch it waits for and a parked message whose
batch has ended is visible at once.`;
}

/** The list prices the runs used (the same registry in every database). */
function listPrices(runs: LaneRun[]): Prices {
  return runs[0].prices;
}

function report(runs: LaneRun[], profile: { batch: LaneRun; online: LaneRun }): Section {
  const rows = runs[0].rows;
  const section = new Section("Batch lane: a 50,000-row backfill, online vs batch");
  section.text(`
${rows.toLocaleString("en-US")} rows of bench_docs (distinct texts of about 450 characters, as in
section 1) are inserted with nothing attached, and a worker is started as users run it:

    deno task autoembed worker -c ${CONCURRENCY} --batch-size ${BATCH_SIZE} --poll-interval ${POLL_INTERVAL}

(its poll interval paces the batch tick: at most one a poll). Then the clock runs from

    select util.enable_embeddings('public.bench_docs', 'bench_docs_input',
                                  model => '${MODEL}', lane => 'online' | 'batch');

until every row is written (the last fingerprint's \`embedded_at\`) and the queue is empty (the
bench looks every ${WATCH_MS} ms, cheaply).
**Online lane**: the fake provider answers /v1/embeddings in ${PROVIDER_LATENCY_MS} ms +
${PROVIDER_PER_INPUT_MS} ms per input. **Batch lane**: settings batch_stage_seconds =
${BATCH_SETTINGS.batch_stage_seconds} and batch_poll_seconds = ${BATCH_SETTINGS.batch_poll_seconds}
(defaults 30 and 60), and the fake's Batch API with \`completionDelayMs: 0\`: a batch is done at
its first poll, so **the provider's own delay (up to 24 h) is excluded by construction**; what is
left is our side. **fsync off**: the development cluster (local/cluster.ts); **durable**: a
throw-away cluster with fsync, full_page_writes and synchronous_commit on. Money is at the
registry's list prices (util.embedding_models: price_per_mtok online, batch_price_per_mtok in
batch: $${listPrices(runs).online} and $${listPrices(runs).batch} per million tokens for
${MODEL}) times the tokens the fake counted with the model's tokenizer; the util.embedding_usage
columns are the pipeline's own account, read after each run. Reproduce:
\`deno task bench --only batch-lane\` (10 to 20 minutes on this machine).`);
  const fmtUsd = (usd: number) => `$${usd.toFixed(4)}`;
  section.table(
    [
      "cluster",
      "lane",
      "enable_embeddings → all written, s",
      "rows/s",
      "/v1/embeddings requests",
      "batch API calls (uploads, batches, polls)",
      "inputs / tokens sent",
      "list price",
      "usage: online / batch tokens",
      "usage: cost_usd, batch_saved_usd",
    ],
    runs.map((r) => [
      r.cluster,
      r.lane,
      fmt(r.seconds),
      fmt(r.rows / r.seconds),
      r.embeddingsRequests,
      r.lane === "batch" ? `${r.batchApiCalls} (${r.uploads}, ${r.batches}, ${r.polls})` : "0",
      `${(r.inputs + r.batchInputs).toLocaleString("en-US")} / ${
        (r.tokens + r.batchTokens).toLocaleString("en-US")
      }`,
      fmtUsd(r.usd),
      `${r.usage.online_tokens.toLocaleString("en-US")} / ${
        r.usage.batch_tokens.toLocaleString("en-US")
      }`,
      `${fmtUsd(r.usage.cost_usd)}, ${fmtUsd(r.usage.batch_saved_usd)}`,
    ]),
  );
  section.text(`
Where each lane's CPU went (seconds over the run: the worker process, this process (the fake
provider), and the cluster's processes (postmaster and its backends; other sessions on the machine
are not counted); and the rows the worker's core was given, summed over its batches (a row parked
and run again counts each time). On this 2-core machine shared with other sessions the wall times
swing with the load average (see the stamp); the CPU seconds much less:`);
  section.table(
    [
      "cluster",
      "lane",
      "worker CPU s",
      "fake provider CPU s",
      "Postgres CPU s",
      "wall s",
      "rows given to the core (its batches)",
    ],
    runs.map((r) => [
      r.cluster,
      r.lane,
      fmt(r.cpu.worker),
      fmt(r.cpu.bench),
      fmt(r.cpu.postgres),
      fmt(r.seconds),
      `${r.coreRows.toLocaleString("en-US")} (${r.coreBatches.toLocaleString("en-US")})`,
    ]),
  );
  const batchRuns = runs.filter((r) => r.lane === "batch");
  section.text(`
The batch lane's clock, phase by phase (seconds; a phase is the union of its batches' intervals,
so phases overlap): **staging**, from enable_embeddings until every text is staged in
util.embedding_batch_inputs (the core's first pass over the jobs: load, hash, stage, park);
**submission**, the tick's cut of the batch, upload and create (\`batch_submitting\` →
\`batch_submitted\`); **waiting for the tick**, a staging batch due (its
batch_stage_seconds over) and not yet taken, or a submitted one not yet found done (the poll
interval, or the tick busy with another batch); **apply**, the
output's download and its vectors' write to util.embedding_batch_inputs, the batch's end and its
parked jobs' release (\`batch_applying\` → \`batch_ended\`; "of it, writes" is the time in the
statements that write the vectors); **re-run**, from the release to the last of its rows written
(the parked jobs claimed again and written by the core); **none** is the time in none of them (the
first batch's stage wait, polls not yet due). **Stranded rows**: rows whose jobs were left parked
with no batch open to release them (item 6 below), which the bench released itself after ${
    STRANDED_MS / 1000
  } s (those seconds are in the total); expected 0.`);
  section.table(
    [
      "cluster",
      "total",
      "staging",
      "submission",
      "waiting for the tick",
      "apply (of it, writes)",
      "re-run",
      "none",
      "batches",
      "stranded rows",
    ],
    batchRuns.map((r) => {
      const p = phases(r);
      return [
        r.cluster,
        seconds(p.total),
        seconds(p.staging),
        seconds(p.submission),
        seconds(p.waiting),
        `${seconds(p.apply)} (${seconds(p.applyWrite)})`,
        seconds(p.rerun),
        seconds(p.idle),
        r.steps.length,
        r.stranded.length ? r.stranded.map((x) => `${x.rows} at ${seconds(x.at)}`).join(", ") : "0",
      ];
    }),
  );
  for (const r of batchRuns) {
    section.text(`**${r.cluster}, batch lane, batch by batch** (seconds since enable_embeddings;
every text staged at ${seconds(r.stagedAt ?? NaN)} s; "apply rows/s": the batch's rows over the
time from its output's download start to the last of its rows written; "vectors/s written": its
vectors over the time of the statements writing them):`);
    section.table(
      [
        "batch",
        "texts",
        "staging batch made",
        "submitting → submitted",
        "applying → ended",
        "rows written",
        "apply rows/s",
        "vectors/s written",
      ],
      r.steps.map((b) => [
        b.id,
        b.texts.toLocaleString("en-US"),
        seconds(b.created),
        `${seconds(b.submitting ?? NaN)} → ${seconds(b.submitted ?? NaN)}`,
        `${seconds(b.applying ?? NaN)} → ${seconds(b.ended ?? NaN)}`,
        b.written ? `${seconds(b.written.first)} → ${seconds(b.written.last)}` : "n/a",
        b.written && b.applying !== undefined
          ? fmt(b.written.rows / ((b.written.last - b.applying) / 1000))
          : "n/a",
        b.writeMs ? fmt(b.texts / (b.writeMs / 1000)) : "n/a",
      ]),
    );
  }
  section.text(analysis(runs, profile));
  const statementRows = (r: LaneRun) =>
    (r.statements ?? []).slice(0, 12).map((st) => [
      `\`${st.query.slice(0, 90).replaceAll("|", "\\|")}\`${st.toplevel ? "" : " (nested)"}`,
      st.calls,
      fmt(st.ms),
      fmt(st.ms / st.calls),
    ]);
  section.text(`
**Profile.** The same backfill, each lane once more, on a throw-away cluster (fsync off) with
pg_stat_statements tracking nested statements too (the functions' own), and the worker run with
V8's sampling profiler (\`deno run --cpu-prof\`, deno.json's V8 flags). Batch lane:
${seconds(profile.batch.seconds * 1000)} s; online lane: ${seconds(profile.online.seconds * 1000)} s
(slower than above: the profilers' own cost). Postgres, by total execution time (a nested
statement's time is also in its caller's):`);
  section.table(
    ["statement, batch lane", "calls", "total ms", "ms per call"],
    statementRows(profile.batch),
  );
  section.table(
    ["statement, online lane", "calls", "total ms", "ms per call"],
    statementRows(profile.online),
  );
  const wp = profile.batch.workerProfile!;
  const wo = profile.online.workerProfile!;
  section.text(`
The worker's JavaScript thread, batch lane: ${seconds(wp.sampledMs)} s sampled, ${
    seconds(wp.idleMs)
  } s idle (online lane: ${seconds(wo.sampledMs)} s, ${
    seconds(wo.idleMs)
  } s idle). Our functions with the most time on the stack (inclusive, so a caller's includes its
callees'), beside the same function's in the online lane's profile; then every function by self
time (the runtime's and the packages' too):`);
  const ours = (f: FunctionTime) =>
    /\((supabase|cli)\//.test(f.name) || f.name === "(garbage collector)";
  const online = new Map(wo.functions.map((f) => [f.name, f]));
  section.table(
    ["function", "batch lane: inclusive ms", "self ms", "online lane: inclusive ms"],
    [...wp.functions].filter(ours).sort((a, b) => b.totalMs - a.totalMs).slice(0, 16).map((f) => [
      `\`${f.name.replaceAll("|", "\\|")}\``,
      fmt(f.totalMs),
      fmt(f.selfMs),
      fmt(online.get(f.name)?.totalMs ?? 0),
    ]),
  );
  const busy = (f: FunctionTime) => !/^\((root|idle|program)\)/.test(f.name);
  section.table(
    ["function (batch lane), by self time", "self ms"],
    [...wp.functions].filter(busy).sort((a, b) => b.selfMs - a.selfMs).slice(0, 12).map((f) => [
      `\`${f.name.replaceAll("|", "\\|")}\``,
      fmt(f.selfMs),
    ]),
  );
  return section;
}

export async function batchLaneScenario(ctx: BenchContext): Promise<BatchLaneFigures> {
  const rows = ctx.quick ? 5_000 : 50_000;
  ctx.log(`batch lane: a ${rows}-row backfill, online vs batch`);
  const runs = await bothLanes(ctx, rows, "fsync off");
  const cluster = await startEphemeralCluster();
  try {
    await makeDurable(cluster);
    useServer(cluster.url);
    await buildTemplate();
    runs.push(...await bothLanes(ctx, rows, "durable"));
  } finally {
    useServer(databaseUrl);
    await cluster.destroy();
  }
  const profile = {
    batch: await profiledRun(ctx, rows, "batch"),
    online: await profiledRun(ctx, rows, "online"),
  };
  return { section: report(runs, profile), runs };
}
