// The shape of an embedding job, as util.process_embeddings posts it and the
// worker reads it from the `embedding_jobs` queue. Validation is strict so a
// forged or mangled message is refused before anything touches SQL.
import { z } from "zod";

/** Postgres identifiers as users write them: no NUL, at most 63 bytes. */
const identifier = z.string().min(1).max(63).refine((s) => !s.includes("\0"), "contains NUL");

/** A queue message body (what the triggers enqueue). */
export const jobMessageSchema = z.object({
  id: z.union([
    z.string().min(1).max(1000),
    z.number().int().refine(Number.isSafeInteger, "unsafe integer"),
  ]),
  schema: identifier,
  table: identifier,
  contentFunction: z.string().min(1).max(200),
  embeddingColumn: identifier,
});

/** A job as the embed function receives it: the message plus its queue id and attempt. */
export const jobSchema = jobMessageSchema.extend({
  jobId: z.number().int().positive(),
  attempt: z.number().int().nonnegative().optional(),
});

export type JobMessage = z.infer<typeof jobMessageSchema>;
export type Job = z.infer<typeof jobSchema>;

/** The request body of the embed function: a non-empty array of jobs. */
export const jobBatchSchema = z.array(jobSchema).min(1).max(5000);

export const QUEUE_NAME = "embedding_jobs";

/** Channel the triggers NOTIFY after enqueueing, so listening workers wake at once. */
export const NOTIFY_CHANNEL = "embedding_jobs";
