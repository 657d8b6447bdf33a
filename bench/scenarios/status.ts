// Status as a service level (issue 23): `select * from util.embedding_status`
// (the figures the pipeline keeps) and `autoembed status` on a table of
// 1,000,000 and 10,000,000 embedded rows, with and without a backlog of
// 1,000,000 queued rows, next to the scan it replaced (now the explicit
// util.embedding_status_exact(), timed once, at 1,000,000 rows only: at 10
// million it takes minutes).
//
// How the table is built (honestly, and fast): rows inserted before the
// table is attached (backfill off: no trigger runs), each given a constant
// halfvec(16) and the fingerprint of its text (util._content_hash of its
// content function, as the core writes it), in one statement each; the kept
// count follows the fingerprints' statement trigger as it does for the
// core's writes; then `vacuum analyze`, as autovacuum would after a bulk
// load. The vectors are small because status never reads them (the old
// scan read each row's text, not its vector).
import { runCli } from "../../devtools/cli.ts";
import { fmt, median, percentile, Section } from "../report.ts";
import { type BenchContext, cloneDb, type Sql } from "../stack.ts";

export interface StatusRun {
  rows: number;
  buildSeconds: number;
  viewMs: { median: number; p95: number };
  viewBacklogMs: { median: number; p95: number };
  cliMs: number;
  exactMs: number | null;
  statusRow: Record<string, unknown>;
}

export interface StatusFigures {
  runs: StatusRun[];
  section: Section;
}

const TABLE = `
  create table public.status_docs (
    id bigint primary key,
    title text not null,
    body text not null,
    embedding halfvec(16)
  );
  create function public.status_docs_input(d public.status_docs) returns text
    language sql immutable set search_path = ''
    as $$ select d.title || E'\\n\\n' || d.body $$;
`;

async function timed(sql: Sql, times: number): Promise<{ median: number; p95: number }> {
  const ms: number[] = [];
  for (let i = 0; i < times; i++) {
    const t = performance.now();
    await sql`select * from util.embedding_status`;
    ms.push(performance.now() - t);
  }
  return { median: Number(median(ms).toFixed(1)), p95: Number(percentile(ms, 95).toFixed(1)) };
}

export async function measureStatus(
  ctx: BenchContext,
  rows: number,
  exact: boolean,
): Promise<StatusRun> {
  const db = await cloneDb("status");
  const sql = db.sql;
  try {
    const built = performance.now();
    await sql.unsafe(TABLE).simple();
    await sql.unsafe(`
      insert into public.status_docs (id, title, body, embedding)
      select g, 'document ' || g, repeat('lorem ipsum dolor sit amet ', 8) || g,
             array_fill(0.25, array[16])::real[]::halfvec(16)
        from generate_series(1, ${rows}) g`);
    await sql`select util.enable_embeddings('public.status_docs', 'status_docs_input',
                model => 'text-embedding-3-small', dimensions => 16, backfill => false)`;
    await sql.unsafe(`
      insert into util.embedding_fingerprints (target_id, row_id, content_hash)
      select t.id, d.id::text, util._content_hash(public.status_docs_input(d))
        from public.status_docs d, util.embedding_targets t
       where t.table_oid = 'public.status_docs'::regclass`);
    await sql`select util.maintain_embeddings()`;
    await sql.unsafe("vacuum analyze");
    const buildSeconds = Number(((performance.now() - built) / 1000).toFixed(1));
    ctx.log(`status: ${rows} rows built in ${buildSeconds} s`);

    await timed(sql, 3); // warm
    const viewMs = await timed(sql, 20);
    const cliStart = performance.now();
    const cli = await runCli(["status", "-d", db.url]);
    const cliMs = Math.round(performance.now() - cliStart);
    if (cli.code !== 0) throw new Error(`autoembed status failed: ${cli.stderr}`);
    const [statusRow] = await sql`
      select total_rows, total_rows_estimated, embedded, queued from util.embedding_status`;

    // A backlog of 1,000,000 queued rows (10,000 messages of 100 rows, as a bulk statement's trigger writes them).
    await sql.unsafe(`
      do $$ begin
        execute util._enqueue_sql('select d.id from public.status_docs d where d.id <= 1000000', '$1')
          using jsonb_build_object('schema', 'public', 'table', 'status_docs',
                                   'contentFunction', 'status_docs_input', 'embeddingColumn', 'embedding');
      end $$`);
    await timed(sql, 3);
    const viewBacklogMs = await timed(sql, 20);

    let exactMs: number | null = null;
    if (exact) {
      const t = performance.now();
      await sql`select * from util.embedding_status_exact()`;
      exactMs = Math.round(performance.now() - t);
    }
    const run: StatusRun = {
      rows,
      buildSeconds,
      viewMs,
      viewBacklogMs,
      cliMs,
      exactMs,
      statusRow: { ...statusRow },
    };
    ctx.log(JSON.stringify(run));
    return run;
  } finally {
    await db.drop();
  }
}

export async function statusScenario(ctx: BenchContext): Promise<StatusFigures> {
  const sizes = ctx.quick ? [100_000, 1_000_000] : [1_000_000, 10_000_000];
  const runs: StatusRun[] = [];
  for (const rows of sizes) runs.push(await measureStatus(ctx, rows, rows <= 1_000_000));
  const section = new Section("Status as a service level: util.embedding_status at scale");
  section.text(`A table of N rows, all embedded (see bench/scenarios/status.ts for how it is
built: rows inserted before attaching, their fingerprints written in one statement, then
\`vacuum analyze\`). \`select * from util.embedding_status\` timed 20 times from a client on
loopback (median, p95), idle and with 1,000,000 rows queued (10,000 messages); \`autoembed status\` once, wall time of the
whole process (Deno's start-up included); the exact scan (\`util.embedding_status_exact()\`, what
\`util.embedding_status\` did before) once.`);
  section.table(
    [
      "rows",
      "status ms (median / p95)",
      "with 1M queued",
      "autoembed status ms",
      "exact scan ms",
      "total_rows shown",
    ],
    runs.map((r) => [
      r.rows.toLocaleString("en-US"),
      `${fmt(r.viewMs.median, 1)} / ${fmt(r.viewMs.p95, 1)}`,
      `${fmt(r.viewBacklogMs.median, 1)} / ${fmt(r.viewBacklogMs.p95, 1)}`,
      fmt(r.cliMs),
      r.exactMs === null ? "not run" : fmt(r.exactMs),
      `${r.statusRow.total_rows}${r.statusRow.total_rows_estimated ? " (estimate)" : ""}`,
    ]),
  );
  return { runs, section };
}
