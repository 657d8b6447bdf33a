// Migration runner with the semantics of `supabase db push` / `db reset`:
// supabase/migrations/*.sql in filename order, each in its own transaction,
// versions recorded in supabase_migrations.schema_migrations; then seed.sql.
import { basename, join } from "node:path";
import postgres from "postgres";
import { ROOT } from "./config.ts";
import { readTextIfExists } from "./proc.ts";

export const MIGRATIONS_DIR = join(ROOT, "supabase", "migrations");
export const SEED_FILE = join(ROOT, "supabase", "seed.sql");

/** A migration file named like the Supabase CLI expects: `<version>_<name>.sql`. */
const MIGRATION_NAME = /^(\d+)_(.+)\.sql$/;

export interface Migration {
  version: string;
  name: string;
  path: string;
}

export class MigrationError extends Error {
  constructor(readonly file: string, message: string) {
    super(`${file}: ${message}`);
  }
}

/** Migration files of `dir`, in the order they apply. */
export async function listMigrations(dir = MIGRATIONS_DIR): Promise<Migration[]> {
  const found: Migration[] = [];
  try {
    for await (const entry of Deno.readDir(dir)) {
      const m = entry.isFile ? entry.name.match(MIGRATION_NAME) : null;
      if (m) found.push({ version: m[1], name: m[2], path: join(dir, entry.name) });
    }
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  return found.sort((a, b) => (a.version < b.version ? -1 : a.version > b.version ? 1 : 0));
}

/** Line number of a 1-based character position in `text`, for error messages. */
export function lineOf(text: string, position: number): number {
  return text.slice(0, Math.max(0, position - 1)).split("\n").length;
}

function describe(err: unknown, text: string): string {
  const e = err as postgres.PostgresError;
  if (e?.name !== "PostgresError") return String((err as Error)?.message ?? err);
  const where = e.position ? ` (line ${lineOf(text, Number(e.position))})` : "";
  const extra = [e.detail && `DETAIL: ${e.detail}`, e.hint && `HINT: ${e.hint}`].filter(Boolean);
  return [`ERROR ${e.code}: ${e.message}${where}`, ...extra].join("\n  ");
}

export interface ApplyOptions {
  dir?: string;
  /** Also run seed.sql (after migrations) — `db reset` does, `db push` does not. */
  seed?: boolean;
  seedFile?: string;
  /** Runs after the migrations and before the seed, e.g. to set what the seed relies on. */
  afterMigrations?: (sql: postgres.Sql) => Promise<void>;
  log?: (line: string) => void;
}

/**
 * Applies the migrations not yet recorded, in order. A failing file rolls back
 * alone and stops the run: nothing after it is applied. Returns the versions applied.
 */
export async function applyMigrations(
  dbUrl: string,
  options: ApplyOptions = {},
): Promise<string[]> {
  const log = options.log ?? (() => {});
  const sql = postgres(dbUrl, { max: 1, onnotice: () => {} });
  const applied: string[] = [];
  try {
    await sql.unsafe(`
      create schema if not exists supabase_migrations;
      create table if not exists supabase_migrations.schema_migrations (
        version text primary key,
        statements text[],
        name text
      );
    `).simple();
    const done = new Set(
      (await sql`select version from supabase_migrations.schema_migrations`).map((r) =>
        r.version as string
      ),
    );
    for (const migration of await listMigrations(options.dir)) {
      if (done.has(migration.version)) continue;
      const text = await Deno.readTextFile(migration.path);
      try {
        await sql.begin(async (tx) => {
          await tx.unsafe(text).simple();
          await tx`
            insert into supabase_migrations.schema_migrations (version, statements, name)
            values (${migration.version}, ${[text]}, ${migration.name})
          `;
        });
      } catch (err) {
        throw new MigrationError(basename(migration.path), describe(err, text));
      }
      log(`applied ${basename(migration.path)}`);
      applied.push(migration.version);
    }
    await options.afterMigrations?.(sql);
    if (options.seed) {
      const seedFile = options.seedFile ?? SEED_FILE;
      const text = await readTextIfExists(seedFile);
      if (text !== null) {
        try {
          await sql.begin((tx) => tx.unsafe(text).simple());
        } catch (err) {
          throw new MigrationError(basename(seedFile), describe(err, text));
        }
        log(`seeded ${basename(seedFile)}`);
      }
    }
  } finally {
    await sql.end();
  }
  return applied;
}
