// The guard against errors postgres.js lets escape when the server drops its
// connections (supabase/functions/_shared/postgres_guard.ts): it keeps the
// process alive through those, and only those.
import assert from "node:assert/strict";
import { setImmediate } from "node:timers";
import {
  isClosedSocketWrite,
  isDatabaseDisconnect,
  surviveDatabaseDisconnects,
} from "../../supabase/functions/_shared/postgres_guard.ts";
import { waitFor } from "../../devtools/wait.ts";

/** What postgres.js's queued write does once closed() has set its socket to null. */
function nextWrite() {
  const socket = null as unknown as { write(): void };
  socket.write();
}

/** The throw as postgres.js makes it: socket.write on a null socket, in nextWrite. */
function closedSocketWriteError(): TypeError {
  try {
    nextWrite();
  } catch (err) {
    return err as TypeError;
  }
  throw new Error("unreachable");
}

Deno.test("isClosedSocketWrite recognises postgres.js's closed-socket write, nothing else", () => {
  assert.equal(isClosedSocketWrite(closedSocketWriteError()), true);
  assert.equal(
    isClosedSocketWrite(new TypeError("Cannot read properties of null (reading 'write')")),
    false,
  );
  assert.equal(isClosedSocketWrite(new TypeError("x is not a function")), false);
  assert.equal(isClosedSocketWrite("reading 'write' nextWrite"), false);
});

const connectionReset = () => Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET" });

Deno.test("isDatabaseDisconnect: the closed-socket write and coded connection errors, nothing else", () => {
  assert.equal(isDatabaseDisconnect(closedSocketWriteError()), true);
  assert.equal(isDatabaseDisconnect(connectionReset()), true);
  assert.equal(isDatabaseDisconnect(Object.assign(new Error("x"), { code: "57P01" })), true);
  assert.equal(isDatabaseDisconnect(new Error("socket hang up")), false, "a message alone");
  assert.equal(isDatabaseDisconnect(new TypeError("x is not a function")), false);
  assert.equal(isDatabaseDisconnect(Object.assign(new Error("x"), { code: "23505" })), false);
  assert.equal(isDatabaseDisconnect(null), false);
});

/** Runs `fn` with the guard installed; it sees the guard's log lines and what it passed on. */
async function withGuard(
  fn: (seen: string[], survived: unknown[]) => void | Promise<void>,
): Promise<void> {
  const seen: string[] = [];
  const survived: unknown[] = [];
  const unguard = surviveDatabaseDisconnects((line) => seen.push(line), (e) => survived.push(e));
  try {
    await fn(seen, survived);
  } finally {
    unguard();
  }
}

Deno.test("surviveDatabaseDisconnects keeps the process alive through that throw from a timer", () =>
  withGuard(async (seen, survived) => {
    setImmediate(nextWrite);
    await waitFor(() => seen.length > 0, { what: "the guard to see the throw" });
    assert.deepEqual(seen, ['{"event":"database_disconnect_survived","code":"closed_socket"}']);
    assert.equal(survived.length, 1);
    assert.ok(isClosedSocketWrite(survived[0]), "onSurvived gets the error");
  }));

Deno.test("surviveDatabaseDisconnects keeps the process alive through an unheld socket error", () =>
  withGuard(async (seen, survived) => {
    // As a socket error reaches a promise of postgres.js that nobody holds.
    Promise.reject(connectionReset());
    await waitFor(() => seen.length > 0, { what: "the guard to see the rejection" });
    assert.deepEqual(seen, ['{"event":"database_disconnect_survived","code":"ECONNRESET"}']);
    assert.equal((survived[0] as { code?: string }).code, "ECONNRESET");
  }));

Deno.test("surviveDatabaseDisconnects leaves any other error to end the process", () =>
  withGuard((seen, survived) => {
    // Dispatched by hand, as the runtime does before it decides whether an error is fatal.
    const bug = new ErrorEvent("error", {
      error: new TypeError("x is not a function"),
      cancelable: true,
    });
    globalThis.dispatchEvent(bug);
    assert.equal(bug.defaultPrevented, false, "an uncaught bug stays fatal");
    const rejection = new PromiseRejectionEvent("unhandledrejection", {
      promise: Promise.resolve(),
      reason: new RangeError("a bug nobody awaited"),
      cancelable: true,
    });
    globalThis.dispatchEvent(rejection);
    assert.equal(rejection.defaultPrevented, false, "an unhandled bug stays fatal");
    const disconnect = new ErrorEvent("error", {
      error: closedSocketWriteError(),
      cancelable: true,
    });
    globalThis.dispatchEvent(disconnect);
    assert.equal(disconnect.defaultPrevented, true, "the disconnect is absorbed");
    assert.equal(seen.length, 1);
    assert.equal(survived.length, 1);
  }));
