// Freshness and cost as service levels (issue 23): util.embedding_status
// answers from figures the pipeline keeps as it writes, and they must agree
// with the exact recount (util.embedding_status_exact) after any workload,
// in every store; the time to fresh, the rate and the ETA; the tokens and
// dollars of util.embedding_usage.
import assert from "node:assert/strict";
import { type Sql, withTestDb } from "../../devtools/db.ts";
import { startPipeline, TEST_MODEL } from "../../devtools/pipeline.ts";
import { createDocuments } from "../../devtools/pipeline.ts";
import { tokenCounterFor } from "../../supabase/functions/_shared/providers/tokens.ts";
import { createArticles } from "../_support/chunks.ts";
import { insertRows } from "../_support/rows.ts";
import { settle } from "../_support/settle.ts";

interface Figures {
  target: string;
  total_rows: number;
  embedded: number;
  models: Record<string, number>;
  next_embedded: number | null;
}

const FIGURES = `schema_name || '.' || table_name || '.' || embedding_column as target,
  total_rows::int, embedded::int, models, next_embedded::int`;

/**
 * The kept figures, then the exact recount (which repairs the kept ones, so
 * it comes second): equal, target by target.
 */
async function assertKeptExact(sql: Sql, when: string): Promise<Figures[]> {
  const kept = await sql.unsafe<Figures[]>(
    `select ${FIGURES} from util.embedding_status order by 1`,
  );
  const exact = await sql.unsafe<Figures[]>(
    `select ${FIGURES} from util.embedding_status_exact() order by 1`,
  );
  assert.deepEqual(
    kept.map((r) => ({ ...r })),
    exact.map((r) => ({ ...r })),
    `${when}: util.embedding_status agrees with the exact recount`,
  );
  return exact.map((r) => ({ ...r }));
}

/** A markdown document of `n` sections, distinct by `tag`. */
const article = (tag: string, n: number) =>
  Array.from(
    { length: n },
    (_, i) => `## ${tag} part ${i}\n\n${`Words of ${tag} section ${i}. `.repeat(12)}`,
  ).join("\n\n");

Deno.test("service levels: the kept counts equal the exact recount after a mixed workload, in every store", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await createDocuments(sql);
      await createArticles(sql);
      await insertRows(sql, 120, { prefix: "alpha" });
      for (let i = 0; i < 8; i++) {
        await sql`insert into articles (title, body) values (${`a${i}`}, ${article(`a${i}`, 3)})`;
      }
      // Several calls at once (max_requests 4, batches of 25): concurrent writers of one target.
      await settle(sql, { batchSize: 25 });
      const first = await assertKeptExact(sql, "after the backfill");
      assert.equal(first.find((f) => f.target === "public.documents.embedding")!.embedded, 120);
      assert.equal(first.find((f) => f.target === "public.articles.article_chunks")!.embedded, 8);

      // Edits, deletes, copies of held text, blank text, a chunk set that
      // shrinks, one that empties; one statement each, and row by row.
      await sql`update documents set content = content || ' edited' where id % 3 = 0`;
      await sql`delete from documents where id % 7 = 0`;
      await sql`insert into documents (title, content)
                select title, content from documents where id between 1 and 20`;
      await sql`insert into documents (title, content) values ('', '')`;
      await sql`update articles set body = ${article("short", 1)} where id = 1`;
      await sql`update articles set body = '' where id = 2`;
      await sql`delete from articles where id = 3`;
      for (let i = 0; i < 5; i++) {
        await sql`delete from documents where id = (select min(id) from documents)`;
      }
      await settle(sql, { batchSize: 25 });
      await assertKeptExact(sql, "after edits and deletes");

      // Truncate, then new rows.
      await sql`truncate documents`;
      await insertRows(sql, 30, { prefix: "beta" });
      await settle(sql, { batchSize: 25 });
      const truncated = await assertKeptExact(sql, "after a truncate");
      assert.equal(truncated.find((f) => f.target === "public.documents.embedding")!.embedded, 30);

      // A model change of each target (the shadow counts on its own, then
      // takes the live place): before its switch, then after.
      const NEW_MODEL = "text-embedding-3-large";
      await sql`select util.reembed('documents', 'embedding', ${NEW_MODEL})`;
      await sql`select util.reembed('articles', 'article_chunks', ${NEW_MODEL})`;
      const started = await assertKeptExact(sql, "with model changes started");
      assert.equal(
        started.find((f) => f.target === "public.documents.embedding")!.next_embedded,
        0,
      );
      // (Built, each switches at the next maintenance: the state between is a moment.)
      await settle(sql, { batchSize: 25 });
      const switched = await assertKeptExact(sql, "after the switches");
      assert.deepEqual(
        switched.find((f) => f.target === "public.documents.embedding")!.models,
        { [NEW_MODEL]: 30 },
      );

      // Folding the deltas changes nothing a reader sees, and leaves none.
      await sql`select util.maintain_embeddings()`;
      await assertKeptExact(sql, "after maintenance folded the deltas");
      const [{ pending }] =
        await sql`select count(*)::int as pending from util.embedding_count_deltas`;
      assert.equal(pending, 0);

      // A count that drifted (what a bug or a hand edit could do) is repaired by the recount.
      await sql`update util.embedding_counts set embedded = embedded + 1000`;
      const [drifted] = await sql`
        select embedded::int from util.embedding_status where table_name = 'documents'`;
      assert.equal(drifted.embedded, 1030, "the premise: the kept count is off");
      await sql`select * from util.embedding_status_exact()`;
      const [repaired] = await sql`
        select embedded::int, counted_at is not null as counted from util.embedding_status
         where table_name = 'documents'`;
      assert.deepEqual({ ...repaired }, { embedded: 30, counted: true });
    } finally {
      await p.stop();
    }
  });
});

Deno.test("service levels: time to fresh over the last hour, the rate, and the ETA of what is queued", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await createDocuments(sql);
      const [before] = await sql`
        select fresh_p50, fresh_p95, fresh_rows_last_hour::int as n, eta from util.embedding_status`;
      assert.deepEqual({ ...before }, { fresh_p50: null, fresh_p95: null, n: 0, eta: "00:00:00" });

      await insertRows(sql, 100);
      await settle(sql);
      const [done] = await sql`
        select extract(epoch from fresh_p50)::float8 as p50, extract(epoch from fresh_p95)::float8 as p95,
               fresh_rows_last_hour::int as n, rows_per_minute::float8 as rate, eta, queued::int
          from util.embedding_status`;
      assert.equal(done.n, 100, "every row's time to fresh is recorded once");
      assert.ok(
        done.p50 !== null && done.p95 !== null && done.p50 <= done.p95,
        JSON.stringify(done),
      );
      assert.ok(done.rate > 0, "a rate once rows became fresh");
      assert.equal(done.eta, "00:00:00", "nothing queued: fresh now");

      // Queued rows while nothing runs: the ETA is the backlog at the recent rate.
      await insertRows(sql, 50, { prefix: "later" });
      const [waiting] = await sql`
        select queued::int, extract(epoch from eta)::float8 as eta, rows_per_minute::float8 as rate
          from util.embedding_status`;
      assert.equal(waiting.queued, 50);
      assert.ok(
        Math.abs(waiting.eta - 50 / waiting.rate * 60) < 1,
        `eta is queued / rate: ${JSON.stringify(waiting)}`,
      );

      // The rows behind the figures: one bucket a minute, two hours kept.
      await sql`update util.embedding_freshness set minute = minute - interval '3 hours'`;
      await sql`select util.maintain_embeddings()`;
      const [{ kept }] = await sql`select count(*)::int as kept from util.embedding_freshness`;
      assert.equal(kept, 0, "minutes older than two hours are dropped");
      const [{ total }] = await sql`
        select sum(rows)::int as total from util.embedding_freshness_totals`;
      assert.equal(total, 100, "the totals (the metrics' histogram) keep counting");
    } finally {
      await p.stop();
    }
  });
});

Deno.test("service levels: util.embedding_usage counts the tokens sent and saved by reuse, priced by the registry", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await createDocuments(sql);
      await insertRows(sql, 40);
      await settle(sql);
      const texts = (await sql<{ text: string }[]>`
        select documents_input(d) as text from documents d`).map((r) => r.text);
      const counter = tokenCounterFor(TEST_MODEL);
      const sent = texts.reduce((sum, t) => sum + counter.count(t), 0);
      assert.equal(p.fake.stats.inputs, 40, "the premise: every text sent once");

      // Copies of held text: their vectors are copied, their tokens saved.
      await sql`insert into documents (title, content) select title, content from documents where id <= 10`;
      await settle(sql);
      const copies = texts.slice(0, 10).reduce((sum, t) => sum + counter.count(t), 0);
      assert.equal(p.fake.stats.inputs, 40, "the copies cost no provider input");

      const [usage] = await sql`
        select table_name, embedding_column, model, online_tokens::int, online_inputs::int,
               reused_tokens::int, reused_inputs::int, batch_tokens::int,
               online_usd::float8, saved_usd::float8, cost_usd::float8
          from util.embedding_usage where day = (now() at time zone 'utc')::date`;
      const [{ price }] = await sql`
        select price_per_mtok::float8 as price from util.embedding_models where model = ${TEST_MODEL}`;
      assert.deepEqual({ ...usage }, {
        table_name: "documents",
        embedding_column: "embedding",
        model: TEST_MODEL,
        online_tokens: sent,
        online_inputs: 40,
        reused_tokens: copies,
        reused_inputs: 10,
        batch_tokens: 0,
        online_usd: Number((sent * price / 1e6).toFixed(6)),
        saved_usd: Number((copies * price / 1e6).toFixed(6)),
        cost_usd: Number((sent * price / 1e6).toFixed(6)),
      });
    } finally {
      await p.stop();
    }
  });
});
