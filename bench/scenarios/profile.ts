// Profile: where Postgres spends its time while the worker drains a backlog,
// from pg_stat_statements. The local cluster does not preload it, so this
// runs on a throw-away cluster (startEphemeralCluster) restarted with it.
import { join } from "node:path";
import { startEphemeralCluster } from "../../local/cluster.ts";
import { databaseUrl } from "../../local/config.ts";
import { fmt, Section } from "../report.ts";
import {
  attach,
  type BenchContext,
  buildTemplate,
  cloneDb,
  connect,
  insertRows,
  providerEnv,
  startWorker,
  useServer,
} from "../stack.ts";
import { BATCH_SIZE } from "./drain.ts";

/** Names for the statements the core and the worker send, by what their text starts with. */
const LABELS: [RegExp, string][] = [
  [/^with applying as/, "core: write embeddings + fingerprints + cache (one per batch)"],
  [/^select r\.\S+::text as row_id/, "core: load rows (text, hash, fingerprint, cache hit)"],
  [
    /^select msg_id, read_ct, message::text as message\s+from util\._read_jobs/,
    "worker: claim (util._read_jobs)",
  ],
  [
    /^select job_id, row_id, dead_lettered from util\._settle_batch/,
    "core: settle (util._settle_batch)",
  ],
  [/^select \* from util\._target_config/, "core: targets"],
];

function label(query: string): string {
  for (const [pattern, name] of LABELS) if (pattern.test(query)) return name;
  return `\`${query.slice(0, 60).replaceAll("|", "\\|")}\``;
}

export async function profileScenario(ctx: BenchContext): Promise<Section> {
  const rows = ctx.quick ? 2_000 : 10_000;
  ctx.log(`profile: pg_stat_statements during a ${rows}-row drain (worker -c 4)`);
  const cluster = await startEphemeralCluster();
  const section = new Section("Profile: Postgres time per statement");
  try {
    const admin = connect(cluster.url("postgres"), 1);
    const [{ setting }] =
      await admin`select setting from pg_settings where name = 'data_directory'`;
    await admin.end();
    const conf = join(setting, "postgresql.auto.conf");
    await Deno.writeTextFile(
      conf,
      `${await Deno.readTextFile(conf)}\nshared_preload_libraries = 'pg_stat_statements'\n`,
    );
    await cluster.restart();
    useServer(cluster.url);
    await buildTemplate();
    const db = await cloneDb("profile");
    try {
      await db.sql`create extension pg_stat_statements`;
      await attach(db.sql, false);
      await insertRows(db.sql, rows, "profile");
      await db.sql`select pg_stat_statements_reset()`;
      const worker = startWorker(
        ["--once", "-c", "4", "--batch-size", String(BATCH_SIZE)],
        { DATABASE_URL: db.url, ...providerEnv(ctx.fake) },
      );
      const { code, seconds } = await worker.finished();
      if (code !== 0) throw new Error(`worker exited ${code}`);
      const stats = await db.sql`
        select calls::int, total_exec_time as ms,
               regexp_replace(query, '[[:space:]]+', ' ', 'g') as query
          from pg_stat_statements
         where toplevel and query not like '%pg_stat_statements%'
         order by total_exec_time desc limit 8`;
      const total = stats.reduce((sum, s) => sum + s.ms, 0);
      const batches = Math.ceil(rows / BATCH_SIZE);
      section.text(`
${rows.toLocaleString("en-US")} rows drained by \`worker --once -c 4\` (${
        fmt(seconds)
      } s wall including
start-up) on a throw-away cluster with pg_stat_statements (top-level statements; execution time
only, planning excluded). ${batches} batches of ${BATCH_SIZE}.`);
      section.table(
        ["statement", "calls", "total ms", "ms per call", "share"],
        stats.map((s) => [
          label(s.query.trim()),
          s.calls,
          fmt(s.ms),
          fmt(s.ms / s.calls),
          `${fmt((s.ms / total) * 100)}%`,
        ]),
      );
      for (const s of stats) {
        ctx.log(`  ${fmt(s.ms)} ms / ${s.calls} calls: ${label(s.query.trim())}`);
      }
    } finally {
      await db.drop();
    }
  } finally {
    useServer(databaseUrl);
    await cluster.destroy();
  }
  return section;
}
