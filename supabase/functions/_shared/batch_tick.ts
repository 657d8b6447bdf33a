// The batch lane's tick (supabase/schemas/55_batch_lane.sql): takes the
// batches that are due and moves each on one step at the provider's batch
// API (providers/batches.ts): a staging batch is cut to the limits and
// submitted (JSONL upload, then the batch); a submitted one is polled, and
// once it ends its output and error files are applied and its parked jobs
// released. The pull worker runs it on every poll, the embed function when
// push mode's tick calls it with {"maintenance": ["batches"]}. Every step
// is recorded before the next starts, so any worker continues where one
// that crashed stopped: an upload without its batch is created again, a
// batch created but not recorded is found by its metadata.
import type postgres from "postgres";
import { BatchApiUnsupported, type BatchClient, type ProviderBatch } from "./providers/batches.ts";
import {
  applyBatchLines,
  type BatchRow,
  type BatchSettings,
  batchSettings,
  batchTexts,
  batchUnsupported,
  claimDueBatches,
  enqueuedTokens,
  finishBatch,
  recordBatch,
  restageTexts,
  retryableErrors,
  takeBatchTexts,
} from "./sql/batches.ts";

/** Where a model's batches go: the client, and the account it counts against. */
export interface BatchAccount {
  client: BatchClient;
  baseURL: string;
  keyFingerprint: string;
}

export interface BatchTickOptions {
  /** The account for a model at a size; null: no batch API serves it (its texts go online). */
  accountFor: (model: string, dimensions: number) => BatchAccount | null;
  signal?: AbortSignal;
  /** Structured events (counts only: never text or secrets), each stamped `at` (ISO time). */
  log?: (event: Record<string, unknown>) => void;
  /** Seconds a claimed batch is left to this tick before another may take it. */
  leaseSeconds?: number;
  /** Most batches one tick takes. */
  maxBatches?: number;
  /** Submit every staging batch now, however long its texts waited (`worker --once` before it exits). */
  submitStaged?: boolean;
  /**
   * Most output lines one tick applies (the embed function's limit: a
   * hosted call has 2 s of CPU); an apply cut short goes on at the next
   * tick from where it stopped. No limit when unset.
   */
  maxLines?: number;
}

export interface BatchTickResult {
  /** Batches created at the provider. */
  submitted: number;
  /** Texts in them. */
  submittedTexts: number;
  polled: number;
  /** Batches that ended (their output applied, their jobs released). */
  ended: number;
  /** Vectors and error lines applied from output and error files. */
  vectors: number;
  errorLines: number;
  /** Texts sent again in a new batch. */
  resubmitted: number;
}

/** The metadata key that names our batch at the provider (found again after a crash). */
export const BATCH_METADATA_KEY = "autoembed_batch";

/** Output lines applied per statement. */
const APPLY_SLICE = 1000;

/** Runs one tick: every due batch one step on. Throws only when the database is unreachable. */
export async function runBatchTick(
  sql: postgres.Sql,
  tickOptions: BatchTickOptions,
): Promise<BatchTickResult> {
  // Stamped, so a batch's steps can be timed from the log (bench/scenarios/batch_lane.ts).
  const log = tickOptions.log;
  const options: BatchTickOptions = {
    ...tickOptions,
    log: log && ((event) => log({ ...event, at: new Date().toISOString() })),
  };
  const result: BatchTickResult = {
    submitted: 0,
    submittedTexts: 0,
    polled: 0,
    ended: 0,
    vectors: 0,
    errorLines: 0,
    resubmitted: 0,
  };
  const due = await claimDueBatches(
    sql,
    options.leaseSeconds ?? 300,
    options.maxBatches ?? 10,
    options.submitStaged ?? false,
  );
  if (!due.length) return result;
  const settings = await batchSettings(sql);
  for (const batch of due) {
    const account = options.accountFor(batch.model, batch.dimensions);
    if (!account) {
      await batchUnsupported(sql, batch.id, `model ${batch.model} has no batch API here`);
      continue;
    }
    try {
      if (batch.state === "staging") await submit(sql, batch, account, settings, options, result);
      else if (batch.state === "submitting") {
        await resume(sql, batch, account, settings, options, result);
      } else await poll(sql, batch, account, settings, options, result);
    } catch (err) {
      if (err instanceof BatchApiUnsupported) {
        options.log?.({ event: "batch_unsupported", batch: batch.id });
        await batchUnsupported(sql, batch.id, `the endpoint ${account.baseURL} has no batch API`);
        continue;
      }
      if (options.signal?.aborted) throw err;
      // A passing failure (the provider unreachable, a 5xx): tried again at
      // the next poll, where the batch's state says what is left to do.
      const message = (err as Error).message ?? String(err);
      if (isDatabaseError(err)) throw err;
      options.log?.({
        event: "batch_step_failed",
        batch: batch.id,
        state: batch.state,
        error: message,
      });
      await recordBatch(sql, batch.id, { due_in_seconds: settings.pollSeconds });
    }
  }
  options.log?.({ event: "batch_tick", ...result });
  return result;
}

/** A Postgres error (the caller's connection handling decides): anything with a SQLSTATE. */
function isDatabaseError(err: unknown): boolean {
  return typeof err === "object" && err !== null && "code" in err &&
    typeof (err as { code: unknown }).code === "string" &&
    /^[0-9A-Z]{5}$/.test((err as { code: string }).code);
}

/** A staging batch: cut to the limits (the account's enqueued tokens too), uploaded, created. */
async function submit(
  sql: postgres.Sql,
  batch: BatchRow,
  account: BatchAccount,
  settings: BatchSettings,
  options: BatchTickOptions,
  result: BatchTickResult,
) {
  options.log?.({ event: "batch_submitting", batch: batch.id });
  let maxTokens: number | null = null;
  if (settings.enqueuedTokens > 0) {
    const held = await enqueuedTokens(sql, account.baseURL, account.keyFingerprint, batch.model);
    maxTokens = settings.enqueuedTokens - held;
    if (maxTokens <= 0) {
      // The account's queue is full: this one waits for others to end.
      await recordBatch(sql, batch.id, { due_in_seconds: settings.pollSeconds });
      return;
    }
  }
  const taken = await takeBatchTexts(sql, batch, {
    maxRequests: settings.maxRequests,
    maxBytes: settings.maxBytes,
    maxTokens,
  }, account);
  if (!taken.texts.length) {
    // Nothing fits the account's enqueued tokens now: looked at again at the next poll.
    if (maxTokens !== null) {
      await recordBatch(sql, batch.id, { due_in_seconds: settings.pollSeconds });
    }
    return;
  }
  await upload(sql, { ...batch, id: taken.id }, account, taken.texts, settings, options, result);
}

/** Uploads a batch's texts and creates it. */
async function upload(
  sql: postgres.Sql,
  batch: BatchRow,
  account: BatchAccount,
  texts: { custom_id: string; input: string }[],
  settings: BatchSettings,
  options: BatchTickOptions,
  result: BatchTickResult,
) {
  options.log?.({ event: "batch_uploading", batch: batch.id, texts: texts.length });
  const fileId = await account.client.upload(
    texts.map((t) => ({ customId: t.custom_id, text: t.input })),
    options.signal,
  );
  await recordBatch(sql, batch.id, { input_file_id: fileId });
  await create(sql, batch, account, fileId, texts.length, settings, options, result);
}

async function create(
  sql: postgres.Sql,
  batch: BatchRow,
  account: BatchAccount,
  fileId: string,
  texts: number,
  settings: BatchSettings,
  options: BatchTickOptions,
  result: BatchTickResult,
) {
  const created = await account.client.create(
    fileId,
    { [BATCH_METADATA_KEY]: batch.id },
    options.signal,
  );
  await recordBatch(sql, batch.id, {
    state: "submitted",
    provider_batch_id: created.id,
    provider_status: created.status,
    submitted: true,
    due_in_seconds: settings.pollSeconds,
  });
  result.submitted++;
  result.submittedTexts += texts;
  options.log?.({ event: "batch_submitted", batch: batch.id, texts });
}

/** A submission a crashed worker left: find its batch, or create it, or upload again. */
async function resume(
  sql: postgres.Sql,
  batch: BatchRow,
  account: BatchAccount,
  settings: BatchSettings,
  options: BatchTickOptions,
  result: BatchTickResult,
) {
  if (batch.provider_batch_id) return await poll(sql, batch, account, settings, options, result);
  const found = await account.client.findByMetadata(BATCH_METADATA_KEY, batch.id, options.signal);
  if (found) {
    await recordBatch(sql, batch.id, {
      state: "submitted",
      provider_batch_id: found.id,
      input_file_id: found.inputFileId,
      provider_status: found.status,
      submitted: true,
      due_in_seconds: settings.pollSeconds,
    });
    return;
  }
  const texts = await batchTexts(sql, batch.id);
  if (batch.input_file_id) {
    return await create(
      sql,
      batch,
      account,
      batch.input_file_id,
      texts.length,
      settings,
      options,
      result,
    );
  }
  if (texts.length) await upload(sql, batch, account, texts, settings, options, result);
}

/** What the batch's end means for the texts it did not answer. */
function endOf(
  provider: ProviderBatch,
  settings: BatchSettings,
): {
  state: "applied" | "failed" | "expired" | "cancelled";
  unanswered: "resubmit" | "online";
  reason: string;
} | null {
  switch (provider.status) {
    case "completed":
      return {
        state: "applied",
        unanswered: "resubmit",
        reason: "the batch completed without an answer for it",
      };
    case "expired":
      return {
        state: "expired",
        unanswered: settings.onExpiry,
        reason: "the batch expired (24 h) before it was embedded",
      };
    case "cancelled":
      return { state: "cancelled", unanswered: "online", reason: "the batch was cancelled" };
    case "failed": {
      const codes = provider.errors.map((e) => e.code).join(", ") || "no reason given";
      // Over the account's enqueued tokens: the same texts go again, later.
      const again = provider.errors.some((e) => e.code === "token_limit_exceeded");
      return {
        state: "failed",
        unanswered: again ? "resubmit" : "online",
        reason: `the batch failed (${codes})`,
      };
    }
    default:
      return null;
  }
}

/** A submitted batch: cancel it if asked, poll it, and when it ended, apply it. */
async function poll(
  sql: postgres.Sql,
  batch: BatchRow,
  account: BatchAccount,
  settings: BatchSettings,
  options: BatchTickOptions,
  result: BatchTickResult,
) {
  const { client } = account;
  let provider: ProviderBatch;
  if (batch.error === "cancel requested") {
    provider = await client.cancel(batch.provider_batch_id!, options.signal);
    await recordBatch(sql, batch.id, { error: "cancelled by util.cancel_batches" });
  } else provider = await client.retrieve(batch.provider_batch_id!, options.signal);
  result.polled++;
  const end = endOf(provider, settings);
  await recordBatch(sql, batch.id, {
    provider_status: provider.status,
    completed: provider.counts.completed,
    failed: provider.counts.failed,
    output_file_id: provider.outputFileId,
    error_file_id: provider.errorFileId,
    due_in_seconds: end ? undefined : settings.pollSeconds,
  });
  if (!end) return;
  const ended = end.state === "applied";
  options.log?.({ event: "batch_applying", batch: batch.id, status: provider.status });
  const applying = performance.now();
  const vectorsBefore = result.vectors;
  const timing = { writeMs: 0 };
  // The output file (vectors: the costly part) within this call's line
  // budget, from where an earlier call stopped; then the error file, whole
  // (its lines carry no vectors, and applying one again changes nothing).
  if (provider.outputFileId) {
    const budget = options.maxLines ?? Infinity;
    if (
      !await applyFile(
        sql,
        batch,
        client,
        provider.outputFileId,
        ended,
        { budget },
        timing,
        options,
        result,
      )
    ) {
      // Cut short by this call's limit: the next tick goes on from here.
      await recordBatch(sql, batch.id, { due_in_seconds: 0 });
      return;
    }
  }
  if (provider.errorFileId) {
    await applyFile(sql, batch, client, provider.errorFileId, ended, null, timing, options, result);
  }
  const failed = await retryableErrors(sql, batch.id);
  if (
    failed.length >= Math.max(1, settings.resubmitErrors) && batch.attempt < settings.maxAttempts
  ) {
    await restageTexts(sql, batch, failed);
    result.resubmitted += failed.length;
  }
  const finishing = performance.now();
  result.resubmitted += await finishBatch(sql, batch.id, {
    state: end.state,
    providerStatus: provider.status,
    completed: provider.counts.completed,
    failed: provider.counts.failed,
    unanswered: end.unanswered,
    reason: end.reason,
  });
  result.ended++;
  options.log?.({
    event: "batch_ended",
    batch: batch.id,
    status: provider.status,
    vectors: result.vectors - vectorsBefore,
    // the output's download and its vectors' write (writeMs of it: the statements that write
    // them); the end and the parked jobs' release
    applyMs: Math.round(finishing - applying),
    writeMs: Math.round(timing.writeMs),
    releaseMs: Math.round(performance.now() - finishing),
  });
  // The provider keeps files until deleted: ours are of no use any more.
  for (const id of [provider.inputFileId, provider.outputFileId, provider.errorFileId]) {
    if (id) await client.deleteFile(id, options.signal).catch(() => {});
  }
}

/**
 * Applies an output or error file, streamed, APPLY_SLICE lines per
 * statement: vectors to their texts; error lines to theirs, which then go
 * online, or into a new batch when there are many (the caller decides).
 * Of a batch that did not complete (expired, cancelled, failed), the lines
 * that failed for a passing reason (not run before the expiry, say) are
 * left unanswered: util._finish_batch sends them where batch_on_expiry says.
 * With `resume` (the output file), the lines an earlier call applied (the
 * batch's applied_lines) are read past, at most `budget` lines are
 * applied, and the count is recorded with each slice. Returns false when
 * the budget ran out first.
 */
async function applyFile(
  sql: postgres.Sql,
  batch: BatchRow,
  client: BatchClient,
  fileId: string,
  completed: boolean,
  resume: { budget: number } | null,
  timing: { writeMs: number },
  options: BatchTickOptions,
  result: BatchTickResult,
): Promise<boolean> {
  let vectors: { customId: string; vector: Float32Array }[] = [];
  let errors: { customId: string; error: string; retryable: boolean }[] = [];
  let position = resume ? batch.applied_lines : 0;
  let budget = resume?.budget ?? Infinity;
  const flush = async () => {
    if (!vectors.length && !errors.length) return;
    const writing = performance.now();
    await applyBatchLines(sql, batch.id, vectors, errors, resume ? position : null);
    timing.writeMs += performance.now() - writing;
    result.vectors += vectors.length;
    result.errorLines += errors.length;
    vectors = [];
    errors = [];
  };
  for await (const line of client.results(fileId, options.signal, resume ? position : 0)) {
    if (budget <= 0) {
      await flush();
      return false;
    }
    position++;
    budget--;
    if ("vector" in line) vectors.push({ customId: line.customId, vector: line.vector });
    else if (!(line.retryable && !completed)) {
      errors.push({
        customId: line.customId,
        error: `the batch failed this text: ${line.error}`,
        retryable: line.retryable,
      });
    }
    if (vectors.length + errors.length >= APPLY_SLICE) await flush();
  }
  await flush();
  return true;
}
