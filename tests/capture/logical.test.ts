// Logical capture (supabase/schemas/35_capture.sql, cli/capture.ts): a table
// attached with capture => 'logical' has no trigger; the worker follows the
// write-ahead log through its replication slot and keeps it fresh.
import assert from "node:assert/strict";
import { withTestDb } from "../../devtools/db.ts";
import { startFakeOpenAI } from "../../devtools/fake_openai.ts";
import { createDocuments } from "../../devtools/pipeline.ts";
import { waitFor } from "../../devtools/wait.ts";
import { attachLogical, repeats, triggerCount, waitDrained, worker } from "../_support/capture.ts";
import { assertAllFresh, insertRows } from "../_support/rows.ts";

Deno.test("logical capture: no trigger on the table; COPY, updates, deletes, truncate through the slot", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI();
    await createDocuments(sql, { attach: false });
    await insertRows(sql, 200, { prefix: "before" });
    await attachLogical(sql);
    assert.equal(await triggerCount(sql), 0, "no trigger on the table");
    const [{ published }] = await sql`
      select count(*)::int as published from pg_publication_tables
       where pubname = 'autoembed' and tablename = 'documents'`;
    assert.equal(published, 1, "the table is in the publication");
    const w = worker(fake, url);
    try {
      await waitDrained(sql, "the backfill");
      // COPY of 10,000 rows: captured like any insert.
      const stream = await sql`copy public.documents (title, content) from stdin`.writable();
      for (let i = 0; i < 10_000; i++) stream.write(`copy ${i}\tcontent of copy ${i}\n`);
      stream.end();
      await new Promise((r) => stream.on("finish", r));
      await waitDrained(sql, "the COPY");
      const [{ n }] = await sql`select count(*)::int as n from public.documents`;
      assert.equal(n, 10_200);
      // Text changed: embedded again. A column the text does not use: no call.
      await sql`alter table public.documents add column views int not null default 0`;
      await sql`update public.documents set content = content || ' (edited)' where id <= 50`;
      await waitDrained(sql, "the edits");
      const calls = fake.stats.requests;
      const inputs = fake.stats.inputs;
      await sql`update public.documents set views = views + 1 where id <= 500`;
      await waitDrained(sql, "the views update");
      assert.equal(
        fake.stats.requests,
        calls,
        "an update of a column the text does not use: no call",
      );
      // Deletes: their fingerprints go.
      await sql`delete from public.documents where id > 10000`;
      await waitFor(async () => {
        const [{ f }] = await sql`
          select count(*)::int as f from util.embedding_fingerprints where row_id::bigint > 10000`;
        return f === 0;
      }, { what: "the deleted rows' fingerprints gone" });
      // A transaction that inserts and deletes the same row; one that inserts and keeps it.
      await sql.begin(async (tx) => {
        const [{ id }] =
          await tx`insert into public.documents (title, content) values ('ghost', 'gone at once') returning id`;
        await tx`delete from public.documents where id = ${id}`;
        await tx`insert into public.documents (title, content) values ('kept', 'stays')`;
      });
      await waitDrained(sql, "the ghost transaction");
      assert.ok(
        !fake.stats.texts.some((t) => t.includes("gone at once")),
        "the ghost is never embedded",
      );
      assert.equal(fake.stats.inputs, inputs + 1, "only the kept row since the edits");
      // Truncate: fingerprints and jobs go; rows inserted after embed.
      await sql`truncate public.documents`;
      await insertRows(sql, 20, { prefix: "after truncate" });
      await waitDrained(sql, "after the truncate");
      const [{ f }] = await sql`select count(*)::int as f from util.embedding_fingerprints`;
      assert.equal(f, 20, "fingerprints of the 20 rows since the truncate only");
      await assertAllFresh(sql);
      assert.deepEqual(repeats(fake), [], "nothing embedded twice");
      const [st] = await sql`select * from util.embedding_status`;
      assert.equal(st.capture, "logical");
      assert.equal(st.capture_attached, true);
      assert.ok(
        Number(st.capture_lag_bytes) < 1_000_000,
        `lag after the drain: ${st.capture_lag_bytes}`,
      );
    } finally {
      await w.stop("SIGTERM");
      await fake.close();
    }
  });
});
