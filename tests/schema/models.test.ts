// The model registry in SQL, as the migrations build it: util.embedding_models
// holds registry.ts's rows, util._model_known answers as registry.ts does, the
// functions that held model literals read the table, and app roles can
// neither read nor change it.
import assert from "node:assert/strict";
import { type Sql, withTestDb } from "../../devtools/db.ts";
import {
  findModel,
  LARGEST_INPUT_TOKENS,
  MODELS,
} from "../../supabase/functions/_shared/providers/registry.ts";

/** Runs `statement` as `role` in a transaction that is rolled back; the SQLSTATE, or "ok". */
async function as(sql: Sql, role: string, statement: string): Promise<string> {
  const rollback = new Error("rollback");
  try {
    await sql.begin(async (tx) => {
      await tx.unsafe(`set local role ${role}`);
      await tx.unsafe(statement);
      throw rollback;
    });
  } catch (err) {
    if (err === rollback) return "ok";
    return (err as { code?: string }).code ?? String(err);
  }
  return "ok";
}

Deno.test("util.embedding_models holds the registry's rows", async () => {
  await withTestDb(async (sql) => {
    const rows = await sql`
      select model, match, provider, native_dimensions, min_dimensions, max_dimensions,
             dimensions_parameter, max_input_tokens, max_batch_inputs, max_batch_tokens, tokenizer,
             price_per_mtok::float8 as price, batch_price_per_mtok::float8 as batch_price
        from util.embedding_models order by model`;
    const want = [...MODELS].sort((a, b) => (a.name < b.name ? -1 : 1)).map((m) => ({
      model: m.name,
      match: m.match,
      provider: m.provider,
      native_dimensions: m.nativeDimensions,
      min_dimensions: m.minDimensions,
      max_dimensions: m.maxDimensions,
      dimensions_parameter: m.dimensionsParameter,
      max_input_tokens: m.maxInputTokens,
      max_batch_inputs: m.maxBatchInputs,
      max_batch_tokens: m.maxBatchTokens,
      tokenizer: m.tokenizer,
      price: m.pricePerMTok,
      batch_price: m.batchPricePerMTok,
    }));
    assert.deepEqual(rows.map((r) => ({ ...r })), want);
    const [{ largest }] = await sql`select util._largest_input_tokens() as largest`;
    assert.equal(largest, LARGEST_INPUT_TOKENS);
  });
});

Deno.test("util._model_known answers as the registry does", async () => {
  await withTestDb(async (sql) => {
    const cases: [string, boolean][] = [
      ["text-embedding-3-small", true],
      ["text-embedding-3-large", true],
      ["text-embedding-ada-002", true],
      ["local-hash-v1", true],
      ["local-anything-else", true],
      ["nomic-embed-text", false],
      ["text-embedding-3", false],
      ["Text-Embedding-3-Small", false],
      ["LOCAL-x", false],
      ["local", false],
      ["", false],
    ];
    for (const [model, known] of cases) {
      const [row] = await sql`select util._model_known(${model}) as known`;
      assert.equal(row.known, known, model);
      assert.equal(findModel(model) !== undefined, known, `registry.ts: ${model}`);
    }
    const [row] = await sql`select util._model_known(null) as known`;
    assert.equal(row.known, false, "null");
  });
});

Deno.test("default dimensions and chunk size limits read util.embedding_models", async () => {
  await withTestDb(async (sql) => {
    for (
      const [model, want] of [
        ["text-embedding-3-small", 1536],
        ["text-embedding-3-large", 3072],
        ["text-embedding-ada-002", 1536],
        ["local-hash-v1", 1536],
        ["nomic-embed-text", null],
      ] as const
    ) {
      const [row] = await sql`select util._default_dimensions(${model}) as d`;
      assert.equal(row.d, want, model);
    }
    const check = (size: number) =>
      as(sql, "postgres", `select util._check_chunk_settings(${size}, 0, 'recursive')`);
    assert.equal(await check(LARGEST_INPUT_TOKENS), "ok");
    assert.equal(await check(LARGEST_INPUT_TOKENS + 1), "AE003");
    // The table is what they read: a registry with longer inputs allows longer
    // chunks, and a model's size follows its row.
    await sql`update util.embedding_models set max_input_tokens = 32000 where model = 'local-'`;
    await sql`update util.embedding_models set native_dimensions = 1024
               where model = 'text-embedding-3-large'`;
    assert.equal(await check(32000), "ok");
    assert.equal(await check(32001), "AE003");
    const [row] = await sql`select util._default_dimensions('text-embedding-3-large') as d`;
    assert.equal(row.d, 1024);
    const [after] = await sql`
      select util._model_known('local-x') as known,
             (select count(*)::int from util.embedding_models) as n`;
    assert.deepEqual({ ...after }, { known: true, n: MODELS.length });
  });
});

Deno.test("util.embedding_models: service_role reads it, nobody but the owner writes it", async () => {
  await withTestDb(async (sql) => {
    const read = "select * from util.embedding_models";
    const write = "update util.embedding_models set price_per_mtok = 0";
    assert.equal(await as(sql, "service_role", read), "ok");
    assert.equal(await as(sql, "service_role", write), "42501");
    assert.equal(await as(sql, "service_role", "delete from util.embedding_models"), "42501");
    for (const role of ["anon", "authenticated"]) {
      assert.equal(await as(sql, role, read), "42501", role);
      assert.equal(await as(sql, role, write), "42501", role);
      assert.equal(await as(sql, role, "select util._model_known('x')"), "42501", role);
    }
  });
});
