// Scenario 4, write-path overhead: what the triggers cost the application's
// writes. Single-row transactions from several clients with pgbench, and one
// bulk statement of 100,000 rows: no triggers, the Supabase guide's trigger,
// ours in its guide-style and enable_embeddings forms; on a durable cluster
// (fsync on) and on the fsync-off development cluster, in the same run.
import { installNaive } from "../naive/pipeline.ts";
import { fmt, median, Section, spread } from "../report.ts";
import { startEphemeralCluster } from "../../local/cluster.ts";
import { databaseUrl } from "../../local/config.ts";
import { capture } from "../../local/proc.ts";
import {
  type BenchContext,
  buildTemplate,
  cloneDb,
  connect,
  insertRows,
  makeDurable,
  type Sql,
  useServer,
} from "../stack.ts";

const PGBENCH = "/usr/lib/postgresql/15/bin/pgbench";
const PREFILL = 100_000;
const BULK = 100_000;
export const CLIENTS = 4;

interface Config {
  label: string;
  key: string;
  install: (sql: Sql) => Promise<unknown>;
}

const CONFIGS: Config[] = [
  { label: "no triggers", key: "none", install: () => Promise.resolve() },
  {
    label: "the Supabase guide's triggers (row level, `pgmq.send` per row; clear_column on update)",
    key: "guide",
    install: installNaive,
  },
  {
    label:
      "autoembed, guide-style row triggers (util.queue_embeddings + util.clear_column), push mode",
    key: "ours_row",
    install: async (sql) => {
      await pushMode(sql);
      await sql.unsafe(`
        create trigger embed_on_insert after insert on public.bench_docs
          for each row execute function util.queue_embeddings('bench_docs_input', 'embedding');
        create trigger embed_on_update after update of title, body on public.bench_docs
          for each row execute function util.queue_embeddings('bench_docs_input', 'embedding');
        create trigger clear_on_update before update of title, body on public.bench_docs
          for each row execute function util.clear_column('embedding');
      `).simple();
    },
  },
  {
    label: "autoembed: util.enable_embeddings (statement-level triggers), push mode",
    key: "ours",
    install: async (sql) => {
      await pushMode(sql);
      await sql`select util.enable_embeddings('public.bench_docs', 'bench_docs_input', backfill => false)`;
    },
  },
  {
    label:
      "autoembed before: enable_embeddings' triggers through the generic util.queue_embeddings (statement level, dynamic SQL), push mode",
    key: "ours_generic",
    install: async (sql) => {
      await pushMode(sql);
      await sql`select util.enable_embeddings('public.bench_docs', 'bench_docs_input', backfill => false)`;
      // The triggers enable_embeddings created before it wrote a function per
      // target (util._create_queue_function): the A/B of that change.
      await sql.unsafe(`
        drop trigger embed_embedding_insert on public.bench_docs;
        drop trigger embed_embedding_update on public.bench_docs;
        create trigger embed_embedding_insert after insert on public.bench_docs
          referencing new table as new_rows
          for each statement execute function util.queue_embeddings('bench_docs_input', 'embedding');
        create trigger embed_embedding_update after update on public.bench_docs
          referencing old table as old_rows new table as new_rows
          for each statement execute function util.queue_embeddings('bench_docs_input', 'embedding');
      `).simple();
    },
  },
  {
    label: "autoembed: util.enable_embeddings, pull-only install (a NOTIFY per transaction)",
    key: "ours_notify",
    install: (sql) =>
      sql`select util.enable_embeddings('public.bench_docs', 'bench_docs_input', backfill => false)`,
  },
];

/**
 * Push mode as the migration sets it where pg_cron runs process-embeddings
 * (these databases have no cron job): changes kick an idle pipeline through
 * pg_net (at most one request a second; nothing serves it here) and send no
 * NOTIFY.
 */
async function pushMode(sql: Sql): Promise<void> {
  await sql`update util.settings set value = 'on' where name = 'kick_on_change'`;
}

export const SCRIPTS = {
  insert: `\\set n random(1, 1000000000)
insert into public.bench_docs (title, body)
  values ('new document ' || :n, repeat('lorem ipsum dolor sit amet consectetur ', 10) || :n);
`,
  update: `\\set id random(1, ${PREFILL})
update public.bench_docs set body = 'edited ' || :id || ' ' || random() where id = :id;
`,
};

export async function pgbench(url: string, script: string, seconds: number): Promise<number> {
  const u = new URL(url);
  const out = await capture(
    PGBENCH,
    [
      "-n",
      "-h",
      u.hostname,
      "-p",
      u.port,
      "-U",
      decodeURIComponent(u.username),
      "-c",
      String(CLIENTS),
      "-j",
      "2",
      "-T",
      String(seconds),
      "-f",
      script,
      u.pathname.slice(1),
    ],
    { env: { PGPASSWORD: decodeURIComponent(u.password) } },
  );
  const tps = out.stdout.match(/tps = ([\d.]+) \(without initial connection time\)/)?.[1];
  if (out.code !== 0 || !tps) throw new Error(`pgbench failed: ${out.stderr}\n${out.stdout}`);
  return Number(tps);
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  await fn();
  return (performance.now() - started) / 1000;
}

/** The figures of one cluster: pgbench tps and bulk seconds per configuration. */
interface ClusterFigures {
  tps: Record<string, Record<string, number[]>>;
  /** Per configuration: functions called by one insert run with track_functions = all. */
  functions: Record<string, { name: string; calls: number; totalUs: number; selfUs: number }[]>;
  /** Inserts/s of that profiling run (tracking every function call costs some). */
  profiledTps: Record<string, number>;
  bulk: Record<string, { insert: number[]; update: number[] }>;
}

export interface WritePathFigures {
  section: Section;
  /** 1 − inserts/s with enable_embeddings / without, durable. */
  insertCost: number;
  /** inserts/s with enable_embeddings / with the guide's trigger, durable. */
  vsGuide: number;
  /** inserts/s with our row trigger / with the guide's trigger, durable. */
  rowVsGuide: number;
  /** Bulk insert seconds with enable_embeddings / without, durable. */
  bulkRatio: number;
  /** inserts/s with enable_embeddings / with its triggers through the generic function, durable. */
  vsGeneric: number;
}

async function measureCluster(
  ctx: BenchContext,
  name: string,
  scripts: Record<string, string>,
  reps: number,
  seconds: number,
): Promise<ClusterFigures> {
  const tps: ClusterFigures["tps"] = {};
  const functions: ClusterFigures["functions"] = {};
  const profiledTps: ClusterFigures["profiledTps"] = {};
  const dbs = new Map<string, Awaited<ReturnType<typeof cloneDb>>>();
  try {
    for (const config of CONFIGS) {
      const db = await cloneDb(`write_${config.key}`);
      dbs.set(config.key, db);
      await insertRows(db.sql, PREFILL, "prefill");
      await config.install(db.sql);
      await db.sql`vacuum analyze bench_docs`;
      await db.sql`checkpoint`;
    }
    // Interleaved, so drift on the machine spreads over every configuration.
    for (let rep = 0; rep < reps; rep++) {
      for (const config of CONFIGS) {
        for (const op of ["insert", "update"]) {
          const value = await pgbench(dbs.get(config.key)!.url, scripts[op], seconds);
          ((tps[config.key] ??= {})[op] ??= []).push(value);
          ctx.log(`  ${name} ${config.key} ${op}: ${fmt(value)} tps`);
        }
      }
    }
    // Where a trigger's time goes: one more insert run per configuration with
    // every function call timed (pg_stat_user_functions, per call).
    for (const config of CONFIGS) {
      const db = dbs.get(config.key)!;
      await db.sql.unsafe(`alter database ${db.name} set track_functions = 'all'`);
      await db.sql`select pg_stat_reset()`;
      profiledTps[config.key] = await pgbench(db.url, scripts.insert, Math.min(seconds, 4));
      const rows = await db.sql<{ name: string; calls: number; total: number; self: number }[]>`
        select schemaname || '.' || funcname as name, calls::int as calls,
               total_time as total, self_time as self
          from pg_stat_user_functions where calls > 0 order by total_time desc limit 6`;
      functions[config.key] = rows.map((r) => ({
        name: r.name,
        calls: r.calls,
        totalUs: (r.total * 1000) / r.calls,
        selfUs: (r.self * 1000) / r.calls,
      }));
    }
  } finally {
    for (const db of dbs.values()) await db.drop();
  }

  const bulk: ClusterFigures["bulk"] = {};
  for (let rep = 0; rep < reps; rep++) {
    for (const config of CONFIGS) {
      const db = await cloneDb(`bulk_${config.key}`);
      try {
        await config.install(db.sql);
        await db.sql`checkpoint`;
        const insert = await timed(() => insertRows(db.sql, BULK, "bulk"));
        const update = await timed(() => db.sql`update bench_docs set body = body || ' v2'`);
        const entry = (bulk[config.key] ??= { insert: [], update: [] });
        entry.insert.push(insert);
        entry.update.push(update);
        ctx.log(`  ${name} bulk ${config.key}: insert ${fmt(insert)} s, update ${fmt(update)} s`);
      } finally {
        await db.drop();
      }
    }
  }
  return { tps, bulk, functions, profiledTps };
}

function report(section: Section, title: string, f: ClusterFigures): void {
  const base = f.tps.none;
  const guide = f.tps.guide;
  const pct = (a: number[], b: number[]) => `${fmt((median(a) / median(b) - 1) * 100)}%`;
  section.text(`\n**${title}.** Single-row transactions (pgbench):`);
  section.table(
    ["triggers", "inserts/s", "vs none", "vs guide", "updates/s", "vs none", "vs guide"],
    CONFIGS.map((c) => [
      c.label,
      spread(f.tps[c.key].insert),
      pct(f.tps[c.key].insert, base.insert),
      pct(f.tps[c.key].insert, guide.insert),
      spread(f.tps[c.key].update),
      pct(f.tps[c.key].update, base.update),
      pct(f.tps[c.key].update, guide.update),
    ]),
  );
  section.text(
    `\n**${title}.** Where the time of one single-row insert goes: an extra insert run per ` +
      `configuration with \`track_functions = all\` (pg_stat_user_functions; µs per call, ` +
      `total includes what the function calls; SQL functions are not inlined while tracked):`,
  );
  section.table(
    ["triggers", "inserts/s (tracked)", "function: calls, total µs / self µs per call"],
    CONFIGS.map((c) => [
      c.label,
      fmt(f.profiledTps[c.key]),
      f.functions[c.key].map((x) => `${x.name}: ${x.calls}, ${fmt(x.totalUs)} / ${fmt(x.selfUs)}`)
        .join("; ") || "none",
    ]),
  );
  section.text(`\n**${title}.** One statement of ${BULK.toLocaleString("en-US")} rows:`);
  const none = f.bulk.none;
  section.table(
    ["triggers", "bulk insert s", "vs none", "bulk update s", "vs none"],
    CONFIGS.map((c) => [
      c.label,
      spread(f.bulk[c.key].insert),
      `${fmt(median(f.bulk[c.key].insert) / median(none.insert))}×`,
      spread(f.bulk[c.key].update),
      `${fmt(median(f.bulk[c.key].update) / median(none.update))}×`,
    ]),
  );
}

export async function writePathScenario(ctx: BenchContext): Promise<WritePathFigures> {
  const reps = ctx.quick ? 1 : 3;
  const seconds = ctx.quick ? 3 : 6;
  ctx.log(`4. write path (pgbench ${CLIENTS} clients × ${seconds} s × ${reps}; bulk ${BULK})`);
  const dir = await Deno.makeTempDir({ prefix: "autoembed-bench-" });
  const scripts: Record<string, string> = {};
  for (const [name, text] of Object.entries(SCRIPTS)) {
    scripts[name] = `${dir}/${name}.sql`;
    await Deno.writeTextFile(scripts[name], text);
  }

  let fast: ClusterFigures;
  let durable: ClusterFigures;
  const cluster = await startEphemeralCluster();
  try {
    fast = await measureCluster(ctx, "fsync off", scripts, reps, seconds);
    await makeDurable(cluster);
    useServer(cluster.url);
    await buildTemplate();
    const check = connect(cluster.url("postgres"), 1);
    try {
      const rows = await check`
        select name, setting from pg_settings
         where name in ('fsync', 'full_page_writes', 'synchronous_commit') order by name`;
      ctx.log(`  durable cluster: ${rows.map((r) => `${r.name}=${r.setting}`).join(", ")}`);
    } finally {
      await check.end();
    }
    durable = await measureCluster(ctx, "durable", scripts, reps, seconds);
  } finally {
    useServer(databaseUrl);
    await cluster.destroy();
    await Deno.remove(dir, { recursive: true });
  }

  const section = new Section("4. Write path, durable and fsync off");
  section.text(`
Single-row transactions: pgbench (${PGBENCH}), ${CLIENTS} clients, 2 threads, ${seconds} s per run,
${reps} interleaved runs per configuration (median, min–max), on a table of ${
    PREFILL.toLocaleString("en-US")
  } rows.
Inserts add a new row (about 450 characters of text); updates change the text of a random row
(so every update is a real change that enqueues a job). Bulk: \`insert into bench_docs ... select
... from generate_series(1, ${BULK})\` into an empty table, then \`update bench_docs set body = body
|| ' v2'\` of all its rows, each in a fresh database. **Durable**: a throw-away cluster with
fsync, full_page_writes and synchronous_commit on (PostgreSQL's defaults, what a production server
runs). **fsync off**: the local development cluster (local/cluster.ts). Both measured in the same
run. "Push mode" is \`kick_on_change\` on, as the migration sets it where pg_cron runs
\`process-embeddings\` (the guide's setting): a change kicks an idle pipeline through pg_net (at most
one request a second, unserved here) and sends no NOTIFY. "Pull-only" is an install without pg_cron:
a NOTIFY per transaction for listening workers.`);
  report(section, "Durable (fsync on)", durable);
  report(section, "fsync off (development cluster)", fast);
  const d = durable;
  return {
    section,
    insertCost: 1 - median(d.tps.ours.insert) / median(d.tps.none.insert),
    vsGuide: median(d.tps.ours.insert) / median(d.tps.guide.insert),
    rowVsGuide: median(d.tps.ours_row.insert) / median(d.tps.guide.insert),
    bulkRatio: median(d.bulk.ours.insert) / median(d.bulk.none.insert),
    vsGeneric: median(d.tps.ours.insert) / median(d.tps.ours_generic.insert),
  };
}
