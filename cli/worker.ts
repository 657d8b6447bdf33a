// Pull-mode worker: claims batches from the embedding_jobs queue and applies
// them with the same core as the embed function. LISTEN only nudges; polling
// is the fallback, so a lost notification delays work by at most one poll
// interval. Each concurrency slot makes at most one claim at a time. The
// queue is reached through the core's queue module, failures are read by the
// recovery policy (recovery.ts), both shared with the embed function.
import postgres from "postgres";
import { type BatchResult, processBatch } from "../supabase/functions/_shared/core.ts";
import { errorCode, isConnectionError } from "../supabase/functions/_shared/db_errors.ts";
import { type Job, NOTIFY_CHANNEL, type RefusedJob } from "../supabase/functions/_shared/jobs.ts";
import { surviveDatabaseDisconnects } from "../supabase/functions/_shared/postgres_guard.ts";
import { backoffMs, CLAIM_RETRY } from "../supabase/functions/_shared/recovery.ts";
import { claimJobs, requeueJobs } from "../supabase/functions/_shared/sql/queue.ts";
import { BinaryWrites } from "../supabase/functions/_shared/sql/write.ts";
import { type BatchTickResult, runBatchTick } from "../supabase/functions/_shared/batch_tick.ts";
import {
  buildTwinIndexes,
  type TwinIndexResult,
} from "../supabase/functions/_shared/twin_indexes.ts";
import type { CoreSettings } from "../supabase/functions/_shared/settings.ts";
import type { WorkerMetrics } from "./metrics.ts";
import { Capture } from "./capture.ts";

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
  /** Prometheus metrics (cli/metrics.ts): each batch is counted there. */
  metrics?: WorkerMetrics;
  /** Called after each batch and when idle, for progress output. */
  onBatch?: (event: BatchEvent) => void;
  log?: (line: string) => void;
  /** Stop claiming when aborted; in-flight batches finish or are handed back. */
  signal?: AbortSignal;
  /** How long in-flight batches may run after the stop signal before provider calls are aborted. */
  shutdownGraceMs?: number;
  /** Follow logical capture's replication slot when logical targets exist (capture.ts); under --once, until caught up. */
  capture?: boolean;
  /** The slot to follow (default: the setting capture_slot). */
  slot?: string;
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

/** Conditions for util._read_jobs: one per table filter, or a single unconditional read. */
export function claimFilters(tables: string[]): Record<string, string>[] {
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

/** A promise that idle slots await, resolved by every NOTIFY (and then renewed). */
class Wakeup {
  #resolve: () => void = () => {};
  promise = this.#renew();

  #renew(): Promise<void> {
    return new Promise<void>((r) => (this.#resolve = r));
  }

  nudge = () => {
    this.#resolve();
    this.promise = this.#renew();
  };
}

type Claimed = { jobs: Job[]; refused: RefusedJob[] };

/** One worker process: its pools, its wake-ups, and the slots that claim and process. */
class Worker {
  readonly result: WorkerResult = { batches: 0, completed: 0, failed: 0, chunks: 0 };
  readonly #log: (line: string) => void;
  #sql: postgres.Sql;
  readonly #binaryWrites?: BinaryWrites;
  readonly #filters: Record<string, string>[];
  #filterTurn = 0;
  readonly #wake = new Wakeup();
  #listener: { unlisten(): Promise<void> } | null = null;
  /** Resolves when the stop signal came: every sleep races it. */
  readonly stopped: Promise<void>;
  readonly #abortProviders = new AbortController();
  #graceTimer?: ReturnType<typeof setTimeout>;
  #lastReset = 0;
  #lastMaintained = 0;
  #maintaining: Promise<number> | null = null;
  #batching: Promise<BatchTickResult | null> | null = null;
  /** A run of index twin builds (twin_indexes.ts), beside the slots; one at a time. */
  #building: Promise<TwinIndexResult | null> | null = null;
  readonly #stopBuilding = new AbortController();
  #consecutiveErrors = 0;
  /** Jobs of batches a lost connection interrupted, handed back once the database answers. */
  readonly #interrupted = new Set<number>();
  /** Logical capture: follows the slot when this worker gets it (null: not asked to). */
  readonly #capture: Capture | null;

  constructor(readonly options: WorkerOptions) {
    this.#log = options.log ?? (() => {});
    this.#sql = this.#newClient();
    // The write's vectors go in binary through node-postgres (one connection
    // per slot); the rest through postgres.js.
    this.#binaryWrites = options.settings.textVectors
      ? undefined
      : new BinaryWrites(options.dbUrl, {
        max: options.concurrency,
        applicationName: "autoembed worker",
      });
    this.#filters = claimFilters(options.tables);
    this.#capture = options.capture
      ? new Capture({
        dbUrl: options.dbUrl,
        sql: () => this.#sql,
        slot: options.slot,
        log: (event) => this.#log(JSON.stringify(event)),
        onJobs: this.#wake.nudge,
      })
      : null;
    this.stopped = new Promise<void>((resolve) => {
      const onStop = () => {
        this.#graceTimer = setTimeout(
          () => this.#abortProviders.abort(),
          options.shutdownGraceMs ?? 10_000,
        );
        resolve();
      };
      if (options.signal?.aborted) onStop();
      else options.signal?.addEventListener("abort", onStop, { once: true });
    });
  }

  get stopping(): boolean {
    return this.options.signal?.aborted ?? false;
  }

  #newClient(): postgres.Sql {
    return postgres(this.options.dbUrl, {
      max: this.options.concurrency + 1,
      onnotice: () => {},
      idle_timeout: 60,
      connect_timeout: 10,
      connection: { application_name: "autoembed worker" },
    });
  }

  async listen(): Promise<void> {
    if (this.options.once) return;
    this.#listener = await this.#sql.listen(NOTIFY_CHANNEL, this.#wake.nudge, this.#wake.nudge);
  }

  get listening(): boolean {
    return this.#listener !== null;
  }

  /** Replaces the pool: queries on the old one fail, their batches come back after the vt. */
  resetClient(reason: string): void {
    if (Date.now() - this.#lastReset < 200) return;
    this.#lastReset = Date.now();
    this.#log(JSON.stringify({ event: "client_reset", reason: reason.slice(0, 200) }));
    const old = this.#sql;
    this.#sql = this.#newClient();
    old.end({ timeout: 0 }).catch(() => {});
    this.listen().catch(() => this.#wake.nudge());
  }

  /** One claim of about --batch-size rows, the table filters taken in turn. */
  claim(): Promise<Claimed> {
    return claimJobs(this.#sql, {
      visibilitySeconds: this.options.visibilitySeconds,
      maxRows: this.options.batchSize,
      filter: this.#filters[this.#filterTurn++ % this.#filters.length],
    });
  }

  /**
   * The pipeline's background work (util.maintain_embeddings: content
   * function changes, sweeps, model switches), at most once per poll
   * interval across slots, and always when `force`. When a model change's
   * index twins are due, starts their build beside the slots
   * (buildTwinIndexes), which never holds up the drain. Returns the jobs it
   * enqueued.
   */
  maintain(force = false): Promise<number> {
    if (this.#maintaining) return this.#maintaining;
    if (!force && Date.now() - this.#lastMaintained < this.options.pollIntervalMs) {
      return Promise.resolve(0);
    }
    this.#lastMaintained = Date.now();
    void this.tickBatches();
    if (!this.options.once) {
      this.#capture?.ensure().catch((err) => {
        this.#log(JSON.stringify({
          event: "capture_check_failed",
          code: errorCode(err),
          message: String((err as Error)?.message).slice(0, 200),
        }));
      });
    }
    this.#maintaining = this.#sql<{ n: string; due: boolean }[]>`
      select util.maintain_embeddings() as n, util._twin_indexes_due() as due`
      .then(([row]) => {
        if (row.due) this.buildIndexes();
        return Number(row.n);
      })
      .finally(() => this.#maintaining = null);
    return this.#maintaining;
  }

  /** Starts a run of index twin builds unless one runs; its promise (null: it failed, logged). */
  buildIndexes(): Promise<TwinIndexResult | null> {
    if (this.#building) return this.#building;
    const log = (event: Record<string, unknown>) => this.#log(JSON.stringify(event));
    this.#building = buildTwinIndexes(this.options.dbUrl, {
      log,
      applicationName: "autoembed worker",
      signal: this.#stopBuilding.signal,
    })
      .catch((err) => {
        if (!this.#stopBuilding.signal.aborted) {
          log({
            event: "index_twins_interrupted",
            code: errorCode(err),
            message: String((err as Error)?.message).slice(0, 200),
          });
        }
        return null;
      })
      .finally(() => this.#building = null);
    return this.#building;
  }

  /**
   * The batch lane's tick (batch_tick.ts: submits staged batches, polls
   * open ones, applies those that ended), beside the drain: one at a time,
   * started with the background work. A failure is reported and tried at
   * the next poll. --once submits what it staged before it exits; its
   * parked rows are written by a later run, once their batch ended.
   */
  tickBatches(submitStaged = false): Promise<BatchTickResult | null> {
    if (this.#batching) return this.#batching;
    const settings = this.options.settings;
    this.#batching = runBatchTick(this.#sql, {
      accountFor: settings.batchAccountFor,
      submitStaged,
      signal: this.#abortProviders.signal,
      log: (event) => this.#log(JSON.stringify(event)),
    }).catch((err) => {
      this.#log(JSON.stringify({
        event: "batch_tick_failed",
        code: errorCode(err),
        message: String((err as Error)?.message).slice(0, 200),
      }));
      return null;
    }).finally(() => this.#batching = null);
    return this.#batching;
  }

  /**
   * --once: whether work is left that a claim may yet find (jobs waiting out
   * a backoff, or behind an open circuit, are not "there"). "now": the
   * background work enqueued more, or a sweep of this worker's tables whose
   * last slice needed nothing goes on (the queue has room for its next
   * slice). "later": such a sweep waits for the queue to shorten, and what
   * fills it is hidden (in flight elsewhere, or waiting out a backoff), so
   * asking again at once would only spin. "done": nothing left. A sweep of a
   * target whose table or store is gone is no work (util.maintain_embeddings
   * retires it).
   */
  async moreToDo(): Promise<"now" | "later" | "done"> {
    if (await this.maintain(true) > 0) return "now";
    // What this run staged goes now: --once does not wait batch_stage_seconds.
    // A batch that ended released its parked jobs: they are work now.
    const running = (await this.#batching)?.ended ?? 0;
    if (running + ((await this.tickBatches(true))?.ended ?? 0) > 0) return "now";
    // A model change's index twins: built, then switched; a run that built
    // nothing (it failed, recorded) is not tried again, so --once ends.
    const building = this.#building;
    if (building && ((await building)?.built ?? 0) > 0) return "now";
    const filters = JSON.stringify(this.#filters);
    const [{ sweeping, room }] = await this.#sql<{ sweeping: boolean; room: boolean }[]>`
      select exists (select from util._target_config c
                       join util.embedding_targets t on t.id = c.id
                       join jsonb_array_elements(${filters}::text::jsonb) f
                         on coalesce(f ->> 'table', c.table_name) = c.table_name
                        and coalesce(f ->> 'schema', c.schema_name) = c.schema_name
                      where t.sweep_started_at is not null) as sweeping,
             util._queued_rows(s.value::int) < s.value::int as room
        from util.settings s where s.name = 'sweep_slice_rows'`;
    return !sweeping ? "done" : room ? "now" : "later";
  }

  /**
   * Makes the jobs of batches a lost connection interrupted visible again in
   * a few seconds (instead of after their visibility timeout), with their
   * attempt back. Whatever the batch did write stays (compare-and-set, so a
   * rerun finds it fresh at no provider cost).
   */
  async handBackInterrupted(): Promise<void> {
    if (this.#interrupted.size === 0) return;
    const ids = [...this.#interrupted];
    await requeueJobs(this.#sql, ids, INTERRUPTED_RETRY_SECONDS, true);
    for (const id of ids) this.#interrupted.delete(id);
    this.#log(JSON.stringify({ event: "handed_back_interrupted", jobs: ids.length }));
  }

  /** Applies a claimed batch with the core, which settles it. */
  process({ jobs, refused }: Claimed): Promise<BatchResult> {
    const settings = this.options.settings;
    return processBatch(this.#sql, jobs, {
      refused,
      providerFor: settings.providerFor,
      signal: this.#abortProviders.signal,
      truncate: settings.truncate,
      providerConcurrency: settings.providerConcurrency,
      binaryWrites: this.#binaryWrites,
      batchLane: (model, dimensions) => settings.batchAccountFor(model, dimensions) !== null,
    });
  }

  /** Counts a finished batch and reports it. */
  record(claimed: Claimed, batch: BatchResult): void {
    const result = this.result;
    result.batches++;
    result.completed += batch.completedRows;
    result.chunks += batch.stats.chunks;
    result.failed += batch.failedJobs.length;
    this.options.metrics?.batch(batch);
    this.options.onBatch?.({
      jobs: claimed.jobs.length + claimed.refused.length,
      completed: batch.completedRows,
      failed: batch.failedJobs.length,
      providerCalls: batch.stats.providerCalls,
      chunks: batch.stats.chunks,
      durationMs: batch.stats.durationMs,
      totalCompleted: result.completed,
      totalChunks: result.chunks,
    });
  }

  /** An idle poll: reports, then waits for a NOTIFY, the poll interval or the stop. */
  async idle(): Promise<void> {
    this.options.onBatch?.({
      jobs: 0,
      completed: 0,
      failed: 0,
      providerCalls: 0,
      chunks: 0,
      durationMs: 0,
      totalCompleted: this.result.completed,
      totalChunks: this.result.chunks,
    });
    await sleep(this.options.pollIntervalMs, this.#wake.promise, this.stopped);
  }

  /**
   * A claim failed: an unreachable database is waited out with the recovery
   * policy's claim curve (a fresh pool after two failures in a row); under
   * --once, a failing statement is a bug to report, not to wait out.
   */
  async claimFailed(err: unknown): Promise<void> {
    const unreachable = isConnectionError(err);
    if (!unreachable && this.options.once) throw err;
    this.#consecutiveErrors++;
    // A pool whose connections ended keeps failing; start afresh.
    if (this.#consecutiveErrors >= 2) this.resetClient(`repeated ${errorCode(err)}`);
    const delay = backoffMs(this.#consecutiveErrors, CLAIM_RETRY);
    this.#log(JSON.stringify({
      event: unreachable ? "db_unavailable" : "claim_failed",
      retryInMs: delay,
      code: errorCode(err),
      message: unreachable ? undefined : String((err as Error)?.message).slice(0, 200),
    }));
    await sleep(delay, this.stopped);
  }

  /**
   * A batch failed as a whole: when the database was lost, its jobs are
   * handed back once it answers; otherwise they reappear after their
   * visibility timeout. Nothing is lost.
   */
  batchFailed(claimed: Claimed, err: unknown): void {
    const unreachable = isConnectionError(err);
    if (!unreachable && this.options.once) throw err;
    if (unreachable) { for (const job of claimed.jobs) this.#interrupted.add(job.jobId); }
    this.#log(JSON.stringify({
      event: "batch_interrupted",
      jobs: claimed.jobs.length + claimed.refused.length,
      code: errorCode(err),
      message: unreachable ? undefined : String((err as Error)?.message).slice(0, 200),
    }));
  }

  /** One slot: claim, process (the core settles), or sleep until woken; until stopped. */
  async slot(): Promise<void> {
    while (!this.stopping) {
      let claimed: Claimed;
      try {
        await this.handBackInterrupted();
        await this.maintain();
        claimed = await this.claim();
        this.#consecutiveErrors = 0;
      } catch (err) {
        await this.claimFailed(err);
        continue;
      }
      if (claimed.jobs.length === 0 && claimed.refused.length === 0) {
        if (!this.options.once) {
          await this.idle();
          continue;
        }
        try {
          const more = await this.moreToDo();
          if (more === "later") await sleep(this.options.pollIntervalMs, this.stopped);
          if (more !== "done") continue;
        } catch (err) {
          if (!isConnectionError(err)) throw err;
          continue;
        }
        return;
      }
      try {
        this.record(claimed, await this.process(claimed));
      } catch (err) {
        this.batchFailed(claimed, err);
      }
    }
  }

  /**
   * --once: the changes logical capture has not queued yet are queued first
   * (capture.ts catchUp), so the run drains them too.
   */
  async catchUpCapture(): Promise<void> {
    if (!this.#capture) return;
    try {
      const caughtUp = await this.#capture.catchUp();
      if (caughtUp) this.#log(JSON.stringify({ event: "capture_caught_up" }));
    } catch (err) {
      // The queue is drained all the same; the slot waits for the next run.
      this.#log(JSON.stringify({
        event: "capture_check_failed",
        code: errorCode(err),
        message: String((err as Error)?.message).slice(0, 200),
      }));
      await this.#capture.stop();
    }
  }

  async close(): Promise<void> {
    await this.#capture?.stop();
    await this.#batching;
    await this.#listener?.unlisten().catch(() => {});
    clearTimeout(this.#graceTimer);
    // A build in progress goes on in the server; this process does not wait for it.
    this.#stopBuilding.abort();
    await this.#building;
    await Promise.all([this.#sql.end({ timeout: 5 }), this.#binaryWrites?.end()]);
  }
}

export async function runWorker(options: WorkerOptions): Promise<WorkerResult> {
  const worker = new Worker(options);
  const log = options.log ?? (() => {});
  try {
    await worker.listen();
  } catch (err) {
    await worker.close();
    throw err;
  }
  // postgres.js can throw from a timer, or reject a promise nobody holds, when
  // a connection dies in the middle of a write (seen on Postgres restarts).
  // Only that is absorbed, with a fresh pool; any other uncaught error is a
  // bug and still ends the process.
  const unguard = surviveDatabaseDisconnects(
    log,
    (error) => worker.resetClient(`disconnect ${errorCode(error) ?? "closed_socket"}`),
  );
  log(JSON.stringify({
    event: "started",
    listening: worker.listening,
    concurrency: options.concurrency,
    batchSize: options.batchSize,
    pollIntervalMs: options.pollIntervalMs,
  }));
  try {
    if (options.once) await worker.catchUpCapture();
    await Promise.all(Array.from({ length: options.concurrency }, () => worker.slot()));
  } finally {
    unguard();
    await worker.close();
  }
  return worker.result;
}
