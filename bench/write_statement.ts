// `deno run -A bench/write_statement.ts [rows] [--reps N] [--hnsw]`: the core's
// write of embeddings alone (sql/write.ts, batches of 100), timed by the CPU
// of its Postgres backend (/proc/<pid>/stat), which other work on a shared
// machine does not inflate the way it does wall time. Also the parse of the
// vectors alone in three forms (what the write sends, a jsonb document, a
// text[] literal), to show where the write's time goes. Every rep writes
// into NULL embeddings, as a drain does.
import { parseArgs } from "node:util";
import postgres from "postgres";
import { stopCluster } from "../local/cluster.ts";
import { loadTargets } from "../supabase/functions/_shared/sql/targets.ts";
import {
  type EmbeddingWrite,
  vectorList,
  writeEmbeddings,
} from "../supabase/functions/_shared/sql/write.ts";
import { vectorLiteral } from "../supabase/functions/_shared/vectors.ts";
import { fmt, median } from "./report.ts";
import {
  attach,
  buildTemplate,
  cloneDb,
  DIMENSIONS,
  dropBenchDatabases,
  insertRows,
  prepareStack,
  processCpuSeconds,
} from "./stack.ts";

const { values, positionals } = parseArgs({
  args: Deno.args,
  options: { reps: { type: "string", default: "3" }, hnsw: { type: "boolean", default: false } },
  allowPositionals: true,
});
const rows = Number(positionals[0] ?? 5_000);
const reps = Number(values.reps);
const BATCH = 100;

const startedCluster = await prepareStack((line) => console.log(`setup: ${line}`));
await buildTemplate();
const db = await cloneDb("write_statement");
try {
  await attach(db.sql, false);
  await insertRows(db.sql, rows, "write");
  if (values.hnsw) {
    await db.sql.unsafe(
      `create index on public.bench_docs using hnsw (embedding halfvec_cosine_ops)`,
    );
  }
  const target = [...(await db.sql`select id from util.embedding_targets`)].map((t) => t.id)[0];
  const targets = await loadTargets(db.sql);
  const t = targets.byId(target)!;
  const found = await db.sql<{ id: string; hash: string }[]>`
    select id::text as id, encode(util._content_hash(public.bench_docs_input(b)), 'hex') as hash
      from public.bench_docs b order by id`;
  const vector = new Float32Array(DIMENSIONS);
  const writes: EmbeddingWrite[] = found.map((r) => {
    let norm = 0;
    for (let i = 0; i < DIMENSIONS; i++) norm += (vector[i] = Math.random() - 0.5) ** 2;
    for (let i = 0; i < DIMENSIONS; i++) vector[i] /= Math.sqrt(norm);
    return { rowId: r.id, hash: r.hash, vector: vectorLiteral(vector, t.embedding_type_sql) };
  });
  const batches: EmbeddingWrite[][] = [];
  for (let i = 0; i < writes.length; i += BATCH) batches.push(writes.slice(i, i + BATCH));

  const one = postgres(db.url, { max: 1, onnotice: () => {} });
  const [{ pid }] = await one`select pg_backend_pid() as pid`;
  const per1000 = (seconds: number) => (seconds * 1000 * 1000) / rows;
  const measure = async (run: () => Promise<void>) => {
    const cpu = processCpuSeconds(pid), wall = performance.now();
    await run();
    return {
      cpu: per1000(processCpuSeconds(pid) - cpu),
      wall: per1000((performance.now() - wall) / 1000),
    };
  };
  const results: Record<string, { cpu: number; wall: number }[]> = {};
  const record = (name: string, r: { cpu: number; wall: number }) => (results[name] ??= []).push(r);
  for (let rep = 0; rep < reps; rep++) {
    await db.sql.begin(async (tx) => {
      await tx`select set_config('autoembed.applying', 'on', true)`;
      await tx`update public.bench_docs set embedding = null`;
      await tx`delete from util.embedding_fingerprints`;
    });
    await db.sql`vacuum public.bench_docs`;
    // The vectors' parse alone, in three forms of the same parameter: what
    // sql/write.ts sends (one text split on ';'), a jsonb document (before),
    // and a text[] literal (tried).
    const type = t.embedding_type_sql;
    const forms: [string, string, (b: EmbeddingWrite[]) => string][] = [
      [
        "parse: vector list (string_to_array), then halfvec",
        `select count(x::${type}) from unnest(string_to_array($1::text, ';', '')) x`,
        vectorList,
      ],
      [
        "parse: jsonb document, then halfvec",
        `select count(i.embedding::${type})
           from jsonb_to_recordset($1::text::jsonb) as i(row_id text, hash text, embedding text)`,
        (b) =>
          JSON.stringify(b.map((w) => ({ row_id: w.rowId, hash: w.hash, embedding: w.vector }))),
      ],
      [
        "parse: text[] literal, then halfvec",
        `select count(x::${type}) from unnest($1::text::text[]) x`,
        (b) => `{${b.map((w) => `"${w.vector}"`).join(",")}}`,
      ],
    ];
    for (const [name, query, param] of forms) {
      const params = batches.map(param);
      record(
        name,
        await measure(async () => {
          for (const p of params) await one.unsafe(query, [p]);
        }),
      );
    }
    let written = 0;
    record(
      "write (sql/write.ts: embeddings + fingerprints)",
      await measure(async () => {
        for (const b of batches) written += (await writeEmbeddings(one, t, b)).size;
      }),
    );
    if (written !== rows) throw new Error(`wrote ${written} of ${rows}`);
  }
  await one.end();
  const load = (await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3).join(" ");
  console.log(
    `${rows} rows in batches of ${BATCH}, ${reps} reps, ${
      values.hnsw ? "HNSW index" : "no vector index"
    }; ` +
      `load ${load}`,
  );
  for (const [name, rs] of Object.entries(results)) {
    console.log(
      `  ${name}: backend CPU ${fmt(median(rs.map((r) => r.cpu)))} ms per 1,000 rows ` +
        `(${rs.map((r) => fmt(r.cpu)).join(", ")}), wall ${fmt(median(rs.map((r) => r.wall)))} ms`,
    );
  }
} finally {
  await db.drop();
  await dropBenchDatabases();
  if (startedCluster) await stopCluster();
}
