// I2 and I12 at the moment two writers of one document's chunks overlap: a
// writer of older text that is held up (here by a lock on one of its
// chunks) while the text changes and a writer of the newer text starts
// must not leave chunks of the older set behind, nor a fingerprint that
// lies. The write locks the source row first (sql/chunks.ts), so the second
// writer waits and then sees what the first committed.
import assert from "node:assert/strict";
import { chunkProblems, createArticles } from "../_support/chunks.ts";
import { connect, withTestDb } from "../../devtools/db.ts";
import { makeDocument } from "../../devtools/documents.ts";
import { startPipeline } from "../../devtools/pipeline.ts";
import { settle } from "../_support/settle.ts";
import { waitFor } from "../../devtools/wait.ts";
import { processBatch } from "../../supabase/functions/_shared/core.ts";
import { coreSettings } from "../../supabase/functions/_shared/settings.ts";

Deno.test("chunks: a held-up writer of older text and a writer of newer text end with the newer set only", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    const writerA = connect(url);
    const writerB = connect(url);
    const holder = await sql.reserve();
    try {
      await createArticles(sql);
      await sql`insert into articles (id, title, body) values (1, 'doc', ${makeDocument(1, 30)})`;
      await settle(sql);
      const [{ k }] = await sql`select count(*)::int as k from article_chunks`;
      const env: Record<string, string> = {
        OPENAI_API_KEY: "sk-test-key-not-secret",
        OPENAI_BASE_URL: p.fake.baseURL,
      };
      const options = { providerFor: coreSettings((name) => env[name]).providerFor };
      const job = (jobId: number) => ({
        jobId,
        id: 1,
        schema: "public",
        table: "articles",
        contentFunction: "article_text",
        embeddingColumn: "article_chunks",
      });
      const waiting = async (n: number) => {
        const [{ w }] = await sql`
          select count(*)::int as w from pg_stat_activity
           where datname = current_database() and wait_event_type = 'Lock'`;
        return w >= n;
      };

      // Writer A, of a longer text, is held at the last chunk the row has now.
      await holder`begin`;
      await holder`select from article_chunks where source_id = 1 and chunk_seq = ${
        k - 1
      } for update`;
      await sql`update articles set body = ${makeDocument(1, 45)} where id = 1`;
      const a = processBatch(writerA, [job(1_000_001)], options);
      await waitFor(() => waiting(1), { what: "writer A to wait" });
      // The text changes to a short one, and writer B starts on it.
      const edit = sql`update articles set body = ${makeDocument(2, 5)} where id = 1`.execute();
      const b = processBatch(writerB, [job(1_000_002)], options);
      await waitFor(() => waiting(2), { what: "the edit or writer B to wait" });
      await holder`rollback`;
      await Promise.all([a, edit, b]);
      // The jobs the triggers queued, as the pipeline would run them.
      await settle(sql);
      assert.deepEqual(
        await chunkProblems(sql),
        [],
        "the chunks are the short text's, and only those",
      );
    } finally {
      holder.release();
      await writerA.end();
      await writerB.end();
      await p.stop();
    }
  });
});
