// The project-local PostgreSQL 15 cluster: its own data dir, socket dir and
// port, run by an unprivileged OS user (Postgres refuses root), never touching
// any other cluster on the machine. Bootstrap gives it what a Supabase
// database has before any migration: roles, an `extensions` schema on the
// search_path, and Vault.
import { createHash } from "node:crypto";
import { join } from "node:path";
import {
  databaseUrl,
  DB_HOST,
  DB_PASSWORD,
  DB_PORT,
  DB_USER,
  PG_BIN,
  PG_OS_USER,
  ROOT,
  STACK_DIR,
} from "./config.ts";
import { capture, CommandError, fileExists, freePort, isRoot, run } from "./proc.ts";
import { withSql } from "./sql.ts";

export interface ClusterPaths {
  base: string;
  data: string;
  socket: string;
  log: string;
}

/** Runs a command as the cluster's OS user (directly when we are not root). */
async function runAsOwner(cmd: string, args: string[], options: Deno.CommandOptions = {}) {
  if (!isRoot()) return await run(cmd, args, options);
  return await run("runuser", ["-u", PG_OS_USER, "--", cmd, ...args], options);
}

async function ownerCanUse(dir: string): Promise<boolean> {
  if (!isRoot()) return true;
  const probe = await capture("runuser", [
    "-u",
    PG_OS_USER,
    "--",
    "test",
    "-w",
    dir,
    "-a",
    "-x",
    dir,
  ]);
  return probe.code === 0;
}

/**
 * The cluster lives under the git-ignored `.local-stack/` when the OS user can
 * reach it. A checkout under a private home directory (e.g. /root) is not
 * reachable by an unprivileged user, so then the cluster goes to a folder in
 * /var/tmp named after the checkout, and `.local-stack/pg` records where.
 */
export async function clusterPaths(): Promise<ClusterPaths> {
  await Deno.mkdir(STACK_DIR, { recursive: true });
  let base = join(STACK_DIR, "pg");
  await Deno.mkdir(base, { recursive: true });
  if (isRoot()) await run("chown", [PG_OS_USER, base]);
  if (!(await ownerCanUse(base))) {
    const tag = createHash("sha256").update(ROOT).digest("hex").slice(0, 12);
    base = join("/var/tmp", `autoembed-${tag}`);
    await Deno.mkdir(base, { recursive: true });
    await run("chown", [PG_OS_USER, base]);
    await Deno.writeTextFile(join(STACK_DIR, "pg-location"), `${base}\n`);
  }
  return {
    base,
    data: join(base, "data"),
    socket: join(base, "run"),
    log: join(base, "postgres.log"),
  };
}

/** Settings the stack needs on top of initdb's defaults. */
function clusterConf(paths: ClusterPaths, port = DB_PORT): string {
  return [
    "# Written by local/cluster.ts on every start; edit there.",
    `listen_addresses = '${DB_HOST}'`,
    `port = ${port}`,
    `unix_socket_directories = '${paths.socket}'`,
    "shared_preload_libraries = 'pg_cron'",
    "cron.database_name = 'postgres'",
    // pg_cron runs jobs in background workers, so it needs no password to reach the server.
    "cron.use_background_workers = on",
    "max_worker_processes = 32",
    "max_connections = 300",
    // Lets tests and benchmarks count trigger calls in pg_stat_user_functions.
    "track_functions = 'pl'",
    `search_path = '"$user", public, extensions'`,
    "timezone = 'UTC'",
    "log_timezone = 'UTC'",
    // Logical capture (supabase/schemas/35_capture.sql): the worker follows
    // a replication slot, one per database (tests make many). A slot nobody
    // follows keeps write-ahead log; past this much the server invalidates
    // it rather than fill the disk (the worker then makes a new one and
    // sweeps its tables).
    "wal_level = logical",
    "max_replication_slots = 64",
    "max_wal_senders = 64",
    "max_slot_wal_keep_size = '4GB'",
    // A disposable development cluster: durability traded for speed.
    "fsync = off",
    "full_page_writes = off",
    "",
  ].join("\n");
}

/** Creates the cluster if it does not exist yet. Returns true when it did. */
export async function initCluster(paths: ClusterPaths): Promise<boolean> {
  if (await fileExists(join(paths.data, "PG_VERSION"))) return false;
  await Deno.mkdir(paths.socket, { recursive: true });
  const pwfile = join(paths.base, "pwfile");
  await Deno.writeTextFile(pwfile, `${DB_PASSWORD}\n`);
  if (isRoot()) await run("chown", ["-R", PG_OS_USER, paths.base]);
  try {
    await runAsOwner(join(PG_BIN, "initdb"), [
      "-D",
      paths.data,
      "-U",
      DB_USER,
      `--pwfile=${pwfile}`,
      "--auth-local=trust",
      "--auth-host=scram-sha-256",
      "--encoding=UTF8",
      "--locale=C.UTF-8",
    ]);
  } finally {
    await Deno.remove(pwfile).catch(() => {});
  }
  return true;
}

async function pgCtl(paths: ClusterPaths, args: string[]): Promise<string> {
  return await runAsOwner(join(PG_BIN, "pg_ctl"), ["-D", paths.data, ...args]);
}

export async function isRunning(paths: ClusterPaths): Promise<boolean> {
  if (!(await fileExists(join(paths.data, "PG_VERSION")))) return false;
  const args = ["-D", paths.data, "status"];
  const result = isRoot()
    ? await capture("runuser", ["-u", PG_OS_USER, "--", join(PG_BIN, "pg_ctl"), ...args])
    : await capture(join(PG_BIN, "pg_ctl"), args);
  return result.code === 0;
}

async function portInUse(port: number): Promise<boolean> {
  try {
    const conn = await Deno.connect({ hostname: DB_HOST, port });
    conn.close();
    return true;
  } catch {
    return false;
  }
}

/**
 * Starts the cluster (creating it first if needed). Returns whether this call
 * started it, so callers stop only what they started.
 */
export async function startCluster(log: (line: string) => void = () => {}): Promise<boolean> {
  const paths = await clusterPaths();
  if (await initCluster(paths)) log(`created cluster in ${paths.data}`);
  await Deno.mkdir(paths.socket, { recursive: true });
  const ownConf = join(paths.data, "autoembed.conf");
  const before = await Deno.readTextFile(ownConf).catch(() => "");
  await Deno.writeTextFile(ownConf, clusterConf(paths));
  const conf = join(paths.data, "postgresql.conf");
  const text = await Deno.readTextFile(conf);
  if (!text.includes("include_if_exists = 'autoembed.conf'")) {
    await Deno.writeTextFile(conf, `${text}\ninclude_if_exists = 'autoembed.conf'\n`);
  }
  if (isRoot()) {
    await run("chown", ["-R", PG_OS_USER, paths.socket, join(paths.data, "autoembed.conf")]);
  }
  if (await isRunning(paths)) {
    // Running with settings of an older checkout (wal_level needs a restart).
    if (before !== "" && before !== clusterConf(paths)) {
      log("the cluster's settings changed: restarting it");
      await pgCtl(paths, ["-w", "-t", "60", "-m", "fast", "-l", paths.log, "restart"]);
    }
    return false;
  }
  if (await portInUse(DB_PORT)) {
    throw new CommandError(
      `port ${DB_PORT} on ${DB_HOST} is taken by another process.\n` +
        `  Stop it, or choose another port with AUTOEMBED_DB_PORT=<port>.`,
    );
  }
  try {
    await pgCtl(paths, ["-w", "-t", "60", "-l", paths.log, "start"]);
  } catch (err) {
    const tail = await Deno.readTextFile(paths.log).then((t) =>
      t.trim().split("\n").slice(-10).join("\n")
    )
      .catch(() => "");
    throw new CommandError(`PostgreSQL did not start: ${(err as Error).message}\n${tail}`);
  }
  return true;
}

export async function stopCluster(mode: "fast" | "immediate" = "fast"): Promise<void> {
  const paths = await clusterPaths();
  if (!(await isRunning(paths))) return;
  await pgCtl(paths, ["-w", "-t", "60", "-m", mode, "stop"]);
}

/** Stops the cluster and deletes its data directory (nothing outside it). */
export async function removeCluster(): Promise<void> {
  await stopCluster();
  const paths = await clusterPaths();
  await Deno.remove(paths.data, { recursive: true }).catch((err) => {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  });
}

/** Per-database part of the bootstrap; run in template1 (so every new database has it) and postgres. */
const DATABASE_BOOTSTRAP = `
  create schema if not exists extensions;
  grant usage on schema extensions to anon, authenticated, service_role;
  alter default privileges in schema extensions grant execute on functions to anon, authenticated, service_role;
  grant usage, create on schema public to anon, authenticated, service_role;
  alter default privileges for role postgres in schema public grant all on tables to anon, authenticated, service_role;
  alter default privileges for role postgres in schema public grant all on sequences to anon, authenticated, service_role;
  alter default privileges for role postgres in schema public grant all on functions to anon, authenticated, service_role;
  create extension if not exists supabase_vault;
  create schema if not exists auth;
  grant usage on schema auth to anon, authenticated, service_role;
  do $bootstrap$
  begin
    -- Supabase's auth.uid(), auth.role() and auth.jwt() for RLS policies: the
    -- claims PostgREST (and the search function) put in request.jwt.claims,
    -- or the older per-claim settings. Created only where missing.
    if pg_catalog.to_regprocedure('auth.uid()') is null then
      create function auth.uid() returns uuid language sql stable as $$
        select coalesce(
          nullif(current_setting('request.jwt.claim.sub', true), ''),
          nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
        )::uuid
      $$;
    end if;
    if pg_catalog.to_regprocedure('auth.role()') is null then
      create function auth.role() returns text language sql stable as $$
        select coalesce(
          nullif(current_setting('request.jwt.claim.role', true), ''),
          nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'
        )::text
      $$;
    end if;
    if pg_catalog.to_regprocedure('auth.jwt()') is null then
      create function auth.jwt() returns jsonb language sql stable as $$
        select coalesce(
          nullif(current_setting('request.jwt.claim', true), ''),
          nullif(current_setting('request.jwt.claims', true), '')
        )::jsonb
      $$;
    end if;
  end
  $bootstrap$;
  grant execute on function auth.uid(), auth.role(), auth.jwt() to anon, authenticated, service_role;
`;

/** Roles and schemas a Supabase database has before any migration runs. Idempotent. */
export async function bootstrapCluster(
  url: (database: string) => string = databaseUrl,
): Promise<void> {
  await withSql(url("postgres"), async (admin) => {
    await admin.unsafe(`
      do $$ begin create role anon nologin noinherit; exception when duplicate_object then null; end $$;
      do $$ begin create role authenticated nologin noinherit; exception when duplicate_object then null; end $$;
      do $$ begin create role service_role nologin noinherit bypassrls; exception when duplicate_object then null; end $$;
      grant anon, authenticated, service_role to postgres;
      -- The role PostgREST and the functions gateway log in as, switching to
      -- the caller's role; by itself it may do nothing. No local component
      -- logs in as it: here it exists so that privileges are checked against
      -- the same roles as on Supabase.
      do $$ begin create role authenticator nologin noinherit; exception when duplicate_object then null; end $$;
      grant anon, authenticated, service_role to authenticator;
    `).simple();
    await admin.unsafe(DATABASE_BOOTSTRAP).simple();
  });
  await withSql(url("template1"), (template) => template.unsafe(DATABASE_BOOTSTRAP).simple());
}

/** A throw-away cluster on its own port, for tests that restart or kill Postgres. */
export interface EphemeralCluster {
  port: number;
  url(database?: string): string;
  restart(mode?: "fast" | "immediate"): Promise<void>;
  stop(): Promise<void>;
  /** Stops the server and deletes its files. */
  destroy(): Promise<void>;
}

/**
 * Creates and starts a bootstrapped cluster in a temporary folder on a free
 * port (the same roles, schemas and shims as the main one, without pg_cron),
 * so that restarting it disturbs nothing else.
 */
export async function startEphemeralCluster(): Promise<EphemeralCluster> {
  const port = freePort(DB_HOST);
  const base = await Deno.makeTempDir({ prefix: "autoembed-cluster-" });
  const paths: ClusterPaths = {
    base,
    data: join(base, "data"),
    socket: join(base, "run"),
    log: join(base, "postgres.log"),
  };
  if (isRoot()) await run("chown", [PG_OS_USER, base]);
  await initCluster(paths);
  const conf = clusterConf(paths, port).replace(/^shared_preload_libraries.*$/m, "")
    .replace(/^cron\..*$/gm, "");
  await Deno.writeTextFile(join(paths.data, "postgresql.auto.conf"), conf);
  if (isRoot()) await run("chown", ["-R", PG_OS_USER, base]);
  const ctl = (args: string[]) => pgCtl(paths, ["-w", "-t", "60", "-l", paths.log, ...args]);
  await ctl(["start"]);
  const url = (database = "postgres") =>
    `postgresql://${DB_USER}:${DB_PASSWORD}@${DB_HOST}:${port}/${database}`;
  await bootstrapCluster(url);
  return {
    port,
    url,
    restart: async (mode = "fast") => void await ctl(["-m", mode, "restart"]),
    stop: async () => void await ctl(["-m", "fast", "stop"]),
    destroy: async () => {
      if (await isRunning(paths)) await ctl(["-m", "immediate", "stop"]);
      await Deno.remove(base, { recursive: true });
    },
  };
}

if (import.meta.main) {
  const [command] = Deno.args;
  if (command === "stop") await stopCluster();
  else {
    const started = await startCluster(console.log);
    await bootstrapCluster();
    console.log(started ? "cluster started" : "cluster already running");
  }
}
