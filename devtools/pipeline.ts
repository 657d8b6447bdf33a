// The real push path for integration tests, all on loopback:
// util.process_embeddings -> pg_net shim -> dispatcher -> embed handler
// (in-process, served on a free port) -> fake OpenAI server -> Postgres.
import { startNetDispatcher } from "../local/net_dispatcher.ts";
import { createEmbedHandler, type EmbedHandler } from "../supabase/functions/embed/handler.ts";
import { providerEnv } from "./cli.ts";
import type { Sql } from "./db.ts";
import { type FakeOpenAI, type FakeRateLimits, startFakeOpenAI } from "./fake_openai.ts";
import { waitFor } from "./wait.ts";

export const TEST_SECRET = "test-embed-secret";
export const TEST_MODEL = "text-embedding-3-small";
export const TEST_DIMENSIONS = 16;

export interface Pipeline {
  fake: FakeOpenAI;
  handler: EmbedHandler;
  functionUrl: string;
  logs: string[];
  /** Aborting it simulates the runtime's shutdown signal. */
  shutdown: AbortController;
  /**
   * Replaces the function instance, as the runtime does after a shutdown: a
   * new handler (fresh pool, fresh shutdown signal) serves the same URL.
   */
  restartFunction(): Promise<void>;
  /**
   * Kills the function as SIGKILL would: calls in flight fail at once with
   * their batches unfinished (the pool is cut off mid-query), and the URL
   * refuses connections until revive().
   */
  kill(): Promise<void>;
  /** Serves the function again at the same URL, with a fresh instance. */
  revive(): Promise<void>;
  stop(): Promise<void>;
}

export interface PipelineOptions {
  latencyMs?: number;
  env?: Record<string, string>;
  /** Start the pg_net dispatcher (default true). */
  dispatcher?: boolean;
  /** The fake provider's vectors (see startFakeOpenAI). */
  vectors?: "random" | "lexical";
  /** The fake provider's rate limits (see FakeRateLimits). */
  rateLimits?: FakeRateLimits;
}

export async function startPipeline(
  sql: Sql,
  dbUrl: string,
  options: PipelineOptions = {},
): Promise<Pipeline> {
  const fake = await startFakeOpenAI({
    latencyMs: options.latencyMs ?? 0,
    vectors: options.vectors,
    rateLimits: options.rateLimits,
  });
  const shutdown = new AbortController();
  const logs: string[] = [];
  const env: Record<string, string> = {
    SUPABASE_DB_URL: dbUrl,
    EMBED_SECRET: TEST_SECRET,
    ...providerEnv(fake, undefined, { EMBEDDING_TIMEOUT_MS: "5000" }),
    ...options.env,
  };
  const newHandler = (signal: AbortSignal) =>
    createEmbedHandler({ env: (k) => env[k], shutdown: signal, log: (l) => logs.push(l) });
  let handler = newHandler(shutdown.signal);
  // Rejected by kill(): every request in flight then fails (caught here so an
  // unawaited rejection is not an error of the test).
  const newKill = () => {
    const k = Promise.withResolvers<Response>();
    k.promise.catch(() => {});
    return k;
  };
  let killed = newKill();
  const serve = (port: number) =>
    Deno.serve(
      {
        hostname: "127.0.0.1",
        port,
        onListen: () => {},
        onError: () => new Response(null, { status: 502 }),
      },
      (req) => Promise.race([handler.fetch(req), killed.promise]),
    );
  let server: Deno.HttpServer<Deno.NetAddr> | null = serve(0);
  const port = server.addr.port;
  const projectUrl = `http://127.0.0.1:${port}`;
  await sql`select vault.create_secret(${projectUrl}, 'project_url')`;
  await sql`select vault.create_secret(${TEST_SECRET}, 'embed_secret')`;
  const dispatcher = options.dispatcher === false
    ? null
    : await startNetDispatcher({ dbUrl, pollIntervalMs: 50, log: (l) => logs.push(`[net] ${l}`) });
  const pipeline: Pipeline = {
    fake,
    handler,
    functionUrl: `${projectUrl}/functions/v1/embed`,
    logs,
    shutdown,
    async restartFunction() {
      const old = handler;
      pipeline.shutdown = new AbortController();
      pipeline.handler = handler = newHandler(pipeline.shutdown.signal);
      await old.close();
    },
    async kill() {
      killed.reject(new Error("killed"));
      const old = server;
      server = null;
      await Promise.all([handler.close(0).catch(() => {}), old?.shutdown()]);
    },
    revive() {
      killed = newKill();
      pipeline.shutdown = new AbortController();
      pipeline.handler = handler = newHandler(pipeline.shutdown.signal);
      server = serve(port);
      return Promise.resolve();
    },
    async stop() {
      await dispatcher?.stop();
      await server?.shutdown();
      await handler.close();
      await fake.close();
    },
  };
  return pipeline;
}

/** Jobs still in the queue (visible or hidden). */
/** Rows the queue asks for (a packed message counts each of its rows). */
export async function queueLength(sql: Sql): Promise<number> {
  const [row] = await sql`
    select coalesce(sum(util._job_rows(message)), 0)::int as n from pgmq.q_embedding_jobs`;
  return row.n;
}

/** Messages in the queue (a packed message counts once). */
export async function queueMessages(sql: Sql): Promise<number> {
  const [row] = await sql`select count(*)::int as n from pgmq.q_embedding_jobs`;
  return row.n;
}

/**
 * Starts the push path and waits until the queue is empty and no call is in
 * flight. Retries that are due are picked up by calling process_embeddings
 * again, as the cron tick would.
 */
export async function drainPush(
  sql: Sql,
  options: { batchSize?: number; maxRequests?: number; timeoutMs?: number; waitMs?: number } = {},
): Promise<void> {
  const batch = options.batchSize ?? 100;
  const requests = options.maxRequests ?? 4;
  const timeout = options.timeoutMs ?? 10_000;
  await waitFor(async () => {
    if (Deno.env.get("AUTOEMBED_TEST_DEBUG")) {
      console.log(JSON.stringify({
        queue:
          await sql`select msg_id, read_ct, vt > now() as hidden from pgmq.q_embedding_jobs order by msg_id limit 5`,
        leases: await sql`select * from util.embedding_requests`,
        requests: await sql`select id from net.http_request_queue`,
        responses:
          await sql`select id, status_code, error_msg, timed_out from net._http_response order by id`,
      }));
    }
    const [row] = await sql`
      select (select count(*) from pgmq.q_embedding_jobs)::int as queued,
             (select count(*) from util.embedding_requests where expires_at > now())::int as in_flight`;
    if (row.queued === 0 && row.in_flight === 0) return true;
    if (row.in_flight === 0) {
      await sql`select util.process_embeddings(${batch}, ${requests}, ${timeout})`;
    }
    return false;
  }, { what: "the queue to drain", timeoutMs: options.waitMs ?? 60_000 });
}

/** A demo-like table with a content function, attached with util.enable_embeddings. */
export async function createDocuments(
  sql: Sql,
  options: {
    table?: string;
    pkType?: "bigint" | "uuid" | "text";
    model?: string;
    attach?: boolean;
  } = {},
): Promise<void> {
  const table = options.table ?? "documents";
  const pk = options.pkType === "uuid"
    ? "id uuid primary key default gen_random_uuid()"
    : options.pkType === "text"
    ? "id text primary key"
    : "id bigint primary key generated by default as identity";
  await sql.unsafe(`
    create table public.${table} (
      ${pk},
      title text not null,
      content text not null,
      embedding halfvec(${TEST_DIMENSIONS})
    );
    create function public.${table}_input(d public.${table}) returns text language sql immutable
      as $$ select d.title || ': ' || d.content $$;
  `).simple();
  if (options.attach !== false) {
    await sql.unsafe(
      `select util.enable_embeddings('public.${table}', '${table}_input', model => $1)`,
      [
        options.model ?? TEST_MODEL,
      ],
    );
  }
}
