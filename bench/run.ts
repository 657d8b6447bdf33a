// `deno task bench`: brings up the local stack, runs every scenario against
// throw-away databases on it and writes bench/RESULTS.md (figures are also
// printed as they come). Options: --quick (small sizes, for trying it out:
// writes bench/RESULTS.partial.md instead) and --only
// drain,cost,freshness,write-path,storage,chunked,search,profile,hosted-limits,status,rate-budget,
// batch-lane,chunking,model-change,capture
// (the sections of the scenarios run replace theirs in RESULTS.md). A run of
// pure-CPU scenarios only (chunking) starts no stack.
import { parseArgs } from "node:util";
import { stopCluster } from "../local/cluster.ts";
import { fmt, goal, Section } from "./report.ts";
import { type BatchLaneFigures, batchLaneScenario } from "./scenarios/batch_lane.ts";
import { type CaptureFigures, captureScenario } from "./scenarios/capture.ts";
import { type ChunkedFigures, chunkedScenario } from "./scenarios/chunked.ts";
import { type ChunkingFigures, chunkingScenario } from "./scenarios/chunking.ts";
import { type CostFigures, costScenario } from "./scenarios/cost.ts";
import {
  BATCH_SIZE,
  type DrainFigures,
  drainScenario,
  PUSH_MAX_REQUESTS,
} from "./scenarios/drain.ts";
import { type FreshnessFigures, freshnessScenario } from "./scenarios/freshness.ts";
import { type ModelChangeFigures, modelChangeScenario } from "./scenarios/model_change.ts";
import {
  HALF_LIMITS,
  type HostedLimitsFigures,
  hostedLimitsScenario,
} from "./scenarios/hosted_limits.ts";
import { profileScenario } from "./scenarios/profile.ts";
import { LIMITS, type RateBudgetFigures, rateBudgetScenario } from "./scenarios/rate_budget.ts";
import { type SearchFigures, searchScenario } from "./scenarios/search.ts";
import { type StatusFigures, statusScenario } from "./scenarios/status.ts";
import { type StorageFigures, storageScenario } from "./scenarios/storage.ts";
import { type WritePathFigures, writePathScenario } from "./scenarios/write_path.ts";
import { writeStatementScenario } from "./scenarios/write_statement.ts";
import {
  type BenchContext,
  buildTemplate,
  connect,
  DIMENSIONS,
  dropBenchDatabases,
  loadAverage,
  MODEL,
  prepareStack,
  PROVIDER_LATENCY_MS,
  PROVIDER_PER_INPUT_MS,
  startProvider,
} from "./stack.ts";
import { databaseUrl } from "../local/config.ts";
import { FINDINGS } from "./findings.ts";

const SCENARIOS = [
  "drain",
  "cost",
  "freshness",
  "write-path",
  "storage",
  "chunked",
  "search",
  "profile",
  "hosted-limits",
  "status",
  "rate-budget",
  "batch-lane",
  "chunking",
  "model-change",
  "capture",
];

/** Scenarios that are pure CPU: a run of only these needs no database or provider. */
const STACK_FREE = new Set(["chunking"]);

/** The machine's facts; with `postgres`, those of the running cluster's server too. */
async function machine(postgres: boolean): Promise<[string, string][]> {
  const meminfo = await Deno.readTextFile("/proc/meminfo");
  const memKb = Number(meminfo.match(/^MemTotal:\s+(\d+)/m)?.[1] ?? 0);
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo");
  const model = cpuinfo.match(/^model name\s*:\s*(.+)$/m)?.[1] ?? "unknown";
  if (!postgres) {
    return [
      ["CPU", `${navigator.hardwareConcurrency} cores, ${model}`],
      ["memory", `${(memKb / 1024 / 1024).toFixed(1)} GiB`],
      ["Deno", `${Deno.version.deno} (V8 ${Deno.version.v8})`],
      ["load average at start", await loadAverage()],
    ];
  }
  const sql = connect(databaseUrl("postgres"), 1);
  try {
    const [pg] = await sql`select version() as v`;
    const [vector] = await sql`
      select default_version as v from pg_available_extensions where name = 'vector'`;
    const [cron] = await sql`
      select default_version as v from pg_available_extensions where name = 'pg_cron'`;
    const load = await loadAverage();
    return [
      ["CPU", `${navigator.hardwareConcurrency} cores, ${model}`],
      ["memory", `${(memKb / 1024 / 1024).toFixed(1)} GiB`],
      ["OS", `${Deno.build.os} ${Deno.osRelease()}`],
      ["Postgres", String(pg.v).split(" on ")[0]],
      ["pgvector", String(vector?.v ?? "missing")],
      ["pg_cron", String(cron?.v ?? "missing")],
      [
        "pgmq, pg_net, Vault",
        "the local stack's SQL shims (local/shims/), pg_net's worker = local/net_dispatcher.ts",
      ],
      ["Deno", `${Deno.version.deno} (V8 ${Deno.version.v8})`],
      ["load average at start", load],
    ];
  } finally {
    await sql.end();
  }
}

function settings(): [string, string][] {
  return [
    [
      "provider",
      `devtools/fake_openai.ts on loopback, through the \`openai\` SDK (our provider); ` +
      `${PROVIDER_LATENCY_MS} ms per request + ${PROVIDER_PER_INPUT_MS} ms per input`,
    ],
    [
      "model / dimensions",
      `${MODEL}, ${DIMENSIONS} (\`halfvec(${DIMENSIONS})\` column, no vector index)`,
    ],
    [
      "table",
      "`bench_docs(id bigint pk, title text, body text, embedding halfvec)`, content function " +
      "`title || body`, about 450 characters of text per row, distinct per row",
    ],
    [
      "pipeline defaults",
      `worker --batch-size ${BATCH_SIZE}; process_embeddings(batch_size ${BATCH_SIZE}, max_requests ${PUSH_MAX_REQUESTS}); ` +
      "EMBEDDING_CONCURRENCY 2 (provider calls in flight per batch)",
    ],
    [
      "Postgres",
      "the local cluster (local/cluster.ts: fsync off, as for development), each run in a fresh " +
      "database cloned from one built with applyMigrations",
    ],
  ];
}

interface Goal {
  goal: string;
  figure: string;
  met: boolean;
  limit: string;
}

function goals(
  drain?: DrainFigures,
  cost?: CostFigures,
  fresh?: FreshnessFigures,
  write?: WritePathFigures,
  storage?: StorageFigures,
  chunked?: ChunkedFigures,
  limits?: HostedLimitsFigures,
  budget?: RateBudgetFigures,
  chunking?: ChunkingFigures,
  batchLane?: BatchLaneFigures,
): Goal[] {
  const list: Goal[] = [];
  if (batchLane) {
    const run = (cluster: string, lane: string) =>
      batchLane.runs.find((r) => r.cluster === cluster && r.lane === lane)!;
    const online = run("fsync off", "online");
    const batch = run("fsync off", "batch");
    const share = batch.usd / online.usd;
    const wall = (cluster: string) =>
      `${fmt(run(cluster, "batch").seconds)} s vs ${fmt(run(cluster, "online").seconds)} s`;
    list.push({
      goal: "batch lane: a 50,000-row backfill costs ≤ 50% of the online lane at list prices",
      figure: `$${batch.usd.toFixed(4)} vs $${online.usd.toFixed(4)} (${
        fmt(share * 100)
      }%); wall, the provider's delay excluded: ${wall("fsync off")} online (fsync off), ${
        wall("durable")
      } (durable)`,
      met: share <= 0.5,
      limit: "",
    });
  }
  if (budget) {
    const run = (code: string, window: string) =>
      budget.runs.find((r) => r.code.startsWith(code) && r.window === window)!;
    const share = (r: typeof budget.runs[number]) =>
      (r.rateLimited / Math.max(1, r.requests)) * 100;
    const warm = run("after", "full");
    const cold = run("after", "empty");
    list.push({
      goal: `rate limit: 3 workers + push reach ≥ 90% of ${
        LIMITS.tokensPerMinute.toLocaleString("en-US")
      } TPM (provider window full at the start)`,
      figure: `${Math.round(warm.tpmShare * 100)}% (before: ${
        Math.round(run("before", "full").tpmShare * 100)
      }%); drain ${warm.seconds.toFixed(0)} s, tokens / TPM ${
        warm.idealSeconds.toFixed(0)
      } s; window empty at the start: ${Math.round(cold.tpmShare * 100)}% (before: ${
        Math.round(run("before", "empty").tpmShare * 100)
      }%)`,
      met: warm.tpmShare >= 0.9,
      limit: "the budget holds 2% for bursts and 4% for search back from backfill " +
        "(supabase/schemas/17_budgets.sql)",
    });
    list.push({
      goal: "rate limit: 429s ≤ 2% of provider calls",
      figure: `${share(warm).toFixed(1)}% window full, ${share(cold).toFixed(1)}% empty (before: ${
        share(run("before", "full")).toFixed(1)
      }%, ${share(run("before", "empty")).toFixed(1)}%)`,
      met: share(warm) <= 2 && share(cold) <= 2,
      limit: "",
    });
  }
  if (limits) {
    const { worst } = limits;
    const half = HALF_LIMITS;
    list.push({
      goal: `every hosted invocation of embed and search under half the limits (${half.cpuMs} ms ` +
        `CPU, ${half.memoryMb} MB of V8 heap in use, ${half.wallMs / 1000} s wall)`,
      figure: `worst: ${Math.round(worst.cpuMs)} ms CPU, ${
        Math.round(worst.heapUsedMb)
      } MB heap in use (${Math.round(worst.heapMb)} MB committed; process RSS ${
        Math.round(worst.peakRssMb)
      } MB, an upper bound), ${(worst.wallMs / 1000).toFixed(1)} s wall`,
      met: limits.withinHalf,
      limit: "see the section on hosted limits",
    });
  }
  if (chunked) {
    list.push({
      goal: "one-paragraph edit of a 100-chunk document ≤ 3 provider inputs",
      figure: `${chunked.editInputs} inputs for a ${chunked.editChunks}-chunk document ` +
        `(re-embedding every chunk: ${chunked.editChunks})`,
      met: chunked.editInputs <= 3,
      limit: "",
    });
  }
  if (storage) {
    const worst = Math.max(...storage.runs.map((r) => r.utilShare));
    list.push({
      goal: "util.* ≤ 10% of the embedding bytes it tracks (20,000 and 100,000 rows)",
      figure: storage.runs.map((r) =>
        `${(r.utilShare * 100).toFixed(1)}% (${r.rows.toLocaleString("en-US")})`
      ).join(", "),
      met: worst <= 0.1,
      limit: "",
    });
  }
  if (drain) {
    const big = Math.max(...Object.keys(drain.rate.pull4).map(Number));
    const small = Math.min(...Object.keys(drain.rate.pull4).map(Number));
    const pull4 = drain.rate.pull4[small];
    const cpu = drain.cpuPer1000.pull4;
    const cpuTotal = cpu ? cpu.pipeline + cpu.postgres : NaN;
    list.push({
      goal: "pull -c 4 ≥ 5,000 rows/s at 10,000 and 100,000 rows (20 ms provider)",
      figure: `${Math.round(pull4)} rows/s (${small.toLocaleString("en-US")} rows), ${
        Math.round(drain.rate.pull4[big])
      } rows/s (${big.toLocaleString("en-US")})`,
      met: pull4 >= 5000 && drain.rate.pull4[big] >= 5000,
      limit: "CPU: at 5,000 rows/s 2 cores have 400 ms per 1,000 rows for the worker, Postgres " +
        "and the provider together; with binary vectors the write's backend is small (section " +
        "1b), and what is left is spread over the worker (its collector, socket writes), the " +
        "statements around the write and the fake provider; see Findings",
    });
    list.push({
      goal: "CPU per 1,000 rows (pipeline + Postgres) ≤ half of issue 12's (280 + 310 ms)",
      figure: cpu
        ? `${Math.round(cpu.pipeline)} + ${Math.round(cpu.postgres)} ms (${
          big.toLocaleString("en-US")
        } rows, -c 4; Postgres = the machine's busy time minus the named processes)`
        : "n/a",
      met: cpuTotal <= 295,
      limit: "Postgres here is the machine's busy time minus the named processes, so other " +
        "sessions' load counts in it (see the stamp); the write's own backend CPU is in section " +
        "1b (binary vectors: no halfvec_in); the worker's includes collector time " +
        "from deno.json's heap limits (section 1: pull vs push pipeline CPU)",
    });
    const hnsw = drain.rate.pull4hnsw;
    if (hnsw) {
      list.push({
        goal: "drain with an HNSW index on the column (reported)",
        figure: `${Math.round(hnsw[small])} rows/s (${small.toLocaleString("en-US")} rows, -c 4): ${
          Math.round((hnsw[small] / drain.rate.pull4[small]) * 100)
        }% of the drain without`,
        met: true,
        limit: "",
      });
    }
    list.push({
      goal: "≥ 70% of the provider bound where Postgres is not the limit",
      figure: `${Math.round(drain.boundFraction * 100)}% with a 500 ms provider`,
      met: drain.boundFraction >= 0.7,
      limit:
        "the machine: when other sessions keep both cores busy (see the stamp), even 4 × 100 " +
        "inputs per 500 ms are more than the worker and Postgres get done",
    });
    const ratio = drain.rate.push[small] / drain.rate.pull4[small];
    list.push({
      goal: "push ≥ 80% of pull -c 4",
      figure: `${Math.round(ratio * 100)}% (${small.toLocaleString("en-US")} rows), ${
        Math.round((drain.rate.push[big] / drain.rate.pull4[big]) * 100)
      }% (${big.toLocaleString("en-US")})`,
      met: ratio >= 0.8 && drain.rate.push[big] / drain.rate.pull4[big] >= 0.8,
      limit: "the extra hops per batch (pg_net queue, dispatcher, gateway, continuation call)",
    });
    list.push({
      goal: "worker peak RSS ≤ 150 MB draining 100,000 rows, as users run it",
      figure:
        `${Math.round(drain.peakRssMb.pull4)} MB, \`deno task autoembed worker --once -c 4\` ` +
        `(${Math.round(drain.peakRssMb.pull4tree)} MB with the task runner)`,
      met: drain.peakRssMb.pull4 <= 150,
      limit: "the runtime and V8's heap headroom, not live data (section 5)",
    });
  }
  if (cost) {
    list.push({
      goal: "provider requests ≤ ⌈N / batch⌉ + 1 for N distinct changed rows",
      figure: `${cost.changedRequests} requests for 1,000 rows (bound ${cost.changedBound})`,
      met: cost.changedRequests <= cost.changedBound,
      limit: "",
    });
    list.push({
      goal: "0 requests for no-op updates",
      figure: `${cost.noopRequests}`,
      met: cost.noopRequests === 0,
      limit: "",
    });
    list.push({
      goal: "0 requests for text some row already holds",
      figure: `${cost.cachedRequests}`,
      met: cost.cachedRequests === 0,
      limit: "",
    });
  }
  if (fresh) {
    list.push({
      goal: "commit → embedding p50 ≤ 250 ms, p99 ≤ 1 s (listening worker)",
      figure: `p50 ${Math.round(fresh.worker.p50)} ms, p99 ${Math.round(fresh.worker.p99)} ms`,
      met: fresh.worker.p50 <= 250 && fresh.worker.p99 <= 1000,
      limit: "",
    });
    list.push({
      goal: "push mode, pg_net only: commit → embedding p50 ≤ 1.5 s, p99 ≤ 3 s (10 s tick)",
      figure: `p50 ${Math.round(fresh.push.p50)} ms, p99 ${Math.round(fresh.push.p99)} ms ` +
        `(tick alone: p50 ${Math.round(fresh.pushTick.p50)} ms, p99 ${
          Math.round(fresh.pushTick.p99)
        } ms)`,
      met: fresh.push.p50 <= 1500 && fresh.push.p99 <= 3000,
      limit: "",
    });
  }
  if (write) {
    list.push({
      goal: "our triggers cost no more than the Supabase guide's, single-row inserts, durable",
      figure: `enable_embeddings ${Math.round(write.vsGuide * 100)}%, guide-style row trigger ${
        Math.round(write.rowVsGuide * 100)
      }% of the guide trigger's inserts/s (${
        Math.round(write.insertCost * 100)
      }% below none); enable_embeddings ${
        Math.round(write.vsGeneric * 100)
      }% of its former generic statement trigger`,
      met: write.vsGuide >= 0.97 && write.rowVsGuide >= 0.97,
      limit: "the durable medians' spreads overlap on this shared machine; what is left per " +
        "statement is the job row itself and, per transaction, the kick's look (section 4's " +
        "function profile)",
    });
    list.push({
      goal: "100,000-row bulk insert with triggers ≤ 2× without, durable",
      figure: `${write.bulkRatio.toFixed(2)}×`,
      met: write.bulkRatio <= 2,
      limit: "the statement's own queue insert (1,000 packed messages) and its transition " +
        "table; see section 4's bulk rows and Findings",
    });
  }
  if (chunking) list.push(...chunking.goals);
  return list;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: { quick: { type: "boolean", default: false }, only: { type: "string" } },
    strict: true,
  });
  const only = values.only ? values.only.split(",") : SCENARIOS;
  for (const name of only) {
    if (!SCENARIOS.includes(name)) {
      console.error(`bench: unknown scenario ${name} (${SCENARIOS.join(", ")})`);
      return 2;
    }
  }
  const started = performance.now();
  const log = (line: string) => console.log(line);
  const needsStack = only.some((name) => !STACK_FREE.has(name));
  const startedCluster = needsStack && await prepareStack((line) => log(`bench: ${line}`));
  const fake = needsStack ? await startProvider() : undefined;
  const sections: Section[] = [];
  let drain: DrainFigures | undefined;
  let cost: CostFigures | undefined;
  let fresh: FreshnessFigures | undefined;
  let write: WritePathFigures | undefined;
  let profile: Section | undefined;
  let writeProfile: Section | undefined;
  let storage: StorageFigures | undefined;
  let chunked: ChunkedFigures | undefined;
  let search: SearchFigures | undefined;
  let limits: HostedLimitsFigures | undefined;
  let status: StatusFigures | undefined;
  let budget: RateBudgetFigures | undefined;
  let batchLane: BatchLaneFigures | undefined;
  let chunking: ChunkingFigures | undefined;
  let modelChange: ModelChangeFigures | undefined;
  let capture: CaptureFigures | undefined;
  const machineFacts = await machine(needsStack);
  log(machineFacts.map(([k, v]) => `${k}: ${v}`).join("\n"));
  try {
    if (fake) {
      const ctx: BenchContext = { fake, log, quick: values.quick };
      await buildTemplate();
      if (only.includes("drain")) {
        drain = await drainScenario(ctx);
        writeProfile = await writeStatementScenario(ctx);
      }
      if (only.includes("cost")) cost = await costScenario(ctx);
      if (only.includes("freshness")) fresh = await freshnessScenario(ctx);
      if (only.includes("write-path")) write = await writePathScenario(ctx);
      if (only.includes("storage")) storage = await storageScenario(ctx);
      if (only.includes("chunked")) chunked = await chunkedScenario(ctx);
      if (only.includes("search")) search = await searchScenario(ctx);
      if (only.includes("profile")) profile = await profileScenario(ctx);
      if (only.includes("hosted-limits")) limits = await hostedLimitsScenario(ctx);
      if (only.includes("status")) status = await statusScenario(ctx);
      if (only.includes("rate-budget")) budget = await rateBudgetScenario(ctx);
      if (only.includes("model-change")) modelChange = await modelChangeScenario(ctx);
      if (only.includes("batch-lane")) batchLane = await batchLaneScenario(ctx);
      if (only.includes("capture")) capture = await captureScenario(ctx);
    }
    if (only.includes("chunking")) chunking = await chunkingScenario({ log, quick: values.quick });
  } finally {
    if (fake) {
      await fake.close();
      await dropBenchDatabases();
    }
    if (startedCluster) await stopCluster();
  }
  const minutes = (performance.now() - started) / 60_000;
  for (
    const s of [
      drain?.section,
      writeProfile,
      cost?.section,
      fresh?.section,
      write?.section,
      drain?.footprint,
      storage?.section,
      chunked?.section,
      search?.section,
      profile,
      limits?.section,
      status?.section,
      budget?.section,
      batchLane?.section,
      chunking?.section,
      modelChange?.section,
      capture?.section,
    ]
  ) {
    if (s) sections.push(s);
  }
  const goalList = goals(
    drain,
    cost,
    fresh,
    write,
    storage,
    chunked,
    limits,
    budget,
    chunking,
    batchLane,
  );
  if (modelChange) {
    const run = (cluster: string, code: string) =>
      modelChange!.runs.find((r) => r.cluster === cluster && r.code === code)!;
    const [after, before] = [run("fsync off", "after"), run("fsync off", "before")];
    const [durable, durableBefore] = [run("durable", "after"), run("durable", "before")];
    goalList.push({
      goal: `model change of ${
        modelChange.rows.toLocaleString("en-US")
      } rows with an HNSW index: the shadow fills at ≥ 80% of the drain without an index`,
      figure:
        `${fmt(after.fillRate)} rows/s, ${
          Math.round((after.fillRate / modelChange.setupDrainRate) * 100)
        }% of ${fmt(modelChange.setupDrainRate)} (before: ${fmt(before.fillRate)}); reembed → ` +
        `switch ${fmt(after.totalSeconds)} s (before: ${fmt(before.totalSeconds)} s), fsync ` +
        `off; durable ${fmt(durable.totalSeconds)} s (before: ${
          fmt(durableBefore.totalSeconds)
        } s)`,
      met: after.fillRate >= 0.8 * modelChange.setupDrainRate,
      limit:
        `the shadow's updates that are not HOT (${
          Math.round((1 - after.hotShare) * 100)
        }%: a page's first one, and those that come while a batch that still sees the page's ` +
        "earlier update runs) move their row, and each inserts the live vector into the live " +
        "HNSW graph again; see the section on model changes",
    });
  }
  if (capture) {
    const pct = (share: number) => `${fmt(share * 100)}%`;
    goalList.push({
      goal: "logical capture: single-row inserts ≥ 98% of an unattached table's, durable " +
        "(≥ 90% fsync off)",
      figure: `${pct(capture.durableShare)} durable, ${pct(capture.fastShare)} fsync off ` +
        "(pgbench, the worker following the slot; all at wal_level logical)",
      met: capture.durableShare >= 0.98 && capture.fastShare >= 0.9,
      limit: "CPU on 2 shared cores: per insert the worker, the walsender and, most, the " +
        "server's work for the worker's statements (a util._capture_changes and a commit per " +
        "flush, a claim per wake-up) come on top of the insert's own; see the section's CPU column",
    });
    goalList.push({
      goal: "logical capture: 100,000-row bulk insert ≤ 1.05× an unattached table's, durable",
      figure: `${capture.bulkRatio.toFixed(2)}×`,
      met: capture.bulkRatio <= 1.05,
      limit: "the walsender decodes the statement's log as it is written, on the same 2 cores",
    });
    goalList.push({
      goal: "logical capture: commit → embedding within 2× of the listening worker's (p50, p99)",
      figure: `p50 ${fmt(capture.p50Ratio)}×, p99 ${fmt(capture.p99Ratio)}× (durable, ` +
        `${capture.freshRate}/s)`,
      met: capture.p50Ratio <= 2 && capture.p99Ratio <= 2,
      limit: "the extra hops: the walsender, the worker's flush of the job (its own commit), " +
        "then its claim",
    });
  }
  if (status) {
    const big = status.runs.at(-1)!;
    goalList.push({
      goal: "select * from util.embedding_status ≤ 100 ms at 10,000,000 rows",
      figure: `${fmt(big.viewMs.median, 1)} ms median, ${fmt(big.viewBacklogMs.median, 1)} ms ` +
        `with 1,000,000 rows queued (${big.rows.toLocaleString("en-US")} rows)`,
      met: big.rows >= 10_000_000 && Math.max(big.viewMs.median, big.viewBacklogMs.median) <= 100,
      limit: "the queue's figures are one pass over the queue: a backlog of millions of rows " +
        "costs its messages' scan",
    });
  }
  const summary = new Section("Goals");
  summary.text("Measured, not asserted: the bench reports, it does not fail.");
  summary.table(
    ["goal", "measured", "", "what limits it"],
    goalList.map((g) => [g.goal, g.figure, goal(g.met), g.met ? "" : g.limit]),
  );
  const stamp = `Written by \`deno task bench${
    values.only ? ` --only ${values.only}` : ""
  }\` (bench/run.ts) on ${new Date().toISOString().slice(0, 16)} UTC; the run took ${
    minutes.toFixed(1)
  } minutes${values.quick ? " (--quick: small sizes)" : ""}; load average at its start ${
    machineFacts.find(([k]) => k === "load average at start")![1]
  }, at its end ${await loadAverage()}.`;
  for (const s of sections) s.parts.unshift(`_${stamp}_`);
  if (!needsStack) {
    // The Machine section describes the stack's run; a CPU-only run says its own.
    const facts = machineFacts.filter(([k]) => k !== "load average at start");
    for (const s of sections) s.parts.splice(1, 0, facts.map(([k, v]) => `${k}: ${v}`).join("; "));
  }
  const path = new URL(`./${values.quick ? "RESULTS.partial.md" : "RESULTS.md"}`, import.meta.url);
  let doc: string;
  if (values.only && !values.quick) {
    // Only some scenarios ran: their sections (and their goals) replace the
    // ones of earlier runs in RESULTS.md; every section says when it was made.
    const machineSection = new Section("Machine").table(["", ""], machineFacts);
    const settingsSection = new Section("Settings").table(["", ""], settings());
    doc = mergeSections(
      await Deno.readTextFile(path),
      [...(needsStack ? [machineSection, settingsSection] : []), summary, ...sections],
      only,
    );
  } else {
    doc = [
      "# autoembed benchmarks",
      `${stamp} Figures are medians with min–max in brackets where a measurement was repeated.`,
      "## Machine\n\n" +
      ["| | |", "| --- | --- |", ...machineFacts.map(([k, v]) => `| ${k} | ${v} |`)].join("\n"),
      "## Settings\n\n" +
      ["| | |", "| --- | --- |", ...settings().map(([k, v]) => `| ${k} | ${v} |`)].join("\n"),
      summary.markdown(),
      ...sections.map((s) => s.markdown()),
      FINDINGS.trim(),
    ].join("\n\n") + "\n";
  }
  await Deno.writeTextFile(path, doc);
  // Formatted as `deno fmt --check` (CI) wants it.
  await new Deno.Command(Deno.execPath(), { args: ["fmt", "-q", path.pathname] }).output();
  const file = path.pathname.split("/").pop();
  log(`bench: wrote bench/${file} (${minutes.toFixed(1)} min)`);
  return 0;
}

/** The scenario a goal of the table belongs to, by its wording. */
function scenarioOf(goalText: string): string {
  if (/^logical capture:/.test(goalText)) return "capture";
  if (/model change of/.test(goalText)) return "model-change";
  if (/rate limit:/.test(goalText)) return "rate-budget";
  if (/^batch lane:/.test(goalText)) return "batch-lane";
  if (/^real markdown/.test(goalText)) return "chunking";
  if (/trigger|bulk insert/.test(goalText)) return "write-path";
  if (/commit → embedding/.test(goalText)) return "freshness";
  if (/util\.\*/.test(goalText)) return "storage";
  if (/one-paragraph edit/.test(goalText)) return "chunked";
  if (/hosted invocation/.test(goalText)) return "hosted-limits";
  if (/requests|cached|already holds/.test(goalText)) return "cost";
  return "drain";
}

/**
 * RESULTS.md with `sections` in place of the sections of the same number (the
 * title up to its first space, e.g. "4.") or title; new ones go before the
 * findings. The goals table keeps the rows of scenarios that did not run.
 * The findings are bench/findings.ts's current text.
 */
export function mergeSections(old: string, sections: Section[], only: string[]): string {
  const parts = old.split(/^(?=## )/m);
  const head = parts.shift()!;
  const key = (title: string) => /^\d+[a-z]?\./.test(title) ? title.split(" ")[0] : title;
  const titleOf = (part: string) => part.slice(3, part.indexOf("\n")).trim();
  const findings = FINDINGS.trim().split(/^(?=## )/m).filter((p) => p.trim());
  const findingTitles = new Set(findings.map(titleOf));
  let kept = parts.filter((p) => !findingTitles.has(titleOf(p)) && !/^Findings/.test(titleOf(p)));
  for (const section of sections) {
    let markdown = section.markdown();
    if (section.title === "Goals") {
      const oldGoals = parts.find((p) => titleOf(p) === "Goals") ?? "";
      const rows = oldGoals.split("\n").filter((l) => l.startsWith("| ") && !l.startsWith("| goal"))
        .filter((l) => !l.startsWith("| ---") && !only.includes(scenarioOf(l.split("|")[1])));
      // The separator line ends the table when no goal of this run has a row.
      markdown = markdown.replace(
        /(\| --- \|[^\n]*\n?(?:\|[^\n]*\n?)*)/,
        (table) => table.trimEnd() + "\n" + rows.join("\n") + "\n",
      ).trimEnd();
    }
    const at = kept.findIndex((p) => key(titleOf(p)) === key(section.title));
    if (at >= 0) kept[at] = markdown + "\n\n";
    else {
      // Numbered sections in order of their number; others before the findings.
      const numbered = /^\d+[a-z]?\./.test(section.title);
      const before = kept.findIndex((p) => {
        const t = titleOf(p);
        if (/^(Goals|Machine|Settings)$/.test(t)) return false;
        if (!/^\d+[a-z]?\./.test(t)) return true;
        return numbered && key(t).localeCompare(key(section.title), "en", { numeric: true }) > 0;
      });
      kept = before < 0
        ? [...kept, markdown + "\n\n"]
        : [...kept.slice(0, before), markdown + "\n\n", ...kept.slice(before)];
    }
  }
  return head + kept.join("") + findings.map((f) => f.trimEnd() + "\n\n").join("").trimEnd() + "\n";
}

if (import.meta.main) Deno.exit(await main());
