// A content function is named the way SQL names functions: quoted
// ('"Note Text"'), schema-qualified ('public."Note Text"'), with or without
// its argument list, as regprocedure reads it; and a plain name as the guide
// writes it. Whatever the spelling, util.enable_embeddings (and a guide-style
// trigger) attach the function it names, and the pipeline embeds every row
// with that function's text; a spelling that names no function taking a row
// of the table fails clearly and attaches nothing.
import assert from "node:assert/strict";
import { type Sql, withTestDb } from "../../devtools/db.ts";
import { startPipeline, TEST_DIMENSIONS } from "../../devtools/pipeline.ts";
import { embeddingProblem } from "../_support/rows.ts";
import { settle } from "../_support/settle.ts";

/** public.notes with three rows, and content functions whose names need quoting (and one that does not). */
async function createNotes(sql: Sql): Promise<void> {
  await sql.unsafe(`
    create table public.notes (id bigint primary key, title text not null, body text not null,
                               embedding halfvec(${TEST_DIMENSIONS}));
    insert into public.notes values (1, 'one', 'the first note'), (2, 'two', 'the second note'),
                                    (3, 'three', 'the third note');
    create function public."Note Text"(n public.notes) returns text language sql immutable
      as $$ select 'spaced: ' || n.title || ' ' || n.body $$;
    create schema "Odd Schema";
    create function "Odd Schema"."Text.Of(Note)"(n public.notes) returns text language sql immutable
      as $$ select 'odd: ' || n.title || ' ' || n.body $$;
    create function public.note_words(n public.notes) returns text language sql immutable
      as $$ select 'words: ' || n.title || ' ' || n.body $$;
    create function public."Two Args"(n public.notes, x int) returns text language sql immutable
      as $$ select n.title $$;
  `).simple();
}

/** Why some note does not hold the embedding of `fn`'s text for it (fn: a quoted, qualified name). */
async function notEmbeddedWith(sql: Sql, fn: string): Promise<string[]> {
  const rows = await sql.unsafe(
    `select n.id, ${fn}(n) as text, n.embedding::text from public.notes n order by n.id`,
  );
  return rows.flatMap((r) => {
    const problem = embeddingProblem(r.embedding, r.text);
    return problem ? [`note ${r.id}: ${problem}`] : [];
  });
}

Deno.test("content function names: every spelling SQL reads attaches the function it names, and its rows are embedded with its text", async () => {
  await withTestDb(async (sql, url) => {
    await createNotes(sql);
    const p = await startPipeline(sql, url);
    try {
      // [spelling, the function it names (schema, name), how the test calls it]
      const spellings: [string, [string, string], string][] = [
        ['"Note Text"', ["public", "Note Text"], 'public."Note Text"'],
        [
          '"Odd Schema"."Text.Of(Note)"',
          ["Odd Schema", "Text.Of(Note)"],
          '"Odd Schema"."Text.Of(Note)"',
        ],
        ['public."Note Text"', ["public", "Note Text"], 'public."Note Text"'],
        ["NOTE_WORDS", ["public", "note_words"], "public.note_words"],
        ['"public"."Note Text"(notes)', ["public", "Note Text"], 'public."Note Text"'],
        [
          '"Odd Schema"."Text.Of(Note)"(public.notes)',
          ["Odd Schema", "Text.Of(Note)"],
          '"Odd Schema"."Text.Of(Note)"',
        ],
        ["Note Text", ["public", "Note Text"], 'public."Note Text"'],
        ["public.note_words(public.notes)", ["public", "note_words"], "public.note_words"],
      ];
      let id = 10;
      for (const [spelling, [schema, name], call] of spellings) {
        await sql`select util.enable_embeddings('public.notes', ${spelling})`;
        const [target] = await sql`
          select content_function, content_function_schema, content_function_name
            from util.embedding_targets where table_oid = 'public.notes'::regclass`;
        assert.deepEqual(
          [target.content_function, target.content_function_schema, target.content_function_name],
          [spelling, schema, name],
          spelling,
        );
        // A new row takes the trigger's path; the others the backfill's or the recheck's.
        await sql`insert into public.notes values (${++id}, ${"row " + id}, 'added since')`;
        await settle(sql);
        assert.deepEqual(await notEmbeddedWith(sql, call), [], spelling);
        const [status] = await sql`
          select missing::int, stale::int, dead_lettered::int from util.embedding_status_exact()`;
        assert.deepEqual({ ...status }, { missing: 0, stale: 0, dead_lettered: 0 }, spelling);
      }
      const [{ errors }] = await sql`select count(*)::int as errors from util.embedding_errors`;
      assert.equal(errors, 0);
    } finally {
      await p.stop();
    }
  });
});

Deno.test("content function names: a guide-style trigger may quote the function too", async () => {
  await withTestDb(async (sql, url) => {
    await createNotes(sql);
    await sql.unsafe(`
      create trigger embed_notes_insert after insert on public.notes for each row
        execute function util.queue_embeddings('"Note Text"', 'embedding');
      insert into public.notes values (4, 'four', 'written after the trigger');
    `).simple();
    const [target] = await sql`
      select content_function_schema, content_function_name from util.embedding_targets`;
    assert.deepEqual({ ...target }, {
      content_function_schema: "public",
      content_function_name: "Note Text",
    });
    const p = await startPipeline(sql, url);
    try {
      await settle(sql);
      const [note] = await sql`
        select public."Note Text"(n) as text, embedding::text from notes n where id = 4`;
      assert.equal(embeddingProblem(note.embedding, note.text), null);
    } finally {
      await p.stop();
    }
  });
});

Deno.test("content function names: a spelling that names no function of a row fails clearly and attaches nothing", async () => {
  await withTestDb(async (sql) => {
    await createNotes(sql);
    const cases: [string, RegExp, RegExp][] = [
      ['"Note Text"(text)', /content function "Note Text"\(text\) not found/, /./],
      ['"note text"', /content function "note text"\(public\.notes\) not found/, /./],
      [
        '"Two Args"(notes, int)',
        /public\.Two Args does not take a row of public\.notes/,
        /n public\.notes, x integer/,
      ],
      ['public."unterminated', /not found/, /./],
      ["a.b.c.d", /not found/, /./],
      ['"Note Text"(notes); drop table notes; --', /not found/, /./],
    ];
    for (const [spelling, message, detail] of cases) {
      let error: { message?: string; detail?: string; code?: string } | undefined;
      try {
        await sql`select util.enable_embeddings('public.notes', ${spelling})`;
      } catch (err) {
        error = err as typeof error;
      }
      assert.ok(error, `${spelling}: attached`);
      assert.equal(error.code, "AE003", `${spelling}: ${error.message}`);
      assert.match(error.message ?? "", message, spelling);
      assert.match(error.detail ?? "", detail, spelling);
    }
    const [left] = await sql`
      select (select count(*)::int from util.embedding_targets) as targets,
             (select count(*)::int from pg_trigger where tgrelid = 'public.notes'::regclass) as triggers,
             to_regclass('public.notes') is not null as notes`;
    assert.deepEqual({ ...left }, { targets: 0, triggers: 0, notes: true });
  });
});
