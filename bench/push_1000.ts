// Push-mode figures for 1,000 rows on the local stack: time to embed 1,000
// inserted rows (process_embeddings -> pg_net shim -> embed handler -> fake
// provider with 20 ms latency -> Postgres), provider calls per 1,000 changed
// rows, and the cost of a no-op update of 1,000 rows. Needs the test template
// (run `npm test` once first). Usage: deno run -A bench/push_1000.ts [repetitions]
import { withTestDb } from "../devtools/db.ts";
import { createDocuments, startPipeline } from "../devtools/pipeline.ts";
import type { Sql } from "../devtools/db.ts";
import { median } from "./report.ts";
import { sleep } from "../supabase/functions/_shared/sleep.ts";

const ROWS = 1000;
const repetitions = Number(Deno.args[0] ?? 5);

/** Calls process_embeddings once and waits until every row is embedded from its current text. */
async function drain(sql: Sql): Promise<number> {
  const started = performance.now();
  await sql`select util.process_embeddings(100, 4, 30000)`;
  for (;;) {
    const [s] =
      await sql`select missing::int, stale::int, queued::int from util.embedding_status_exact()`;
    if (s.missing === 0 && s.stale === 0 && s.queued === 0) return performance.now() - started;
    await sleep(5);
  }
}

interface Run {
  insertMs: number;
  insertRequests: number;
  insertInputs: number;
  changeMs: number;
  changeRequests: number;
  noopMs: number;
  noopRequests: number;
  noopQueued: number;
}

async function once(): Promise<Run> {
  let run: Run | undefined;
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url, { latencyMs: 20 });
    try {
      await createDocuments(sql);
      await sql`insert into documents (title, content)
                select 'title ' || g, 'content of row ' || g from generate_series(1, ${ROWS}) g`;
      const insertMs = await drain(sql);
      const inserted = { ...p.fake.stats };
      p.fake.resetStats();
      await sql`update documents set content = content || ' (changed)'`;
      const changeMs = await drain(sql);
      const changed = { ...p.fake.stats };
      p.fake.resetStats();
      const noopStarted = performance.now();
      await sql`update documents set title = title`;
      const [{ queued }] = await sql`select count(*)::int as queued from pgmq.q_embedding_jobs`;
      await drain(sql);
      run = {
        insertMs,
        insertRequests: inserted.requests,
        insertInputs: inserted.inputs,
        changeMs,
        changeRequests: changed.requests,
        noopMs: performance.now() - noopStarted,
        noopRequests: p.fake.stats.requests,
        noopQueued: queued,
      };
    } finally {
      await p.stop();
    }
  });
  return run!;
}

const runs: Run[] = [];
for (let i = 0; i < repetitions; i++) {
  runs.push(await once());
  console.log(JSON.stringify(runs.at(-1)));
}
const fmt = (key: keyof Run) => {
  const xs = runs.map((r) => r[key]);
  return `${median(xs).toFixed(0)} (min ${Math.min(...xs).toFixed(0)}, max ${
    Math.max(...xs).toFixed(0)
  })`;
};
console.log(
  `push mode, ${ROWS} rows, fake provider 20 ms, batch 100, 4 requests in flight, ${repetitions} runs:`,
);
console.log(
  `  insert ${ROWS} rows -> all embedded: ${fmt("insertMs")} ms; provider requests ${
    fmt("insertRequests")
  }, inputs ${fmt("insertInputs")}`,
);
console.log(
  `  change ${ROWS} rows' text -> re-embedded: ${fmt("changeMs")} ms; provider requests ${
    fmt("changeRequests")
  }`,
);
console.log(
  `  no-op update of ${ROWS} rows: ${fmt("noopMs")} ms; jobs queued ${
    fmt("noopQueued")
  }, provider requests ${fmt("noopRequests")}`,
);
