// The processing core shared by the `embed` edge function (push mode) and the
// pull worker: turns a batch of queue jobs into written embeddings. Every
// target goes through the same stages, whatever its store (sql/store.ts: the
// row's own embedding column, or a side table of chunks): read its rows, split
// each changed text into pieces (the whole text, or its chunks), reuse the
// vectors already held for those texts, embed the rest (identical texts once,
// all targets together), write under a compare-and-set, settle the jobs. The
// round trips are fixed: per batch one read of the targets, one read of rows
// per target, at most one look-up of held vectors per target (plus one per
// other target a vector is copied from), one provider call per provider
// batch, one write per target, one settle of the batch's jobs.
//
// A job names a live target; it applies to that target and, while a model
// change is in progress, to its shadow target too (I7): the live store stays
// fresh under the old model while the shadow fills with the new one.
//
// Crash safety: the embeddings and fingerprints of a target are written in
// one transaction; the queue messages are settled after that commit. A crash
// in between only makes the jobs reappear after their visibility timeout,
// when the fingerprints show the text is already embedded and they finish at
// zero provider cost. Nothing is lost or written stale.
//
// CPU: the stages whose cost grows with the text (splitting, counting
// tokens) and the chunks a call embeds draw from its CallBudget (the embed
// function's EMBED_CPU_BUDGET_MS and EMBED_MAX_CHUNKS_PER_CALL). Once it is
// spent, rows not yet started are handed back, and a long text's split
// stops after its current part: its chunks so far go to the row's draft and
// the next call continues it. The first row of a batch always goes ahead,
// so every call makes progress.
import type postgres from "postgres";
import { CallBudget, type CallLimits } from "./call_budget.ts";
import { isConnectionError } from "./db_errors.ts";
import { type EmbedOutcome, type EmbedRequest, embedTexts } from "./embed_texts.ts";
import type { Job, RefusedJob } from "./jobs.ts";
import { idFitsKeyType } from "./keys.ts";
import { type EmbeddingProvider, ProviderError, providerOrError } from "./providers/types.ts";
import { mayExceedTokens, tokenCounterFor } from "./providers/tokens.ts";
import { budgetOf, type RateBudget } from "./rate_budget.ts";
import { type LaneText, resolveBatchLane } from "./batch_lane.ts";
import { ProviderHealth } from "./recovery.ts";
import {
  failureKey,
  recordNotes,
  type SettledRow,
  settleJobs,
  type TargetUsage,
} from "./sql/queue.ts";
import { type Piece, type RowPlan, type Store, storeOf } from "./sql/store.ts";
import {
  type FormerTarget,
  formerTargets,
  jobTargetKey,
  loadTargets,
  tableLabel,
  type Target,
  type Targets,
} from "./sql/targets.ts";
import type { BinaryWrites } from "./sql/write.ts";

export interface ProcessOptions {
  /** The provider for a target's model and dimensions (may throw ProviderError, e.g. missing key). */
  providerFor: (model: string, dimensions: number) => EmbeddingProvider;
  /** Epoch ms after which no new provider call starts; unstarted jobs are handed back. */
  deadline?: number;
  /** Aborts provider calls (runtime shutdown); unfinished jobs are handed back. */
  signal?: AbortSignal;
  /** Over-long text: truncate to the model's limit instead of failing the row. */
  truncate?: boolean;
  /** Provider batches in flight at once within this batch. */
  providerConcurrency?: number;
  /**
   * What the batch may take on before it hands back what it has not started
   * (see the module comment): milliseconds of splitting and counting, chunks
   * split; no limit when unset.
   */
  limits?: CallLimits;
  /** Structured events (counts and durations only: never text or secrets). */
  log?: (event: Record<string, unknown>) => void;
  /** Messages of this batch refused as malformed before it ran: recorded with its failures. */
  refused?: RefusedJob[];
  /**
   * Where whole-row writes send their vectors in binary (halfvec and vector
   * columns); without it they go as text through `sql` (bench/RESULTS.md, 1b).
   */
  binaryWrites?: BinaryWrites;
  /**
   * The providers' rate budget (I17): by default the one in this database,
   * shared with every other caller; null for none (calls go at once).
   */
  budget?: RateBudget | null;
  /** Longest wait for the budget before a provider call, ms (see embed_texts.ts). */
  budgetMaxWaitMs?: number;
  /**
   * Whether the batch lane serves a model (its endpoint has a batch API,
   * batch_tick.ts): a sweep's batch-lane jobs then go through batches
   * (batch_lane.ts). Without it, they go online.
   */
  batchLane?: (model: string, dimensions: number) => boolean;
}

export interface FailedJob {
  jobId: number;
  error: string;
  retryable: boolean;
  deadLettered?: boolean;
}

export interface BatchStats {
  jobs: number;
  /** (target, row) pairs acted on: a row counts twice while its table changes model. */
  rows: number;
  fresh: number;
  /** Vectors copied from a row that already holds one for the same text and model. */
  copied: number;
  embedded: number;
  written: number;
  superseded: number;
  deleted: number;
  emptyText: number;
  providerCalls: number;
  providerInputs: number;
  /** Chunks in the chunk sets written for chunked targets, and of those the newly embedded. */
  chunks: number;
  chunksEmbedded: number;
  failed: number;
  /** Rows stopped by a provider-wide failure: they wait for its circuit, no attempt spent. */
  deferred: number;
  /** Rows whose texts wait in a batch of the batch lane: parked until it ends, no attempt spent. */
  parked: number;
  /** Texts whose vectors a batch brought. */
  fromBatches: number;
  refused: number;
  handedBack: number;
  /** Rows whose text was split in part: their chunks so far are drafted, the rest is for the next call. */
  drafted: number;
  /** Time spent splitting texts and counting tokens (the CPU budget's stages). */
  cpuStagesMs: number;
  /** Tokens sent to the provider (by the model's tokenizer), and not sent because a vector was reused. */
  tokens: number;
  tokensReused: number;
  /** Provider answers 429 (rate limited) this batch saw. */
  rateLimited: number;
  /**
   * Sleeps for the provider's rate budget before calls (rate_budget.ts),
   * and their milliseconds.
   */
  budgetWaits: number;
  budgetWaitMs: number;
  durationMs: number;
}

export interface BatchResult {
  /** Queue messages deleted as done. */
  completedJobs: number[];
  /** Rows whose jobs are done (a packed message counts each of its rows). */
  completedRows: number;
  failedJobs: FailedJob[];
  stats: BatchStats;
}

/** A (target, row) to act on, with every job that asked for it (duplicates coalesce here). */
interface RowWork {
  target: Target;
  rowId: string;
  jobIds: number[];
  /** Every job that asked for it is a batch-lane sweep's (none a live edit's). */
  batch: boolean;
}

const REFUSED_TARGET = "refused: the job names no attached table, embedding column and content " +
  "function (attach it with util.enable_embeddings or a util.queue_embeddings trigger)";

/** What became of a job's row, worst first: a row failed, deferred and unstarted is failed. */
const SEVERITY = { failed: 4, deferred: 3, parked: 2, unstarted: 1 } as const;

/**
 * What happens to the jobs of one batch, as the stages find out: accepted,
 * and for what is not done, one settled outcome per job (per row of a
 * packed message): failed (the row's own failure), deferred (a
 * provider-wide failure), unstarted; and the counts.
 */
class Outcome {
  readonly stats: BatchStats;
  readonly accepted = new Set<number>();
  /** By failureKey: the job, or the (job, row) of a packed message. */
  readonly settled = new Map<string, SettledRow>();
  /** The queue messages of this batch that pack several rows. */
  readonly packed = new Set<number>();
  readonly health = new ProviderHealth();

  constructor(jobs: number) {
    this.stats = {
      jobs,
      rows: 0,
      fresh: 0,
      copied: 0,
      embedded: 0,
      written: 0,
      superseded: 0,
      deleted: 0,
      emptyText: 0,
      providerCalls: 0,
      providerInputs: 0,
      chunks: 0,
      chunksEmbedded: 0,
      failed: 0,
      deferred: 0,
      parked: 0,
      fromBatches: 0,
      refused: 0,
      handedBack: 0,
      drafted: 0,
      cpuStagesMs: 0,
      tokens: 0,
      tokensReused: 0,
      rateLimited: 0,
      budgetWaits: 0,
      budgetWaitMs: 0,
      durationMs: 0,
    };
  }

  /** Usage by target, recorded with the settle (util.embedding_usage). */
  readonly usage = new Map<number, TargetUsage>();

  /** Adds tokens sent (online), brought by a batch, or saved by reuse for `target`. */
  use(target: Target, kind: "online" | "batch" | "reused", tokens: number) {
    let u = this.usage.get(target.id);
    if (!u) {
      this.usage.set(
        target.id,
        u = {
          target_id: target.id,
          model: target.model,
          online_tokens: 0,
          online_inputs: 0,
          batch_tokens: 0,
          batch_inputs: 0,
          reused_tokens: 0,
          reused_inputs: 0,
        },
      );
    }
    if (kind === "online") {
      u.online_tokens += tokens;
      u.online_inputs++;
      this.stats.tokens += tokens;
    } else if (kind === "batch") {
      u.batch_tokens += tokens;
      u.batch_inputs++;
      this.stats.fromBatches++;
    } else {
      u.reused_tokens += tokens;
      u.reused_inputs++;
      this.stats.tokensReused += tokens;
    }
  }

  /** The key of `row`'s outcome: its job, and its row when the job is a packed message. */
  keyOf(jobId: number, rowId: string | null): string {
    return failureKey(jobId, this.packed.has(jobId) ? rowId : null);
  }

  /** Records `row` unless its key already holds an outcome as bad or worse. */
  #settle(row: SettledRow) {
    const key = this.keyOf(row.job_id, row.row_id);
    const known = this.settled.get(key);
    if (!known || SEVERITY[known.kind] < SEVERITY[row.kind]) this.settled.set(key, row);
  }

  /** A message refused before its rows were looked at (whole, or one row of a packed one). */
  refuse(row: Omit<SettledRow, "kind">) {
    this.stats.refused++;
    this.#settle({ ...row, kind: "failed" });
  }

  #each(work: { target?: Target; rowId: string; jobIds: number[] }, row: Partial<SettledRow>) {
    for (const jobId of work.jobIds) {
      this.#settle({
        job_id: jobId,
        row_id: work.rowId,
        kind: "failed",
        target_id: work.target?.id ?? null,
        table_name: work.target ? tableLabel(work.target) : null,
        ...row,
      });
    }
  }

  fail(work: RowWork, error: string, retryable: boolean, retryAfterMs?: number) {
    this.#each(work, {
      kind: "failed",
      error,
      retryable,
      retry_after: retryAfterMs ? Math.ceil(retryAfterMs / 1000) : undefined,
    });
  }

  /** Stopped by a failure of the provider as a whole: waits in the queue, no attempt spent. */
  defer(work: { target?: Target; rowId: string; jobIds: number[] }) {
    this.#each(work, { kind: "deferred" });
  }

  handBack(work: { target?: Target; rowId: string; jobIds: number[] }) {
    this.#each(work, { kind: "unstarted" });
  }

  /** Its texts wait in batch `batchId` of the batch lane: hidden until it ends, no attempt spent. */
  park(work: RowWork, batchId: number) {
    this.#each(work, { kind: "parked", batch_id: batchId });
  }
}

/** Processes one batch of jobs. Throws only when the database itself is unreachable. */
export async function processBatch(
  sql: postgres.Sql,
  jobs: Job[],
  options: ProcessOptions,
): Promise<BatchResult> {
  const started = performance.now();
  const outcome = new Outcome(jobs.length);
  for (const job of jobs) if (job.packed) outcome.packed.add(job.jobId);
  for (const r of options.refused ?? []) {
    outcome.stats.jobs++;
    outcome.refuse({ job_id: r.jobId, row_id: null, error: r.error, retryable: false });
  }
  if (jobs.length) {
    const budget = new CallBudget(options.limits);
    const targets = await loadTargets(sql);
    const unknown = new Map(
      jobs.filter((j) => !targets.live(j.schema, j.table, j.embeddingColumn))
        .map((j) => [jobTargetKey(j), j]),
    );
    const former = await formerTargets(sql, targets, [...unknown.values()]);
    const rows = assignJobs(jobs, targets, former, outcome);
    const tasks = await readRows(sql, rows, targets, outcome, budget);
    await reuseVectors(sql, tasks, targets, outcome);
    const rateBudget = options.budget === null ? undefined : options.budget ?? budgetOf(sql);
    await embed(sql, tasks, options, outcome, budget, rateBudget);
    await write(sql, tasks, outcome, options.binaryWrites);
    outcome.stats.cpuStagesMs = Math.round(budget.spentMs);
  }
  return await acknowledge(sql, jobs, outcome, started, options);
}

/**
 * 1. A job is acted on only when it names an attached target exactly (I8);
 * it applies to its live target and, during a model change, to the shadow.
 * Jobs for the same (target, row) coalesce. A job whose target was retired
 * while it waited (its table, store or content function dropped) finishes
 * quietly, as one for a deleted row does (I6); one claimed before its table
 * was renamed applies to the target under its new name.
 */
function assignJobs(
  jobs: Job[],
  targets: Targets,
  former: Map<string, FormerTarget>,
  outcome: Outcome,
): Map<Target, Map<string, RowWork>> {
  const rowsByTarget = new Map<Target, Map<string, RowWork>>();
  for (const job of jobs) {
    let live = targets.live(job.schema, job.table, job.embeddingColumn);
    const rowId = String(job.id);
    const fate = live ? undefined : former.get(jobTargetKey(job));
    if (fate?.fate === "retired") {
      outcome.accepted.add(job.jobId);
      outcome.stats.deleted++;
      continue;
    }
    if (fate?.fate === "renamed") live = fate.target;
    if (!live || live.content_function !== job.contentFunction) {
      // A packed message is refused whole, once (row_id null).
      if (job.packed && outcome.settled.has(outcome.keyOf(job.jobId, null))) continue;
      outcome.refuse({
        job_id: job.jobId,
        target_id: null,
        table_name: `${job.schema}.${job.table}`,
        row_id: null,
        error: REFUSED_TARGET,
        retryable: false,
      });
      continue;
    }
    if (!idFitsKeyType(rowId, live.pk_type_sql)) {
      // A packed message's row is named exactly: it leaves the message, dead-lettered alone.
      outcome.refuse({
        job_id: job.jobId,
        target_id: live.id,
        table_name: tableLabel(live),
        row_id: job.packed ? rowId : rowId.slice(0, 100),
        error: `refused: the job's id is not a valid ${live.pk_type_sql} primary key value`,
        retryable: false,
      });
      continue;
    }
    outcome.accepted.add(job.jobId);
    for (const target of targets.appliesTo(live)) {
      let rows = rowsByTarget.get(target);
      if (!rows) rowsByTarget.set(target, rows = new Map());
      const work = rows.get(rowId);
      if (work) {
        work.jobIds.push(job.jobId);
        if (job.lane !== "batch") work.batch = false; // a live edit: online at once
      } else rows.set(rowId, { target, rowId, jobIds: [job.jobId], batch: job.lane === "batch" });
    }
  }
  return rowsByTarget;
}

/** A row to bring up to date: its store's plan, the jobs that asked for it, and notes for the user. */
interface RowTask extends RowPlan {
  work: RowWork;
  /** Settled already (failed, deferred or handed back): not written. */
  settled?: boolean;
  /** Chunks embedded from their start (over the model's limit): recorded once the row is written. */
  notes: string[];
}

/**
 * 2. Reads each target's rows once, through its store, and keeps those with
 * something to do: not gone (I6), not fresh (I3/I4). A changed text is split
 * into its store's pieces (within the call's budget: once it is spent, rows
 * to be split into chunks are handed back, but for the first, and a long
 * text's split stops early); a blank one has none, so the
 * write clears what the store holds for it (an embedding of earlier text
 * would keep the row findable by what it no longer says).
 */
async function readRows(
  sql: postgres.Sql,
  rowsByTarget: Map<Target, Map<string, RowWork>>,
  targets: Targets,
  outcome: Outcome,
  budget: CallBudget,
): Promise<RowTask[]> {
  const { stats } = outcome;
  const tasks: RowTask[] = [];
  let started = 0;
  for (const [target, rows] of rowsByTarget) {
    stats.rows += rows.size;
    const store = storeOf(target);
    const read = await store.read(sql, target, targets, [...rows.keys()], (rowId, error, retry) => {
      if (!retry) stats.refused++;
      outcome.fail(rows.get(rowId)!, error, retry);
      rows.delete(rowId);
    });
    for (const work of rows.values()) {
      const row = read.get(work.rowId);
      if (!row) stats.deleted++; // I6: the row is gone, so is the job (and its chunks, by its delete trigger)
      else if (row.fresh) stats.fresh++; // I3/I4: its store holds exactly this text's vectors
      else if (row.content === null || row.content.trim() === "") {
        stats.emptyText++;
        tasks.push({
          target,
          rowId: work.rowId,
          row,
          pieces: [],
          firstSeq: 0,
          next: null,
          work,
          notes: [],
        });
      } else if (store.chunked && budget.spent() && started > 0) outcome.handBack(work);
      else {
        started++;
        const split = budget.charge(() => store.split(target, row, (n) => budget.spent(n)));
        if (store.chunked) budget.addChunks(split.pieces.length);
        tasks.push({ target, rowId: work.rowId, row, ...split, work, notes: [] });
      }
    }
  }
  return tasks;
}

/** 3. Vectors already held for the pieces' texts, looked up by each store (I3). */
async function reuseVectors(
  sql: postgres.Sql,
  tasks: RowTask[],
  targets: Targets,
  outcome: Outcome,
): Promise<void> {
  const byStore = new Map<Store, RowTask[]>();
  for (const task of tasks) if (task.pieces.length) pushTo(byStore, storeOf(task.target), task);
  for (const [store, list] of byStore) await store.reuse(sql, list, targets, outcome.stats);
}

/** How bad a provider outcome is for its row: the worst of its pieces' settles it. */
const RANK = (r: EmbedOutcome) =>
  "vector" in r ? 0 : "handedBack" in r ? 1 : "deferred" in r ? 2 : 3;

/**
 * 4. Provider calls for the pieces no store holds a vector of: identical
 * texts once, every target of the batch together, batched by count and
 * token estimate (embed_texts.ts). A row whose text still needs counting
 * once the call's budget is spent is handed back (the first row never is). A
 * row is settled by its worst piece: its own failure, then a provider-wide
 * one (deferred), then time running out. The pieces of a batch-lane row
 * (every job a batch-lane sweep's, its model served by a batch API) go to
 * the batch lane instead (batch_lane.ts): a vector a batch brought is
 * used, a text still in a batch (or staged now) parks the row, a text its
 * batch failed comes back here, online.
 */
async function embed(
  sql: postgres.Sql,
  tasks: RowTask[],
  options: ProcessOptions,
  outcome: Outcome,
  budget: CallBudget,
  rateBudget: RateBudget | undefined,
): Promise<void> {
  const requests: EmbedRequest[] = [];
  const requested: { task: RowTask; piece: Piece }[] = [];
  const laneTexts: LaneText<RowTask>[] = [];
  const providers = new Map<Target, EmbeddingProvider | ProviderError>();
  countReused(tasks, outcome, budget);
  for (const task of tasks) {
    const pieces = task.pieces.filter((p) => p.vector === null && !p.reused);
    if (pieces.length === 0) continue;
    const { target } = task;
    let provider = providers.get(target);
    if (!provider) providers.set(target, provider = providerOrError(options.providerFor, target));
    if (
      !(provider instanceof ProviderError) && budget.spent() && requests.length > 0 &&
      pieces.some((p) => p.tokens === undefined && mayExceedTokens(p.text, provider.maxInputTokens))
    ) {
      task.settled = true;
      outcome.handBack(task.work);
      continue;
    }
    const refusal = provider instanceof ProviderError
      ? provider
      : budget.charge(() => fitToLimit(task, pieces, provider, options));
    if (refusal) {
      task.settled = true;
      outcome.fail(task.work, refusal.message, refusal.retryable);
      continue;
    }
    // Counted once, for the rate budget's reservation and the usage alike.
    const counter = provider instanceof ProviderError ? null : provider.tokens;
    budget.charge(() => {
      for (const piece of pieces) {
        if (counter && piece.tokens === undefined && piece.input === undefined) {
          piece.tokens = counter.count(piece.text);
        }
      }
    });
    const byBatch = task.work.batch && counter !== null &&
      (options.batchLane?.(target.model, target.dimensions) ?? false);
    for (const piece of pieces) {
      if (byBatch) {
        const tokens = piece.tokens ?? counter.count(piece.input ?? piece.text);
        laneTexts.push({ owner: task, targetId: target.id, piece, tokens });
        continue;
      }
      requests.push({
        text: piece.input ?? piece.text,
        model: target.model,
        dimensions: target.dimensions,
        tokens: piece.tokens,
      });
      requested.push({ task, piece });
    }
  }
  if (laneTexts.length) {
    const lane = await resolveBatchLane(sql, laneTexts);
    for (const [task, batchId] of lane.parked) {
      task.settled = true;
      outcome.park(task.work, batchId);
    }
    for (const { owner, tokens } of lane.fromBatch) {
      outcome.use(owner.target, "batch", tokens);
      if (storeOf(owner.target).chunked) outcome.stats.chunksEmbedded++;
    }
    for (const { owner: task, piece } of lane.online) {
      requests.push({
        text: piece.input ?? piece.text,
        model: task.target.model,
        dimensions: task.target.dimensions,
        tokens: piece.tokens,
      });
      requested.push({ task, piece });
    }
  }
  const results = await embedTexts(requests, {
    providerFor: options.providerFor,
    deadline: options.deadline,
    signal: options.signal,
    concurrency: options.providerConcurrency,
    health: outcome.health,
    budget: rateBudget,
    budgetMaxWaitMs: options.budgetMaxWaitMs,
  }, outcome.stats);
  countSent(requested, results, providers, outcome, budget);
  const worst = new Map<RowTask, EmbedOutcome>();
  requested.forEach(({ task, piece }, i) => {
    const result = results[i];
    if ("vector" in result) {
      piece.vector = result.vector; // formatted by its store's write
      if (storeOf(task.target).chunked) outcome.stats.chunksEmbedded++;
    } else if (RANK(result) > RANK(worst.get(task) ?? { handedBack: true })) {
      worst.set(task, result);
    } else if (!worst.has(task)) worst.set(task, result);
  });
  for (const [task, result] of worst) {
    task.settled = true;
    if ("deferred" in result) outcome.defer(task.work);
    else if ("error" in result) {
      outcome.fail(task.work, result.error, result.retryable, result.retryAfterMs);
    } else outcome.handBack(task.work);
  }
}

/** Tokens of a piece by the model's tokenizer (its count from the splitter, where known). */
function tokensOf(piece: Piece, count: (text: string) => number): number {
  return piece.tokens ?? count(piece.input ?? piece.text);
}

/**
 * Usage saved by reuse: pieces whose vector was copied from a row holding
 * it, or a chunk's vector kept by its text's hash (util.embedding_usage).
 */
function countReused(tasks: RowTask[], outcome: Outcome, budget: CallBudget) {
  budget.charge(() => {
    for (const task of tasks) {
      const saved = task.pieces.filter((p) => p.reused || p.vector !== null);
      if (!saved.length) continue;
      const counter = tokenCounterFor(task.target.model);
      for (const piece of saved) {
        outcome.use(task.target, "reused", tokensOf(piece, (t) => counter.count(t)));
      }
    }
  });
}

/**
 * Usage sent: each text the provider embedded, once however many rows and
 * targets asked for it (as embedTexts sends it), charged to the first.
 */
function countSent(
  requested: { task: RowTask; piece: Piece }[],
  results: EmbedOutcome[],
  providers: Map<Target, EmbeddingProvider | ProviderError>,
  outcome: Outcome,
  budget: CallBudget,
) {
  budget.charge(() => {
    const seen = new Set<string>();
    requested.forEach(({ task, piece }, i) => {
      if (!("vector" in results[i])) return;
      const { target } = task;
      const key = `${target.model}\u0000${target.dimensions}\u0000${piece.input ?? piece.text}`;
      if (seen.has(key)) return;
      seen.add(key);
      const provider = providers.get(target);
      const counter = provider && !(provider instanceof ProviderError)
        ? provider.tokens
        : tokenCounterFor(target.model);
      outcome.use(target, "online", tokensOf(piece, (t) => counter.count(t)));
    });
  });
}

/**
 * Fits the pieces of `task` to the model's input limit. A chunk that is one
 * indivisible unit over it is embedded from its start, and the user is told
 * (the stored chunk text stays whole); a whole text over it fails its row,
 * unless the caller asked to truncate. Returns the row's failure, if any.
 * A text it counts keeps its count (`tokens`) for the request batching.
 */
function fitToLimit(
  task: RowTask,
  pieces: Piece[],
  provider: EmbeddingProvider,
  options: ProcessOptions,
): { message: string; retryable: boolean } | undefined {
  const { tokens: counter, maxInputTokens: max } = provider;
  const model = task.target.model;
  for (const piece of pieces) {
    if (piece.tokens === undefined && mayExceedTokens(piece.text, max)) {
      piece.tokens = counter.count(piece.text);
    }
    const tokens = piece.tokens ?? 0;
    if (tokens <= max) continue;
    if (storeOf(task.target).chunked) {
      task.notes.push(
        `a chunk of ${tokens} tokens is over the ${max}-token input limit of ${model}: ` +
          `embedded its first ${max} tokens (split the text with a splitter other than none, ` +
          "or break up the long unit)",
      );
    } else if (!options.truncate) {
      const about = counter.name === "estimate" ? "about " : "";
      return {
        message: `text is ${about}${tokens} tokens, over the ${max}-token input limit of ` +
          `${model}: shorten what the content function returns, or set EMBEDDING_TRUNCATE=true`,
        retryable: false,
      };
    }
    piece.input = counter.truncate(piece.text, max);
    piece.tokens = max; // at most: what is sent is the cut text
  }
}

/** 5. One write per target, through its store, compare-and-set on the content hash (I2, I12). */
async function write(
  sql: postgres.Sql,
  tasks: RowTask[],
  outcome: Outcome,
  binaryWrites: BinaryWrites | undefined,
): Promise<void> {
  const { stats } = outcome;
  const byTarget = new Map<Target, RowTask[]>();
  for (const task of tasks) if (!task.settled) pushTo(byTarget, task.target, task);
  for (const [target, list] of byTarget) {
    const store = storeOf(target);
    try {
      const written = await store.write(sql, target, list, binaryWrites);
      const notes: { rowId: string; error: string }[] = [];
      for (const task of list) {
        const result = written.get(task.rowId);
        if (result === "written") {
          stats.written++;
          if (store.chunked) stats.chunks += task.firstSeq + task.pieces.length; // the set, drafted parts too
          for (const error of task.notes) notes.push({ rowId: task.rowId, error });
        } else if (result === "drafted") {
          // A part of a long text: the next call continues its draft, no attempt spent.
          stats.drafted++;
          outcome.handBack(task.work);
        } else if (result === "incomplete") {
          outcome.fail(
            task.work,
            "a vector this row was to reuse, or the chunks an earlier call drafted for it, " +
              "went away meanwhile; retried",
            true,
          );
        } else stats.superseded++; // its text changed since it was read; its newer job writes it
      }
      await recordNotes(sql, target, notes);
    } catch (err) {
      if (isConnectionError(err)) throw err;
      const message = `writing embeddings failed: ${(err as Error).message}`;
      for (const task of list) outcome.fail(task.work, message, true);
    }
  }
}

/**
 * 6. Settle, in one call (util._settle_batch): messages with every row done
 * are deleted; a row that failed goes on alone under its own backoff (or is
 * dead-lettered), one deferred or unstarted stays with its attempt back;
 * the providers' circuits open or close as this batch found them; the
 * done messages' time to fresh and the batch's usage are recorded with it.
 */
async function acknowledge(
  sql: postgres.Sql,
  jobs: Job[],
  outcome: Outcome,
  started: number,
  options: ProcessOptions,
): Promise<BatchResult> {
  const { stats, settled } = outcome;
  const rows = [...settled.values()];
  const open = new Set(rows.map((r) => r.job_id));
  const completed = [...outcome.accepted].filter((id) => !open.has(id));
  const dead = await settleJobs(
    sql,
    completed,
    rows,
    outcome.health.reports(),
    [...outcome.usage.values()],
  );
  const failedJobs: FailedJob[] = [];
  for (const row of rows) {
    if (row.kind === "failed") {
      failedJobs.push({
        jobId: row.job_id,
        error: row.error ?? "",
        retryable: row.retryable ?? true,
        deadLettered: dead.get(outcome.keyOf(row.job_id, row.row_id)),
      });
    }
  }
  const waiting = new Set(
    rows.filter((r) => r.kind === "deferred" || r.kind === "unstarted").map((r) => r.job_id),
  );
  for (const jobId of waiting) {
    failedJobs.push({
      jobId,
      error: "handed back unprocessed (provider failing, time budget or shutdown); retried " +
        "without spending an attempt",
      retryable: true,
    });
  }
  let completedRows = 0;
  const done = new Set(completed);
  for (const job of jobs) {
    if (done.has(job.jobId)) completedRows++;
    else if (
      job.packed && outcome.accepted.has(job.jobId) &&
      !settled.has(outcome.keyOf(job.jobId, String(job.id)))
    ) completedRows++;
  }
  stats.failed = rows.filter((r) => r.kind === "failed").length;
  stats.deferred = rows.filter((r) => r.kind === "deferred").length;
  stats.handedBack = rows.filter((r) => r.kind === "unstarted").length;
  stats.parked = rows.filter((r) => r.kind === "parked").length;
  stats.durationMs = Math.round(performance.now() - started);
  options.log?.({ event: "batch", ...stats });
  return { completedJobs: completed, completedRows, failedJobs, stats };
}

function pushTo<K, V>(map: Map<K, V[]>, key: K, value: V) {
  const list = map.get(key);
  if (list) list.push(value);
  else map.set(key, [value]);
}
