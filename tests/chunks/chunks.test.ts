// Chunked targets end to end through the push path: a backfill of long
// markdown documents, the cost of a local edit, no-op updates, shrinking
// texts, deletes, settings changes, and status.
import assert from "node:assert/strict";
import { ARTICLE_SETTINGS, chunkProblems, createArticles } from "../_support/chunks.ts";
import { connect, type Sql, withTestDb } from "../../devtools/db.ts";
import { editParagraph, makeDocument } from "../../devtools/documents.ts";
import { startPipeline, TEST_MODEL } from "../../devtools/pipeline.ts";
import { embeddingProblem } from "../_support/rows.ts";
import { tokenCounterFor } from "../../supabase/functions/_shared/providers/tokens.ts";
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

Deno.test("chunks: a shrinking text drops surplus chunks, deletes cascade, a settings change pays only new chunk texts", async () => {
  await withTestDb(async (sql, url) => {
    const pipeline = await startPipeline(sql, url);
    try {
      await createArticles(sql);
      for (let i = 1; i <= 3; i++) {
        await sql`insert into articles (id, title, body) values (${i}, ${"doc " + i}, ${
          makeDocument(i, 40)
        })`;
      }
      await settle(sql);
      assert.deepEqual(await chunkProblems(sql), []);
      const count = async (id: number) =>
        (await sql`select count(*)::int as n from article_chunks where source_id = ${id}`)[0].n;
      const before = await count(1);

      const [{ body }] = await sql`select body from articles where id = 1`;
      await sql`update articles set body = ${
        body.slice(0, Math.floor(body.length / 3))
      } where id = 1`;
      await sql`update articles set body = '   ' where id = 3`;
      await settle(sql);
      assert.deepEqual(await chunkProblems(sql), []);
      assert.ok((await count(1)) < before, "the shorter text has fewer chunks");
      assert.equal(await count(3), 0, "a blank text has no chunks");
      const [blank] = await sql`
        select count(*)::int as n from util.embedding_fingerprints f
          join util.embedding_targets t on t.id = f.target_id
         where t.destination = 'public.article_chunks'::regclass and f.row_id = '3'`;
      assert.equal(blank.n, 0, "nor a fingerprint");

      await sql`delete from articles where id = 2`;
      assert.equal(await count(2), 0, "the delete cascaded to the chunks");
      await settle(sql);

      const [status] = await sql`
        select total_rows::int, embedded::int, missing::int, stale::int, chunks::int, destination
          from util.embedding_status_exact() where embedding_column = 'article_chunks'`;
      assert.deepEqual(
        { ...status },
        {
          total_rows: 2,
          embedded: 1,
          missing: 0,
          stale: 0,
          chunks: await count(1),
          destination: "public.article_chunks",
        },
      );

      // A larger chunk size: every row is re-chunked; the provider sees only
      // chunk texts no chunk held before.
      const settings = { ...ARTICLE_SETTINGS, chunkSize: 256 };
      const old = new Set((await sql`select chunk from article_chunks`).map((r) => r.chunk));
      pipeline.fake.resetStats();
      await sql`select util.set_chunking('public.articles', chunk_size => 256)`;
      const [stale] =
        await sql`select stale::int from util.embedding_status_exact() where embedding_column = 'article_chunks'`;
      assert.equal(stale.stale, 1, "the settings change made the row stale");
      await settle(sql);
      assert.deepEqual(await chunkProblems(sql, settings), []);
      const fresh = pipeline.fake.stats.embeddedTexts;
      assert.ok(fresh.length > 0, "new chunk texts were embedded");
      assert.deepEqual(fresh.filter((t) => old.has(t)), [], "no chunk text was paid for twice");
    } finally {
      await pipeline.stop();
    }
  });
});

Deno.test("chunks: arguments are checked, disable says what it leaves (a model change in progress goes)", async () => {
  await withTestDb(async (sql, url) => {
    await createArticles(sql);
    const codeOf = async (statement: string) => {
      try {
        await sql.unsafe(statement);
        return "ok";
      } catch (err) {
        return (err as { code?: string }).code;
      }
    };
    assert.equal(await codeOf("select util.set_chunking('articles', chunk_size => 8)"), "AE003");
    assert.equal(
      await codeOf("select util.set_chunking('articles', chunk_overlap => 100)"),
      "AE003",
    );
    assert.equal(await codeOf("select util.set_chunking('articles', splitter => 'html')"), "AE003");
    assert.equal(
      await codeOf("select util.enable_embeddings('articles', 'article_text', chunk_size => 100)"),
      "AE003",
    );
    assert.equal(
      await codeOf(
        "select util.reembed('articles', 'article_chunks', model => 'text-embedding-3-large', dimensions => 4001)",
      ),
      "AE003",
      "halfvec HNSW indexes take up to 4000 dimensions",
    );
    assert.equal(await codeOf("select util.set_chunking('articles', chunk_size => 64)"), "ok");
    // A model change in progress goes with the target (its shadow table too).
    assert.equal(
      await codeOf(
        "select util.reembed('articles', 'article_chunks', model => 'text-embedding-3-large', dimensions => 32)",
      ),
      "ok",
    );
    const notices: string[] = [];
    const listening = connect(url, { onnotice: (n) => notices.push(n.message) });
    try {
      await listening`select util.disable_embeddings('articles', 'article_chunks')`;
    } finally {
      await listening.end();
    }
    assert.ok(
      notices.some((n) => n.includes("article_chunks") && n.includes("stays")),
      notices.join(),
    );
    const [kept] = await sql`select to_regclass('public.article_chunks') is not null as kept`;
    assert.ok(kept.kept, "the destination stays by default");
    const shadows =
      await sql`select relname from pg_class where relname like '\_autoembed\_chunks\_%'`;
    assert.deepEqual([...shadows], [], "the model change's shadow table is gone");
    await reattach(sql);
  });
});

/** Enabling onto an existing table of the same name is refused (AE003); drop_destination drops it. */
async function reattach(sql: Sql) {
  try {
    await sql`select util.enable_embeddings('articles', 'article_text', destination => 'public.article_chunks')`;
    assert.fail("enabling onto an existing table must be refused");
  } catch (err) {
    assert.equal((err as { code?: string }).code, "AE003");
  }
  await sql`drop table article_chunks`;
  await sql`select util.enable_embeddings('articles', 'article_text', destination => 'public.article_chunks')`;
  await sql`select util.disable_embeddings('articles', 'article_chunks', drop_destination => true)`;
  const [gone] = await sql`select to_regclass('public.article_chunks') is null as gone`;
  assert.ok(gone.gone, "drop_destination drops it");
}

Deno.test("chunks: a unit over the model's input limit is stored whole, embedded from its start, and noted", async () => {
  await withTestDb(async (sql, url) => {
    const pipeline = await startPipeline(sql, url);
    try {
      const settings = { splitter: "none" as const, chunkSize: 8191, chunkOverlap: 0 };
      await createArticles(sql, settings);
      const counter = tokenCounterFor(TEST_MODEL);
      const long = Array.from({ length: 9000 }, (_, i) => `word${i % 50}`).join(" ");
      assert.ok(counter.count(long) > 8191, "the premise: one text over the limit");
      await sql`insert into articles (id, title, body) values (1, 'long', ${long}), (2, 'short', 'a short text')`;
      await settle(sql);
      const chunks = await sql`
        select source_id::int as id, chunk, embedding::text from article_chunks order by source_id, chunk_seq`;
      assert.deepEqual(chunks.map((c) => c.id), [1, 2]);
      assert.equal(chunks[0].chunk, long, "the chunk holds the whole text");
      assert.equal(embeddingProblem(chunks[0].embedding, counter.truncate(long, 8191)), null);
      assert.equal(embeddingProblem(chunks[1].embedding, "a short text"), null);
      const notes =
        await sql`select row_id, retryable, dead_lettered, error from util.embedding_errors`;
      assert.equal(notes.length, 1);
      assert.equal(notes[0].row_id, "1");
      assert.equal(notes[0].retryable, false);
      assert.equal(notes[0].dead_lettered, false);
      assert.match(notes[0].error, /over the 8191-token input limit/);
      const [{ dead }] = await sql`select count(*)::int as dead from pgmq.a_embedding_jobs`;
      assert.equal(dead, 0, "nothing was dead-lettered");
    } finally {
      await pipeline.stop();
    }
  });
});
