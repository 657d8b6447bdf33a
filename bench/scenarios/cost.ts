// Scenario 2, provider cost: requests and inputs the provider sees for
// changed, unchanged, duplicated and already-embedded text, against the jobs
// (= provider calls, one input each) the naive pipeline's triggers enqueue.
import { installNaive } from "../naive/pipeline.ts";
import { Section } from "../report.ts";
import {
  attach,
  type BenchContext,
  cloneDb,
  counts,
  DIMENSIONS,
  insertRows,
  providerCost,
  type Sql,
} from "../stack.ts";
import { BATCH_SIZE, drainOnce } from "./drain.ts";

const ROWS = 10_000;

interface Case {
  label: string;
  /** Changes the table (or the queue) as a user or a re-delivery would. */
  act: (sql: Sql) => Promise<void>;
  /** Whether the naive design has an equivalent (re-delivery is a queue event, not a write). */
  naive?: (sql: Sql) => Promise<void>;
  /** Rows whose text changed (for the ⌈N / batch⌉ + 1 bound); 0 when none did. */
  changed: number;
}

const JOB = `jsonb_build_object('id', id, 'schema', 'public', 'table', 'bench_docs',
  'contentFunction', 'bench_docs_input', 'embeddingColumn', 'embedding')`;

const CASES: Case[] = [
  {
    label: "1,000 rows changed by one UPDATE",
    act: (sql) => sql`update bench_docs set body = body || ' edited' where id <= 1000`.then(),
    changed: 1000,
  },
  {
    label: "1,000 rows changed by 1,000 single-row UPDATEs (4 clients)",
    act: async (sql) => {
      const ids = Array.from({ length: 1000 }, (_, i) => 1001 + i);
      await Promise.all(Array.from({ length: 4 }, async (_, k) => {
        for (let i = k; i < ids.length; i += 4) {
          await sql`update bench_docs set body = body || ' single' where id = ${ids[i]}`;
        }
      }));
    },
    changed: 1000,
  },
  {
    label: "100 rows changed 10 times each before the worker runs (1,000 jobs)",
    act: async (sql) => {
      for (let round = 1; round <= 10; round++) {
        await sql`update bench_docs set body = body || ${
          " r" + round
        } where id between 2001 and 2100`;
      }
    },
    changed: 100,
  },
  {
    label: "no-op UPDATE of 10,000 rows (text set to itself)",
    act: (sql) => sql`update bench_docs set title = title, body = body`.then(),
    changed: 0,
  },
  {
    label: "UPDATE of a non-text column of 10,000 rows",
    act: (sql) => sql`update bench_docs set views = views + 1`.then(),
    changed: 0,
  },
  {
    label: "1,000 new rows whose text is already embedded (copied)",
    act: (sql) =>
      sql`insert into bench_docs (title, body)
          select title, body from bench_docs where id between 5001 and 6000`.then(),
    changed: 0,
  },
  {
    label: "1,000 re-delivered jobs for embedded rows",
    act: (sql) =>
      sql.unsafe(`select pgmq.send_batch('embedding_jobs',
                    array(select ${JOB} from bench_docs where id between 6001 and 7000))`).then(),
    naive: (sql) =>
      sql.unsafe(`select pgmq.send_batch('naive_jobs',
                    array(select ${JOB} from bench_docs where id between 6001 and 7000))`).then(),
    changed: 0,
  },
];

export interface CostFigures {
  section: Section;
  changedRequests: number;
  changedBound: number;
  noopRequests: number;
  cachedRequests: number;
}

export async function costScenario(ctx: BenchContext): Promise<CostFigures> {
  ctx.log("2. provider cost");
  const ours = await cloneDb("cost");
  const naive = await cloneDb("cost_naive");
  const rows: (string | number)[][] = [];
  const figures = { changedRequests: 0, changedBound: 0, noopRequests: 0, cachedRequests: 0 };
  try {
    await attach(ours.sql, false);
    await insertRows(ours.sql, ROWS, "cost");
    const initial = await providerCost(ctx.fake, () => drainOnce(ctx, ours.url, 4));
    rows.push([
      `${ROWS.toLocaleString("en-US")} new rows (backfill)`,
      ROWS,
      initial.requests,
      initial.inputs,
      `${Math.ceil(ROWS / BATCH_SIZE)}`,
      ROWS,
      "",
    ]);
    ctx.log(`  backfill of ${ROWS}: ${initial.requests} requests, ${initial.inputs} inputs`);

    // The naive pipeline's state: the same rows, embedded (written directly), queue empty.
    await installNaive(naive.sql);
    await insertRows(naive.sql, ROWS, "cost");
    await naive.sql.unsafe(`update bench_docs set embedding =
      array_fill(0.01::real, array[${DIMENSIONS}])::halfvec`);
    await naive.sql`select pgmq.purge_queue('naive_jobs')`;

    for (const c of CASES) {
      await c.act(ours.sql);
      const [{ jobs }] = await ours
        .sql`select coalesce(sum(util._job_rows(message)), 0)::int as jobs from pgmq.q_embedding_jobs`;
      const { requests, inputs } = await providerCost(ctx.fake, () => drainOnce(ctx, ours.url, 1));
      const after = await counts(ours.sql);
      const [{ total }] = await ours.sql`select count(*)::int as total from bench_docs`;
      if (after.queued !== 0 || after.embedded !== total) {
        throw new Error(`${c.label}: ${after.embedded}/${total} embedded, ${after.queued} queued`);
      }
      await (c.naive ?? c.act)(naive.sql);
      const [n] = await naive.sql`
        select (select count(*) from pgmq.q_naive_jobs)::int as jobs,
               (select count(*) from bench_docs where embedding is null)::int as cleared`;
      await naive.sql`select pgmq.purge_queue('naive_jobs')`;
      await naive.sql.unsafe(`update bench_docs set embedding =
        array_fill(0.01::real, array[${DIMENSIONS}])::halfvec where embedding is null`);
      const bound = c.changed ? Math.ceil(c.changed / BATCH_SIZE) + 1 : 0;
      rows.push([c.label, jobs, requests, inputs, String(bound), n.jobs, n.cleared]);
      ctx.log(
        `  ${c.label}: ${jobs} jobs, ${requests} requests, ${inputs} inputs (naive: ${n.jobs} ` +
          `requests, ${n.cleared} embeddings cleared)`,
      );
      if (c.changed === 1000) {
        figures.changedRequests = Math.max(figures.changedRequests, requests);
        figures.changedBound = bound;
      }
      if (c.label.includes("no-op") || c.label.includes("non-text")) {
        figures.noopRequests += requests;
      }
      if (c.label.includes("copied")) figures.cachedRequests = requests;
    }
  } finally {
    await ours.drop();
    await naive.drop();
  }
  const section = new Section("2. Provider cost");
  section.text(`
A table of ${ROWS.toLocaleString("en-US")} embedded rows; each case changes it, then
\`worker --once -c 1 --batch-size ${BATCH_SIZE}\` drains the queue and the fake provider counts what
it was sent. The naive columns are what the guide-style triggers (bench/naive/naive.sql) enqueue for
the same change on a copy of the table: its embed function makes one provider call with one input
per job (section 1 measures exactly that), and its \`clear_column\` trigger NULLs the embedding of
every row whose text columns were assigned, changed or not, until it is re-embedded.`);
  section.table(
    [
      "change",
      "jobs enqueued",
      "provider requests",
      "provider inputs",
      "goal: ≤ requests",
      "naive requests (= jobs)",
      "naive embeddings cleared",
    ],
    rows,
  );
  return { section, ...figures };
}
