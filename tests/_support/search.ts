// The search function as an app reaches it, for integration tests: the local
// functions gateway (JWT check as Supabase's) serving `search` in its own
// process against a test database, a fake OpenAI-compatible provider with
// lexical vectors, and supabase-js clients for anon, a signed-in user and
// the service key.
import { createClient, type SupabaseClient } from "@supabase/supabase-js";
import { LOCAL_JWT_SECRET } from "../../local/config.ts";
import { localJwt, startFunctions } from "../../local/functions.ts";
import { signJwt } from "../../supabase/functions/_shared/jwt.ts";
import { type FakeOpenAI, startFakeOpenAI } from "../../devtools/fake_openai.ts";

export interface SearchStack {
  /** What an app configures: the project URL (the gateway). */
  apiUrl: string;
  anonKey: string;
  serviceKey: string;
  /** The provider the search function embeds queries with. */
  fake: FakeOpenAI;
  /** The function's log lines. */
  logs: string[];
  /** A supabase-js client with the anon key, sending `token` (default: the anon key) as the JWT. */
  client(token?: string): SupabaseClient;
  stop(): Promise<void>;
}

/** A user's access token as Supabase Auth would issue it (role authenticated, `sub` the user id). */
export async function userToken(
  sub: string,
  options: { expiresIn?: number; secret?: string; role?: string } = {},
): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return await signJwt({
    sub,
    role: options.role ?? "authenticated",
    aud: "authenticated",
    iat: now,
    exp: now + (options.expiresIn ?? 3600),
  }, options.secret ?? LOCAL_JWT_SECRET);
}

export async function startSearchStack(
  dbUrl: string,
  env: Record<string, string> = {},
  jwksUrl?: string,
): Promise<SearchStack> {
  const fake = await startFakeOpenAI({ vectors: "lexical" });
  const logs: string[] = [];
  const functions = await startFunctions({
    port: 0,
    only: ["search"],
    jwksUrl,
    env: {
      SUPABASE_DB_URL: dbUrl,
      OPENAI_API_KEY: "sk-test-key-not-secret",
      OPENAI_BASE_URL: fake.baseURL,
      ...env,
    },
    log: (line) => logs.push(line),
  }).catch(async (err) => {
    await fake.close();
    throw err;
  });
  const apiUrl = functions.url.replace(/\/functions\/v1$/, "");
  const anonKey = await localJwt("anon");
  return {
    apiUrl,
    anonKey,
    serviceKey: await localJwt("service_role"),
    fake,
    logs,
    client(token?: string) {
      return createClient(apiUrl, anonKey, {
        auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
        global: token ? { headers: { Authorization: `Bearer ${token}` } } : {},
      });
    },
    async stop() {
      await functions.stop();
      await fake.close();
    },
  };
}

export interface Invoked<T> {
  status: number;
  data: T | null;
  /** The function's `error` text, for non-2xx answers. */
  error: string | null;
  headers: Headers | null;
}

/** `client.functions.invoke('search', {body})`, with the HTTP status and error text of a failure. */
export async function invokeSearch<T = SearchAnswer>(
  client: SupabaseClient,
  body: unknown,
): Promise<Invoked<T>> {
  const { data, error, response } = await client.functions.invoke("search", {
    body: body as Record<string, unknown>,
  });
  if (!error) {
    return {
      status: response?.status ?? 200,
      data: data as T,
      error: null,
      headers: response?.headers ?? null,
    };
  }
  const context = (error as { context?: Response }).context;
  if (!(context instanceof Response)) throw error;
  const text = await context.text();
  let message = text;
  try {
    message = JSON.parse(text).error ?? JSON.parse(text).msg ?? text;
  } catch { /* not JSON */ }
  return { status: context.status, data: null, error: message, headers: context.headers };
}

export interface SearchAnswer {
  model: string;
  results: {
    id: string;
    similarity: number | null;
    row: Record<string, unknown>;
    /** A chunked target's best chunk of the row. */
    chunk?: { seq: number; text: string; similarity: number | null };
  }[];
}
