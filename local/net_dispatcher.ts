// The local stack's stand-in for pg_net's C background worker: drains
// net.http_request_queue of one database, sends the requests concurrently with
// fetch and writes each outcome to net._http_response, like pg_net 0.14.0.
// Differences: response header names arrive lower-cased (fetch normalises
// them); timed_out is true on a timeout (0.14.0 left it NULL, later releases
// set it); a timeout's error_msg lacks curl's per-phase timings.
import { isConnectionError } from "../supabase/functions/_shared/db_errors.ts";
import { type Backoff, backoffMs } from "../supabase/functions/_shared/recovery.ts";
import { sleep } from "../supabase/functions/_shared/sleep.ts";
import postgres from "postgres";
import { parseArgs } from "node:util";
import { waitForSignal } from "./proc.ts";

/** Channel the pg_net shim's http_* functions notify (on commit) for each request. */
export const NET_CHANNEL = "autoembed_net";

/** application_name of the dispatcher's sessions; net.check_worker_is_up() looks for it. */
export const DISPATCHER_APPLICATION_NAME = "autoembed pg_net dispatcher";

/** Sent when the request has no User-Agent, as pg_net does. */
const USER_AGENT = "pg_net/0.14.0";

/** How long stop() lets in-flight requests finish before aborting them. */
const STOP_GRACE_MS = 5_000;

/** Reconnect backoff bounds; each wait is jittered between half and all of the step. */
const RECONNECT_CURVE: Backoff = { baseMs: 250, capMs: 10_000 };

/** Expired responses deleted per statement, so one sweep never holds locks for long. */
const TTL_BATCH = 1_000;

export interface NetDispatcherOptions {
  /** The one database whose queue this dispatcher drains. */
  dbUrl: string;
  /** Fallback poll when no NOTIFY arrives; default 200 ms. */
  pollIntervalMs?: number;
  /** Requests in flight at once; default 16. */
  concurrency?: number;
  /** Responses older than this are deleted, like pg_net.ttl; default 6 hours. */
  ttlSeconds?: number;
  /** Receives one line per event; never request bodies, headers or query strings. */
  log?: (line: string) => void;
}

export interface NetDispatcher {
  /** Stops claiming, lets in-flight requests finish (aborting them after a grace period), disconnects. */
  stop(): Promise<void>;
  /** Responses written (any HTTP status) and requests that got none (timeout, connection error). */
  readonly stats: { sent: number; failed: number };
}

/** A claimed row of net.http_request_queue, headers flattened to text values. */
interface QueuedRequest {
  id: string;
  method: string;
  url: string;
  headers: Record<string, string>;
  body: Uint8Array<ArrayBuffer> | null;
  timeout_milliseconds: number;
}

type Outcome =
  | {
    kind: "response";
    status: number;
    contentType: string | null;
    headers: Record<string, string>;
    content: string | null;
  }
  | { kind: "error"; timedOut: boolean; message: string };

/**
 * Deletes responses created more than `ttlSeconds` ago, in batches like
 * pg_net's worker, and returns how many went.
 */
export async function deleteExpiredResponses(
  sql: postgres.Sql,
  ttlSeconds: number,
): Promise<number> {
  let total = 0;
  for (;;) {
    const result = await sql`
      with expired as (
        select ctid from net._http_response
        where created < now() - make_interval(secs => ${ttlSeconds})
        order by created
        limit ${TTL_BATCH}
      )
      delete from net._http_response r using expired where r.ctid = expired.ctid`;
    total += result.count;
    if (result.count < TTL_BATCH) return total;
  }
}

export async function startNetDispatcher(options: NetDispatcherOptions): Promise<NetDispatcher> {
  const pollIntervalMs = options.pollIntervalMs ?? 200;
  const concurrency = options.concurrency ?? 16;
  const ttlSeconds = options.ttlSeconds ?? 6 * 60 * 60;
  const log = options.log ?? ((line: string) => console.log(line));
  const sweepEveryMs = Math.min(60_000, Math.max(1_000, (ttlSeconds * 1000) / 10));
  const database = decodeURIComponent(new URL(options.dbUrl).pathname.slice(1)) || "postgres";

  const clientOptions = {
    onnotice: () => {},
    connect_timeout: 10,
    connection: { application_name: DISPATCHER_APPLICATION_NAME },
  };
  const sql = postgres(options.dbUrl, { ...clientOptions, max: 4 });
  // Its own client so that it can be replaced after an outage: postgres.js
  // re-listens by itself, but gives up for good if that first attempt fails.
  let listener: postgres.Sql | null = null;

  const stats = { sent: 0, failed: 0 };
  const inflight = new Map<string, Promise<void>>();
  const wake = new Wakeup();
  const halt = new AbortController(); // stop() was called
  const abortRequests = new AbortController(); // the grace period is over
  let writeDeadline = Infinity;

  async function listen(): Promise<void> {
    const client = postgres(options.dbUrl, { ...clientOptions, max: 1 });
    listener = client;
    // LISTEN only nudges; the poll below finds requests whose NOTIFY was missed.
    await client.listen(NET_CHANNEL, () => wake.poke(), () => wake.poke());
  }

  function dropListener(): Promise<void> {
    const client = listener;
    listener = null;
    return client ? client.end({ timeout: 0 }).catch(() => {}) : Promise.resolve();
  }

  // Claims up to `limit` requests and removes them from the queue in one
  // statement: SKIP LOCKED lets two dispatchers (or a restarted one) claim
  // side by side without waiting or sending a request twice, and deleting at
  // claim time makes delivery at most once, as pg_net's worker does: a crash
  // between claim and response loses the request rather than repeating it.
  async function claim(limit: number): Promise<QueuedRequest[]> {
    const rows = await sql<QueuedRequest[]>`
      delete from net.http_request_queue q
      where q.id in (
        select id from net.http_request_queue
        order by id
        limit ${limit}
        for update skip locked
      )
      returning q.id, q.method, q.url, q.body, q.timeout_milliseconds,
        (select coalesce(jsonb_object_agg(h.key, h.value), '{}')
          from jsonb_each_text(q.headers) h where h.value is not null) as headers`;
    return [...rows].sort((a, b) => (BigInt(a.id) < BigInt(b.id) ? -1 : 1));
  }

  async function record(id: string, outcome: Outcome): Promise<void> {
    for (let attempt = 1;; attempt++) {
      try {
        if (outcome.kind === "response") {
          await sql`
            insert into net._http_response (id, status_code, content_type, headers, content, timed_out)
            values (${id}, ${outcome.status}, ${outcome.contentType}, ${sql.json(outcome.headers)},
              ${outcome.content}, false)`;
        } else {
          await sql`
            insert into net._http_response (id, timed_out, error_msg)
            values (${id}, ${outcome.timedOut}, ${outcome.message})`;
        }
        return;
      } catch (err) {
        const left = writeDeadline - Date.now();
        if (left <= 0) {
          log(`request ${id}: response lost, the database is unavailable (${describe(err)})`);
          return;
        }
        await sleep(Math.min(backoff(attempt), left));
      }
    }
  }

  function launch(request: QueuedRequest): void {
    const task = (async () => {
      const outcome = await send(request, abortRequests.signal);
      if (outcome.kind === "response") {
        stats.sent++;
      } else {
        stats.failed++;
        log(
          `request ${request.id} (${request.method} ${withoutQuery(request.url)}): ` +
            redact(outcome.message),
        );
      }
      await record(request.id, outcome);
    })()
      .catch((err) => log(`request ${request.id}: ${describe(err)}`))
      .finally(() => {
        inflight.delete(request.id);
        wake.poke();
      });
    inflight.set(request.id, task);
  }

  let lastSweep = -Infinity;
  let failures = 0;
  let signalReady: () => void = () => {};
  const ready = new Promise<void>((resolve) => (signalReady = resolve));

  async function run(): Promise<void> {
    while (!halt.signal.aborted) {
      try {
        if (!listener) await listen();
        if (Date.now() - lastSweep >= sweepEveryMs) {
          const deleted = await deleteExpiredResponses(sql, ttlSeconds);
          lastSweep = Date.now();
          if (deleted > 0) log(`deleted ${deleted} responses older than ${ttlSeconds} s`);
        }
        const free = concurrency - inflight.size;
        if (free > 0) { for (const request of await claim(free)) launch(request); }
        if (failures > 0) log(`database ${database} is reachable again`);
        failures = 0;
        signalReady();
        await wake.wait(pollIntervalMs);
      } catch (err) {
        signalReady();
        if (halt.signal.aborted) break;
        if (failures === 0) {
          const what = isConnectionError(err) ? "unavailable" : "failed a statement";
          log(`database ${database} ${what} (${describe(err)}); retrying`);
        }
        failures++;
        await dropListener();
        await sleep(backoff(failures), halt.signal);
      }
    }
  }

  log(`draining net.http_request_queue of database ${database}`);
  const loop = run();
  await ready;

  let stopping: Promise<void> | null = null;
  return {
    stats,
    stop() {
      stopping ??= (async () => {
        halt.abort();
        wake.poke();
        await loop;
        writeDeadline = Date.now() + STOP_GRACE_MS + 2_000;
        const settled = Promise.allSettled([...inflight.values()]);
        if (inflight.size > 0 && !(await within(settled, STOP_GRACE_MS))) {
          log(`stopping: aborting ${inflight.size} requests still in flight`);
          abortRequests.abort();
          await settled;
        }
        await dropListener();
        await sql.end({ timeout: 2 });
        log("stopped");
      })();
      return stopping;
    },
  };
}

/** Sends one request; never throws: a failure is an Outcome as pg_net records it. */
async function send(request: QueuedRequest, abort: AbortSignal): Promise<Outcome> {
  const fail = (message: string, timedOut = false): Outcome => ({
    kind: "error",
    timedOut,
    message,
  });
  let url: URL;
  try {
    url = new URL(request.url);
  } catch {
    return fail("URL using bad/illegal format or missing URL");
  }
  // pg_net lets curl speak http and https only; fetch would also read file: URLs.
  if (url.protocol !== "http:" && url.protocol !== "https:") return fail("Unsupported protocol");

  const timeoutMs = request.timeout_milliseconds;
  const controller = new AbortController();
  const onAbort = () => controller.abort();
  abort.addEventListener("abort", onAbort);
  let timedOut = false;
  // Like curl's CURLOPT_TIMEOUT_MS, 0 means no limit; the limit covers the body too.
  const timer = timeoutMs > 0
    ? setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, timeoutMs)
    : undefined;
  const started = performance.now();
  try {
    const headers = new Headers();
    for (const [name, value] of Object.entries(request.headers)) headers.append(name, value);
    if (!headers.has("user-agent")) headers.set("user-agent", USER_AGENT);
    const response = await fetch(url, {
      method: request.method.toUpperCase(),
      headers,
      body: request.body ?? undefined,
      redirect: "follow",
      signal: controller.signal,
    });
    const bytes = new Uint8Array(await response.arrayBuffer());
    // text cannot hold NUL; pg_net stores the body as a C string, which ends there.
    const text = new TextDecoder().decode(bytes).split("\0", 1)[0];
    const responseHeaders: Record<string, string> = {};
    response.headers.forEach((value, name) => (responseHeaders[name] = value));
    return {
      kind: "response",
      status: response.status,
      contentType: response.headers.get("content-type"),
      headers: responseHeaders,
      content: text === "" ? null : text,
    };
  } catch (err) {
    if (timedOut) {
      const total = (performance.now() - started).toFixed(6);
      return fail(`Timeout of ${timeoutMs} ms reached. Total time: ${total} ms`, true);
    }
    if (abort.aborted) return fail("the pg_net dispatcher stopped before the request completed");
    return fail(describe(err));
  } finally {
    clearTimeout(timer);
    abort.removeEventListener("abort", onAbort);
  }
}

/** A promise-based latch: poke() ends the current or the next wait(). */
class Wakeup {
  #poked = false;
  #release: (() => void) | null = null;

  poke(): void {
    this.#poked = true;
    this.#release?.();
  }

  wait(ms: number): Promise<void> {
    if (this.#poked) {
      this.#poked = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.#release?.(), ms);
      this.#release = () => {
        clearTimeout(timer);
        this.#release = null;
        this.#poked = false;
        resolve();
      };
    });
  }
}

/** Whether `promise` settles within `ms`; clears its timer either way. */
async function within(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<false>((r) => (timer = setTimeout(() => r(false), ms)));
  try {
    return await Promise.race([promise.then(() => true), expired]);
  } finally {
    clearTimeout(timer);
  }
}

/** The recovery policy's curve for attempt n (1-based), jittered so restarted peers do not retry in step. */
function backoff(attempt: number): number {
  return backoffMs(attempt, RECONNECT_CURVE);
}

/** An error's message with its causes, as pg_net's error_msg would carry curl's. */
function describe(err: unknown): string {
  const parts: string[] = [];
  for (let e: unknown = err; e && parts.length < 4; e = (e as { cause?: unknown }).cause) {
    const message = e instanceof Error ? e.message : String(e);
    if (message && !parts.some((p) => p.includes(message))) parts.push(message);
    if (!(e instanceof Error)) break;
  }
  return parts.join(": ") || "unknown error";
}

/** A URL without its query string or fragment, which can carry keys. */
function withoutQuery(url: string): string {
  return url.replace(/[?#].*$/s, "");
}

/** Strips query strings from URLs inside a message before it is logged. */
function redact(message: string): string {
  return message.replace(/(\bhttps?:\/\/[^\s?#)]*)[?#][^\s)]*/g, "$1?…");
}

if (import.meta.main) {
  let dbUrl: string | undefined;
  try {
    const { values } = parseArgs({
      args: Deno.args,
      options: { "db-url": { type: "string" } },
      strict: true,
    });
    dbUrl = values["db-url"] ?? Deno.env.get("DATABASE_URL");
  } catch (err) {
    console.error(`net_dispatcher: ${describe(err)}`);
    Deno.exit(2);
  }
  if (!dbUrl) {
    console.error(
      "net_dispatcher: no database: pass --db-url <postgresql://...> or set DATABASE_URL",
    );
    Deno.exit(2);
  }
  const dispatcher = await startNetDispatcher({
    dbUrl,
    log: (line) => console.log(`pg_net: ${line}`),
  });
  const signal = await waitForSignal();
  console.log(`pg_net: ${signal}: stopping`);
  await dispatcher.stop();
  Deno.exit(0);
}
