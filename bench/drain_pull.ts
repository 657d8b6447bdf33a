// `deno run -A bench/drain_pull.ts [sizes...] [--reps N] [-c C] [--v8-flags F]
// [--env K=V]... [--ab-env K=V]... [--task] [--memory] [--cpu-prof DIR] [--hnsw]`: the pull drain
// of scenario 1 alone
// (bench/scenarios/drain.ts), with the V8 heap limits `deno task autoembed`
// gives the worker, or (--task) started by `deno task autoembed worker`
// exactly as users run it, so peak RSS is the one users see; --memory
// prints the worker's memory at its peak (bench/worker_memory.ts). Prints each
// run's rows/s, CPU per 1,000 rows and peak RSS; for comparing a change with
// its parent back to back. `--v8-flags` given more than once compares heap
// settings: within each rep every setting runs in turn (interleaved A/B),
// and each gets its own median line; so does each `--ab-env` (the first
// flags plus that variable, e.g. EMBEDDING_TEXT_VECTORS=true against the
// binary write).
import { parseArgs } from "node:util";
import { stopCluster } from "../local/cluster.ts";
import { fmt, median } from "./report.ts";
import {
  drainPull,
  drainPush,
  type DrainResult,
  print,
  WORKER_V8_FLAGS,
} from "./scenarios/drain.ts";
import {
  type BenchContext,
  buildTemplate,
  dropBenchDatabases,
  loadAverage,
  prepareStack,
  PROVIDER_LATENCY_MS,
  startProvider,
} from "./stack.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  options: {
    reps: { type: "string", default: "3" },
    c: { type: "string", short: "c", default: "4" },
    // To try other heap limits than deno.json's; given more than once, the settings take turns
    // within each rep (A/B interleaved back to back) and each gets its own summary line.
    "v8-flags": { type: "string", multiple: true, default: [WORKER_V8_FLAGS] },
    // Extra environment of the worker, NAME=VALUE (e.g. glibc's MALLOC_ARENA_MAX=2).
    env: { type: "string", multiple: true, default: [] },
    // A setting to compare, interleaved with the others: the first --v8-flags plus NAME=VALUE.
    "ab-env": { type: "string", multiple: true, default: [] },
    // Start the worker as users do, `deno task autoembed worker` (deno.json's V8 flags).
    task: { type: "boolean", default: false },
    // Run the worker inside bench/worker_memory.ts (deno.json's V8 flags): where its memory goes.
    memory: { type: "boolean", default: false },
    // Write a V8 CPU profile of the worker (deno.json's V8 flags) into this directory.
    "cpu-prof": { type: "string" },
    // An HNSW index on the embedding column, as real tables have.
    hnsw: { type: "boolean", default: false },
    // Push mode instead (process_embeddings, the pg_net shim, the embed function), with each
    // --ab-env given to the function: e.g. the function's binary write against its text one.
    push: { type: "boolean", default: false },
  },
  allowPositionals: true,
});
const sizes = positionals.length ? positionals.map(Number) : [10_000, 100_000];
const reps = Number(values.reps);
const concurrency = Number(values.c);
const log = (line: string) => console.log(line);
const startedCluster = await prepareStack((line) => log(`setup: ${line}`));
const fake = await startProvider();
const ctx: BenchContext = { fake, log, quick: false };
try {
  await buildTemplate();
  const pair = (e: string) => [e.slice(0, e.indexOf("=")), e.slice(e.indexOf("=") + 1)];
  const settings = [
    ...values["v8-flags"].map((flags) => ({ flags, env: [] as string[], label: "" })),
    ...values["ab-env"].map((e) => ({ flags: values["v8-flags"][0], env: [e], label: ` ${e}` })),
  ];
  for (const size of sizes) {
    const runsOf = settings.map((): DrainResult[] => []);
    for (let i = 0; i < reps; i++) {
      for (const [k, { flags, env, label }] of settings.entries()) {
        const r = values.push
          ? await drainPush(ctx, size, Object.fromEntries([...values.env, ...env].map(pair)))
          : await drainPull(ctx, size, concurrency, PROVIDER_LATENCY_MS, {
            ...(values.task ? {} : { DENO_V8_FLAGS: flags }),
            ...Object.fromEntries([...values.env, ...env].map(pair)),
          }, {
            asTask: values.task,
            hnsw: values.hnsw,
            command: values.memory
              ? ["run", "-A", `--v8-flags=${flags}`, "bench/worker_memory.ts"]
              : values["cpu-prof"]
              ? [
                "run",
                "-A",
                "--cpu-prof",
                `--cpu-prof-dir=${values["cpu-prof"]}`,
                `--v8-flags=${flags}`,
                "cli/autoembed.ts",
              ]
              : undefined,
          });
        const load = await loadAverage();
        log(`--v8-flags=${flags}${label} (load ${load}):`);
        print(ctx, r);
        runsOf[k].push(r);
      }
    }
    const load = await loadAverage();
    for (const [k, runs] of runsOf.entries()) {
      log(
        `${size} rows, -c ${concurrency}, ${
          values.task ? "deno.json's flags" : `--v8-flags=${settings[k].flags}`
        }${settings[k].label}: median ${fmt(median(runs.map((r) => r.rate)))} rows/s ` +
          `(${runs.map((r) => fmt(r.rate)).join(", ")}); pipeline CPU/1k ${
            fmt(median(runs.map((r) => r.cpuPer1000!.pipeline)))
          } ms, Postgres CPU/1k ${fmt(median(runs.map((r) => r.cpuPer1000!.postgres)))} ms; ` +
          `peak RSS max ${fmt(Math.max(...runs.map((r) => r.peakRssMb ?? 0)))} MB` +
          (values.task
            ? ` (with the task runner ${
              fmt(Math.max(...runs.map((r) => r.peakTreeRssMb ?? 0)))
            } MB)`
            : "") +
          `; load ${load}`,
      );
    }
  }
} finally {
  await fake.close();
  await dropBenchDatabases();
  if (startedCluster) await stopCluster();
}
