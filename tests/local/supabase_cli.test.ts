// The real Supabase CLI against a database built from supabase/migrations (a
// clone of the test template: connecting to the template itself would block
// other tests' clones): `migration list` sees every migration applied, and
// `db lint` (plpgsql_check) finds nothing in the schema the project owns.
import assert from "node:assert/strict";
import { cliDbUrl, listMigrations, supabaseCli } from "../../local/migrate.ts";
import { withTestDb } from "../../devtools/db.ts";

/** The schemas whose functions are ours; pgmq, net and vault are shims of others' extensions. */
const OWN_SCHEMAS = ["util"];

Deno.test("supabase migration list shows every migration of supabase/migrations as applied", async () => {
  await withTestDb(async (_sql, url) => {
    const result = await supabaseCli(["migration", "list", "--db-url", cliDbUrl(url)]);
    assert.equal(result.code, 0, result.stderr);
    // Rows look like "   `20261124000100` | `20261124000100` | `2026-11-24 00:01:00` ".
    const rows = result.stdout.split("\n").map((line) => line.split("|").map((c) => c.trim()))
      .filter((cells) => cells.length === 3 && cells.slice(0, 2).some((c) => /^`\d+`$/.test(c)));
    const local = await listMigrations();
    assert.ok(local.length >= 1, `found ${local.length} migration files`);
    assert.deepEqual(
      rows.map(([l, r]) => [l.replaceAll("`", ""), r.replaceAll("`", "")]),
      local.map((m) => [m.version, m.version]),
      "each local version has its remote twin, and no other row exists",
    );
  });
});

/** `supabase db lint` over our schemas; returns its exit code and findings. */
async function lint(url: string) {
  const result = await supabaseCli([
    "db",
    "lint",
    "--db-url",
    cliDbUrl(url),
    "--schema",
    OWN_SCHEMAS.join(","),
    "--level",
    "warning",
    "--fail-on",
    "error",
  ]);
  const text = result.stdout.trim();
  const findings = text
    ? JSON.parse(text) as { function: string; issues: { level: string; message: string }[] }[]
    : [];
  return { code: result.code, findings, stderr: result.stderr };
}

Deno.test("supabase db lint: no error and no warning in the project's schemas", async () => {
  await withTestDb(async (_sql, url) => {
    const { code, findings, stderr } = await lint(url);
    assert.deepEqual(findings, []);
    assert.equal(code, 0, stderr);
  });
});

Deno.test("supabase db lint: a function that reads a missing table fails the lint, named", async () => {
  await withTestDb(async (sql, url) => {
    await sql.unsafe(`
      create function util.lint_probe() returns bigint language plpgsql set search_path = '' as $$
      begin
        return (select count(*) from util.no_such_table);
      end $$;
      create function util.lint_probe_warning() returns text[] language plpgsql set search_path = '' as $$
      declare
        found text[] := '{}';
      begin
        return found;
      end $$;
    `).simple();
    const { code, findings } = await lint(url);
    assert.notEqual(code, 0, "--fail-on error fails the run");
    const byFunction = Object.fromEntries(
      findings.map((f) => [f.function, f.issues.map((i) => `${i.level}: ${i.message}`)]),
    );
    assert.deepEqual(byFunction, {
      "util.lint_probe": ['error: relation "util.no_such_table" does not exist'],
      "util.lint_probe_warning": ["warning: target type is different type than source type"],
    });
  });
});
