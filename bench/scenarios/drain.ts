// Scenario 1, backfill drain (and 5, worker footprint): N rows inserted in
// one statement, then the time until every row is embedded, for push mode,
// pull mode at concurrency 1 and 4, and the naive pipeline.
import { installNaive, runNaive, TICK_MS } from "../naive/pipeline.ts";
import { fmt, median, Section, spread } from "../report.ts";
import {
  attach,
  type BenchContext,
  childPids,
  cloneDb,
  counts,
  CpuMeter,
  insertRows,
  MODEL,
  PROVIDER_LATENCY_MS,
  PROVIDER_PER_INPUT_MS,
  providerCost,
  providerEnv,
  type Sql,
  startPushPath,
  startWorker,
} from "../stack.ts";
import { sleep } from "../../supabase/functions/_shared/sleep.ts";

/** Defaults of the worker (--batch-size) and of util.process_embeddings (batch_size, max_requests). */
export const BATCH_SIZE = 100;
export const PUSH_MAX_REQUESTS = 4;

/**
 * Runs `worker --once -c <concurrency> --batch-size BATCH_SIZE` on `dbUrl`
 * until the queue is empty; returns the seconds from its start-up to its exit.
 */
export async function drainOnce(
  ctx: BenchContext,
  dbUrl: string,
  concurrency = 4,
): Promise<number> {
  const worker = startWorker(
    ["--once", "-c", String(concurrency), "--batch-size", String(BATCH_SIZE)],
    { DATABASE_URL: dbUrl, ...providerEnv(ctx.fake) },
  );
  await worker.process.waitForLine(/"event":"started"/, 60_000);
  const ready = performance.now();
  const { code } = await worker.finished();
  if (code !== 0) throw new Error(`worker exited ${code}: ${worker.process.lines.join("\n")}`);
  return (performance.now() - ready) / 1000;
}

/** The V8 old-generation cap tried in the footprint measurement, MB. */
/** V8 heap limits that `deno task autoembed` gives the worker (deno.json); a test keeps them equal. */
export const WORKER_V8_FLAGS = "--max-old-space-size=96,--max-semi-space-size=4";

export interface DrainResult {
  mode: string;
  rows: number;
  seconds: number;
  rate: number;
  requests: number;
  inputs: number;
  /** Rows/s the provider alone would allow at this batch size and concurrency. */
  providerBound: number;
  /** Peak resident memory of the worker process, MB (pull mode). */
  peakRssMb?: number;
  /** Peak of the summed resident memory of the task runner and the worker, MB (`asTask`). */
  peakTreeRssMb?: number;
  /** CPU ms per 1,000 rows: [pipeline process, bench process (fake provider, dispatcher), rest (Postgres)]. */
  cpuPer1000?: { pipeline: number; bench: number; postgres: number; busy: number };
  /** Push mode: times a stand-in cron tick had to restart a stalled drain. */
  rescueTicks?: number;
  note?: string;
}

/** Rows/s the provider allows: concurrent requests × batch / the latency of one batch. */
export function providerBound(batch: number, concurrency: number, latencyMs = PROVIDER_LATENCY_MS) {
  return (concurrency * batch) / ((latencyMs + PROVIDER_PER_INPUT_MS * batch) / 1000);
}

function cpuFigures(
  cpu: { machine: number; bench: number; tracked: number; rest: number },
  seconds: number,
  rows: number,
) {
  const per = (s: number) => (s * 1000 * 1000) / rows;
  return {
    pipeline: per(cpu.tracked),
    bench: per(cpu.bench),
    postgres: per(cpu.rest),
    busy: cpu.machine / (seconds * navigator.hardwareConcurrency),
  };
}

export async function drainPull(
  ctx: BenchContext,
  rows: number,
  concurrency: number,
  latencyMs = PROVIDER_LATENCY_MS,
  workerEnv: Record<string, string> = {},
  options: { asTask?: boolean; hnsw?: boolean; command?: string[] } = {},
): Promise<DrainResult> {
  const db = await cloneDb(`pull_c${concurrency}`);
  try {
    await attach(db.sql, false);
    if (options.hnsw) await createHnswIndex(db.sql);
    await insertRows(db.sql, rows, "drain");
    ctx.fake.setLatency(latencyMs);
    let pids = () => [] as number[];
    let memoryLine: Promise<string> | undefined;
    const meter = new CpuMeter(() => pids());
    const { result, requests, inputs } = await providerCost(ctx.fake, async () => {
      const worker = startWorker(
        ["--once", "-c", String(concurrency), "--batch-size", String(BATCH_SIZE)],
        { DATABASE_URL: db.url, ...providerEnv(ctx.fake), ...workerEnv },
        { asTask: options.asTask, command: options.command },
      );
      pids = worker.pids;
      await worker.process.waitForLine(/"event":"started"/, 60_000);
      if (options.command) memoryLine = worker.process.waitForLine(/"event":"memory"/, 600_000);
      const ready = performance.now();
      const { code } = await worker.finished();
      const seconds = (performance.now() - ready) / 1000;
      if (code !== 0) {
        throw new Error(`worker exited ${code}:\n${worker.process.lines.slice(-20).join("\n")}`);
      }
      return {
        seconds,
        peakRssMb: worker.peakRssKb() / 1024,
        peakTreeRssMb: worker.peakTreeRssKb() / 1024,
      };
    });
    const cpu = meter.stop();
    ctx.fake.setLatency(PROVIDER_LATENCY_MS);
    const after = await counts(db.sql);
    if (after.embedded !== rows || after.queued !== 0) {
      throw new Error(`pull drain left ${after.embedded}/${rows} embedded, ${after.queued} queued`);
    }
    return {
      mode: `pull, ${options.asTask ? "deno task autoembed " : ""}worker --once -c ${concurrency}` +
        (options.hnsw ? ", HNSW index" : ""),
      rows,
      seconds: result.seconds,
      rate: rows / result.seconds,
      requests,
      inputs,
      providerBound: providerBound(BATCH_SIZE, concurrency, latencyMs),
      peakRssMb: result.peakRssMb,
      peakTreeRssMb: options.asTask ? result.peakTreeRssMb : undefined,
      note: memoryLine ? await memoryLine : undefined,
      cpuPer1000: cpuFigures(cpu, result.seconds, rows),
    };
  } finally {
    ctx.fake.setLatency(PROVIDER_LATENCY_MS);
    await db.drop();
  }
}

export async function drainPush(
  ctx: BenchContext,
  rows: number,
  env: Record<string, string> = {},
): Promise<DrainResult> {
  const db = await cloneDb("push");
  const push = await startPushPath(db, ctx.fake, env);
  try {
    await attach(db.sql, false);
    await insertRows(db.sql, rows, "drain");
    const functionPids = childPids("supabase/functions/embed/index.ts");
    const meter = new CpuMeter(() => functionPids);
    let rescueTicks = 0;
    const { result: seconds, requests, inputs } = await providerCost(ctx.fake, async () => {
      const started = performance.now();
      // One kick, as a cron tick would give; finishing calls start the next ones.
      await db.sql`select util.process_embeddings(${BATCH_SIZE}, ${PUSH_MAX_REQUESTS})`;
      let lastQueued = Infinity;
      let lastProgress = performance.now();
      for (;;) {
        await sleep(100);
        const [row] = await db.sql`
          select (select count(*) from pgmq.q_embedding_jobs)::int as queued,
                 (select count(*) from util.embedding_requests where expires_at > now())::int as leases`;
        if (row.queued === 0 && row.leases === 0) return (performance.now() - started) / 1000;
        if (row.queued < lastQueued) {
          lastQueued = row.queued;
          lastProgress = performance.now();
        } else if (row.leases === 0 && performance.now() - lastProgress > 5_000) {
          // The stand-in for the cron tick: only when the continuation chain has stopped.
          rescueTicks++;
          await db.sql`select util.process_embeddings(${BATCH_SIZE}, ${PUSH_MAX_REQUESTS})`;
          lastProgress = performance.now();
        }
        if (performance.now() - started > 20 * 60_000) throw new Error("push drain took > 20 min");
      }
    });
    const cpu = meter.stop();
    const after = await counts(db.sql);
    if (after.embedded !== rows) throw new Error(`push drain left ${after.embedded}/${rows}`);
    return {
      mode: `push, process_embeddings(${BATCH_SIZE}, ${PUSH_MAX_REQUESTS})`,
      rows,
      seconds,
      rate: rows / seconds,
      requests,
      inputs,
      providerBound: providerBound(BATCH_SIZE, PUSH_MAX_REQUESTS),
      cpuPer1000: cpuFigures(cpu, seconds, rows),
      rescueTicks,
    };
  } finally {
    await push.stop();
    await db.drop();
  }
}

async function drainNaive(ctx: BenchContext, rows: number, durationMs: number) {
  const db = await cloneDb("naive");
  try {
    await installNaive(db.sql);
    await insertRows(db.sql, rows, "drain");
    const { result: run, requests, inputs } = await providerCost(ctx.fake, () =>
      runNaive({
        dbUrl: db.url,
        baseURL: ctx.fake.baseURL,
        apiKey: providerEnv(ctx.fake).OPENAI_API_KEY,
        model: MODEL,
        durationMs,
      }));
    // A tick handles at most 100 jobs, and the last one only needs its own work time.
    const perTick = run.jobsDone / run.ticks;
    const tickWork = median(run.tickWorkMs) / 1000;
    const seconds = (Math.ceil(rows / perTick) - 1) * (TICK_MS / 1000) + tickWork;
    return {
      result: {
        mode: "naive (guide-style), extrapolated",
        rows,
        seconds,
        rate: rows / seconds,
        requests,
        inputs,
        providerBound: providerBound(1, 10),
        note: `ran ${run.ticks} ticks (${fmt(run.seconds)} s): ${run.jobsDone} rows, ` +
          `${requests} requests; tick work ${fmt(tickWork * 1000)} ms of every ${TICK_MS / 1000} s`,
      } satisfies DrainResult,
      run,
    };
  } finally {
    await db.drop();
  }
}

/** The index real tables have: HNSW with cosine distance on the embedding column (README). */
export async function createHnswIndex(sql: Sql): Promise<void> {
  await sql.unsafe(
    `create index bench_docs_embedding_hnsw on public.bench_docs
       using hnsw (embedding halfvec_cosine_ops)`,
  );
}

export function print(ctx: BenchContext, r: DrainResult) {
  const cpu = r.cpuPer1000
    ? `; CPU/1k rows: pipeline ${fmt(r.cpuPer1000.pipeline)} ms, provider+bench ${
      fmt(r.cpuPer1000.bench)
    } ms, Postgres ${fmt(r.cpuPer1000.postgres)} ms, machine ${fmt(r.cpuPer1000.busy * 100)}% busy`
    : "";
  ctx.log(
    `  ${r.mode}: ${r.rows} rows in ${fmt(r.seconds)} s = ${fmt(r.rate)} rows/s, ` +
      `${r.requests} requests` + (r.peakRssMb ? `, peak RSS ${fmt(r.peakRssMb)} MB` : "") +
      (r.peakTreeRssMb ? ` (with the task runner ${fmt(r.peakTreeRssMb)} MB)` : "") + cpu +
      (r.note ? ` (${r.note})` : ""),
  );
}

export interface DrainFigures {
  section: Section;
  footprint: Section;
  /** Median rows/s per mode and size, e.g. rate["pull4"][10000]. */
  rate: Record<string, Record<number, number>>;
  peakRssMb: Record<string, number>;
  /** CPU ms per 1,000 rows of the median run per mode at the largest size. */
  cpuPer1000: Record<string, { pipeline: number; bench: number; postgres: number; busy: number }>;
  boundFraction: number;
  providerBoundCheck: DrainResult;
}

/** The CPU table's rows for run `r` of `size` rows: one, or none without CPU figures. */
function cpuRow(r: DrainResult, size: number): (string | number)[][] {
  if (!r.cpuPer1000) return [];
  return [[
    r.mode,
    size.toLocaleString("en-US"),
    fmt(r.cpuPer1000.pipeline),
    fmt(r.cpuPer1000.bench),
    fmt(r.cpuPer1000.postgres),
    `${fmt(r.cpuPer1000.busy * 100)}%`,
  ]];
}

export async function drainScenario(ctx: BenchContext): Promise<DrainFigures> {
  const sizes = ctx.quick ? [2_000, 10_000] : [10_000, 100_000];
  const naiveMs = ctx.quick ? 10_000 : 30_000;
  const section = new Section("1. Backfill drain");
  const rate: Record<string, Record<number, number>> = {};
  const peakRssMb: Record<string, number> = {};
  const cpuBy: DrainFigures["cpuPer1000"] = {};
  const rows: (string | number)[][] = [];
  const cpuRows: (string | number)[][] = [];
  const naiveRates: Record<number, number> = {};
  ctx.log("1. backfill drain");

  for (const size of sizes) {
    const reps = size <= 10_000 ? 3 : 1;
    const modes: [string, () => Promise<DrainResult>][] = [
      // As users run the worker: `deno task autoembed worker` (deno.json's V8 heap limits).
      ["pull1", () => drainPull(ctx, size, 1, PROVIDER_LATENCY_MS, {}, { asTask: true })],
      ["pull4", () => drainPull(ctx, size, 4, PROVIDER_LATENCY_MS, {}, { asTask: true })],
      ["push", () => drainPush(ctx, size)],
    ];
    for (const [key, run] of modes) {
      // -c 1 is for comparison only: once, at the smaller size (the machine is shared).
      if (key === "pull1" && size !== Math.min(...sizes)) continue;
      const results: DrainResult[] = [];
      for (let i = 0; i < (key === "pull1" ? 1 : reps); i++) {
        const r = await run();
        print(ctx, r);
        results.push(r);
      }
      const rates = results.map((r) => r.rate);
      (rate[key] ??= {})[size] = median(rates);
      const mid = results.find((r) => r.rate === median(rates)) ?? results[0];
      if (mid.cpuPer1000 && size === Math.max(...sizes)) cpuBy[key] = mid.cpuPer1000;
      if (mid.peakRssMb && size === Math.max(...sizes)) {
        peakRssMb[key] = mid.peakRssMb;
        peakRssMb[`${key}tree`] = mid.peakTreeRssMb ?? NaN;
      }
      rows.push([
        mid.mode,
        size.toLocaleString("en-US"),
        spread(results.map((r) => r.seconds)),
        spread(rates),
        results.length,
        `${mid.requests} / ${mid.inputs}`,
        fmt(mid.providerBound),
        `${fmt((median(rates) / mid.providerBound) * 100)}%`,
        mid.rescueTicks === undefined ? "" : String(mid.rescueTicks),
      ]);
      cpuRows.push(...cpuRow(mid, size));
    }
    const { result: naive } = await drainNaive(ctx, size, naiveMs);
    print(ctx, naive);
    naiveRates[size] = naive.rate;
    (rate.naive ??= {})[size] = naive.rate;
    rows.push([
      naive.mode,
      size.toLocaleString("en-US"),
      fmt(naive.seconds),
      fmt(naive.rate),
      1,
      `${naive.requests} / ${naive.inputs} (measured part)`,
      `${fmt(naive.providerBound)} (tick cap 10)`,
      `${fmt((naive.rate / naive.providerBound) * 100)}%`,
      "",
    ]);
  }

  // With an HNSW index on the column, as real tables have: every write also
  // inserts into the graph, which on this machine costs more than the rest of
  // the drain, so one run at the smaller size.
  const hnswRows = Math.min(...sizes);
  const hnsw = await drainPull(ctx, hnswRows, 4, PROVIDER_LATENCY_MS, {}, {
    asTask: true,
    hnsw: true,
  });
  print(ctx, hnsw);
  rate.pull4hnsw = { [hnswRows]: hnsw.rate };
  rows.push([
    hnsw.mode,
    hnswRows.toLocaleString("en-US"),
    fmt(hnsw.seconds),
    fmt(hnsw.rate),
    1,
    `${hnsw.requests} / ${hnsw.inputs}`,
    fmt(hnsw.providerBound),
    `${fmt((hnsw.rate / hnsw.providerBound) * 100)}%`,
    "",
  ]);
  cpuRows.push(...cpuRow(hnsw, hnswRows));

  // Where the provider, not the machine, is the limit: a slow provider.
  const slowMs = 500;
  const check = await drainPull(ctx, ctx.quick ? 2_000 : 10_000, 4, slowMs);
  print(ctx, check);
  const boundFraction = check.rate / check.providerBound;

  // Where the worker's memory is at its peak: the same drain with the worker
  // inside bench/worker_memory.ts, with deno.json's V8 flags.
  const inside = await drainPull(ctx, Math.max(...sizes), 4, PROVIDER_LATENCY_MS, {}, {
    command: ["run", "-A", `--v8-flags=${WORKER_V8_FLAGS}`, "bench/worker_memory.ts"],
  });
  print(ctx, inside);
  // And the same worker with nothing to drain: the runtime and our modules, loaded.
  const idle = await drainPull(ctx, 0, 4, PROVIDER_LATENCY_MS, {}, {
    command: ["run", "-A", `--v8-flags=${WORKER_V8_FLAGS}`, "bench/worker_memory.ts"],
  });
  type Memory = {
    vmHwmMb: number;
    atPeakRss: Record<string, number>;
    maxima: Record<string, number>;
  };
  const parse = (r: DrainResult) => JSON.parse(r.note!.slice(r.note!.indexOf("{"))) as Memory;
  const memory = parse(inside);
  const idleMemory = parse(idle);

  section.text(`
N rows are inserted in one statement (the statement-level trigger enqueues N jobs), then the clock
runs until every row has its embedding. Pull mode: the worker CLI as a subprocess, started as the
README tells users to, \`deno task autoembed worker --once -c C --batch-size ${BATCH_SIZE}\` (deno.json's
V8 flags \`${WORKER_V8_FLAGS}\`), timed from its \`started\` line to its exit (process start-up,
about half a second, excluded). "HNSW index": the same with
\`create index ... using hnsw (embedding halfvec_cosine_ops)\` (pgvector's defaults, m 16,
ef_construction 64) on the empty table first, so every write also inserts into the index, as on a
real table; one run, at the smaller size only. Push mode: \`util.process_embeddings(${BATCH_SIZE}, ${PUSH_MAX_REQUESTS})\`
called once; the pg_net shim's dispatcher (local/net_dispatcher.ts) POSTs each batch to the real
\`embed\` function served by local/functions.ts (its own Deno process behind the local gateway, as
\`npm start\` serves it), and each finishing call starts the next through
\`util._embedding_request_done\`; a stand-in cron tick would only fire if the chain stalled for 5 s
("rescue ticks", expected 0). Naive: the guide-style pipeline of bench/naive/ run for ${
    naiveMs / 1000
  } s and
**extrapolated**: it handles a fixed slice of 100 jobs per 10 s tick, so its drain time is
(⌈N/100⌉ − 1) × 10 s + one tick's work. Provider bound = concurrency × batch / latency of one
request (${PROVIDER_LATENCY_MS} ms + ${PROVIDER_PER_INPUT_MS} ms per input).`);
  section.table(
    [
      "mode",
      "rows",
      "seconds",
      "rows/s",
      "runs",
      "provider requests / inputs",
      "provider bound rows/s",
      "of bound",
      "rescue ticks",
    ],
    rows,
  );
  const ratioRows = sizes.map((size) => [
    size.toLocaleString("en-US"),
    `${fmt(rate.pull1[size] / naiveRates[size])}×`,
    `${fmt(rate.pull4[size] / naiveRates[size])}×`,
    `${fmt(rate.push[size] / naiveRates[size])}×`,
    `${fmt((rate.push[size] / rate.pull4[size]) * 100)}%`,
  ]);
  section.text("Ratios (median rows/s):");
  section.table(
    ["rows", "pull -c 1 vs naive", "pull -c 4 vs naive", "push vs naive", "push / pull -c 4"],
    ratioRows,
  );
  section.text(`
Where the CPU went (CPU ms per 1,000 rows, median run; "pipeline" is the worker process in pull
mode and the embed function's process in push mode; "bench" is this process: the fake provider, and
in push mode the pg_net dispatcher and the gateway; Postgres is the rest of the machine's busy
time, which on an idle machine is the server's backends):`);
  section.table(
    ["mode", "rows", "pipeline", "bench (fake provider…)", "Postgres", "machine busy"],
    cpuRows,
  );
  section.text(`
Provider-bound check: with a slow provider (${slowMs} ms per request), \`worker --once -c 4\` drained
${check.rows.toLocaleString("en-US")} rows at ${fmt(check.rate)} rows/s against a bound of ${
    fmt(check.providerBound)
  } rows/s (${fmt(boundFraction * 100)}%).`);

  const footprint = new Section("5. Worker footprint");
  const big = Math.max(...sizes);
  footprint.text(`
Peak resident memory while draining ${big.toLocaleString("en-US")} rows, as users run the worker
(\`deno task autoembed worker --once\`): the worker process's VmHWM (/proc/<pid>/status), and the
largest sum of VmRSS over the task runner and the worker (sampled every 100 ms), which is what the
command costs the machine.`);
  footprint.table(
    ["worker", "worker peak RSS MB", "with the task runner MB", "rows/s"],
    ["pull1", "pull4"].filter((k) => peakRssMb[k]).map((k) => [
      `\`deno task autoembed worker --once -c ${k === "pull1" ? 1 : 4}\``,
      fmt(peakRssMb[k]),
      fmt(peakRssMb[`${k}tree`]),
      fmt(rate[k][big]),
    ]),
  );
  footprint.text(`
Where the worker's memory is at its peak: the same drain (-c 4) with the worker run inside
bench/worker_memory.ts with the same V8 flags, sampling \`Deno.memoryUsage()\` every 50 ms. At the
sample of highest RSS (${fmt(memory.atPeakRss.rssMb)} MB; VmHWM ${fmt(memory.vmHwmMb)} MB): V8 heap
${fmt(memory.atPeakRss.v8HeapTotalMb)} MB reserved, ${fmt(memory.atPeakRss.v8HeapUsedMb)} MB used;
memory outside the heap that V8 accounts for (ArrayBuffers: response bodies, postgres.js's
message buffers) ${fmt(memory.atPeakRss.externalMb)} MB; the rest, ${
    fmt(memory.atPeakRss.restMb)
  } MB, is the runtime itself (its code, V8's code space, the allocator's arenas). Maxima over the
run: heap reserved ${fmt(memory.maxima.v8HeapTotalMb)} MB, heap used ${
    fmt(memory.maxima.v8HeapUsedMb)
  } MB, external ${fmt(memory.maxima.externalMb)} MB. The same worker with an empty queue (the
runtime and our modules loaded, nothing drained) peaks at ${
    fmt(idleMemory.vmHwmMb)
  } MB (heap used ${fmt(idleMemory.maxima.v8HeapUsedMb)} MB).`);
  return {
    section,
    footprint,
    rate,
    peakRssMb,
    boundFraction,
    providerBoundCheck: check,
    cpuPer1000: cpuBy,
  };
}
