// Logical capture (supabase/schemas/35_capture.sql, cli/capture.ts): a table
// attached with capture => 'logical' has no trigger; the worker follows the
// write-ahead log through its replication slot and keeps it fresh.
import assert from "node:assert/strict";
import { providerEnv, runCli } from "../../devtools/cli.ts";
import { withTestDb } from "../../devtools/db.ts";
import { startFakeOpenAI } from "../../devtools/fake_openai.ts";
import { createDocuments, queueLength } from "../../devtools/pipeline.ts";
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

Deno.test("logical capture: worker --once queues what the slot holds, drains it and exits; the pipeline's own writes queue nothing", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI();
    try {
      await createDocuments(sql, { attach: false });
      await attachLogical(sql);
      // The first run makes the slot (nothing to catch up yet).
      const first = await runCli(["worker", "--once"], providerEnv(fake, url));
      assert.equal(first.code, 0, first.stderr);
      const [{ slots }] = await sql`
        select count(*)::int as slots from pg_replication_slots where database = current_database()`;
      assert.equal(slots, 1, "the premise: the slot exists");
      // Changes while no worker runs: in the slot, not in the queue.
      await insertRows(sql, 300);
      assert.equal(await queueLength(sql), 0, "the premise: nothing queued without a worker");
      const second = await runCli(["worker", "--once"], providerEnv(fake, url));
      assert.equal(second.code, 0, second.stderr);
      await assertAllFresh(sql);
      assert.match(second.stderr, /capture_caught_up/);
      // The run's own embedding writes came back through the slot: a third
      // run finds them all marked as ours and queues nothing.
      const inputs = fake.stats.inputs;
      const third = await runCli(["worker", "--once"], providerEnv(fake, url));
      assert.equal(third.code, 0, third.stderr);
      assert.equal(fake.stats.inputs, inputs, "no provider call");
      assert.match(third.stderr, /capture_caught_up/, "the premise: the run read the slot");
      assert.doesNotMatch(
        third.stdout,
        /"event":"batch"/,
        "no job: the writes were marked as ours",
      );
      const [{ enqueued }] = await sql`
        select count(*)::int as enqueued from pgmq.a_embedding_jobs`;
      assert.equal(enqueued, 0, "nothing dead-lettered");
      assert.equal(await queueLength(sql), 0);
      const status = await runCli(["status", "--json"], providerEnv(fake, url));
      assert.equal(status.code, 0, status.stderr);
      const [row] = JSON.parse(status.stdout);
      assert.match(row.capture, /^logical: slot \S+, lag .* \/ [\d.]+s, no worker follows it$/);
    } finally {
      await fake.close();
    }
  });
});
