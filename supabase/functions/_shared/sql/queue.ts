// The queue, for the core, the embed function and the worker: the one
// TypeScript module that reaches the jobs module's SQL (supabase/schemas/
// 16_jobs.sql), which alone touches pgmq. Claims sized by rows, one settle
// call per batch, hand-backs after a lost connection.
import type postgres from "postgres";
import { checkJobMessage, type Job, jobsOf, parseJobJson, type RefusedJob } from "../jobs.ts";
import { errorCode } from "../db_errors.ts";
import type { Target } from "./targets.ts";

/** What became of a row (row_id) of a message that is not done, or of a whole message (null). */
export interface SettledRow {
  job_id: number;
  row_id: string | null;
  /**
   * failed: the row's own failure, one attempt spent; deferred: stopped by a
   * provider-wide failure, no attempt spent; parked: its texts wait in a
   * batch of the batch lane, no attempt spent, hidden until the batch ends;
   * unstarted: time budget or
   * shutdown, no attempt spent.
   */
  kind: "failed" | "deferred" | "unstarted" | "parked";
  error?: string;
  retryable?: boolean;
  /** Seconds the provider asked us to wait (Retry-After). */
  retry_after?: number;
  target_id?: number | null;
  table_name?: string | null;
  /** Parked: the batch it waits for (its end releases it). */
  batch_id?: number;
}

/** A provider's health as one batch saw it: ok closes its circuit, a failure opens it. */
export interface CircuitReport {
  provider: string;
  ok: boolean;
  reason?: string;
  /** Seconds the provider asked us to wait (Retry-After). */
  retry_after?: number;
}

/** A batch's tokens for one target (util._record_usage): sent online, brought by the batch lane, saved by reuse. */
export interface TargetUsage {
  target_id: number;
  model: string;
  online_tokens: number;
  online_inputs: number;
  batch_tokens: number;
  batch_inputs: number;
  reused_tokens: number;
  reused_inputs: number;
}

/** Until when settleJobs uses util._settle_jobs alone (epoch ms): see there. */
let legacyUntil = 0;

/** How settleJobs reports a failure: by job, or by job and row for a packed message's row. */
export const failureKey = (jobId: number, rowId: string | null): string =>
  rowId === null ? String(jobId) : `${jobId}\u0000${rowId}`;

export interface ClaimOptions {
  /** Seconds the claimed messages stay hidden: an unfinished batch reappears after it. */
  visibilitySeconds: number;
  /** Most rows (a packed message counts its rows). */
  maxRows: number;
  /** Only messages containing this (e.g. {table}); {} for all. */
  filter?: Record<string, string>;
}

/**
 * One claim (util._read_jobs): the jobs read, a packed message expanded into
 * its rows, and the malformed messages among them, which the core records
 * with the batch's failures so that they are dead-lettered at once.
 */
export async function claimJobs(
  sql: postgres.Sql,
  options: ClaimOptions,
): Promise<{ jobs: Job[]; refused: RefusedJob[] }> {
  // The message as text: parseJobJson keeps ids exact that a JS number cannot hold.
  const rows = await sql<{ msg_id: string; read_ct: number; message: string | null }[]>`
    select msg_id, read_ct, message::text as message
      from util._read_jobs(${options.visibilitySeconds}, ${options.maxRows}, ${
    sql.json(options.filter ?? {})
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
 * Settles a batch in one call (util._settle_batch, which runs
 * util._settle_jobs): `done` messages are deleted, the rest settled row by
 * row, circuits opened or closed; in the same transaction the done
 * messages' time to fresh and the batch's `usage` are recorded. Returns,
 * per failed outcome (failureKey), whether it was dead-lettered.
 */
export async function settleJobs(
  sql: postgres.Sql,
  done: number[],
  outcomes: SettledRow[],
  circuits: CircuitReport[],
  usage: TargetUsage[] = [],
): Promise<Map<string, boolean>> {
  if (!done.length && !outcomes.length && !circuits.length && !usage.length) return new Map();
  type Settled = { job_id: string; row_id: string | null; dead_lettered: boolean }[];
  const ids = JSON.stringify(done);
  const legacy = () =>
    sql<Settled>`
      select job_id, row_id, dead_lettered from util._settle_jobs(
        array(select jsonb_array_elements_text(${ids}::text::jsonb)::bigint),
        ${JSON.stringify(outcomes)}::text::jsonb, ${JSON.stringify(circuits)}::text::jsonb)`;
  let settled: Settled;
  if (Date.now() < legacyUntil) settled = await legacy();
  else {
    try {
      settled = await sql<Settled>`
        select job_id, row_id, dead_lettered from util._settle_batch(
          array(select jsonb_array_elements_text(${ids}::text::jsonb)::bigint),
          ${JSON.stringify(outcomes)}::text::jsonb, ${JSON.stringify(circuits)}::text::jsonb,
          ${JSON.stringify(usage)}::text::jsonb)`;
    } catch (err) {
      // A database whose migrations predate util._settle_batch (code deployed
      // before `db push`): settled as before, without the figures; looked for
      // again a minute later.
      if (errorCode(err) !== "42883") throw err;
      legacyUntil = Date.now() + 60_000;
      settled = await legacy();
    }
  }
  return new Map(settled.map((o) => [failureKey(Number(o.job_id), o.row_id), o.dead_lettered]));
}

/**
 * Makes claimed messages visible again in `delaySeconds`; with
 * `giveBackAttempt`, their claim costs their rows no attempt (a lost
 * database connection is no row's failure).
 */
export async function requeueJobs(
  sql: postgres.Sql,
  jobIds: number[],
  delaySeconds: number,
  giveBackAttempt: boolean,
): Promise<void> {
  if (!jobIds.length) return;
  await sql`select util._requeue_jobs(
    array(select jsonb_array_elements_text(${JSON.stringify(jobIds)}::text::jsonb)::bigint),
    ${delaySeconds}, ${giveBackAttempt})`;
}

/** Rows queued in all, visible or not. */
export async function queuedRows(sql: postgres.Sql): Promise<number> {
  const [{ n }] = await sql<{ n: string }[]>`select util._queued_rows() as n`;
  return Number(n);
}

/**
 * Notes on rows written with a loss (a chunk embedded truncated, one
 * indivisible unit over the model's input limit): a row of
 * util.embedding_errors each, not retryable and not dead-lettered, so a user
 * sees which rows lost text from their vectors.
 */
export async function recordNotes(
  sql: postgres.Sql,
  target: Target,
  notes: { rowId: string; error: string }[],
): Promise<void> {
  if (notes.length === 0) return;
  await sql`
    insert into util.embedding_errors (target_id, table_name, row_id, retryable, error)
    select ${target.id}, ${`${target.schema_name}.${target.table_name}`}, n.row_id, false, n.error
      from jsonb_to_recordset(${
    JSON.stringify(notes.map((n) => ({ row_id: n.rowId, error: n.error })))
  }::text::jsonb) as n(row_id text, error text)`;
}
