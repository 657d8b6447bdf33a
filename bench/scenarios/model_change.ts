// Issue 24, item 5: a model change of 100,000 rows with an HNSW index on the
// live column, before and after, side by side, in one run. "after" is this
// tree: the shadow column fills without an index, and the twin is built
// concurrently once it is full (util._twin_index_builds, by the worker).
// "before" is what main did: the twin made with the shadow column, in
// util.reembed's transaction, so every shadow write inserts into its HNSW
// graph. The bench makes that twin itself right after util.reembed, before
// any shadow vector is written, with the statement the pipeline would run:
// the only difference between the two runs. Both on one throw-away cluster,
// with fsync off (as the development cluster) and then made durable (fsync,
// full_page_writes and synchronous_commit on), cloned from one setup
// database: 100,000 rows embedded by the current model and its HNSW index.
import { sleep } from "../../supabase/functions/_shared/sleep.ts";
import { startEphemeralCluster } from "../../local/cluster.ts";
import { databaseUrl } from "../../local/config.ts";
import { fmt, Section } from "../report.ts";
import { BATCH_SIZE, drainOnce } from "./drain.ts";
import {
  attach,
  type BenchContext,
  buildTemplate,
  cloneDb,
  DIMENSIONS,
  insertRows,
  makeDurable,
  providerEnv,
  startWorker,
  useServer,
} from "../stack.ts";

/** The new model: another name, the same size (the fake provider embeds any). */
const NEW_MODEL = "text-embedding-3-large";
const LIVE_INDEX = "bench_docs_embedding_idx";

type Code = "before" | "after";

export interface ChangeRun {
  cluster: string;
  code: Code;
  /** util.reembed to the switch, s. */
  totalSeconds: number;
  /** util.reembed to the shadow full (util.embedding_status leaves next_state 'embedding'), s. */
  fillSeconds: number;
  fillRate: number;
  /** The twin's CREATE INDEX CONCURRENTLY, s (after only; before, the twin grows with the fill). */
  buildSeconds?: number;
  /** The twin's size, MB. */
  twinMb: number;
  /** Share of the shadow writes (updates of bench_docs) that were HOT: no new index entries. */
  hotShare: number;
}

export interface ModelChangeFigures {
  rows: number;
  /** The setup's drain of the live column without an index (rows/s), and its HNSW build (s). */
  setupDrainRate: number;
  setupIndexSeconds: number;
  runs: ChangeRun[];
  section: Section;
}

/** The setup database: ROWS rows embedded by the current model, with an HNSW index on the column. */
async function setup(ctx: BenchContext, rows: number) {
  const db = await cloneDb("model_change_setup");
  try {
    await attach(db.sql, false);
    await insertRows(db.sql, rows, "model change");
    const drainSeconds = await drainOnce(ctx, db.url);
    // Built with the settings the pipeline builds its twins with.
    const started = performance.now();
    await db.sql.begin(async (tx) => {
      await tx`select set_config('maintenance_work_mem', util._setting('index_build_maintenance_work_mem'), true),
                      set_config('max_parallel_maintenance_workers', util._setting('index_build_parallel_workers'), true)`;
      await tx.unsafe(
        `create index ${LIVE_INDEX} on public.bench_docs using hnsw (embedding extensions.halfvec_cosine_ops)`,
      );
    });
    const indexSeconds = (performance.now() - started) / 1000;
    await db.sql`vacuum analyze public.bench_docs`;
    const [{ embedded }] = await db.sql`
      select count(*)::int as embedded from public.bench_docs where embedding is not null`;
    if (embedded !== rows) throw new Error(`setup embedded ${embedded} of ${rows} rows`);
    ctx.log(JSON.stringify({ scenario: "model-change setup", rows, drainSeconds, indexSeconds }));
    return { name: db.name, drainRate: rows / drainSeconds, indexSeconds };
  } finally {
    // The clones need the database without sessions.
    await db.sql.end({ timeout: 5 });
  }
}

/** One model change of the setup's clone, timed from util.reembed to the switch. */
async function change(
  ctx: BenchContext,
  setupName: string,
  cluster: string,
  code: Code,
  rows: number,
): Promise<ChangeRun> {
  const db = await cloneDb(`model_change_${code}`, setupName);
  try {
    await db.sql`checkpoint`;
    const updates = async () => {
      const [u] = await db.sql`
        select n_tup_upd::float8 as all, n_tup_hot_upd::float8 as hot
          from pg_stat_user_tables where relid = 'public.bench_docs'::regclass`;
      return u as unknown as { all: number; hot: number };
    };
    const updatesBefore = await updates();
    ctx.fake.stats.texts.length = 0;
    const started = performance.now();
    const seconds = () => (performance.now() - started) / 1000;
    await db.sql`select util.reembed('public.bench_docs', model => ${NEW_MODEL},
                                     dimensions => ${DIMENSIONS})`;
    if (code === "before") {
      // main's util._store_create_shadow: the twin, on the empty shadow column, at once.
      const [{ statement }] = await db.sql`
        select util._twin_create_sql(p.unique_index, p.twin_name, p.relation, p.using_sql, false) as statement
          from util.embedding_targets l
          join util.embedding_targets s on s.shadow_of = l.id
          cross join util._store_twin_plan(l, s) p`;
      await db.sql.unsafe(statement);
    }
    const worker = startWorker(
      ["--once", "-c", "4", "--batch-size", String(BATCH_SIZE)],
      { DATABASE_URL: db.url, ...providerEnv(ctx.fake) },
    );
    let exited = false;
    const finished = worker.finished().finally(() => exited = true);
    let fillSeconds = NaN;
    let switchSeconds = NaN;
    while (!exited && Number.isNaN(switchSeconds)) {
      const [s] = await db.sql`select next_model, next_state from util.embedding_status`;
      if (Number.isNaN(fillSeconds) && (s.next_model === null || s.next_state !== "embedding")) {
        fillSeconds = seconds();
      }
      if (s.next_model === null) switchSeconds = seconds();
      else await sleep(200);
    }
    const { code: exit } = await finished;
    if (exit !== 0) {
      throw new Error(`worker exited ${exit}:\n${worker.process.lines.slice(-20).join("\n")}`);
    }
    if (Number.isNaN(switchSeconds)) switchSeconds = seconds();
    const built = worker.process.lines.find((l) => l.includes('"event":"index_twin_built"'));
    const [after] = await db.sql`
      select t.model, (select i.indisvalid from pg_index i where i.indexrelid = ${LIVE_INDEX}::regclass) as valid,
             pg_relation_size(${LIVE_INDEX}::regclass) as bytes
        from util.embedding_targets t where t.retired_at is null and t.shadow_of is null`;
    if (after.model !== NEW_MODEL || after.valid !== true) {
      throw new Error(`${code}: not switched (${JSON.stringify(after)})`);
    }
    // The worker's sessions ended with it, and with them their statistics were sent.
    const updatesAfter = await updates();
    const run: ChangeRun = {
      cluster,
      code,
      totalSeconds: switchSeconds,
      fillSeconds,
      fillRate: rows / fillSeconds,
      buildSeconds: built ? JSON.parse(built).ms / 1000 : undefined,
      twinMb: Number(after.bytes) / 1024 / 1024,
      hotShare: (updatesAfter.hot - updatesBefore.hot) /
        Math.max(1, updatesAfter.all - updatesBefore.all),
    };
    ctx.log(JSON.stringify({ scenario: "model-change", ...run }));
    return run;
  } finally {
    await db.drop();
  }
}

export async function modelChangeScenario(ctx: BenchContext): Promise<ModelChangeFigures> {
  const rows = ctx.quick ? 10_000 : 100_000;
  ctx.log(`model change of ${rows} rows with an HNSW index, before and after, fsync off and on`);
  const cluster = await startEphemeralCluster();
  const runs: ChangeRun[] = [];
  let prepared: Awaited<ReturnType<typeof setup>>;
  try {
    useServer(cluster.url);
    await buildTemplate();
    prepared = await setup(ctx, rows);
    for (const code of ["before", "after"] as const) {
      runs.push(await change(ctx, prepared.name, "fsync off", code, rows));
    }
    await makeDurable(cluster);
    for (const code of ["before", "after"] as const) {
      runs.push(await change(ctx, prepared.name, "durable", code, rows));
    }
  } finally {
    useServer(databaseUrl);
    await cluster.destroy();
  }

  const section = new Section("Model change with an HNSW index (issue 24)");
  section.text(
    `A model change (\`util.reembed\` to ${NEW_MODEL}, ${DIMENSIONS} dimensions) of ` +
      `${rows.toLocaleString("en-US")} rows whose live \`halfvec(${DIMENSIONS})\` column has an ` +
      "HNSW index (`halfvec_cosine_ops`, pgvector's defaults), driven by `worker --once -c 4 " +
      `--batch-size ${BATCH_SIZE}\` from \`util.reembed\` to the switch. **before**: the twin ` +
      "index made with the shadow column, as main did (every shadow write inserts into its HNSW " +
      "graph); the bench makes it right after `util.reembed` with the pipeline's own statement. " +
      "**after** (this tree): the shadow fills without it, and the worker builds it with CREATE " +
      "INDEX CONCURRENTLY once the shadow is full (`maintenance_work_mem` and " +
      "`max_parallel_maintenance_workers` from the settings index_build_maintenance_work_mem " +
      "and index_build_parallel_workers: 256MB and 2). One throw-away cluster " +
      "(local/cluster.ts's ephemeral one), first with fsync off (as the development cluster), " +
      "then durable (fsync, full_page_writes and synchronous_commit on, restarted); each run " +
      "on a clone of one setup database. The fill ends when util.embedding_status leaves " +
      "next_state 'embedding' (polled every 200 ms). One run of each.",
  );
  section.text(
    "Why the HOT column matters: a shadow write is an UPDATE of the user's row. When the new " +
      "row version does not fit on its page, it moves, and every index of the table gets an " +
      "entry for it: the live column's HNSW index too, a graph search per row for a vector that " +
      "did not change. Written in key order, a batch updates every row of a page at once and " +
      "none fits; the sweep of a model change therefore enqueues the shadow column's rows page " +
      "by page in turns (util._store_sweep_order), so that a page's later rows come when the " +
      "room its earlier update freed has been pruned, and are HOT. Measured by hand beforehand " +
      "(fsync off, 5,000 rows of 1536 dimensions with an HNSW index, batches of 100 rows in " +
      "their own transactions, no twin): key order 28.3 s, 4% HOT; page by page 2.7 s, 89% HOT. " +
      "**before** has 0% HOT whatever the order (its twin indexes the column written).",
  );
  section.text(
    `Setup: the ${rows.toLocaleString("en-US")} rows' first embedding (no index, fsync off) ` +
      `drained at ${fmt(prepared.drainRate)} rows/s; the live HNSW index then took ` +
      `${fmt(prepared.indexSeconds)} s to build (256MB, 2 parallel workers).`,
  );
  const before = (c: string) => runs.find((r) => r.cluster === c && r.code === "before")!;
  section.table(
    [
      "cluster",
      "code",
      "reembed → switch",
      "shadow fill",
      "fill rows/s",
      "HOT updates",
      "twin index build",
      "index MB",
    ],
    runs.map((r) => [
      r.cluster,
      r.code,
      `${fmt(r.totalSeconds)} s` +
      (r.code === "after"
        ? ` (${fmt(before(r.cluster).totalSeconds / r.totalSeconds)}× faster)`
        : ""),
      `${fmt(r.fillSeconds)} s`,
      fmt(r.fillRate),
      `${Math.round(r.hotShare * 100)}%`,
      r.buildSeconds === undefined ? "during the fill, row by row" : `${fmt(r.buildSeconds)} s`,
      fmt(r.twinMb),
    ]),
  );
  return {
    rows,
    setupDrainRate: prepared.drainRate,
    setupIndexSeconds: prepared.indexSeconds,
    runs,
    section,
  };
}
