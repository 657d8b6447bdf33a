// Where the Docker-free local stack lives and how it is reached. Ports and
// credentials mirror `supabase start` so the same URLs work in both.
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { positiveInt } from "../supabase/functions/_shared/env.ts";

/** Repository root. */
export const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));

/** Git-ignored folder for everything the stack creates (cluster, build, logs). */
export const STACK_DIR = join(ROOT, ".local-stack");

/** Debian's PostgreSQL 15 server binaries. */
export const PG_BIN = "/usr/lib/postgresql/15/bin";

export const DB_HOST = "127.0.0.1";
const env = (name: string) => Deno.env.get(name);
export const DB_PORT = positiveInt(env, "AUTOEMBED_DB_PORT", 54322);
export const API_PORT = positiveInt(env, "AUTOEMBED_API_PORT", 54321);
export const DB_USER = "postgres";
export const DB_PASSWORD = "postgres";

/** Unprivileged OS account that owns and runs the cluster when we are root. */
export const PG_OS_USER = "postgres";

export function databaseUrl(database = "postgres"): string {
  return `postgresql://${DB_USER}:${DB_PASSWORD}@${DB_HOST}:${DB_PORT}/${database}`;
}

export const API_URL = `http://${DB_HOST}:${API_PORT}`;

/** Template that integration tests clone their databases from. */
export const TEST_TEMPLATE = "autoembed_test_template";

/** Bearer secret of the local embed function; supabase/seed.sql stores the same value in Vault. */
export const LOCAL_EMBED_SECRET = "autoembed-local-dev-secret";

/**
 * JWT secret of the local stack, the same well-known development value the
 * Supabase CLI uses locally; never a production secret.
 */
export const LOCAL_JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long";
