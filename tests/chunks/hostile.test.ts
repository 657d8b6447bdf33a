// I8 for chunked targets: a queue message can only name a chunked target
// exactly as its triggers do. Forged ids, columns, content functions and
// the destination itself are refused and dead-lettered without running
// anything, while the genuine job of the same batch completes.
import assert from "node:assert/strict";
import { chunkProblems, createArticles } from "../_support/chunks.ts";
import { withTestDb } from "../../devtools/db.ts";
import { makeDocument } from "../../devtools/documents.ts";
import { drainPush, startPipeline } from "../../devtools/pipeline.ts";
import { waitFor } from "../../devtools/wait.ts";

Deno.test("chunks I8: forged messages naming a chunked target are refused; the genuine job completes", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await createArticles(sql);
      await sql`insert into articles (id, title, body) values (1, 'doc', ${makeDocument(1, 8)})`;
      const base = { schema: "public", table: "articles", contentFunction: "article_text" };
      const forged = [
        { ...base, id: "1; drop table articles", embeddingColumn: "article_chunks" },
        { ...base, id: "1 or true", embeddingColumn: "article_chunks" },
        { ...base, id: 1, embeddingColumn: "body" },
        {
          ...base,
          id: 1,
          embeddingColumn: "article_chunks",
          contentFunction: "pg_catalog.pg_sleep",
        },
        { ...base, id: 1, table: "article_chunks", embeddingColumn: "embedding" },
        { ...base, id: 1, embeddingColumn: "article_chunks'; drop table articles; --" },
      ];
      for (const message of forged) {
        await sql`insert into pgmq.q_embedding_jobs (vt, message) values (now(), ${
          sql.json(message)
        })`;
      }
      await drainPush(sql, { batchSize: 100, maxRequests: 1, waitMs: 20_000 });
      assert.deepEqual(await chunkProblems(sql), [], "the genuine job's chunks are written");
      const [{ dead }] = await sql`select count(*)::int as dead from pgmq.a_embedding_jobs`;
      assert.equal(dead, forged.length, "every forged message is dead-lettered");
      const errors = await sql`select error from util.embedding_errors where not retryable`;
      assert.equal(errors.length, forged.length);
      for (const e of errors) assert.match(e.error, /^refused/);
      const [{ n }] = await sql`select count(*)::int as n from articles`;
      assert.equal(n, 1, "the articles are still there");
      for (const text of p.fake.stats.texts) assert.ok(!text.includes("drop table"));
    } finally {
      await p.stop();
    }
  });
});

Deno.test("chunks I5: a row the provider rejects and a row whose content function raises never block the others", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await createArticles(sql);
      await sql`
        create or replace function public.article_text(a public.articles) returns text language plpgsql immutable
          as $$ begin if a.title = 'broken' then raise exception 'no text for this one'; end if; return a.body; end $$`;
      p.fake.setFault({ kind: "reject-text", contains: "POISON" });
      await sql`insert into articles (id, title, body) values
        (1, 'doc', ${makeDocument(1, 20)}), (2, 'doc', ${
        makeDocument(2, 20) + "\n\nPOISON paragraph"
      }),
        (3, 'broken', ${makeDocument(3, 20)}), (4, 'doc', ${makeDocument(4, 20)})`;
      // The raising row is retried with backoff, so the queue does not drain
      // soon: wait for the outcome of the first attempts instead.
      await waitFor(async () => {
        await sql`select util.process_embeddings(100, 1, 10000)`;
        const [row] = await sql`
          select (select count(distinct source_id) from article_chunks)::int as with_chunks,
                 (select count(distinct row_id) from util.embedding_errors)::int as with_errors`;
        return row.with_chunks === 2 && row.with_errors === 2;
      }, { what: "the healthy rows' chunks and the two errors" });
      const bySource =
        await sql`select distinct source_id::int as id from article_chunks order by 1`;
      assert.deepEqual(bySource.map((r) => r.id), [1, 4], "the healthy rows have their chunks");
      const errors =
        await sql`select row_id, retryable, error from util.embedding_errors order by row_id`;
      assert.ok(
        errors.some((e) => e.row_id === "2" && !e.retryable),
        "the rejected row's error is recorded",
      );
      assert.ok(errors.some((e) => e.row_id === "3" && /no text for this one/.test(e.error)));
    } finally {
      await p.stop();
    }
  });
});
