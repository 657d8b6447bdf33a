// The search function under hostile request bodies, against a real database
// and the fake provider: a NUL character (U+0000) in any string the request
// carries gets a 400 naming the field, before the provider or the database
// sees it; a body over the limit gets 413 and is read no further than the
// limit, whether it declares its length, declares a false one, or none.
import assert from "node:assert/strict";
import { type Sql, withTestDb } from "../../devtools/db.ts";
import { createDocuments } from "../../devtools/pipeline.ts";
import { type FakeOpenAI, startFakeOpenAI } from "../../devtools/fake_openai.ts";
import { signJwt } from "../../supabase/functions/_shared/jwt.ts";
import {
  createSearchHandler,
  MAX_BODY_BYTES,
  type SearchHandler,
} from "../../supabase/functions/search/handler.ts";
import { createArticles } from "../_support/chunks.ts";

const SECRET = "search-input-test-secret-of-32-characters";

interface Harness {
  handler: SearchHandler;
  fake: FakeOpenAI;
  /** POSTs `body` (a JSON value, or a raw body with headers) as the service role. */
  post(body: BodyInit, headers?: Record<string, string>): Promise<Response>;
  search(request: unknown): Promise<{ status: number; error: string | undefined }>;
}

/** public.documents (a whole-row target) and public.articles (chunked), one row each; the handler. */
async function withSearchHandler(fn: (h: Harness, sql: Sql) => Promise<void>): Promise<void> {
  await withTestDb(async (sql, url) => {
    await createDocuments(sql);
    await createArticles(sql);
    await sql`insert into documents (title, content) values ('hello', 'hello world')`;
    await sql`insert into articles (title, body) values ('hello', 'hello world, at length')`;
    const fake = await startFakeOpenAI({ vectors: "lexical" });
    const handler = createSearchHandler({
      env: (name) =>
        ({
          SUPABASE_DB_URL: url,
          SUPABASE_JWT_SECRET: SECRET,
          OPENAI_API_KEY: "sk-test-key-not-secret",
          OPENAI_BASE_URL: fake.baseURL,
        })[name],
      log: () => {},
    });
    const token = await signJwt(
      { role: "service_role", exp: Math.floor(Date.now() / 1000) + 3600 },
      SECRET,
    );
    const post = (body: BodyInit, headers: Record<string, string> = {}) =>
      handler.fetch(
        new Request("http://localhost/functions/v1/search", {
          method: "POST",
          headers: {
            authorization: `Bearer ${token}`,
            "content-type": "application/json",
            ...headers,
          },
          body,
        }),
      );
    const search = async (request: unknown) => {
      const res = await post(JSON.stringify(request));
      const answer = await res.json() as { error?: string };
      return { status: res.status, error: answer.error };
    };
    try {
      await fn({ handler, fake, post, search }, sql);
    } finally {
      await handler.close(0);
      await fake.close();
    }
  });
}

Deno.test("search: a NUL character in any field gets 400 naming that field, before the provider or the database", async () => {
  await withSearchHandler(async ({ fake, search }) => {
    const base = { table: "documents", query: "hello world" };
    // [what, a request that is answered, the same with a NUL, the field the 400 must name]
    const cases: [string, Record<string, unknown>, Record<string, unknown>, RegExp][] = [
      ["table", base, { ...base, table: "docu\u0000ments" }, /^invalid search request: table /],
      [
        "schema of table",
        { ...base, table: "public.documents" },
        { ...base, table: "pub\u0000lic.documents" },
        /: table /,
      ],
      [
        "column",
        { ...base, column: "embedding" },
        { ...base, column: "embed\u0000ding" },
        /: column /,
      ],
      ["query", base, { ...base, query: "hello\u0000world" }, /: query /],
      ["query alone", base, { ...base, query: "\u0000" }, /: query /],
      [
        "query, hybrid",
        { ...base, mode: "hybrid" },
        { ...base, mode: "hybrid", query: "hello\u0000world" },
        /: query /,
      ],
      [
        "query, hybrid, chunked target",
        { ...base, table: "articles", mode: "hybrid" },
        { ...base, table: "articles", mode: "hybrid", query: "hello\u0000world" },
        /: query /,
      ],
      [
        "filter value",
        { ...base, filter: { title: "hello" } },
        { ...base, filter: { title: "hel\u0000lo" } },
        /: filter\.title /,
      ],
      [
        "filter key",
        { ...base, filter: { title: "hello" } },
        { ...base, filter: { "ti\u0000tle": "hello" } },
        /: a key of filter /,
      ],
      ["mode", { ...base, mode: "hybrid" }, { ...base, mode: "hy\u0000brid" }, /: mode /],
      ["a field's name", base, { ...base, "\u0000": 1 }, /: a field name /],
    ];
    for (const [what, clean, withNul, field] of cases) {
      const answered = await search(clean);
      assert.equal(answered.status, 200, `${what}, without the NUL: ${answered.error}`);
      const calls = fake.stats.requests;
      const refused = await search(withNul);
      assert.equal(refused.status, 400, `${what}: ${refused.status} ${refused.error}`);
      assert.match(refused.error ?? "", field, what);
      assert.match(refused.error ?? "", /NUL character \(U\+0000\)/, what);
      assert.doesNotMatch(refused.error ?? "", /filter value/, what);
      assert.equal(fake.stats.requests, calls, `${what}: no provider call`);
    }
  });
});

/** A body of `total` bytes, streamed in 64 KiB chunks; `sent()` counts the bytes pulled so far. */
function streamedBody(total: number) {
  const chunk = new TextEncoder().encode("[" + " ".repeat(64 * 1024 - 1));
  let sent = 0;
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (sent >= total) return controller.close();
      sent += chunk.length;
      controller.enqueue(chunk);
    },
  });
  return { body, sent: () => sent, chunkBytes: chunk.length };
}

Deno.test("search: a body over the limit gets 413 and is read no further than the limit, with or without a true Content-Length", async () => {
  await withSearchHandler(async ({ post }) => {
    // Premise: a request just under the limit is answered (the limit refuses only what is over it).
    const request = JSON.stringify({ table: "documents", query: "hello world" });
    const padded = request + " ".repeat(MAX_BODY_BYTES - request.length);
    const under = await post(padded);
    assert.equal(under.status, 200, await under.clone().text());
    await under.body?.cancel();

    const over = await post(padded + " ");
    assert.equal(over.status, 413);
    assert.match((await over.json()).error, new RegExp(`${MAX_BODY_BYTES}`));

    const cases: [string, Record<string, string>, RegExp][] = [
      ["no Content-Length (chunked)", {}, /exceeds 65536 bytes/],
      ["a Content-Length that lies (100)", { "content-length": "100" }, /exceeds 65536 bytes/],
      ["a Content-Length that is not a number", { "content-length": "lots" }, /exceeds/],
    ];
    for (const [what, headers, message] of cases) {
      const stream = streamedBody(8 * 1024 * 1024);
      const res = await post(stream.body, headers);
      assert.equal(res.status, 413, what);
      assert.match((await res.json()).error, message, what);
      assert.ok(
        stream.sent() <= MAX_BODY_BYTES + 2 * stream.chunkBytes,
        `${what}: read ${stream.sent()} bytes of 8 MiB`,
      );
    }

    // A declared length over the limit: refused before reading (the stream's own first pull aside).
    const declared = streamedBody(8 * 1024 * 1024);
    const res = await post(declared.body, { "content-length": String(1024 ** 3) });
    assert.equal(res.status, 413);
    assert.match((await res.json()).error, /request body is 1073741824 bytes; the limit is 65536/);
    assert.ok(declared.sent() <= declared.chunkBytes, `read ${declared.sent()} bytes`);
  });
});
