// Registration given bad input: util.enable_embeddings, disable_embeddings,
// reembed and guide-style triggers name a table, column or content function
// that cannot work. Each fails with a clear SQL error (message, and detail or
// hint where there is something to say) and leaves nothing half-created: no
// trigger, no util.embedding_targets row, no queued job.
import assert from "node:assert/strict";
import { type Sql, withTestDb } from "../../devtools/db.ts";
import { createDocuments } from "../../devtools/pipeline.ts";

interface Expected {
  message: RegExp;
  detail?: RegExp;
  hint?: RegExp;
  code?: string;
}

/** Runs `statement`, which must fail as `expected` says. */
async function assertFails(sql: Sql, what: string, statement: string, expected: Expected) {
  let error: { message?: string; detail?: string; hint?: string; code?: string } | undefined;
  try {
    await sql.unsafe(statement);
  } catch (err) {
    error = err as typeof error;
  }
  assert.ok(error, `${what}: succeeded`);
  assert.match(error.message ?? "", expected.message, `${what}: message: ${error.message}`);
  if (expected.detail) {
    assert.match(error.detail ?? "", expected.detail, `${what}: detail: ${error.detail}`);
  }
  if (expected.hint) assert.match(error.hint ?? "", expected.hint, `${what}: hint: ${error.hint}`);
  if (expected.code) assert.equal(error.code, expected.code, `${what}: SQLSTATE`);
}

/** What a registration leaves behind: triggers on the user's tables, targets, queued jobs. */
async function leftovers(sql: Sql) {
  const [row] = await sql`
    select (select coalesce(jsonb_agg(tgrelid::regclass::text || '.' || tgname order by tgname), '[]')
              from pg_trigger g join pg_class c on c.oid = g.tgrelid
             where not g.tgisinternal and c.relnamespace <> 'util'::regnamespace) as triggers,
           (select count(*)::int from util.embedding_targets) as targets,
           (select count(*)::int from pgmq.q_embedding_jobs) as queued`;
  return { ...row };
}

const NOTHING = { triggers: [], targets: 0, queued: 0 };

Deno.test("enable_embeddings: each impossible target fails clearly and creates nothing", async () => {
  await withTestDb(async (sql) => {
    await createDocuments(sql, { attach: false });
    await sql.unsafe(`
      insert into documents (title, content) values ('a', 'b'), ('c', 'd');
      create view documents_view as select * from documents;
      create materialized view documents_mat as select * from documents;
      alter table documents add column undeclared halfvec;
      alter table documents add column ${"e".repeat(60)} halfvec(16);
      create table no_key (title text, embedding halfvec(16));
      create function no_key_input(r no_key) returns text language sql as $$ select r.title $$;
      create table two_keys (a int, b int, title text, embedding halfvec(16), primary key (a, b));
      create function two_keys_input(r two_keys) returns text language sql as $$ select r.title $$;
      create function takes_text(t text) returns text language sql as $$ select t $$;
      create function two_args(d documents, x int) returns text language sql as $$ select d.title $$;
      create function returns_int(d documents) returns int language sql as $$ select 1 $$;
      create function returns_rows(d documents) returns setof text language sql
        as $$ select d.title union all select d.content $$;
      create function join_titles(acc text, d documents) returns text language sql
        as $$ select coalesce(acc, '') || d.title $$;
      create aggregate all_titles(documents) (sfunc = join_titles, stype = text);
      create procedure embed_proc(d documents) language sql as $$ select 1 $$;
    `).simple();
    const cases: [string, string, Expected][] = [
      ["no such table", `select util.enable_embeddings('public.nope', 'documents_input')`, {
        message: /relation "public.nope" does not exist/,
        code: "42P01",
      }],
      [
        "a dropped table's OID",
        `select util.enable_embeddings(999999999::oid::regclass, 'documents_input')`,
        { message: /relation with OID 999999999 does not exist/ },
      ],
      ["a view", `select util.enable_embeddings('documents_view', 'documents_input')`, {
        message: /documents_view is not a table/,
        detail: /It is a view/,
        hint: /ordinary or partitioned tables/,
      }],
      ["a materialized view", `select util.enable_embeddings('documents_mat', 'documents_input')`, {
        message: /documents_mat is not a table/,
        detail: /materialized view/,
      }],
      [
        "no such column",
        `select util.enable_embeddings('documents', 'documents_input', 'nope')`,
        {
          message: /column "nope" does not exist on public\.documents/,
          hint: /add column nope halfvec/,
        },
      ],
      [
        "a text column",
        `select util.enable_embeddings('documents', 'documents_input', 'title')`,
        {
          message: /column "title" of public\.documents has type text, expected vector or halfvec/,
        },
      ],
      [
        "other dimensions than the column's",
        `select util.enable_embeddings('documents', 'documents_input', dimensions => 1536)`,
        { message: /holds 16 dimensions, not 1536/, hint: /alter column embedding type halfvec/ },
      ],
      [
        "undeclared dimensions",
        `select util.enable_embeddings('documents', 'documents_input', 'undeclared')`,
        { message: /has no declared dimensions/, hint: /halfvec\(1536\)/ },
      ],
      [
        "zero dimensions",
        `select util.enable_embeddings('documents', 'documents_input', 'undeclared', dimensions => 0)`,
        { message: /dimensions must be a positive number, got 0/ },
      ],
      [
        "negative dimensions",
        `select util.enable_embeddings('documents', 'documents_input', 'undeclared', dimensions => -5)`,
        { message: /dimensions must be a positive number, got -5/ },
      ],
      [
        "a column name too long for the trigger names",
        `select util.enable_embeddings('documents', 'documents_input', '${"e".repeat(60)}')`,
        { message: /too long for the trigger names/, hint: /50 bytes at most/ },
      ],
      ["no primary key", `select util.enable_embeddings('no_key', 'no_key_input')`, {
        message: /public\.no_key needs a single-column primary key \(it has 0\)/,
        hint: /primary key/,
      }],
      ["a two-column primary key", `select util.enable_embeddings('two_keys', 'two_keys_input')`, {
        message: /public\.two_keys needs a single-column primary key \(it has 2\)/,
      }],
      ["no such function", `select util.enable_embeddings('documents', 'nope')`, {
        message: /content function nope\(public\.documents\) not found/,
        detail: /one argument, a row of the table/,
        hint: /create function nope\(r public\.documents\) returns text/,
      }],
      ["a function of text", `select util.enable_embeddings('documents', 'takes_text')`, {
        message: /content function takes_text\(public\.documents\) not found/,
      }],
      ["a function of two arguments", `select util.enable_embeddings('documents', 'two_args')`, {
        message: /content function two_args\(public\.documents\) not found/,
      }],
      ["a function returning int", `select util.enable_embeddings('documents', 'returns_int')`, {
        message: /content function public.returns_int must return text/,
        detail: /It returns integer/,
      }],
      ["a set-returning function", `select util.enable_embeddings('documents', 'returns_rows')`, {
        message: /must be a plain function returning one text value/,
        detail: /set-returning/,
      }],
      ["an aggregate", `select util.enable_embeddings('documents', 'all_titles')`, {
        message: /must be a plain function returning one text value/,
        detail: /an aggregate/,
      }],
      ["a procedure", `select util.enable_embeddings('documents', 'embed_proc')`, {
        message: /must be a plain function returning one text value/,
        detail: /a procedure/,
      }],
      [
        "an empty model",
        `select util.enable_embeddings('documents', 'documents_input', model => ' ')`,
        { message: /" " is not a model name/, hint: /text-embedding-3-small/ },
      ],
      [
        "SQL as the content function",
        `select util.enable_embeddings('documents', 'documents_input(r)); drop table documents; --')`,
        { message: /not found/ },
      ],
    ];
    for (const [what, statement, expected] of cases) {
      await assertFails(sql, what, statement, expected);
      assert.deepEqual(await leftovers(sql), NOTHING, `${what}: nothing left behind`);
    }
    // The same table, named right, attaches (so each failure above was its fault).
    const [{ n }] = await sql`select util.enable_embeddings('documents', 'documents_input') as n`;
    assert.equal(Number(n), 2);
  });
});

Deno.test("disable_embeddings and reembed: wrong targets fail clearly and change nothing", async () => {
  await withTestDb(async (sql) => {
    await createDocuments(sql);
    await sql.unsafe(`
      insert into documents (title, content) values ('a', 'b');
      create view documents_view as select * from documents;
      create table other (id int primary key, title text, embedding halfvec(16));
    `).simple();
    await sql`delete from pgmq.q_embedding_jobs`;
    const attached = await leftovers(sql);
    const [target] = await sql`select model, dimensions from util.embedding_targets`;
    const cases: [string, string, Expected][] = [
      ["disable: no such table", `select util.disable_embeddings('nope')`, {
        message: /relation "nope" does not exist/,
        code: "42P01",
      }],
      ["disable: a view", `select util.disable_embeddings('documents_view')`, {
        message: /documents_view is not a table/,
        hint: /embedding_status/,
      }],
      ["disable: a table not attached", `select util.disable_embeddings('other')`, {
        message: /other \(column embedding\) is not attached/,
        hint: /embedding_status/,
      }],
      ["disable: another column", `select util.disable_embeddings('documents', 'title')`, {
        message: /documents \(column title\) is not attached/,
      }],
      ["reembed: no such table", `select util.reembed('nope')`, {
        message: /relation "nope" does not exist/,
      }],
      ["reembed: a view", `select util.reembed('documents_view')`, {
        message: /documents_view \(column embedding\) is not attached/,
        hint: /enable_embeddings/,
      }],
      ["reembed: a table not attached", `select util.reembed('other')`, {
        message: /not attached/,
      }],
      [
        "reembed: dimensions no vector can have",
        `select util.reembed('documents', dimensions => 0)`,
        { message: /dimensions must be between 1 and 16000, got 0/, code: "AE003" },
      ],
      ["reembed: an empty model", `select util.reembed('documents', model => '')`, {
        message: /"" is not a model name/,
      }],
    ];
    for (const [what, statement, expected] of cases) {
      await assertFails(sql, what, statement, expected);
      assert.deepEqual(await leftovers(sql), attached, `${what}: the attachment is untouched`);
      const [now] = await sql`select model, dimensions from util.embedding_targets`;
      assert.deepEqual({ ...now }, { ...target }, `${what}: the target is untouched`);
    }
    await sql`select util.disable_embeddings('documents')`;
    assert.deepEqual(await leftovers(sql), NOTHING, "disabled for real");
  });
});

Deno.test("guide-style triggers: misconfigured ones fail the write clearly; none swallows rows or enqueues junk", async () => {
  await withTestDb(async (sql) => {
    await createDocuments(sql, { attach: false });
    const insert = `insert into documents (title, content) values ('t', 'c')`;
    const trigger = (spec: string) =>
      sql.unsafe(
        `drop trigger if exists guide on documents; create trigger guide ${spec}`,
      ).simple();
    const failing: [string, string, string, Expected][] = [
      [
        "no such content function",
        `after insert on documents for each row execute function util.queue_embeddings('nope', 'embedding')`,
        insert,
        {
          message: /content function nope\(public\.documents\) not found/,
          hint: /create function nope/,
        },
      ],
      [
        "a text column as embedding column",
        `after insert on documents for each row execute function util.queue_embeddings('documents_input', 'title')`,
        insert,
        { message: /column "title" of (public\.)?documents has type text/ },
      ],
      [
        "one argument",
        `after insert on documents for each row execute function util.queue_embeddings('documents_input')`,
        insert,
        {
          message: /needs two arguments, got 1/,
          hint: /queue_embeddings\('embedding_input', 'embedding'\)/,
        },
      ],
      [
        "a BEFORE trigger, whose NULL result would cancel every insert",
        `before insert on documents for each row execute function util.queue_embeddings('documents_input', 'embedding')`,
        insert,
        { message: /must be an AFTER trigger, not BEFORE/, detail: /cancel the insert/ },
      ],
      [
        "clear_column without a column",
        `before update on documents for each row execute function util.clear_column()`,
        `update documents set title = 'changed'`,
        { message: /clear_column needs the embedding column/, hint: /clear_column\('embedding'\)/ },
      ],
      [
        "clear_column of no such column",
        `before update on documents for each row execute function util.clear_column('embeddings')`,
        `update documents set title = 'changed again'`,
        { message: /clear_column\(embeddings\): public\.documents has no such column/ },
      ],
    ];
    for (const [what, spec, write, expected] of failing) {
      await sql`drop trigger if exists guide on documents`;
      await sql.unsafe(insert); // a row for the update cases, without any trigger
      await sql`delete from pgmq.q_embedding_jobs`;
      await trigger(spec);
      const [{ before }] = await sql`select count(*)::int as before from documents`;
      await assertFails(sql, what, write, expected);
      const [{ after }] = await sql`select count(*)::int as after from documents`;
      assert.equal(after, before, `${what}: the failed write changed nothing`);
      const left = await leftovers(sql);
      assert.deepEqual({ ...left, triggers: [] }, NOTHING, `${what}: no target, no job`);
    }

    // DELETE (row or statement level) and TRUNCATE triggers: nothing to embed, nothing to fail.
    await sql`drop trigger if exists guide on documents`;
    await sql.unsafe(`
      create trigger guide_row after delete on documents
        for each row execute function util.queue_embeddings('documents_input', 'embedding');
      create trigger guide_statement after delete on documents
        for each statement execute function util.queue_embeddings('documents_input', 'embedding');
      create trigger guide_truncate after truncate on documents
        for each statement execute function util.queue_embeddings('documents_input', 'embedding');
    `).simple();
    await sql`delete from documents where id = (select min(id) from documents)`;
    await sql`truncate documents`;
    const [{ queued }] = await sql`select count(*)::int as queued from pgmq.q_embedding_jobs`;
    assert.equal(queued, 0, "no job for a deleted row");
  });
});
