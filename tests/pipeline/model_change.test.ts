// I7: a model change is built beside the live column and switched at once
// when complete. Sampled at any moment, the live column holds one model's
// vectors, and no row that had a vector is without one.
import assert from "node:assert/strict";
import { connect, type Sql, withTestDb } from "../../devtools/db.ts";
import { fakeVector } from "../../devtools/fake_openai.ts";
import {
  createDocuments,
  startPipeline,
  TEST_DIMENSIONS,
  TEST_MODEL,
} from "../../devtools/pipeline.ts";
import { insertRows, parseVector } from "../_support/rows.ts";
import { waitFor } from "../../devtools/wait.ts";
import { settle } from "../_support/settle.ts";
import { createLocalProvider } from "../../supabase/functions/_shared/providers/local.ts";

const OLD_MODEL = "local-hash-v1";

const close = (a: number[], b: number[]) =>
  a.length === b.length && a.every((v, i) => Math.abs(v - b[i]) < 2e-3);

/** What a database object set looks like, to prove a cancel leaves nothing behind. */
async function catalog(sql: Sql) {
  const columns = await sql`
    select attname::text, format_type(atttypid, atttypmod) as type from pg_attribute
     where attrelid = 'public.documents'::regclass and attnum > 0 and not attisdropped order by attnum`;
  const indexes = await sql`
    select indexname::text, indexdef from pg_indexes where tablename = 'documents' order by 1`;
  const targets = await sql`select id, embedding_column::text, model, dimensions
                              from util.embedding_targets order by id`;
  return JSON.stringify({ columns, indexes, targets });
}

Deno.test("I7: sampled throughout a re-embed of 3,000 rows, the live column holds one model and no NULLs", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    const driver = connect(url);
    try {
      await createDocuments(sql, { model: OLD_MODEL });
      await sql`create index documents_embedding_idx on documents using hnsw (embedding halfvec_cosine_ops)`;
      await insertRows(sql, 3000);
      await settle(sql);
      assert.equal(p.fake.stats.requests, 0, "the old model is the offline one");

      // Expected vectors of each model, for every text a row has or will have.
      const local = createLocalProvider({ model: OLD_MODEL, dimensions: TEST_DIMENSIONS });
      const rows =
        await sql`select id::int, documents_input(d) as text from documents d order by id`;
      const edited = new Map(rows.slice(0, 20).map((r) => [r.id, `${r.text} (edited)`]));
      const allTexts = [...rows.map((r) => r.text), ...edited.values()];
      const oldVectors = new Map<string, number[]>();
      const localVectors = await local.embed(allTexts);
      allTexts.forEach((t, i) => oldVectors.set(t, localVectors[i]));
      const modelOf = (id: number, text: string, vector: number[]) => {
        const texts = [text, edited.get(id) ?? text];
        if (texts.some((t) => close(vector, oldVectors.get(t)!))) return "old";
        if (texts.some((t) => close(vector, fakeVector(t, TEST_DIMENSIONS)))) return "new";
        return "neither";
      };
      const textOf = new Map(rows.map((r) => [r.id, r.text]));

      p.fake.setLatency(15);
      const [{ n }] = await sql`select util.reembed('documents', model => ${TEST_MODEL}) as n`;
      assert.equal(Number(n), 3000, "every row is queued for the new model");
      const [st] = await sql`select model, next_model from util.embedding_status_exact()`;
      assert.deepEqual({ ...st }, { model: OLD_MODEL, next_model: TEST_MODEL });

      const done = settle(driver, { batchSize: 50, maxRequests: 2, waitMs: 120_000 });
      let finished = false;
      done.finally(() => finished = true).catch(() => {});
      const seen = { samples: 0, oldMidway: 0, new: 0, editedMidway: false };
      while (!finished) {
        const [progress] =
          await sql`select next_embedded::int as n from util.embedding_status_exact()`;
        const sample = await sql`select id::int, embedding::text from documents`;
        const models = new Set<string>();
        for (const row of sample) {
          assert.ok(row.embedding !== null, `row ${row.id} lost its vector mid-change`);
          models.add(modelOf(row.id, textOf.get(row.id)!, parseVector(row.embedding)));
        }
        assert.equal(models.size, 1, `one model at a time, saw ${[...models]}`);
        assert.ok(!models.has("neither"), "every vector is one model's vector of the row's text");
        seen.samples++;
        if (models.has("old") && progress?.n > 0 && progress.n < 3000) seen.oldMidway++;
        if (models.has("new")) seen.new++;
        if (!seen.editedMidway && progress?.n >= 300) {
          // Edits during the change: the live column stays fresh under the old model.
          for (const [id, text] of edited) {
            await sql`update documents set content = ${text.slice(text.indexOf(": ") + 2)}
                       where id = ${id}`;
          }
          seen.editedMidway = true;
        }
      }
      await done;
      console.log(`samples: ${JSON.stringify(seen)}`);
      assert.ok(seen.oldMidway >= 2, `sampled mid-change (${JSON.stringify(seen)})`);
      assert.ok(seen.editedMidway, "rows were edited mid-change");

      // After the switch: the new model everywhere, as if it had always been so.
      const [after] = await sql`select * from util.embedding_status_exact()`;
      assert.equal(after.model, TEST_MODEL);
      assert.equal(after.next_model, null);
      assert.equal(Number(after.stale), 0);
      assert.equal(Number(after.missing), 0);
      assert.deepEqual(after.models, { [TEST_MODEL]: 3000 });
      const final =
        await sql`select id::int, documents_input(d) as text, embedding::text from documents d`;
      for (const row of final) {
        assert.ok(
          close(parseVector(row.embedding), fakeVector(row.text, TEST_DIMENSIONS)),
          `row ${row.id}`,
        );
      }
      assert.ok(
        p.fake.stats.inputs >= 3000 && p.fake.stats.inputs <= 3040,
        `${p.fake.stats.inputs}`,
      );
      const indexes =
        await sql`select indexname::text, indexdef from pg_indexes where tablename = 'documents'`;
      const hnsw = indexes.find((i) => i.indexname === "documents_embedding_idx");
      assert.ok(hnsw, "the user's index kept its name");
      assert.match(
        hnsw.indexdef,
        /USING hnsw \(embedding extensions\.halfvec_cosine_ops\)|USING hnsw \(embedding halfvec_cosine_ops\)/,
      );
      assert.ok(!indexes.some((i) => i.indexname.startsWith("_autoembed")), "no twin left over");
      const [{ leftover }] = await sql`
        select count(*)::int as leftover from pg_attribute
         where attrelid = 'public.documents'::regclass and attname like '\\_autoembed%' and not attisdropped`;
      assert.equal(leftover, 0, "no shadow column left");
      const [{ targets }] = await sql`select count(*)::int as targets from util.embedding_targets`;
      assert.equal(targets, 1, "the old target and its fingerprints are gone");
    } finally {
      await driver.end();
      await p.stop();
    }
  });
});

Deno.test("I7: dimensions change too (16 -> 32); the column is declared with the new size", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await createDocuments(sql);
      await insertRows(sql, 40);
      await settle(sql);
      await sql`select util.reembed('documents', dimensions => 32)`;
      await settle(sql);
      const [col] = await sql`
        select format_type(atttypid, atttypmod) as type from pg_attribute
         where attrelid = 'public.documents'::regclass and attname = 'embedding'`;
      assert.equal(col.type, "halfvec(32)");
      const [s] =
        await sql`select model, dimensions, stale::int, missing::int from util.embedding_status_exact()`;
      assert.deepEqual({ ...s }, { model: TEST_MODEL, dimensions: 32, stale: 0, missing: 0 });
      for (
        const row of await sql`select documents_input(d) as text, embedding::text from documents d`
      ) {
        assert.ok(close(parseVector(row.embedding), fakeVector(row.text, 32)));
      }
    } finally {
      await p.stop();
    }
  });
});

Deno.test("I7: cancel_reembed leaves nothing behind; the live column is untouched", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await createDocuments(sql, { model: OLD_MODEL });
      await sql`create index documents_embedding_idx on documents using hnsw (embedding halfvec_cosine_ops)`;
      await insertRows(sql, 50);
      await settle(sql);
      const before = await catalog(sql);
      const vectors = await sql`select id, embedding::text from documents order by id`;
      await sql`select util.reembed('documents', model => ${TEST_MODEL}, dimensions => 24)`;
      assert.notEqual(await catalog(sql), before, "the change is under way (shadow column, twin)");
      // Part of the new model's work done, then cancelled with jobs still queued.
      await sql`select util.process_embeddings(10, 1, 10000)`;
      await waitFor(async () => {
        const [s] = await sql`select next_embedded::int as n from util.embedding_status_exact()`;
        return s.n > 0;
      }, { what: "some rows embedded by the new model" });
      const [{ cancelled }] = await sql`select util.cancel_reembed('documents') as cancelled`;
      assert.equal(cancelled, true);
      await settle(sql);
      assert.equal(await catalog(sql), before);
      assert.deepEqual(await sql`select id, embedding::text from documents order by id`, vectors);
      const [s] = await sql`select model, next_model from util.embedding_status_exact()`;
      assert.deepEqual({ ...s }, { model: OLD_MODEL, next_model: null });
      const [{ again }] = await sql`select util.cancel_reembed('documents') as again`;
      assert.equal(again, false, "nothing to cancel any more");
    } finally {
      await p.stop();
    }
  });
});

Deno.test("I7: a view on the column holds the switch back, says why in status, and it completes once dropped", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await createDocuments(sql, { model: OLD_MODEL });
      await insertRows(sql, 20);
      await settle(sql);
      await sql`create view public.document_vectors as select id, embedding from documents`;
      await sql`select util.reembed('documents', model => ${TEST_MODEL})`;
      await settle(sql, { switches: false });
      await waitFor(async () => {
        await sql`select util.maintain_embeddings()`;
        const [s] = await sql`select last_error, next_model from util.embedding_status_exact()`;
        return s.next_model === TEST_MODEL &&
          /switch to model .* is waiting.*depend/.test(s.last_error ?? "");
      }, { what: "status to say why the switch waits" });
      const [s] = await sql`select model from util.embedding_status_exact()`;
      assert.equal(s.model, OLD_MODEL, "still serving the old model");
      await sql`drop view public.document_vectors`;
      await settle(sql);
      const [after] = await sql`select model, next_model from util.embedding_status_exact()`;
      assert.deepEqual({ ...after }, { model: TEST_MODEL, next_model: null });
    } finally {
      await p.stop();
    }
  });
});

Deno.test("I7: reembed refuses an index it cannot carry over, and changes nothing", async () => {
  await withTestDb(async (sql) => {
    await createDocuments(sql, { model: OLD_MODEL });
    await sql`create index documents_partial on documents using hnsw (embedding halfvec_cosine_ops)
              where title <> ''`;
    await sql`create index documents_embedding_idx on documents using hnsw (embedding halfvec_cosine_ops)`;
    const before = await catalog(sql);
    await assert.rejects(
      sql`select util.reembed('documents', model => ${TEST_MODEL})`,
      (err: { code?: string; hint?: string }) =>
        err.code === "AE001" && /Drop "?documents_partial"?/.test(err.hint ?? ""),
    );
    assert.equal(await catalog(sql), before);
  });
});

Deno.test("I7: enable_embeddings again with another model starts a change instead of relabelling", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await createDocuments(sql, { model: OLD_MODEL });
      await insertRows(sql, 10);
      await settle(sql);
      await sql`select util.enable_embeddings('documents', 'documents_input', model => ${TEST_MODEL})`;
      const [s] =
        await sql`select model, next_model, stale::int from util.embedding_status_exact()`;
      assert.deepEqual({ ...s }, { model: OLD_MODEL, next_model: TEST_MODEL, stale: 0 });
      await settle(sql);
      const [after] = await sql`select model, next_model from util.embedding_status_exact()`;
      assert.deepEqual({ ...after }, { model: TEST_MODEL, next_model: null });
    } finally {
      await p.stop();
    }
  });
});
