// Database errors, classified in one place for the core, the embed function,
// the worker and the local stack: which mean "the database is unreachable"
// (wait and reconnect), which are worth retrying at once, and which SQLSTATEs
// the pipeline's own SQL raises.
import pg from "pg";
import { backoffMs, RECONNECT } from "./recovery.ts";
import { sleep } from "./sleep.ts";

/** SQLSTATEs worth retrying at once (deadlock, serialization failure). */
export const RETRY_NOW_SQLSTATES = new Set(["40P01", "40001"]);

/**
 * SQLSTATEs the pipeline's SQL raises (class AE): callers branch on these,
 * never on message text.
 */
export const PIPELINE_SQLSTATES = {
  /** An index on the embedding column that a model change cannot carry over. */
  indexNotCarried: "AE001",
  /** The table (or table and column) is not attached. */
  notAttached: "AE002",
  /** A registration or argument mistake (message, detail and hint say which). */
  invalidArgument: "AE003",
  /** Configuration missing, e.g. a Vault secret. */
  configurationMissing: "AE004",
} as const;

/** Connection-level error codes of postgres.js and of the socket below it. */
const CONNECTION_CODES = new Set([
  "57P01", // admin_shutdown
  "57P02", // crash_shutdown
  "57P03", // cannot_connect_now
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  "CONNECT_TIMEOUT",
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ERR_STREAM_WRITE_AFTER_END",
]);

/** The SQLSTATE or client error code of `err`, if it has one. */
export function errorCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

/**
 * Errors that mean the database is unreachable, as opposed to a failing
 * statement: SQLSTATE class 08, the shutdown codes, and socket errors (which
 * carry no SQLSTATE, e.g. a write on a socket the server already closed).
 */
export function isConnectionError(err: unknown): boolean {
  const e = err as { name?: string; message?: string } | null;
  const code = errorCode(err) ?? "";
  if (code.startsWith("08") || CONNECTION_CODES.has(code)) return true;
  // A server's error answer (postgres.js's or node-postgres's) is a failing statement.
  if (e?.name === "PostgresError" || err instanceof pg.DatabaseError) return false;
  // Socket errors, and node-postgres's "Connection terminated unexpectedly" and
  // "timeout exceeded when trying to connect" (its pool's connect timeout).
  return /socket|connection|trying to connect/i.test(e?.message ?? "");
}

/** Whether a failed statement is worth running again at once. */
export function isRetryableNow(err: unknown): boolean {
  return RETRY_NOW_SQLSTATES.has(errorCode(err) ?? "");
}

export interface ReconnectOptions {
  /** Epoch ms after which no attempt starts; the last error is thrown then. */
  deadline: number;
  /** Stops the waiting (runtime shutdown); the last error is thrown then. */
  signal?: AbortSignal;
  /** Told of each connection error that is waited out (attempt is 1-based). */
  onRetry?: (attempt: number, err: unknown) => void;
}

/**
 * Runs `attempt` and runs it again, after a pause of the recovery policy's
 * reconnect curve (recovery.ts: 200 ms doubling to 5 s, jittered), for as
 * long as it fails because the database is unreachable and `deadline` is
 * ahead: a restart of Postgres then costs the caller a few hundred
 * milliseconds instead of the whole operation. Other errors, and a client
 * ended on purpose, are thrown at once. `attempt` must be safe to repeat
 * (the core's batch is: its writes compare and set on the content hash).
 */
export async function waitOutDisconnect<T>(
  attempt: () => Promise<T>,
  options: ReconnectOptions,
): Promise<T> {
  for (let n = 1;; n++) {
    try {
      return await attempt();
    } catch (err) {
      // CONNECTION_ENDED: this client was ended on purpose; it will not come back.
      if (!isConnectionError(err) || errorCode(err) === "CONNECTION_ENDED") throw err;
      if (options.signal?.aborted) throw err;
      const wait = backoffMs(n, RECONNECT);
      if (Date.now() + wait >= options.deadline) throw err;
      options.onRetry?.(n, err);
      await sleep(wait, options.signal);
      if (options.signal?.aborted) throw err;
    }
  }
}
