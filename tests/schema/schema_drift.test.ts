// supabase/schemas (the readable, current definition of every object) and
// supabase/migrations (what `db push` applies) must build the same database.
// Two databases are built from the bootstrapped template1, one each way, and
// their catalogs compared object by object; any drift fails, naming the object.
import assert from "node:assert/strict";
import { join } from "node:path";
import { applyMigrations } from "../../local/migrate.ts";
import { type Sql, withTestDb } from "../../devtools/db.ts";
import { type Catalog, compareCatalogs, readCatalog } from "../_support/catalog.ts";
import { generateMigration, readSchemaFiles, SCHEMAS_DIR } from "../../cli/schema_migration.ts";

const NAMES = { expected: "migrations", actual: "schemas" };

/** Applies supabase/schemas/*.sql in name order, each file in one transaction. */
async function applySchemaFiles(sql: Sql, dir = SCHEMAS_DIR): Promise<void> {
  for (const file of await readSchemaFiles(dir)) {
    try {
      await sql.begin((tx) => tx.unsafe(file.text).simple());
    } catch (err) {
      throw new Error(`${file.name}: ${(err as Error).message}`);
    }
  }
}

function assertNoDrift(expected: Catalog, actual: Catalog, names = NAMES): void {
  const drift = compareCatalogs(expected, actual, names);
  assert.equal(
    drift.length,
    0,
    `${drift.length} object(s) drifted between ${names.expected} and ${names.actual}:\n` +
      drift.join("\n"),
  );
}

/** Two fresh databases from template1: one built by the migrations, one by the schema files. */
async function withBothBuilds(
  fn: (built: { migrations: Sql; migrationsUrl: string; schemas: Sql }) => Promise<void>,
): Promise<void> {
  await withTestDb(async (migrations, migrationsUrl) => {
    await applyMigrations(migrationsUrl);
    await withTestDb(async (schemas) => {
      await applySchemaFiles(schemas);
      await fn({ migrations, migrationsUrl, schemas });
    }, { template: "template1" });
  }, { template: "template1" });
}

Deno.test("supabase/schemas builds exactly what supabase/migrations build", async () => {
  await withBothBuilds(async ({ migrations, schemas }) => {
    const expected = await readCatalog(migrations);
    // The comparison means something only if the catalog holds the pipeline.
    const keys = [...expected.keys()];
    assert.ok(keys.filter((k) => k.startsWith("function util.")).length >= 30, keys.join("\n"));
    for (
      const key of [
        "table util.embedding_targets",
        "view util.embedding_status",
        "index util.embedding_fingerprints_content_hash",
        "sequence util.embedding_errors_id_seq",
        "setting sweep_slice_rows",
        "table util.embedding_models",
        "model text-embedding-3-small",
        "model local-",
        "relation pgmq.q_embedding_jobs",
      ]
    ) assert.ok(expected.has(key), `catalog lacks ${key}`);
    assertNoDrift(expected, await readCatalog(schemas));
  });
});

Deno.test("the schema files are idempotent: applied twice, nothing changes", async () => {
  await withTestDb(async (sql) => {
    await applySchemaFiles(sql);
    const once = await readCatalog(sql);
    await applySchemaFiles(sql);
    assertNoDrift(once, await readCatalog(sql), { expected: "applied once", actual: "twice" });
  }, { template: "template1" });
});

Deno.test("a generated migration re-declaring every function and view changes nothing", async () => {
  const dir = await Deno.makeTempDir({ prefix: "autoembed-generated-" });
  try {
    const files = await readSchemaFiles();
    const names = files.flatMap((f) =>
      [...f.text.matchAll(/^create or replace (?:function|view) (util\.\w+)/gm)].map((m) => m[1])
    );
    assert.ok(names.length >= 30, names.join(", "));
    // Every landed migration plus the generated one, in a folder of their own.
    for await (const entry of Deno.readDir(join(SCHEMAS_DIR, "..", "migrations"))) {
      await Deno.copyFile(join(SCHEMAS_DIR, "..", "migrations", entry.name), join(dir, entry.name));
    }
    const path = await generateMigration({
      name: "redeclare_everything",
      objects: names,
      intent: "Test: every function and view, as the schema files declare them.",
      migrationsDir: dir,
    });
    await withBothBuilds(async ({ migrationsUrl, migrations, schemas }) => {
      await applyMigrations(migrationsUrl, { dir });
      const [row] = await migrations`
        select count(*)::int as n from supabase_migrations.schema_migrations
         where ${path}::text like '%' || version || '_redeclare_everything.sql'`;
      assert.equal(row.n, 1, "the generated migration was applied");
      assertNoDrift(await readCatalog(migrations), await readCatalog(schemas), {
        expected: "migrations + generated",
        actual: "schemas",
      });
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
