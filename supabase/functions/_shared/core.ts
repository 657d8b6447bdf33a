// The processing core shared by the `embed` edge function (push mode) and the
// pull worker: turns a batch of queue jobs into written embeddings with a
// fixed number of round trips — per batch one read of the targets, one read
// of rows per target, one provider call per provider batch, one write per
// target, one delete, one failure record (plus one read per other target
// whose rows lend a vector for the same text).
//
// A job names a live target; it applies to that target and, while a model
// change is in progress, to its shadow target too (I7): the live column stays
// fresh under the old model while the shadow fills with the new one.
//
// Crash safety: the embeddings and fingerprints of a target are written in
// one transaction; the queue messages are deleted after that commit. A crash
// in between only makes the jobs reappear after their visibility timeout,
// when the fingerprints show the text is already embedded and they finish at
// zero provider cost. Nothing is lost or written stale.
import type postgres from "postgres";
import { isConnectionError } from "./db_errors.ts";
import { embedTexts } from "./embed_texts.ts";
import type { Job, RefusedJob } from "./jobs.ts";
import { idFitsKeyType } from "./keys.ts";
import { type EmbeddingProvider, ProviderError } from "./providers/types.ts";
import { estimateTokens, truncateToTokens } from "./providers/tokens.ts";
import { deleteJobs, type Failure, handBack, recordFailures } from "./sql/queue.ts";
import { loadDonorVectors, loadRows } from "./sql/rows.ts";
import { loadTargets, tableLabel, type Target } from "./sql/targets.ts";
import { writeEmbeddings } from "./sql/write.ts";
import { vectorLiteral } from "./vectors.ts";

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
  failed: number;
  refused: number;
  handedBack: number;
  durationMs: number;
}

export interface BatchResult {
  completedJobs: number[];
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
  /** The embedding to write; null clears it (the row has no text any more). */
  vector?: string | null;
}

const REFUSED_TARGET = "refused: the job names no attached table, embedding column and content " +
  "function (attach it with util.enable_embeddings or a util.queue_embeddings trigger)";

/** Processes one batch of jobs. Throws only when the database itself is unreachable. */
export async function processBatch(
  sql: postgres.Sql,
  jobs: Job[],
  options: ProcessOptions,
): Promise<BatchResult> {
  const started = performance.now();
  const stats: BatchStats = {
    jobs: jobs.length,
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
    failed: 0,
    refused: 0,
    handedBack: 0,
    durationMs: 0,
  };
  const accepted: number[] = [];
  const failures: Failure[] = [];
  const failed = new Set<number>();
  const handedBack = new Set<number>();
  const refuse = (failure: Failure) => {
    stats.refused++;
    failures.push(failure);
    failed.add(failure.job_id);
  };
  for (const r of options.refused ?? []) {
    stats.jobs++;
    refuse({
      job_id: r.jobId,
      target_id: null,
      table_name: null,
      row_id: null,
      error: r.error,
      retryable: false,
    });
  }
  // A job fails once, however many of its (target, row) pairs failed.
  const fail = (work: RowWork, error: string, retryable: boolean, retryAfterMs?: number) => {
    for (const jobId of work.jobIds) {
      if (failed.has(jobId)) continue;
      failed.add(jobId);
      failures.push({
        job_id: jobId,
        target_id: work.target.id,
        table_name: tableLabel(work.target),
        row_id: work.rowId,
        error,
        retryable,
        retry_after: retryAfterMs ? Math.ceil(retryAfterMs / 1000) : undefined,
      });
    }
  };

  // 1. Targets: a job is acted on only when it names an attached target exactly (I8).
  const targets = jobs.length ? await loadTargets(sql) : null;
  const rowsByTarget = new Map<Target, Map<string, RowWork>>();
  for (const job of jobs) {
    const live = targets!.live(job.schema, job.table, job.embeddingColumn);
    const rowId = String(job.id);
    if (!live || live.content_function !== job.contentFunction) {
      refuse({
        job_id: job.jobId,
        target_id: null,
        table_name: `${job.schema}.${job.table}`,
        row_id: rowId,
        error: REFUSED_TARGET,
        retryable: false,
      });
      continue;
    }
    if (!idFitsKeyType(rowId, live.pk_type_sql)) {
      refuse({
        job_id: job.jobId,
        target_id: live.id,
        table_name: tableLabel(live),
        row_id: rowId.slice(0, 100),
        error: `refused: the job's id is not a valid ${live.pk_type_sql} primary key value`,
        retryable: false,
      });
      continue;
    }
    accepted.push(job.jobId);
    for (const target of targets!.appliesTo(live)) {
      let rows = rowsByTarget.get(target);
      if (!rows) rowsByTarget.set(target, rows = new Map());
      const work = rows.get(rowId);
      if (work) work.jobIds.push(job.jobId);
      else rows.set(rowId, { target, rowId, jobIds: [job.jobId] });
    }
  }

  // 2. Read each target's rows once: text, hash, fingerprint and a donor together.
  const toWrite = new Map<Target, RowWork[]>();
  const toEmbed: RowWork[] = [];
  const fromDonors = new Map<number, { wanted: Map<string, string>; works: RowWork[] }>();
  const providers = new Map<Target, EmbeddingProvider | ProviderError>();
  /** Queues `work` (with `text`, the row's text) for the provider, or fails it. */
  const needsProvider = (work: RowWork, text: string) => {
    const provider = providers.get(work.target)!;
    if (provider instanceof ProviderError) return fail(work, provider.message, provider.retryable);
    const tokens = estimateTokens(text);
    if (tokens > provider.maxInputTokens) {
      if (!options.truncate) {
        return fail(
          work,
          `text is about ${tokens} tokens, over the ${provider.maxInputTokens}-token input limit of ` +
            `${work.target.model}: shorten what the content function returns, or set EMBEDDING_TRUNCATE=true`,
          false,
        );
      }
      text = truncateToTokens(text, provider.maxInputTokens);
    }
    work.text = text;
    toEmbed.push(work);
  };
  const texts = new Map<RowWork, string>();
  for (const [target, rows] of rowsByTarget) {
    stats.rows += rows.size;
    providers.set(target, safeProvider(options, target));
    const loaded = await loadRows(
      sql,
      target,
      targets!.sameModel(target),
      [...rows.keys()],
      (rowId, message, retryable) => {
        if (!retryable) stats.refused++;
        fail(rows.get(rowId)!, message, retryable);
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
          pushTo(toWrite, target, work);
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
        pushTo(toWrite, target, work);
      } else if (row.donor_target !== null && row.donor_target !== target.id) {
        let donor = fromDonors.get(row.donor_target);
        if (!donor) fromDonors.set(row.donor_target, donor = { wanted: new Map(), works: [] });
        donor.wanted.set(row.donor_row!, row.hash);
        donor.works.push(work);
        texts.set(work, row.content);
      } else needsProvider(work, row.content);
    }
  }

  // Vectors of the same text held by rows of other targets (same model).
  for (const [donorId, { wanted, works }] of fromDonors) {
    const donor = targets!.byId(donorId);
    const vectors = donor ? await loadDonorVectors(sql, donor, wanted) : new Map();
    const byHash = new Map<string, string>();
    for (const [rowId, vector] of vectors) byHash.set(wanted.get(rowId)!, vector);
    for (const work of works) {
      const vector = byHash.get(work.hash!);
      if (vector !== undefined) {
        stats.copied++;
        work.vector = vector;
        pushTo(toWrite, work.target, work);
      } else needsProvider(work, texts.get(work)!);
    }
  }

  // 3. Provider calls: identical texts once, batched by count and token estimate.
  const outcomes = await embedTexts(
    toEmbed.map((w) => ({ text: w.text!, model: w.target.model, dimensions: w.target.dimensions })),
    {
      providerFor: options.providerFor,
      deadline: options.deadline,
      signal: options.signal,
      concurrency: options.providerConcurrency,
    },
    stats,
  );
  toEmbed.forEach((work, i) => {
    const outcome = outcomes[i];
    if ("vector" in outcome) {
      work.vector = vectorLiteral(outcome.vector, work.target.embedding_type_sql);
      pushTo(toWrite, work.target, work);
    } else if ("error" in outcome) {
      fail(work, outcome.error, outcome.retryable, outcome.retryAfterMs);
    } else for (const jobId of work.jobIds) handedBack.add(jobId);
  });

  // 4. One write per target, compare-and-set on the content hash (I2).
  for (const [target, works] of toWrite) {
    try {
      const written = await writeEmbeddings(
        sql,
        target,
        works.map((w) => ({ rowId: w.rowId, hash: w.hash!, vector: w.vector ?? null })),
      );
      for (const work of works) {
        if (written.has(work.rowId)) stats.written++;
        else stats.superseded++; // text changed since it was read; its newer job re-embeds it
      }
    } catch (err) {
      if (isConnectionError(err)) throw err;
      const message = `writing embeddings failed: ${(err as Error).message}`;
      for (const work of works) fail(work, message, true);
    }
  }

  // 5. Acknowledge, reschedule, hand back: one call each. A job is done when
  //    none of its (target, row) pairs failed or was left unstarted.
  const completed = accepted.filter((id) => !failed.has(id) && !handedBack.has(id));
  const returned = [...handedBack].filter((id) => !failed.has(id));
  await deleteJobs(sql, completed);
  const dead = await recordFailures(sql, failures);
  await handBack(sql, returned);
  const failedJobs: FailedJob[] = failures.map((f) => ({
    jobId: f.job_id,
    error: f.error,
    retryable: f.retryable,
    deadLettered: dead.get(f.job_id),
  }));
  for (const jobId of returned) {
    failedJobs.push({
      jobId,
      error: "handed back unprocessed (time budget or shutdown); retried at once",
      retryable: true,
    });
  }
  stats.failed = failures.length;
  stats.handedBack = returned.length;
  stats.durationMs = Math.round(performance.now() - started);
  options.log?.({ event: "batch", ...stats });
  return { completedJobs: completed, failedJobs, stats };
}

function pushTo(map: Map<Target, RowWork[]>, target: Target, work: RowWork) {
  const list = map.get(target);
  if (list) list.push(work);
  else map.set(target, [work]);
}

function safeProvider(options: ProcessOptions, target: Target): EmbeddingProvider | ProviderError {
  try {
    return options.providerFor(target.model, target.dimensions);
  } catch (err) {
    if (err instanceof ProviderError) return err;
    return new ProviderError(
      `cannot set up the provider for ${target.model}: ${(err as Error).message}`,
      { retryable: false },
    );
  }
}
