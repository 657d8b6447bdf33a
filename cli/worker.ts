// Pull-mode worker: claims batches from the embedding_jobs queue and applies
// them with the same core as the embed function. LISTEN only nudges; polling
// is the fallback, so a lost notification delays work by at most one poll
// interval. Each concurrency slot makes at most one claim at a time.
import postgres from "postgres";
import { processBatch } from "../supabase/functions/_shared/core.ts";
import { isConnectionError } from "../supabase/functions/_shared/db_errors.ts";
import { surviveDatabaseDisconnects } from "../supabase/functions/_shared/postgres_guard.ts";
import { BinaryWrites } from "../supabase/functions/_shared/sql/write.ts";
import {
  checkJobMessage,
  type Job,
  jobsOf,
  NOTIFY_CHANNEL,
  parseJobJson,
  QUEUE_NAME,
  type RefusedJob,
} from "../supabase/functions/_shared/jobs.ts";
import type { CoreSettings } from "../supabase/functions/_shared/settings.ts";

export interface WorkerOptions {
  dbUrl: string;
  once: boolean;
  concurrency: number;
  pollIntervalMs: number;
  batchSize: number;
  /** Visibility timeout of a claim, seconds: an unfinished batch reappears after it. */
  visibilitySeconds: number;
  /** Restrict to these tables (`name` or `schema.name`); empty = all. */
  tables: string[];
  settings: CoreSettings;
  /** Called after each batch and when idle, for progress output. */
  onBatch?: (event: BatchEvent) => void;
  log?: (line: string) => void;
  /** Stop claiming when aborted; in-flight batches finish or are handed back. */
  signal?: AbortSignal;
  /** How long in-flight batches may run after the stop signal before provider calls are aborted. */
  shutdownGraceMs?: number;
}

export interface BatchEvent {
  jobs: number;
  completed: number;
  failed: number;
  providerCalls: number;
  /** Chunks written for chunked targets (rows of their side tables). */
  chunks: number;
  durationMs: number;
  totalCompleted: number;
  totalChunks: number;
}

export interface WorkerResult {
  batches: number;
  completed: number;
  failed: number;
  /** Chunks written for chunked targets. */
  chunks: number;
}

interface Message {
  msg_id: string;
  read_ct: number;
  /** As text: parseJobJson keeps ids exact that a JS number cannot hold. */
  message: string | null;
}

/** Conditions for util._read_jobs: one per table filter, or a single unconditional read. */
function claimFilters(tables: string[]): Record<string, string>[] {
  if (tables.length === 0) return [{}];
  return tables.map((t): Record<string, string> => {
    const dot = t.indexOf(".");
    return dot >= 0 ? { schema: t.slice(0, dot), table: t.slice(dot + 1) } : { table: t };
  });
}

/** Seconds until the jobs of a batch cut off by a lost connection are visible again. */
const INTERRUPTED_RETRY_SECONDS = 2;

/** Waits `ms` or until one of `wakers` resolves, whichever is first. */
function sleep(ms: number, ...wakers: Promise<void>[]): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    new Promise<void>((r) => (timer = setTimeout(r, ms))),
    ...wakers,
  ]).finally(() => clearTimeout(timer));
}

export async function runWorker(options: WorkerOptions): Promise<WorkerResult> {
  const log = options.log ?? (() => {});
  const newClient = () =>
    postgres(options.dbUrl, {
      max: options.concurrency + 1,
      onnotice: () => {},
      idle_timeout: 60,
      connect_timeout: 10,
      connection: { application_name: "autoembed worker" },
    });
  let sql = newClient();
  // The write's vectors go in binary through node-postgres (one connection
  // per slot); the rest through postgres.js.
  const binaryWrites = options.settings.textVectors ? undefined : new BinaryWrites(options.dbUrl, {
    max: options.concurrency,
    applicationName: "autoembed worker",
  });
  const result: WorkerResult = { batches: 0, completed: 0, failed: 0, chunks: 0 };
  const filters = claimFilters(options.tables);
  let filterTurn = 0;
  const stopping = options.signal;
  const abortProviders = new AbortController();
  let graceTimer: ReturnType<typeof setTimeout> | undefined;
  // Every sleep (poll wait, reconnect backoff) races this, so a stop during a
  // database outage is not held up by a backoff of up to 45 s.
  const stopped = new Promise<void>((resolve) => {
    const onStop = () => {
      graceTimer = setTimeout(() => abortProviders.abort(), options.shutdownGraceMs ?? 10_000);
      resolve();
    };
    if (stopping?.aborted) onStop();
    else stopping?.addEventListener("abort", onStop, { once: true });
  });

  // Wake-ups: every NOTIFY resolves the current promise, which all idle slots await.
  let wakeResolve: () => void = () => {};
  let wake = new Promise<void>((r) => (wakeResolve = r));
  function nudge() {
    wakeResolve();
    wake = new Promise<void>((r) => (wakeResolve = r));
  }
  let listener = null as { unlisten(): Promise<void> } | null;
  const listen = async () => {
    if (!options.once) listener = await sql.listen(NOTIFY_CHANNEL, () => nudge(), () => nudge());
  };
  try {
    await listen();
  } catch (err) {
    await Promise.all([sql.end({ timeout: 1 }), binaryWrites?.end()]);
    throw err;
  }

  /** Replaces the pool: queries on the old one fail, their batches come back after the vt. */
  let lastReset = 0;
  function resetClient(reason: string) {
    if (Date.now() - lastReset < 200) return;
    lastReset = Date.now();
    log(JSON.stringify({ event: "client_reset", reason: reason.slice(0, 200) }));
    const old = sql;
    sql = newClient();
    old.end({ timeout: 0 }).catch(() => {});
    listen().catch(() => nudge());
  }
  // postgres.js can throw from a timer, or reject a promise nobody holds, when
  // a connection dies in the middle of a write (seen on Postgres restarts).
  // Only that is absorbed, with a fresh pool; any other uncaught error is a
  // bug and still ends the process.
  const unguard = surviveDatabaseDisconnects(
    log,
    (error) => resetClient(`disconnect ${(error as { code?: string }).code ?? "closed_socket"}`),
  );

  log(JSON.stringify({
    event: "started",
    listening: listener !== null,
    concurrency: options.concurrency,
    batchSize: options.batchSize,
    pollIntervalMs: options.pollIntervalMs,
  }));

  /**
   * One claim of about --batch-size rows (util._read_jobs: pgmq.read sized
   * by rows, a packed message expanded into its rows): the jobs read and the
   * malformed messages among them (both empty when there was nothing to
   * read). The core records the refused ones with the batch's other
   * failures, so they are dead-lettered at once.
   */
  async function claim(): Promise<{ jobs: Job[]; refused: RefusedJob[] }> {
    const filter = filters[filterTurn++ % filters.length];
    const rows = await sql<Message[]>`
      select msg_id, read_ct, message::text as message
        from util._read_jobs(${options.visibilitySeconds}, ${options.batchSize}, ${
      sql.json(filter)
    })`;
    const jobs: Job[] = [];
    const refused: RefusedJob[] = [];
    for (const row of rows) {
      const checked = checkJobMessage(row.message === null ? null : parseJobJson(row.message));
      if ("job" in checked) {
        jobs.push(...jobsOf(checked.job, Number(row.msg_id), row.read_ct));
      } else refused.push({ jobId: Number(row.msg_id), error: checked.error });
    }
    return { jobs, refused };
  }

  /**
   * The pipeline's background work (util.maintain_embeddings: content
   * function changes, sweeps, model switches), at most once per poll
   * interval across slots, and always when --once finds the queue empty.
   * Returns the jobs it enqueued.
   */
  let lastMaintained = 0;
  let maintaining: Promise<number> | null = null;
  function maintain(force = false): Promise<number> {
    if (maintaining) return maintaining;
    if (!force && Date.now() - lastMaintained < options.pollIntervalMs) return Promise.resolve(0);
    lastMaintained = Date.now();
    maintaining = sql<{ n: string }[]>`select util.maintain_embeddings() as n`
      .then(([row]) => Number(row.n))
      .finally(() => maintaining = null);
    return maintaining;
  }

  let consecutiveErrors = 0;

  /**
   * Jobs of batches a lost connection interrupted: they would stay hidden for
   * the rest of their visibility timeout (2 minutes by default), so once the
   * database answers again they are made visible in a few seconds instead.
   * Whatever the interrupted batch did write stays (compare-and-set, so a
   * rerun finds it fresh at no provider cost).
   */
  const interrupted = new Set<number>();
  async function handBackInterrupted(): Promise<void> {
    if (interrupted.size === 0) return;
    const ids = [...interrupted];
    await sql`select pgmq.set_vt(${QUEUE_NAME}, id::bigint, ${INTERRUPTED_RETRY_SECONDS})
                from jsonb_array_elements_text(${JSON.stringify(ids)}::text::jsonb) id`;
    for (const id of ids) interrupted.delete(id);
    log(JSON.stringify({ event: "handed_back_interrupted", jobs: ids.length }));
  }

  async function slot(): Promise<void> {
    while (!stopping?.aborted) {
      let jobs: Job[];
      let refused: RefusedJob[];
      try {
        await handBackInterrupted();
        await maintain();
        ({ jobs, refused } = await claim());
        consecutiveErrors = 0;
      } catch (err) {
        const unreachable = isConnectionError(err);
        // --once is a batch job: a failing statement is a bug to report, not to wait out.
        if (!unreachable && options.once) throw err;
        // Reconnect with jittered exponential backoff; postgres.js reconnects on the next query.
        consecutiveErrors++;
        // A pool whose connections ended keeps failing; start afresh.
        if (consecutiveErrors >= 2) resetClient(`repeated ${(err as { code?: string }).code}`);
        const delay = Math.min(30_000, 250 * 2 ** Math.min(consecutiveErrors, 7)) *
          (0.5 + Math.random());
        log(
          JSON.stringify({
            event: unreachable ? "db_unavailable" : "claim_failed",
            retryInMs: Math.round(delay),
            code: (err as { code?: string }).code,
            message: unreachable ? undefined : String((err as Error)?.message).slice(0, 200),
          }),
        );
        await sleep(delay, stopped);
        continue;
      }
      if (jobs.length === 0 && refused.length === 0) {
        // --once: what was there is done (jobs waiting out a retry backoff are not
        // "there"), once the background work has nothing more to enqueue.
        if (options.once) {
          try {
            if (await maintain(true) > 0) continue;
            // A sweep whose last slice needed nothing is still a sweep: finish it.
            const [{ sweeping }] = await sql<{ sweeping: boolean }[]>`
              select exists (select from util.embedding_targets
                              where sweep_started_at is not null) as sweeping`;
            if (sweeping) continue;
          } catch (err) {
            if (!isConnectionError(err)) throw err;
            continue;
          }
          return;
        }
        options.onBatch?.({
          jobs: 0,
          completed: 0,
          failed: 0,
          providerCalls: 0,
          chunks: 0,
          durationMs: 0,
          totalCompleted: result.completed,
          totalChunks: result.chunks,
        });
        await sleep(options.pollIntervalMs, wake, stopped);
        continue;
      }
      try {
        const batch = await processBatch(sql, jobs, {
          refused,
          providerFor: options.settings.providerFor,
          signal: abortProviders.signal,
          truncate: options.settings.truncate,
          providerConcurrency: options.settings.providerConcurrency,
          binaryWrites,
        });
        result.batches++;
        result.completed += batch.completedRows;
        result.chunks += batch.stats.chunks;
        result.failed += batch.failedJobs.length;
        options.onBatch?.({
          jobs: jobs.length + refused.length,
          completed: batch.completedRows,
          failed: batch.failedJobs.length,
          providerCalls: batch.stats.providerCalls,
          chunks: batch.stats.chunks,
          durationMs: batch.stats.durationMs,
          totalCompleted: result.completed,
          totalChunks: result.chunks,
        });
      } catch (err) {
        const unreachable = isConnectionError(err);
        if (!unreachable && options.once) throw err;
        // Unreachable: its jobs are handed back once the database answers;
        // otherwise they reappear after the visibility timeout. Nothing is lost.
        if (unreachable) { for (const job of jobs) interrupted.add(job.jobId); }
        log(
          JSON.stringify({
            event: "batch_interrupted",
            jobs: jobs.length + refused.length,
            code: (err as { code?: string }).code,
            message: unreachable ? undefined : String((err as Error)?.message).slice(0, 200),
          }),
        );
      }
    }
  }

  try {
    await Promise.all(Array.from({ length: options.concurrency }, () => slot()));
  } finally {
    await listener?.unlisten().catch(() => {});
    unguard();
    clearTimeout(graceTimer);
    await Promise.all([sql.end({ timeout: 5 }), binaryWrites?.end()]);
  }
  return result;
}
