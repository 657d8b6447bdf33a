// Scenario 4, write-path overhead: what the triggers cost the application's
// writes. Single-row transactions from several clients with pgbench, and one
// bulk statement of 100,000 rows, each with and without the triggers.
import { installNaive } from "../naive/pipeline.ts";
import { fmt, median, Section, spread } from "../report.ts";
import { type BenchContext, cloneDb, insertRows, type Sql } from "../stack.ts";

const PGBENCH = "/usr/lib/postgresql/15/bin/pgbench";
const PREFILL = 100_000;
const BULK = 100_000;
const CLIENTS = 4;

interface Config {
  label: string;
  key: string;
  install: (sql: Sql) => Promise<unknown>;
}

const CONFIGS: Config[] = [
  { label: "no triggers", key: "none", install: () => Promise.resolve() },
  {
    label: "autoembed: util.enable_embeddings (statement-level triggers)",
    key: "ours",
    install: (sql) =>
      sql`select util.enable_embeddings('public.bench_docs', 'bench_docs_input', backfill => false)`,
  },
  {
    label: "autoembed, clear_on_change => true (+ row-level BEFORE UPDATE)",
    key: "ours_clear",
    install: (sql) =>
      sql`select util.enable_embeddings('public.bench_docs', 'bench_docs_input',
                                        clear_on_change => true, backfill => false)`,
  },
  { label: "naive: guide-style row-level triggers", key: "naive", install: installNaive },
];

const SCRIPTS = {
  insert: `\\set n random(1, 1000000000)
insert into public.bench_docs (title, body)
  values ('new document ' || :n, repeat('lorem ipsum dolor sit amet consectetur ', 10) || :n);
`,
  update: `\\set id random(1, ${PREFILL})
update public.bench_docs set body = 'edited ' || :id || ' ' || random() where id = :id;
`,
};

async function pgbench(url: string, script: string, seconds: number): Promise<number> {
  const u = new URL(url);
  const out = await new Deno.Command(PGBENCH, {
    args: [
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
    env: { PGPASSWORD: decodeURIComponent(u.password) },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  const tps = text.match(/tps = ([\d.]+) \(without initial connection time\)/)?.[1];
  if (out.code !== 0 || !tps) {
    throw new Error(`pgbench failed: ${new TextDecoder().decode(out.stderr)}\n${text}`);
  }
  return Number(tps);
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  await fn();
  return (performance.now() - started) / 1000;
}

export interface WritePathFigures {
  section: Section;
  /** 1 − inserts/s with our triggers / without. */
  insertCost: number;
  /** Bulk insert seconds with our triggers / without. */
  bulkRatio: number;
}

export async function writePathScenario(ctx: BenchContext): Promise<WritePathFigures> {
  const reps = ctx.quick ? 1 : 3;
  const seconds = ctx.quick ? 3 : 8;
  ctx.log(`4. write path (pgbench ${CLIENTS} clients × ${seconds} s × ${reps}; bulk ${BULK})`);
  const dir = await Deno.makeTempDir({ prefix: "autoembed-bench-" });
  const scripts: Record<string, string> = {};
  for (const [name, text] of Object.entries(SCRIPTS)) {
    scripts[name] = `${dir}/${name}.sql`;
    await Deno.writeTextFile(scripts[name], text);
  }

  const tps: Record<string, Record<string, number[]>> = {};
  const dbs = new Map<string, Awaited<ReturnType<typeof cloneDb>>>();
  try {
    for (const config of CONFIGS) {
      const db = await cloneDb(`write_${config.key}`);
      dbs.set(config.key, db);
      await insertRows(db.sql, PREFILL, "prefill");
      await config.install(db.sql);
      await db.sql`vacuum analyze bench_docs`;
    }
    // Interleaved, so drift on the machine spreads over every configuration.
    for (let rep = 0; rep < reps; rep++) {
      for (const config of CONFIGS) {
        for (const op of ["insert", "update"]) {
          const value = await pgbench(dbs.get(config.key)!.url, scripts[op], seconds);
          ((tps[config.key] ??= {})[op] ??= []).push(value);
          ctx.log(`  ${config.key} ${op}: ${fmt(value)} tps`);
        }
      }
    }
  } finally {
    for (const db of dbs.values()) await db.drop();
    await Deno.remove(dir, { recursive: true });
  }

  const bulkConfigs = CONFIGS.filter((c) => c.key !== "ours_clear");
  const bulk: Record<string, { insert: number[]; update: number[] }> = {};
  for (let rep = 0; rep < reps; rep++) {
    for (const config of bulkConfigs) {
      const db = await cloneDb(`bulk_${config.key}`);
      try {
        await config.install(db.sql);
        const insert = await timed(() => insertRows(db.sql, BULK, "bulk"));
        const update = await timed(() => db.sql`update bench_docs set body = body || ' v2'`);
        const entry = (bulk[config.key] ??= { insert: [], update: [] });
        entry.insert.push(insert);
        entry.update.push(update);
        ctx.log(`  bulk ${config.key}: insert ${fmt(insert)} s, update ${fmt(update)} s`);
      } finally {
        await db.drop();
      }
    }
  }

  const base = tps.none;
  const section = new Section("4. Write-path overhead");
  section.text(`
Single-row transactions: pgbench (${PGBENCH}), ${CLIENTS} clients, 2 threads, ${seconds} s per run,
${reps} interleaved runs per configuration, on a table of ${PREFILL.toLocaleString("en-US")} rows.
Inserts add a new row (about 450 characters of text); updates change the text of a random row
(so every update is a real change that enqueues a job).`);
  section.table(
    ["triggers", "inserts/s", "vs none", "updates/s", "vs none"],
    CONFIGS.map((c) => [
      c.label,
      spread(tps[c.key].insert),
      `${fmt((median(tps[c.key].insert) / median(base.insert) - 1) * 100)}%`,
      spread(tps[c.key].update),
      `${fmt((median(tps[c.key].update) / median(base.update) - 1) * 100)}%`,
    ]),
  );
  section.text(`
One statement: \`insert into bench_docs ... select ... from generate_series(1, ${BULK})\` into an empty
table, then \`update bench_docs set body = body || ' v2'\` of all ${
    BULK.toLocaleString("en-US")
  } rows
(each in a fresh database; ${reps} runs).`);
  const noneBulk = bulk.none;
  section.table(
    ["triggers", "bulk insert s", "vs none", "bulk update s", "vs none"],
    bulkConfigs.map((c) => [
      c.label,
      spread(bulk[c.key].insert),
      `${fmt(median(bulk[c.key].insert) / median(noneBulk.insert))}×`,
      spread(bulk[c.key].update),
      `${fmt(median(bulk[c.key].update) / median(noneBulk.update))}×`,
    ]),
  );
  return {
    section,
    insertCost: 1 - median(tps.ours.insert) / median(base.insert),
    bulkRatio: median(bulk.ours.insert) / median(noneBulk.insert),
  };
}
