// Shared pieces of the fault-injection suite (tests/reliability/): the size
// switch between the default and the full run, figures printed as one
// `RELIABILITY {json}` line per scenario, a seeded PRNG, and a drain loop that
// survives a database restart.
import { providerEnv, spawnWorker, type WorkerProcess } from "../../devtools/cli.ts";
import type { ConsistencyReport } from "./consistency.ts";
import type { Sql } from "../../devtools/db.ts";
import { type FakeOpenAI, startFakeOpenAI } from "../../devtools/fake_openai.ts";
import { type Pipeline, startPipeline } from "../../devtools/pipeline.ts";
import { waitFor } from "../../devtools/wait.ts";
import { sleep } from "../../supabase/functions/_shared/sleep.ts";

/** AUTOEMBED_FULL_RELIABILITY=1 (`deno task reliability`) selects the full sizes. */
export const FULL = Deno.env.get("AUTOEMBED_FULL_RELIABILITY") === "1";

/** `small` in the default run (part of `npm test`), `full` in the full run. */
export function sized<T>(small: T, full: T): T {
  return FULL ? full : small;
}

/** Prints one scenario's figures as a single collectable line. */
export function report(
  scenario: string,
  figures: Record<string, unknown>,
  consistency?: ConsistencyReport,
): void {
  const checked = consistency
    ? {
      rowsChecked: consistency.rowsChecked,
      rowsWrong: consistency.rowsWrong,
      jobsLost: consistency.jobsLost,
      jobsTracked: consistency.jobsTracked,
      duplicateInputs: consistency.duplicateInputs,
    }
    : {};
  console.log(
    `RELIABILITY ${
      JSON.stringify({ scenario, mode: FULL ? "full" : "default", ...figures, ...checked })
    }`,
  );
}

/**
 * The seed of a scenario's randomness: AUTOEMBED_RELIABILITY_SEED when set
 * (to replay a failure), otherwise fresh. Printed by the caller.
 */
export function seed(): number {
  const given = Deno.env.get("AUTOEMBED_RELIABILITY_SEED");
  if (given !== undefined && given !== "") {
    const value = Number(given);
    if (!Number.isInteger(value) || value < 0 || value >= 2 ** 32) {
      throw new Error(`AUTOEMBED_RELIABILITY_SEED must be a whole number below 2^32, got ${given}`);
    }
    return value;
  }
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

/** mulberry32: a small seeded PRNG; floats in [0, 1). */
export function seededRandom(seedValue: number): () => number {
  let a = seedValue >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface DrainOptions {
  /** Push mode: call util.process_embeddings like the cron tick when no call is in flight. */
  push?: { batchSize?: number; maxRequests?: number; timeoutMs?: number };
  /** Give up after this long (a hung drain fails the test instead of hanging it). */
  timeoutMs?: number;
  /** Describes the state for the timeout message. */
  what?: string;
}

/**
 * Waits until the queue is empty and no push call is in flight (a lease whose
 * call pg_net has seen end is not). Connection errors (a restarting server)
 * are waited out. Returns the time it took, ms.
 */
export async function drain(sql: Sql, options: DrainOptions = {}): Promise<number> {
  const started = performance.now();
  let last = "";
  await waitFor(async () => {
    try {
      const [row] = await sql`
        select (select count(*) from pgmq.q_embedding_jobs)::int as queued,
               (select count(*) from util.embedding_requests r
                 where r.expires_at > now()
                   and not exists (select from net._http_response h where h.id = r.request_id)
               )::int as in_flight`;
      last = JSON.stringify(row);
      if (row.queued === 0 && row.in_flight === 0) return true;
      if (options.push && row.in_flight === 0) {
        await sql`select util.process_embeddings(${options.push.batchSize ?? 100},
                    ${options.push.maxRequests ?? 4}, ${options.push.timeoutMs ?? 10_000})`;
      }
    } catch (err) {
      last = `error: ${(err as Error).message}`;
    }
    return false;
  }, {
    what: `${options.what ?? "the queue"} to drain`,
    timeoutMs: options.timeoutMs ?? 120_000,
    describe: () => `last state ${last}`,
  });
  return Math.round(performance.now() - started);
}

/**
 * Calls util.process_embeddings every `intervalMs` until stopped, like the
 * pg_cron tick (errors, e.g. during a restart, are ignored like a failed tick).
 */
export function cronTick(
  sql: Sql,
  intervalMs: number,
  push: { batchSize?: number; maxRequests?: number; timeoutMs?: number } = {},
): { stop(): Promise<void> } {
  let running = true;
  const loop = (async () => {
    while (running) {
      await sql`select util.process_embeddings(${push.batchSize ?? 100},
                  ${push.maxRequests ?? 4}, ${push.timeoutMs ?? 10_000})`.catch(() => {});
      await sleep(intervalMs);
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
    },
  };
}

/** How the queue is drained: the push path (Supabase) or pull workers. */
export type Mode = "push" | "worker";

export interface Drive {
  mode: Mode;
  fake: FakeOpenAI;
  /** Push mode only: the pipeline (function runtime, dispatcher). */
  pipeline?: Pipeline;
  /** Worker mode only: the worker subprocesses. */
  workers: WorkerProcess[];
  stop(): Promise<void>;
}

export interface DriveOptions {
  latencyMs?: number;
  /** Extra environment of the function / workers (e.g. EMBEDDING_TIMEOUT_MS). */
  env?: Record<string, string>;
  batchSize?: number;
  /** Push: calls in flight; worker: --concurrency of each worker. */
  parallel?: number;
  /** Push: process_embeddings' timeout_milliseconds; worker: --visibility-timeout (ms). */
  timeoutMs?: number;
  /** Worker mode: how many worker processes (default 1). */
  workers?: number;
  /** Push mode: cron tick interval (default 200 ms). */
  tickMs?: number;
}

/** Starts draining in `mode` against the fake provider; stop() tears everything down. */
export async function startDrive(
  mode: Mode,
  sql: Sql,
  dbUrl: string,
  options: DriveOptions = {},
): Promise<Drive> {
  const batchSize = options.batchSize ?? 50;
  const parallel = options.parallel ?? 2;
  const timeoutMs = options.timeoutMs ?? 10_000;
  if (mode === "push") {
    const pipeline = await startPipeline(sql, dbUrl, {
      latencyMs: options.latencyMs,
      env: { EMBEDDING_TIMEOUT_MS: "10000", ...options.env },
    });
    const tick = cronTick(sql, options.tickMs ?? 200, {
      batchSize,
      maxRequests: parallel,
      timeoutMs,
    });
    return {
      mode,
      fake: pipeline.fake,
      pipeline,
      workers: [],
      async stop() {
        await tick.stop();
        await pipeline.stop();
      },
    };
  }
  const fake = await startFakeOpenAI({ latencyMs: options.latencyMs ?? 0 });
  const env = providerEnv(fake, dbUrl, options.env);
  const args = workerArgs(batchSize, parallel, timeoutMs);
  const workers = Array.from({ length: options.workers ?? 1 }, () => spawnWorker(args, env));
  await Promise.all(workers.map((w) => w.waitForLine(/"event":"started"/)));
  return {
    mode,
    fake,
    workers,
    async stop() {
      await Promise.all(workers.map((w) => w.stop("SIGKILL")));
      await fake.close();
    },
  };
}

/** Arguments of a worker that polls often and hides claims for `timeoutMs`. */
export function workerArgs(batchSize: number, concurrency: number, timeoutMs: number): string[] {
  return [
    "--batch-size",
    String(batchSize),
    "-c",
    String(concurrency),
    "--poll-interval",
    "200ms",
    "--visibility-timeout",
    `${Math.max(1, Math.ceil(timeoutMs / 1000))}s`,
  ];
}

/** Single-row inserts (one transaction each) for `ms`; returns how many succeeded and failed. */
export async function insertFor(sql: Sql, ms: number, tag: string) {
  const until = performance.now() + ms;
  let ok = 0;
  let failed = 0;
  const latencies: number[] = [];
  while (performance.now() < until) {
    const started = performance.now();
    try {
      await sql`insert into documents (title, content) values (${`${tag} ${ok}`}, ${`written ${tag} ${ok}`})`;
      ok++;
      latencies.push(performance.now() - started);
    } catch {
      failed++;
    }
  }
  latencies.sort((a, b) => a - b);
  const p = (q: number) =>
    Number((latencies[Math.floor(q * (latencies.length - 1))] ?? 0).toFixed(2));
  return { ok, failed, perSecond: Math.round(ok / (ms / 1000)), p50Ms: p(0.5), p99Ms: p(0.99) };
}
