// The Docker-free local stack: setup idempotence, the cluster's extensions,
// the migration runner, and the function server.
import assert from "node:assert/strict";
import { join } from "node:path";
import { startFunctions } from "../../local/functions.ts";
import { localJwt } from "../../local/functions.ts";
import { applyMigrations, MigrationError } from "../../local/migrate.ts";
import { ensureSetup } from "../../local/setup.ts";
import { ADMIN_URL, connect, withTestDb } from "../_support/db.ts";

Deno.test("setup is idempotent: on a prepared machine it changes nothing", async () => {
  const report = await ensureSetup();
  assert.deepEqual(report.actions, []);
});

Deno.test("cluster: vector, hstore and the shims are installed; halfvec and an HNSW index work", async () => {
  await withTestDb(async (sql) => {
    const installed = (await sql`select extname from pg_extension`).map((r) => r.extname);
    for (const name of ["vector", "hstore", "pgmq", "pg_net", "supabase_vault"]) {
      assert.ok(installed.includes(name), `${name} installed (have ${installed.join(", ")})`);
    }
    const [{ v }] = await sql`select '[1,2,3]'::halfvec(3)::text as v`;
    assert.equal(v, "[1,2,3]");
    await sql`create table items (id int primary key, embedding halfvec(3))`;
    await sql`insert into items select g, array[g, g + 1, g + 2]::real[]::halfvec(3) from generate_series(1, 100) g`;
    await sql`create index on items using hnsw (embedding halfvec_cosine_ops)`;
    const [{ id }] = await sql`select id from items order by embedding <=> '[1,2,3]' limit 1`;
    assert.equal(id, 1);
    const [{ search_path: path }] = await sql`show search_path`;
    assert.match(path, /extensions/);
  });
});

Deno.test("cluster: pg_cron is preloaded and schedules in the postgres database (1.4: minutes only)", async () => {
  const sql = connect(ADMIN_URL, { max: 1 });
  try {
    const [{ libs }] = await sql`select current_setting('shared_preload_libraries') as libs`;
    assert.match(libs, /pg_cron/);
    await sql`create extension if not exists pg_cron`;
    const [{ id }] =
      await sql`select cron.schedule('autoembed-test-job', '* * * * *', 'select 1') as id`;
    assert.ok(Number(id) > 0);
    await assert.rejects(
      sql`select cron.schedule('autoembed-test-job-2', '10 seconds', 'select 1')`,
    );
    await sql`select cron.unschedule('autoembed-test-job')`;
  } finally {
    await sql.end();
  }
});

Deno.test("roles: anon, authenticated and service_role exist", async () => {
  await withTestDb(async (sql) => {
    const roles =
      (await sql`select rolname from pg_roles where rolname in ('anon', 'authenticated', 'service_role')`)
        .map((r) => r.rolname).sort();
    assert.deepEqual(roles, ["anon", "authenticated", "service_role"]);
  });
});

async function migrationsDir(files: Record<string, string>): Promise<string> {
  const dir = await Deno.makeTempDir();
  for (const [name, text] of Object.entries(files)) await Deno.writeTextFile(join(dir, name), text);
  return dir;
}

Deno.test("migration runner: filename order, one transaction each, recorded versions, idempotent re-run", async () => {
  await withTestDb(async (sql, url) => {
    const dir = await migrationsDir({
      "20240102000000_second.sql": "insert into log values ('second');",
      "20240101000000_first.sql":
        "create table log (what text, at timestamptz default clock_timestamp());\ninsert into log values ('first');",
      "20240103000000_third.sql":
        "insert into log values ('third');\ncreate function f() returns int language sql as $$ select 1; $$;",
    });
    try {
      const applied = await applyMigrations(url, { dir });
      assert.deepEqual(applied, ["20240101000000", "20240102000000", "20240103000000"]);
      const order = (await sql`select what from log order by at`).map((r) => r.what);
      assert.deepEqual(order, ["first", "second", "third"]);
      const recorded =
        await sql`select version, name from supabase_migrations.schema_migrations order by version`;
      assert.deepEqual(recorded.map((r) => r.name), ["first", "second", "third"]);
      assert.deepEqual(await applyMigrations(url, { dir }), [], "a re-run applies nothing");
      const [{ n }] = await sql`select count(*)::int as n from log`;
      assert.equal(n, 3);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }, { template: "template1" });
});

Deno.test("migration runner: a failing migration stops the run with its file name and the server's error", async () => {
  await withTestDb(async (sql, url) => {
    const dir = await migrationsDir({
      "20240101000000_ok.sql": "create table a (x int);",
      "20240102000000_broken.sql": "create table b (x int);\n\nselect * from no_such_table;",
      "20240103000000_after.sql": "create table c (x int);",
    });
    try {
      const err = await applyMigrations(url, { dir }).then(() => null, (e) => e);
      assert.ok(err instanceof MigrationError, String(err));
      assert.match(err.message, /20240102000000_broken\.sql/);
      assert.match(err.message, /no_such_table/);
      assert.match(err.message, /line 3/);
      const tables = (await sql`select tablename from pg_tables where tablename in ('a', 'b', 'c')`)
        .map((r) => r.tablename);
      assert.deepEqual(tables, ["a"], "the failing file rolled back; nothing after it ran");
      const versions = (await sql`select version from supabase_migrations.schema_migrations`).map((
        r,
      ) => r.version);
      assert.deepEqual(versions, ["20240101000000"]);
      await Deno.writeTextFile(join(dir, "20240102000000_broken.sql"), "create table b (x int);");
      assert.deepEqual(await applyMigrations(url, { dir }), ["20240102000000", "20240103000000"]);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }, { template: "template1" });
});

Deno.test("migration runner: seed runs after the migrations when asked", async () => {
  await withTestDb(async (sql, url) => {
    const dir = await migrationsDir({ "20240101000000_t.sql": "create table t (x int);" });
    const seedFile = join(dir, "seed.sql");
    await Deno.writeTextFile(seedFile, "insert into t values (42);");
    try {
      await applyMigrations(url, { dir, seed: true, seedFile });
      const [{ x }] = await sql`select x from t`;
      assert.equal(x, 42);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }, { template: "template1" });
});

Deno.test("function server: serves index.ts under /functions/v1/<name> with the Supabase environment and JWT check", async () => {
  const dir = await Deno.makeTempDir();
  const configToml = join(dir, "config.toml");
  await Deno.mkdir(join(dir, "hello"));
  await Deno.mkdir(join(dir, "open"));
  await Deno.mkdir(join(dir, "_shared"));
  const source = `Deno.serve((req) => Response.json({
    path: new URL(req.url).pathname,
    url: Deno.env.get("SUPABASE_URL"),
    db: Deno.env.get("SUPABASE_DB_URL"),
    extra: Deno.env.get("FROM_DOTENV"),
  }));`;
  await Deno.writeTextFile(join(dir, "hello", "index.ts"), source);
  await Deno.writeTextFile(join(dir, "open", "index.ts"), source);
  await Deno.writeTextFile(join(dir, ".env"), "FROM_DOTENV=yes\n");
  await Deno.writeTextFile(configToml, "[functions.open]\nverify_jwt = false\n");
  const server = await startFunctions({
    port: 0,
    env: { SUPABASE_DB_URL: "postgresql://example" },
    dir,
    configToml,
  });
  try {
    assert.deepEqual(server.names, ["hello", "open"]);
    let res = await fetch(`${server.url}/hello`);
    assert.equal(res.status, 401, "verify_jwt defaults to on");
    await res.body?.cancel();
    res = await fetch(`${server.url}/hello/sub?x=1`, {
      headers: { Authorization: `Bearer ${await localJwt("anon")}` },
    });
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.equal(body.path, "/hello/sub");
    assert.equal(body.db, "postgresql://example");
    assert.equal(body.extra, "yes");
    assert.match(body.url, /^http:\/\/127\.0\.0\.1:/);
    res = await fetch(`${server.url}/open`, { method: "POST", body: "{}" });
    assert.equal(res.status, 200, "verify_jwt = false skips the check");
    await res.body?.cancel();
    res = await fetch(`${server.url}/missing`);
    assert.equal(res.status, 404);
    await res.body?.cancel();
  } finally {
    await server.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("function server: a taken port gives a clear error", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  try {
    await assert.rejects(
      startFunctions({ port, env: {}, only: [] }),
      /port \d+ on 127\.0\.0\.1 is taken/,
    );
  } finally {
    listener.close();
  }
});
