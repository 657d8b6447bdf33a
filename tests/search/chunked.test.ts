// Search over a chunked target as an app does it: supabase-js
// functions.invoke('search') on the source table, whose long markdown
// articles the real push pipeline split into chunks. Each result is a source
// row with its best chunk; RLS on the articles decides what a caller finds.
import assert from "node:assert/strict";
import { createArticles } from "../_support/chunks.ts";
import { type Sql, withTestDb } from "../../devtools/db.ts";
import { makeDocument } from "../../devtools/documents.ts";
import { fakeVector } from "../../devtools/fake_openai.ts";
import { startPipeline, TEST_DIMENSIONS, TEST_MODEL } from "../../devtools/pipeline.ts";
import {
  invokeSearch,
  type SearchAnswer,
  type SearchStack,
  startSearchStack,
} from "../_support/search.ts";
import { settle } from "../_support/settle.ts";

/** One section each article has on its own, appended to generated prose; the last is private. */
const SECTIONS = [
  {
    heading: "Rotating the bearer secret",
    text: "Rotate the bearer secret of the embed function in Vault, then restart the gateway.",
    public: true,
  },
  {
    heading: "Tuning HNSW recall",
    text: "Raise ef_search to trade latency for recall of nearest neighbour lookups.",
    public: true,
  },
  {
    heading: "Billing per token",
    text: "Providers bill every input token; unchanged paragraphs cost nothing twice.",
    public: true,
  },
  {
    heading: "Hidden rotation roadmap",
    text: "Rotate the bearer secret of the embed function in Vault every night, privately.",
    public: false,
  },
];

/** Articles 1..4 (4 is private to anon), chunked by markdown headings and embedded. */
async function createChunkedArticles(sql: Sql, dbUrl: string): Promise<void> {
  // Wider vectors than the default: the lexical fake provider ranks words better.
  await createArticles(sql, undefined, { rls: true, dimensions: TEST_DIMENSIONS * 4 });
  for (const [i, s] of SECTIONS.entries()) {
    const body = `${makeDocument(i + 1, 10)}\n## ${s.heading}\n\n${s.text}\n`;
    await sql`insert into articles (id, title, body, public)
              values (${i + 1}, ${"article " + (i + 1)}, ${body}, ${s.public})`;
  }
  const pipeline = await startPipeline(sql, dbUrl, { vectors: "lexical" });
  try {
    await settle(sql);
  } finally {
    await pipeline.stop();
  }
  const [{ missing }] = await sql`
    select count(*)::int as missing from article_chunks where embedding is null`;
  assert.equal(missing, 0, "every chunk is embedded before searching");
}

async function withChunkedSearch(fn: (stack: SearchStack, sql: Sql) => Promise<void>) {
  await withTestDb(async (sql, url) => {
    await createChunkedArticles(sql, url);
    const stack = await startSearchStack(url);
    try {
      await fn(stack, sql);
    } finally {
      await stack.stop();
    }
  });
}

const ids = (answer: SearchAnswer | null) => (answer?.results ?? []).map((r) => r.id);

Deno.test("search on a chunked target: one result per article with its best chunk, as the caller", async (t) => {
  await withChunkedSearch(async (stack, sql) => {
    const anon = stack.client();
    const everything = { match_count: 100, match_threshold: -1 };

    await t.step(
      "the right article first, with the section searched for as its chunk",
      async () => {
        const res = await invokeSearch(anon, {
          table: "articles",
          query: "ef_search recall latency",
        });
        assert.equal(res.status, 200, res.error ?? "");
        const best = res.data!.results[0];
        assert.equal(best.id, "2");
        assert.equal(best.row.title, "article 2");
        assert.deepEqual(Object.keys(best.row).sort(), ["body", "id", "public", "title"]);
        assert.ok(best.chunk, "a chunked result carries its chunk");
        assert.match(best.chunk.text, /Raise ef_search to trade latency/);
        assert.equal(best.chunk.similarity, best.similarity);
        const [{ chunk }] = await sql`
        select chunk from article_chunks where source_id = 2 and chunk_seq = ${best.chunk.seq}`;
        assert.equal(chunk, best.chunk.text, "seq names the chunk in the side table");
        const sims = res.data!.results.map((r) => r.similarity!);
        assert.deepEqual(sims, [...sims].sort((a, b) => b - a), "best first");
        assert.equal(new Set(ids(res.data)).size, res.data!.results.length, "one result per row");
      },
    );

    await t.step("anon never gets a private article nor its chunks, in either mode", async () => {
      for (const mode of ["vector", "hybrid"]) {
        const res = await invokeSearch(anon, {
          table: "public.articles",
          query: "rotate the bearer secret of the embed function in Vault every night",
          mode,
          ...everything,
        });
        assert.equal(res.status, 200, res.error ?? "");
        assert.deepEqual(ids(res.data).sort(), ["1", "2", "3"], `${mode}: the public articles`);
        assert.equal(res.data!.results[0].id, "1", `${mode}: the public rotation section first`);
        assert.ok(
          res.data!.results.every((r) => !/privately|Hidden rotation/.test(r.chunk!.text)),
          `${mode}: no chunk of the private article`,
        );
      }
      const service = await invokeSearch(stack.client(stack.serviceKey), {
        table: "articles",
        query: "rotate the bearer secret of the embed function in Vault every night",
        ...everything,
      });
      assert.equal(service.status, 200, service.error ?? "");
      assert.equal(service.data!.results[0].id, "4", "the service key sees the private one");
      assert.match(service.data!.results[0].chunk!.text, /every night, privately/);
    });

    await t.step("hybrid finds a chunk by its words where vector alone finds none", async () => {
      // No chunk is this close to the query's vector; the full-text ranking has no threshold.
      const body = { table: "articles", query: "unchanged paragraphs", match_threshold: 0.95 };
      const vector = await invokeSearch(anon, body);
      assert.equal(vector.status, 200, vector.error ?? "");
      assert.deepEqual(ids(vector.data), []);
      const res = await invokeSearch(anon, { ...body, mode: "hybrid" });
      assert.equal(res.status, 200, res.error ?? "");
      assert.deepEqual(ids(res.data), ["3"], "only article 3 has the word 'unchanged'");
      assert.match(res.data!.results[0].chunk!.text, /unchanged paragraphs cost nothing/);
      assert.ok(res.data!.results[0].similarity! < 0.95, "found by its words");
    });

    await t.step("a filter applies to the article's columns; a bad key gets 400", async () => {
      const res = await invokeSearch(anon, {
        table: "articles",
        query: "ef_search recall latency",
        filter: { title: "article 3" },
        ...everything,
      });
      assert.equal(res.status, 200, res.error ?? "");
      assert.deepEqual(ids(res.data), ["3"]);
      for (const key of ["source_id", "chunk", "title = title or true --"]) {
        const bad = await invokeSearch(anon, {
          table: "articles",
          query: "recall",
          filter: { [key]: "x" },
        });
        assert.equal(bad.status, 400, `${key}: ${bad.error}`);
      }
    });

    await t.step(
      "the destination names the target with column; the table of chunks is no source",
      async () => {
        const named = await invokeSearch(anon, {
          table: "articles",
          column: "article_chunks",
          query: "ef_search recall latency",
        });
        assert.equal(named.status, 200, named.error ?? "");
        assert.equal(named.data!.results[0].id, "2");
        const side = await invokeSearch(anon, { table: "article_chunks", query: "recall" });
        assert.equal(side.status, 404, side.error ?? "");
      },
    );

    await t.step("a repeated query costs no second provider call", async () => {
      const body = { table: "articles", query: "trade latency for recall" };
      const before = stack.fake.stats.requests;
      const first = await invokeSearch(anon, body);
      assert.equal(stack.fake.stats.requests, before + 1, "the first query is embedded");
      const second = await invokeSearch(anon, body);
      assert.equal(stack.fake.stats.requests, before + 1, "the second comes from the cache");
      assert.deepEqual(second.data, first.data);
    });
  });
});

Deno.test("search on a source with a whole-row and a chunked target: the whole row by default, the chunks by column", async () => {
  await withTestDb(async (sql, url) => {
    await sql.unsafe(`
      create table public.articles (
        id bigint primary key generated by default as identity,
        title text not null,
        body text not null,
        public boolean not null default true,
        embedding halfvec(${TEST_DIMENSIONS * 4})
      );
      create function public.article_text(a public.articles) returns text language sql immutable
        as $$ select a.body $$;
    `).simple();
    await sql`select util.enable_embeddings('public.articles', 'article_text', model => ${TEST_MODEL})`;
    await createArticles(sql, undefined, { createTable: false, dimensions: TEST_DIMENSIONS * 4 });
    for (const [i, s] of SECTIONS.entries()) {
      const body = `${makeDocument(i + 1, 10)}\n## ${s.heading}\n\n${s.text}\n`;
      await sql`insert into articles (id, title, body) values (${i + 1}, ${
        "article " + (i + 1)
      }, ${body})`;
    }
    const pipeline = await startPipeline(sql, url, { vectors: "lexical" });
    try {
      await settle(sql);
    } finally {
      await pipeline.stop();
    }
    const stack = await startSearchStack(url);
    try {
      const anon = stack.client();
      const query = "ef_search recall latency";
      const whole = await invokeSearch(anon, { table: "articles", query, match_threshold: -1 });
      assert.equal(whole.status, 200, whole.error ?? "");
      assert.equal(whole.data!.results.length, SECTIONS.length);
      assert.ok(whole.data!.results.every((r) => r.chunk === undefined), "whole rows, no chunks");

      const chunked = await invokeSearch(anon, {
        table: "articles",
        column: "article_chunks",
        query,
      });
      assert.equal(chunked.status, 200, chunked.error ?? "");
      const best = chunked.data!.results[0];
      assert.equal(best.id, "2");
      assert.match(best.chunk!.text, /Raise ef_search/);
      assert.deepEqual(
        Object.keys(best.row).sort(),
        ["body", "id", "public", "title"],
        "the source's own embedding column stays out of the row",
      );
      const filtered = await invokeSearch(anon, {
        table: "articles",
        column: "article_chunks",
        query,
        filter: { embedding: null },
      });
      assert.equal(filtered.status, 400, "no filter on the source's embedding column");
    } finally {
      await stack.stop();
    }
  });
});

Deno.test("util.match_chunked returns match_count rows through the HNSW index, though each row's chunks crowd its nearest", async () => {
  await withTestDb(async (sql) => {
    await createArticles(sql);
    // 20 articles of 20 chunks each; an article's chunks lie close together,
    // so the 40 chunks a plain HNSW scan yields (hnsw.ef_search) belong to a
    // few articles only. Chunks written directly: no pipeline is running.
    const articles = 20, chunksEach = 20;
    for (let a = 1; a <= articles; a++) {
      await sql`insert into articles (id, title, body) values (${a}, ${"article " + a}, 'text')`;
      const base = fakeVector(`article ${a}`, TEST_DIMENSIONS);
      const rows = Array.from({ length: chunksEach }, (_, seq) => {
        const noise = fakeVector(`article ${a} chunk ${seq}`, TEST_DIMENSIONS);
        const v = base.map((x, i) => x + 0.05 * noise[i]);
        return {
          source_id: a,
          chunk_seq: seq,
          chunk: `chunk ${seq}`,
          embedding: JSON.stringify(v),
        };
      });
      for (const r of rows) {
        await sql`insert into article_chunks (source_id, chunk_seq, chunk, embedding, chunk_hash)
                  values (${r.source_id}, ${r.chunk_seq}, ${r.chunk}, ${r.embedding}::halfvec,
                          sha256(${r.chunk}::bytea))`;
      }
    }
    await sql`analyze article_chunks`;
    const query = JSON.stringify(fakeVector("article 7", TEST_DIMENSIONS));
    const found = await sql.begin(async (tx) => {
      // As on a large table: the index, not a sort of every chunk.
      await tx`set local enable_seqscan = off`;
      await tx`set local enable_sort = off`;
      const [plan] = await tx`
        explain (format json) select * from article_chunks order by embedding <=> ${query}::halfvec limit 160`;
      assert.match(JSON.stringify(plan), /article_chunks_embedding_idx/, "the plan uses the index");
      return await tx<{ id: string }[]>`
        select id from util.match_chunked('public.articles', 'public.article_chunks',
                                          ${query}::extensions.vector, match_count => 20,
                                          match_threshold => -1)`;
    });
    assert.equal(found[0]?.id, "7");
    assert.equal(found.length, articles, "every article, each once");
  });
});
