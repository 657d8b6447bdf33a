// The guard against errors postgres.js lets escape when the server drops its
// connections (supabase/functions/_shared/postgres_guard.ts): it keeps the
// process alive through those, and only those.
import assert from "node:assert/strict";
import { setImmediate } from "node:timers";
import {
  isClosedSocketWrite,
  surviveDatabaseDisconnects,
} from "../../supabase/functions/_shared/postgres_guard.ts";

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

Deno.test("surviveDatabaseDisconnects keeps the process alive through that throw from a timer", async () => {
  const seen: string[] = [];
  const unguard = surviveDatabaseDisconnects((line) => seen.push(line));
  try {
    setImmediate(nextWrite);
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(seen, [
      '{"event":"database_disconnect_survived","code":"closed_socket"}',
    ]);
  } finally {
    unguard();
  }
});

Deno.test("surviveDatabaseDisconnects keeps the process alive through an unheld socket error", async () => {
  const seen: string[] = [];
  const unguard = surviveDatabaseDisconnects((line) => seen.push(line));
  try {
    // As a socket error reaches a promise of postgres.js that nobody holds.
    Promise.reject(Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET" }));
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(seen, ['{"event":"database_disconnect_survived","code":"ECONNRESET"}']);
  } finally {
    unguard();
  }
});
