// Embedding providers: token estimates and batching, the local embedder,
// error classification, and the OpenAI provider through the real SDK against
// the fake endpoint.
import assert from "node:assert/strict";
import OpenAI, {
  APIConnectionError,
  APIConnectionTimeoutError,
  APIError,
  APIUserAbortError,
} from "openai";
import {
  estimateTokens,
  planBatches,
  truncateToTokens,
} from "../../supabase/functions/_shared/providers/tokens.ts";
import {
  createLocalProvider,
  hashEmbed,
} from "../../supabase/functions/_shared/providers/local.ts";
import {
  createOpenAIProvider,
  sendsDimensions,
} from "../../supabase/functions/_shared/providers/openai.ts";
import {
  classifyProviderError,
  ProviderError,
  retryAfterMsOf,
} from "../../supabase/functions/_shared/providers/types.ts";
import { fakeVector, startFakeOpenAI } from "../../devtools/fake_openai.ts";
import { waitFor } from "../../devtools/wait.ts";

// --- tokens ----------------------------------------------------------------

Deno.test("estimateTokens is UTF-8 bytes / 3, rounded up", () => {
  const cases: [string, number][] = [
    ["", 0],
    ["a", 1],
    ["abc", 1],
    ["abcd", 2],
    ["é", 1], // 2 bytes
    ["日本語", 3], // 3 bytes each
    ["😀", 2], // 4 bytes, one surrogate pair
    ["\ud800", 1], // lone surrogate: 3 bytes as U+FFFD
    ["x".repeat(3000), 1000],
  ];
  for (const [text, want] of cases) assert.equal(estimateTokens(text), want, JSON.stringify(text));
});

Deno.test("truncateToTokens keeps the longest prefix within the limit", () => {
  const cases: [string, number, string][] = [
    ["abcdef", 1, "abc"],
    ["abcdef", 2, "abcdef"],
    ["abcdef", 10, "abcdef"],
    ["abc", 0, ""],
    ["abc", -5, ""],
    ["日本語", 2, "日本"],
    ["a😀", 1, "a"], // the pair would make 5 bytes
    ["😀😀", 2, "😀"],
    ["ab😀", 2, "ab😀"],
    ["", 3, ""],
  ];
  for (const [text, max, want] of cases) {
    assert.equal(truncateToTokens(text, max), want, `${JSON.stringify(text)} to ${max}`);
  }
});

Deno.test("truncateToTokens never splits a surrogate pair and always fits", () => {
  const pieces = ["a", "é", "日", "😀", " ", "𝄞"];
  let seed = 7;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  for (let round = 0; round < 200; round++) {
    const text = Array.from(
      { length: 1 + Math.floor(random() * 40) },
      () => pieces[Math.floor(random() * pieces.length)],
    ).join("");
    const max = Math.floor(random() * 20);
    const cut = truncateToTokens(text, max);
    assert.ok(text.startsWith(cut));
    assert.ok(estimateTokens(cut) <= max, `${JSON.stringify(cut)} over ${max}`);
    const last = cut.charCodeAt(cut.length - 1);
    assert.ok(!(last >= 0xd800 && last <= 0xdbff), "ends in a high surrogate");
    if (cut.length < text.length) {
      const withNext = text.slice(0, cut.length + (text.codePointAt(cut.length)! > 0xffff ? 2 : 1));
      assert.ok(estimateTokens(withNext) > max, "not the longest prefix");
    }
  }
});

Deno.test("planBatches splits by count and estimated tokens, in order", () => {
  const t = (tokens: number) => "x".repeat(tokens * 3);
  const cases: { texts: string[]; maxInputs: number; maxTokens: number; want: number[][] }[] = [
    { texts: [], maxInputs: 2, maxTokens: 10, want: [] },
    { texts: [t(1)], maxInputs: 2, maxTokens: 10, want: [[0]] },
    {
      texts: [t(1), t(1), t(1), t(1), t(1)],
      maxInputs: 2,
      maxTokens: 100,
      want: [[0, 1], [2, 3], [4]],
    },
    { texts: [t(4), t(4), t(4)], maxInputs: 10, maxTokens: 8, want: [[0, 1], [2]] },
    { texts: [t(4), t(5), t(3)], maxInputs: 10, maxTokens: 8, want: [[0], [1, 2]] },
    // an over-limit text travels alone
    { texts: [t(1), t(20), t(1)], maxInputs: 10, maxTokens: 8, want: [[0], [1], [2]] },
    { texts: [t(20), t(20)], maxInputs: 10, maxTokens: 8, want: [[0], [1]] },
    // empty texts cost nothing but still count as inputs
    { texts: ["", "", ""], maxInputs: 2, maxTokens: 1, want: [[0, 1], [2]] },
    // nonsense limits still make progress
    { texts: [t(1), t(1)], maxInputs: 0, maxTokens: 0, want: [[0], [1]] },
  ];
  for (const { texts, maxInputs, maxTokens, want } of cases) {
    assert.deepEqual(
      planBatches(texts, { maxInputs, maxTokens }),
      want,
      `${texts.map(estimateTokens)} by ${maxInputs}/${maxTokens}`,
    );
  }
});

Deno.test("planBatches covers every index once and respects both limits", () => {
  const texts = Array.from({ length: 500 }, (_, i) => "w".repeat((i * 37) % 90));
  const batches = planBatches(texts, { maxInputs: 16, maxTokens: 100 });
  assert.deepEqual(batches.flat(), texts.map((_, i) => i));
  for (const batch of batches) {
    assert.ok(batch.length <= 16);
    assert.ok(batch.reduce((sum, i) => sum + estimateTokens(texts[i]), 0) <= 100);
  }
});

// --- local provider -------------------------------------------------------

const norm = (v: number[]) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));
const cosine = (a: number[], b: number[]) =>
  a.reduce((s, x, i) => s + x * b[i], 0) / (norm(a) * norm(b));

Deno.test("local provider is deterministic, normalised and sized", async () => {
  const provider = createLocalProvider({ model: "local-hash-v1", dimensions: 64 });
  assert.equal(provider.model, "local-hash-v1");
  assert.equal(provider.dimensions, 64);
  assert.equal(provider.maxBatchInputs, 2048);
  assert.equal(provider.maxInputTokens, 8191);
  const texts = ["Postgres keeps embeddings fresh", "", "   ", "!!! ???", "日本語のテキスト"];
  const a = await provider.embed(texts);
  const b = await createLocalProvider({ model: "local-hash-v1", dimensions: 64 }).embed(texts);
  assert.deepEqual(a, b);
  assert.equal(a.length, texts.length);
  for (const v of a) {
    assert.equal(v.length, 64);
    assert.ok(Math.abs(norm(v) - 1) < 1e-9, `norm ${norm(v)}`);
  }
  assert.equal(a[1][0], 1, "blank text is the fixed unit vector");
  assert.deepEqual(a[1], a[2]);
  assert.notDeepEqual(a[3], a[1], "symbols are hashed, not blank");
  assert.notDeepEqual(a[0], a[4]);
  assert.deepEqual(await provider.embed([]), []);
});

Deno.test("local provider: shared words and word pieces come out closer than unrelated text", () => {
  const dims = 256;
  const cases: [string, string, string][] = [
    ["the cat sat on the mat", "a cat sat on a mat", "quarterly revenue grew strongly"],
    ["embedding pipeline in Postgres", "Postgres embeddings pipelines", "banana bread recipe"],
    ["Case Folding", "case folding", "something else entirely"],
  ];
  for (const [text, similar, unrelated] of cases) {
    const v = hashEmbed(text, dims);
    assert.ok(
      cosine(v, hashEmbed(similar, dims)) > cosine(v, hashEmbed(unrelated, dims)) + 0.2,
      `${text} / ${similar} / ${unrelated}`,
    );
  }
  assert.ok(cosine(hashEmbed("Case Folding", dims), hashEmbed("case folding", dims)) > 0.999);
});

Deno.test("local provider refuses bad dimensions and honours an aborted signal", async () => {
  for (const dimensions of [0, -1, 1.5, NaN]) {
    assert.throws(
      () => createLocalProvider({ model: "local-hash-v1", dimensions }),
      (err) => err instanceof ProviderError && !err.retryable,
    );
  }
  const controller = new AbortController();
  controller.abort();
  await assert.rejects(
    createLocalProvider({ model: "local-hash-v1", dimensions: 8 }).embed(["x"], controller.signal),
  );
});

// --- error classification -------------------------------------------------

Deno.test("retryAfterMsOf reads retry-after-ms, seconds and HTTP dates", () => {
  const now = Date.parse("2026-01-01T00:00:00Z");
  const cases: [Record<string, string>, number | undefined][] = [
    [{}, undefined],
    [{ "retry-after": "2" }, 2000],
    [{ "retry-after": "0.5" }, 500],
    [{ "retry-after": "Thu, 01 Jan 2026 00:00:30 GMT" }, 30_000],
    [{ "retry-after": "Wed, 31 Dec 2025 23:59:00 GMT" }, 0],
    [{ "retry-after": "soon" }, undefined],
    [{ "retry-after-ms": "1500", "retry-after": "9" }, 1500],
    [{ "retry-after-ms": "x", "retry-after": "9" }, 9000],
  ];
  for (const [headers, want] of cases) {
    assert.equal(retryAfterMsOf(new Headers(headers), now), want, JSON.stringify(headers));
    assert.equal(retryAfterMsOf(headers, now), want, `plain ${JSON.stringify(headers)}`);
  }
  assert.equal(retryAfterMsOf(undefined), undefined);
});

Deno.test("classifyProviderError: retryable vs permanent, in one table", () => {
  const http = (status: number, headers: Record<string, string> = {}) =>
    APIError.generate(
      status,
      {
        error: {
          message: "server says: the secret input",
          type: "invalid_request_error",
          code: "some_code",
        },
      },
      undefined,
      new Headers(headers),
    );
  const cases: {
    name: string;
    err: unknown;
    retryable: boolean;
    status?: number;
    retryAfterMs?: number;
    says: RegExp;
  }[] = [
    {
      name: "429",
      err: http(429, { "retry-after": "3" }),
      retryable: true,
      status: 429,
      retryAfterMs: 3000,
      says: /rate limited.*3 s/,
    },
    { name: "429 no header", err: http(429), retryable: true, status: 429, says: /rate limited/ },
    { name: "408", err: http(408), retryable: true, status: 408, says: /408/ },
    { name: "409", err: http(409), retryable: true, status: 409, says: /409/ },
    { name: "500", err: http(500), retryable: true, status: 500, says: /500/ },
    { name: "503", err: http(503), retryable: true, status: 503, says: /503/ },
    {
      name: "503 with retry-after",
      err: http(503, { "retry-after": "2" }),
      retryable: true,
      status: 503,
      retryAfterMs: 2000,
      says: /503.*retrying after 2 s/,
    },
    {
      name: "400",
      err: http(400),
      retryable: false,
      status: 400,
      says: /rejected the request \(400 some_code\)/,
    },
    { name: "401", err: http(401), retryable: false, status: 401, says: /OPENAI_API_KEY/ },
    { name: "403", err: http(403), retryable: false, status: 403, says: /OPENAI_API_KEY/ },
    { name: "404", err: http(404), retryable: false, status: 404, says: /model/ },
    { name: "422", err: http(422), retryable: false, status: 422, says: /422/ },
    {
      name: "timeout",
      err: new APIConnectionTimeoutError(),
      retryable: true,
      says: /did not answer/,
    },
    {
      name: "connection",
      err: new APIConnectionError({
        message: "Connection error.",
        cause: new TypeError("connection refused"),
      }),
      retryable: true,
      says: /could not reach.*connection refused/,
    },
    { name: "abort", err: new APIUserAbortError(), retryable: true, says: /aborted/ },
    {
      name: "dom timeout",
      err: new DOMException("t", "TimeoutError"),
      retryable: true,
      says: /did not answer/,
    },
    {
      name: "bad json",
      err: new SyntaxError("Unexpected end of JSON input"),
      retryable: true,
      says: /malformed JSON/,
    },
    {
      name: "duck-typed status",
      err: Object.assign(new Error("x"), { status: 400 }),
      retryable: false,
      status: 400,
      says: /400/,
    },
    {
      name: "anything else",
      err: new Error("boom"),
      retryable: true,
      says: /unexpected error \(Error: boom\)/,
    },
    { name: "not an error", err: "weird", retryable: true, says: /unexpected error/ },
  ];
  for (const c of cases) {
    const got = classifyProviderError(c.err, { model: "m-1" });
    assert.ok(got instanceof ProviderError, c.name);
    assert.equal(got.retryable, c.retryable, c.name);
    assert.equal(got.status, c.status, c.name);
    assert.equal(got.retryAfterMs, c.retryAfterMs, c.name);
    assert.match(got.message, c.says, c.name);
    assert.match(got.message, /^embedding with m-1 failed: /, c.name);
    assert.doesNotMatch(got.message, /secret input/, `${c.name} copies server text`);
  }
  const same = new ProviderError("x", { retryable: false });
  assert.equal(classifyProviderError(same), same, "ProviderErrors pass through");
});

Deno.test("classifyProviderError cuts keys and inputs out of causes", () => {
  const err = new APIConnectionError({
    message: "Connection error.",
    cause: new Error(
      "failed for http://user:pw@host/v1 with sk-abcdefghijklmnop and my private text",
    ),
  });
  const got = classifyProviderError(err, { redact: ["my private text"] });
  assert.doesNotMatch(got.message, /sk-abcdefghijklmnop|my private text|user:pw/);
  assert.match(got.message, /\[redacted\]/);
});

// --- OpenAI provider through the SDK, against the fake endpoint -----------

const API_KEY = "sk-unit-test-key-0123456789abcdef";
const SECRET_TEXT = "confidential row text 8231";

async function withFake(
  fn: (fake: Awaited<ReturnType<typeof startFakeOpenAI>>) => Promise<void>,
  opts: { latencyMs?: number } = {},
): Promise<void> {
  const fake = await startFakeOpenAI(opts);
  try {
    await fn(fake);
  } finally {
    await fake.close();
  }
}

function provider(
  baseURL: string,
  extra: { timeoutMs?: number; model?: string; dimensions?: number } = {},
) {
  return createOpenAIProvider({
    apiKey: API_KEY,
    baseURL,
    model: extra.model ?? "text-embedding-3-small",
    dimensions: extra.dimensions ?? 16,
    timeoutMs: extra.timeoutMs ?? 5000,
  });
}

/** Asserts `promise` rejects with a ProviderError that leaks neither key nor text. */
async function rejectsWith(
  promise: Promise<unknown>,
  want: { retryable: boolean; status?: number; says: RegExp },
): Promise<ProviderError> {
  let caught: unknown;
  try {
    await promise;
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof ProviderError, `expected a ProviderError, got ${caught}`);
  assert.equal(caught.retryable, want.retryable);
  assert.equal(caught.status, want.status);
  assert.match(caught.message, want.says);
  assert.ok(!caught.message.includes(API_KEY), "message holds the API key");
  assert.ok(!caught.message.includes(SECRET_TEXT), "message holds input text");
  return caught;
}

Deno.test("openai provider: one request per call, vectors in input order", async () => {
  await withFake(async (fake) => {
    const p = provider(fake.baseURL);
    assert.equal(p.maxBatchInputs, 2048);
    assert.equal(p.maxBatchTokens, 300_000);
    assert.equal(p.maxInputTokens, 8191);
    const texts = ["first", "second", SECRET_TEXT, "fourth", "first"];
    const vectors = await p.embed(texts);
    assert.equal(fake.stats.requests, 1);
    assert.equal(fake.stats.inputs, texts.length);
    assert.deepEqual(fake.stats.texts, texts);
    assert.equal(vectors.length, texts.length);
    texts.forEach((text, i) => {
      assert.equal(vectors[i].length, 16);
      // float32 precision: the SDK asks for base64 (float32), as the real API sends.
      vectors[i].forEach((v, d) => assert.ok(Math.abs(v - fakeVector(text, 16)[d]) < 1e-6));
    });
    assert.deepEqual(await p.embed([]), []);
    assert.equal(fake.stats.requests, 1, "no request for no texts");
  });
});

Deno.test("openai provider: other models get dimensions only on a custom endpoint", async () => {
  const cases: [string, boolean, boolean][] = [
    ["text-embedding-3-small", false, true],
    ["text-embedding-3-large", true, true],
    ["text-embedding-ada-002", false, false],
    ["text-embedding-ada-002", true, false],
    ["nomic-embed-text", true, true],
    ["nomic-embed-text", false, false],
  ];
  for (const [model, hasBaseURL, want] of cases) {
    assert.equal(sendsDimensions(model, hasBaseURL), want, `${model} ${hasBaseURL}`);
  }
  await withFake(async (fake) => {
    const vectors = await provider(fake.baseURL, { model: "nomic-embed-text" }).embed(["x"]);
    assert.equal(vectors[0].length, 16);
    // ada-002 gets no dimensions: the fake answers its default 1536, which the check catches
    await rejectsWith(provider(fake.baseURL, { model: "text-embedding-ada-002" }).embed(["x"]), {
      retryable: true,
      says: /1536 dimensions, expected 16/,
    });
  });
});

Deno.test("fake endpoint answers the SDK's default base64 encoding", async () => {
  await withFake(async (fake) => {
    const client = new OpenAI({ apiKey: API_KEY, baseURL: fake.baseURL, maxRetries: 0 });
    const res = await client.embeddings.create({ model: "m", input: ["a", "b"], dimensions: 8 });
    assert.equal(res.data.length, 2);
    assert.deepEqual(res.data.map((item) => item.index), [1, 0], "the fake lists in reverse");
    res.data.forEach((item) => {
      const want = fakeVector(["a", "b"][item.index], 8);
      item.embedding.forEach((v, d) => assert.ok(Math.abs(v - want[d]) < 1e-6));
    });
  });
});

Deno.test("fake endpoint wants a bearer token", async () => {
  await withFake(async (fake) => {
    const res = await fetch(`${fake.baseURL}/embeddings`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "m", input: "x" }),
    });
    assert.equal(res.status, 401);
    await res.body?.cancel();
    assert.equal(fake.stats.requests, 1);
    assert.equal(fake.stats.inputs, 0);
  });
});

Deno.test("openai provider: 429 with Retry-After is retryable with a delay", async () => {
  await withFake(async (fake) => {
    fake.setFault({ kind: "status", status: 429, retryAfter: "7", times: 1 });
    const err = await rejectsWith(provider(fake.baseURL).embed([SECRET_TEXT]), {
      retryable: true,
      status: 429,
      says: /rate limited/,
    });
    assert.equal(err.retryAfterMs, 7000);
    assert.equal(fake.stats.requests, 1, "the SDK does not retry on its own");
    assert.equal(fake.stats.failedRequests, 1);
    assert.equal(fake.stats.inputs, 0);
    assert.equal(
      (await provider(fake.baseURL).embed(["ok"])).length,
      1,
      "back to normal after times",
    );
  });
});

Deno.test("openai provider: 500 is retryable, 400 and 401 are permanent", async () => {
  await withFake(async (fake) => {
    const cases: [number, boolean, RegExp][] = [
      [500, true, /500/],
      [503, true, /503/],
      [400, false, /rejected the request \(400/],
      [401, false, /check OPENAI_API_KEY/],
      [404, false, /model/],
    ];
    for (const [status, retryable, says] of cases) {
      fake.setFault({
        kind: "status",
        status,
        times: 1,
        body: JSON.stringify({ error: { message: `echo: ${SECRET_TEXT} ${API_KEY}`, type: "x" } }),
      });
      await rejectsWith(provider(fake.baseURL).embed([SECRET_TEXT, "other"]), {
        retryable,
        status,
        says,
      });
    }
  });
});

Deno.test("openai provider: a slow endpoint times out as retryable", async () => {
  await withFake(async (fake) => {
    fake.setFault({ kind: "slow", delayMs: 3000, times: 1 });
    await rejectsWith(provider(fake.baseURL, { timeoutMs: 200 }).embed([SECRET_TEXT]), {
      retryable: true,
      says: /did not answer within 200 ms/,
    });
    assert.equal(fake.inFlight, 1, "gave up while the endpoint was still busy with the request");
  });
});

Deno.test("openai provider: an outage is retryable until it ends", async () => {
  await withFake(async (fake) => {
    const untilMs = Date.now() + 300;
    fake.setFault({ kind: "outage", untilMs });
    await rejectsWith(provider(fake.baseURL).embed(["x"]), {
      retryable: true,
      status: 503,
      says: /503/,
    });
    await waitFor(() => Date.now() > untilMs, { what: "the outage to end" });
    assert.equal((await provider(fake.baseURL).embed(["x"])).length, 1);
  });
});

Deno.test("openai provider: malformed JSON and wrong dimensions are retryable", async () => {
  await withFake(async (fake) => {
    fake.setFault({ kind: "malformed", times: 1 });
    await rejectsWith(provider(fake.baseURL).embed([SECRET_TEXT]), {
      retryable: true,
      says: /malformed JSON/,
    });
    fake.setFault({ kind: "wrong-dimensions", times: 1 });
    await rejectsWith(provider(fake.baseURL).embed([SECRET_TEXT, "b"]), {
      retryable: true,
      says: /vectors of 17 dimensions, expected 16/,
    });
    assert.equal(fake.stats.failedRequests, 2);
    assert.equal(fake.stats.inputs, 0);
    assert.equal((await provider(fake.baseURL).embed(["x"]))[0].length, 16);
  });
});

Deno.test("openai provider: a vector with NaN or an infinite value is refused (retryable)", async () => {
  await withFake(async (fake) => {
    for (const value of [NaN, Infinity, -Infinity]) {
      fake.setFault({ kind: "non-finite", value, times: 1 });
      await rejectsWith(provider(fake.baseURL).embed([SECRET_TEXT, "b"]), {
        retryable: true,
        says: /values that are not finite numbers/,
      });
    }
    assert.equal(fake.stats.failedRequests, 3);
    assert.ok(Number.isFinite((await provider(fake.baseURL).embed(["x"]))[0][0]));
  });
});

Deno.test("openai provider: base64 float32 decoded exactly; an endpoint answering floats works too", async () => {
  await withFake(async (fake) => {
    const texts = ["alpha", "beta"];
    const fromBase64 = await provider(fake.baseURL).embed(texts);
    fake.setFault({ kind: "floats" });
    const fromFloats = await provider(fake.baseURL).embed(texts);
    texts.forEach((text, i) => {
      assert.ok(fromBase64[i] instanceof Float32Array, "base64 decodes straight to float32");
      assert.ok(Array.isArray(fromFloats[i]), "floats are kept as the endpoint sent them");
      // Exactly the float32 of each value the fake sent, in input order.
      assert.deepEqual([...fromBase64[i]], [...Float32Array.from(fakeVector(text, 16))]);
      assert.deepEqual([...fromFloats[i]], fakeVector(text, 16));
    });
  });
});

Deno.test("openai provider: one rejected text fails its request as permanent", async () => {
  await withFake(async (fake) => {
    fake.setFault({ kind: "reject-text", contains: "poison" });
    const p = provider(fake.baseURL);
    await rejectsWith(p.embed(["fine", "has poison in it"]), {
      retryable: false,
      status: 400,
      says: /400/,
    });
    assert.equal((await p.embed(["fine"])).length, 1);
    assert.equal(fake.stats.requests, 2);
    assert.equal(fake.stats.failedRequests, 1);
    assert.equal(fake.stats.inputs, 1);
  });
});

Deno.test("openai provider: an aborted call rethrows with the signal aborted", async () => {
  await withFake(async (fake) => {
    const controller = new AbortController();
    const call = provider(fake.baseURL).embed(["x"], controller.signal);
    // The premise: the request is at the endpoint (answering takes 2 s).
    await waitFor(() => fake.inFlight === 1, { what: "the request to reach the endpoint" });
    controller.abort();
    await assert.rejects(call, (err) => !(err instanceof ProviderError));
    assert.ok(controller.signal.aborted);
  }, { latencyMs: 2000 });
});

Deno.test("openai provider: an unreachable endpoint is retryable", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  await rejectsWith(provider(`http://127.0.0.1:${port}/v1`).embed([SECRET_TEXT]), {
    retryable: true,
    says: /could not reach the endpoint/,
  });
});
