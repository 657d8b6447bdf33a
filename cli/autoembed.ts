// Operator entry point: `autoembed <command> [options]` (npm's bin, or
// `deno task autoembed` in a clone).
// worker | status | backfill <table> | reembed <table> | retry-failed [<table>]
// | cdc drop | init [DIR] | install --into <project> | upgrade --into <project> | --version
// A user mistake gives one line on stderr and exit code 2, never a stack trace.
import postgres from "postgres";
import packageJson from "../package.json" with { type: "json" };
import { parsePositiveInt } from "../supabase/functions/_shared/env.ts";
import { coreSettings, SettingsError } from "../supabase/functions/_shared/settings.ts";
import { init, initReport } from "./init.ts";
import { install, InstallError, type Mode, report } from "./install.ts";
import { WorkerMetrics } from "./metrics.ts";
import { runWorker } from "./worker.ts";
import { queuedRows } from "../supabase/functions/_shared/sql/queue.ts";

export class UsageError extends Error {}

const USAGE = `usage: autoembed <command> [options]      (from a clone: deno task autoembed ...)

commands:
  worker                 process embedding jobs until stopped (Ctrl-C / SIGTERM)
  status                 per-table embedding status, and tables lately dropped or renamed [--json]
  backfill <table>       enqueue rows missing an embedding [--lane batch|auto|online]
  reembed <table>        recheck a table, or move it to a new model [--model M] [--dimensions D]
                         (built beside the live column, switched when complete; --cancel stops it;
                         --lane batch|auto|online: through the provider's batch API at half price)
  retry-failed [<table>] put dead-lettered jobs back on the queue
  cdc drop               drop logical capture's replication slot and publication (a slot nobody
                         follows keeps write-ahead log); refuses while logical targets remain
                         or a worker follows it, unless --force
  init [DIR]             a new Supabase project in DIR (default: here) with autoembed in it:
                         config.toml, a commented seed.sql, and what install copies
  install --into DIR     copy the migrations, the embed function and its config entry into
                         the Supabase project DIR; refuses (exit 2) if any file there differs
  upgrade --into DIR     add new migrations; replace function files autoembed installed and
                         nobody edited since; refuses (exit 2) on any other difference

options (each also from the environment variable shown):
      --version            print autoembed's version
  -d, --db-url URL         database URL                     DATABASE_URL
      --column NAME        embedding column (default embedding)
worker options:
      --once               drain what is queued, then exit 0
  -c, --concurrency N      batches in parallel (default 1)   AUTOEMBED_CONCURRENCY
      --poll-interval T    fallback poll, e.g. 5s, 1m, 900 (seconds when bare; default 5s)
                                                            AUTOEMBED_POLL_INTERVAL
      --batch-size N       jobs per batch (default 100)      AUTOEMBED_BATCH_SIZE
      --table T            only this table (repeatable)      AUTOEMBED_TABLES (comma-separated)
      --visibility-timeout T  how long a claimed batch stays hidden (default 120s)
      --metrics-port N     serve Prometheus metrics at http://HOST:N/metrics  AUTOEMBED_METRICS_PORT
      --metrics-host H     the address they are served on (default 127.0.0.1) AUTOEMBED_METRICS_HOST
      --slot NAME          the replication slot logical capture follows (default: the setting
                           capture_slot, autoembed); needs a direct connection, not a pooler
                                                            AUTOEMBED_SLOT
      --no-capture         do not follow the slot (logical targets then need another worker)
status options:
      --exact              count by scanning every attached table (slow on large tables; also
                           repairs the kept counts) instead of the figures the pipeline keeps
provider settings come from the environment as for the embed function:
  OPENAI_API_KEY, OPENAI_BASE_URL, EMBEDDING_TIMEOUT_MS, EMBEDDING_TRUNCATE`;

/** Parses `5s`, `1m`, `250ms`, or a bare number of seconds (as pgai's worker does); returns ms. */
export function parseDuration(text: string, name: string): number {
  const m = text.trim().match(/^(\d+(?:\.\d+)?)(ms|s|m|h)?$/);
  if (!m) throw new UsageError(`${name}: "${text}" is not a duration (try 5s, 1m, 900)`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] ?? "s"]!;
  return Math.round(Number(m[1]) * unit);
}

function positiveInt(text: string, name: string): number {
  const value = parsePositiveInt(text);
  if (value === undefined) {
    throw new UsageError(`${name}: "${text}" is not a positive whole number`);
  }
  return value;
}

/** A port: a whole number from 0 (any free port) to 65535. */
function nonNegativeInt(text: string, name: string): number {
  const value = /^\d+$/.test(text.trim()) ? Number(text.trim()) : NaN;
  if (!Number.isSafeInteger(value) || value > 65535) {
    throw new UsageError(`${name}: "${text}" is not a port (0 to 65535)`);
  }
  return value;
}

export interface ParsedArgs {
  command: string;
  positional: string[];
  options: Map<string, string[]>;
}

const VALUE_OPTIONS = new Map([
  ["-d", "db-url"],
  ["--db-url", "db-url"],
  ["-c", "concurrency"],
  ["--concurrency", "concurrency"],
  ["--poll-interval", "poll-interval"],
  ["--batch-size", "batch-size"],
  ["--table", "table"],
  ["--model", "model"],
  ["--dimensions", "dimensions"],
  ["--lane", "lane"],
  ["--column", "column"],
  ["--visibility-timeout", "visibility-timeout"],
  ["--into", "into"],
  ["--metrics-port", "metrics-port"],
  ["--metrics-host", "metrics-host"],
  ["--slot", "slot"],
]);
const FLAG_OPTIONS = new Map([
  ["--once", "once"],
  ["--json", "json"],
  ["--cancel", "cancel"],
  ["--exact", "exact"],
  ["--no-capture", "no-capture"],
  ["--force", "force"],
  ["-h", "help"],
  ["--help", "help"],
  ["--version", "version"],
]);

export function parseArgs(argv: string[]): ParsedArgs {
  const options = new Map<string, string[]>();
  const positional: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    let inline: string | undefined;
    if (arg.startsWith("--") && arg.includes("=")) {
      [arg, inline] = [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)];
    }
    if (VALUE_OPTIONS.has(arg)) {
      const value = inline ?? argv[++i];
      if (value === undefined) throw new UsageError(`${arg} needs a value`);
      const key = VALUE_OPTIONS.get(arg)!;
      options.set(key, [...(options.get(key) ?? []), value]);
    } else if (FLAG_OPTIONS.has(arg)) {
      options.set(FLAG_OPTIONS.get(arg)!, ["true"]);
    } else if (arg.startsWith("-")) {
      throw new UsageError(`unknown option ${arg} (see --help)`);
    } else {
      positional.push(arg);
    }
  }
  return { command: positional.shift() ?? "", positional, options };
}

function dbUrlOf(args: ParsedArgs): string {
  const url = args.options.get("db-url")?.at(-1) ?? Deno.env.get("DATABASE_URL");
  if (!url) {
    throw new UsageError("no database: pass -d/--db-url postgresql://... or set DATABASE_URL");
  }
  if (!/^postgres(ql)?:\/\//.test(url)) {
    throw new UsageError(`--db-url must start with postgresql://, got "${url.split(":")[0]}:..."`);
  }
  return url;
}

async function withDb<T>(url: string, fn: (sql: postgres.Sql) => Promise<T>): Promise<T> {
  const sql = postgres(url, { max: 1, onnotice: () => {}, connect_timeout: 10 });
  try {
    try {
      await sql`select 1`;
    } catch (err) {
      throw new UsageError(
        `cannot connect to the database: ${(err as Error).message} (check --db-url / DATABASE_URL)`,
      );
    }
    const [row] = await sql`select to_regclass('util.embedding_targets') is not null as installed`;
    if (!row.installed) {
      throw new UsageError(
        "autoembed is not installed in this database: apply supabase/migrations first (supabase db push)",
      );
    }
    return await fn(sql);
  } finally {
    await sql.end({ timeout: 5 });
  }
}

/** Resolves a user-given table name to a regclass text, or a UsageError naming the attached tables. */
async function resolveTable(sql: postgres.Sql, name: string, column: string): Promise<string> {
  let row;
  try {
    [row] = await sql`
      select format('%I.%I', n.nspname, c.relname) as table_sql
        from util.embedding_targets t
        join pg_class c on c.oid = t.table_oid
        join pg_namespace n on n.oid = c.relnamespace
       where t.table_oid = to_regclass(${name}) and t.embedding_column = ${column}`;
  } catch (err) {
    if ((err as Error).name !== "PostgresError") throw err;
    row = undefined; // not even a valid table name
  }
  if (row) return row.table_sql;
  const attached = await sql`
    select format('%I.%I', n.nspname, c.relname) as t
      from util.embedding_targets e
      join pg_class c on c.oid = e.table_oid
      join pg_namespace n on n.oid = c.relnamespace
     order by 1`;
  const list = attached.map((r) => r.t).join(", ") || "none";
  throw new UsageError(
    `table "${name}" (column ${column}) is not attached to autoembed (attached: ${list})`,
  );
}

function formatTable(rows: Record<string, unknown>[]): string {
  if (rows.length === 0) {
    return "no tables attached (select util.enable_embeddings(...) to attach one)";
  }
  const columns = Object.keys(rows[0]);
  const cells = rows.map((r) =>
    columns.map((c) => {
      const v = r[c];
      return v === null || v === undefined
        ? ""
        : typeof v === "object"
        ? JSON.stringify(v)
        : String(v);
    })
  );
  const widths = columns.map((c, i) => Math.max(c.length, ...cells.map((row) => row[i].length)));
  const line = (values: string[]) => values.map((v, i) => v.padEnd(widths[i])).join("  ").trimEnd();
  return [line(columns), line(widths.map((w) => "-".repeat(w))), ...cells.map(line)].join("\n");
}

async function status(args: ParsedArgs): Promise<number> {
  return await withDb(dbUrlOf(args), async (sql) => {
    // The kept figures (cheap: dashboards poll them), or with --exact a scan of every table.
    const source = args.options.has("exact")
      ? sql`util.embedding_status_exact()`
      : sql`util.embedding_status`;
    const rows = await sql`
      select schema_name || '.' || table_name as table, embedding_column as column, model,
             case when total_rows_estimated then '~' else '' end || coalesce(total_rows::text, '?') as rows,
             embedded, missing, empty, stale, queued, in_flight,
             coalesce(extract(epoch from oldest_queued_age)::int || 's', '') as oldest_queued,
             coalesce(round(extract(epoch from fresh_p50)::numeric, 1) || 's', '') as fresh_p50,
             coalesce(round(extract(epoch from fresh_p95)::numeric, 1) || 's', '') as fresh_p95,
             rows_per_minute as per_minute,
             coalesce(ceil(extract(epoch from eta))::int || 's', '') as eta,
             dead_lettered, models,
             case when batches_open > 0 or parked > 0
                  then batches_open || ' open, ' || batch_texts_done || '/' || batch_texts || ' texts, ' ||
                       parked || ' rows parked'
                  else '' end as batches,
             coalesce(batch_saved_usd::text, '') as batch_saved_usd,
             case when capture = 'logical'
                  then 'logical: slot ' || capture_slot ||
                       coalesce(', lag ' || pg_size_pretty(capture_lag_bytes) || ' / ' || capture_lag_seconds || 's', ', no slot yet') ||
                       case when capture_attached then ', followed' else ', no worker follows it' end
                  else 'triggers' end as capture,
             case when next_model is not null
                  then next_model || '/' || next_dimensions || ' ' || next_embedded || '/' || total_rows
                       || ' ' || next_state
                  else '' end as next_model,
             last_error
        from ${source}`;
    const plain = rows.map((r) => ({ ...r }));
    // What the provider calls cost, today and over the last 30 days (util.embedding_usage).
    const usage = await sql`
      select schema_name || '.' || table_name as table, embedding_column as column, model,
             sum(online_tokens) filter (where day = (now() at time zone 'utc')::date) as tokens_today,
             sum(cost_usd) filter (where day = (now() at time zone 'utc')::date) as usd_today,
             sum(online_tokens) as tokens_30d, sum(batch_tokens) as batch_tokens_30d,
             sum(reused_tokens) as reused_tokens_30d, sum(cost_usd) as usd_30d,
             sum(saved_usd) as saved_usd_30d, sum(batch_saved_usd) as batch_saved_usd_30d
        from util.embedding_usage
       where day > (now() at time zone 'utc')::date - 30
       group by 1, 2, 3 order by 1, 2, 3`;
    const plainUsage = usage.map((r) => ({ ...r }));
    if (args.options.has("json")) {
      // Each target's row as before, with its usage of the last 30 days (per model).
      const withUsage = plain.map((r) => ({
        ...r,
        usage: plainUsage.filter((u) => u.table === r.table && u.column === r.column),
      }));
      console.log(JSON.stringify(withUsage, null, 2));
      return 0;
    }
    console.log(formatTable(plain));
    if (plainUsage.length) {
      console.log(
        `\nusage (tokens by the model's tokenizer; US dollars at the registry's prices):`,
      );
      console.log(formatTable(plainUsage));
    }
    // What happened to attached tables lately (util.embedding_target_events):
    // a table dropped or renamed is no row above, so it is said here.
    const events = await sql<{ line: string }[]>`
      select to_char(e.happened_at, 'YYYY-MM-DD HH24:MI:SS') || '  ' ||
             format('%I.%I (%s)', e.schema_name, e.table_name, e.embedding_column) || '  ' ||
             e.event || ': ' || e.detail ||
             case when e.event = 'retired'
                  then format(', %s queued and %s dead-lettered row(s) dropped', e.jobs_dropped,
                              e.dead_letters_dropped)
                  else '' end ||
             ' (noticed by ' || e.noticed_by || ')' as line
        from util.embedding_target_events e
       where e.happened_at > now() - interval '7 days'
       order by e.id desc limit 20`;
    if (events.length) {
      console.log(`\nrecent changes to attached tables (util.embedding_target_events):`);
      for (const e of events) console.log(`  ${e.line}`);
    }
    return 0;
  });
}

async function enqueue(args: ParsedArgs, command: string): Promise<number> {
  const column = args.options.get("column")?.at(-1) ?? "embedding";
  return await withDb(dbUrlOf(args), async (sql) => {
    if (command === "retry-failed") {
      const table = args.positional[0] ? await resolveTable(sql, args.positional[0], column) : null;
      const [row] = await sql`select util.retry_failed(${table}::regclass) as n`;
      console.log(`re-queued ${row.n} dead-lettered job(s)${table ? ` of ${table}` : ""}`);
      return 0;
    }
    const name = args.positional[0];
    if (!name) {
      throw new UsageError(
        `${command} needs a table, e.g. autoembed ${command} documents`,
      );
    }
    const table = await resolveTable(sql, name, column);
    if (command === "reembed" && args.options.has("cancel")) {
      const [row] =
        await sql`select util.cancel_reembed(${table}::regclass, ${column}) as cancelled`;
      console.log(
        row.cancelled ? `cancelled the model change of ${table}` : `${table} has no model change`,
      );
      return 0;
    }
    const model = command === "reembed" ? args.options.get("model")?.at(-1) ?? null : null;
    const dimsText = command === "reembed" ? args.options.get("dimensions")?.at(-1) : undefined;
    const dims = dimsText ? positiveInt(dimsText, "--dimensions") : null;
    const lane = args.options.get("lane")?.at(-1) ?? null;
    try {
      const [row] = await sql`
        select util.reembed(${table}::regclass, ${column}, ${model}, ${dims}, lane => ${lane}) as n`;
      console.log(
        `enqueued ${row.n} row(s) of ${table}` +
          (model ? ` for model ${model}` : dims ? ` for ${dims} dimensions` : "") +
          " (the rest follow in slices; see autoembed status)",
      );
    } catch (err) {
      throw asUsageError(err);
    }
    return 0;
  });
}

/** A statement the database refused (a user's mistake: its message and hint) as a UsageError. */
function asUsageError(err: unknown): unknown {
  const e = err as postgres.PostgresError;
  return e?.name === "PostgresError"
    ? new UsageError(`${e.message}${e.hint ? ` (${e.hint})` : ""}`)
    : err;
}

async function worker(args: ParsedArgs): Promise<number> {
  const env = (name: string) => Deno.env.get(name);
  const opt = (key: string, envName: string) => args.options.get(key)?.at(-1) ?? env(envName);
  const dbUrl = dbUrlOf(args);
  let settings;
  try {
    settings = coreSettings(env);
  } catch (err) {
    if (err instanceof SettingsError) throw new UsageError(err.message);
    throw err;
  }
  const tables = args.options.get("table") ??
    (env("AUTOEMBED_TABLES")?.split(",").map((s) => s.trim()).filter(Boolean) ?? []);
  const options = {
    dbUrl,
    once: args.options.has("once"),
    concurrency: positiveInt(opt("concurrency", "AUTOEMBED_CONCURRENCY") ?? "1", "--concurrency"),
    pollIntervalMs: parseDuration(
      opt("poll-interval", "AUTOEMBED_POLL_INTERVAL") ?? "5s",
      "--poll-interval",
    ),
    batchSize: positiveInt(opt("batch-size", "AUTOEMBED_BATCH_SIZE") ?? "100", "--batch-size"),
    visibilitySeconds: Math.ceil(
      parseDuration(
        args.options.get("visibility-timeout")?.at(-1) ?? "120s",
        "--visibility-timeout",
      ) / 1000,
    ),
    tables,
    settings,
    capture: !args.options.has("no-capture"),
    slot: opt("slot", "AUTOEMBED_SLOT"),
  };
  // Fail fast on a bad URL or a database without autoembed, and on unknown tables.
  await withDb(dbUrl, async (sql) => {
    for (const t of tables) {
      await resolveTable(sql, t, "embedding").catch(async (err) => {
        const [row] =
          await sql`select count(*)::int as n from util.embedding_targets where table_oid = to_regclass(${t})`;
        if (row.n === 0) throw err;
      });
    }
  });

  const stop = new AbortController();
  const metricsPort = opt("metrics-port", "AUTOEMBED_METRICS_PORT");
  const metrics = metricsPort ? new WorkerMetrics() : undefined;
  // The scrapes' own connection: the worker's pool is untouched.
  const scraper = metrics ? postgres(dbUrl, { max: 1, onnotice: () => {} }) : null;
  const metricsServer = metrics && scraper
    ? metrics.serve(() => scraper, {
      port: nonNegativeInt(metricsPort!, "--metrics-port"),
      hostname: opt("metrics-host", "AUTOEMBED_METRICS_HOST") ?? "127.0.0.1",
      signal: stop.signal,
    })
    : null;
  if (metricsServer) {
    const { hostname, port } = metricsServer.addr;
    console.error(JSON.stringify({ event: "metrics", url: `http://${hostname}:${port}/metrics` }));
  }
  const onSignal = () => stop.abort();
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  const tty = Deno.stdout.isTerminal();
  const startedAt = Date.now();
  let done = 0;
  let chunks = 0;
  let backlog: number | null = null;
  let idle = false;
  // On a terminal: a live line with the backlog, refreshed once a second by a
  // count of the queue (one cheap query; the worker's own pool is untouched).
  const counter = tty ? postgres(dbUrl, { max: 1, onnotice: () => {} }) : null;
  const refresh = () => {
    const line = progressLine({ done, chunks, backlog, elapsedMs: Date.now() - startedAt });
    Deno.stdout.writeSync(new TextEncoder().encode(`\r\x1b[2K${line}`));
  };
  const ticker = counter
    ? setInterval(() => {
      queuedRows(counter)
        .then((n) => (backlog = n), () => (backlog = null))
        .finally(refresh);
    }, 1000)
    : undefined;
  const result = await runWorker({
    ...options,
    metrics,
    signal: stop.signal,
    log: (line) => console.error(tty ? `\r\x1b[2K${line}` : line),
    onBatch: (e) => {
      done = e.totalCompleted;
      chunks = e.totalChunks;
      if (tty) refresh();
      else if (e.jobs > 0) {
        idle = false;
        console.log(JSON.stringify({ event: "batch", ...e }));
      } else if (!idle) {
        // Once per drained queue (and at start-up), not once per empty poll.
        idle = true;
        console.log(JSON.stringify({ event: "idle", totalCompleted: e.totalCompleted }));
      }
    },
  });
  clearInterval(ticker);
  await counter?.end({ timeout: 1 });
  if (metricsServer) {
    stop.abort();
    await metricsServer.finished;
  }
  await scraper?.end({ timeout: 1 });
  Deno.removeSignalListener("SIGINT", onSignal);
  Deno.removeSignalListener("SIGTERM", onSignal);
  if (tty) console.log();
  console.log(JSON.stringify({ event: "stopped", ...result }));
  return 0;
}

/** `cdc drop [--force]`: util.drop_capture, what it dropped on stdout. */
async function cdc(args: ParsedArgs): Promise<number> {
  const action = args.positional[0];
  if (action !== "drop") {
    throw new UsageError(`cdc needs an action: autoembed cdc drop [--force]`);
  }
  return await withDb(dbUrlOf(args), async (sql) => {
    try {
      const [{ dropped }] = await sql<{ dropped: string[] }[]>`
        select util.drop_capture(force => ${args.options.has("force")}) as dropped`;
      console.log(dropped.length ? `dropped ${dropped.join(", ")}` : "nothing to drop");
    } catch (err) {
      throw asUsageError(err);
    }
    return 0;
  });
}

async function installInto(args: ParsedArgs, mode: Mode): Promise<number> {
  const into = args.options.get("into")?.at(-1) ?? args.positional[0];
  if (!into) {
    throw new UsageError(`${mode} needs the project: autoembed ${mode} --into ../my-app`);
  }
  try {
    const { plan } = await install(mode, into);
    for (const line of report(mode, plan)) console.log(line);
    return 0;
  } catch (err) {
    if (err instanceof InstallError) throw new UsageError(err.message);
    throw err;
  }
}

/** The live progress line: rows done, backlog, rate and ETA while draining. */
export function progressLine(
  p: { done: number; chunks?: number; backlog: number | null; elapsedMs: number },
): string {
  const seconds = Math.max(p.elapsedMs / 1000, 0.001);
  const rate = p.done / seconds;
  const parts = [`done ${p.done}`];
  // Chunked targets: the chunks written so far, and their rate.
  if (p.chunks) {
    const chunkRate = p.chunks / seconds;
    parts.push(`chunks ${p.chunks} (${chunkRate.toFixed(chunkRate < 10 ? 1 : 0)}/s)`);
  }
  if (p.backlog !== null) parts.push(`backlog ${p.backlog}`);
  parts.push(`${rate.toFixed(rate < 10 ? 1 : 0)} rows/s`);
  if (p.backlog !== null && p.backlog > 0 && rate > 0) {
    const eta = Math.ceil(p.backlog / rate);
    parts.push(
      `ETA ${
        eta >= 60 ? `${Math.floor(eta / 60)}m${String(eta % 60).padStart(2, "0")}s` : `${eta}s`
      }`,
    );
  } else if (p.backlog === 0) {
    parts.push("idle, listening");
  }
  return parts.join("  ");
}

async function initProject(args: ParsedArgs): Promise<number> {
  try {
    for (const line of initReport(await init(args.positional[0] ?? "."))) console.log(line);
    return 0;
  } catch (err) {
    if (err instanceof InstallError) throw new UsageError(err.message);
    throw err;
  }
}

export async function main(argv: string[]): Promise<number> {
  const args = parseArgs(argv);
  if (args.options.has("version")) {
    console.log(packageJson.version);
    return 0;
  }
  if (args.options.has("help") || args.command === "") {
    console.log(USAGE);
    return args.command === "" && !args.options.has("help") ? 2 : 0;
  }
  switch (args.command) {
    case "worker":
      return await worker(args);
    case "status":
      return await status(args);
    case "backfill":
    case "reembed":
    case "retry-failed":
      return await enqueue(args, args.command);
    case "cdc":
      return await cdc(args);
    case "init":
      return await initProject(args);
    case "install":
    case "upgrade":
      return await installInto(args, args.command);
    default:
      throw new UsageError(
        `unknown command "${args.command}" (worker, status, backfill, reembed, retry-failed, cdc, init, install, upgrade)`,
      );
  }
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`autoembed: ${err.message}`);
      Deno.exit(2);
    }
    throw err;
  }
}
