// Packed queue messages: a statement's (or a sweep step's) rows share one
// message per 100 row ids (the triggers' and sweeps' packing), claims are sized by rows
// (util._read_jobs), and a message is settled row by row
// (util._settle_jobs): done rows leave it, failed rows leave as messages of
// their own under their own backoff (or as dead letters of their own), rows
// left unstarted stay, visible at once, with their attempt back.
import assert from "node:assert/strict";
import { providerEnv, runCli } from "../../devtools/cli.ts";
import { type Sql, withTestDb } from "../../devtools/db.ts";
import { startFakeOpenAI } from "../../devtools/fake_openai.ts";
import { createDocuments, queueLength, queueMessages } from "../../devtools/pipeline.ts";
import { assertAllFresh, insertRows } from "../_support/rows.ts";

/** The row ids of each queued message, in queue order (a single-row message as one id). */
async function queuedIds(sql: Sql): Promise<number[][]> {
  const rows = await sql`
    select coalesce(message -> 'ids', jsonb_build_array(message -> 'id')) as ids
      from pgmq.q_embedding_jobs order by msg_id`;
  return rows.map((r) => (r.ids as number[]).map(Number));
}

/** Claims as the worker does; returns the row count of each message claimed. */
async function claim(sql: Sql, maxRows: number): Promise<number[]> {
  const rows = await sql`
    select util._job_rows(message) as n from util._read_jobs(300, ${maxRows}) order by msg_id`;
  return rows.map((r) => r.n);
}

Deno.test("packed: a 250-row statement is 3 messages of at most 100 ids, and status counts rows", async () => {
  await withTestDb(async (sql) => {
    await createDocuments(sql);
    await insertRows(sql, 250);
    assert.equal(await queueMessages(sql), 3);
    assert.equal(await queueLength(sql), 250);
    const ids = (await queuedIds(sql)).flat().sort((a, b) => a - b);
    assert.deepEqual(ids, Array.from({ length: 250 }, (_, i) => i + 1), "every row once");
    assert.ok((await queuedIds(sql)).every((m) => m.length <= 100));
    const [status] = await sql`select queued::int from util.embedding_status`;
    assert.equal(status.queued, 250);
    // A single-row statement keeps the one-row form.
    await sql`insert into documents (title, content) values ('one', 'row')`;
    const [last] =
      await sql`select message from pgmq.q_embedding_jobs order by msg_id desc limit 1`;
    assert.equal(last.message.id, 251);
    assert.equal(last.message.ids, undefined);
  });
});

Deno.test("packed: claims are sized by rows; a message larger than the claim is cut, the rest visible", async () => {
  await withTestDb(async (sql) => {
    await createDocuments(sql);
    await insertRows(sql, 100);
    await insertRows(sql, 100, { prefix: "b" });
    await insertRows(sql, 50, { prefix: "c" });
    assert.deepEqual(await claim(sql, 120), [100], "the second message would exceed 120 rows");
    assert.deepEqual(await claim(sql, 250), [100, 50]);
    await sql`update pgmq.q_embedding_jobs set vt = now(), read_ct = 0`;
    assert.deepEqual(await claim(sql, 30), [30], "a cut: the first 30 ids");
    // The rest of the cut message: its own message, visible at once, not counted as read.
    const rest = await sql`
      select util._job_rows(message) as n, read_ct, vt <= now() as visible
        from pgmq.q_embedding_jobs order by msg_id desc limit 1`;
    assert.deepEqual({ ...rest[0] }, { n: 70, read_ct: 0, visible: true });
    assert.equal(await queueLength(sql), 250, "no row lost or doubled by the cut");
    const ids = (await queuedIds(sql)).flat().sort((a, b) => a - b);
    assert.deepEqual(ids, Array.from({ length: 250 }, (_, i) => i + 1));
  });
});

Deno.test("packed: a message is settled row by row (done leave, failed go on alone, dead leave alone)", async () => {
  await withTestDb(async (sql) => {
    await createDocuments(sql);
    await sql`update util.settings set value = '3' where name = 'max_attempts'`;
    await insertRows(sql, 5);
    const [{ msg_id: job }] = await sql`select msg_id from util._read_jobs(300, 100)`;
    const outcome = (rowId: string, kind: string, retryable = true) => ({
      job_id: Number(job),
      target_id: 1,
      table_name: "public.documents",
      row_id: rowId,
      kind,
      error: `row ${rowId} failed`,
      retryable,
    });
    const settle = async (outcomes: object[], done: number[] = []) =>
      await sql`select job_id::int, row_id, dead_lettered, retry_in_seconds
                  from util._settle_jobs(${done}::bigint[], ${
        JSON.stringify(outcomes)
      }::text::jsonb)
                 order by row_id`;
    // Rows 1 and 5 done; 2 failed (retryable), 3 failed for good, 4 unstarted.
    const first = await settle([
      outcome("2", "failed"),
      outcome("3", "failed", false),
      outcome("4", "unstarted"),
    ]);
    assert.deepEqual(first.map((r) => [r.job_id, r.row_id, r.dead_lettered]), [
      [Number(job), "2", false],
      [Number(job), "3", true],
    ]);
    const [kept] = await sql`
      select message -> 'ids' as ids, read_ct, vt <= now() as visible
        from pgmq.q_embedding_jobs where msg_id = ${job}`;
    assert.deepEqual(kept.ids, [4], "only the unstarted row stays in the message");
    assert.equal(kept.read_ct, 0, "its attempt given back");
    assert.equal(kept.visible, true, "not held back by row 2's backoff");
    const [own] = await sql`
      select msg_id, message, read_ct, vt > now() + interval '2 seconds' as hidden
        from pgmq.q_embedding_jobs where msg_id <> ${job}`;
    assert.equal(own.message.id, 2, "the failed row goes on in a message of its own");
    assert.equal(own.message.ids, undefined);
    assert.equal(own.read_ct, 1, "with the attempt it had");
    assert.equal(own.hidden, true, "under its own backoff");
    const dead = await sql`select msg_id, read_ct, message from pgmq.a_embedding_jobs`;
    assert.equal(dead.length, 1);
    assert.equal(dead[0].message.id, 3, "the dead row is a dead letter of its own");
    assert.equal(dead[0].message.ids, undefined);
    assert.equal(dead[0].read_ct, 1, "with the attempts it had");
    const errors = await sql`
      select job_id, row_id, attempt, dead_lettered from util.embedding_errors order by row_id`;
    assert.deepEqual(errors.map((e) => [Number(e.job_id), e.row_id, e.attempt, e.dead_lettered]), [
      [Number(own.msg_id), "2", 1, false],
      [Number(dead[0].msg_id), "3", 1, true],
    ]);

    // Row 2 at max attempts: dead-lettered alone; row 4 is untouched by it.
    await sql`update pgmq.q_embedding_jobs set read_ct = 3 where msg_id = ${own.msg_id}`;
    const [last] = await sql`
      select job_id::int, row_id, dead_lettered from util._settle_jobs('{}', ${
      JSON.stringify([{ ...outcome("2", "failed"), job_id: Number(own.msg_id), row_id: "2" }])
    }::text::jsonb)`;
    assert.equal(last.dead_lettered, true);
    const archived = await sql`select message ->> 'id' as id from pgmq.a_embedding_jobs order by 1`;
    assert.deepEqual(archived.map((a) => a.id), ["2", "3"]);
    const [left] = await sql`select message -> 'ids' as ids, read_ct from pgmq.q_embedding_jobs`;
    assert.deepEqual(left.ids, [4]);
    assert.equal(left.read_ct, 0);

    // Its last row done: the message goes.
    await settle([], [Number(job)]);
    assert.equal(await queueMessages(sql), 0);
    assert.equal(Number((await sql`select util.retry_failed() as n`)[0].n), 2, "rows 2, 3");
    assert.deepEqual((await queuedIds(sql)).flat().sort(), [2, 3]);
  });
});

Deno.test("packed: a poison row in a bulk statement is dead-lettered alone; its 249 neighbours embed (worker)", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI();
    try {
      await createDocuments(sql);
      await sql`update util.settings set value = '2' where name = 'max_attempts'`;
      await sql`update util.settings set value = '0' where name = 'backoff_base_seconds'`;
      await sql.unsafe(`
        create or replace function public.documents_input(d public.documents) returns text
          language plpgsql immutable as $$
        begin
          if d.title = 'row 137' then raise exception 'cannot build text for %', d.id; end if;
          return d.title || ': ' || d.content;
        end $$`);
      await sql`select util.maintain_embeddings()`; // the redefinition's recheck, on the empty table
      await insertRows(sql, 250);
      assert.equal(await queueMessages(sql), 3, "the premise: packed messages");
      const env = providerEnv(fake, url);
      // Two attempts: the second run finds the poison row again after its (zero) backoff.
      for (let run = 0; run < 2; run++) {
        const r = await runCli(["worker", "--once", "--batch-size", "100"], env);
        assert.equal(r.code, 0, r.stderr);
      }
      await sql`delete from documents where title = 'row 137'`; // for assertAllFresh
      await assertAllFresh(sql);
      const dead = await sql`select message from pgmq.a_embedding_jobs`;
      assert.deepEqual(dead.map((d) => d.message.id), [137]);
      assert.equal(await queueMessages(sql), 0);
      assert.equal(fake.stats.inputs, 249, "each good row embedded once");
      const errors = await sql`select row_id, dead_lettered from util.embedding_errors order by id`;
      assert.deepEqual(errors.map((e) => [e.row_id, e.dead_lettered]), [
        ["137", false],
        ["137", true],
      ]);
    } finally {
      await fake.close();
    }
  });
});

Deno.test("packed: a forged packed message's id that is no key is dead-lettered alone; the others embed", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI();
    try {
      await createDocuments(sql);
      await insertRows(sql, 2);
      await sql`select pgmq.purge_queue('embedding_jobs')`;
      await sql`select pgmq.send('embedding_jobs', '{"ids": [1, "abc", 2], "schema": "public",
        "table": "documents", "contentFunction": "documents_input", "embeddingColumn": "embedding"}')`;
      const r = await runCli(["worker", "--once"], providerEnv(fake, url));
      assert.equal(r.code, 0, r.stderr);
      await assertAllFresh(sql);
      assert.equal(await queueMessages(sql), 0);
      const dead = await sql`select msg_id, message from pgmq.a_embedding_jobs`;
      assert.deepEqual(dead.map((d) => d.message.id), ["abc"]);
      const errors =
        await sql`select job_id, row_id, retryable, dead_lettered, error from util.embedding_errors`;
      assert.equal(errors.length, 1);
      assert.equal(Number(errors[0].job_id), Number(dead[0].msg_id));
      assert.equal(errors[0].row_id, "abc");
      assert.equal(errors[0].dead_lettered, true);
      assert.match(errors[0].error, /not a valid bigint/);
    } finally {
      await fake.close();
    }
  });
});
