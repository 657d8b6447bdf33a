// Search over chunks runs as the caller (I13): RLS of the source decides
// which chunks a role sees, through the destination's policy and grants.
import assert from "node:assert/strict";
import { createArticles, createArticleSearch } from "../_support/chunks.ts";
import { type Sql, withTestDb } from "../../devtools/db.ts";
import { makeDocument } from "../../devtools/documents.ts";
import { fakeVector } from "../../devtools/fake_openai.ts";
import { startPipeline, TEST_DIMENSIONS } from "../../devtools/pipeline.ts";
import { settle } from "../_support/settle.ts";

const asAnon = <T>(sql: Sql, fn: (tx: Sql) => Promise<T>) =>
  sql.begin(async (tx) => {
    await tx`set local role anon`;
    await tx`select set_config('request.jwt.claims', '{"role":"anon"}', true)`;
    return await fn(tx as unknown as Sql);
  }) as Promise<T>;

Deno.test("chunks search: anon never gets a chunk of an article it cannot select", async () => {
  await withTestDb(async (sql, url) => {
    const pipeline = await startPipeline(sql, url);
    try {
      await createArticles(sql, undefined, { rls: true });
      await createArticleSearch(sql);
      for (let i = 1; i <= 6; i++) {
        await sql`insert into articles (id, title, body, public)
                  values (${i}, ${"doc " + i}, ${makeDocument(i, 12)}, ${i % 2 === 0})`;
      }
      await settle(sql);
      const chunks = await sql<{ source_id: string; chunk: string }[]>`
        select source_id::text, chunk from article_chunks order by source_id, chunk_seq`;
      assert.ok(chunks.some((c) => c.source_id === "1"), "the private articles have chunks");

      const visible = await asAnon(
        sql,
        (tx) => tx`select distinct source_id::int as id from article_chunks`,
      );
      assert.deepEqual(
        visible.map((r) => r.id).sort(),
        [2, 4, 6],
        "anon sees chunks of public articles only",
      );

      // Query with the exact vector of each chunk: the best match of a public
      // chunk is its own article; a private chunk's own article never shows.
      for (const c of chunks) {
        const query = JSON.stringify(fakeVector(c.chunk, TEST_DIMENSIONS));
        const found = await asAnon(
          sql,
          (tx) =>
            tx`select article_id::text, section, similarity from match_articles(${query}, -1, 5)`,
        );
        assert.ok(
          found.every((r) => Number(r.article_id) % 2 === 0),
          `anon got ${found.map((r) => r.article_id)}`,
        );
        if (Number(c.source_id) % 2 === 0) {
          assert.equal(
            found[0]?.article_id,
            c.source_id,
            "a public chunk finds its own article first",
          );
          assert.ok(found[0].similarity > 0.99);
        }
      }
      // The owner sees everything, through util.match_chunks too.
      const query = JSON.stringify(fakeVector(chunks[0].chunk, TEST_DIMENSIONS));
      const all = await sql`
        select source_id, chunk, similarity from util.match_chunks('article_chunks', ${query}::halfvec, 3)`;
      assert.equal(all[0].source_id, chunks[0].source_id);
      assert.equal(all[0].chunk, chunks[0].chunk);
      assert.equal(new Set(all.map((r) => r.source_id)).size, all.length, "one row per article");
    } finally {
      await pipeline.stop();
    }
  });
});
