// Throw-away databases cloned from a template (the test runner's, with the
// migrations applied, or the bench's), so each test or run is isolated and
// starts fast.
import postgres from "postgres";
import { databaseUrl, TEST_TEMPLATE } from "../local/config.ts";

export type Sql = postgres.Sql;

/** Maintenance connection to the local cluster (creates and drops test databases). */
export const ADMIN_URL = Deno.env.get("AUTOEMBED_ADMIN_URL") ?? databaseUrl("postgres");

/** Database every test database is cloned from. */
export const TEMPLATE = Deno.env.get("AUTOEMBED_TEST_TEMPLATE") ?? TEST_TEMPLATE;

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

/** Runs one maintenance statement (create or drop database) through `adminUrl`. */
async function administer(adminUrl: string, statement: string): Promise<void> {
  const admin = connect(adminUrl, { max: 1 });
  try {
    await admin.unsafe(statement);
  } finally {
    await admin.end();
  }
}

/** Creates database `name` as a copy of `template`. */
export function createDatabase(name: string, template: string, adminUrl = ADMIN_URL) {
  return administer(adminUrl, `create database ${name} template ${template}`);
}

/**
 * Drops database `name`, ending its sessions; first its replication slots
 * (logical capture's), which would refuse the drop, ending the walsenders
 * that stream them.
 */
export async function dropDatabase(name: string, adminUrl = ADMIN_URL) {
  const admin = connect(adminUrl, { max: 1 });
  try {
    await admin`
      select pg_terminate_backend(active_pid, 5000) from pg_replication_slots
       where database = ${name} and active_pid is not null`;
    await admin`
      select pg_drop_replication_slot(slot_name) from pg_replication_slots
       where database = ${name} and not active`;
    await admin.unsafe(`drop database if exists ${name} with (force)`);
  } finally {
    await admin.end();
  }
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
  await createDatabase(name, options.template ?? TEMPLATE);
  const url = dbUrl(name);
  const sql = connect(url);
  try {
    // Slot names are the whole server's: each database follows its own.
    if ((await sql`select to_regclass('util.settings') is not null as ok`)[0].ok) {
      await sql`update util.settings set value = ${name} where name = 'capture_slot'`;
    }
    await fn(sql, url, name);
  } finally {
    await sql.end({ timeout: 5 });
    await dropDatabase(name);
  }
}
