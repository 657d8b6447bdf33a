// util.enable_embeddings' generated trigger function (util._create_queue_function):
// static SQL with the target's key column and content function written in, so it
// must follow every change of the target, and go with util.disable_embeddings.
import assert from "node:assert/strict";
import { withTestDb } from "../../devtools/db.ts";
import { createDocuments, queueLength } from "../../devtools/pipeline.ts";

Deno.test("enable_embeddings' trigger function: real changes only, follows the content function, goes with disable", async () => {
  await withTestDb(async (sql) => {
    await createDocuments(sql);
    const [{ fn }] = await sql`
      select util._queue_function_name('documents', 'embedding')::text as fn`;
    const triggers = async () =>
      (await sql`
        select g.tgname::text as name, p.proname::text as function
          from pg_trigger g join pg_proc p on p.oid = g.tgfoid
         where g.tgrelid = 'public.documents'::regclass and not g.tgisinternal
         order by 1`).map((r) => `${r.name} ${r.function}`);
    assert.deepEqual(await triggers(), [
      "embed_embedding_delete queue_embeddings",
      `embed_embedding_insert ${fn}`,
      "embed_embedding_trunc queue_embeddings",
      `embed_embedding_update ${fn}`,
    ]);

    // One session throughout, so its cached plans are the ones under test.
    const session = await sql.reserve();
    try {
      await session`insert into documents (title, content) values ('a', 'one'), ('b', 'two')`;
      assert.equal(await queueLength(sql), 2);
      // One statement, one message: its rows' ids packed.
      const messages = await sql`select message from pgmq.q_embedding_jobs order by msg_id`;
      assert.equal(messages.length, 1);
      const { ids, ...message } = messages[0].message;
      assert.deepEqual([...ids].sort(), [1, 2]);
      assert.deepEqual(message, {
        schema: "public",
        table: "documents",
        contentFunction: "documents_input",
        embeddingColumn: "embedding",
      });
      await session`update documents set title = title`;
      assert.equal(await queueLength(sql), 2, "a no-op update enqueues nothing");
      await session`update documents set content = content || '!' where id = 1`;
      assert.equal(await queueLength(sql), 3, "a real change enqueues its row");

      // A new definition of the content function applies to the plans this
      // session already holds: the title alone is the text now.
      await session.unsafe(`
        create or replace function public.documents_input(d public.documents) returns text
          language sql immutable as $$ select d.title $$`);
      await session`update documents set content = content || '?'`;
      assert.equal(await queueLength(sql), 3, "content is no longer part of the text");
      await session`update documents set title = title || '?' where id = 2`;
      assert.equal(await queueLength(sql), 4);

      // Another content function: enable_embeddings writes the trigger again.
      await session.unsafe(`
        create function public.titles_only(d public.documents) returns text
          language sql immutable as $$ select upper(d.title) $$`);
      await session`select util.enable_embeddings('documents', 'titles_only', backfill => false)`;
      await session`insert into documents (title, content) values ('c', 'three')`;
      const [last] =
        await sql`select message from pgmq.q_embedding_jobs order by msg_id desc limit 1`;
      assert.equal(last.message.contentFunction, "titles_only");
      await session`update documents set content = 'changed' where id = 3`;
      assert.equal(await queueLength(sql), 5, "the new content function decides what changed");
    } finally {
      session.release();
    }

    await sql`select util.disable_embeddings('documents')`;
    assert.deepEqual(await triggers(), []);
    const [{ left }] = await sql`select to_regprocedure(${`util.${fn}()`}) is not null as left`;
    assert.equal(left, false, "the generated function goes with the triggers");
  });
});

Deno.test("enable_embeddings' trigger function: any key column name and a key that is text", async () => {
  await withTestDb(async (sql) => {
    await sql.unsafe(`
      create table public."Odd ""Table""" ("Key; drop" text primary key, body text, embedding halfvec(16));
      create function public."odd input"(r public."Odd ""Table""") returns text
        language sql immutable as $$ select r.body $$;
      select util.enable_embeddings('public."Odd ""Table"""', 'odd input', backfill => false);
      insert into public."Odd ""Table""" values ('k1', 'x'), ('k2', 'y');
      update public."Odd ""Table""" set body = body where "Key; drop" = 'k1';
      update public."Odd ""Table""" set body = 'z' where "Key; drop" = 'k2';
    `).simple();
    const ids = (await sql`
      select coalesce(message -> 'ids', jsonb_build_array(message -> 'id')) as ids
        from pgmq.q_embedding_jobs order by msg_id`).map((r) => [...r.ids].sort());
    assert.deepEqual(ids, [["k1", "k2"], ["k2"]]);
  });
});
