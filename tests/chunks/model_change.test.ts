// I7 per chunk: a model change of a chunked target builds the new model's
// chunks in a shadow destination table, keeps the live destination on the old
// model and fresh meanwhile, and switches in one transaction: the table keeps
// the user's name, index, policy and grants. A cancel leaves nothing behind;
// a view on the destination holds the switch back and says why.
import assert from "node:assert/strict";
import { ARTICLE_SETTINGS, chunkProblems, createArticles } from "../_support/chunks.ts";
import { type Sql, withTestDb } from "../../devtools/db.ts";
import { editParagraph, makeDocument } from "../../devtools/documents.ts";
import { fakeVector } from "../../devtools/fake_openai.ts";
import { startPipeline, TEST_DIMENSIONS } from "../../devtools/pipeline.ts";
import { embeddingProblem } from "../_support/rows.ts";
import { settle } from "../_support/settle.ts";
import { waitFor } from "../../devtools/wait.ts";

const NEW_MODEL = "text-embedding-3-large";
const NEW_DIMENSIONS = 32;
/** The chunk settings after the set_chunking made during the change. */
const SETTINGS = { ...ARTICLE_SETTINGS, chunkSize: 96 };

const asAnon = <T>(sql: Sql, fn: (tx: Sql) => Promise<T>) =>
  sql.begin(async (tx) => {
    await tx`set local role anon`;
    await tx`select set_config('request.jwt.claims', '{"role":"anon"}', true)`;
    return await fn(tx as unknown as Sql);
  }) as Promise<T>;

/** public.articles with an RLS policy for anon (public rows only), attached as a chunked target. */
async function createPublicArticles(sql: Sql): Promise<void> {
  await createArticles(sql, undefined, { rls: true });
  for (let i = 1; i <= 6; i++) {
    await sql`insert into articles (id, title, body, public)
              values (${i}, ${"doc " + i}, ${makeDocument(i, 12)}, ${i % 2 === 0})`;
  }
}

/** What the destination and the pipeline's bookkeeping look like in the catalog. */
async function catalog(sql: Sql) {
  const tables = await sql`
    select relname::text, relrowsecurity, coalesce(relacl::text, '') as acl from pg_class
     where relnamespace = 'public'::regnamespace and relkind = 'r' order by 1`;
  const indexes = await sql`
    select indexname::text, regexp_replace(indexdef, 'halfvec\\(\\d+\\)', 'halfvec') as def
      from pg_indexes where schemaname = 'public' order by 1`;
  const constraints = await sql`
    select conname::text, conrelid::regclass::text as rel, contype::text from pg_constraint
     where connamespace = 'public'::regnamespace order by 1`;
  const policies = await sql`
    select tablename::text, policyname::text, qual from pg_policies where schemaname = 'public' order by 1, 2`;
  const targets = await sql`
    select id, embedding_column::text, model, dimensions, destination::text, shadow_of
      from util.embedding_targets order by id`;
  return { tables, indexes, constraints, policies, targets };
}

async function dimensionsOf(sql: Sql): Promise<number> {
  const [{ type }] = await sql`
    select format_type(atttypid, atttypmod) as type from pg_attribute
     where attrelid = 'public.article_chunks'::regclass and attname = 'embedding'`;
  return Number(/\((\d+)\)/.exec(type)![1]);
}

Deno.test("chunks model change: 16 → 32 dimensions, fresh under edits, held back by a view, then switched whole", async () => {
  await withTestDb(async (sql, url) => {
    const pipeline = await startPipeline(sql, url);
    try {
      await createPublicArticles(sql);
      // A policy of the user's own on the destination, naming it: carried over.
      await sql`create policy hide_article_6 on public.article_chunks as restrictive for select to anon
                  using (public.article_chunks.source_id <> 6)`;
      await settle(sql);
      assert.deepEqual(await chunkProblems(sql), []);
      const before = await catalog(sql);

      // A view on the destination: the switch must wait for it.
      await sql`create view public.article_chunk_counts as
                  select source_id, count(*) from public.article_chunks group by source_id`;
      const [{ live_id }] = await sql`
        select id as live_id from util.embedding_targets where embedding_column = 'article_chunks'`;
      await sql`select util.reembed('public.articles', 'article_chunks',
                                    model => ${NEW_MODEL}, dimensions => ${NEW_DIMENSIONS})`;
      const shadowTable = `public._autoembed_chunks_${live_id}`;
      const [status] = await sql`
        select next_model, next_dimensions, model, dimensions from util.embedding_status
         where embedding_column = 'article_chunks'`;
      assert.deepEqual(
        { ...status },
        {
          next_model: NEW_MODEL,
          next_dimensions: NEW_DIMENSIONS,
          model: "text-embedding-3-small",
          dimensions: TEST_DIMENSIONS,
        },
      );

      // An edit and a settings change during the change reach the live
      // destination (old model) and the shadow (new model).
      const [{ body }] = await sql`select body from articles where id = 3`;
      await sql`update articles set body = ${editParagraph(body, 5)} where id = 3`;
      await sql`select util.set_chunking('public.articles', chunk_size => ${SETTINGS.chunkSize})`;
      await settle(sql, { switches: false });
      assert.equal(
        await dimensionsOf(sql),
        TEST_DIMENSIONS,
        "the live destination is not switched yet",
      );
      assert.deepEqual(
        await chunkProblems(sql, SETTINGS),
        [],
        "the live destination: old model, fresh",
      );
      const shadowChunks = await sql.unsafe<
        { source_id: string; chunk: string; embedding: string }[]
      >(
        `select source_id::text, chunk, embedding::text from ${shadowTable} order by source_id, chunk_seq`,
      );
      const liveChunks = await sql`
        select source_id::text, chunk from article_chunks order by source_id, chunk_seq`;
      assert.deepEqual(
        shadowChunks.map((c) => [c.source_id, c.chunk]),
        liveChunks.map((c) => [c.source_id, c.chunk]),
        "the shadow holds the same chunk sets, edit included",
      );
      for (const c of shadowChunks) {
        assert.equal(
          embeddingProblem(c.embedding, c.chunk, NEW_DIMENSIONS),
          null,
          "the shadow holds the new model's vectors",
        );
      }
      // The shadow's index is built beside (the embed function, asked by a
      // tick), then the switch tries, and says why it waits.
      const held = await waitFor(async () => {
        await sql`select util.process_embeddings()`;
        const [row] = await sql`
          select next_model, next_embedded::int, last_error from util.embedding_status
           where embedding_column = 'article_chunks'`;
        return row.last_error ? row : null;
      }, { what: "status to say why the switch waits" });
      assert.equal(held.next_model, NEW_MODEL, "the change is held back");
      assert.equal(held.next_embedded, 6);
      assert.match(held.last_error, /switch to model text-embedding-3-large is waiting/);
      assert.match(held.last_error, /article_chunk_counts/, "names the view");

      // The view goes: the switch happens.
      await sql`drop view public.article_chunk_counts`;
      await settle(sql);
      assert.equal(await dimensionsOf(sql), NEW_DIMENSIONS);
      assert.deepEqual(
        await chunkProblems(sql, SETTINGS, NEW_DIMENSIONS),
        [],
        "every chunk holds the new model's vector of its text",
      );
      const after = await catalog(sql);
      assert.deepEqual(after.tables, before.tables, "the same tables, RLS and grants");
      assert.deepEqual(after.indexes, before.indexes, "the same index names and definitions");
      assert.deepEqual(after.constraints, before.constraints);
      assert.deepEqual(after.policies, before.policies);
      assert.equal(after.targets.length, 1);
      assert.deepEqual(
        {
          column: after.targets[0].embedding_column,
          model: after.targets[0].model,
          dimensions: after.targets[0].dimensions,
          destination: after.targets[0].destination,
        },
        {
          column: "article_chunks",
          model: NEW_MODEL,
          dimensions: NEW_DIMENSIONS,
          destination: "article_chunks",
        },
      );
      const [done] = await sql`
        select model, next_model, embedded::int from util.embedding_status
         where embedding_column = 'article_chunks'`;
      assert.deepEqual({ ...done }, { model: NEW_MODEL, next_model: null, embedded: 6 });

      // Search as anon, with the new model's vector of a public article's chunk.
      const [chunk] = await sql`select chunk from article_chunks where source_id = 4 limit 1`;
      const found = await asAnon(sql, (tx) =>
        tx<{ id: string }[]>`
          select id from util.match_chunked('public.articles', 'public.article_chunks',
            ${JSON.stringify(fakeVector(chunk.chunk, NEW_DIMENSIONS))}::extensions.vector,
            match_count => 10, match_threshold => -1)`);
      assert.equal(found[0]?.id, "4");
      assert.deepEqual(found.map((r) => Number(r.id)).sort(), [2, 4], "both policies still apply");

      // Edits after the switch go to the new model's chunks.
      await sql`update articles set body = ${makeDocument(40, 8)} where id = 5`;
      await settle(sql);
      assert.deepEqual(await chunkProblems(sql, SETTINGS, NEW_DIMENSIONS), []);
    } finally {
      await pipeline.stop();
    }
  });
});

Deno.test("chunks model change: cancel (and enable_embeddings with another model) leave nothing behind", async () => {
  await withTestDb(async (sql, url) => {
    const pipeline = await startPipeline(sql, url);
    try {
      await createPublicArticles(sql);
      await settle(sql);
      const before = await catalog(sql);

      // enable_embeddings again with another model starts the change.
      await sql`
        select util.enable_embeddings('public.articles', 'article_text',
          destination => 'public.article_chunks', model => ${NEW_MODEL}, dimensions => ${NEW_DIMENSIONS})`;
      const [{ next_model }] = await sql`
        select next_model from util.embedding_status where embedding_column = 'article_chunks'`;
      assert.equal(next_model, NEW_MODEL);
      const during = await catalog(sql);
      assert.equal(during.tables.length, before.tables.length + 1, "a shadow table exists");

      const [{ cancelled }] = await sql`
        select util.cancel_reembed('public.articles', 'article_chunks') as cancelled`;
      assert.equal(cancelled, true);
      assert.deepEqual(await catalog(sql), before, "nothing left of the change");
      assert.deepEqual(await chunkProblems(sql), [], "the live chunks are untouched");
      await settle(sql);
      assert.deepEqual(await catalog(sql), before);
    } finally {
      await pipeline.stop();
    }
  });
});
