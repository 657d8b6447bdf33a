// Migrations through the real Supabase CLI (npm package `supabase`, pinned in
// package.json), Docker-free through `--db-url`: `db push` applies
// supabase/migrations/*.sql and records them, `db push --include-seed` runs the
// seed once. Between the two the local stack runs its own step (the default
// model). Not `db reset --db-url`: it has no such step, and it drops our
// schemas but keeps Vault's secrets, so seed.sql's create_secret collides.
import { basename, dirname, join, resolve } from "node:path";
import type postgres from "postgres";
import { ROOT } from "./config.ts";
import { capture, type RunResult } from "./proc.ts";
import { withSql } from "./sql.ts";

/** The Supabase project folder the CLI works in (`--workdir`): it holds `supabase/`. */
export const PROJECT_DIR = ROOT;
export const MIGRATIONS_DIR = join(PROJECT_DIR, "supabase", "migrations");
export const SEED_FILE = join(PROJECT_DIR, "supabase", "seed.sql");

/** The CLI's entry point that `npm install` puts in node_modules/.bin. */
export const SUPABASE_CLI = join(ROOT, "node_modules", ".bin", "supabase");

/** A migration file named like the Supabase CLI expects: `<version>_<name>.sql`. */
const MIGRATION_NAME = /^(\d+)_(.+)\.sql$/;

export interface Migration {
  version: string;
  name: string;
  path: string;
}

/** A failed CLI run; the message is the CLI's own, from the file it was applying on. */
export class MigrationError extends Error {
  constructor(message: string, readonly file: string | null) {
    super(message);
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

/** The URL as the CLI needs it: the local cluster speaks no TLS, and the CLI would try it first. */
export function cliDbUrl(dbUrl: string): string {
  const url = new URL(dbUrl);
  if (!url.searchParams.has("sslmode")) url.searchParams.set("sslmode", "disable");
  return url.toString();
}

/**
 * Runs the Supabase CLI to completion, never prompting, without telemetry or
 * update checks (this machine reaches no service of theirs, and a test must not wait on one).
 */
export async function supabaseCli(args: string[], cwd = PROJECT_DIR): Promise<RunResult> {
  return await capture(SUPABASE_CLI, args, {
    cwd,
    env: { SUPABASE_TELEMETRY_DISABLED: "1", SUPABASE_NO_UPDATE_NOTIFIER: "1", NO_COLOR: "1" },
  });
}

/** Lines of the CLI's progress output worth echoing: one per migration or seed file it ran. */
const PROGRESS = /^(?:Applying migration|Seeding data from) (\S+?)(?:\.\.\.)?$/;

/**
 * The CLI's own account of a failure: from the last file it started on (its
 * name) to the end. Its closing advice to rerun with --debug is left out: the
 * user ran npm, not the CLI.
 */
function failure(command: string, result: RunResult): MigrationError {
  const lines = `${result.stderr}\n${result.stdout}`.split("\n").map((l) => l.trimEnd())
    .filter((l) => l && !/^Try rerunning the command with --debug/.test(l));
  let from = -1;
  for (let i = 0; i < lines.length; i++) if (PROGRESS.test(lines[i])) from = i;
  const told = from >= 0 ? lines.slice(from) : lines.slice(-15);
  const file = from >= 0 ? basename(lines[from].match(PROGRESS)![1]) : null;
  return new MigrationError(
    `supabase ${command} failed (exit ${result.code}):\n  ${told.join("\n  ")}`,
    file,
  );
}

async function push(
  dbUrl: string,
  workdir: string,
  extra: string[],
  log: (line: string) => void,
): Promise<void> {
  const args = ["db", "push", "--db-url", cliDbUrl(dbUrl), "--workdir", workdir, "--yes", ...extra];
  const result = await supabaseCli(args, workdir);
  if (result.code !== 0) throw failure(["db push", ...extra].join(" "), result);
  for (const line of result.stderr.split("\n")) {
    const m = line.trim().match(PROGRESS);
    if (m) log(line.trim().replace(/\.\.\.$/, ""));
  }
}

/** Whether the Supabase CLI's migration history table exists (a database it has pushed to). */
async function migrationTableIn(sql: postgres.Sql): Promise<boolean> {
  const [{ present }] =
    await sql`select to_regclass('supabase_migrations.schema_migrations') is not null as present`;
  return present;
}

export function hasMigrationTable(dbUrl: string): Promise<boolean> {
  return withSql(dbUrl, migrationTableIn);
}

function recordedVersions(dbUrl: string): Promise<Set<string>> {
  return withSql(dbUrl, async (sql) => {
    if (!(await migrationTableIn(sql))) return new Set<string>();
    const rows = await sql`select version from supabase_migrations.schema_migrations`;
    return new Set(rows.map((r) => r.version as string));
  });
}

/**
 * Why a database's recorded history is no prefix of `repository`'s versions
 * (one line), or null when it is one (the database only lacks later
 * migrations, which `db push` applies). A version the repository does not
 * have, or one it has but later than a version the database lacks, means
 * the database was built from another history (the migrations before the
 * 0.1.0 baseline, another branch): pushing onto it would drift.
 */
export function historyDivergence(recorded: string[], repository: string[]): string | null {
  const ours = [...repository].sort();
  const theirs = [...recorded].sort();
  for (const [i, version] of theirs.entries()) {
    if (ours[i] === version) continue;
    return ours.includes(version)
      ? `it lacks ${ours[i]}, which comes before ${version}, applied`
      : `it records ${version}, which this checkout has no migration for`;
  }
  return null;
}

/**
 * Before migrating a local database: when its recorded history is no prefix
 * of the repository's, says so in one line and calls `recreate` (the local
 * stack recreates the cluster: its data goes, as with `supabase db reset`).
 * Returns whether it did.
 */
export async function recreateIfDiverged(
  dbUrl: string,
  recreate: () => Promise<void>,
  log: (line: string) => void,
): Promise<boolean> {
  const recorded = [...await recordedVersions(dbUrl)];
  const why = historyDivergence(recorded, (await listMigrations()).map((m) => m.version));
  if (why === null) return false;
  log(`local database: its migration history is not this checkout's (${why}); recreating it`);
  await recreate();
  return true;
}

export interface ApplyOptions {
  /** Supabase project folder holding `supabase/migrations` (and `supabase/seed.sql`). */
  workdir?: string;
  /** Or only a folder of migrations: the CLI is given a project around it. */
  dir?: string;
  /** Also run the seed after the migrations, as `db reset` does; `db push` alone does not. */
  seed?: boolean;
  /** Runs after the migrations and before the seed, e.g. to set what the seed relies on. */
  afterMigrations?: (sql: postgres.Sql) => Promise<void>;
  log?: (line: string) => void;
}

/**
 * Applies the migrations not yet recorded with `supabase db push --db-url`,
 * each file in its own transaction: a failing file rolls back alone and stops
 * the run. Then the hook, then the seed (`db push --include-seed`), which the
 * CLI records in supabase_migrations.seed_files and runs only once.
 * Returns the versions applied.
 */
export async function applyMigrations(
  dbUrl: string,
  options: ApplyOptions = {},
): Promise<string[]> {
  const log = options.log ?? (() => {});
  const project = await projectFor(options);
  try {
    const before = await recordedVersions(dbUrl);
    await push(dbUrl, project.workdir, [], log);
    const applied = [...await recordedVersions(dbUrl)].filter((v) => !before.has(v)).sort();
    if (options.afterMigrations) await withSql(dbUrl, options.afterMigrations);
    if (options.seed) await push(dbUrl, project.workdir, ["--include-seed"], log);
    return applied;
  } finally {
    await project.cleanup();
  }
}

/**
 * The `--workdir` for these options. A bare migrations folder that is not
 * already some project's `supabase/migrations` gets a throw-away project
 * whose `supabase/migrations` links to it.
 */
async function projectFor(
  options: ApplyOptions,
): Promise<{ workdir: string; cleanup: () => Promise<void> }> {
  const keep = async () => {};
  if (options.workdir || !options.dir) {
    return { workdir: options.workdir ?? PROJECT_DIR, cleanup: keep };
  }
  const dir = resolve(options.dir);
  if (basename(dir) === "migrations" && basename(dirname(dir)) === "supabase") {
    return { workdir: dirname(dirname(dir)), cleanup: keep };
  }
  const workdir = await Deno.makeTempDir({ prefix: "autoembed-project-" });
  await Deno.mkdir(join(workdir, "supabase"));
  await Deno.symlink(dir, join(workdir, "supabase", "migrations"));
  return { workdir, cleanup: () => Deno.remove(workdir, { recursive: true }) };
}
