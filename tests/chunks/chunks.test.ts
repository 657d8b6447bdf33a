// Chunked targets end to end through the push path: a backfill of long
// markdown documents, the cost of a local edit, no-op updates, shrinking
// texts, deletes, settings changes, and status.
import assert from "node:assert/strict";
import { ARTICLE_SETTINGS, chunkProblems, createArticles } from "../_support/chunks.ts";
import { withTestDb } from "../_support/db.ts";
import { editParagraph, makeDocument } from "../_support/documents.ts";
import { startPipeline } from "../_support/pipeline.ts";
import { settle } from "../_support/settle.ts";

Deno.test("chunks: 20 long documents embedded chunk by chunk; a one-paragraph edit costs at most 3 inputs", async () => {
  await withTestDb(async (sql, url) => {
    const pipeline = await startPipeline(sql, url);
    try {
      await createArticles(sql);
      await sql`
        insert into articles (title, body)
        select 'doc ' || g, x from generate_series(1, 20) g, lateral (select ${""}::text as x) y`;
      for (let i = 1; i <= 20; i++) {
        await sql`update articles set body = ${makeDocument(i, 60)} where id = ${i}`;
      }
      await settle(sql);
      assert.deepEqual(await chunkProblems(sql), []);
      const [{ n }] = await sql`select count(*)::int as n from article_chunks`;
      assert.ok(n >= 20 * 5, `long documents make many chunks (${n})`);

      pipeline.fake.resetStats();
      const [{ body }] = await sql`select body from articles where id = 7`;
      await sql`update articles set body = ${editParagraph(body, 30)} where id = 7`;
      await settle(sql);
      assert.deepEqual(await chunkProblems(sql), []);
      const inputs = pipeline.fake.stats.inputs;
      assert.ok(inputs >= 1 && inputs <= 3, `a one-paragraph edit cost ${inputs} provider inputs`);

      pipeline.fake.resetStats();
      await sql`update articles set title = 'renamed' where id = 7`;
      await sql`update articles set body = body where id between 1 and 20`;
      await settle(sql);
      assert.equal(pipeline.fake.stats.inputs, 0, "no-op updates cost nothing");
    } finally {
      await pipeline.stop();
    }
  });
});
