// Entry point of the Docker-free local stack: `start` (npm start), `test`
// (npm test), `stop`. Each step installs or creates what is missing first,
// so both commands work on a fresh clone.
import { join } from "node:path";
import { createClient } from "@supabase/supabase-js";
import postgres from "postgres";
import {
  API_PORT,
  API_URL,
  databaseUrl,
  LOCAL_EMBED_SECRET,
  ROOT,
  TEST_TEMPLATE,
} from "./config.ts";
import { bootstrapCluster, removeCluster, startCluster, stopCluster } from "./cluster.ts";
import { chooseDefaultModel, type ModelChoice, setDefaultModel } from "./default_model.ts";
import { FUNCTIONS_DIR, localJwt, startFunctions } from "./functions.ts";
import { applyMigrations, MigrationError } from "./migrate.ts";
import { startNetDispatcher } from "./net_dispatcher.ts";
import { CommandError, readTextIfExists } from "./proc.ts";
import { startPushTick } from "./push_tick.ts";
import { ensureSetup } from "./setup.ts";
import { surviveDatabaseDisconnects } from "../supabase/functions/_shared/postgres_guard.ts";

const say = (line: string) => console.log(`autoembed: ${line}`);

/** Machine setup, then the cluster up and bootstrapped. Returns whether we started the cluster. */
async function prepare(): Promise<boolean> {
  const report = await ensureSetup(say);
  if (report.actions.length) say(`setup: ${report.actions.join("; ")}`);
  const started = await startCluster(say);
  await bootstrapCluster();
  return started;
}

async function hasMigrationTable(url: string): Promise<boolean> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    const [row] =
      await sql`select to_regclass('supabase_migrations.schema_migrations') is not null as present`;
    return row.present;
  } finally {
    await sql.end();
  }
}

/** Recreates the test template: template1 (bootstrapped) plus every migration. */
async function buildTestTemplate(): Promise<void> {
  const admin = postgres(databaseUrl("postgres"), { max: 1, onnotice: () => {} });
  try {
    const [existing] = await admin`select 1 from pg_database where datname = ${TEST_TEMPLATE}`;
    if (existing) await admin.unsafe(`alter database ${TEST_TEMPLATE} is_template false`);
    await admin.unsafe(`drop database if exists ${TEST_TEMPLATE} with (force)`);
    await admin.unsafe(`create database ${TEST_TEMPLATE} template template1`);
  } finally {
    await admin.end();
  }
  await applyMigrations(databaseUrl(TEST_TEMPLATE));
  const again = postgres(databaseUrl("postgres"), { max: 1, onnotice: () => {} });
  try {
    await again.unsafe(`alter database ${TEST_TEMPLATE} is_template true`);
  } finally {
    await again.end();
  }
}

function waitForSignal(): Promise<string> {
  return new Promise((resolve) => {
    const on = (sig: Deno.Signal) => Deno.addSignalListener(sig, () => resolve(sig));
    on("SIGINT");
    on("SIGTERM");
  });
}

/** seed.sql stores the default functions URL in Vault; follow AUTOEMBED_API_PORT if it moved. */
async function pointVaultAtLocalFunctions(dbUrl: string): Promise<void> {
  const sql = postgres(dbUrl, { max: 1, onnotice: () => {} });
  try {
    await sql`
      select vault.update_secret(s.id, new_secret => ${API_URL})
        from vault.decrypted_secrets s
       where s.name = 'project_url' and s.decrypted_secret is distinct from ${API_URL}`;
  } finally {
    await sql.end();
  }
}

/**
 * Applies the pending migrations (`supabase db push`), makes the chosen model
 * the default of tables attached from now on (and says which, and why), then
 * runs the seed when asked (`supabase db push --include-seed`), so the seed's
 * demo table uses that model too. Returns the previous default.
 */
export async function migrateLocalDatabase(
  dbUrl: string,
  options: { seed: boolean; choice: ModelChoice; log?: (line: string) => void },
): Promise<string> {
  const { choice, log = () => {} } = options;
  let previous = "";
  await applyMigrations(dbUrl, {
    seed: options.seed,
    log,
    afterMigrations: async (sql) => {
      previous = await setDefaultModel(sql, choice.model);
      // On a fresh database the previous value is only the migrations' default.
      const was = !options.seed && previous !== choice.model
        ? `; default_model was ${previous}`
        : "";
      log(`model: ${choice.model} (${choice.reason}${was})`);
    },
  });
  return previous;
}

/** The default model for the configuration this start was given (environment and functions .env). */
export async function configuredModel(): Promise<ModelChoice> {
  const dotenv = await readTextIfExists(join(FUNCTIONS_DIR, ".env"));
  return chooseDefaultModel(Deno.env.toObject(), dotenv);
}

async function start(): Promise<void> {
  // The pg_net dispatcher runs in this process: a database restart must not end it.
  surviveDatabaseDisconnects((line) => say(line));
  const startedCluster = await prepare();
  const dbUrl = databaseUrl("postgres");
  const fresh = !(await hasMigrationTable(dbUrl));
  const choice = await configuredModel();
  // Through the Supabase CLI: the first start pushes the migrations and the seed
  // (`db reset` would keep Vault's secrets, see migrate.ts); later ones only `db push`.
  await migrateLocalDatabase(dbUrl, { seed: fresh, choice, log: say });
  await pointVaultAtLocalFunctions(dbUrl);
  // Functions first: requests queued while the stack was down (the cron tick
  // keeps queueing them) must find the function up when the dispatcher sends them.
  let functions;
  try {
    functions = await startFunctions({
      port: API_PORT,
      env: { SUPABASE_DB_URL: dbUrl, EMBED_SECRET: LOCAL_EMBED_SECRET },
      log: (line) => console.log(line),
    });
  } catch (err) {
    if (startedCluster) await stopCluster();
    throw err;
  }
  const dispatcher = await startNetDispatcher({ dbUrl, log: (line) => say(`pg_net: ${line}`) });
  const tick = await startPushTick({ dbUrl, log: (line) => say(`push tick: ${line}`) });
  say(`push tick: ${tick.plan.reason}`);
  say("ready");
  // As `supabase status` prints them; the same keys on every start (see localJwt).
  console.log(`  API URL:       ${API_URL}`);
  console.log(`  Database URL:  ${dbUrl}`);
  console.log(
    `  Functions URL: ${functions.url}/<name>  (${functions.names.join(", ") || "none yet"})`,
  );
  console.log(`  anon key: ${await localJwt("anon")}`);
  console.log(`  service_role key: ${await localJwt("service_role")}`);
  const signalled = waitForSignal();
  await Promise.race([
    showDemo(dbUrl, choice).catch((err) => say(`demo: ${(err as Error).message}`)),
    signalled,
  ]);
  console.log("  Press Ctrl-C to stop.");
  const signal = await signalled;
  say(`${signal}: stopping`);
  // Together: the tick queues no more calls, and the gateway knows its functions' exits are expected.
  await Promise.all([tick.stop(), functions.stop()]);
  await dispatcher.stop();
  if (startedCluster) await stopCluster();
  say("stopped");
}

/**
 * The demo table's status row. `next_model` is the model a change in progress
 * builds beside the live column (null when none), read through to_jsonb so
 * that this works whether or not the status view has that column.
 */
async function demoStatus(sql: postgres.Sql) {
  const [s] = await sql`
    select total_rows::int as total, embedded::int as embedded, missing::int as missing,
           stale::int as stale, queued::int as queued, model, last_error,
           to_jsonb(s) ->> 'next_model' as next_model
      from util.embedding_status s where schema_name = 'public' and table_name = 'documents'`;
  return s as
    | {
      total: number;
      embedded: number;
      missing: number;
      stale: number;
      queued: number;
      model: string;
      last_error: string | null;
      next_model: string | null;
    }
    | undefined;
}

/**
 * Waits until the demo table has no missing or stale embeddings and no model
 * change in progress; returns the status row.
 */
async function waitForDemo(sql: postgres.Sql, what: string) {
  const started = Date.now();
  let nextReport = 10_000;
  for (;;) {
    const s = await demoStatus(sql);
    if (s && s.missing === 0 && s.stale === 0 && s.queued === 0 && s.next_model === null) {
      say(
        `demo: ${what}: ${s.embedded}/${s.total} rows embedded by ${s.model} in ${
          Date.now() - started
        } ms`,
      );
      return s;
    }
    const waited = Date.now() - started;
    if (waited > 180_000) {
      throw new Error(
        `public.documents not embedded after 180 s (last error: ${s?.last_error ?? "none"})`,
      );
    }
    if (waited >= nextReport) {
      nextReport += 10_000;
      // Jobs of calls lost while the stack was down wait out their visibility timeout (2 min).
      const moving = s?.next_model ? `, moving to ${s.next_model}` : "";
      say(
        `demo: waiting: ${s?.queued} jobs queued, ${s?.missing} rows missing, ${s?.stale} stale` +
          moving +
          " (jobs of calls lost while the stack was down come back after their visibility timeout)",
      );
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Answers a question the way an application would: supabase-js with the anon
 * key calls the search function, which embeds the question with the table's
 * model and searches as the caller.
 */
async function answer(question: string) {
  const supabase = createClient(API_URL, await localJwt("anon"), {
    auth: { persistSession: false, autoRefreshToken: false },
  });
  const { data, error } = await supabase.functions.invoke("search", {
    body: { table: "documents", query: question, match_count: 3 },
  });
  if (error) throw new Error(`search failed: ${error.message}`);
  say(`demo: supabase.functions.invoke('search', "${question}") with the anon key:`);
  for (const hit of data.results) {
    console.log(`    ${hit.similarity.toFixed(3)}  ${hit.row.title}`);
  }
}

/**
 * Shows the pipeline working on the seeded demo table: moves it to the
 * configured default model if it has another, starts a drain (the tick would,
 * within 10 s), waits until every document is embedded, answers a search,
 * edits a row and waits for its re-embedding.
 */
async function showDemo(dbUrl: string, choice: ModelChoice): Promise<void> {
  const sql = postgres(dbUrl, { max: 1, onnotice: () => {} });
  try {
    const [demo] = await sql`select to_regclass('public.documents') is not null as present`;
    if (!demo.present) return;
    const status = await demoStatus(sql);
    const target = status?.next_model ?? status?.model;
    if (status && target !== choice.model) {
      const [{ n }] = await sql`
        select util.reembed('public.documents', 'embedding', ${choice.model}, 1536) as n`;
      say(`demo: public.documents moves from ${target} to ${choice.model}: ${n} rows queued`);
    }
    await sql`select util.process_embeddings()`;
    await waitForDemo(sql, "initial embedding");
    await answer("run SQL on a schedule");
    await sql`
      update public.documents
         set content = 'pg_cron runs SQL on a schedule inside the database, e.g. every minute ' ||
                       '(edited ' || to_char(now(), 'HH24:MI:SS') || ').'
       where title = 'Scheduling jobs'`;
    say("demo: edited 'Scheduling jobs'; the update trigger queued it");
    await sql`select util.process_embeddings()`;
    await waitForDemo(sql, "after the edit");
    await answer("run SQL every minute");
    await showChunkedDemo(sql);
    say(
      "demo: try it yourself in psql: insert or update public.documents, then " +
        "select * from util.embedding_status;",
    );
  } finally {
    await sql.end();
  }
}

/**
 * The chunked demo table: waits until every article's sections are embedded,
 * then asks a question whose answer is one section of one article, the way
 * an application would: supabase-js with the anon key calls the search
 * function on public.articles, which answers each article with its best section.
 */
async function showChunkedDemo(sql: postgres.Sql): Promise<void> {
  const status = async () => {
    const [s] = await sql`
      select model, total_rows::int, embedded::int, stale::int, queued::int, chunks::int
        from util.embedding_status where embedding_column = 'article_sections'`;
    return s;
  };
  let s = await status();
  if (!s) return;
  const deadline = Date.now() + 60_000;
  while (s.embedded < s.total_rows || s.stale > 0 || s.queued > 0) {
    if (Date.now() > deadline) {
      say(`demo: articles still embedding (${s.embedded}/${s.total_rows} rows); search skipped`);
      return;
    }
    await sql`select util.process_embeddings()`;
    await new Promise((r) => setTimeout(r, 200));
    s = await status();
  }
  say(
    `demo: public.articles: ${s.total_rows} articles in ${s.chunks} sections (public.article_sections)`,
  );
  const question = "how do I rotate the secret of the embed function";
  const supabase = createClient(API_URL, await localJwt("anon"), {
    auth: { persistSession: false, autoRefreshToken: false },
  });
  const { data, error } = await supabase.functions.invoke("search", {
    body: { table: "articles", query: question, match_count: 3 },
  });
  if (error) throw new Error(`search failed: ${error.message}`);
  say(`demo: supabase.functions.invoke('search', {table: 'articles', query: "${question}"}):`);
  for (const hit of data.results) {
    // The section's heading path (the markdown splitter keeps it in each chunk).
    const headings = String(hit.chunk.text).split("\n").filter((l) => l.startsWith("#"));
    console.log(`    ${hit.similarity.toFixed(3)}  ${headings.join(" > ").slice(0, 90)}`);
  }
}

/** Runs `deno test`, echoing its output, and returns its exit code and summary figures. */
async function runDenoTests(
  args: string[],
): Promise<{ code: number; passed: number; failed: number; ignored: number }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["test", "-A", "--parallel", ...args],
    cwd: ROOT,
    env: {
      AUTOEMBED_ADMIN_URL: databaseUrl("postgres"),
      AUTOEMBED_TEST_TEMPLATE: TEST_TEMPLATE,
      NO_COLOR: "1",
    },
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  let summary = { passed: 0, failed: 0, ignored: 0 };
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  const consume = (line: string) => {
    console.log(line);
    const m = line.match(
      /^(?:ok|FAILED) \| (\d+) passed(?: \(\d+ steps?\))? \| (\d+) failed(?: \(\d+ steps?\))?(?: \| (\d+) ignored)?/,
    );
    if (m) summary = { passed: Number(m[1]), failed: Number(m[2]), ignored: Number(m[3] ?? 0) };
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let nl;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      consume(buffer.slice(0, nl));
      buffer = buffer.slice(nl + 1);
    }
  }
  if (buffer) consume(buffer);
  const { code } = await child.status;
  return { code, ...summary };
}

async function test(args: string[]): Promise<number> {
  const startedCluster = await prepare();
  try {
    await buildTestTemplate();
    const result = await runDenoTests(args.length ? args : ["tests/"]);
    // The plain closing line CI reads; ignored tests are reported, never counted as passed.
    const skipped = result.ignored ? `, ${result.ignored} skipped` : "";
    console.log(`\ntests: ${result.passed} passed, ${result.failed} failed${skipped}`);
    return result.code;
  } finally {
    if (startedCluster) await stopCluster();
  }
}

async function main(): Promise<number> {
  const [command, ...rest] = Deno.args;
  switch (command) {
    case "start":
      await start();
      return 0;
    case "test":
      return await test(rest);
    case "setup":
      await prepare();
      return 0;
    case "stop":
      await stopCluster();
      return 0;
    case "reset":
      // Like `supabase db reset`: a fresh cluster; the next start applies migrations and seed.
      await removeCluster();
      say("cluster removed; `npm start` recreates it with migrations and seed");
      return 0;
    default:
      console.error(
        "usage: deno run -A local/main.ts start | test [deno test args] | setup | stop | reset",
      );
      return 2;
  }
}

if (import.meta.main) {
  try {
    Deno.exit(await main());
  } catch (err) {
    if (err instanceof CommandError || err instanceof MigrationError) {
      console.error(`autoembed: ${(err as Error).message}`);
      Deno.exit(1);
    }
    throw err;
  }
}
