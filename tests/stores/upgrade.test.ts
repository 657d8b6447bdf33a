// The one-store migration on a database that has targets of both stores,
// embedded, each in the middle of a model change: their rows, chunks and
// fingerprints stay, and both changes finish with the one util._switch_model.
import assert from "node:assert/strict";
import { join } from "node:path";
import { SCHEMAS_DIR } from "../../cli/schema_migration.ts";
import { applyMigrations } from "../../local/migrate.ts";
import { ARTICLE_SETTINGS, chunkProblems, createArticles } from "../_support/chunks.ts";
import { withTestDb } from "../../devtools/db.ts";
import { makeDocument } from "../../devtools/documents.ts";
import { createDocuments, startPipeline, TEST_DIMENSIONS } from "../../devtools/pipeline.ts";
import { embeddingProblem, insertRows } from "../_support/rows.ts";
import { settle } from "../_support/settle.ts";
import { fakeVector } from "../../devtools/fake_openai.ts";
import { splitIntoChunks } from "../../supabase/functions/_shared/chunking/split.ts";
import { tokenCounterFor } from "../../supabase/functions/_shared/providers/tokens.ts";
import type { Sql } from "../../devtools/db.ts";
import { TEST_MODEL } from "../../devtools/pipeline.ts";

const literal = (text: string, dimensions = TEST_DIMENSIONS) =>
  `[${fakeVector(text, dimensions).join(",")}]`;

/** Every document and article embedded, as the pipeline before the one-store migration left them. */
async function embedAsBefore(sql: Sql): Promise<void> {
  const documents = await sql<{ id: string; text: string }[]>`
    select id::text, documents_input(d) as text from documents d`;
  for (const d of documents) {
    await sql`update documents set embedding = ${literal(d.text)}::extensions.halfvec
               where id = ${d.id}::bigint`;
  }
  await sql`
    insert into util.embedding_fingerprints (target_id, row_id, content_hash)
    select t.id, d.id::text, util._content_hash(documents_input(d))
      from documents d, util.embedding_targets t
     where t.table_oid = 'documents'::regclass`;
  const counter = tokenCounterFor(TEST_MODEL);
  const articles = await sql<{ id: string; body: string }[]>`select id::text, body from articles`;
  for (const a of articles) {
    const chunks = splitIntoChunks(a.body, ARTICLE_SETTINGS, counter);
    for (const [seq, c] of chunks.entries()) {
      await sql`
        insert into article_chunks (source_id, chunk_seq, chunk, chunk_hash, embedding)
        values (${a.id}::bigint, ${seq}, ${c.text}, util._content_hash(${c.text}),
                ${literal(c.text)}::extensions.halfvec)`;
    }
  }
  await sql`
    insert into util.embedding_fingerprints (target_id, row_id, content_hash)
    select t.id, a.id::text, util._chunked_hash(util._chunking_key(t), article_text(a))
      from articles a, util.embedding_targets t
     where t.table_oid = 'articles'::regclass`;
  // Their jobs were done by that pipeline.
  await sql`select pgmq.purge_queue('embedding_jobs')`;
}

const ONE_STORE = "20261206221000_one_store.sql";

Deno.test("upgrade: targets of both stores, mid model change, finish it after the one-store migration", async () => {
  const migrations = join(SCHEMAS_DIR, "..", "migrations");
  const before = await Deno.makeTempDir({ prefix: "autoembed-before-" });
  try {
    for (const name of [...Deno.readDirSync(migrations)].map((e) => e.name)) {
      if (name < ONE_STORE) await Deno.copyFile(join(migrations, name), join(before, name));
    }
    await withTestDb(async (sql, url) => {
      await applyMigrations(url, { dir: before });
      await createDocuments(sql);
      await insertRows(sql, 30);
      await createArticles(sql);
      for (let i = 1; i <= 4; i++) {
        await sql`insert into articles (id, title, body) values (${i}, ${"a" + i}, ${
          makeDocument(i, 8)
        })`;
      }
      // The state the pipeline of that version leaves, written here by SQL:
      // today's core settles through the jobs module of a later migration
      // (util._settle_jobs), so it cannot run on the older schema. Each row
      // holds the fake provider's vector of its text, each article the chunks
      // of its body with theirs, and the fingerprints say so.
      await embedAsBefore(sql);
      const [{ fingerprints }] = await sql`
        select count(*)::int as fingerprints from util.embedding_fingerprints`;
      assert.equal(fingerprints, 34, "the premise: every row embedded");
      assert.deepEqual(await chunkProblems(sql, ARTICLE_SETTINGS, TEST_DIMENSIONS), []);
      await sql`select util.reembed('documents', model => 'text-embedding-3-large', dimensions => 32)`;
      await sql`select util.reembed('articles', 'article_chunks',
                                    model => 'text-embedding-3-large', dimensions => 32)`;
      const [{ shadows }] = await sql`
        select count(*)::int as shadows from util.embedding_targets where shadow_of is not null`;
      assert.equal(shadows, 2, "the premise: both changes in progress");

      const p = await startPipeline(sql, url);
      try {
        await applyMigrations(url, { dir: migrations });
        const [{ old }] = await sql`
          select count(*)::int as old from pg_proc where proname = '_switch_chunks'`;
        assert.equal(old, 0, "the chunks' own switch is gone");
        assert.deepEqual(await chunkProblems(sql, ARTICLE_SETTINGS, TEST_DIMENSIONS), []);

        await settle(sql);
        const status = await sql`
          select table_name, model, dimensions, embedded::int, stale::int, next_model
            from util.embedding_status order by table_name`;
        assert.deepEqual(status.map((s) => ({ ...s })), [
          {
            table_name: "articles",
            model: "text-embedding-3-large",
            dimensions: 32,
            embedded: 4,
            stale: 0,
            next_model: null,
          },
          {
            table_name: "documents",
            model: "text-embedding-3-large",
            dimensions: 32,
            embedded: 30,
            stale: 0,
            next_model: null,
          },
        ]);
        assert.deepEqual(await chunkProblems(sql, ARTICLE_SETTINGS, 32), []);
        const documents = await sql<{ id: string; text: string; embedding: string }[]>`
          select id::text, documents_input(d) as text, embedding::text from documents d`;
        assert.deepEqual(
          documents.map((d) => embeddingProblem(d.embedding, d.text, 32)).filter((x) => x),
          [],
        );
      } finally {
        await p.stop();
      }
    }, { template: "template1" });
  } finally {
    await Deno.remove(before, { recursive: true });
  }
});
