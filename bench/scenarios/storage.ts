// Storage: what the pipeline's own tables (util.*) cost next to the
// embeddings they track, the WAL a drain writes per row, and the drain rate
// (worker --once -c 4, batch 100, the fake provider at 20 ms per request),
// for 20,000 and 100,000 rows of halfvec(1536). It measures whatever util.*
// holds, so bench/storage.ts also runs it against older trees.
import { fmt, Section } from "../report.ts";
import { drainOnce } from "./drain.ts";
import { attach, type BenchContext, cloneDb, counts, insertRows } from "../stack.ts";

export interface StorageRun {
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

export async function measureStorage(ctx: BenchContext, rows: number): Promise<StorageRun> {
  const db = await cloneDb("storage");
  try {
    await attach(db.sql, false);
    await insertRows(db.sql, rows, "storage");
    await db.sql`checkpoint`;
    const [{ lsn: walBefore }] = await db.sql`select pg_current_wal_lsn()::text as lsn`;
    const drainSeconds = await drainOnce(ctx, db.url);
    const [{ wal }] = await db.sql`
      select pg_wal_lsn_diff(pg_current_wal_lsn(), ${walBefore}::pg_lsn)::bigint as wal`;
    const after = await counts(db.sql);
    if (after.embedded !== rows) throw new Error(`${after.embedded}/${rows} embedded`);
    await db.sql.unsafe("vacuum analyze");
    const [sizes] = await db.sql`
      select (select sum(pg_column_size(embedding)) from public.bench_docs)::bigint as embedding,
             pg_total_relation_size('public.bench_docs')::bigint as table_bytes`;
    const perTable = await db.sql`
      select c.relname::text as name, pg_total_relation_size(c.oid)::bigint as bytes
        from pg_class c where c.relnamespace = 'util'::regnamespace and c.relkind = 'r'
       order by 2 desc`;
    const utilBytes = perTable.reduce((sum, t) => sum + Number(t.bytes), 0);
    const run: StorageRun = {
      rows,
      drainSeconds: Number(drainSeconds.toFixed(2)),
      rowsPerSecond: Math.round(rows / drainSeconds),
      walBytesPerRow: Math.round(Number(wal) / rows),
      embeddingBytes: Number(sizes.embedding),
      tableBytes: Number(sizes.table_bytes),
      utilBytes,
      utilShare: Number((utilBytes / Number(sizes.embedding)).toFixed(4)),
      utilTables: Object.fromEntries(perTable.map((t) => [t.name, Number(t.bytes)])),
    };
    ctx.log(JSON.stringify(run));
    return run;
  } finally {
    await db.drop();
  }
}

const mb = (n: number) => (n / 1024 / 1024).toFixed(1);

export function storageTable(runs: StorageRun[]): [string[], (string | number)[][]] {
  return [
    [
      "rows",
      "drain rows/s",
      "WAL bytes/row",
      "embeddings MB",
      "util.* MB",
      "util.* / embeddings",
      "largest util table",
    ],
    runs.map((r) => {
      const [name, bytes] = Object.entries(r.utilTables).sort((a, b) => b[1] - a[1])[0];
      return [
        r.rows.toLocaleString("en-US"),
        fmt(r.rowsPerSecond),
        fmt(r.walBytesPerRow),
        mb(r.embeddingBytes),
        mb(r.utilBytes),
        `${(r.utilShare * 100).toFixed(1)}%`,
        `${name} ${mb(bytes)} MB`,
      ];
    }),
  ];
}

export interface StorageFigures {
  runs: StorageRun[];
  section: Section;
}

export async function storageScenario(ctx: BenchContext): Promise<StorageFigures> {
  const sizes = ctx.quick ? [2_000, 10_000] : [20_000, 100_000];
  const runs: StorageRun[] = [];
  for (const rows of sizes) runs.push(await measureStorage(ctx, rows));
  const section = new Section("Storage: util.* next to the embeddings");
  section.text(`Per size: a fresh table of \`halfvec(1536)\` rows drained by \`worker --once -c 4\`,
then \`vacuum analyze\`; util.* is every table of the util schema with its indexes and TOAST
(\`pg_total_relation_size\`); embeddings are \`sum(pg_column_size(embedding))\`; WAL is
\`pg_wal_lsn_diff\` over the drain. \`deno run -A bench/storage.ts\` runs this section alone.`);
  section.table(...storageTable(runs));
  return { runs, section };
}
