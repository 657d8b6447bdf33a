// HTTP adapter of the embed function: auth, parse, call the shared core,
// respond. No pipeline logic lives here. Exported as `{ fetch }` so tests call
// it directly; index.ts hands it to Deno.serve.
import postgres from "postgres";
import { processBatch } from "../_shared/core.ts";
import { errorCode, isConnectionError, waitOutDisconnect } from "../_shared/db_errors.ts";
import { BinaryWrites } from "../_shared/sql/write.ts";
import { parseJobBatch, parseJobJson } from "../_shared/jobs.ts";
import { parseMaintenance, runMaintenance } from "../_shared/maintenance.ts";
import { BodyTooLarge, readBodyText } from "../_shared/request_body.ts";
import { coreSettings, type Env } from "../_shared/settings.ts";

/** Largest request body accepted (a batch of jobs is a few hundred bytes per job). */
export const MAX_BODY_BYTES = 2 * 1024 * 1024;

export interface EmbedHandlerConfig {
  env: Env;
  /** Aborted when the runtime shuts down: pending jobs are handed back, not lost. */
  shutdown?: AbortSignal;
  log?: (line: string) => void;
}

export interface EmbedHandler {
  fetch(req: Request): Promise<Response>;
  /** Ends the pool; queries still running after `timeoutSeconds` (default 5) are cut off. */
  close(timeoutSeconds?: number): Promise<void>;
}

function timingSafeEqual(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a);
  const y = new TextEncoder().encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  return diff === 0;
}

function problem(status: number, message: string, headers: HeadersInit = {}): Response {
  return Response.json({ error: message }, { status, headers });
}

/** The body, or the 400 for one over MAX_BODY_BYTES (see readBodyText). */
async function readBody(req: Request): Promise<string | Response> {
  try {
    return await readBodyText(req, MAX_BODY_BYTES);
  } catch (err) {
    if (err instanceof BodyTooLarge) return problem(400, `${err.message}: send smaller batches`);
    throw err;
  }
}

/**
 * How long a call waits out a database that went away (a restart, a
 * failover) before it gives up with 503. Its jobs are hidden under its lease
 * meanwhile, so waiting here is what brings them back soonest: giving up
 * leaves them to the next tick and a backoff.
 */
const RECONNECT_WINDOW_MS = 30_000;

/** Positive integer query parameter, or undefined. */
function intParam(url: URL, name: string): number | undefined {
  const raw = url.searchParams.get(name);
  if (raw === null || !/^\d{1,12}$/.test(raw)) return undefined;
  return Number(raw);
}

export function createEmbedHandler(config: EmbedHandlerConfig): EmbedHandler {
  const log = config.log ?? ((line: string) => console.log(line));
  const settings = coreSettings(config.env);
  const secret = config.env("EMBED_SECRET") ?? "";
  const dbUrl = config.env("SUPABASE_DB_URL") ?? "";
  // One small pool per function instance; prepare: false works behind poolers.
  // The write's vectors go in binary through node-postgres (one connection,
  // unnamed statements); the rest through postgres.js: three connections in all.
  const sql = dbUrl
    ? postgres(dbUrl, {
      max: settings.textVectors ? 3 : 2,
      prepare: false,
      onnotice: () => {},
      idle_timeout: 30,
    })
    : null;
  const binaryWrites = dbUrl && !settings.textVectors
    ? new BinaryWrites(dbUrl, { max: 1, applicationName: "autoembed embed" })
    : undefined;

  async function kick(db: postgres.Sql): Promise<Response> {
    try {
      const [{ requests }] = await db`select util.process_embeddings() as requests`;
      return Response.json({ requests });
    } catch (err) {
      if (isConnectionError(err)) return problem(503, "database unreachable; the tick will retry");
      log(JSON.stringify({ event: "kick_failed", message: (err as Error).message }));
      return problem(500, "kick failed; the tick will retry");
    }
  }

  async function fetch(req: Request): Promise<Response> {
    if (req.method !== "POST") {
      return problem(405, "use POST with a JSON array of jobs", { Allow: "POST" });
    }
    if (!secret) {
      return problem(
        500,
        "EMBED_SECRET is not set: set it with supabase secrets set EMBED_SECRET=...",
      );
    }
    const token = req.headers.get("authorization")?.match(/^Bearer\s+(.+)$/i)?.[1] ?? "";
    if (!timingSafeEqual(token, secret)) return problem(401, "missing or wrong bearer secret");
    if (!sql) return problem(500, "SUPABASE_DB_URL is not set");

    // Push mode, a kick (util._kick_embeddings): a change found the pipeline
    // idle; start the calls its tick would start, now.
    if (intParam(new URL(req.url), "kick") !== undefined) return await kick(sql);

    const body = await readBody(req);
    if (body instanceof Response) return body;
    let json: unknown;
    try {
      json = parseJobJson(body);
    } catch {
      return problem(400, "body is not valid JSON: send a JSON array of jobs");
    }
    // Push mode, maintenance (util._request_maintenance): {"maintenance": [tasks]}.
    const maintenance = parseMaintenance(json);
    if (maintenance && "error" in maintenance) return problem(400, maintenance.error);
    if (maintenance) {
      const { results, failed } = await runMaintenance(maintenance.tasks, {
        dbUrl,
        sql,
        settings,
        log: (event) => log(JSON.stringify(event)),
        signal: config.shutdown,
      });
      return Response.json({ maintenance: results }, { status: failed ? 500 : 200 });
    }
    // Malformed messages are refused one by one (recorded, dead-lettered) so
    // they never hold back the genuine jobs of their batch.
    const batch = parseJobBatch(json);
    if ("error" in batch) return problem(400, `invalid jobs: ${batch.error}`);

    // A batch cut off by a lost connection runs again once the database
    // answers: the jobs it finished are fresh by their fingerprints (no
    // provider call), the rest are done now instead of after a tick.
    const deadline = Date.now() + settings.timeBudgetMs;
    const reconnect = {
      deadline: Math.min(deadline, Date.now() + RECONNECT_WINDOW_MS),
      signal: config.shutdown,
      onRetry: (attempt: number, err: unknown) =>
        log(JSON.stringify({ event: "db_reconnecting", attempt, code: errorCode(err) })),
    };
    let result;
    try {
      result = await waitOutDisconnect(() =>
        processBatch(sql, batch.jobs, {
          refused: batch.refused,
          providerFor: settings.providerFor,
          deadline,
          signal: config.shutdown,
          truncate: settings.truncate,
          providerConcurrency: settings.providerConcurrency,
          limits: settings.callLimits,
          log: (event) => log(JSON.stringify(event)),
          binaryWrites,
          batchLane: (model, dimensions) => settings.batchAccountFor(model, dimensions) !== null,
        }), reconnect);
    } catch (err) {
      if (isConnectionError(err)) {
        return problem(
          503,
          "database unreachable; the jobs will be retried after their visibility timeout",
        );
      }
      log(JSON.stringify({ event: "error", message: (err as Error).message }));
      return problem(
        500,
        "processing failed; the jobs will be retried after their visibility timeout",
      );
    }

    // Push mode: report back so util.process_embeddings starts the next calls
    // (with the parameters stored with the lease).
    const lease = intParam(new URL(req.url), "lease");
    if (lease !== undefined && !config.shutdown?.aborted) {
      try {
        await waitOutDisconnect(
          () => sql`select util._embedding_request_done(${lease})`,
          { ...reconnect, deadline: Date.now() + RECONNECT_WINDOW_MS },
        );
      } catch (err) {
        log(JSON.stringify({ event: "continue_failed", message: (err as Error).message }));
      }
    }

    // No error texts: pg_net keeps this answer in net._http_response, where
    // more roles may read it than util.embedding_errors, which has them, and a
    // content function's error may quote the row.
    const response = {
      completedJobs: result.completedJobs,
      failedJobs: result.failedJobs.map(({ jobId, retryable, deadLettered }) => ({
        jobId,
        retryable,
        deadLettered,
      })),
    };
    return Response.json(response, {
      headers: {
        "x-completed-jobs": String(result.completedJobs.length),
        "x-failed-jobs": String(result.failedJobs.length),
      },
    });
  }

  return {
    fetch,
    async close(timeoutSeconds = 5) {
      await Promise.all([sql?.end({ timeout: timeoutSeconds }), binaryWrites?.end()]);
    },
  };
}
