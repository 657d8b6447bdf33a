// The frozen history (cli/migration_lock.ts): every migration is recorded
// by its SHA-256 in supabase/migrations.lock, and editing, renaming or
// deleting a recorded one fails the suite, saying how to change the schema
// instead. Adding a migration adds a line.
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  hashMigrations,
  LOCK_FILE,
  lockNewMigrations,
  lockProblems,
  readLock,
} from "../../cli/migration_lock.ts";
import {
  generateBaseline,
  MIGRATIONS_DIR,
  SchemaMigrationError,
} from "../../cli/schema_migration.ts";

Deno.test("migrations.lock: every migration of the repository is recorded, unedited", async () => {
  const lock = await readLock();
  assert.ok(lock.size > 0, "supabase/migrations.lock records no migration");
  const problems = lockProblems(lock, await hashMigrations());
  assert.deepEqual(problems, [], problems.join("\n"));
});

/** A copy of the repository's migrations and lock in a temporary folder. */
async function withCopy(fn: (dir: string, lock: string) => Promise<void>): Promise<void> {
  const root = await Deno.makeTempDir({ prefix: "autoembed-lock-" });
  try {
    const dir = join(root, "migrations");
    await Deno.mkdir(dir);
    for await (const e of Deno.readDir(MIGRATIONS_DIR)) {
      if (e.isFile) await Deno.copyFile(join(MIGRATIONS_DIR, e.name), join(dir, e.name));
    }
    const lock = join(root, "migrations.lock");
    await Deno.copyFile(LOCK_FILE, lock);
    await fn(dir, lock);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

const problemsIn = async (dir: string, lock: string) =>
  lockProblems(await readLock(lock), await hashMigrations(dir));

Deno.test("migrations.lock: an edited, renamed or deleted migration is named, with how to change it", async () => {
  await withCopy(async (dir, lock) => {
    const [first] = [...(await readLock(lock)).keys()];
    assert.deepEqual(await problemsIn(dir, lock), []); // the premise: the copy agrees

    // One byte more at the end of a recorded migration.
    await Deno.writeTextFile(join(dir, first), "\n", { append: true });
    const edited = await problemsIn(dir, lock);
    assert.equal(edited.length, 1);
    assert.match(edited[0], new RegExp(`${first} was edited after it was recorded`));
    assert.match(edited[0], /deno task schema:migration <name> <objects>/);

    // Renamed: the recorded name is gone, and a name nobody recorded appeared.
    const renamed = first.replace(/_(\w+)\.sql$/, "_renamed.sql");
    await Deno.rename(join(dir, first), join(dir, renamed));
    const moved = await problemsIn(dir, lock);
    assert.ok(
      moved.some((p) => p.includes(`${first} is recorded`) && p.includes("deleted or renamed")),
    );
    assert.ok(moved.some((p) => p.includes(`${renamed} is not recorded`)), moved.join("\n"));

    // Deleted.
    await Deno.remove(join(dir, renamed));
    const deleted = await problemsIn(dir, lock);
    assert.deepEqual(deleted.length, 1);
    assert.match(deleted[0], /deleted or renamed/);
  });
});

Deno.test("migrations.lock: a new migration adds a line, and may not sort before a recorded one", async () => {
  await withCopy(async (dir, lock) => {
    const before = await Deno.readTextFile(lock);
    await Deno.writeTextFile(join(dir, "29991231235959_later.sql"), "select 1;\n");
    const unlocked = await problemsIn(dir, lock);
    assert.equal(unlocked.length, 1);
    assert.match(unlocked[0], /29991231235959_later\.sql is not recorded.*deno task schema:lock/);
    assert.deepEqual(await lockNewMigrations(dir, lock), ["29991231235959_later.sql"]);
    const after = await Deno.readTextFile(lock);
    assert.ok(after.startsWith(before), "the lock's recorded lines changed");
    assert.equal(after.slice(before.length).split("\n").filter(Boolean).length, 1);
    assert.deepEqual(await problemsIn(dir, lock), []);

    await Deno.writeTextFile(join(dir, "20000101000000_earlier.sql"), "select 1;\n");
    const [earlier] = await problemsIn(dir, lock);
    assert.match(earlier, /20000101000000_earlier\.sql is not recorded and sorts before/);
  });
});

Deno.test("schema:migration --baseline: refused once anything is locked; else one migration, locked", async () => {
  await withCopy(async (dir, lock) => {
    await assert.rejects(
      generateBaseline({ name: "again", migrationsDir: dir, lockFile: lock }),
      (err) => err instanceof SchemaMigrationError && /the history is frozen/.test(err.message),
    );
    assert.deepEqual(await problemsIn(dir, lock), []); // nothing was touched

    await Deno.remove(lock);
    const path = await generateBaseline({
      name: "fresh_baseline",
      migrationsDir: dir,
      lockFile: lock,
      now: new Date("2030-01-01T00:00:00Z"),
    });
    const files = [...(await hashMigrations(dir)).keys()];
    assert.deepEqual(files, ["20300101000000_fresh_baseline.sql"]);
    assert.equal(path, join(dir, files[0]));
    const text = await Deno.readTextFile(path);
    assert.match(text, /-- ==== supabase\/schemas\/00_extensions\.sql ====/);
    assert.match(text, /-- ==== supabase\/schemas\/90_privileges\.sql ====/);
    assert.deepEqual([...(await readLock(lock)).keys()], files);
  });
});
