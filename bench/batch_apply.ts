// `deno run -A bench/batch_apply.ts [vectors] [--reps N]`: the batch lane's
// apply, its write alone (the part of "apply" in the batch-lane section that
// the statements take): a batch's vectors written to util.embedding_batch_inputs
// 1,000 per statement, as the tick does today (sql/batches.ts applyBatchLines:
// each vector as hex text inside a text[] literal, cast to bytea[]), beside a
// prototype that binds the same vectors as one binary bytea[] (node-postgres,
// Postgres's array_recv: no hex made or parsed). Timed by wall clock, this
// process's CPU and the backend's CPU.
import { Buffer } from "node:buffer";
import { parseArgs } from "node:util";
import pg from "pg";
import { stopCluster } from "../local/cluster.ts";
import { applyBatchLines } from "../supabase/functions/_shared/sql/batches.ts";
import { fmt, median, spread } from "./report.ts";
import {
  buildTemplate,
  cloneDb,
  connect,
  DIMENSIONS,
  dropBenchDatabases,
  insertRows,
  MODEL,
  prepareStack,
  processCpuSeconds,
  type Sql,
} from "./stack.ts";

const SLICE = 1000; // batch_tick.ts's APPLY_SLICE
const BYTEA_OID = 17;

const { values, positionals } = parseArgs({
  args: Deno.args,
  options: { reps: { type: "string", default: "3" } },
  allowPositionals: true,
});
const count = Number(positionals[0] ?? 10_000);
const reps = Number(values.reps);

/** A submitted batch of the target with `count` texts and no vectors yet; returns its id and custom ids. */
async function freshBatch(sql: Sql, targetId: number, label: string) {
  const [{ id }] = await sql`
    insert into util.embedding_batches (target_id, model, dimensions, state, requests)
    values (${targetId}, ${MODEL}, ${DIMENSIONS}, 'submitted', ${count}) returning id::text`;
  await sql`
    insert into util.embedding_batch_inputs (target_id, custom_id, batch_id, input, tokens)
    select ${targetId}, encode(sha256(convert_to(${label} || g, 'UTF8')), 'hex'), ${id}::bigint,
           repeat('lorem ipsum dolor sit amet consectetur ', 10) || g, 90
      from generate_series(1, ${count}) g`;
  const rows = await sql<{ custom_id: string }[]>`
    select custom_id from util.embedding_batch_inputs where batch_id = ${id}::bigint`;
  return { id: id as string, customIds: rows.map((r) => r.custom_id) };
}

function randomVector(): Float32Array {
  const v = new Float32Array(DIMENSIONS);
  for (let i = 0; i < v.length; i++) v[i] = Math.random() * 2 - 1;
  return v;
}

/** Postgres's binary array format of bytea elements (array_recv). */
function byteaArrayBinary(items: Float32Array[]): Uint8Array {
  let size = 20;
  for (const v of items) size += 4 + v.byteLength;
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  view.setInt32(0, 1);
  view.setInt32(4, 0);
  view.setUint32(8, BYTEA_OID);
  view.setInt32(12, items.length);
  view.setInt32(16, 1);
  let at = 20;
  for (const v of items) {
    view.setInt32(at, v.byteLength);
    out.set(new Uint8Array(v.buffer, v.byteOffset, v.byteLength), at + 4);
    at += 4 + v.byteLength;
  }
  return out;
}

interface Timing {
  wallMs: number;
  clientMs: number;
  backendMs: number;
}

async function timed(backend: number, fn: () => Promise<void>): Promise<Timing> {
  const client = processCpuSeconds("self");
  const server = processCpuSeconds(backend);
  const started = performance.now();
  await fn();
  return {
    wallMs: performance.now() - started,
    clientMs: (processCpuSeconds("self") - client) * 1000,
    backendMs: (processCpuSeconds(backend) - server) * 1000,
  };
}

const startedCluster = await prepareStack((line) => console.log(`setup: ${line}`));
try {
  await buildTemplate();
  const db = await cloneDb("batch_apply");
  // One connection each, so that its backend is the one timed.
  const text = connect(db.url, 1);
  const binary = new pg.Client({ connectionString: db.url });
  await binary.connect();
  try {
    await insertRows(db.sql, 10, "apply");
    await db.sql`
      select util.enable_embeddings('public.bench_docs', 'bench_docs_input', model => ${MODEL},
                                    backfill => false, lane => 'batch')`;
    const [{ target }] = await db.sql`select id as target from util.embedding_targets limit 1`;
    const [{ pid: textPid }] = await text`select pg_backend_pid() as pid`;
    const { rows: [{ pid: binaryPid }] } = await binary.query("select pg_backend_pid() as pid");
    const vectors = Array.from({ length: count }, randomVector);
    const results: Record<string, Timing[]> = { "hex text[] (today)": [], "binary bytea[]": [] };
    for (let rep = 0; rep < reps; rep++) {
      {
        const batch = await freshBatch(db.sql, target, `t${rep}-`);
        results["hex text[] (today)"].push(
          await timed(textPid, async () => {
            for (let at = 0; at < count; at += SLICE) {
              const slice = vectors.slice(at, at + SLICE).map((vector, i) => ({
                customId: batch.customIds[at + i],
                vector,
              }));
              await applyBatchLines(text, batch.id, slice, [], null);
            }
          }),
        );
      }
      {
        const batch = await freshBatch(db.sql, target, `b${rep}-`);
        results["binary bytea[]"].push(
          await timed(binaryPid, async () => {
            for (let at = 0; at < count; at += SLICE) {
              const ids = batch.customIds.slice(at, at + SLICE);
              await binary.query(
                `update util.embedding_batch_inputs i set vector = v.vector, input = null
                   from unnest($1::text[], $2::bytea[]) as v(custom_id, vector)
                  where i.batch_id = $3::bigint and i.custom_id = v.custom_id`,
                [ids, byteaArrayBinary(vectors.slice(at, at + SLICE)), batch.id],
              );
            }
          }),
        );
      }
    }
    // The two write the same bytes.
    const [check] = await db.sql`
      select count(distinct vector)::int as distinct_vectors, count(*)::int as n,
             bool_and(length(vector) = ${DIMENSIONS * 4}) as sized
        from util.embedding_batch_inputs`;
    const sample = Buffer.from(vectors[0].buffer).toString("hex");
    const [{ same }] = await db.sql`
      select count(*)::int as same from util.embedding_batch_inputs
       where vector = decode(${sample}, 'hex')`;
    console.log(
      `${count.toLocaleString("en-US")} vectors of ${DIMENSIONS} floats, ${SLICE} per statement, ` +
        `${reps} reps; written ${check.n} (${check.distinct_vectors} distinct, sized ${check.sized}), ` +
        `vector 1 found ${same} times (${2 * reps} expected)`,
    );
    for (const [method, runs] of Object.entries(results)) {
      const perSecond = runs.map((r) => count / (r.wallMs / 1000));
      console.log(
        `  ${method}: ${spread(perSecond)} vectors/s; per 1,000 vectors: wall ${
          fmt(median(runs.map((r) => r.wallMs)) / (count / 1000))
        } ms, this process ${fmt(median(runs.map((r) => r.clientMs)) / (count / 1000))} ms CPU, ` +
          `backend ${fmt(median(runs.map((r) => r.backendMs)) / (count / 1000))} ms CPU`,
      );
    }
  } finally {
    await binary.end();
    await text.end();
    await db.drop();
  }
} finally {
  await dropBenchDatabases();
  if (startedCluster) await stopCluster();
}
