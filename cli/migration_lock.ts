// The frozen history: supabase/migrations.lock records the SHA-256 of every
// migration, one `<sha256>  <file>` line each (the format of `sha256sum`, so
// `cd supabase/migrations && sha256sum -c ../migrations.lock` checks it too).
// A migration that reached a database never runs there again (Supabase records
// its version), so editing, renaming or deleting one is silent drift: the
// suite fails on any of them (tests/schema/migration_lock.test.ts). Adding a
// migration adds a line; `deno task schema:migration` writes it.
import { createHash } from "node:crypto";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const SUPABASE_DIR = join(dirname(dirname(fileURLToPath(import.meta.url))), "supabase");
const MIGRATIONS_DIR = join(SUPABASE_DIR, "migrations");
export const LOCK_FILE = join(SUPABASE_DIR, "migrations.lock");

const LINE = /^([0-9a-f]{64}) {2}(\d{14}_[a-z0-9_]+\.sql)$/;

export const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

/** The lock's entries, file name -> sha256, in order. Throws on a line it cannot read. */
export async function readLock(path = LOCK_FILE): Promise<Map<string, string>> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return new Map();
    throw err;
  }
  const entries = new Map<string, string>();
  text.split("\n").forEach((line, i) => {
    if (line.trim() === "") return;
    const m = line.match(LINE);
    if (!m) throw new Error(`${path}:${i + 1}: expected "<sha256>  <version>_<name>.sql"`);
    entries.set(m[2], m[1]);
  });
  return entries;
}

/** The migrations in `dir`, file name -> sha256 of their bytes. */
export async function hashMigrations(dir = MIGRATIONS_DIR): Promise<Map<string, string>> {
  const names: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    if (entry.isFile && entry.name.endsWith(".sql")) names.push(entry.name);
  }
  const hashes = new Map<string, string>();
  for (const name of names.sort()) hashes.set(name, sha256(await Deno.readFile(join(dir, name))));
  return hashes;
}

const HOW_TO_CHANGE = "A migration that reached a database never runs there again, so " +
  "the change would never reach it. Restore the file (git checkout -- <file>) and put the change " +
  'in a new migration: edit supabase/schemas/, then deno task schema:migration <name> <objects> --intent "why".';

/**
 * What breaks the frozen history: a recorded migration edited, deleted or
 * renamed (a rename is a deletion and an unrecorded file), and migrations
 * not recorded yet. Empty when the history and the lock agree.
 */
export function lockProblems(lock: Map<string, string>, files: Map<string, string>): string[] {
  const problems: string[] = [];
  for (const [name, hash] of lock) {
    const now = files.get(name);
    if (now === undefined) {
      problems.push(
        `supabase/migrations/${name} is recorded in supabase/migrations.lock but ` +
          `was deleted or renamed. ${HOW_TO_CHANGE}`,
      );
    } else if (now !== hash) {
      problems.push(
        `supabase/migrations/${name} was edited after it was recorded (sha256 ` +
          `${now.slice(0, 12)}…, recorded ${hash.slice(0, 12)}…). ${HOW_TO_CHANGE}`,
      );
    }
  }
  const latest = [...lock.keys()].sort().at(-1) ?? "";
  for (const name of files.keys()) {
    if (lock.has(name)) continue;
    problems.push(
      name < latest
        ? `supabase/migrations/${name} is not recorded and sorts before ${latest}, the newest ` +
          "recorded migration: databases that have that one would never run it. Give it a later " +
          "version (deno task schema:migration makes one)."
        : `supabase/migrations/${name} is not recorded in supabase/migrations.lock: add its line ` +
          "with deno task schema:lock (deno task schema:migration adds it for the files it writes).",
    );
  }
  return problems;
}

/** Appends a line for each migration the lock does not record yet; never changes a line. */
export async function lockNewMigrations(
  dir = MIGRATIONS_DIR,
  path = LOCK_FILE,
): Promise<string[]> {
  const lock = await readLock(path);
  const added: string[] = [];
  let text = "";
  for (const [name, hash] of await hashMigrations(dir)) {
    if (lock.has(name)) continue;
    text += `${hash}  ${name}\n`;
    added.push(name);
  }
  if (text) await Deno.writeTextFile(path, text, { append: true });
  return added;
}

if (import.meta.main) {
  const added = await lockNewMigrations();
  console.log(added.length ? `locked ${added.join(", ")}` : "every migration is locked already");
  const problems = lockProblems(await readLock(), await hashMigrations());
  for (const p of problems) console.error(p);
  Deno.exit(problems.length ? 1 : 0);
}
