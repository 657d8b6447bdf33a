// `deno run -A bench/storage.ts [sizes...]`: what the pipeline's own tables
// (util.*) cost next to the embeddings they track, the WAL a drain writes,
// and the drain rate (worker --once -c 4, batch 100, the fake provider at
// 20 ms per request), for 20,000 and 100,000 rows of halfvec(1536) by
// default. Prints one JSON line per size and a Markdown table at the end.
// Written so that it also runs against the tree before the storage change
// (it measures whatever util.* holds).
import { stopCluster } from "../local/cluster.ts";
import { BATCH_SIZE } from "./scenarios/drain.ts";
import {
  attach,
  buildTemplate,
  cloneDb,
  counts,
  dropBenchDatabases,
  insertRows,
  prepareStack,
  providerEnv,
  startProvider,
  startWorker,
} from "./stack.ts";

interface StorageFigures {
  rows: number;
  drainSeconds: number;
  rowsPerSecond: number;
  walBytesPerRow: number;
  embeddingBytes: number;
  tableBytes: number;
  utilBytes: number;
  utilShare: number;
  utilTables: Record<string, number>;
}

const sizes = Deno.args.length ? Deno.args.map(Number) : [20_000, 100_000];
const mb = (n: number) => (n / 1024 / 1024).toFixed(1);

const startedCluster = await prepareStack((line) => console.log(`setup: ${line}`));
const fake = await startProvider();
const results: StorageFigures[] = [];
try {
  await buildTemplate();
  for (const rows of sizes) {
    const db = await cloneDb("storage");
    try {
      await attach(db.sql, false);
      await insertRows(db.sql, rows, "storage");
      await db.sql`checkpoint`;
      const [{ lsn: walBefore }] = await db.sql`select pg_current_wal_lsn()::text as lsn`;
      const worker = startWorker(
        ["--once", "-c", "4", "--batch-size", String(BATCH_SIZE)],
        { DATABASE_URL: db.url, ...providerEnv(fake) },
      );
      await worker.process.waitForLine(/"event":"started"/, 60_000);
      const ready = performance.now();
      const { code } = await worker.finished();
      const drainSeconds = (performance.now() - ready) / 1000;
      if (code !== 0) throw new Error(`worker exited ${code}`);
      const [{ wal }] = await db.sql`
        select pg_wal_lsn_diff(pg_current_wal_lsn(), ${walBefore}::pg_lsn)::bigint as wal`;
      const after = await counts(db.sql);
      if (after.embedded !== rows) throw new Error(`${after.embedded}/${rows} embedded`);
      await db.sql.unsafe("vacuum analyze");
      const [sizesRow] = await db.sql`
        select (select sum(pg_column_size(embedding)) from public.bench_docs)::bigint as embedding,
               pg_total_relation_size('public.bench_docs')::bigint as table_bytes`;
      const perTable = await db.sql`
        select c.relname::text as name, pg_total_relation_size(c.oid)::bigint as bytes
          from pg_class c where c.relnamespace = 'util'::regnamespace and c.relkind = 'r'
         order by 2 desc`;
      const utilBytes = perTable.reduce((sum, t) => sum + Number(t.bytes), 0);
      const figures: StorageFigures = {
        rows,
        drainSeconds: Number(drainSeconds.toFixed(2)),
        rowsPerSecond: Math.round(rows / drainSeconds),
        walBytesPerRow: Math.round(Number(wal) / rows),
        embeddingBytes: Number(sizesRow.embedding),
        tableBytes: Number(sizesRow.table_bytes),
        utilBytes,
        utilShare: Number((utilBytes / Number(sizesRow.embedding)).toFixed(4)),
        utilTables: Object.fromEntries(perTable.map((t) => [t.name, Number(t.bytes)])),
      };
      console.log(JSON.stringify(figures));
      results.push(figures);
    } finally {
      await db.drop();
    }
  }
} finally {
  await fake.close();
  await dropBenchDatabases();
  if (startedCluster) await stopCluster();
}

console.log(
  "\n| rows | drain rows/s | WAL bytes/row | embeddings MB | util.* MB | util.* / embeddings |",
);
console.log("| ---: | ---: | ---: | ---: | ---: | ---: |");
for (const r of results) {
  console.log(
    `| ${r.rows.toLocaleString("en-US")} | ${r.rowsPerSecond.toLocaleString("en-US")} | ${
      r.walBytesPerRow.toLocaleString("en-US")
    } | ${mb(r.embeddingBytes)} | ${mb(r.utilBytes)} | ${(r.utilShare * 100).toFixed(1)}% |`,
  );
}
