// The batch lane's SQL (supabase/schemas/55_batch_lane.sql), for the core
// (looking texts up, staging them) and the batch tick (submitting, polling,
// applying): every statement that touches util.embedding_batches and
// util.embedding_batch_inputs is here.
import { Buffer } from "node:buffer";
import type postgres from "postgres";
import { textArrayLiteral } from "./write.ts";

/** What the batch lane holds for a text of a target. */
export type BatchText =
  | { vector: Float32Array }
  | { error: string }
  /** In batch `batch`, not answered yet. */
  | { pending: number };

/** The batch lane's texts of `target` among `customIds` (one query). */
export async function lookUpBatchTexts(
  sql: postgres.Sql,
  targetId: number,
  customIds: string[],
): Promise<Map<string, BatchText>> {
  const rows = await sql<
    { custom_id: string; batch_id: string; vector: Uint8Array | null; error: string | null }[]
  >`
    select custom_id, batch_id::text, vector, error from util.embedding_batch_inputs
     where target_id = ${targetId} and custom_id = any (${textArrayLiteral(customIds)}::text[])`;
  const texts = new Map<string, BatchText>();
  for (const r of rows) {
    texts.set(
      r.custom_id,
      r.vector
        ? { vector: float32FromBytes(r.vector) }
        : r.error !== null
        ? { error: r.error }
        : { pending: Number(r.batch_id) },
    );
  }
  return texts;
}

/**
 * Stages texts of a target into its open batch (util._stage_batch_inputs):
 * that batch's id; null when its endpoint has no batch API (nothing was
 * staged: its texts go online).
 */
export async function stageBatchTexts(
  sql: postgres.Sql,
  targetId: number,
  inputs: { custom_id: string; input: string; tokens: number }[],
): Promise<number | null> {
  const [{ staged }] = await sql<{ staged: string | null }[]>`
    select util._stage_batch_inputs(${targetId}, ${
    JSON.stringify(inputs)
  }::text::jsonb)::text as staged`;
  return staged === null ? null : Number(staged);
}

/** A row of util.embedding_batches as the tick reads it. */
export interface BatchRow {
  id: string;
  target_id: number;
  model: string;
  dimensions: number;
  state: "staging" | "submitting" | "submitted";
  provider_batch_id: string | null;
  input_file_id: string | null;
  base_url: string | null;
  key_fingerprint: string | null;
  requests: number;
  tokens: string;
  attempt: number;
  applied_lines: number;
  error: string | null;
}

/**
 * The batches due for a look, each moved on by `leaseSeconds`
 * (util._claim_due_batches); with `stagingNow`, every staging batch too.
 */
export async function claimDueBatches(
  sql: postgres.Sql,
  leaseSeconds: number,
  maxBatches: number,
  stagingNow = false,
): Promise<BatchRow[]> {
  return await sql<BatchRow[]>`
    select id::text, target_id, model, dimensions, state, provider_batch_id, input_file_id, base_url,
           key_fingerprint, requests, tokens::text, attempt, applied_lines, error
      from util._claim_due_batches(${leaseSeconds}, ${maxBatches}, ${stagingNow})`;
}

/** The batch lane's settings the tick needs (util.settings). */
export interface BatchSettings {
  pollSeconds: number;
  maxRequests: number;
  maxBytes: number;
  enqueuedTokens: number;
  onExpiry: "resubmit" | "online";
  resubmitErrors: number;
  maxAttempts: number;
}

export async function batchSettings(sql: postgres.Sql): Promise<BatchSettings> {
  const rows = await sql<{ name: string; value: string }[]>`
    select name, value from util.settings where name like 'batch\\_%'`;
  const v = new Map(rows.map((r) => [r.name, r.value]));
  const int = (name: string, fallback: number) => {
    const n = Number(v.get(name));
    return Number.isSafeInteger(n) && n >= 0 ? n : fallback;
  };
  return {
    pollSeconds: Math.max(1, int("batch_poll_seconds", 60)),
    maxRequests: Math.max(1, Math.min(50_000, int("batch_max_requests", 50_000))),
    maxBytes: Math.max(1024, Math.min(200 * 1024 * 1024, int("batch_max_bytes", 180_000_000))),
    enqueuedTokens: int("batch_enqueued_tokens", 0),
    onExpiry: v.get("batch_on_expiry") === "online" ? "online" : "resubmit",
    resubmitErrors: int("batch_resubmit_errors", 100),
    maxAttempts: Math.max(1, int("batch_max_attempts", 3)),
  };
}

/** Tokens of the account's batches of `model` the provider still holds. */
export async function enqueuedTokens(
  sql: postgres.Sql,
  baseURL: string,
  keyFingerprint: string,
  model: string,
): Promise<number> {
  const [{ n }] = await sql<{ n: string }[]>`
    select util._batch_enqueued_tokens(${baseURL}, ${keyFingerprint}, ${model}) as n`;
  return Number(n);
}

/**
 * Readies a staging batch for submission within the limits
 * (util._take_batch_inputs: the texts that fit go, in a batch of their own
 * when some stay) and records the account it goes to. Returns the
 * submitting batch's id and its texts; none: nothing to send now.
 */
export async function takeBatchTexts(
  sql: postgres.Sql,
  batch: BatchRow,
  limits: { maxRequests: number; maxBytes: number; maxTokens: number | null },
  account: { baseURL: string; keyFingerprint: string },
): Promise<{ id: string; texts: { custom_id: string; input: string }[] }> {
  return await sql.begin(async (tx) => {
    await tx`
      update util.embedding_batches
         set base_url = ${account.baseURL}, key_fingerprint = ${account.keyFingerprint}
       where id = ${batch.id}::bigint`;
    const texts = await tx<{ submitting: string; custom_id: string; input: string }[]>`
      select submitting::text, custom_id, input from util._take_batch_inputs(
        ${batch.id}::bigint, ${limits.maxRequests}, ${limits.maxBytes}, ${limits.maxTokens})`;
    return { id: texts[0]?.submitting ?? batch.id, texts };
  });
}

/** The texts of a batch still to send (a submission a crashed worker left before its upload). */
export async function batchTexts(
  sql: postgres.Sql,
  batchId: string,
): Promise<{ custom_id: string; input: string }[]> {
  return await sql<{ custom_id: string; input: string }[]>`
    select custom_id, input from util.embedding_batch_inputs
     where batch_id = ${batchId}::bigint and vector is null and error is null and input is not null
     order by custom_id`;
}

/** Records what the provider said of a batch (ids, status, counts) and when to look again. */
export async function recordBatch(
  sql: postgres.Sql,
  batchId: string,
  fields: {
    state?: "submitting" | "submitted";
    provider_batch_id?: string;
    input_file_id?: string;
    output_file_id?: string | null;
    error_file_id?: string | null;
    provider_status?: string;
    completed?: number;
    failed?: number;
    submitted?: boolean;
    due_in_seconds?: number;
    error?: string | null;
  },
): Promise<void> {
  await sql`
    update util.embedding_batches b
       set state = coalesce(${fields.state ?? null}, b.state),
           provider_batch_id = coalesce(${fields.provider_batch_id ?? null}, b.provider_batch_id),
           input_file_id = coalesce(${fields.input_file_id ?? null}, b.input_file_id),
           output_file_id = coalesce(${fields.output_file_id ?? null}, b.output_file_id),
           error_file_id = coalesce(${fields.error_file_id ?? null}, b.error_file_id),
           provider_status = coalesce(${fields.provider_status ?? null}, b.provider_status),
           completed = coalesce(${fields.completed ?? null}, b.completed),
           failed = coalesce(${fields.failed ?? null}, b.failed),
           submitted_at = case when ${fields.submitted ?? false} then now() else b.submitted_at end,
           due_at = case when ${fields.due_in_seconds ?? null}::int is null then b.due_at
                         else now() + make_interval(secs => ${
    fields.due_in_seconds ?? null
  }::int) end,
           error = case when ${fields.error !== undefined} then ${
    fields.error ?? null
  } else b.error end
     where b.id = ${batchId}::bigint`;
}

/**
 * Writes a slice of a batch's output: vectors (float32 bytes) and error
 * lines, by custom id, and how many lines of its output file are applied
 * now (`appliedLines`; null: an error file's), in one transaction.
 */
export async function applyBatchLines(
  sql: postgres.Sql,
  batchId: string,
  vectors: { customId: string; vector: Float32Array }[],
  errors: { customId: string; error: string; retryable: boolean }[],
  appliedLines: number | null,
): Promise<void> {
  await sql.begin(async (tx) => {
    if (vectors.length) {
      const hex = vectors.map((v) =>
        "\\x" +
        Buffer.from(v.vector.buffer, v.vector.byteOffset, v.vector.byteLength).toString("hex")
      );
      await tx`
        update util.embedding_batch_inputs i set vector = v.vector, input = null
          from unnest(${textArrayLiteral(vectors.map((v) => v.customId))}::text[],
                      ${textArrayLiteral(hex)}::text[]::bytea[]) as v(custom_id, vector)
         where i.batch_id = ${batchId}::bigint and i.custom_id = v.custom_id`;
    }
    if (errors.length) {
      await tx`
        update util.embedding_batch_inputs i set error = e.error, error_retryable = e.retryable
          from jsonb_to_recordset(${
        JSON.stringify(
          errors.map((e) => ({ custom_id: e.customId, error: e.error, retryable: e.retryable })),
        )
      }::text::jsonb) as e(custom_id text, error text, retryable boolean)
         where i.batch_id = ${batchId}::bigint and i.custom_id = e.custom_id`;
    }
    if (appliedLines !== null) {
      await tx`
        update util.embedding_batches set applied_lines = ${appliedLines}
         where id = ${batchId}::bigint`;
    }
  });
}

/** The texts of a batch its error file failed for a passing reason (a new batch takes them when many). */
export async function retryableErrors(sql: postgres.Sql, batchId: string): Promise<string[]> {
  const rows = await sql<{ custom_id: string }[]>`
    select custom_id from util.embedding_batch_inputs
     where batch_id = ${batchId}::bigint and error is not null and error_retryable`;
  return rows.map((r) => r.custom_id);
}

/** Moves texts of a batch that failed into a new batch (util._restage). */
export async function restageTexts(
  sql: postgres.Sql,
  batch: BatchRow,
  customIds: string[],
): Promise<void> {
  if (!customIds.length) return;
  await sql`
    select util._restage(${batch.id}::bigint, ${textArrayLiteral(customIds)}::text[],
                         ${batch.attempt + 1}, 0)`;
}

/** Ends a batch at the provider's final word (util._finish_batch). Returns the texts resubmitted. */
export async function finishBatch(
  sql: postgres.Sql,
  batchId: string,
  end: {
    state: "applied" | "failed" | "expired" | "cancelled";
    providerStatus: string;
    completed: number;
    failed: number;
    unanswered: "resubmit" | "online";
    reason: string;
  },
): Promise<number> {
  const [{ n }] = await sql<{ n: string }[]>`
    select util._finish_batch(${batchId}::bigint, ${end.state}, ${end.providerStatus}, ${end.completed},
                              ${end.failed}, ${end.unanswered}, ${end.reason}) as n`;
  return Number(n);
}

/** The endpoint has no batch API: the target's texts go online (util._batch_unsupported). */
export async function batchUnsupported(
  sql: postgres.Sql,
  batchId: string,
  detail: string,
): Promise<void> {
  await sql`select util._batch_unsupported(${batchId}::bigint, ${detail})`;
}

/** Float32 values from little-endian bytes (a copy: bytea's bytes need not be aligned). */
function float32FromBytes(bytes: Uint8Array): Float32Array {
  const copy = new Uint8Array(bytes.length);
  copy.set(bytes);
  return new Float32Array(copy.buffer, 0, copy.length >> 2);
}
