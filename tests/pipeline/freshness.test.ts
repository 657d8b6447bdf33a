// I10 and I11: a change of preprocessing (the content function) re-embeds
// exactly the rows whose text changed, without any command; sweeps go in
// slices; text embedded once is copied, not paid for again; the pipeline's
// bookkeeping stays a small fraction of the embeddings it tracks.
import assert from "node:assert/strict";
import { type Sql, withTestDb } from "../../devtools/db.ts";
import {
  createDocuments,
  queueLength,
  startPipeline,
  TEST_DIMENSIONS,
} from "../../devtools/pipeline.ts";
import { assertAllFresh, insertRows } from "../_support/rows.ts";
import { settle } from "../_support/settle.ts";

async function status(sql: Sql, table = "documents") {
  const [s] = await sql`select * from util.embedding_status_exact() where table_name = ${table}`;
  return s;
}

Deno.test("I10: redefining the content function re-embeds exactly the rows whose text changed, with no command", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await createDocuments(sql);
      await insertRows(sql, 30, { prefix: "alpha" });
      await insertRows(sql, 30, { prefix: "beta" });
      await settle(sql);
      await assertAllFresh(sql);
      assert.equal((await status(sql)).content_changed_at, null);
      p.fake.resetStats();

      // Small slices, so the recheck takes several steps.
      await sql`update util.settings set value = '7' where name = 'sweep_slice_rows'`;
      await sql.unsafe(`
        create or replace function public.documents_input(d public.documents) returns text
        language sql immutable as $$
          select case when d.title like 'alpha%' then upper(d.title) else d.title end || ': ' || d.content
        $$`);
      // The premise: the function alone changed half the texts, and status sees it.
      assert.equal(Number((await status(sql)).stale), 30);

      await settle(sql);
      const s = await status(sql);
      assert.ok(s.content_changed_at, "status says when the definition changed");
      assert.equal(Number(s.stale), 0);
      assert.equal(p.fake.stats.inputs, 30, "exactly the changed half went to the provider");
      assert.ok(p.fake.stats.embeddedTexts.every((t) => t.startsWith("ALPHA ")));
      await assertAllFresh(sql);
      const [{ checked }] =
        await sql`select sweep_checked::int as checked from util.embedding_targets`;
      assert.equal(checked, 60, "the recheck visited every row, 7 at a time");
    } finally {
      await p.stop();
    }
  });
});

Deno.test("I10: alter function ... set is noticed too, and unchanged texts cost nothing", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await createDocuments(sql);
      await insertRows(sql, 20);
      await settle(sql);
      p.fake.resetStats();
      await sql`alter function public.documents_input(public.documents) set work_mem = '8MB'`;
      await settle(sql);
      const s = await status(sql);
      assert.ok(s.content_changed_at, "the change was noticed");
      const [{ checked }] =
        await sql`select sweep_checked::int as checked from util.embedding_targets`;
      assert.equal(checked, 20, "and every row rechecked");
      assert.equal(p.fake.stats.requests, 0, "no text changed, so no provider call");
      assert.equal(await queueLength(sql), 0);
    } finally {
      await p.stop();
    }
  });
});

Deno.test("I10: a change in a function the content function calls needs util.refresh_embeddings", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await sql.unsafe(`
        create function public.decorate(t text) returns text language sql immutable as $$ select t $$;
        create table public.notes (id int primary key, body text not null, embedding halfvec(${TEST_DIMENSIONS}));
        create function public.notes_input(n public.notes) returns text language sql immutable
          as $$ select public.decorate(n.body) $$;
        select util.enable_embeddings('public.notes', 'notes_input');
        insert into public.notes select g, 'note ' || g from generate_series(1, 12) g;
      `).simple();
      await settle(sql);
      p.fake.resetStats();
      await sql.unsafe(`create or replace function public.decorate(t text) returns text
                        language sql immutable as $$ select '> ' || t $$`);
      await settle(sql);
      assert.equal(p.fake.stats.requests, 0, "the documented limit: not noticed");
      assert.equal(
        Number((await status(sql, "notes")).stale),
        12,
        "but status shows the rows stale",
      );
      const [{ n }] = await sql`select util.refresh_embeddings('public.notes') as n`;
      assert.equal(Number(n), 12);
      await settle(sql);
      assert.equal(p.fake.stats.inputs, 12);
      assert.equal(Number((await status(sql, "notes")).stale), 0);
    } finally {
      await p.stop();
    }
  });
});

Deno.test("sweeps enqueue in slices, only while the queue is short", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await createDocuments(sql, { attach: false });
      await insertRows(sql, 95);
      await sql`update util.settings set value = '10' where name = 'sweep_slice_rows'`;
      const [{ n }] = await sql`select util.enable_embeddings('documents', 'documents_input') as n`;
      assert.equal(Number(n), 10, "the backfill's first slice is enqueued at once");
      assert.equal(await queueLength(sql), 10);
      // A tick with a full queue enqueues nothing more.
      await sql`select util.maintain_embeddings()`;
      assert.equal(await queueLength(sql), 10);
      let most = 0;
      const watch = setInterval(async () => {
        most = Math.max(most, await queueLength(sql).catch(() => 0));
      }, 5);
      try {
        await settle(sql, { batchSize: 5, maxRequests: 1 });
      } finally {
        clearInterval(watch);
      }
      assert.ok(most <= 20, `the queue held at most two slices (${most})`);
      const [s] = await sql`select embedded::int, missing::int from util.embedding_status_exact()`;
      assert.deepEqual({ ...s }, { embedded: 95, missing: 0 });
      assert.equal(p.fake.stats.inputs, 95);
    } finally {
      await p.stop();
    }
  });
});

Deno.test("I3/I11: text embedded once is copied from the row that holds it, in any table of the same model", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await createDocuments(sql);
      await insertRows(sql, 10);
      await settle(sql);
      assert.equal(p.fake.stats.inputs, 10);
      // The same texts again: in the same table, and in another table of the same model.
      await insertRows(sql, 10);
      await createDocuments(sql, { table: "copies" });
      await insertRows(sql, 10, { table: "copies" });
      await settle(sql);
      assert.equal(p.fake.stats.inputs, 10, "no text was paid for twice");
      await assertAllFresh(sql);
      await assertAllFresh(sql, "copies");
      // Deleting rows deletes their fingerprints: the bookkeeping follows the table.
      await sql`delete from documents where id > 5`;
      const [{ left }] = await sql`
        select count(*)::int as left from util.embedding_fingerprints f
          join util.embedding_targets t on t.id = f.target_id
         where t.table_oid = 'public.documents'::regclass`;
      assert.equal(left, 5);
    } finally {
      await p.stop();
    }
  });
});

Deno.test("I11: the bookkeeping that grows with a table stays under 10% of its embedding bytes", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await sql.unsafe(`
        create table public.articles (id bigint primary key generated always as identity,
                                      body text not null, embedding halfvec(1536));
        create function public.articles_input(a public.articles) returns text language sql immutable
          as $$ select a.body $$;
        select util.enable_embeddings('public.articles', 'articles_input', model => 'local-hash-v1');
        insert into public.articles (body) select 'article number ' || g from generate_series(1, 2000) g;
      `).simple();
      await settle(sql);
      await sql`vacuum analyze util.embedding_fingerprints`;
      // The part of util.* that grows with the rows: the fingerprints and
      // their indexes (the other tables hold a few rows each; bench/storage.ts
      // measures all of util.* at 20,000 and 100,000 rows).
      const [bytes] = await sql`
        select (select count(*) from public.articles where embedding is not null)::int as embedded,
               (select sum(pg_column_size(embedding)) from public.articles)::bigint as embeddings,
               pg_total_relation_size('util.embedding_fingerprints')::bigint as fingerprints`;
      assert.equal(bytes.embedded, 2000);
      const share = Number(bytes.fingerprints) / Number(bytes.embeddings);
      assert.ok(
        share <= 0.10,
        `fingerprints are ${(share * 100).toFixed(1)}% of the embedding bytes`,
      );
    } finally {
      await p.stop();
    }
  });
});

Deno.test("enable_embeddings prints nothing on success, and again without a model keeps the model", async () => {
  await withTestDb(async (_sql, url) => {
    const notices: string[] = [];
    const { connect } = await import("../../devtools/db.ts");
    const sql = connect(url, { onnotice: (n) => notices.push(n.message) });
    try {
      await createDocuments(sql, { model: "local-hash-v1" });
      await sql`select util.enable_embeddings('documents', 'documents_input')`;
      assert.deepEqual(notices, []);
      const [t] = await sql`select model from util.embedding_targets`;
      assert.equal(t.model, "local-hash-v1");
    } finally {
      await sql.end();
    }
  });
});
