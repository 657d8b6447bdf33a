// HTTP adapter of the search function: CORS, parse and validate (zod), who
// is calling, call the shared search, respond. Exported as `{ fetch }` so
// tests call it directly; index.ts hands it to Deno.serve.
import postgres from "postgres";
import { isConnectionError } from "../_shared/db_errors.ts";
import { createJwtVerifier, jwksUrlOf, type JwtVerifier } from "../_shared/jwt.ts";
import { createQueryCache } from "../_shared/search/cache.ts";
import { callerOf } from "../_shared/search/caller.ts";
import { searchByText } from "../_shared/search/search.ts";
import { parseSearchRequest, SearchError, type SearchRequest } from "../_shared/search/types.ts";
import { BodyTooLarge, readBodyText } from "../_shared/request_body.ts";
import { coreSettings, type Env } from "../_shared/settings.ts";

/** Largest request body accepted: a query of 2,000 characters and a filter fit many times. */
export const MAX_BODY_BYTES = 64 * 1024;

export interface SearchHandlerConfig {
  env: Env;
  log?: (line: string) => void;
}

export interface SearchHandler {
  fetch(req: Request): Promise<Response>;
  close(timeoutSeconds?: number): Promise<void>;
}

// supabase-js sends these from browsers; the answer may be read by any origin
// (the JWT, not the origin, decides what a caller sees).
const CORS = {
  "Access-Control-Allow-Origin": "*",
  "Access-Control-Allow-Headers": "authorization, x-client-info, apikey, content-type",
  "Access-Control-Allow-Methods": "POST, OPTIONS",
};

function problem(status: number, message: string, headers: Record<string, string> = {}): Response {
  return Response.json({ error: message }, { status, headers: { ...CORS, ...headers } });
}

function positiveInt(env: Env, name: string, fallback: number): number {
  const value = Number(env(name) ?? fallback);
  return Number.isInteger(value) && value > 0 ? value : fallback;
}

/**
 * The request body as a validated SearchRequest; SearchError otherwise: 413
 * past MAX_BODY_BYTES (reading stops there, see readBodyText), 400 saying
 * what is wrong with the JSON (see parseSearchRequest).
 */
async function parseRequest(req: Request): Promise<SearchRequest> {
  let text: string;
  try {
    text = await readBodyText(req, MAX_BODY_BYTES);
  } catch (err) {
    if (err instanceof BodyTooLarge) {
      throw new SearchError(413, `${err.message}: send {table, query, ...} alone`);
    }
    throw err;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new SearchError(400, "body is not valid JSON: send {table, query, ...}");
  }
  return parseSearchRequest(json);
}

/**
 * How the caller's token is checked (see createJwtVerifier): HS256 with
 * SUPABASE_JWT_SECRET when set; ES256/RS256 against SUPABASE_JWKS_URL, else
 * the project's own `<SUPABASE_URL>/auth/v1/.well-known/jwks.json` (SUPABASE_URL
 * is always set on the platform). A token of an algorithm without a key here
 * is read on the gateway's word (verify_jwt = true).
 */
export function jwtVerifierOf(env: Env): JwtVerifier {
  const jwksUrl = env("SUPABASE_JWKS_URL") || undefined;
  const supabaseUrl = env("SUPABASE_URL") || undefined;
  return createJwtVerifier({
    secret: env("SUPABASE_JWT_SECRET") || undefined,
    jwksUrl: jwksUrl ? new URL(jwksUrl) : supabaseUrl ? jwksUrlOf(supabaseUrl) : undefined,
    jwksTimeoutMs: positiveInt(env, "SEARCH_JWKS_TIMEOUT_MS", 5000),
  });
}

export function createSearchHandler(config: SearchHandlerConfig): SearchHandler {
  const log = config.log ?? ((line: string) => console.log(line));
  const settings = coreSettings(config.env);
  const dbUrl = config.env("SUPABASE_DB_URL") ?? "";
  const verifier = jwtVerifierOf(config.env);
  const sql = dbUrl
    ? postgres(dbUrl, { max: 4, prepare: false, onnotice: () => {}, idle_timeout: 30 })
    : null;
  const cache = createQueryCache(positiveInt(config.env, "SEARCH_CACHE_ENTRIES", 1000));
  const embedTimeoutMs = positiveInt(config.env, "SEARCH_EMBEDDING_TIMEOUT_MS", 10_000);
  const statementTimeoutMs = positiveInt(config.env, "SEARCH_STATEMENT_TIMEOUT_MS", 10_000);

  async function fetch(req: Request): Promise<Response> {
    if (req.method === "OPTIONS") return new Response("ok", { headers: CORS });
    if (req.method !== "POST") {
      return problem(405, "use POST with {table, query, ...}", { Allow: "POST, OPTIONS" });
    }
    if (!sql) return problem(500, "SUPABASE_DB_URL is not set");
    try {
      const caller = await callerOf(req.headers.get("authorization"), verifier);
      const request = await parseRequest(req);
      const response = await searchByText(
        {
          sql,
          providerFor: settings.providerFor,
          cache,
          embedTimeoutMs,
          statementTimeoutMs,
          log: (event) => log(JSON.stringify(event)),
        },
        request,
        caller,
      );
      return Response.json(response, { headers: CORS });
    } catch (err) {
      if (err instanceof SearchError) return problem(err.status, err.message, err.headers);
      if (isConnectionError(err)) {
        return problem(503, "database unreachable; try again", { "Retry-After": "1" });
      }
      // The message of an unexpected error may quote anything: it is not logged or sent.
      log(JSON.stringify({ event: "search_error", name: (err as Error).name }));
      return problem(500, "search failed");
    }
  }

  return {
    fetch,
    async close(timeoutSeconds = 5) {
      await sql?.end({ timeout: timeoutSeconds });
    },
  };
}
