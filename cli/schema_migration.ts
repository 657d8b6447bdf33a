// `deno task schema:migration <name> <object>...`: writes the next migration,
// supabase/migrations/<timestamp>_<name>.sql, re-declaring the named
// functions and views exactly as supabase/schemas/ defines them now, followed
// by the privilege statements of the schema files that concern them. Edit
// the schema file, generate, then let the drift test
// (tests/schema/schema_drift.test.ts) prove migrations and schemas agree.
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { LOCK_FILE, lockNewMigrations, readLock } from "./migration_lock.ts";
import {
  declaredObject,
  isPrivilegeStatement,
  mentions,
  normalizeName,
  type ObjectKind,
  splitStatements,
} from "./sql_statements.ts";

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));
export const SCHEMAS_DIR = join(ROOT, "supabase", "schemas");
export const MIGRATIONS_DIR = join(ROOT, "supabase", "migrations");

export class SchemaMigrationError extends Error {}

export interface SchemaFile {
  name: string;
  text: string;
}

/** The `*.sql` files of `dir` in the order they apply (by name). */
export async function readSchemaFiles(dir = SCHEMAS_DIR): Promise<SchemaFile[]> {
  const files: SchemaFile[] = [];
  for await (const entry of Deno.readDir(dir)) {
    if (entry.isFile && entry.name.endsWith(".sql")) {
      files.push({ name: entry.name, text: await Deno.readTextFile(join(dir, entry.name)) });
    }
  }
  return files.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

export interface Declaration {
  kind: ObjectKind | null;
  /** Schema-qualified object name, or null for statements that declare none. */
  name: string | null;
  comment: string;
  text: string;
  file: string;
  line: number;
}

/** Every statement of the schema files, in apply order, with what it declares. */
export function declarations(files: SchemaFile[]): Declaration[] {
  return files.flatMap((f) =>
    splitStatements(f.text).map((s) => {
      const object = declaredObject(s.text);
      return { kind: object?.kind ?? null, name: object?.name ?? null, ...s, file: f.name };
    })
  );
}

/** Kinds a migration can re-declare as they are: `create or replace` replaces them in place. */
const REDECLARABLE = new Set<ObjectKind | null>(["function", "view"]);

/**
 * The declarations of `requested` objects (`util.name` or `name`), in schema
 * file order so that what one needs is declared before it. All overloads of
 * a function name are taken. Tables and indexes are refused: their changes
 * are `alter` statements, written by hand.
 */
export function pickDeclarations(all: Declaration[], requested: string[]): Declaration[] {
  if (requested.length === 0) {
    throw new SchemaMigrationError("name at least one function or view to re-declare");
  }
  const wanted = new Set(requested.map((r) => normalizeName(r.replace(/\(.*$/, ""))));
  for (const name of wanted) {
    const found = all.filter((d) => d.name === name);
    if (found.length === 0) {
      throw new SchemaMigrationError(
        `${name} is not declared in supabase/schemas (check the name, or declare it there first)`,
      );
    }
    const other = found.find((d) => !REDECLARABLE.has(d.kind));
    if (other) {
      throw new SchemaMigrationError(
        `${name} is a ${other.kind}: write its change (alter ${other.kind} ...) by hand, ` +
          `then the drift test checks it against ${other.file}`,
      );
    }
  }
  return all.filter((d) => d.name !== null && wanted.has(d.name));
}

/**
 * GRANT/REVOKE statements of the schema files that concern `picked`: those
 * naming one of them, and the schema-wide revokes of their kind (a function
 * created new is executable by PUBLIC until revoked). A schema-wide revoke
 * also takes back every grant of its kind the schema files make after it,
 * so those grants come along, in order, whatever they name (a migration that
 * revoked them and stopped there would close functions the schema files keep
 * open). All are idempotent.
 */
export function privilegesFor(all: Declaration[], picked: Declaration[]): Declaration[] {
  const schemas = new Set(picked.map((d) => d.name!.split(".")[0]));
  const kinds = new Set<string>(
    picked.map((d) => (d.kind === "function" ? "functions" : "tables")),
  );
  const revoked = new Set<string>(); // "functions util", "tables util"
  return all.filter((d) => {
    if (!isPrivilegeStatement(d.text)) return false;
    const wide = d.text.match(/\bon\s+all\s+(functions|tables)\s+in\s+schema\s+(\w+)/i);
    if (wide) {
      const [kind, schema] = [wide[1].toLowerCase(), wide[2].toLowerCase()];
      const wanted = kinds.has(kind) && schemas.has(schema);
      if (wanted && /^revoke\b/i.test(d.text)) revoked.add(`${kind} ${schema}`);
      return wanted;
    }
    return picked.some((p) => mentions(d.text, p.name!)) || regrants(d.text, revoked);
  });
}

/** Whether `statement` is a GRANT on an object of a kind and schema in `revoked`. */
function regrants(statement: string, revoked: Set<string>): boolean {
  if (!/^grant\b/i.test(statement)) return false;
  return [...revoked].some((key) => {
    const [kind, schema] = key.split(" ");
    const on = kind === "functions" ? "function\\s+" : "(?:table\\s+)?";
    return new RegExp(`\\bon\\s+${on}${schema}\\.`, "i").test(statement);
  });
}

/** `YYYYMMDDHHMMSS` of `now` (UTC), moved past every existing version so it applies last. */
export function nextVersion(now: Date, existing: string[]): string {
  const stamp = (d: Date) => d.toISOString().replace(/\D/g, "").slice(0, 14);
  let version = stamp(now);
  const latest = existing.reduce((max, v) => (v > max ? v : max), "");
  if (version <= latest) {
    // A clock behind the newest migration (or two runs in one second).
    const y = latest.slice(0, 4), mo = latest.slice(4, 6), d = latest.slice(6, 8);
    const h = latest.slice(8, 10), mi = latest.slice(10, 12), s = latest.slice(12, 14);
    version = stamp(new Date(Date.parse(`${y}-${mo}-${d}T${h}:${mi}:${s}Z`) + 1000));
  }
  return version;
}

export interface MigrationPlan {
  name: string;
  intent?: string;
  picked: Declaration[];
  privileges: Declaration[];
}

/** The migration's text: a header on intent, the declarations with their comments, the grants. */
export function renderMigration(plan: MigrationPlan): string {
  const objects = [...new Set(plan.picked.map((d) => d.name))].join(", ");
  const files = [...new Set([...plan.picked, ...plan.privileges].map((d) => d.file))].join(", ");
  const intent = plan.intent?.trim()
    ? plan.intent.trim().split("\n").map((l) => `-- ${l}`.trimEnd()).join("\n")
    : "-- Intent: TODO say why these definitions change (what a reader of this file needs).";
  const header = [
    `-- autoembed: ${plan.name.replaceAll("_", " ")}.`,
    intent,
    "--",
    `-- Re-declares ${objects} as supabase/schemas/ (${files}) defines them;`,
    "-- generated by `deno task schema:migration`. Arguments or result type changed? Add the",
    "-- `drop function` of the old signature above its declaration by hand.",
  ].join("\n");
  const block = (d: Declaration) => (d.comment ? `${d.comment}\n${d.text}` : d.text);
  const parts = [header, ...plan.picked.map(block)];
  if (plan.privileges.length) {
    parts.push(
      `-- Privileges, as supabase/schemas declares them.\n${
        plan.privileges.map((d) => d.text).join("\n")
      }`,
    );
  }
  return parts.join("\n\n") + "\n";
}

const MIGRATION_NAME = /^[a-z0-9][a-z0-9_]*$/;

export interface GenerateOptions {
  name: string;
  objects: string[];
  intent?: string;
  schemasDir?: string;
  migrationsDir?: string;
  lockFile?: string;
  now?: Date;
}

/** Writes the migration and returns its path. Never overwrites a file. */
export async function generateMigration(options: GenerateOptions): Promise<string> {
  if (!MIGRATION_NAME.test(options.name)) {
    throw new SchemaMigrationError(
      `migration name "${options.name}": use lower case letters, digits and _ (e.g. faster_sweeps)`,
    );
  }
  const migrationsDir = options.migrationsDir ?? MIGRATIONS_DIR;
  const all = declarations(await readSchemaFiles(options.schemasDir ?? SCHEMAS_DIR));
  const picked = pickDeclarations(all, options.objects);
  const existing: string[] = [];
  for await (const entry of Deno.readDir(migrationsDir)) {
    const m = entry.name.match(/^(\d{14})_.*\.sql$/);
    if (m) existing.push(m[1]);
  }
  const version = nextVersion(options.now ?? new Date(), existing);
  const path = join(migrationsDir, `${version}_${options.name}.sql`);
  const text = renderMigration({
    name: options.name,
    intent: options.intent,
    picked,
    privileges: privilegesFor(all, picked),
  });
  await Deno.writeTextFile(path, text, { createNew: true });
  const lockFile = lockFileFor(options);
  if (lockFile) await lockNewMigrations(migrationsDir, lockFile);
  return path;
}

/** The baseline's text: a header, then every schema file in apply order, each under its name. */
export function renderBaseline(
  name: string,
  intent: string | undefined,
  files: SchemaFile[],
): string {
  const header = [
    `-- autoembed: ${name.replaceAll("_", " ")}.`,
    ...(intent?.trim() ? intent.trim().split("\n").map((l) => `-- ${l}`.trimEnd()) : []),
    "--",
    "-- The baseline: every object of the pipeline as supabase/schemas/ declares it, file by",
    "-- file in apply order; generated by `deno task schema:migration <name> --baseline`.",
    "-- Recorded in supabase/migrations.lock: never edit it. Later changes go in later",
    "-- migrations (deno task schema:migration <name> <objects>).",
  ].join("\n");
  const parts = files.map((f) => `-- ==== supabase/schemas/${f.name} ====\n\n${f.text.trim()}\n`);
  return [header, ...parts].join("\n\n");
}

/**
 * Replaces the whole history with one baseline migration of the schema
 * files, and locks it. Only an unreleased history may be replaced: once the
 * lock records a migration, it refuses (delete the lock first only when no
 * database outside this repository has the history).
 */
export async function generateBaseline(options: Omit<GenerateOptions, "objects">): Promise<string> {
  if (!MIGRATION_NAME.test(options.name)) {
    throw new SchemaMigrationError(`migration name "${options.name}": use a-z, 0-9 and _`);
  }
  const migrationsDir = options.migrationsDir ?? MIGRATIONS_DIR;
  const lockFile = lockFileFor(options);
  const locked = lockFile ? await readLock(lockFile) : new Map();
  if (locked.size) {
    throw new SchemaMigrationError(
      `the history is frozen: supabase/migrations.lock records ${locked.size} migration(s) that ` +
        "databases may have; a baseline replaces only a history no database has. Add a migration " +
        "instead (deno task schema:migration <name> <objects>).",
    );
  }
  const files = await readSchemaFiles(options.schemasDir ?? SCHEMAS_DIR);
  for await (const entry of Deno.readDir(migrationsDir)) {
    if (entry.isFile && entry.name.endsWith(".sql")) {
      await Deno.remove(join(migrationsDir, entry.name));
    }
  }
  const version = nextVersion(options.now ?? new Date(), []);
  const path = join(migrationsDir, `${version}_${options.name}.sql`);
  await Deno.writeTextFile(path, renderBaseline(options.name, options.intent, files), {
    createNew: true,
  });
  if (lockFile) await lockNewMigrations(migrationsDir, lockFile);
  return path;
}

/** The lock to record in: the repository's for its own migrations, else only one named. */
function lockFileFor(options: { migrationsDir?: string; lockFile?: string }): string | null {
  return options.lockFile ?? (options.migrationsDir ? null : LOCK_FILE);
}

const USAGE = `usage: deno task schema:migration <name> <object>... [--intent "why"]
       deno task schema:migration <name> --baseline [--intent "why"]

Writes supabase/migrations/<timestamp>_<name>.sql re-declaring the named functions and
views (util.process_embeddings, or process_embeddings) as supabase/schemas/ defines them,
and records it in supabase/migrations.lock. --baseline replaces an unreleased history
(nothing locked yet) with one migration of every schema file.`;

export async function main(argv: string[]): Promise<number> {
  const positional: string[] = [];
  let intent: string | undefined;
  let baseline = false;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--intent") intent = argv[++i];
    else if (argv[i] === "--baseline") baseline = true;
    else if (argv[i].startsWith("--intent=")) intent = argv[i].slice("--intent=".length);
    else if (argv[i] === "-h" || argv[i] === "--help") {
      console.log(USAGE);
      return 0;
    } else if (argv[i].startsWith("-")) throw new SchemaMigrationError(`unknown option ${argv[i]}`);
    else positional.push(argv[i]);
  }
  const [name, ...objects] = positional;
  if (!name) throw new SchemaMigrationError(USAGE);
  if (baseline && objects.length) {
    throw new SchemaMigrationError("--baseline takes every schema file: name no objects");
  }
  const path = baseline
    ? await generateBaseline({ name, intent })
    : await generateMigration({ name, objects, intent });
  console.log(`wrote supabase/migrations/${basename(path)}`);
  if (!intent) console.log("say why in its header (the Intent line), then run the drift test");
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (err) {
    if (err instanceof SchemaMigrationError || err instanceof Deno.errors.AlreadyExists) {
      console.error(`schema:migration: ${(err as Error).message}`);
      Deno.exit(2);
    }
    throw err;
  }
}
