// The shape of an embedding job, as util.process_embeddings posts it and the
// worker reads it from the `embedding_jobs` queue. Validation is strict so a
// forged or mangled message is refused before anything touches SQL.
import { z } from "zod";

/**
 * Text Postgres can hold (as text and in jsonb): well-formed Unicode without
 * NUL. Anything else would fail the SQL that records the job's refusal.
 */
const storable = (s: string) => s.isWellFormed() && !s.includes("\0");
const STORABLE = "contains NUL or an unpaired surrogate";

/** Postgres identifiers as users write them: no NUL, at most 63 bytes. */
const identifier = z.string().min(1).max(63).refine(storable, STORABLE);

/** A row's primary key value as a message holds it. */
const rowId = z.union([
  z.string().min(1).max(1000).refine(storable, STORABLE),
  z.number().int().refine(Number.isSafeInteger, "unsafe integer"),
]);

/** Most row ids one packed message holds (the triggers and sweeps pack 100). */
export const MAX_PACKED_IDS = 1000;

const target = {
  schema: identifier,
  table: identifier,
  contentFunction: z.string().min(1).max(200).refine(storable, STORABLE),
  embeddingColumn: identifier,
  /** A sweep's job of a batch-lane target (supabase/schemas/55_batch_lane.sql); live edits have none. */
  lane: z.literal("batch").optional(),
  /** Waited for its batch (util._settle_jobs marks it; a release removes it). */
  parked: z.boolean().optional(),
};

/** A queue message body for one row (a row-level trigger's). */
export const jobMessageSchema = z.object({ id: rowId, ...target });

/**
 * A packed message: the rows of one statement or sweep step, up to 100 a
 * message (the triggers' and sweeps' packing). The core expands it into one job per row and
 * settles it row by row (sql/queue.ts).
 */
export const packedMessageSchema = z.object({
  ids: z.array(rowId).min(1).max(MAX_PACKED_IDS),
  ...target,
});

/** A job as the embed function receives it: the message plus its queue id and attempt. */
export const jobSchema = jobMessageSchema.extend({
  jobId: z.number().int().positive(),
  attempt: z.number().int().nonnegative().optional(),
  /** One row of a packed message (its other rows share the jobId). */
  packed: z.boolean().optional(),
});

export type JobMessage = z.infer<typeof jobMessageSchema>;
export type PackedMessage = z.infer<typeof packedMessageSchema>;
export type Job = z.infer<typeof jobSchema>;

/** Most jobs (queue messages) one request to the embed function may carry. */
export const MAX_BATCH_JOBS = 5000;

/** Most rows they may ask for, packed messages expanded. */
export const MAX_BATCH_ROWS = 10_000;

/** A message refused before any SQL ran: recorded and dead-lettered, never retried. */
export interface RefusedJob {
  jobId: number;
  error: string;
}

/**
 * JSON.parse for job messages and batches, keeping ids exact: an `id` (or an
 * element of `ids`) no JS number holds (a bigint key beyond 2^53, a
 * fractional numeric key) becomes its source text, which the core compares
 * as text like any other key.
 */
export function parseJobJson(text: string): unknown {
  return JSON.parse(
    text,
    function (this: unknown, key: string, value: unknown, context?: { source?: string }) {
      return (key === "id" || Array.isArray(this)) && typeof value === "number" &&
          !Number.isSafeInteger(value) && context?.source !== undefined
        ? context.source
        : value;
    },
  );
}

/**
 * One queue message: the job (one row, or packed rows), or why it is
 * refused. The reason names the field and the rule it breaks, never the
 * message's content.
 */
export function checkJobMessage(
  message: unknown,
): { job: JobMessage | PackedMessage } | { error: string } {
  const packed = typeof message === "object" && message !== null && "ids" in message;
  if (packed && "id" in message) {
    return { error: "refused: malformed job message (ids: a message has id or ids, not both)" };
  }
  const parsed = (packed ? packedMessageSchema : jobMessageSchema).safeParse(message);
  if (parsed.success) return { job: parsed.data };
  const issue = parsed.error.issues[0];
  const field = issue.path.length ? `${issue.path.join(".")}: ` : "";
  return { error: `refused: malformed job message (${field}${issue.message})` };
}

/** The jobs of one queue message: one per row (a packed message's share its jobId). */
export function jobsOf(
  message: JobMessage | PackedMessage,
  jobId: number,
  attempt: number | undefined,
): Job[] {
  const { schema, table, contentFunction, embeddingColumn } = message;
  const lane = message.lane ? { lane: message.lane } : {};
  if ("id" in message) {
    return [{
      id: message.id,
      schema,
      table,
      contentFunction,
      embeddingColumn,
      jobId,
      attempt,
      ...lane,
    }];
  }
  return message.ids.map((id) => ({
    id,
    schema,
    table,
    contentFunction,
    embeddingColumn,
    jobId,
    attempt,
    packed: true,
    ...lane,
  }));
}

const isJobId = (v: unknown): v is number =>
  typeof v === "number" && Number.isSafeInteger(v) && v > 0;

/**
 * A request body of the embed function: its jobs, and the messages refused
 * one by one, so that one malformed message never fails (and blocks) the
 * genuine jobs of its batch. Only a body that is not a batch at all (not an
 * array, too long, an element without its queue id) is an error as a whole.
 */
export function parseJobBatch(body: unknown): { jobs: Job[]; refused: RefusedJob[] } | {
  error: string;
} {
  if (!Array.isArray(body)) return { error: "the body must be a JSON array of jobs" };
  if (body.length === 0 || body.length > MAX_BATCH_JOBS) {
    return { error: `a batch holds 1 to ${MAX_BATCH_JOBS} jobs, this one ${body.length}` };
  }
  const jobs: Job[] = [];
  const refused: RefusedJob[] = [];
  for (let i = 0; i < body.length; i++) {
    const item = body[i] as { jobId?: unknown; attempt?: unknown } | null;
    const attempt = item?.attempt;
    if (
      typeof item !== "object" || item === null || Array.isArray(item) || !isJobId(item.jobId) ||
      (attempt !== undefined && !(Number.isSafeInteger(attempt) && (attempt as number) >= 0))
    ) {
      return {
        error: `job ${i} has no valid jobId (a positive integer) or attempt: ` +
          "each job is a queue message with its id, as util.process_embeddings sends it",
      };
    }
    const checked = checkJobMessage(item);
    if ("job" in checked) {
      jobs.push(...jobsOf(checked.job, item.jobId, attempt as number | undefined));
    } else refused.push({ jobId: item.jobId, error: checked.error });
  }
  if (jobs.length > MAX_BATCH_ROWS) {
    return { error: `a batch holds at most ${MAX_BATCH_ROWS} rows, this one ${jobs.length}` };
  }
  return { jobs, refused };
}

export const QUEUE_NAME = "embedding_jobs";

/** Channel the triggers NOTIFY after enqueueing, so listening workers wake at once. */
export const NOTIFY_CHANNEL = "embedding_jobs";
