// The embed function's budget per call (EMBED_CPU_BUDGET_MS for splitting
// and counting, EMBED_MAX_CHUNKS_PER_CALL): a call that has used it hands
// back the rows it has not started, and a long text's split continues in the
// next call from its draft, without spending attempts. A CPU budget of 0
// makes each call take the least work it can (its first row that needs
// counting, a long text's first segment), and a chunk count is exact, so
// these tests do not depend on the machine's speed.
import assert from "node:assert/strict";
import { type Sql, withTestDb } from "../../devtools/db.ts";
import { makeDocument } from "../../devtools/documents.ts";
import { providerEnv } from "../../devtools/cli.ts";
import {
  createDocuments,
  drainPush,
  type Pipeline,
  startPipeline,
} from "../../devtools/pipeline.ts";
import { processBatch } from "../../supabase/functions/_shared/core.ts";
import { claimJobs } from "../../supabase/functions/_shared/sql/queue.ts";
import { coreSettings } from "../../supabase/functions/_shared/settings.ts";
import { splitIntoChunks } from "../../supabase/functions/_shared/chunking/split.ts";
import { tokenCounterFor } from "../../supabase/functions/_shared/providers/tokens.ts";
import { ARTICLE_SETTINGS, chunkProblems, createArticles } from "../_support/chunks.ts";
import { assertAllFresh } from "../_support/rows.ts";

const counter = tokenCounterFor("text-embedding-3-small");

/** The `batch` events the function logged, one per call that processed jobs. */
function batches(p: Pipeline): Record<string, number>[] {
  return p.logs.map((l) => {
    try {
      return JSON.parse(l);
    } catch {
      return null;
    }
  }).filter((e) => e?.event === "batch");
}

/** Attempts are not spent: none recorded, none dead-lettered, at a max_attempts every test exceeds in calls. */
async function assertNoAttemptSpent(sql: Sql) {
  const [row] = await sql`
    select (select count(*) from util.embedding_errors)::int as errors,
           (select count(*) from pgmq.a_embedding_jobs)::int as dead`;
  assert.deepEqual(row, { errors: 0, dead: 0 });
}

Deno.test("CPU budget: a long document is chunked across calls, each continuing the draft, and written whole", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url, { env: { EMBED_CPU_BUDGET_MS: "0" } });
    try {
      await createArticles(sql);
      await sql`update util.settings set value = '2' where name = 'max_attempts'`;
      const body = makeDocument(21, 40);
      const chunks = splitIntoChunks(body, ARTICLE_SETTINGS, counter).length;
      await sql`insert into articles (title, body) values ('long', ${body})`;
      await drainPush(sql, { maxRequests: 1 });

      const calls = batches(p);
      // Premise: the document took more calls than max_attempts allows attempts.
      assert.ok(calls.length > 2, `${calls.length} calls`);
      assert.ok(calls.slice(0, -1).every((b) => b.drafted === 1 && b.handedBack === 1));
      assert.deepEqual(
        [calls.at(-1)!.written, calls.at(-1)!.drafted, calls.at(-1)!.handedBack],
        [1, 0, 0],
      );
      // Claim: the chunks are exactly those of one pass over the text, each
      // embedded once, and no draft is left.
      assert.deepEqual(await chunkProblems(sql), []);
      assert.equal(p.fake.stats.inputs, chunks);
      assert.equal(calls.reduce((n, b) => n + b.chunksEmbedded, 0), chunks);
      assert.equal(calls.at(-1)!.chunks, chunks, "the last call reports the whole set written");
      const [{ drafts }] = await sql`
        select (select count(*) from util.chunk_set_drafts)::int
             + (select count(*) from util.chunk_set_draft_chunks)::int as drafts`;
      assert.equal(drafts, 0);
      await assertNoAttemptSpent(sql);
    } finally {
      await p.stop();
    }
  });
});

Deno.test("chunks per call: a long document's calls each take the least whole segments reaching the cap", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url, {
      env: { EMBED_CPU_BUDGET_MS: "1000000", EMBED_MAX_CHUNKS_PER_CALL: "5" },
    });
    try {
      await createArticles(sql);
      const body = makeDocument(22, 30);
      const chunks = splitIntoChunks(body, ARTICLE_SETTINGS, counter).length;
      await sql`insert into articles (title, body) values ('long', ${body})`;
      await drainPush(sql, { maxRequests: 1 });

      const perCall = batches(p).map((b) => b.chunksEmbedded);
      // Premise: more chunks than a call may take.
      assert.ok(chunks > 10, `${chunks} chunks`);
      assert.equal(perCall.reduce((a, b) => a + b, 0), chunks);
      // A segment is one or two chunks at these settings: a call stops at 5 or 6.
      assert.ok(perCall.slice(0, -1).every((n) => n === 5 || n === 6), perCall.join(", "));
      assert.ok(perCall.at(-1)! <= 6, perCall.join(", "));
      assert.deepEqual(await chunkProblems(sql), []);
      await assertNoAttemptSpent(sql);
    } finally {
      await p.stop();
    }
  });
});

Deno.test("CPU budget: rows that need counting once it is spent go to the next call; short ones go on", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url, { env: { EMBED_CPU_BUDGET_MS: "0" } });
    try {
      await createDocuments(sql);
      await sql`update util.settings set value = '2' where name = 'max_attempts'`;
      // One statement, so one message: four long texts (counted against the
      // input limit), then ten short ones (too short to need counting).
      const long = [1, 2, 3, 4].map((i) => counter.truncate(makeDocument(30 + i, 60), 3_000));
      await sql`
        insert into documents (title, content)
        select t.title, t.content
          from unnest(${[
        ...long.map((_, i) => `long ${i}`),
        ...Array.from({ length: 10 }, (_, i) => `short ${i}`),
      ]}::text[],
                      ${[
        ...long,
        ...Array.from({ length: 10 }, (_, i) => `a short text ${i}`),
      ]}::text[])
            with ordinality as t(title, content, n)
         order by t.n`;
      await drainPush(sql, { maxRequests: 1 });

      const calls = batches(p).map((b) => [b.written, b.handedBack]);
      assert.deepEqual(calls, [[11, 3], [1, 2], [1, 1], [1, 0]]);
      await assertAllFresh(sql);
      assert.equal(p.fake.stats.inputs, 14, "every text embedded once");
      await assertNoAttemptSpent(sql);
    } finally {
      await p.stop();
    }
  });
});

Deno.test("CPU budget: a draft of text that changed is dropped, and the new text is chunked from its start", async () => {
  await withTestDb(async (sql, url) => {
    // The core alone, one call at a time, so the text can change between two calls.
    const p = await startPipeline(sql, url, { dispatcher: false });
    try {
      await createArticles(sql);
      const env = providerEnv(p.fake);
      const settings = coreSettings((name) => env[name]);
      const [{ id }] = await sql`
      insert into articles (title, body) values ('a', ${makeDocument(41, 30)}) returning id`;
      const step = async () => {
        const { jobs } = await claimJobs(sql, { visibilitySeconds: 60, maxRows: 100 });
        return (await processBatch(sql, jobs, {
          providerFor: settings.providerFor,
          limits: { cpuMs: 0 },
        }))
          .stats;
      };
      assert.equal((await step()).drafted, 1);
      const [first] = await sql`select chunks, content_hash from util.chunk_set_drafts`;
      assert.ok(first.chunks > 0, "a first portion is drafted");

      const edited = makeDocument(42, 30);
      await sql`update articles set body = ${edited} where id = ${id}`;
      for (let i = 0;; i++) {
        assert.ok(i < 200, "the new text is done in at most 200 calls");
        const stats = await step();
        if (stats.written === 1) break;
        const [draft] = await sql`select content_hash from util.chunk_set_drafts`;
        assert.notDeepEqual(draft.content_hash, first.content_hash, "the old text's draft is gone");
      }
      assert.deepEqual(await chunkProblems(sql), []);
      const [{ n }] = await sql`select count(*)::int as n from util.chunk_set_drafts`;
      assert.equal(n, 0);
    } finally {
      await p.stop();
    }
  });
});
