// The Batch API client (providers/batches.ts) through the real openai SDK
// against the fake provider's /v1/files and /v1/batches: round trips, error
// and expired lines, cancellation, validation, the enqueued-token limit,
// endpoints without the API, and the streaming of result files.
import assert from "node:assert/strict";
import OpenAI, { toFile } from "openai";
import {
  BATCH_LIMITS,
  BatchApiUnsupported,
  type BatchClient,
  type BatchInput,
  batchJsonl,
  type BatchResultLine,
  createOpenAIBatchClient,
  parseResultLine,
  planBatchFiles,
  type ProviderBatch,
  splitLines,
  TERMINAL_BATCH_STATUSES,
  textChunks,
} from "../../supabase/functions/_shared/providers/batches.ts";
import { tokenCounterFor } from "../../supabase/functions/_shared/providers/tokens.ts";
import { ProviderError } from "../../supabase/functions/_shared/providers/types.ts";
import { type FakeOpenAI, fakeVector, startFakeOpenAI } from "../../devtools/fake_openai.ts";
import { waitFor } from "../../devtools/wait.ts";

const API_KEY = "sk-test-batch-0123456789abcdef";
const MODEL = "text-embedding-3-small";
const DIMENSIONS = 64;

async function withFake(fn: (fake: FakeOpenAI) => Promise<void>) {
  const fake = await startFakeOpenAI();
  try {
    await fn(fake);
  } finally {
    await fake.close();
  }
}

function batchClient(
  fake: FakeOpenAI,
  opts: Partial<Parameters<typeof createOpenAIBatchClient>[0]> = {},
): BatchClient {
  return createOpenAIBatchClient({
    apiKey: API_KEY,
    baseURL: fake.baseURL,
    model: MODEL,
    dimensions: DIMENSIONS,
    timeoutMs: 5_000,
    ...opts,
  });
}

function inputs(count: number, text = (i: number) => `text number ${i}`): BatchInput[] {
  return Array.from({ length: count }, (_, i) => ({ customId: `h${i}`, text: text(i) }));
}

/** Retrieves until the batch ends. */
async function ended(client: BatchClient, id: string): Promise<ProviderBatch> {
  let last: ProviderBatch | undefined;
  return await waitFor(async () => {
    last = await client.retrieve(id);
    return TERMINAL_BATCH_STATUSES.has(last.status) && last;
  }, { what: `batch ${id} to end`, describe: () => `status ${last?.status}` });
}

async function collect(lines: AsyncIterable<BatchResultLine>): Promise<BatchResultLine[]> {
  const all: BatchResultLine[] = [];
  for await (const line of lines) all.push(line);
  return all;
}

function float32(values: number[]): Float32Array {
  return Float32Array.from(values);
}

async function submit(client: BatchClient, items: BatchInput[], metadata = {}) {
  const fileId = await client.upload(items);
  return await client.create(fileId, metadata);
}

// --- the input file -----------------------------------------------------------

Deno.test("batchJsonl: one request line per input, with dimensions only when asked", () => {
  const text = batchJsonl(
    [{ customId: "a", text: "hello" }, { customId: "b", text: "wörld" }],
    MODEL,
    64,
    true,
  );
  assert.ok(text.endsWith("\n"));
  const lines = text.split("\n").slice(0, -1).map((l) => JSON.parse(l));
  assert.deepEqual(lines, [
    {
      custom_id: "a",
      method: "POST",
      url: "/v1/embeddings",
      body: { model: MODEL, input: "hello", dimensions: 64, encoding_format: "base64" },
    },
    {
      custom_id: "b",
      method: "POST",
      url: "/v1/embeddings",
      body: { model: MODEL, input: "wörld", dimensions: 64, encoding_format: "base64" },
    },
  ]);
  const without = JSON.parse(batchJsonl([{ customId: "a", text: "x" }], "m", 8, false));
  assert.equal("dimensions" in without.body, false);
});

Deno.test("whether lines carry dimensions is decided as online", () => {
  const client = (model: string, baseURL?: string) =>
    createOpenAIBatchClient({ apiKey: API_KEY, baseURL, model, dimensions: 64, timeoutMs: 1000 });
  assert.equal(client(MODEL).withDimensions, true, "text-embedding-3-* take dimensions");
  assert.equal(client("text-embedding-ada-002").withDimensions, false, "ada-002 rejects it");
  assert.equal(client("nomic-embed-text", "http://127.0.0.1:1/v1").withDimensions, true);
});

Deno.test("planBatchFiles cuts by requests, bytes and tokens, in order", () => {
  const opts = { model: MODEL, dimensions: 8, withDimensions: true };
  const many = inputs(BATCH_LIMITS.maxRequests + 1, (i) => `t${i}`);
  const files = planBatchFiles(many, opts);
  assert.deepEqual(files.map((f) => f.length), [BATCH_LIMITS.maxRequests, 1]);
  assert.equal(files[1][0].customId, `h${BATCH_LIMITS.maxRequests}`);

  const ten = inputs(10);
  const lineBytes = new TextEncoder().encode(batchJsonl(ten.slice(0, 1), MODEL, 8, true)).length;
  const byBytes = planBatchFiles(ten, { ...opts, maxBytes: lineBytes * 3 + 2 });
  assert.deepEqual(byBytes.map((f) => f.length), [3, 3, 3, 1]);
  for (const file of byBytes) {
    const bytes = new TextEncoder().encode(batchJsonl(file, MODEL, 8, true)).length;
    assert.ok(bytes <= lineBytes * 3 + 2, `${bytes}`);
  }
  assert.deepEqual(byBytes.flat(), ten, "nothing lost, nothing reordered");

  const each = tokenCounterFor(MODEL).count(ten[0].text);
  assert.ok(ten.every((input) => tokenCounterFor(MODEL).count(input.text) === each));
  const byTokens = planBatchFiles(ten, { ...opts, maxTokens: 2 * each + 1 });
  assert.deepEqual(byTokens.map((f) => f.length), [2, 2, 2, 2, 2]);
  assert.throws(() => planBatchFiles(ten, { ...opts, maxBytes: 10 }), RangeError);
  assert.deepEqual(planBatchFiles([], opts), []);
});

// --- round trips ----------------------------------------------------------------

Deno.test("round trip: upload, create, retrieve, results give the fake's vectors by custom id", async () => {
  await withFake(async (fake) => {
    const client = batchClient(fake);
    // Long enough lines to arrive in several chunks; a custom id and a text beyond ASCII.
    const items = inputs(150, (i) => `row ${i} é ${"word ".repeat(i % 7)}`);
    items[3] = { customId: "hé3", text: "日本語のテキスト" };
    const fileId = await client.upload(items);
    const raw = new OpenAI({ apiKey: API_KEY, baseURL: fake.baseURL, maxRetries: 0 });
    assert.equal(
      await (await raw.files.content(fileId)).text(),
      batchJsonl(items, MODEL, DIMENSIONS, true),
      "the uploaded file is the JSONL",
    );

    const created = await client.create(fileId, { run: "r1", target: "42" });
    assert.equal(created.status, "validating");
    assert.equal(created.inputFileId, fileId);
    assert.deepEqual(created.metadata, { run: "r1", target: "42" });
    assert.ok(created.createdAt > 0 && created.expiresAt === created.createdAt + 86_400);

    const done = await ended(client, created.id);
    assert.equal(done.status, "completed");
    assert.deepEqual(done.counts, { total: 150, completed: 150, failed: 0 });
    assert.equal(done.errorFileId, null);
    assert.ok(done.outputFileId);

    const lines = await collect(client.results(done.outputFileId));
    assert.equal(lines.length, 150);
    const byId = new Map(lines.map((l) => [l.customId, l]));
    for (const item of items) {
      const line = byId.get(item.customId);
      assert.ok(line && "vector" in line, item.customId);
      assert.ok(line.vector instanceof Float32Array);
      assert.deepEqual(line.vector, float32(fakeVector(item.text, DIMENSIONS)), item.customId);
      assert.ok(line.usedTokens! > 0);
    }
    assert.equal(fake.stats.batches, 1);
    assert.equal(fake.stats.batchInputs, 150);
    assert.equal(fake.stats.filesUploaded, 1);
    assert.equal(fake.stats.batchEmbeddedTexts.length, 150);
    assert.ok(fake.stats.batchTokens > 150);
    assert.equal(fake.stats.requests, 0, "no online request");
    assert.equal(fake.stats.inputs, 0);

    assert.equal(fake.storedFiles, 2);
    await client.deleteFile(fileId);
    await client.deleteFile(done.outputFileId);
    assert.equal(fake.storedFiles, 0);
    await client.deleteFile(fileId); // a 404 is fine
  });
});

Deno.test("a delayed batch is in_progress until its time, then completed", async () => {
  await withFake(async (fake) => {
    fake.setBatchBehaviour({ completionDelayMs: 60_000 });
    const client = batchClient(fake);
    const created = await submit(client, inputs(3));
    assert.equal((await client.retrieve(created.id)).status, "in_progress");
    assert.equal((await client.retrieve(created.id)).status, "in_progress");
    fake.setBatchBehaviour({ completionDelayMs: 0 });
    const done = await client.retrieve(created.id);
    assert.equal(done.status, "completed");
    assert.equal(done.counts.completed, 3);
  });
});

Deno.test("error lines: rejected inputs are permanent, the others get vectors", async () => {
  await withFake(async (fake) => {
    fake.setBatchBehaviour({ failLine: (text) => text.includes("bad") });
    const client = batchClient(fake);
    const items = inputs(6, (i) => (i % 3 === 0 ? `bad secret text ${i}` : `good ${i}`));
    const done = await ended(client, (await submit(client, items)).id);
    assert.equal(done.status, "completed");
    assert.deepEqual(done.counts, { total: 6, completed: 4, failed: 2 });
    assert.ok(done.outputFileId && done.errorFileId);

    const good = await collect(client.results(done.outputFileId));
    assert.deepEqual(good.map((l) => l.customId).sort(), ["h1", "h2", "h4", "h5"]);
    const bad = await collect(client.results(done.errorFileId));
    assert.deepEqual(bad.map((l) => l.customId).sort(), ["h0", "h3"]);
    for (const line of bad) {
      assert.ok("error" in line);
      assert.equal(line.retryable, false);
      assert.equal(line.status, 400);
      assert.match(line.error, /rejected the request \(400 invalid_request\)/);
      assert.doesNotMatch(line.error, /secret|injected/, "no server text, no input");
    }
    assert.deepEqual(fake.stats.batchEmbeddedTexts.length, 4);
  });
});

Deno.test("expiry: output for the lines that ran, batch_expired lines are retryable", async () => {
  await withFake(async (fake) => {
    fake.setBatchBehaviour({ expire: { fraction: 0.3 } });
    const client = batchClient(fake);
    const done = await ended(client, (await submit(client, inputs(10))).id);
    assert.equal(done.status, "expired");
    assert.deepEqual(done.counts, { total: 10, completed: 3, failed: 7 });
    const ran = await collect(client.results(done.outputFileId!));
    assert.deepEqual(ran.map((l) => l.customId), ["h0", "h1", "h2"]);
    assert.ok(ran.every((l) => "vector" in l));
    const notRun = await collect(client.results(done.errorFileId!));
    assert.equal(notRun.length, 7);
    for (const line of notRun) {
      assert.ok("error" in line);
      assert.equal(line.retryable, true);
      assert.match(line.error, /batch_expired/);
    }
  });
});

Deno.test("cancel: cancelling, then cancelled with no output; a second cancel is refused", async () => {
  await withFake(async (fake) => {
    fake.setBatchBehaviour({ completionDelayMs: 60_000 });
    const client = batchClient(fake);
    const created = await submit(client, inputs(4));
    assert.equal((await client.retrieve(created.id)).status, "in_progress");
    const cancelling = await client.cancel(created.id);
    assert.equal(cancelling.status, "cancelling");
    const cancelled = await client.retrieve(created.id);
    assert.equal(cancelled.status, "cancelled");
    assert.equal(cancelled.outputFileId, null);
    assert.equal(cancelled.errorFileId, null);
    assert.equal(fake.stats.batchEmbeddedTexts.length, 0);
    await assert.rejects(client.cancel(created.id), (err) => {
      assert.ok(err instanceof ProviderError);
      assert.equal(err.retryable, false);
      assert.equal(err.status, 400);
      return true;
    });
  });
});

Deno.test("token_limit_exceeded: a batch over the enqueued-token limit fails, and fits later", async () => {
  await withFake(async (fake) => {
    const client = batchClient(fake);
    const items = inputs(10); // 4 tokens each, as "other text N"
    fake.setBatchBehaviour({ completionDelayMs: 60_000, enqueuedTokenLimit: 50 });
    const first = await submit(client, items);
    assert.equal((await client.retrieve(first.id)).status, "in_progress");

    const second = await submit(client, inputs(10, (i) => `other text ${i}`));
    const failed = await client.retrieve(second.id);
    assert.equal(failed.status, "failed");
    assert.deepEqual(failed.errors.map((e) => e.code), ["token_limit_exceeded"]);
    assert.match(failed.errors[0].message, /enqueued-token limit/);
    assert.doesNotMatch(failed.errors[0].message, /Enqueued token limit reached/, "our words");

    // Another model's queue is its own.
    const large = batchClient(fake, { model: "text-embedding-3-large" });
    assert.equal((await large.retrieve((await submit(large, items)).id)).status, "in_progress");

    fake.setBatchBehaviour({ completionDelayMs: 0, enqueuedTokenLimit: 50 });
    assert.equal((await client.retrieve(first.id)).status, "completed");
    const third = await submit(client, inputs(10, (i) => `other text ${i}`));
    assert.equal((await ended(client, third.id)).status, "completed");
  });
});

Deno.test("validation: over 50,000 lines, mixed models, a wrong url each fail the batch", async () => {
  await withFake(async (fake) => {
    const client = batchClient(fake);
    const tooMany = inputs(BATCH_LIMITS.maxRequests + 1, (i) => `t${i}`);
    await assert.rejects(client.upload(tooMany), RangeError, "the client refuses to upload it");
    await assert.rejects(client.upload([]), RangeError);
    await assert.rejects(
      client.upload([{ customId: "a", text: "x" }, { customId: "a", text: "y" }]),
      RangeError,
    );
    assert.equal(fake.stats.filesUploaded, 0);

    // The endpoint validates too: files made by hand, as another client might.
    const raw = new OpenAI({ apiKey: API_KEY, baseURL: fake.baseURL, maxRetries: 0 });
    const failure = async (jsonl: string) => {
      const file = await raw.files.create({
        file: await toFile(new Blob([jsonl]), "in.jsonl"),
        purpose: "batch",
      });
      const created = await client.create(file.id, {});
      assert.equal(created.status, "validating");
      const failed = await client.retrieve(created.id);
      assert.equal(failed.status, "failed");
      return failed.errors.map((e) => e.code);
    };
    assert.deepEqual(await failure(batchJsonl(tooMany, MODEL, 8, true)), ["too_many_requests"]);
    const mixed = batchJsonl([{ customId: "a", text: "x" }], MODEL, 8, true) +
      batchJsonl([{ customId: "b", text: "y" }], "text-embedding-3-large", 8, true);
    assert.deepEqual(await failure(mixed), ["mismatched_model"]);
    const wrongUrl = batchJsonl([{ customId: "a", text: "x" }], MODEL, 8, true).replace(
      "/v1/embeddings",
      "/v1/chat/completions",
    );
    assert.deepEqual(await failure(wrongUrl), ["mismatched_endpoint"]);
    assert.deepEqual(await failure("{not json\n"), ["invalid_json_line"]);
  });
});

Deno.test("the fake answers floats to lines that ask for them, and describes its files", async () => {
  await withFake(async (fake) => {
    const client = batchClient(fake);
    const raw = new OpenAI({ apiKey: API_KEY, baseURL: fake.baseURL, maxRetries: 0 });
    const jsonl = batchJsonl([{ customId: "f", text: "floats please" }], MODEL, DIMENSIONS, true)
      .replace(',"encoding_format":"base64"', "");
    assert.ok(!jsonl.includes("base64"), "the premise: no encoding asked, so floats");
    const file = await raw.files.create({
      file: await toFile(new Blob([jsonl]), "in.jsonl"),
      purpose: "batch",
    });
    const described = await raw.files.retrieve(file.id);
    assert.equal(described.bytes, new TextEncoder().encode(jsonl).length);
    assert.equal(described.purpose, "batch");
    const done = await ended(client, (await client.create(file.id, {})).id);
    const text = await (await raw.files.content(done.outputFileId!)).text();
    assert.ok(Array.isArray(JSON.parse(text).response.body.data[0].embedding));
    const [line] = await collect(client.results(done.outputFileId!));
    assert.ok("vector" in line);
    assert.deepEqual(line.vector, float32(fakeVector("floats please", DIMENSIONS)));
  });
});

// --- endpoints and failures ---------------------------------------------------------

Deno.test("an endpoint without the batch API: BatchApiUnsupported", async () => {
  await withFake(async (fake) => {
    const client = batchClient(fake);
    const fileId = await client.upload(inputs(2));
    fake.setBatchBehaviour({ unsupported: true });
    for (
      const call of [
        () => client.upload(inputs(2)),
        () => client.create(fileId, {}),
        () => client.findByMetadata("run", "x"),
      ]
    ) {
      await assert.rejects(call(), (err) => {
        assert.ok(err instanceof BatchApiUnsupported, String(err));
        assert.equal(err.status, 404);
        return true;
      });
    }
  });
});

Deno.test("an unknown batch or file is a permanent 404, not a missing API", async () => {
  await withFake(async (fake) => {
    const client = batchClient(fake);
    for (
      const call of [
        () => client.retrieve("batch_nope"),
        () => collect(client.results("file-nope")),
      ]
    ) {
      await assert.rejects(call(), (err) => {
        assert.ok(err instanceof ProviderError, String(err));
        assert.equal(err.status, 404);
        assert.equal(err.retryable, false);
        return true;
      });
    }
  });
});

Deno.test("outages and 5xx on the batch endpoints are retryable; faults can target one side", async () => {
  await withFake(async (fake) => {
    const client = batchClient(fake);
    fake.setFault({ kind: "outage", untilMs: Date.now() + 60_000 });
    await assert.rejects(client.upload(inputs(1)), (err) => {
      assert.ok(err instanceof ProviderError);
      assert.equal(err.status, 503);
      assert.equal(err.retryable, true);
      assert.ok(!err.message.includes(API_KEY));
      return true;
    });
    fake.setFault({ kind: "status", status: 500, times: 1, on: "embeddings" });
    const created = await submit(client, inputs(1));
    assert.equal(fake.stats.requests, 0);
    fake.setFault({ kind: "status", status: 502, times: 1, on: "batches" });
    await assert.rejects(client.retrieve(created.id), (err) => {
      assert.ok(err instanceof ProviderError);
      return err.retryable && err.status === 502;
    });
    assert.equal((await client.retrieve(created.id)).status, "completed", "after times");
  });
});

Deno.test("findByMetadata finds the newest match across list pages, within its scan limit", async () => {
  await withFake(async (fake) => {
    const client = batchClient(fake, { listPageSize: 2 });
    const created: ProviderBatch[] = [];
    for (const run of ["r1", "r2", "r3", "r2", "r5"]) {
      created.push(await submit(client, inputs(1), { run }));
    }
    const before = fake.stats.batchRequests;
    const r1 = await client.findByMetadata("run", "r1");
    assert.equal(r1?.id, created[0].id, "the oldest, on the third page");
    assert.equal(fake.stats.batchRequests - before, 3, "three pages listed");
    assert.equal((await client.findByMetadata("run", "r2"))?.id, created[3].id, "the newest r2");
    assert.equal(await client.findByMetadata("run", "nope"), null);
    assert.equal(await client.findByMetadata("other", "r1"), null);
    const short = batchClient(fake, { listPageSize: 2, findScanLimit: 3 });
    assert.equal(await short.findByMetadata("run", "r1"), null, "beyond the scan limit");
  });
});

Deno.test("results are checked like the online path: wrong dimensions are line errors", async () => {
  await withFake(async (fake) => {
    const client = batchClient(fake);
    const done = await ended(client, (await submit(client, inputs(3))).id);
    const other = batchClient(fake, { dimensions: DIMENSIONS / 2 });
    const lines = await collect(other.results(done.outputFileId!));
    assert.equal(lines.length, 3);
    for (const line of lines) {
      assert.ok("error" in line);
      assert.equal(line.retryable, true);
      assert.match(line.error, new RegExp(`${DIMENSIONS} dimensions, expected ${DIMENSIONS / 2}`));
    }
  });
});

// --- result lines and streaming --------------------------------------------------

const CONTEXT = { model: MODEL, dimensions: 3, apiKey: API_KEY };

function base64(values: number[]): string {
  return new Uint8Array(Float32Array.from(values).buffer).toBase64();
}

function ok(customId: string, embedding: unknown, usage: unknown = { prompt_tokens: 2 }) {
  return JSON.stringify({
    id: "batch_req_1",
    custom_id: customId,
    response: {
      status_code: 200,
      request_id: "req_1",
      body: { object: "list", data: [{ object: "embedding", index: 0, embedding }], usage },
    },
    error: null,
  });
}

function failedWith(customId: string, status: number, code: string | null) {
  return JSON.stringify({
    id: "batch_req_1",
    custom_id: customId,
    response: {
      status_code: status,
      request_id: "req_1",
      body: { error: { message: `echo ${API_KEY} some input`, type: "x", param: null, code } },
    },
    error: null,
  });
}

Deno.test("parseResultLine: vectors from base64 or floats, errors classified as online", () => {
  const vector = parseResultLine(ok("a", base64([0.5, -1, 2])), CONTEXT);
  assert.deepEqual(vector, { customId: "a", vector: float32([0.5, -1, 2]), usedTokens: 2 });
  const floats = parseResultLine(ok("b", [0.25, 0, 1], null), CONTEXT);
  assert.deepEqual(floats, { customId: "b", vector: float32([0.25, 0, 1]) });

  const cases: [string, boolean, RegExp, number | undefined][] = [
    [ok("c", base64([1, 2])), true, /2 dimensions, expected 3/, undefined],
    [ok("c", base64([1, NaN, 2])), true, /not finite/, undefined],
    [ok("c", [1, Infinity, 2]), true, /not finite/, undefined],
    [ok("c", "not base64!"), true, /neither base64/, undefined],
    [failedWith("c", 400, "invalid_request"), false, /400 invalid_request/, 400],
    [failedWith("c", 401, null), false, /OPENAI_API_KEY/, 401],
    [failedWith("c", 429, "rate_limit_exceeded"), true, /rate limited/, 429],
    [failedWith("c", 500, null), true, /failed \(500/, 500],
    [
      JSON.stringify({ custom_id: "c", response: null, error: { code: "batch_cancelled" } }),
      true,
      /did not run this request \(batch_cancelled\)/,
      undefined,
    ],
    [
      JSON.stringify({ custom_id: "c", response: null, error: null }),
      true,
      /did not run/,
      undefined,
    ],
  ];
  for (const [line, retryable, says, status] of cases) {
    const parsed = parseResultLine(line, CONTEXT);
    assert.ok("error" in parsed, line);
    assert.equal(parsed.customId, "c");
    assert.equal(parsed.retryable, retryable, line);
    assert.match(parsed.error, says);
    assert.equal(parsed.status, status);
    assert.ok(!parsed.error.includes(API_KEY) && !parsed.error.includes("some input"));
  }
  for (const bad of ["{not json", "[]", "null", JSON.stringify({ response: null })]) {
    assert.throws(() => parseResultLine(bad, CONTEXT), (err) => {
      assert.ok(err instanceof ProviderError);
      return err.retryable;
    });
  }
});

async function* chunked(text: string, sizes: number[]): AsyncGenerator<string> {
  let at = 0;
  for (let i = 0; at < text.length; i++) {
    const size = sizes[i % sizes.length];
    yield text.slice(at, at + size);
    at += size;
  }
}

async function linesOf(chunks: AsyncIterable<string>): Promise<string[]> {
  const lines: string[] = [];
  for await (const line of splitLines(chunks)) lines.push(line);
  return lines;
}

Deno.test("splitLines: lines split across chunks, CRLF, no final newline, empty lines", async () => {
  const cases: [string, string[]][] = [
    ["a\nbb\nccc\n", ["a", "bb", "ccc"]],
    ["a\r\nbb\r\nccc", ["a", "bb", "ccc"]],
    ["a\n\n\nb\r\n\r\n", ["a", "b"]],
    ["only", ["only"]],
    ["trailing cr\r", ["trailing cr"]],
    ["", []],
    ["\n", []],
    [`${"x".repeat(1000)}\ny`, ["x".repeat(1000), "y"]],
  ];
  for (const [text, want] of cases) {
    for (const sizes of [[1], [2], [3], [1, 5, 2], [text.length || 1]]) {
      assert.deepEqual(
        await linesOf(chunked(text, sizes)),
        want,
        `${JSON.stringify(text)} ${sizes}`,
      );
    }
  }
});

Deno.test("textChunks decodes characters split across byte chunks", async () => {
  const text = "é日本😀\r\nz";
  const bytes = new TextEncoder().encode(text);
  const body = ReadableStream.from((function* () {
    for (const byte of bytes) yield new Uint8Array([byte]);
  })());
  let decoded = "";
  for await (const chunk of textChunks(body, 1000, () => new Error("stalled"))) decoded += chunk;
  assert.equal(decoded, text);
});

Deno.test("a download that stalls fails as retryable; stopping early cancels the body", async () => {
  let cancelled = false;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => {
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(new TextEncoder().encode(ok("a", base64([1, 2, 3])) + "\n"));
      },
      cancel() {
        cancelled = true;
      },
    });
    return new Response(body);
  });
  try {
    const client = createOpenAIBatchClient({
      apiKey: API_KEY,
      baseURL: `http://127.0.0.1:${server.addr.port}/v1`,
      model: MODEL,
      dimensions: 3,
      timeoutMs: 200,
    });
    const seen: string[] = [];
    await assert.rejects(
      (async () => {
        for await (const line of client.results("file-x")) seen.push(line.customId);
      })(),
      (err) => {
        assert.ok(err instanceof ProviderError, String(err));
        assert.equal(err.retryable, true);
        assert.match(err.message, /sent nothing of file "file-x" for 200 ms/);
        return true;
      },
    );
    assert.deepEqual(seen, ["a"], "the line before the stall was given");
    await waitFor(() => cancelled, { what: "the stalled body to be cancelled" });

    cancelled = false;
    for await (const _ of client.results("file-x")) break;
    await waitFor(() => cancelled, { what: "the body to be cancelled when the reader stops" });
  } finally {
    await server.shutdown();
  }
});
