// The Docker-free local stack: setup idempotence, the cluster's extensions,
// migrations through the Supabase CLI, and the function server.
import assert from "node:assert/strict";
import { join } from "node:path";
import { startFunctions } from "../../local/functions.ts";
import { localJwt } from "../../local/functions.ts";
import {
  applyMigrations,
  listMigrations,
  MigrationError,
  recreateIfDiverged,
} from "../../local/migrate.ts";
import { splitStatements } from "../../cli/sql_statements.ts";
import { PUSH_TICK_APPLICATION_NAME, type PushTick, startPushTick } from "../../local/push_tick.ts";
import { ensureSetup } from "../../local/setup.ts";
import { ADMIN_URL, connect, type Sql, withTestDb } from "../../devtools/db.ts";
import { waitFor } from "../../devtools/wait.ts";

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

/** Whether a pg_cron extension version ("1.4-1", "1.6") accepts '10 seconds' schedules. */
function cronHasSeconds(version: string): boolean {
  const [major, minor] = version.split(/[.-]/).map(Number);
  return major > 1 || (major === 1 && minor >= 5);
}

/** Thrown to roll a transaction back once its checks are done. */
class Rollback extends Error {}

/** The schedule statement of the migrations: the `do` block that calls cron.schedule. */
async function scheduleStatement(): Promise<string> {
  const statements: string[] = [];
  for (const m of await listMigrations()) {
    const text = await Deno.readTextFile(m.path);
    for (const s of splitStatements(text)) {
      if (/^do\b/i.test(s.text) && s.text.includes("cron.schedule(")) statements.push(s.text);
    }
  }
  assert.ok(statements.length > 0, "no migration schedules the tick");
  return statements.at(-1)!;
}

Deno.test("cluster: pg_cron is preloaded; the schedule migration ticks as often as the installed pg_cron allows", async () => {
  const sql = connect(ADMIN_URL, { max: 1 });
  const schedule = await scheduleStatement();
  try {
    const [{ libs }] = await sql`select current_setting('shared_preload_libraries') as libs`;
    assert.match(libs, /pg_cron/);
    // In the postgres database (the only one pg_cron lives in), rolled back:
    // the stack's own process-embeddings job, if any, is left as it was.
    await sql.begin(async (tx) => {
      await tx`create extension if not exists pg_cron`;
      const [{ extversion }] =
        await tx`select extversion from pg_extension where extname = 'pg_cron'`;
      const seconds = cronHasSeconds(extversion);
      const accepted = await tx.savepoint((sp) =>
        sp`select cron.schedule('autoembed-test-seconds', '10 seconds', 'select 1')`
      ).then(() => true, () => false);
      assert.equal(accepted, seconds, `pg_cron ${extversion} and '10 seconds'`);
      // What the statement needs of the pipeline's schema, in this rolled-back transaction.
      await tx`create schema if not exists util`;
      await tx`create table if not exists util.settings
                 (name text primary key, value text, description text)`;
      await tx`insert into util.settings (name, value, description)
               values ('kick_on_change', 'off', 'test') on conflict (name) do update set value = 'off'`;
      await tx.unsafe(schedule).simple();
      const jobs = await tx`
        select jobname, schedule, command from cron.job
         where jobname like 'process-embeddings%' or jobname like 'prune-%' order by jobname`;
      assert.deepEqual(jobs.map((j) => [j.jobname, j.schedule, j.command]), [
        [
          "process-embeddings",
          seconds ? "10 seconds" : "* * * * *",
          "select util.process_embeddings()",
        ],
      ]);
      const [{ value }] = await tx`select value from util.settings where name = 'kick_on_change'`;
      assert.equal(value, "on", "push mode kicks an idle pipeline where pg_cron ticks");
      throw new Rollback();
    }).catch((err) => {
      if (!(err instanceof Rollback)) throw err;
    });
  } finally {
    await sql.end();
  }
});

Deno.test("push tick: runs the per-minute fallback job every interval as the job's user, follows the job's changes, leaves nothing behind", async () => {
  const sql = connect(ADMIN_URL, { max: 1 });
  const suffix = crypto.randomUUID().replaceAll("-", "").slice(0, 12);
  const jobName = `autoembed-test-tick-${suffix}`;
  const table = `autoembed_test_tick_${suffix}`;
  const role = table; // pg_cron wants a role that can log in, so one of the test's own
  const lines: string[] = [];
  let tick: PushTick | null = null;
  // Rows written by the tick's runs (pg_cron may run the job itself at a minute boundary).
  const runs = async () => {
    const [{ n }] = await sql`
      select count(*)::int as n from ${sql(table)}
       where app = ${PUSH_TICK_APPLICATION_NAME} and who = ${role}`;
    return n as number;
  };
  try {
    await sql`create extension if not exists pg_cron`;
    await sql`create table ${sql(table)} (app text, who text, pid int)`;
    await sql`create role ${sql(role)} login`;
    await sql`grant insert on ${sql(table)} to ${sql(role)}`;
    const command =
      `insert into public.${table} values (current_setting('application_name'), current_user, pg_backend_pid())`;
    const [{ jobid }] = await sql`
      select cron.schedule_in_database(${jobName}, '* * * * *', ${command}, 'postgres', ${role})
               as jobid`;
    tick = await startPushTick({
      dbUrl: ADMIN_URL,
      jobName,
      intervalMs: 200,
      log: (line) => lines.push(line),
    });
    assert.equal(tick.plan.tick, true, tick.plan.reason);
    await waitFor(async () => (await runs()) >= 3, { what: "three ticks", timeoutMs: 10_000 });
    const [{ others }] = await sql`
      select count(*)::int as others from ${sql(table)}
       where app = ${PUSH_TICK_APPLICATION_NAME} and who <> ${role}`;
    assert.equal(others, 0, "every run is the job's user's");

    await sql`select cron.alter_job(${jobid}, active => false)`;
    await waitFor(() => lines.some((l) => l.includes("inactive")), {
      what: "the tick to see the paused job",
      timeoutMs: 10_000,
    });
    const paused = await runs();
    const checks = tick.stats.checks;
    await waitFor(() => tick!.stats.checks >= checks + 3, {
      what: "three more intervals",
      timeoutMs: 10_000,
    });
    assert.equal(await runs(), paused, "no run while the job is inactive");

    await sql`select cron.alter_job(${jobid}, active => true)`;
    await waitFor(async () => (await runs()) > paused, {
      what: "ticks again once active",
      timeoutMs: 10_000,
    });
    await tick.stop();
    tick = null;
    await waitFor(async () => {
      const [{ n }] = await sql`
        select count(*)::int as n from pg_stat_activity
         where pid in (select pid from ${sql(table)} where app = ${PUSH_TICK_APPLICATION_NAME})`;
      return n === 0;
    }, { what: "the tick's session to end", timeoutMs: 10_000 });
  } finally {
    await tick?.stop();
    await sql`select cron.unschedule(jobid) from cron.job where jobname = ${jobName}`;
    await sql`drop table if exists ${sql(table)}`;
    await sql`drop role if exists ${sql(role)}`;
    await sql.end();
  }
});

Deno.test("roles: anon, authenticated, service_role and authenticator, which may switch to the other three", async () => {
  await withTestDb(async (sql) => {
    const roles = await sql`
      select rolname, rolinherit,
             array(select m.roleid::regrole::text from pg_auth_members m
                    where m.member = r.oid order by 1) as member_of
        from pg_roles r
       where rolname in ('anon', 'authenticated', 'service_role', 'authenticator')
       order by rolname`;
    assert.deepEqual(roles.map((r) => ({ ...r })), [
      { rolname: "anon", rolinherit: false, member_of: [] },
      { rolname: "authenticated", rolinherit: false, member_of: [] },
      {
        rolname: "authenticator",
        rolinherit: false,
        member_of: ["anon", "authenticated", "service_role"],
      },
      { rolname: "service_role", rolinherit: false, member_of: [] },
    ]);
  });
});

Deno.test("default privileges as on Supabase: a table postgres creates in public gives the API roles everything", async () => {
  await withTestDb(async (sql) => {
    await sql`create table public.fresh (id int)`;
    const [acl] =
      await sql`select relacl::text[] as acl from pg_class where oid = 'public.fresh'::regclass`;
    assert.deepEqual([...acl.acl].sort(), [
      "anon=arwdDxt/postgres",
      "authenticated=arwdDxt/postgres",
      "postgres=arwdDxt/postgres",
      "service_role=arwdDxt/postgres",
    ]);
  });
});

/** A scratch Supabase project folder: `supabase/migrations/<files>` and an optional seed. */
async function projectDir(files: Record<string, string>, seed?: string): Promise<string> {
  const dir = await Deno.makeTempDir();
  await Deno.mkdir(join(dir, "supabase", "migrations"), { recursive: true });
  for (const [name, text] of Object.entries(files)) {
    await Deno.writeTextFile(join(dir, "supabase", "migrations", name), text);
  }
  if (seed !== undefined) await Deno.writeTextFile(join(dir, "supabase", "seed.sql"), seed);
  return dir;
}

/** A bare folder of migration files, outside any Supabase project. */
async function migrationsDir(files: Record<string, string>): Promise<string> {
  const dir = await Deno.makeTempDir();
  for (const [name, text] of Object.entries(files)) await Deno.writeTextFile(join(dir, name), text);
  return dir;
}

Deno.test("migrations through the Supabase CLI: filename order, one transaction each, recorded versions, idempotent re-run", async () => {
  await withTestDb(async (sql, url) => {
    const dir = await migrationsDir({
      "20240102000000_second.sql": "insert into log values ('second');",
      "20240101000000_first.sql":
        "create table log (what text, at timestamptz default clock_timestamp());\ninsert into log values ('first');",
      "20240103000000_third.sql":
        "insert into log values ('third');\ncreate function f() returns int language sql as $$ select 1; $$;",
    });
    try {
      const logged: string[] = [];
      const applied = await applyMigrations(url, { dir, log: (line) => logged.push(line) });
      assert.deepEqual(applied, ["20240101000000", "20240102000000", "20240103000000"]);
      assert.deepEqual(logged, [
        "Applying migration 20240101000000_first.sql",
        "Applying migration 20240102000000_second.sql",
        "Applying migration 20240103000000_third.sql",
      ]);
      const order = (await sql`select what from log order by at`).map((r) => r.what);
      assert.deepEqual(order, ["first", "second", "third"]);
      const recorded =
        await sql`select version, name from supabase_migrations.schema_migrations order by version`;
      assert.deepEqual(recorded.map((r) => r.name), ["first", "second", "third"]);
      assert.deepEqual(await applyMigrations(url, { dir }), [], "a re-run applies nothing");
      const [{ n }] = await sql`select count(*)::int as n from log`;
      assert.equal(n, 3);
      assert.equal((await Array.fromAsync(Deno.readDir(dir))).length, 3, "the folder is untouched");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }, { template: "template1" });
});

Deno.test("migrations through the Supabase CLI: a failing file stops the run with the CLI's message and the file name", async () => {
  await withTestDb(async (sql, url) => {
    const workdir = await projectDir({
      "20240101000000_ok.sql": "create table a (x int);",
      "20240102000000_broken.sql": "create table b (x int);\n\nselect * from no_such_table;",
      "20240103000000_after.sql": "create table c (x int);",
    });
    try {
      const err = await applyMigrations(url, { workdir }).then(() => null, (e) => e);
      assert.ok(err instanceof MigrationError, String(err));
      assert.equal(err.file, "20240102000000_broken.sql");
      assert.match(err.message, /^supabase db push failed/);
      assert.match(err.message, /Applying migration 20240102000000_broken\.sql/);
      assert.match(err.message, /relation "no_such_table" does not exist \(SQLSTATE 42P01\)/);
      assert.doesNotMatch(err.message, /20240103000000_after|postgres:postgres/);
      const tables = (await sql`select tablename from pg_tables where tablename in ('a', 'b', 'c')`)
        .map((r) => r.tablename);
      assert.deepEqual(tables, ["a"], "the failing file rolled back; nothing after it ran");
      const versions = (await sql`select version from supabase_migrations.schema_migrations`).map((
        r,
      ) => r.version);
      assert.deepEqual(versions, ["20240101000000"]);
      await Deno.writeTextFile(
        join(workdir, "supabase", "migrations", "20240102000000_broken.sql"),
        "create table b (x int);",
      );
      assert.deepEqual(await applyMigrations(url, { workdir }), [
        "20240102000000",
        "20240103000000",
      ]);
    } finally {
      await Deno.remove(workdir, { recursive: true });
    }
  }, { template: "template1" });
});

Deno.test("migrations through the Supabase CLI: the hook runs between migrations and seed", async () => {
  await withTestDb(async (sql, url) => {
    const workdir = await projectDir(
      {
        "20240101000000_t.sql": "create table t (x int, at timestamptz default clock_timestamp());",
      },
      "insert into t (x) values (42);",
    );
    try {
      const afterMigrations = async (tx: Sql) => void await tx`insert into t (x) values (1)`;
      await applyMigrations(url, { workdir, seed: true, afterMigrations });
      assert.deepEqual((await sql`select x from t order by at`).map((r) => r.x), [1, 42]);
      const [{ path }] = await sql`select path from supabase_migrations.seed_files`;
      assert.equal(path, "supabase/seed.sql", "the CLI recorded the seed (it runs it once)");
    } finally {
      await Deno.remove(workdir, { recursive: true });
    }
  }, { template: "template1" });
});

Deno.test("migrations through the Supabase CLI: a failing seed names seed.sql and leaves nothing behind", async () => {
  await withTestDb(async (sql, url) => {
    const workdir = await projectDir(
      { "20240101000000_t.sql": "create table t (x int);" },
      "insert into t values (42);\ninsert into no_such_table values (1);",
    );
    try {
      const err = await applyMigrations(url, { workdir, seed: true }).then(() => null, (e) => e);
      assert.ok(err instanceof MigrationError, String(err));
      assert.equal(err.file, "seed.sql");
      assert.match(err.message, /^supabase db push --include-seed failed/);
      assert.match(err.message, /Seeding data from supabase\/seed\.sql/);
      assert.match(err.message, /relation "no_such_table" does not exist/);
      const [{ n }] = await sql`select count(*)::int as n from t`;
      assert.equal(n, 0, "the seed rolled back as a whole");
    } finally {
      await Deno.remove(workdir, { recursive: true });
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

Deno.test("a local database built from another history is recreated, and says so in one line", async () => {
  await withTestDb(async (sql, url) => {
    const lines: string[] = [];
    let recreated = 0;
    const recreate = () => {
      recreated++;
      return Promise.resolve();
    };
    // The premise: a database of this checkout's migrations is left as it is.
    assert.equal(await recreateIfDiverged(url, recreate, (l) => lines.push(l)), false);
    assert.deepEqual([recreated, lines], [0, []]);
    // A version from the history before the baseline, as a database of an older checkout has.
    await sql`insert into supabase_migrations.schema_migrations (version, name, statements)
              values ('20261124000100', 'extensions', '{}')`;
    assert.equal(await recreateIfDiverged(url, recreate, (l) => lines.push(l)), true);
    assert.equal(recreated, 1);
    assert.equal(lines.length, 1);
    assert.match(lines[0], /not this checkout's \(it records 20261124000100, .*\); recreating it/);
  });
});
