// The model registry: what modelFacts answers for known models, the local
// family and unknown models; that every place holding model knowledge reads
// it; and that the SQL rows (schema file and newest migration) are exactly
// what the registry generates.
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  findModel,
  LARGEST_INPUT_TOKENS,
  type ModelFacts,
  modelFacts,
  ModelFactsError,
  modelLimits,
  MODELS,
} from "../../supabase/functions/_shared/providers/registry.ts";
import { createLocalProvider } from "../../supabase/functions/_shared/providers/local.ts";
import {
  createOpenAIProvider,
  sendsDimensions,
} from "../../supabase/functions/_shared/providers/openai.ts";
import { tokenCounterFor } from "../../supabase/functions/_shared/providers/tokens.ts";
import { ProviderError } from "../../supabase/functions/_shared/providers/types.ts";
import { MAX_CHUNK_SIZE } from "../../supabase/functions/_shared/chunking/split.ts";
import { coreSettings } from "../../supabase/functions/_shared/settings.ts";
import {
  MODELS_SCHEMA,
  registryBlock,
  registrySql,
  withRegistryBlock,
} from "../../cli/registry_sql.ts";
import { MIGRATIONS_DIR } from "../../cli/schema_migration.ts";

type Want = Partial<ModelFacts>;

Deno.test("modelFacts: known models, the local family and unknown models", () => {
  const cases: [string, number | undefined, Want][] = [
    ["text-embedding-3-small", undefined, {
      known: true,
      provider: "openai",
      dimensions: 1536,
      nativeDimensions: 1536,
      maxDimensions: 1536,
      dimensionsParameter: true,
      maxInputTokens: 8191,
      maxBatchInputs: 2048,
      maxBatchTokens: 300_000,
      tokenizer: "cl100k_base",
      pricePerMTok: 0.02,
      batchPricePerMTok: 0.01,
    }],
    ["text-embedding-3-small", 512, { known: true, dimensions: 512, nativeDimensions: 1536 }],
    ["text-embedding-3-large", undefined, {
      known: true,
      dimensions: 3072,
      maxDimensions: 3072,
      pricePerMTok: 0.13,
      batchPricePerMTok: 0.065,
    }],
    ["text-embedding-3-large", 256, { dimensions: 256 }],
    ["text-embedding-ada-002", undefined, {
      known: true,
      dimensions: 1536,
      minDimensions: 1536,
      dimensionsParameter: false,
      tokenizer: "cl100k_base",
      pricePerMTok: 0.1,
      batchPricePerMTok: 0.05,
    }],
    ["text-embedding-ada-002", 1536, { dimensions: 1536 }],
    ["local-hash-v1", undefined, {
      known: true,
      provider: "local",
      dimensions: 1536,
      maxDimensions: null,
      maxBatchTokens: 10_000_000,
      tokenizer: "estimate",
      pricePerMTok: 0,
      batchPricePerMTok: 0,
    }],
    ["local-anything", 7, { known: true, provider: "local", dimensions: 7 }],
    ["local-hash-v1", 20_000, { provider: "local", dimensions: 20_000 }],
    ["nomic-embed-text", 768, {
      known: false,
      provider: "openai",
      dimensions: 768,
      nativeDimensions: null,
      dimensionsParameter: null,
      maxInputTokens: 8191,
      maxBatchInputs: 2048,
      maxBatchTokens: 300_000,
      tokenizer: "estimate",
      pricePerMTok: null,
      batchPricePerMTok: null,
    }],
    ["toString", 8, { known: false, provider: "openai" }],
    // Names are exact: a prefix of a known name, or another case, is another model.
    ["text-embedding-3", 8, { known: false }],
    ["Text-Embedding-3-Small", 8, { known: false }],
    ["LOCAL-x", 8, { known: false, provider: "openai" }],
  ];
  for (const [model, dimensions, want] of cases) {
    const facts = modelFacts(model, dimensions);
    assert.equal(facts.model, model);
    for (const [key, value] of Object.entries(want)) {
      assert.deepEqual(facts[key as keyof ModelFacts], value, `${model}/${dimensions}: ${key}`);
    }
  }
});

Deno.test("modelFacts refuses sizes outside the model's rule, and unknown models without one", () => {
  const cases: [string, number | undefined, RegExp][] = [
    ["text-embedding-3-small", 1537, /makes vectors of 1 to 1536 dimensions, not 1537/],
    ["text-embedding-3-large", 4096, /makes vectors of 1 to 3072 dimensions, not 4096/],
    ["text-embedding-ada-002", 512, /makes only 1536-dimension vectors, not 512/],
    ["text-embedding-ada-002", 3072, /only 1536-dimension/],
    ["text-embedding-3-small", 0, /positive whole number, got 0/],
    ["text-embedding-3-small", 1.5, /positive whole number, got 1.5/],
    ["local-hash-v1", -1, /positive whole number, got -1/],
    ["local-hash-v1", NaN, /positive whole number, got NaN/],
    ["nomic-embed-text", undefined, /not in the registry, so its dimensions must be given/],
    ["nomic-embed-text", 0, /positive whole number/],
  ];
  for (const [model, dimensions, says] of cases) {
    assert.throws(
      () => modelFacts(model, dimensions),
      (err) =>
        err instanceof ModelFactsError && err instanceof RangeError && says.test(err.message),
      `${model}/${dimensions}`,
    );
  }
});

Deno.test("the registry's entries are consistent", () => {
  const names = MODELS.map((m) => m.name);
  assert.equal(new Set(names).size, names.length, "one entry per name");
  for (const m of MODELS) {
    assert.ok(m.minDimensions >= 1, m.name);
    assert.ok(m.minDimensions <= m.nativeDimensions, m.name);
    assert.ok(m.maxDimensions === null || m.nativeDimensions <= m.maxDimensions, m.name);
    assert.ok(m.dimensionsParameter || m.minDimensions === m.maxDimensions, m.name);
    assert.ok(m.batchPricePerMTok <= m.pricePerMTok, m.name);
    assert.equal(findModel(m.match === "exact" ? m.name : `${m.name}x`), m, m.name);
  }
  // OpenAI's batch API is half price.
  for (const m of MODELS.filter((m) => m.provider === "openai")) {
    assert.equal(m.batchPricePerMTok, m.pricePerMTok / 2, m.name);
  }
  assert.equal(LARGEST_INPUT_TOKENS, 8191);
});

Deno.test("token counters, chunk limits and sendsDimensions come from the registry", () => {
  for (const model of ["text-embedding-3-small", "local-hash-v1", "nomic-embed-text"]) {
    assert.equal(tokenCounterFor(model).name, modelLimits(model).tokenizer, model);
  }
  assert.equal(MAX_CHUNK_SIZE, LARGEST_INPUT_TOKENS);
  for (const m of MODELS.filter((m) => m.provider === "openai")) {
    assert.equal(sendsDimensions(m.name, false), m.dimensionsParameter, m.name);
    assert.equal(sendsDimensions(m.name, true), m.dimensionsParameter, m.name);
  }
});

Deno.test("providers take their limits from the registry", () => {
  for (const model of ["text-embedding-3-large", "text-embedding-ada-002", "nomic-embed-text"]) {
    const p = createOpenAIProvider({ apiKey: "sk-test", model, dimensions: 8, timeoutMs: 1000 });
    const want = modelLimits(model);
    assert.deepEqual(
      [p.maxInputTokens, p.maxBatchInputs, p.maxBatchTokens, p.tokens.name],
      [want.maxInputTokens, want.maxBatchInputs, want.maxBatchTokens, want.tokenizer],
      model,
    );
  }
  const local = createLocalProvider({ model: "local-hash-v1", dimensions: 8 });
  const family = modelFacts("local-hash-v1", 8);
  assert.deepEqual(
    [local.maxInputTokens, local.maxBatchInputs, local.maxBatchTokens, local.tokens.name],
    [family.maxInputTokens, family.maxBatchInputs, family.maxBatchTokens, family.tokenizer],
  );
});

Deno.test("settings: the registry picks the provider, and a size the model does not make is permanent", () => {
  const env = (values: Record<string, string>) => (name: string) => values[name];
  const settings = coreSettings(env({ OPENAI_API_KEY: "sk-test" }));
  assert.equal(settings.providerFor("local-hash-v1", 8).maxBatchTokens, 10_000_000);
  assert.equal(settings.providerFor("text-embedding-3-small", 8).tokens.name, "cl100k_base");
  assert.equal(settings.providerFor("nomic-embed-text", 768).tokens.name, "estimate");
  for (
    const [model, dimensions] of [
      ["text-embedding-ada-002", 16],
      ["text-embedding-3-small", 3072],
      ["local-hash-v1", 0],
    ] as const
  ) {
    assert.throws(
      () => settings.providerFor(model, dimensions),
      (err) =>
        err instanceof ProviderError && !err.retryable &&
        new RegExp(`${dimensions}`).test(err.message),
      `${model}/${dimensions}`,
    );
  }
});

// --- the SQL rows ---------------------------------------------------------

/** The newest migration that carries registry rows, and its generated lines. */
async function newestMigrationBlock(): Promise<{ name: string; block: string }> {
  const names: string[] = [];
  for await (const entry of Deno.readDir(MIGRATIONS_DIR)) {
    if (entry.isFile && entry.name.endsWith(".sql")) names.push(entry.name);
  }
  for (const name of names.sort().reverse()) {
    const block = registryBlock(await Deno.readTextFile(join(MIGRATIONS_DIR, name)));
    if (block !== null) return { name, block };
  }
  throw new Error("no migration carries the registry's rows");
}

Deno.test("util.embedding_models rows in the schema file and the newest migration are registry.ts's", async () => {
  const generated = registrySql();
  const schema = await Deno.readTextFile(MODELS_SCHEMA);
  assert.equal(
    registryBlock(schema),
    generated,
    "supabase/schemas/15_models.sql disagrees with registry.ts: run deno task registry:sql",
  );
  const migration = await newestMigrationBlock();
  assert.equal(
    migration.block,
    generated,
    `${migration.name} disagrees with registry.ts: carry \`deno task registry:sql --print\` ` +
      `into a new migration`,
  );
  // Every model, and every fact of it, is in the lines: a changed fact changes them.
  for (const m of MODELS) assert.ok(generated.includes(`('${m.name}', '${m.match}'`), m.name);
  const changed = MODELS.map((m, i) => (i === 0 ? { ...m, maxInputTokens: 8192 } : m));
  assert.notEqual(registrySql(changed), generated);
  assert.notEqual(registrySql(MODELS.slice(1)), generated);
});

Deno.test("registry lines: quoted values, replaced between their markers only", () => {
  const block = registrySql([{ ...MODELS[0], name: "it's" }]);
  assert.match(block, /\('it''s', 'exact', 'openai', 1536, 1, 1536, true, 8191, 2048, 300000,/);
  assert.match(block, /where m\.model not in \('it''s'\);/);
  const text = "before\n-- registry:begin\nold\n-- registry:end\nafter\n";
  assert.equal(withRegistryBlock(text, "NEW"), "before\nNEW\nafter\n");
  assert.equal(registryBlock("no markers"), null);
  assert.throws(() => withRegistryBlock("no markers", "NEW"), /no "-- registry:begin"/);
  assert.throws(() => registrySql([]), /no models/);
});
