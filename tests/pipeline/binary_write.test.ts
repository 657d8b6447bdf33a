// The write's two ways of sending vectors store the same halfvecs, bit for
// bit: as text through postgres.js (halfvec_in, strtof then Float4ToHalf) and
// in binary through node-postgres (the float16 rounding done in TypeScript,
// halfvec_recv). Postgres's own parse is the referee, on edge values and on
// random float32 bit patterns across float16's range.
import assert from "node:assert/strict";
import { errorCode } from "../../supabase/functions/_shared/db_errors.ts";
import { loadTargets } from "../../supabase/functions/_shared/sql/targets.ts";
import {
  BinaryWrites,
  type EmbeddingWrite,
  writeEmbeddings,
} from "../../supabase/functions/_shared/sql/write.ts";
import type { Vector } from "../../supabase/functions/_shared/vectors.ts";
import { type Sql, withTestDb } from "../../devtools/db.ts";
import { createDocuments, TEST_DIMENSIONS } from "../../devtools/pipeline.ts";

const f32 = (bits: number) => new Float32Array(new Uint32Array([bits]).buffer)[0];

/** float32 values where float16 rounding is easy to get wrong (pgvector's Float4ToHalf). */
const EDGES = [
  0,
  -0,
  2 ** -24, // smallest subnormal half
  2 ** -25, // half of it: a tie, rounds to even (0)
  3 * 2 ** -25, // a tie between two subnormals: rounds to even (2^-23)
  f32(0x33000001), // just above 2^-25: rounds up to the smallest subnormal
  2 ** -14 - 2 ** -24, // largest subnormal
  2 ** -14, // smallest normal
  2 - 2 ** -11, // a tie that rounds up to the next exponent (2)
  1 + 2 ** -11 + 2 ** -23, // just above a tie: rounds up
  65504, // largest half
  65519.99, // rounds down to 65504
  -65504,
  0.1,
  -1 / 3,
  f32(0x387fc000), // subnormal range, a tie at the boundary with the normals
];

/** `count` vectors of random float32 bit patterns whose magnitude float16 can hold. */
function randomVectors(count: number): Float32Array[] {
  return Array.from({ length: count }, () => {
    const v = new Float32Array(TEST_DIMENSIONS);
    const bits = new Uint32Array(v.buffer);
    for (let i = 0; i < v.length; i++) {
      do bits[i] = crypto.getRandomValues(new Uint32Array(1))[0]; while (!(Math.abs(v[i]) < 65504));
    }
    return v;
  });
}

async function setup(sql: Sql) {
  await createDocuments(sql);
  await sql`insert into public.documents (title, content)
            select 'doc ' || n, 'text ' || n from generate_series(1, 12) n`;
  const targets = await loadTargets(sql);
  const [{ id }] = await sql`select id from util.embedding_targets`;
  const rows = await sql<{ id: string; hash: string }[]>`
    select id::text as id, encode(util._content_hash(public.documents_input(d)), 'hex') as hash
      from public.documents d order by d.id`;
  return { target: targets.byId(id)!, rows };
}

/** Each row's stored halfvec in its binary send form (hex), by row id; NULL as null. */
async function stored(sql: Sql): Promise<Map<string, string | null>> {
  const rows = await sql<{ id: string; bytes: string | null }[]>`
    select id::text as id, encode(halfvec_send(embedding), 'hex') as bytes
      from public.documents order by id`;
  return new Map(rows.map((r) => [r.id, r.bytes]));
}

async function clear(sql: Sql) {
  await sql.begin(async (tx) => {
    await tx`select set_config('autoembed.applying', 'on', true)`;
    await tx`update public.documents set embedding = null`;
  });
}

Deno.test("binary write: stores the same halfvecs as the text write, bit for bit", async () => {
  await withTestDb(async (sql, url) => {
    const { target, rows } = await setup(sql);
    const binary = new BinaryWrites(url, { max: 1 });
    try {
      const edges = Float32Array.from(
        { length: TEST_DIMENSIONS },
        (_, i) => EDGES[i % EDGES.length],
      );
      const vectors: (Vector | string | null)[] = [
        edges,
        Array.from(edges, (x) => -x), // plain numbers, as the local provider gives
        null, // clears the embedding
        ...randomVectors(rows.length - 4),
      ];
      // A vector copied from a row that holds it comes as Postgres's text.
      const literal = `[${Array.from(edges, (x) => Object.is(x, -0) ? "-0" : x).join(",")}]`;
      const [{ text }] = await sql`select ${literal}::halfvec::text as text`;
      vectors.push(text);
      const writes: EmbeddingWrite[] = rows.map((r, i) => ({
        rowId: r.id,
        hash: r.hash,
        vector: vectors[i],
      }));

      const asText = await writeEmbeddings(sql, target, writes);
      const byText = await stored(sql);
      await clear(sql);
      const asBinary = await writeEmbeddings(sql, target, writes, binary);
      const byBinary = await stored(sql);

      assert.deepEqual([...asBinary].sort(), [...asText].sort());
      assert.equal(asText.size, rows.length);
      assert.deepEqual(byBinary, byText);
      assert.equal(byText.get(rows[2].id), null);
      assert.equal(byText.get(rows.at(-1)!.id), byText.get(rows[0].id));
      // The referee really saw the edges: 2^-25 stored as 0, 2 - 2^-11 as 2, 65519.99 as 65504.
      const [first] = await sql`
        select (embedding::real[])[4] as tie, (embedding::real[])[9] as up,
               (embedding::real[])[12] as top
          from public.documents where id = ${rows[0].id}`;
      assert.deepEqual(first, { tie: 0, up: 2, top: 65504 });
    } finally {
      await binary.end();
    }
  });
});

Deno.test("binary write: values the text write refuses are refused too (overflow, NaN, infinity)", async () => {
  await withTestDb(async (sql, url) => {
    const { target, rows } = await setup(sql);
    const binary = new BinaryWrites(url, { max: 1 });
    try {
      for (const bad of [65520, -1e6, NaN, Infinity]) {
        const vector = new Float32Array(TEST_DIMENSIONS).fill(0.5);
        vector[3] = bad;
        const writes = [{ rowId: rows[0].id, hash: rows[0].hash, vector }];
        const text = await writeEmbeddings(sql, target, writes).catch((e) => e);
        const bin = await writeEmbeddings(sql, target, writes, binary).catch((e) => e);
        assert.ok(text instanceof Error, `text write of ${bad} refused`);
        assert.ok(bin instanceof Error, `binary write of ${bad} refused`);
        assert.equal(errorCode(bin)?.slice(0, 2), "22", `binary write of ${bad}: a data exception`);
      }
      assert.deepEqual([...(await stored(sql)).values()].filter((v) => v !== null), []);
      // The pool is still usable after its refused writes.
      const ok = await writeEmbeddings(sql, target, [{
        rowId: rows[0].id,
        hash: rows[0].hash,
        vector: new Float32Array(TEST_DIMENSIONS).fill(0.25),
      }], binary);
      assert.deepEqual([...ok], [rows[0].id]);
    } finally {
      await binary.end();
    }
  });
});
