// Section 1b: the core's write of a batch (sql/write.ts, batches of 100)
// alone, timed by the CPU of its Postgres backend (/proc/<pid>/stat), which
// other work on a shared machine does not inflate the way it does wall time;
// and the parse of the vectors alone in three forms of the same parameter
// (what the write sends, a jsonb document, a text[] literal), to show where
// the write's time goes. Every rep writes into NULL embeddings, as a drain
// does. Also run alone by bench/write_statement.ts.
import pg from "pg";
import postgres from "postgres";
import { loadTargets } from "../../supabase/functions/_shared/sql/targets.ts";
import {
  BinaryWrites,
  type EmbeddingWrite,
  writeEmbeddings,
} from "../../supabase/functions/_shared/sql/write.ts";
import {
  type Vector,
  vectorArrayBinary,
  vectorList,
  vectorLiteral,
} from "../../supabase/functions/_shared/vectors.ts";
import { fmt, median, Section, spread } from "../report.ts";
import {
  attach,
  type BenchContext,
  cloneDb,
  DIMENSIONS,
  insertRows,
  loadAverage,
  processCpuSeconds,
} from "../stack.ts";
import { createHnswIndex } from "./drain.ts";

const BATCH = 100;

export interface WriteProfile {
  rows: number;
  hnsw: boolean;
  /** Backend CPU and wall ms per 1,000 rows, per measurement, one entry per rep. */
  results: Record<string, { cpu: number; wall: number }[]>;
  load: string;
  /** The table with its TOAST table and indexes at the end, MB. */
  sizeMb: number;
}

export async function profileWrite(
  rows: number,
  reps: number,
  hnsw: boolean,
  storage?: "plain",
): Promise<WriteProfile> {
  const db = await cloneDb("write_statement");
  try {
    await attach(db.sql, false);
    // halfvec's storage is external (out of line past ~2 KB: a 1536-dimension
    // vector is 3 KB); plain keeps it in the row.
    if (storage) {
      await db.sql.unsafe(`alter table public.bench_docs alter embedding set storage ${storage}`);
    }
    await insertRows(db.sql, rows, "write");
    if (hnsw) await createHnswIndex(db.sql);
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
      return { rowId: r.id, hash: r.hash, vector: Float32Array.from(vector) };
    });
    const batches: EmbeddingWrite[][] = [];
    for (let i = 0; i < writes.length; i += BATCH) batches.push(writes.slice(i, i + BATCH));

    const one = postgres(db.url, { max: 1, onnotice: () => {} });
    const [{ pid: textPid }] = await one`select pg_backend_pid() as pid`;
    // The binary forms: a node-postgres client for the parse alone, and the
    // pool the core's binary write uses (its one connection found by name).
    const raw = new pg.Client({ connectionString: db.url });
    raw.on("error", () => {}); // the database is dropped at the end (with force)
    await raw.connect();
    const rawPid = (await raw.query("select pg_backend_pid() as pid")).rows[0].pid;
    const binaryWrites = new BinaryWrites(db.url, { max: 1, applicationName: "bench binary" });
    // Its connection (closed when idle for 30 s, so found anew before each use).
    const binaryPid = async () => {
      await writeEmbeddings(one, t, [], binaryWrites);
      const [{ pid }] = await one`
        select pid from pg_stat_activity where application_name = 'bench binary'`;
      return pid;
    };
    const [{ oid }] = await one`select ${t.embedding_type_sql}::regtype::oid as oid`;
    let pid = textPid;
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
    const record = (name: string, r: { cpu: number; wall: number }) =>
      (results[name] ??= []).push(r);
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
      const text = (v: EmbeddingWrite["vector"]) => vectorLiteral(v as Vector, type);
      const forms: [string, string, (b: EmbeddingWrite[]) => string][] = [
        [
          "parse: vector list (string_to_array), then halfvec",
          `select count(x::${type}) from unnest(string_to_array($1::text, ';', '')) x`,
          (b) => vectorList(b.map((w) => w.vector), type),
        ],
        [
          "parse: jsonb document, then halfvec",
          `select count(i.embedding::${type})
             from jsonb_to_recordset($1::text::jsonb) as i(row_id text, hash text, embedding text)`,
          (b) =>
            JSON.stringify(
              b.map((w) => ({ row_id: w.rowId, hash: w.hash, embedding: text(w.vector) })),
            ),
        ],
        [
          "parse: text[] literal, then halfvec",
          `select count(x::${type}) from unnest($1::text::text[]) x`,
          (b) => `{${b.map((w) => `"${text(w.vector)}"`).join(",")}}`,
        ],
      ];
      pid = textPid;
      for (const [name, query, param] of forms) {
        const params = batches.map(param);
        record(
          name,
          await measure(async () => {
            for (const p of params) await one.unsafe(query, [p]);
          }),
        );
      }
      pid = rawPid;
      const binaryParams = batches.map((b) =>
        vectorArrayBinary(b.map((w) => w.vector), "halfvec", Number(oid))
      );
      record(
        "parse: binary halfvec[] (array_recv, halfvec_recv)",
        await measure(async () => {
          for (const p of binaryParams) {
            await raw.query(`select count(x) from unnest($1::${type}[]) x`, [p]);
          }
        }),
      );
      for (const binary of [false, true]) {
        if (binary) {
          await db.sql.begin(async (tx) => {
            await tx`select set_config('autoembed.applying', 'on', true)`;
            await tx`update public.bench_docs set embedding = null`;
            await tx`delete from util.embedding_fingerprints`;
          });
          await db.sql`vacuum public.bench_docs`;
        }
        pid = binary ? await binaryPid() : textPid;
        let written = 0;
        record(
          binary
            ? "write, vectors in binary (node-postgres)"
            : "write, vectors as text (postgres.js)",
          await measure(async () => {
            for (const b of batches) {
              written += (await writeEmbeddings(one, t, b, binary ? binaryWrites : undefined))
                .size;
            }
          }),
        );
        if (written !== rows) throw new Error(`wrote ${written} of ${rows}`);
      }
      // What a later edit of the text costs the row holding the vector
      // (the trigger-free part: autoembed.applying on). Last rep only: it
      // changes the text the writes' hashes were taken from.
      if (rep < reps - 1) continue;
      pid = textPid;
      record(
        "text-only UPDATE of every row, after the write",
        await measure(async () => {
          await one.begin(async (tx) => {
            await tx`select set_config('autoembed.applying', 'on', true)`;
            await tx`update public.bench_docs set title = title || '.'`;
          });
        }),
      );
    }
    await one.end();
    await raw.end();
    await binaryWrites.end();

    const load = await loadAverage();
    const [{ size }] = await db.sql`
      select pg_total_relation_size('public.bench_docs')::float8 / 1048576 as size`;
    return { rows, hnsw, results, load, sizeMb: size };
  } finally {
    await db.drop();
  }
}

export function printProfile(log: (line: string) => void, p: WriteProfile, reps: number) {
  log(
    `  ${p.rows} rows in batches of ${BATCH}, ${reps} reps, ${
      p.hnsw ? "HNSW index" : "no vector index"
    }; table ${fmt(p.sizeMb)} MB at the end; load ${p.load}`,
  );
  for (const [name, rs] of Object.entries(p.results)) {
    log(
      `    ${name}: backend CPU ${fmt(median(rs.map((r) => r.cpu)))} ms per 1,000 rows ` +
        `(${rs.map((r) => fmt(r.cpu)).join(", ")}), wall ${fmt(median(rs.map((r) => r.wall)))} ms`,
    );
  }
}

export async function writeStatementScenario(ctx: BenchContext): Promise<Section> {
  const rows = ctx.quick ? 2_000 : 10_000;
  const reps = 3;
  ctx.log("1b. the write of a batch, profiled");
  const plain = await profileWrite(rows, reps, false);
  printProfile(ctx.log, plain, reps);
  // An HNSW insert costs far more than the rest of the write: fewer rows, once.
  const indexed = await profileWrite(Math.min(rows, 2_000), 1, true);
  printProfile(ctx.log, indexed, reps);
  const section = new Section("1b. The write of a batch, profiled");
  section.text(`
The core's write (supabase/functions/_shared/sql/write.ts: embeddings and fingerprints in one
statement, compare-and-set on the content hash) of ${
    rows.toLocaleString("en-US")
  } rows in batches of
${BATCH}, one connection, timed by the CPU its Postgres backend used (/proc/<pid>/stat), which the
load of a shared machine does not inflate the way it does wall time; ${reps} reps, each into NULL
embeddings as in a drain (with the HNSW index: ${indexed.rows.toLocaleString("en-US")} rows, once).
The two write rows send the same vectors two ways: in binary (node-postgres binds the
\`halfvec[]\` parameter in binary; array_recv, halfvec_recv), as the worker and the function do, and
as text through postgres.js (\`EMBEDDING_TEXT_VECTORS=true\`, the write before this round). The
parse rows time only the vectors' parse, in four forms of the same parameter: the binary array, one
text split by \`string_to_array\` on ';', a jsonb document and a text[] literal. The last row is a
later text-only UPDATE of every row (one statement), which does not rewrite an out-of-line vector.
ms per 1,000 rows, median (min–max). Load average at the end: ${plain.load} (no index),
${indexed.load} (HNSW).`);
  section.table(
    ["measurement", "backend CPU, no vector index", "wall", "backend CPU, HNSW index", "wall"],
    Object.keys(plain.results).map((name) => [
      name,
      spread(plain.results[name].map((r) => r.cpu)),
      fmt(median(plain.results[name].map((r) => r.wall))),
      spread(indexed.results[name].map((r) => r.cpu)),
      fmt(median(indexed.results[name].map((r) => r.wall))),
    ]),
  );
  return section;
}
