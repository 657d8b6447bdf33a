// A guard for processes that hold a postgres.js pool (the embed function,
// the worker) against errors postgres.js 3.4.9 lets escape when the server
// drops its connections, e.g. on a restart: a timer that writes to a socket
// already closed ("Cannot read properties of null (reading 'write')",
// porsager/postgres #1154, #1208), and socket errors (ECONNRESET) rejecting a
// promise nobody holds. Nothing awaits them: the queries they belonged to
// have already failed with a connection error, and the pool reconnects on its
// next query. Left alone, either ends the process.
import { isConnectionError } from "./db_errors.ts";

/** Whether `error` is postgres.js's write on a closed socket (and not any other TypeError). */
export function isClosedSocketWrite(error: unknown): boolean {
  return error instanceof TypeError && error.message.includes("reading 'write'") &&
    (error.stack ?? "").includes("nextWrite");
}

/** A connection error with a code (ECONNRESET, CONNECTION_CLOSED, 57P01, ...), not a message match. */
function isCodedConnectionError(error: unknown): boolean {
  return typeof (error as { code?: unknown } | null)?.code === "string" && isConnectionError(error);
}

/**
 * Whether `error` is one of those two failures, which a process holding a
 * pool absorbs; anything else is a bug that must not be hidden.
 */
export function isDatabaseDisconnect(error: unknown): boolean {
  return isClosedSocketWrite(error) || isCodedConnectionError(error);
}

/**
 * Keeps the process alive through those errors only, logging each and then
 * calling `onSurvived` (e.g. to replace the pool); any other uncaught error or
 * unhandled rejection still ends the process. Returns a function that
 * removes the guard.
 */
export function surviveDatabaseDisconnects(
  log: (line: string) => void,
  onSurvived: (error: unknown) => void = () => {},
): () => void {
  const survived = (error: unknown) => {
    const e = error as { code?: string } | null;
    log(
      JSON.stringify({ event: "database_disconnect_survived", code: e?.code ?? "closed_socket" }),
    );
    onSurvived(error);
  };
  const onError = (event: ErrorEvent) => {
    if (!isDatabaseDisconnect(event.error)) return;
    event.preventDefault();
    survived(event.error);
  };
  const onRejection = (event: PromiseRejectionEvent) => {
    if (!isCodedConnectionError(event.reason)) return;
    event.preventDefault();
    survived(event.reason);
  };
  globalThis.addEventListener("error", onError);
  globalThis.addEventListener("unhandledrejection", onRejection);
  return () => {
    globalThis.removeEventListener("error", onError);
    globalThis.removeEventListener("unhandledrejection", onRejection);
  };
}
