// `npm start`: the whole stack up (cluster, migrations and seed, functions,
// pg_net dispatcher, push tick), the demo shown, and everything stopped on
// Ctrl-C or SIGTERM.
import { join } from "node:path";
import { API_PORT, API_URL, databaseUrl, LOCAL_EMBED_SECRET } from "./config.ts";
import { removeCluster, stopCluster } from "./cluster.ts";
import { chooseDefaultModel, type ModelChoice, setDefaultModel } from "./default_model.ts";
import { showDemo } from "./demo.ts";
import { FUNCTIONS_DIR, localJwt, startFunctions } from "./functions.ts";
import { applyMigrations, hasMigrationTable, recreateIfDiverged } from "./migrate.ts";
import { startNetDispatcher } from "./net_dispatcher.ts";
import { readTextIfExists, say, waitForSignal } from "./proc.ts";
import { startPushTick } from "./push_tick.ts";
import { prepareStack } from "./setup.ts";
import { withSql } from "./sql.ts";
import { surviveDatabaseDisconnects } from "../supabase/functions/_shared/postgres_guard.ts";

/** seed.sql stores the default functions URL in Vault; follow AUTOEMBED_API_PORT if it moved. */
async function pointVaultAtLocalFunctions(dbUrl: string): Promise<void> {
  await withSql(dbUrl, (sql) =>
    sql`
      select vault.update_secret(s.id, new_secret => ${API_URL})
        from vault.decrypted_secrets s
       where s.name = 'project_url' and s.decrypted_secret is distinct from ${API_URL}`);
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

export async function start(): Promise<void> {
  // The pg_net dispatcher runs in this process: a database restart must not end it.
  surviveDatabaseDisconnects((line) => say(line));
  let startedCluster = await prepareStack(say);
  const dbUrl = databaseUrl("postgres");
  await recreateIfDiverged(dbUrl, async () => {
    await removeCluster();
    startedCluster = await prepareStack(say);
  }, say);
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
