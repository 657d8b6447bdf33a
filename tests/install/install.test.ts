// `deno task autoembed install|upgrade --into <project>` as users run it: into
// a scratch Supabase project folder, whose own supabase/migrations then build
// a fresh database on which the pipeline embeds a table.
import assert from "node:assert/strict";
import { join } from "node:path";
import { applyMigrations, listMigrations, MIGRATIONS_DIR } from "../../local/migrate.ts";
import { MANIFEST, sha256 } from "../../cli/install.ts";
import { runCli } from "../../devtools/cli.ts";
import { withTestDb } from "../../devtools/db.ts";

const MINIMAL_CONFIG = `# made by supabase init
project_id = "my-app"

[api]
port = 54321
`;

/** A temporary folder shaped like a fresh `supabase init` project; removed afterwards. */
async function withScratchProject(
  fn: (dir: string) => Promise<void>,
  options: { config?: string | null } = {},
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "autoembed-project-" });
  try {
    await Deno.mkdir(join(dir, "supabase"));
    const config = options.config === undefined ? MINIMAL_CONFIG : options.config;
    if (config !== null) await Deno.writeTextFile(join(dir, "supabase", "config.toml"), config);
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Every file under `dir` with its content, to prove a run changed nothing. */
async function snapshot(dir: string, prefix = ""): Promise<Map<string, string>> {
  const files = new Map<string, string>();
  for await (const entry of Deno.readDir(join(dir, prefix))) {
    const path = join(prefix, entry.name);
    if (entry.isDirectory) { for (const [p, c] of await snapshot(dir, path)) files.set(p, c); }
    else files.set(path, await Deno.readTextFile(join(dir, path)));
  }
  return files;
}

Deno.test("install into a Supabase project: its migrations build a database where the pipeline works", async () => {
  await withScratchProject(async (dir) => {
    const result = await runCli(["install", "--into", dir]);
    assert.equal(result.code, 0, result.stderr);
    const shipped = await listMigrations();
    const installed = await listMigrations(join(dir, "supabase", "migrations"));
    assert.deepEqual(installed.map((m) => m.version), shipped.map((m) => m.version));
    assert.ok(shipped.length >= 1, "the premise: migrations to install");
    for (
      const path of [
        "embed/index.ts",
        "embed/handler.ts",
        "embed/deno.json",
        "search/index.ts",
        "search/handler.ts",
        "search/deno.json",
        "_shared/core.ts",
      ]
    ) {
      await Deno.stat(join(dir, "supabase", "functions", path)); // throws when missing
    }
    const config = await Deno.readTextFile(join(dir, "supabase", "config.toml"));
    assert.ok(config.startsWith(MINIMAL_CONFIG.trimEnd()), "the user's config is kept");
    assert.match(config, /\[functions\.embed\]\nverify_jwt = false\n$/);
    const importMap = JSON.parse(
      await Deno.readTextFile(join(dir, "supabase", "functions", "embed", "deno.json")),
    );
    // Every bare import of the shipped sources, _shared/ included (its search
    // helpers verify JWTs with jose).
    assert.deepEqual(Object.keys(importMap.imports), [
      "jose",
      "js-tiktoken",
      "openai",
      "pg",
      "postgres",
      "zod",
    ]);
    assert.deepEqual(
      JSON.parse(
        await Deno.readTextFile(join(dir, "supabase", "functions", "search", "deno.json")),
      ),
      importMap,
      "search deploys with the same import map",
    );
    assert.match(
      result.stdout,
      /next: supabase db push, then supabase functions deploy embed search/,
    );

    await withTestDb(async (sql, url) => {
      await applyMigrations(url, { dir: join(dir, "supabase", "migrations") });
      await sql.unsafe(`
        create table public.notes (id bigint primary key generated always as identity,
                                   body text not null, embedding halfvec(64));
        create function public.note_input(n public.notes) returns text
          language sql immutable as $$ select n.body $$;
        insert into public.notes (body) select 'note number ' || i from generate_series(1, 30) i;
        select util.enable_embeddings('public.notes', 'note_input', model => 'local-hash-v1');
        insert into public.notes (body) values ('written after attaching');`);
      const worker = await runCli(["worker", "--once", "-d", url]);
      assert.equal(worker.code, 0, worker.stderr);
      const [row] = await sql`
        select count(*)::int as total, count(embedding)::int as embedded from public.notes`;
      assert.deepEqual({ ...row }, { total: 31, embedded: 31 });
      const [status] = await sql`
        select missing::int, stale::int, model from util.embedding_status_exact() where table_name = 'notes'`;
      assert.deepEqual({ ...status }, { missing: 0, stale: 0, model: "local-hash-v1" });
    }, { template: "template1" });
  });
});

Deno.test("upgrade: a second run changes nothing; a new release adds only its new migrations", async () => {
  await withScratchProject(async (dir) => {
    assert.equal((await runCli(["install", "--into", dir])).code, 0);
    const installed = await snapshot(dir);
    const again = await runCli(["upgrade", "--into", dir]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /upgrade: nothing to do/);
    assert.deepEqual(await snapshot(dir), installed, "upgrade right after install wrote nothing");

    // The project as an older release left it: without the newest migration,
    // with an older (unedited) copy of a function file, plus a migration of its own.
    const newest = (await listMigrations()).at(-1)!;
    const newestPath = join("supabase", "migrations", `${newest.version}_${newest.name}.sql`);
    await Deno.remove(join(dir, newestPath));
    const older = "// an older release of this file\n";
    const keysPath = join("supabase", "functions", "_shared", "keys.ts");
    await Deno.writeTextFile(join(dir, keysPath), older);
    const manifest = JSON.parse(await Deno.readTextFile(join(dir, MANIFEST)));
    manifest.files[keysPath] = sha256(older);
    await Deno.writeTextFile(join(dir, MANIFEST), JSON.stringify(manifest));
    const ownPath = join("supabase", "migrations", "20991231000000_my_own_table.sql");
    await Deno.writeTextFile(join(dir, ownPath), "create table public.mine (id int);\n");

    const upgrade = await runCli(["upgrade", "--into", dir]);
    assert.equal(upgrade.code, 0, upgrade.stderr);
    assert.deepEqual(
      upgrade.stdout.split("\n").filter((l) => /^(added|updated) /.test(l)),
      [`added    ${newestPath}`, `updated  ${keysPath}`],
    );
    const after = await snapshot(dir);
    assert.equal(after.get(newestPath), installed.get(newestPath));
    assert.equal(after.get(keysPath), installed.get(keysPath));
    assert.equal(after.get(ownPath), "create table public.mine (id int);\n", "theirs untouched");

    const third = await runCli(["upgrade", "--into", dir]);
    assert.match(third.stdout, /upgrade: nothing to do/);
    assert.deepEqual(await snapshot(dir), after);
  });
});

Deno.test("install and upgrade refuse, with exit code 2 and nothing written, when a file differs", async () => {
  await withScratchProject(async (dir) => {
    // A migration of the same name with other content.
    const first = (await listMigrations())[0];
    const name = `${first.version}_${first.name}.sql`;
    await Deno.mkdir(join(dir, "supabase", "migrations"));
    await Deno.writeTextFile(join(dir, "supabase", "migrations", name), "-- someone's edit\n");
    const before = await snapshot(dir);
    const refused = await runCli(["install", "--into", dir]);
    assert.equal(refused.code, 2);
    assert.match(refused.stderr, new RegExp(`install refused, nothing written.*\\n.*${name}`));
    assert.deepEqual(await snapshot(dir), before, "not one file written");

    // After a clean install, a user's edit of a function file blocks upgrade.
    await Deno.copyFile(join(MIGRATIONS_DIR, name), join(dir, "supabase", "migrations", name));
    assert.equal((await runCli(["install", "--into", dir])).code, 0);
    const handler = join(dir, "supabase", "functions", "embed", "handler.ts");
    await Deno.writeTextFile(handler, (await Deno.readTextFile(handler)) + "// my tweak\n");
    const edited = await snapshot(dir);
    const upgrade = await runCli(["upgrade", "--into", dir]);
    assert.equal(upgrade.code, 2);
    assert.match(upgrade.stderr, /embed\/handler\.ts: differs from what autoembed installed/);
    assert.deepEqual(await snapshot(dir), edited, "the user's copy survives");
  });
  await withScratchProject(async (dir) => {
    await Deno.writeTextFile(
      join(dir, "supabase", "config.toml"),
      `${MINIMAL_CONFIG}\n[functions.embed]\nverify_jwt = true\n`,
    );
    const before = await snapshot(dir);
    const refused = await runCli(["install", "--into", dir]);
    assert.equal(refused.code, 2);
    assert.match(
      refused.stderr,
      /supabase\/config\.toml: \[functions\.embed\] sets verify_jwt = true/,
    );
    assert.deepEqual(await snapshot(dir), before);
  });
});

Deno.test("install without config.toml says what to add; outside a Supabase project it refuses", async () => {
  await withScratchProject(async (dir) => {
    const result = await runCli(["install", "--into", dir]);
    assert.equal(result.code, 0, result.stderr);
    assert.match(
      result.stdout,
      /no supabase\/config\.toml here.*add to it:\n\n[\s\S]*\[functions\.embed\]\nverify_jwt = false/,
    );
    await assert.rejects(Deno.stat(join(dir, "supabase", "config.toml")), Deno.errors.NotFound);
  }, { config: null });
  const empty = await Deno.makeTempDir({ prefix: "autoembed-not-a-project-" });
  try {
    const result = await runCli(["install", "--into", empty]);
    assert.equal(result.code, 2);
    assert.match(result.stderr, /is not a Supabase project \(no supabase\/ folder\)/);
    assert.deepEqual([...Deno.readDirSync(empty)], []);
  } finally {
    await Deno.remove(empty, { recursive: true });
  }
});
