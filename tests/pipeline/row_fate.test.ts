// I14, a row's fate is its own: one statement inserts 100 rows into a table
// whose content function raises for exactly one of them. The other 99 are
// embedded in the first pass, none waiting on the failing row's backoff; the
// failing row goes on alone, its attempts counted alone, until it is
// dead-lettered alone at max_attempts. The same body runs in pull mode (the
// worker CLI) and push mode (util.process_embeddings -> pg_net -> embed).
import assert from "node:assert/strict";
import { providerEnv, runCli } from "../../devtools/cli.ts";
import { type Sql, withTestDb } from "../../devtools/db.ts";
import { startFakeOpenAI } from "../../devtools/fake_openai.ts";
import { createDocuments, queueMessages, startPipeline } from "../../devtools/pipeline.ts";
import { insertRows } from "../_support/rows.ts";
import { waitFor } from "../../devtools/wait.ts";

const MAX_ATTEMPTS = 3;
const POISON = "row 42";

/** One pass of a mode: whatever is visible in the queue is claimed and processed once. */
type Pass = () => Promise<void>;

async function poisonedDocuments(sql: Sql): Promise<number> {
  await createDocuments(sql);
  await sql`update util.settings set value = ${String(MAX_ATTEMPTS)} where name = 'max_attempts'`;
  // A backoff long enough that a row waiting on it would miss the first pass.
  await sql`update util.settings set value = '120' where name = 'backoff_base_seconds'`;
  await sql.unsafe(`
    create or replace function public.documents_input(d public.documents) returns text
      language plpgsql immutable as $$
    begin
      if d.title = '${POISON}' then raise exception 'cannot build text for %', d.id; end if;
      return d.title || ': ' || d.content;
    end $$`);
  await sql`select util.maintain_embeddings()`; // the redefinition's recheck, on the empty table
  await insertRows(sql, 100);
  const [{ id }] = await sql`select id from documents where title = ${POISON}`;
  return Number(id);
}

async function rowFate(sql: Sql, pass: Pass, inputs: () => number): Promise<void> {
  const poison = await poisonedDocuments(sql);
  assert.equal(await queueMessages(sql), 1, "the premise: one statement, one packed message");

  await pass();
  const [first] = await sql`
    select count(*) filter (where embedding is not null)::int as embedded,
           count(*) filter (where embedding is null)::int as missing
      from documents`;
  assert.deepEqual({ ...first }, { embedded: 99, missing: 1 }, "99 rows in the first pass");
  assert.equal(inputs(), 99, "each good row embedded once");
  const queued = await sql`
    select message, read_ct, vt > now() + interval '60 seconds' as backing_off
      from pgmq.q_embedding_jobs`;
  assert.equal(queued.length, 1);
  assert.equal(Number(queued[0].message.id), poison, "the failing row goes on alone");
  assert.equal(queued[0].message.ids, undefined);
  assert.equal(queued[0].read_ct, 1, "one attempt, its own");
  assert.equal(queued[0].backing_off, true, "under its own backoff");

  // Its backoff elapsed, again and again: its attempts are counted alone.
  for (let attempt = 2; attempt <= MAX_ATTEMPTS; attempt++) {
    await sql`update pgmq.q_embedding_jobs set vt = now()`;
    await pass();
  }
  const dead = await sql`select message, read_ct from pgmq.a_embedding_jobs`;
  assert.equal(dead.length, 1, "dead-lettered alone");
  assert.equal(Number(dead[0].message.id), poison);
  assert.equal(dead[0].read_ct, MAX_ATTEMPTS);
  assert.equal(await queueMessages(sql), 0);
  const errors = await sql`
    select row_id, attempt, dead_lettered from util.embedding_errors order by id`;
  assert.deepEqual(
    errors.map((e) => [e.row_id, e.attempt, e.dead_lettered]),
    Array.from(
      { length: MAX_ATTEMPTS },
      (_, i) => [String(poison), i + 1, i + 1 === MAX_ATTEMPTS],
    ),
  );
  assert.equal(inputs(), 99, "no good row embedded twice");
  const [status] = await sql`select dead_lettered::int, queued::int from util.embedding_status`;
  assert.deepEqual({ ...status }, { dead_lettered: 1, queued: 0 });
}

Deno.test("I14: one failing row of a 100-row statement; the other 99 in the first pass (pull)", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI();
    try {
      const pass = async () => {
        const r = await runCli(["worker", "--once", "--batch-size", "100"], providerEnv(fake, url));
        assert.equal(r.code, 0, r.stderr);
      };
      await rowFate(sql, pass, () => fake.stats.inputs);
    } finally {
      await fake.close();
    }
  });
});

Deno.test("I14: one failing row of a 100-row statement; the other 99 in the first pass (push)", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      const pass = async () => {
        const [{ requests }] = await sql`select util.process_embeddings(100, 4, 10000) as requests`;
        assert.ok(requests > 0, "a call was made");
        await waitFor(async () => {
          const [{ n }] = await sql`select count(*)::int as n from util.embedding_requests`;
          return n === 0;
        }, { what: "the calls to finish" });
      };
      await rowFate(sql, pass, () => p.fake.stats.inputs);
    } finally {
      await p.stop();
    }
  });
});
