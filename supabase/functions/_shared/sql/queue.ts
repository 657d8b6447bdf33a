// The batch's outcome, reported to the queue in one call each: finished jobs
// deleted, failed ones recorded and rescheduled (or dead-lettered) by
// util._record_failures, which also settles packed messages row by row,
// unstarted ones handed back visible at once.
import type postgres from "postgres";
import { QUEUE_NAME } from "../jobs.ts";

/** A failed attempt as util._record_failures takes it. */
export interface Failure {
  job_id: number;
  target_id: number | null;
  table_name: string | null;
  row_id: string | null;
  error: string;
  retryable: boolean;
  /** Seconds the provider asked us to wait (Retry-After). */
  retry_after?: number;
  /** A packed message's row left unstarted: it stays queued, no error, no backoff. */
  handed_back?: boolean;
}

/** How recordFailures reports a failure: by job, or by job and row for a packed message's row. */
export const failureKey = (jobId: number, rowId: string | null): string =>
  rowId === null ? String(jobId) : `${jobId}\u0000${rowId}`;

export async function deleteJobs(sql: postgres.Sql, jobIds: number[]): Promise<void> {
  if (!jobIds.length) return;
  await sql`select pgmq.delete(${QUEUE_NAME}, array(select jsonb_array_elements_text(${
    JSON.stringify(jobIds)
  }::text::jsonb)::bigint))`;
}

/**
 * Records failures and settles packed messages; returns, per failure
 * (failureKey), whether it was dead-lettered.
 */
export async function recordFailures(
  sql: postgres.Sql,
  failures: Failure[],
): Promise<Map<string, boolean>> {
  if (!failures.length) return new Map();
  const outcome = await sql<{ job_id: string; row_id: string | null; dead_lettered: boolean }[]>`
    select job_id, row_id, dead_lettered from util._record_failures(${
    JSON.stringify(failures)
  }::text::jsonb)`;
  return new Map(outcome.map((o) => [failureKey(Number(o.job_id), o.row_id), o.dead_lettered]));
}

/** Makes jobs visible again at once (time budget spent, or shutdown). */
export async function handBack(sql: postgres.Sql, jobIds: number[]): Promise<void> {
  if (!jobIds.length) return;
  await sql`select pgmq.set_vt(${QUEUE_NAME}, id::bigint, 0)
              from jsonb_array_elements_text(${JSON.stringify(jobIds)}::text::jsonb) id`;
}
