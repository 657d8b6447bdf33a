// Push mode's kick: a change that finds the pipeline idle POSTs one request
// that runs util.process_embeddings at once, so it need not wait for a tick.
import assert from "node:assert/strict";
import type postgres from "postgres";
import { connect, type Sql, withTestDb } from "../../devtools/db.ts";
import { createDocuments, queueLength, startPipeline } from "../../devtools/pipeline.ts";
import { embeddedCount } from "../_support/rows.ts";
import { waitFor } from "../../devtools/wait.ts";

async function kicksQueued(sql: Sql): Promise<number> {
  const [{ n }] = await sql`
    select count(*)::int as n from net.http_request_queue where url like '%kick=1%'`;
  return n;
}

async function insertDocument(
  sql: Sql | postgres.TransactionSql,
  title: string,
): Promise<void> {
  await sql`insert into documents (title, content) values (${title}, 'some text to embed')`;
}

Deno.test("kick: with no tick at all, a single insert is embedded", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await createDocuments(sql);
      await sql`update util.settings set value = 'on' where name = 'kick_on_change'`;
      // Nothing here calls util.process_embeddings, and test databases have
      // no pg_cron job: only the kick can start the call.
      await insertDocument(sql, "kicked");
      // The job is deleted just after the write commits (another statement):
      // wait for both.
      await waitFor(async () => await embeddedCount(sql) === 1 && await queueLength(sql) === 0, {
        what: "the inserted row to be embedded through the kick, and its job deleted",
      });
      assert.equal(p.fake.stats.inputs, 1);
    } finally {
      await p.stop();
    }
  });
});

Deno.test("kick: none while calls are in flight, one per burst, none when off", async () => {
  await withTestDb(async (sql, url) => {
    // No dispatcher: requests stay in pg_net's queue, where they are counted.
    const p = await startPipeline(sql, url, { dispatcher: false });
    try {
      await createDocuments(sql);
      await insertDocument(sql, "off");
      assert.equal(await kicksQueued(sql), 0, "kick_on_change is off by default without pg_cron");

      await sql`update util.settings set value = 'on' where name = 'kick_on_change'`;
      await sql`
        insert into util.embedding_requests (jobs, expires_at)
        values (0, now() + interval '1 hour')`;
      await insertDocument(sql, "in flight");
      assert.equal(await kicksQueued(sql), 0, "a call in flight: the change rides the chain");

      await sql`delete from util.embedding_requests`;
      await sql.begin(async (tx) => {
        await insertDocument(tx, "idle");
        assert.equal(await kicksQueued(sql), 0, "the kick is sent only once its write commits");
      });
      assert.equal(await kicksQueued(sql), 1, "an idle pipeline is kicked");
      await insertDocument(sql, "burst");
      assert.equal(await kicksQueued(sql), 1, "a pending kick stands for the burst");

      // As if the pending kick had been served.
      await sql`select pg_catalog.setval('util.embedding_kick_clock', 0)`;
      await sql.begin(async (tx) => {
        await insertDocument(tx, "rolled back");
        throw new Error("roll back");
      }).catch(() => {});
      assert.equal(await kicksQueued(sql), 1, "a rolled-back write sends nothing");

      // The pending kick served: calls now in flight, so the next change
      // kicks nothing; their end lets the next idle change kick again.
      await sql`select util.process_embeddings()`;
      await insertDocument(sql, "during calls");
      assert.equal(await kicksQueued(sql), 1);
      await sql`delete from util.embedding_requests`;
      await insertDocument(sql, "idle again");
      assert.equal(await kicksQueued(sql), 2);
    } finally {
      await p.stop();
    }
  });
});

Deno.test("kick: push mode sends no NOTIFY (commits stay concurrent); without it changes NOTIFY workers", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url, { dispatcher: false });
    const listener = connect(url, { max: 1 });
    try {
      await createDocuments(sql);
      const received: string[] = [];
      await listener.listen("embedding_jobs", (payload) => void received.push(payload));
      // Notifications arrive in commit order: the marker sent after the
      // insert shows whether the insert's transaction notified.
      const firstAfter = async (title: string, marker: string) => {
        received.length = 0;
        await insertDocument(sql, title);
        await sql`select pg_notify('embedding_jobs', ${marker})`;
        await waitFor(() => received.includes(marker), { what: `notification ${marker}` });
        return received[0];
      };
      assert.equal(
        await firstAfter("pull mode", "m1"),
        "",
        "kick_on_change off: the insert notifies",
      );
      await sql`update util.settings set value = 'on' where name = 'kick_on_change'`;
      assert.equal(await firstAfter("push mode", "m2"), "m2", "kick_on_change on: no NOTIFY");
    } finally {
      await listener.end();
      await p.stop();
    }
  });
});
