// A worker (runWorker, as the CLI runs it) that, once started, lets an error
// escape that nobody catches, for shutdown.test.ts to see which ones end the
// process. Usage: _uncaught.ts <db url> <kind>, where kind is
//   bug-throw, bug-rejection: a programming error thrown from a timer, or
//     rejecting a promise nobody holds;
//   disconnect-throw, disconnect-rejection: what postgres.js lets escape when
//     the server drops a connection (a write on a closed socket; ECONNRESET).
// Logs the worker's lines on stdout; SIGTERM stops the worker.
import { runWorker } from "../../cli/worker.ts";
import { coreSettings } from "../../supabase/functions/_shared/settings.ts";

const [dbUrl, kind] = Deno.args;

/** Named as in postgres.js: its queued write once closed() has set the socket to null. */
function nextWrite() {
  const socket = null as unknown as { write(): void };
  socket.write();
}

/** A bug of the kind the old catch-all guard hid: reading a field of nothing. */
function readBatchSize(options: { batchSize: number } | undefined): number {
  return options!.batchSize;
}

const escapes: Record<string, () => void> = {
  "bug-throw": () => setTimeout(() => readBatchSize(undefined)),
  "bug-rejection": () => void Promise.reject(new RangeError("a bug nobody awaited")),
  "disconnect-throw": () => setTimeout(nextWrite),
  "disconnect-rejection": () =>
    void Promise.reject(Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET" })),
};
const escape = escapes[kind];
if (!escape) throw new Error(`unknown kind ${kind}: one of ${Object.keys(escapes).join(", ")}`);

const stop = new AbortController();
Deno.addSignalListener("SIGTERM", () => stop.abort());
await runWorker({
  dbUrl,
  once: false,
  concurrency: 1,
  pollIntervalMs: 60_000,
  batchSize: 10,
  visibilitySeconds: 30,
  tables: [],
  settings: coreSettings(() => undefined),
  signal: stop.signal,
  log: (line) => {
    console.log(line);
    if (line.includes('"event":"started"')) escape();
  },
});
console.log(JSON.stringify({ event: "stopped" }));
Deno.exit(0);
