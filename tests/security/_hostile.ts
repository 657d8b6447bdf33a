// Shared fixtures of the security suite: attached tables next to canaries
// (a table, a schema and content functions) that show any side effect a
// forged queue message could cause, and the forged messages themselves.
import assert from "node:assert/strict";
import type { Sql } from "../../devtools/db.ts";
import { createDocuments, TEST_DIMENSIONS } from "../../devtools/pipeline.ts";
import { embeddingProblem } from "../_support/rows.ts";

/** Distinctive strings that must never leave the database through logs or responses. */
export const CANARY_TEXT = "CANARYTEXT_3f9a1c";
export const CANARY_KEY = "sk-CANARYKEY-d41d8cd98f00b204e980";
export const CANARY_BEARER = "CANARYBEARER-e3b0c44298fc1c14";

/** A message as the triggers enqueue it for public.documents row `id`. */
const BASE = {
  id: 1,
  schema: "public",
  table: "documents",
  contentFunction: "documents_input",
  embeddingColumn: "embedding",
};

/**
 * Attached targets and canaries:
 * - public.documents (bigint key), public.priced (numeric key), public.by_uuid, attached;
 * - public.canary_table, not attached, with a row that must never get an embedding;
 * - content functions public.canary_fn(documents), public.canary_fn(canary_table)
 *   and evil.documents_input(evil.documents) that log a call to public.canary_log;
 * - evil.documents: a table with the same name as an attached one, in another schema.
 */
export async function createHostileFixture(sql: Sql): Promise<void> {
  await createDocuments(sql);
  await sql.unsafe(`
    create table public.canary_log (note text not null, at timestamptz not null default now());
    create table public.canary_table (id bigint primary key, body text, embedding halfvec(${TEST_DIMENSIONS}));
    insert into public.canary_table values (1, 'canary row: must stay unembedded');
    create function public.canary_fn(d public.documents) returns text language plpgsql volatile as $$
    begin
      insert into public.canary_log (note) values ('canary_fn(documents) ran');
      return 'canary';
    end $$;
    create function public.canary_fn(d public.canary_table) returns text language plpgsql volatile as $$
    begin
      insert into public.canary_log (note) values ('canary_fn(canary_table) ran');
      return d.body;
    end $$;
    create schema evil;
    create table evil.documents (id bigint primary key, title text, content text,
                                 embedding halfvec(${TEST_DIMENSIONS}));
    insert into evil.documents values (1, 'evil', 'must stay unembedded');
    create function evil.documents_input(d evil.documents) returns text language plpgsql volatile as $$
    begin
      insert into public.canary_log (note) values ('evil.documents_input ran');
      return d.title;
    end $$;
    create table public.priced (id numeric primary key, body text not null,
                                embedding halfvec(${TEST_DIMENSIONS}));
    create function public.priced_input(p public.priced) returns text language sql immutable
      as $$ select 'priced: ' || p.body $$;
    create table public.by_uuid (id uuid primary key default gen_random_uuid(), body text not null,
                                 embedding halfvec(${TEST_DIMENSIONS}));
    create function public.by_uuid_input(u public.by_uuid) returns text language sql immutable
      as $$ select 'uuid: ' || u.body $$;
  `).simple();
  for (const table of ["priced", "by_uuid"]) {
    await sql`select util.enable_embeddings(${table}, ${
      table + "_input"
    }, model => 'text-embedding-3-small')`;
  }
}

/**
 * Forged messages as raw JSON (some numbers do not survive a JS round trip),
 * each with what it tries. `realJobId` is the queue id of a genuine message,
 * which one forgery claims as its own.
 */
export function forgedMessages(realJobId: number): { what: string; json: string }[] {
  const forge = (what: string, patch: Record<string, unknown>) => ({
    what,
    json: JSON.stringify({ ...BASE, ...patch }),
  });
  const raw = (what: string, json: string) => ({ what, json });
  return [
    // another schema, table, content function or column than any registration names
    forge("same table name in another schema", { schema: "evil" }),
    forge("unattached table with its own function", {
      table: "canary_table",
      contentFunction: "canary_fn",
    }),
    forge("unattached table, the attached function", { table: "canary_table" }),
    forge("another content function", { contentFunction: "canary_fn" }),
    forge("a system function as content function", { contentFunction: "pg_read_file" }),
    forge("a pipeline function as content function", { contentFunction: "util._settle_jobs" }),
    forge("the function under another spelling", { contentFunction: "public.documents_input" }),
    forge("another schema's function", { contentFunction: "evil.documents_input" }),
    forge("a text column", { embeddingColumn: "title" }),
    forge("the key column", { embeddingColumn: "id" }),
    // SQL and quoting tricks in identifiers
    forge("SQL in the table name", { table: 'documents"; drop table public.canary_table; --' }),
    forge("SQL in the schema name", { schema: "public'; drop table public.canary_table; --" }),
    forge("SQL in the content function", {
      contentFunction: "documents_input(r); insert into public.canary_log values ('sql'); --",
    }),
    forge("SQL in the column name", { embeddingColumn: 'embedding" = null; --' }),
    forge("a qualified name as table", { table: "public.documents" }),
    forge("an empty schema", { schema: "", table: "public.documents" }),
    forge("a 64-character table name", { table: "d".repeat(64) }),
    forge("a 10,000-character table name", { table: "d".repeat(10_000) }),
    forge("a 100,000-character content function", { contentFunction: "f".repeat(100_000) }),
    // ids that are not keys of the table
    forge("SQL as id", { id: "1; drop table public.canary_table" }),
    forge("text id for a bigint key", { id: "abc" }),
    raw(
      "2^70 as a JSON number",
      JSON.stringify(BASE).replace('"id":1', '"id":1180591620717411303424'),
    ),
    forge("23-digit id", { id: "99999999999999999999999" }),
    forge("id below the bigint range", { id: "-9223372036854775809" }),
    raw("1e308 as id", JSON.stringify(BASE).replace('"id":1', '"id":1e308')),
    raw("-1e308 as id", JSON.stringify(BASE).replace('"id":1', '"id":-1e308')),
    forge("fractional id", { id: 1.5 }),
    forge("empty id", { id: "" }),
    forge("1001-character id", { id: "7".repeat(1001) }),
    // packed messages (ids), refused whole
    forge("packed: no ids", { id: undefined, ids: [] }),
    forge("packed: ids not an array", { id: undefined, ids: "1,2" }),
    forge("packed: both id and ids", { ids: [2] }),
    forge("packed: another schema", { id: undefined, ids: [1, 2], schema: "evil" }),
    forge("packed: another content function", {
      id: undefined,
      ids: [1],
      contentFunction: "canary_fn",
    }),
    // wrong JSON types
    forge("array id", { id: [1] }),
    forge("object id", { id: { id: 1 } }),
    forge("null id", { id: null }),
    forge("boolean id", { id: true }),
    forge("number schema", { schema: 5 }),
    forge("array table", { table: ["documents"] }),
    forge("object content function", { contentFunction: { name: "documents_input" } }),
    forge("null column", { embeddingColumn: null }),
    // missing fields
    forge("no id", { id: undefined }),
    forge("no schema", { schema: undefined }),
    forge("no table", { table: undefined }),
    forge("no content function", { contentFunction: undefined }),
    forge("no column", { embeddingColumn: undefined }),
    // not an object at all
    raw("an array", "[1, 2]"),
    raw("an array of a job", `[${JSON.stringify(BASE)}]`),
    raw("a string", '"documents"'),
    raw("a number", "42"),
    raw("JSON null", "null"),
    raw("a boolean", "true"),
    raw("an empty object", "{}"),
    // a forgery that claims a genuine job's queue id
    forge("claims another job's id", { jobId: realJobId, contentFunction: "canary_fn" }),
    // wrong-type ids for attached tables with numeric and uuid keys
    forge("text id for a numeric key", {
      table: "priced",
      contentFunction: "priced_input",
      id: "not a number",
    }),
    forge("text id for a uuid key", {
      table: "by_uuid",
      contentFunction: "by_uuid_input",
      id: "zz",
    }),
    forge("number id for a uuid key", {
      table: "by_uuid",
      contentFunction: "by_uuid_input",
      id: 5,
    }),
  ];
}

/**
 * Enqueues a scenario: one genuine documents row, every forged message (and a
 * SQL NULL message), then more genuine rows in both attached tables, so that
 * forgeries sit before, between and after genuine jobs. Returns the forged
 * messages' queue ids with what each tries.
 */
export async function enqueueHostileScenario(sql: Sql): Promise<Map<number, string>> {
  const [{ id: first }] = await sql`
    insert into documents (title, content) values ('genuine 1', 'first genuine row') returning id`;
  const [{ msg_id: realJobId }] = await sql`
    select msg_id from pgmq.q_embedding_jobs where message ->> 'id' = ${String(first)}`;
  const forged = forgedMessages(Number(realJobId));
  const ids = await sql`
    select pgmq.send_batch('embedding_jobs', array(
             select e from jsonb_array_elements(${`[${
    forged.map((f) => f.json).join(",")
  }]`}::text::jsonb)
                    with ordinality x(e, n)
              order by n)) as msg_id`;
  assert.equal(ids.length, forged.length);
  const byId = new Map(ids.map((r, i) => [Number(r.msg_id), forged[i].what]));
  const [{ msg_id: nullId }] = await sql`select pgmq.send('embedding_jobs', null::jsonb) as msg_id`;
  byId.set(Number(nullId), "a SQL NULL message");
  await sql`insert into documents (title, content)
            select 'genuine ' || g, 'genuine row ' || g from generate_series(2, 4) g`;
  await sql`insert into priced (id, body) values (1.5, 'one and a half'), (2, 'two')`;
  await sql`insert into by_uuid (body) values ('a uuid row')`;
  return byId;
}

/**
 * After the queue drained: every genuine row embedded from its own text,
 * every forgery refused, recorded and dead-lettered, and no canary touched.
 */
export async function assertHostileOutcome(
  sql: Sql,
  forged: Map<number, string>,
  providerTexts: string[],
): Promise<void> {
  const genuine = await sql`
    select 'documents' as t, documents_input(d) as text, embedding::text as embedding from documents d
    union all
    select 'priced', priced_input(p), embedding::text from priced p
    union all
    select 'by_uuid', by_uuid_input(u), embedding::text from by_uuid u`;
  assert.equal(genuine.length, 7);
  for (const row of genuine) {
    assert.equal(embeddingProblem(row.embedding, row.text), null, `${row.t}: "${row.text}"`);
  }
  const [{ queued }] = await sql`select count(*)::int as queued from pgmq.q_embedding_jobs`;
  assert.equal(queued, 0, "the queue drained");

  const errors = await sql`
    select job_id, retryable, dead_lettered, error from util.embedding_errors order by id`;
  const byJob = new Map<number, (typeof errors)[number]>();
  for (const e of errors) {
    const what = forged.get(Number(e.job_id));
    assert.ok(what, `error for a genuine job ${e.job_id}: ${e.error}`);
    assert.ok(!byJob.has(Number(e.job_id)), `${what}: refused once, not retried`);
    byJob.set(Number(e.job_id), e);
    assert.match(e.error, /^refused: /, `${what}: ${e.error}`);
    assert.equal(e.retryable, false, what);
    assert.equal(e.dead_lettered, true, what);
    assert.ok(e.error.length < 400, `${what}: a short message, got ${e.error.length} chars`);
  }
  for (const [jobId, what] of forged) assert.ok(byJob.has(jobId), `${what}: no error recorded`);
  const archived = (await sql`select msg_id from pgmq.a_embedding_jobs order by msg_id`)
    .map((r) => Number(r.msg_id));
  assert.deepEqual(archived, [...forged.keys()].sort((a, b) => a - b), "exactly the forgeries");

  const [canary] = await sql`
    select (select count(*)::int from public.canary_log) as calls,
           (select embedding from public.canary_table where id = 1) as canary_embedding,
           (select embedding from evil.documents where id = 1) as evil_embedding,
           to_regclass('public.canary_table') is not null as canary_present,
           to_regclass('public.documents') is not null as documents_present,
           (select count(*)::int from util.embedding_targets) as targets`;
  assert.deepEqual({ ...canary }, {
    calls: 0,
    canary_embedding: null,
    evil_embedding: null,
    canary_present: true,
    documents_present: true,
    targets: 3,
  });
  const genuineTexts = new Set(genuine.map((r) => r.text));
  for (const text of providerTexts) {
    assert.ok(genuineTexts.has(text), `the provider saw "${text.slice(0, 80)}"`);
  }
}
