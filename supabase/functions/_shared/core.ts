// The processing core shared by the `embed` edge function (push mode) and the
// pull worker: turns a batch of queue jobs into written embeddings with a
// fixed number of round trips — per batch one read of the targets, one read
// of rows per target, one provider call per provider batch, one write per
// target, one settle of the batch's jobs (plus one read per other target
// whose rows lend a vector for the same text). Chunked targets take their
// own path (chunking/apply.ts) with the same counts, plus one look-up per
// target of the chunk texts that already have a vector.
//
// A job names a live target; it applies to that target and, while a model
// change is in progress, to its shadow target too (I7): the live column stays
// fresh under the old model while the shadow fills with the new one.
//
// Crash safety: the embeddings and fingerprints of a target are written in
// one transaction; the queue messages are settled after that commit. A crash
// in between only makes the jobs reappear after their visibility timeout,
// when the fingerprints show the text is already embedded and they finish at
// zero provider cost. Nothing is lost or written stale.
import type postgres from "postgres";
import { applyChunked } from "./chunking/apply.ts";
import { isConnectionError } from "./db_errors.ts";
import { embedTexts } from "./embed_texts.ts";
import type { Job, RefusedJob } from "./jobs.ts";
import { idFitsKeyType } from "./keys.ts";
import { type EmbeddingProvider, ProviderError, providerOrError } from "./providers/types.ts";
import { mayExceedTokens } from "./providers/tokens.ts";
import { ProviderHealth } from "./recovery.ts";
import { failureKey, type SettledRow, settleJobs } from "./sql/queue.ts";
import { loadDonorVectors, loadRows } from "./sql/rows.ts";
import { byStore } from "./sql/store.ts";
import {
  type FormerTarget,
  formerTargets,
  jobTargetKey,
  loadTargets,
  tableLabel,
  type Target,
  type Targets,
} from "./sql/targets.ts";
import { type BinaryWrites, writeEmbeddings } from "./sql/write.ts";
import type { Vector } from "./vectors.ts";

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
  /** Structured events (counts and durations only: never text or secrets). */
  log?: (event: Record<string, unknown>) => void;
  /** Messages of this batch refused as malformed before it ran: recorded with its failures. */
  refused?: RefusedJob[];
  /**
   * Where whole-row writes send their vectors in binary (halfvec and vector
   * columns); without it they go as text through `sql` (bench/RESULTS.md, 1b).
   */
  binaryWrites?: BinaryWrites;
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
  refused: number;
  handedBack: number;
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
  hash?: string;
  text?: string;
  /** The embedding to write (the provider's, or a row's text); null clears it. */
  vector?: Vector | string | null;
}

const REFUSED_TARGET = "refused: the job names no attached table, embedding column and content " +
  "function (attach it with util.enable_embeddings or a util.queue_embeddings trigger)";

/** What became of a job's row, worst first: a row failed, deferred and unstarted is failed. */
const SEVERITY = { failed: 3, deferred: 2, unstarted: 1 } as const;

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
      refused: 0,
      handedBack: 0,
      durationMs: 0,
    };
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
    const targets = await loadTargets(sql);
    const unknown = new Map(
      jobs.filter((j) => !targets.live(j.schema, j.table, j.embeddingColumn))
        .map((j) => [jobTargetKey(j), j]),
    );
    const former = await formerTargets(sql, targets, [...unknown.values()]);
    // Each store has its apply path (sql/store.ts): chunks go through chunking/apply.ts.
    const { column, chunks: chunked } = byStore(assignJobs(jobs, targets, former, outcome));
    const plan = await readRows(sql, column, targets, options, outcome);
    await embed(plan, options, outcome);
    await write(sql, plan.toWrite, outcome, options.binaryWrites);
    if (chunked.size) {
      await applyChunked(sql, chunked, options, {
        stats: outcome.stats,
        health: outcome.health,
        fail: (work, error, retryable, retryAfterMs) =>
          outcome.fail(work, error, retryable, retryAfterMs),
        defer: (work) => outcome.defer(work),
        handBack: (work) => outcome.handBack(work),
      });
    }
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
      if (work) work.jobIds.push(job.jobId);
      else rows.set(rowId, { target, rowId, jobIds: [job.jobId] });
    }
  }
  return rowsByTarget;
}

/** What the read found to do: vectors to write (copied or cleared), texts to embed. */
interface Plan {
  toWrite: Map<Target, RowWork[]>;
  toEmbed: RowWork[];
}

/**
 * 2. Reads each target's rows once (text, hash, fingerprint and a donor
 * together) and sorts them: gone (I6), blank (clear), fresh (I3/I4), copied
 * from a row of this or another target that holds the text's vector, or for
 * the provider. Vectors held by other targets' rows take one read per target.
 */
async function readRows(
  sql: postgres.Sql,
  rowsByTarget: Map<Target, Map<string, RowWork>>,
  targets: Targets,
  options: ProcessOptions,
  outcome: Outcome,
): Promise<Plan> {
  const { stats } = outcome;
  const plan: Plan = { toWrite: new Map(), toEmbed: [] };
  const fromDonors = new Map<number, { wanted: Map<string, string>; works: RowWork[] }>();
  const texts = new Map<RowWork, string>();
  for (const [target, rows] of rowsByTarget) {
    stats.rows += rows.size;
    const provider = providerOrError(options.providerFor, target);
    const loaded = await loadRows(
      sql,
      target,
      targets.sameModel(target),
      [...rows.keys()],
      (rowId, message, retryable) => {
        if (!retryable) stats.refused++;
        outcome.fail(rows.get(rowId)!, message, retryable);
        rows.delete(rowId);
      },
    );
    for (const work of rows.values()) {
      const row = loaded.get(work.rowId);
      if (!row) {
        stats.deleted++; // I6: the row is gone, so is the job
        continue;
      }
      work.hash = row.hash;
      if (row.content === null || row.content.trim() === "") {
        stats.emptyText++;
        // No text any more: an embedding of earlier text would keep the row
        // findable by what it no longer says (and stale in status), so it goes,
        // with its fingerprint, under the same compare-and-set as a write.
        if (row.has_embedding || row.fp_hash !== null) {
          work.vector = null;
          pushTo(plan.toWrite, target, work);
        }
        continue;
      }
      if (row.has_embedding && row.fp_hash === row.hash) {
        stats.fresh++; // I3/I4: already embedded from exactly this text by this model
        continue;
      }
      if (row.donor_vector !== null) {
        stats.copied++;
        work.vector = row.donor_vector;
        pushTo(plan.toWrite, target, work);
      } else if (row.donor_target !== null && row.donor_target !== target.id) {
        let donor = fromDonors.get(row.donor_target);
        if (!donor) fromDonors.set(row.donor_target, donor = { wanted: new Map(), works: [] });
        donor.wanted.set(row.donor_row!, row.hash);
        donor.works.push(work);
        texts.set(work, row.content);
      } else forProvider(work, row.content, provider, options, plan, outcome);
    }
  }
  for (const [donorId, { wanted, works }] of fromDonors) {
    const donor = targets.byId(donorId);
    const vectors = donor ? await loadDonorVectors(sql, donor, wanted) : new Map();
    const byHash = new Map<string, string>();
    for (const [rowId, vector] of vectors) byHash.set(wanted.get(rowId)!, vector);
    for (const work of works) {
      const vector = byHash.get(work.hash!);
      if (vector !== undefined) {
        stats.copied++;
        work.vector = vector;
        pushTo(plan.toWrite, work.target, work);
      } else {
        const provider = providerOrError(options.providerFor, work.target);
        forProvider(work, texts.get(work)!, provider, options, plan, outcome);
      }
    }
  }
  return plan;
}

/** Queues `work` with its text for the provider, or fails it (no provider, text too long). */
function forProvider(
  work: RowWork,
  text: string,
  provider: EmbeddingProvider | ProviderError,
  options: ProcessOptions,
  plan: Plan,
  outcome: Outcome,
) {
  if (provider instanceof ProviderError) {
    return outcome.fail(work, provider.message, provider.retryable);
  }
  const counter = provider.tokens;
  const tokens = mayExceedTokens(text, provider.maxInputTokens) ? counter.count(text) : 0;
  if (tokens > provider.maxInputTokens) {
    if (!options.truncate) {
      const about = counter.name === "estimate" ? "about " : "";
      return outcome.fail(
        work,
        `text is ${about}${tokens} tokens, over the ${provider.maxInputTokens}-token input limit of ` +
          `${work.target.model}: shorten what the content function returns, or set EMBEDDING_TRUNCATE=true`,
        false,
      );
    }
    text = counter.truncate(text, provider.maxInputTokens);
  }
  work.text = text;
  plan.toEmbed.push(work);
}

/** 3. Provider calls: identical texts once, batched by count and token estimate. */
async function embed(plan: Plan, options: ProcessOptions, outcome: Outcome): Promise<void> {
  const results = await embedTexts(
    plan.toEmbed.map((w) => ({
      text: w.text!,
      model: w.target.model,
      dimensions: w.target.dimensions,
    })),
    {
      providerFor: options.providerFor,
      deadline: options.deadline,
      signal: options.signal,
      concurrency: options.providerConcurrency,
      health: outcome.health,
    },
    outcome.stats,
  );
  plan.toEmbed.forEach((work, i) => {
    const result = results[i];
    if ("vector" in result) {
      work.vector = result.vector; // formatted with the rest of its write (sql/write.ts)
      pushTo(plan.toWrite, work.target, work);
    } else if ("deferred" in result) {
      outcome.defer(work);
    } else if ("error" in result) {
      outcome.fail(work, result.error, result.retryable, result.retryAfterMs);
    } else outcome.handBack(work);
  });
}

/** 4. One write per target, compare-and-set on the content hash (I2). */
async function write(
  sql: postgres.Sql,
  toWrite: Map<Target, RowWork[]>,
  outcome: Outcome,
  binaryWrites: BinaryWrites | undefined,
): Promise<void> {
  for (const [target, works] of toWrite) {
    try {
      const written = await writeEmbeddings(
        sql,
        target,
        works.map((w) => ({ rowId: w.rowId, hash: w.hash!, vector: w.vector ?? null })),
        binaryWrites,
      );
      for (const work of works) {
        if (written.has(work.rowId)) outcome.stats.written++;
        else outcome.stats.superseded++; // text changed since it was read; its newer job re-embeds it
      }
    } catch (err) {
      if (isConnectionError(err)) throw err;
      const message = `writing embeddings failed: ${(err as Error).message}`;
      for (const work of works) outcome.fail(work, message, true);
    }
  }
}

/**
 * 5. Settle, in one call (util._settle_jobs): messages with every row done
 * are deleted; a row that failed goes on alone under its own backoff (or is
 * dead-lettered), one deferred or unstarted stays with its attempt back;
 * the providers' circuits open or close as this batch found them.
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
  const dead = await settleJobs(sql, completed, rows, outcome.health.reports());
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
  const waiting = new Set(rows.filter((r) => r.kind !== "failed").map((r) => r.job_id));
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
  stats.durationMs = Math.round(performance.now() - started);
  options.log?.({ event: "batch", ...stats });
  return { completedJobs: completed, completedRows, failedJobs, stats };
}

function pushTo(map: Map<Target, RowWork[]>, target: Target, work: RowWork) {
  const list = map.get(target);
  if (list) list.push(work);
  else map.set(target, [work]);
}
