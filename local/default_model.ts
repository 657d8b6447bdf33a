// Which model tables attached on the local stack use by default: the real
// provider's when the user configured a key, in the environment or in
// supabase/functions/.env (where Supabase keeps local function secrets); the
// offline lexical model only when there is none. The same variables reach
// the embed function, so the default never names a model it cannot call.
import postgres from "postgres";
import { parseDotenv } from "./functions.ts";

/** The migrations' default_model: what a hosted project uses. */
export const PROVIDER_DEFAULT_MODEL = "text-embedding-3-small";
/** The built-in offline embedder (lexical, not semantic). */
export const OFFLINE_MODEL = "local-hash-v1";
/** Where the local function secrets live, as named in messages. */
export const FUNCTIONS_DOTENV = "supabase/functions/.env";

export interface ModelChoice {
  model: string;
  /** Why, in a few words; names variables and files, never their values. */
  reason: string;
  /**
   * The provider variables as the embed function sees them: the file's
   * values override the environment's, as the local function server merges them.
   */
  env: (name: string) => string | undefined;
}

/**
 * Decides the default model from the process environment and the text of
 * supabase/functions/.env (null when there is no such file).
 */
export function chooseDefaultModel(
  processEnv: Record<string, string | undefined>,
  dotenvText: string | null,
): ModelChoice {
  const dotenv = dotenvText === null ? {} : parseDotenv(dotenvText);
  const inFile = (name: string) => Object.hasOwn(dotenv, name);
  const env = (name: string) => inFile(name) ? dotenv[name] : processEnv[name];
  const from = (name: string) => inFile(name) ? FUNCTIONS_DOTENV : "the environment";
  const key = env("OPENAI_API_KEY")?.trim();
  if (!key) {
    const emptied = inFile("OPENAI_API_KEY") && processEnv.OPENAI_API_KEY?.trim();
    return {
      model: OFFLINE_MODEL,
      reason: emptied
        ? `offline lexical; OPENAI_API_KEY is empty in ${FUNCTIONS_DOTENV}, which overrides the environment`
        : `offline lexical; no OPENAI_API_KEY in the environment or ${FUNCTIONS_DOTENV}`,
      env,
    };
  }
  const baseUrl = env("OPENAI_BASE_URL")?.trim()
    ? `, OPENAI_BASE_URL in ${from("OPENAI_BASE_URL")}`
    : "";
  return {
    model: PROVIDER_DEFAULT_MODEL,
    reason: `OPENAI_API_KEY in ${from("OPENAI_API_KEY")}${baseUrl}`,
    env,
  };
}

/** Makes `model` the default of tables attached from now on; returns the previous default. */
export async function setDefaultModel(sql: postgres.Sql, model: string): Promise<string> {
  const [row] = await sql`
    with previous as (select value from util.settings where name = 'default_model')
    update util.settings s set value = ${model}
      from previous
     where s.name = 'default_model'
    returning previous.value as previous`;
  if (!row) throw new Error("util.settings has no default_model row: are the migrations applied?");
  return row.previous;
}
