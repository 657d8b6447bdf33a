// Per-test databases cloned from a template that the test runner prepares
// (migrations applied), so integration tests are isolated and start fast.
import postgres from "postgres";

export type Sql = postgres.Sql;

/** Maintenance connection to the local cluster (creates and drops test databases). */
export const ADMIN_URL = Deno.env.get("AUTOEMBED_ADMIN_URL") ??
  "postgresql://postgres:postgres@127.0.0.1:54322/postgres";

/** Database every test database is cloned from. */
export const TEMPLATE = Deno.env.get("AUTOEMBED_TEST_TEMPLATE") ?? "autoembed_test_template";

/** Connection URL of database `name` on the same server as ADMIN_URL. */
export function dbUrl(name: string): string {
  const url = new URL(ADMIN_URL);
  url.pathname = `/${name}`;
  return url.toString();
}

/** Opens a client with notices silenced; callers end it. */
export function connect(url: string, options: postgres.Options<Record<string, never>> = {}): Sql {
  return postgres(url, { max: 4, onnotice: () => {}, ...options });
}

/**
 * Runs `fn` against a fresh database cloned from TEMPLATE (or another
 * template, e.g. `template1`: bootstrapped, no migrations) and drops it
 * afterwards, whether `fn` passes or throws.
 */
export async function withTestDb(
  fn: (sql: Sql, url: string, name: string) => Promise<void>,
  options: { template?: string } = {},
): Promise<void> {
  const name = `t_${crypto.randomUUID().replaceAll("-", "").slice(0, 16)}`;
  const admin = connect(ADMIN_URL, { max: 1 });
  try {
    await admin.unsafe(`create database ${name} template ${options.template ?? TEMPLATE}`);
  } finally {
    await admin.end();
  }
  const url = dbUrl(name);
  const sql = connect(url);
  try {
    await fn(sql, url, name);
  } finally {
    await sql.end({ timeout: 5 });
    const cleanup = connect(ADMIN_URL, { max: 1 });
    try {
      await cleanup.unsafe(`drop database if exists ${name} with (force)`);
    } finally {
      await cleanup.end();
    }
  }
}
