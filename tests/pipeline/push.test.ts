// Push mode end to end: util.process_embeddings -> pg_net -> embed function
// -> Postgres, against the real local cluster and the fake provider.
import assert from "node:assert/strict";
import { connect, withTestDb } from "../../devtools/db.ts";
import {
  createDocuments,
  drainPush,
  queueLength,
  startPipeline,
  TEST_SECRET,
} from "../../devtools/pipeline.ts";
import { assertAllFresh, embeddedCount, embeddingProblem, insertRows } from "../_support/rows.ts";
import { waitFor } from "../../devtools/wait.ts";

Deno.test("I1/I3: 500 inserted rows embed through the push path with ceil(500/100)+1 provider calls at most", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await createDocuments(sql);
      await insertRows(sql, 500);
      assert.equal(await queueLength(sql), 500);
      await drainPush(sql, { batchSize: 100, maxRequests: 2 });
      await assertAllFresh(sql);
      assert.ok(
        p.fake.stats.requests <= Math.ceil(500 / 100) + 1,
        `requests ${p.fake.stats.requests}`,
      );
      assert.equal(p.fake.stats.inputs, 500);
      const [status] = await sql`select * from util.embedding_status_exact()`;
      assert.equal(Number(status.embedded), 500);
      assert.equal(Number(status.missing), 0);
      assert.equal(Number(status.stale), 0);
      assert.equal(Number(status.queued), 0);
    } finally {
      await p.stop();
    }
  });
});

Deno.test("push drain continues past one slice: one process_embeddings call drains a backlog", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await createDocuments(sql);
      await insertRows(sql, 300);
      const [{ requests }] = await sql`select util.process_embeddings(50, 1, 10000) as requests`;
      assert.equal(requests, 1, "one request in flight at most");
      // No further process_embeddings call: finishing calls must start the next ones.
      await waitFor(async () => await queueLength(sql) === 0, {
        what: "the backlog to drain by the continuation alone",
      });
      await assertAllFresh(sql);
      assert.equal(p.fake.stats.requests, 6);
    } finally {
      await p.stop();
    }
  });
});

Deno.test("I4: a no-op update costs zero provider calls and never leaves an embedding NULL", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await createDocuments(sql);
      await insertRows(sql, 50);
      await drainPush(sql);
      p.fake.resetStats();
      await sql`update documents set title = title`;
      assert.equal(await queueLength(sql), 0, "no-op update enqueues nothing");
      await drainPush(sql);
      assert.equal(p.fake.stats.requests, 0);
      const [{ n }] = await sql`select count(*)::int as n from documents where embedding is null`;
      assert.equal(n, 0);
    } finally {
      await p.stop();
    }
  });
});

Deno.test("I3: duplicate and re-delivered jobs for embedded text cost zero calls; re-inserted text hits the cache", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await createDocuments(sql);
      await insertRows(sql, 20);
      await drainPush(sql);
      p.fake.resetStats();
      // Re-deliver every job twice.
      await sql`select util.reembed('documents')`; // nothing missing: enqueues 0
      await sql`select pgmq.send_batch('embedding_jobs', array(
                  select jsonb_build_object('id', id, 'schema', 'public', 'table', 'documents',
                    'contentFunction', 'documents_input', 'embeddingColumn', 'embedding')
                  from documents, generate_series(1, 2)))`;
      await drainPush(sql);
      assert.equal(p.fake.stats.requests, 0, "fresh rows are skipped");
      // Same texts in new rows: served from the cache.
      await sql`insert into documents (title, content) select title, content from documents`;
      await drainPush(sql);
      assert.equal(p.fake.stats.requests, 0, "cached texts are not paid for again");
      await assertAllFresh(sql);
    } finally {
      await p.stop();
    }
  });
});

Deno.test("I2: a row edited while its job is in flight ends with the embedding of the newest text", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await createDocuments(sql);
      // Every value the embedding column takes, in order.
      await sql.unsafe(`
        create table embedding_writes (seq bigint generated always as identity, embedding text);
        create function log_embedding_write() returns trigger language plpgsql as $$
        begin
          insert into embedding_writes (embedding) values (new.embedding::text);
          return null;
        end $$;
        create trigger log_embedding_write after update of embedding on documents
          for each row when (new.embedding is distinct from old.embedding)
          execute function log_embedding_write();
      `).simple();
      const [{ id }] =
        await sql`insert into documents (title, content) values ('old', 'old text') returning id`;
      p.fake.hold();
      await sql`select util.process_embeddings(10, 1, 10000)`;
      // The premise: the provider has the old text and has not answered yet.
      await waitFor(() => p.fake.stats.texts.includes("old: old text"), {
        what: "the provider to receive the old text",
      });
      await sql`update documents set title = 'new', content = 'new text' where id = ${id}`;
      p.fake.release();
      await drainPush(sql);
      await assertAllFresh(sql);
      assert.ok(
        p.fake.stats.embeddedTexts.includes("old: old text"),
        "the old text's vector came back after the edit, for the write to refuse",
      );
      const writes = await sql`select embedding from embedding_writes order by seq`;
      assert.ok(writes.length > 0, "the new text's embedding was written");
      for (const w of writes) {
        assert.notEqual(
          embeddingProblem(w.embedding, "old: old text"),
          null,
          "the old text's vector never landed",
        );
      }
      const [{ fp }] = await sql`select count(*)::int as fp from util.embedding_fingerprints`;
      assert.equal(fp, 1);
    } finally {
      p.fake.release();
      await p.stop();
    }
  });
});

Deno.test("I6: a job for a deleted row finishes quietly", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await createDocuments(sql);
      await insertRows(sql, 5);
      await sql`delete from documents where id <= 3`;
      await drainPush(sql);
      assert.equal(await queueLength(sql), 0);
      const [{ n }] = await sql`select count(*)::int as n from pgmq.a_embedding_jobs`;
      assert.equal(n, 0, "nothing dead-lettered");
      assert.equal(p.fake.stats.inputs, 2);
    } finally {
      await p.stop();
    }
  });
});

Deno.test("I5: a row whose content function raises is dead-lettered after max attempts; the others embed", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await sql`update util.settings set value = '2' where name = 'max_attempts'`;
      await sql`update util.settings set value = '0' where name = 'backoff_base_seconds'`;
      await createDocuments(sql);
      await sql.unsafe(`
        create or replace function public.documents_input(d public.documents) returns text language plpgsql as $$
        begin
          if d.title = 'poison' then raise exception 'cannot build text for %', d.id; end if;
          return d.title || ': ' || d.content;
        end $$`);
      // The redefinition's recheck runs now, on the empty table, so each row gets one job.
      await sql`select util.maintain_embeddings()`;
      await insertRows(sql, 10);
      await sql`insert into documents (title, content) values ('poison', 'x')`;
      await drainPush(sql);
      assert.equal(await embeddedCount(sql), 10);
      const [dead] = await sql`select count(*)::int as n from pgmq.a_embedding_jobs`;
      assert.equal(dead.n, 1);
      const errors =
        await sql`select attempt, error, dead_lettered from util.embedding_errors order by id`;
      assert.equal(errors.length, 2);
      assert.match(errors[1].error, /cannot build text/);
      assert.equal(errors[1].dead_lettered, true);
      const [status] =
        await sql`select dead_lettered, last_error from util.embedding_status_exact()`;
      assert.equal(Number(status.dead_lettered), 1);
      assert.match(status.last_error, /cannot build text/);
    } finally {
      await p.stop();
    }
  });
});

Deno.test("I5/I14: provider 500s open its circuit; the rows wait without spending attempts, then everything embeds", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await sql`update util.settings set value = '1' where name = 'max_attempts'`;
      await createDocuments(sql);
      p.fake.setFault({ kind: "status", status: 500, times: 2 });
      await insertRows(sql, 30);
      await sql`select util.process_embeddings(10, 1, 10000)`;
      await waitFor(async () => {
        const [s] = await sql`
          select circuit_open_since is not null as open, circuit_reason from util.embedding_status_exact()`;
        return s.open && /500/.test(s.circuit_reason);
      }, { what: "the provider's circuit to open" });
      await drainPush(sql, { batchSize: 10, maxRequests: 1 });
      await assertAllFresh(sql);
      assert.equal(p.fake.stats.failedRequests, 2, "the premise: two calls failed");
      const [{ n }] = await sql`select count(*)::int as n from util.embedding_errors`;
      assert.equal(n, 0, "a provider-wide failure is no row's failure");
      const [dead] = await sql`select count(*)::int as n from pgmq.a_embedding_jobs`;
      assert.equal(dead.n, 0, "nothing dead-lettered, even at max_attempts 1");
      const [{ open }] = await sql`select count(*)::int as open from util.provider_circuits`;
      assert.equal(open, 0, "the circuit closed on the first success");
    } finally {
      await p.stop();
    }
  });
});

Deno.test("backoff: a failed job is hidden for an increasing delay, not the full visibility timeout", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url, { dispatcher: false });
    try {
      await createDocuments(sql);
      await sql`insert into documents (title, content) values ('a', 'b')`;
      const failures = JSON.stringify([{
        job_id: 1,
        target_id: 1,
        table_name: "public.documents",
        row_id: "1",
        kind: "failed",
        error: "x",
        retryable: true,
      }]);
      const [msg] = await sql`select msg_id from pgmq.read('embedding_jobs', 300, 1)`;
      assert.equal(Number(msg.msg_id), 1);
      const [first] =
        await sql`select retry_in_seconds from util._settle_jobs('{}', ${failures}::text::jsonb)`;
      await sql`update pgmq.q_embedding_jobs set vt = now(), read_ct = 3`;
      const [third] =
        await sql`select retry_in_seconds from util._settle_jobs('{}', ${failures}::text::jsonb)`;
      assert.ok(
        first.retry_in_seconds >= 3 && first.retry_in_seconds <= 7,
        `first ${first.retry_in_seconds}`,
      );
      assert.ok(
        third.retry_in_seconds >= 15 && third.retry_in_seconds <= 25,
        `third ${third.retry_in_seconds}`,
      );
      const [{ hidden }] =
        await sql`select extract(epoch from vt - now())::int as hidden from pgmq.q_embedding_jobs`;
      assert.ok(hidden < 300 && hidden >= 14, `hidden ${hidden}`);
    } finally {
      await p.stop();
    }
  });
});

Deno.test("I8: forged messages naming another function or column are refused and recorded", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await createDocuments(sql);
      await sql`create table secrets (id int primary key, v text, embedding halfvec(16))`;
      await sql`insert into secrets values (1, 'top secret')`;
      await sql`select pgmq.send_batch('embedding_jobs', array[
        '{"id": 1, "schema": "public", "table": "documents", "contentFunction": "pg_read_file", "embeddingColumn": "embedding"}',
        '{"id": 1, "schema": "public", "table": "documents", "contentFunction": "documents_input", "embeddingColumn": "title"}',
        '{"id": 1, "schema": "public", "table": "secrets", "contentFunction": "documents_input", "embeddingColumn": "embedding"}',
        '{"id": 1, "schema": "public\\"; drop table documents; --", "table": "documents", "contentFunction": "documents_input", "embeddingColumn": "embedding"}'
      ]::jsonb[])`;
      await drainPush(sql);
      const refused = await sql`select error from util.embedding_errors where not retryable`;
      assert.equal(refused.length, 4);
      for (const r of refused) assert.match(r.error, /^refused/);
      const [{ n }] = await sql`select count(*)::int as n from pgmq.a_embedding_jobs`;
      assert.equal(n, 4);
      assert.equal(p.fake.stats.requests, 0);
      const [{ present }] =
        await sql`select to_regclass('public.documents') is not null as present`;
      assert.ok(present);
      const [{ embedding }] = await sql`select embedding from secrets`;
      assert.equal(embedding, null);
    } finally {
      await p.stop();
    }
  });
});

Deno.test("I9: the function rejects requests without the bearer secret, wrong methods and bad bodies", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url, { dispatcher: false });
    try {
      const job = [{
        jobId: 1,
        id: 1,
        schema: "public",
        table: "documents",
        contentFunction: "f",
        embeddingColumn: "embedding",
      }];
      const post = (headers: Record<string, string>, body: string, method = "POST") =>
        fetch(p.functionUrl, { method, headers, body: method === "GET" ? undefined : body });
      const auth = { Authorization: `Bearer ${TEST_SECRET}`, "Content-Type": "application/json" };
      let res = await post({}, JSON.stringify(job));
      assert.equal(res.status, 401);
      await res.body?.cancel();
      res = await post({ Authorization: "Bearer wrong" }, JSON.stringify(job));
      assert.equal(res.status, 401);
      await res.body?.cancel();
      res = await post(auth, "", "GET");
      assert.equal(res.status, 405);
      await res.body?.cancel();
      res = await post(auth, "{not json");
      assert.equal(res.status, 400);
      assert.match((await res.json()).error, /not valid JSON/);
      res = await post(auth, JSON.stringify([{ jobId: "x" }]));
      assert.equal(res.status, 400);
      await res.body?.cancel();
      res = await post(auth, JSON.stringify("x".repeat(3 * 1024 * 1024)));
      assert.equal(res.status, 400);
      await res.body?.cancel();
      assert.equal(p.fake.stats.requests, 0);
      const joined = p.logs.join("\n");
      assert.ok(!joined.includes(TEST_SECRET), "the secret never reaches the logs");
    } finally {
      await p.stop();
    }
  });
});

Deno.test("pitfall: process_embeddings on an empty queue does nothing and raises nothing", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url, { dispatcher: false });
    try {
      const [{ requests }] = await sql`select util.process_embeddings() as requests`;
      assert.equal(requests, 0);
      const [{ n }] = await sql`select count(*)::int as n from net.http_request_queue`;
      assert.equal(n, 0);
    } finally {
      await p.stop();
    }
  });
});

Deno.test("pitfall: authenticated and anon inserts succeed (security definer triggers) and embed", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await createDocuments(sql);
      await sql.unsafe(`
        alter table documents enable row level security;
        create policy anyone_inserts on documents for insert to anon, authenticated with check (true);
        grant insert on documents to anon, authenticated;
      `).simple();
      for (const role of ["authenticated", "anon"]) {
        await sql.begin(async (tx) => {
          await tx.unsafe(`set local role ${role}`);
          await tx`insert into documents (title, content) values (${role}, 'inserted by an app role')`;
        });
      }
      await drainPush(sql);
      await assertAllFresh(sql);
    } finally {
      await p.stop();
    }
  });
});

Deno.test("pitfall: uuid and text primary keys work", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await createDocuments(sql, { table: "by_uuid", pkType: "uuid" });
      await createDocuments(sql, { table: "by_text", pkType: "text" });
      await sql`insert into by_uuid (title, content) values ('u1', 'uuid row'), ('u2', 'another uuid row')`;
      // Keys that need escaping in the write's text[] literal, and one that reads as its NULL.
      await sql`insert into by_text (id, title, content) values ('a''b', 't1', 'text key with a quote'), ('k2', 't2', 'text row'), ('q"u\\o,{t}', 't3', 'array syntax in a key'), ('NULL', 't4', 'a key spelled NULL')`;
      await drainPush(sql);
      await assertAllFresh(sql, "by_uuid");
      await assertAllFresh(sql, "by_text");
    } finally {
      await p.stop();
    }
  });
});

Deno.test("guide-style row triggers and clear_column: text changes re-embed, no-op updates keep the embedding", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await createDocuments(sql, { attach: false });
      await sql.unsafe(`
        create trigger embed_on_insert after insert on documents
          for each row execute function util.queue_embeddings('documents_input', 'embedding');
        create trigger embed_on_update after update of title, content on documents
          for each row execute function util.queue_embeddings('documents_input', 'embedding');
        create trigger clear_on_update before update of title, content on documents
          for each row execute function util.clear_column('embedding');
      `).simple();
      await insertRows(sql, 5);
      assert.equal(await queueLength(sql), 5);
      await drainPush(sql);
      await assertAllFresh(sql);
      await sql`update documents set title = title`;
      assert.equal(await queueLength(sql), 0);
      const [{ nulls }] =
        await sql`select count(*)::int as nulls from documents where embedding is null`;
      assert.equal(nulls, 0, "clear_column leaves unchanged text alone");
      await sql`update documents set content = 'changed' where id = 1`;
      const [{ cleared }] =
        await sql`select embedding is null as cleared from documents where id = 1`;
      assert.equal(cleared, true);
      await drainPush(sql);
      await assertAllFresh(sql);
    } finally {
      await p.stop();
    }
  });
});

Deno.test("bulk: a 20,000-row insert ... select enqueues with one statement-level trigger call", async () => {
  await withTestDb(async (sql) => {
    await createDocuments(sql);
    // enable_embeddings' insert and update trigger function, written for this table.
    const [{ trigger }] = await sql`
      select util._queue_function_name('documents', 'embedding')::text as trigger`;
    // Counts within one transaction, as a difference: the view also shows this
    // session's earlier calls whose statistics have not been flushed yet.
    const callsDuring = (statement: string) =>
      sql.begin(async (tx) => {
        await tx`set local track_functions = 'pl'`;
        const counts = async (): Promise<Record<string, number>> =>
          Object.fromEntries(
            (await tx`
              select funcname, sum(calls)::int as calls from pg_stat_xact_user_functions
               where schemaname in ('util', 'pgmq')
                 and funcname in ('queue_embeddings', 'send', 'send_batch', ${trigger})
               group by funcname`).map((r) => [r.funcname, r.calls]),
          );
        const before = await counts();
        await tx.unsafe(statement);
        const after = await counts();
        return Object.fromEntries(
          Object.entries(after).map(([name, n]) => [name, n - (before[name] ?? 0)]).filter((
            [, n],
          ) => n !== 0),
        );
      });
    let calls = await callsDuring(
      `insert into documents (title, content) select 'title ' || g, 'content of row ' || g
         from generate_series(1, 20000) g`,
    );
    // One trigger call, which inserts every job in one statement (no per-row pgmq.send).
    assert.equal(await queueLength(sql), 20_000);
    assert.deepEqual(calls, { [trigger]: 1 });
    calls = await callsDuring(`update documents set content = content || '!' where id % 2 = 0`);
    assert.equal(await queueLength(sql), 30_000);
    assert.deepEqual(calls, { [trigger]: 1 });
    calls = await callsDuring(`update documents set title = title`);
    assert.equal(await queueLength(sql), 30_000, "a no-op update enqueues nothing");
    assert.deepEqual(calls, { [trigger]: 1 });
  });
});

Deno.test("shutdown: jobs pending when the runtime stops are handed back, not lost", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url, { latencyMs: 1000, dispatcher: false });
    try {
      await createDocuments(sql);
      await insertRows(sql, 3);
      const jobs = await sql`select msg_id, message from pgmq.read('embedding_jobs', 300, 10)`;
      const body = jobs.map((j) => ({ ...j.message, jobId: Number(j.msg_id) }));
      const pending = fetch(p.functionUrl, {
        method: "POST",
        headers: { Authorization: `Bearer ${TEST_SECRET}` },
        body: JSON.stringify(body),
      });
      // The premise: the provider holds the three texts and has not answered
      // (its latency is 1 s); nothing can answer between this check and the abort.
      await waitFor(() => p.fake.inFlight === 1 && p.fake.stats.texts.length === 3, {
        what: "the provider to be busy with the three texts",
      });
      p.shutdown.abort();
      const res = await pending;
      const result = await res.json();
      assert.equal(res.headers.get("x-failed-jobs"), String(jobs.length));
      assert.equal(result.completedJobs.length, 0);
      const [{ visible }] = await sql`
        select sum(util._job_rows(message))::int as visible from pgmq.q_embedding_jobs
         where vt <= now()`;
      assert.equal(visible, 3, "handed back jobs are visible again at once");
    } finally {
      await p.stop();
    }
  });
});

Deno.test("guide-style row triggers: two transactions' first inserts at once both succeed (one registration)", async () => {
  await withTestDb(async (sql, url) => {
    await createDocuments(sql, { attach: false });
    await sql.unsafe(`
      create trigger embed_on_insert after insert on documents
        for each row execute function util.queue_embeddings('documents_input', 'embedding');
    `).simple();
    const other = connect(url, { max: 1 });
    try {
      // The first transaction registers the target and keeps it uncommitted;
      // the second one's registration waits for it, then finds it taken.
      const first = await sql.reserve();
      try {
        await first`begin`;
        await first`insert into documents (title, content) values ('first', 'text one')`;
        const second = other`insert into documents (title, content) values ('second', 'text two')`
          .execute();
        await waitFor(async () => {
          const [{ n }] = await sql`
            select count(*)::int as n from pg_stat_activity
             where datname = current_database() and wait_event_type = 'Lock'`;
          return n > 0;
        }, { what: "the second insert to wait for the first registration" });
        await first`commit`;
        await second;
      } finally {
        first.release();
      }
      const [{ n }] = await sql`select count(*)::int as n from util.embedding_targets`;
      assert.equal(n, 1);
      assert.equal(await queueLength(sql), 2);
    } finally {
      await other.end();
    }
  });
});
