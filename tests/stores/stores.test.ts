// One capability, every store: a model change, a change of the content
// function and a search, each run by one test body against a whole-row
// target (the vectors in the row's own column) and a chunked target (the
// vectors in its side table of chunks). What a user sees is the same: the
// same calls, the same status, the same guarantees (I7, I10, I13).
import assert from "node:assert/strict";
import { type Sql, withTestDb } from "../../devtools/db.ts";
import { runCli } from "../../devtools/cli.ts";
import {
  type Pipeline,
  startPipeline,
  TEST_DIMENSIONS,
  TEST_MODEL,
} from "../../devtools/pipeline.ts";
import { embeddingProblem } from "../_support/rows.ts";
import { invokeSearch, startSearchStack } from "../_support/search.ts";
import { settle } from "../_support/settle.ts";

/** A kind of store, as a test attaches and reads it. */
interface Store {
  name: string;
  /** The target's name in util.* calls and in util.embedding_status. */
  target: string;
  /** Attaches public.notes (see createNotes) in this store, with vectors of `dimensions`. */
  attach(sql: Sql, dimensions: number): Promise<void>;
  /** Each vector the store holds: its row, the text it is of, the vector. */
  vectors(sql: Sql): Promise<{ id: string; text: string; embedding: string | null }[]>;
  /** The table and column that hold the vectors, by the user's names (kept through a model change). */
  holder: [table: string, column: string];
}

const STORES: Store[] = [
  {
    name: "whole-row (the row's own column)",
    target: "embedding",
    holder: ["public.notes", "embedding"],
    attach: async (sql) => {
      await sql`select util.enable_embeddings('public.notes', 'note_text', model => ${TEST_MODEL})`;
    },
    vectors: (sql) =>
      sql<{ id: string; text: string; embedding: string | null }[]>`
        select id::text, note_text(n) as text, embedding::text from notes n order by id`,
  },
  {
    name: "chunked (its side table of chunks)",
    target: "note_chunks",
    holder: ["public.note_chunks", "embedding"],
    attach: async (sql, dimensions) => {
      // splitter none: a row's whole text is its one chunk.
      await sql`select util.enable_embeddings('public.notes', 'note_text',
                  destination => 'public.note_chunks', model => ${TEST_MODEL},
                  dimensions => ${dimensions}, splitter => 'none')`;
    },
    vectors: (sql) =>
      sql<{ id: string; text: string; embedding: string | null }[]>`
        select n.id::text, c.chunk as text, c.embedding::text
          from notes n left join note_chunks c on c.source_id = n.id order by n.id, c.chunk_seq`,
  },
];

const NOTES = [
  "Rotate the bearer secret of the embed function in Vault",
  "Raise ef_search to trade latency for recall of nearest neighbours",
  "Providers bill every input token once",
  "Chunks of long documents keep their heading path",
  "A private note about rotating the bearer secret every night",
];

/** public.notes (id, title, body, public, embedding halfvec), readable by anon where public, with 5 rows. */
async function createNotes(sql: Sql, dimensions: number): Promise<void> {
  await sql.unsafe(`
    create table public.notes (
      id bigint primary key,
      title text not null,
      body text not null,
      public boolean not null default true,
      embedding halfvec(${dimensions})
    );
    create function public.note_text(n public.notes) returns text language sql immutable
      as $$ select n.title || ': ' || n.body $$;
    alter table public.notes enable row level security;
    create policy public_notes on public.notes for select to anon using (public);
    grant select on public.notes to anon, authenticated, service_role;
  `).simple();
  for (const [i, body] of NOTES.entries()) {
    await sql`insert into notes (id, title, body, public)
              values (${i + 1}, ${"note " + (i + 1)}, ${body}, ${i < 4})`;
  }
}

/** Why the store does not hold, for every note, the vector of exactly its current text. */
async function problems(sql: Sql, store: Store, dimensions: number): Promise<string[]> {
  const current = new Map(
    (await sql`select id::text, note_text(n) as text from notes n`).map((r) => [r.id, r.text]),
  );
  const found: string[] = [];
  const seen = new Set<string>();
  for (const v of await store.vectors(sql)) {
    seen.add(v.id);
    if (v.text !== current.get(v.id)) found.push(`${v.id}: a vector of other text`);
    const problem = embeddingProblem(v.embedding, current.get(v.id)!, dimensions);
    if (problem) found.push(`${v.id}: ${problem}`);
  }
  for (const id of current.keys()) if (!seen.has(id)) found.push(`${id}: no vector`);
  return found;
}

async function status(sql: Sql, store: Store) {
  const [row] = await sql`
    select model, dimensions, total_rows::int, embedded::int, missing::int, stale::int,
           next_model, next_dimensions, content_changed_at
      from util.embedding_status_exact() where table_name = 'notes' and embedding_column = ${store.target}`;
  return row;
}

/** What a model change may leave behind: shadow columns, tables, indexes and targets. */
async function leftovers(sql: Sql): Promise<string[]> {
  const rows = await sql<{ what: string }[]>`
    select 'column ' || attname as what from pg_attribute
     where attrelid = 'public.notes'::regclass and attname like '\\_autoembed%' and not attisdropped
    union all
    select 'relation ' || relname from pg_class
     where relnamespace = 'public'::regnamespace and relname like '\\_autoembed%'
    union all
    select 'target ' || embedding_column from util.embedding_targets
     where shadow_of is not null or retired_at is not null`;
  return rows.map((r) => r.what).sort();
}

/** A test database with public.notes attached in `store` and embedded, and its running pipeline. */
async function withNotes(
  store: Store,
  fn: (sql: Sql, pipeline: Pipeline, url: string) => Promise<void>,
): Promise<void> {
  await withTestDb(async (sql, url) => {
    await createNotes(sql, TEST_DIMENSIONS);
    await store.attach(sql, TEST_DIMENSIONS);
    const pipeline = await startPipeline(sql, url);
    try {
      await settle(sql);
      await fn(sql, pipeline, url);
    } finally {
      await pipeline.stop();
    }
  });
}

for (const store of STORES) {
  Deno.test(`stores I7: a model change is built beside the live vectors and switched whole: ${store.name}`, async () => {
    await withNotes(store, async (sql, p) => {
      assert.deepEqual(await problems(sql, store, TEST_DIMENSIONS), []);

      const [{ n }] = await sql`select util.reembed('public.notes', ${store.target},
                                   model => 'text-embedding-3-large', dimensions => 32) as n`;
      assert.equal(Number(n), NOTES.length, "every row is queued for the new model");
      const during = await status(sql, store);
      assert.deepEqual(
        [during.model, during.next_model, during.next_dimensions],
        [TEST_MODEL, "text-embedding-3-large", 32],
      );
      assert.deepEqual(
        await problems(sql, store, TEST_DIMENSIONS),
        [],
        "until the switch the live store holds the old model's vectors",
      );

      await settle(sql);
      const after = await status(sql, store);
      assert.deepEqual(
        [after.model, after.dimensions, after.next_model, after.embedded, after.stale],
        ["text-embedding-3-large", 32, null, NOTES.length, 0],
      );
      assert.deepEqual(
        await problems(sql, store, 32),
        [],
        "the new model's vectors, all of them",
      );
      assert.deepEqual(await leftovers(sql), [], "nothing of the change is left");
      const [{ type }] = await sql`
          select format_type(atttypid, atttypmod) as type from pg_attribute
           where attrelid = ${store.holder[0]}::regclass and attname = ${store.holder[1]}
             and not attisdropped`;
      assert.equal(type, "halfvec(32)", "the user's names hold the new model's vectors");

      // A change cancelled halfway leaves the live store as it was.
      await sql`select util.reembed('public.notes', ${store.target}, model => ${TEST_MODEL},
                                      dimensions => ${TEST_DIMENSIONS})`;
      const [{ cancelled }] = await sql`
          select util.cancel_reembed('public.notes', ${store.target}) as cancelled`;
      assert.equal(cancelled, true);
      assert.deepEqual(await leftovers(sql), []);
      assert.equal((await status(sql, store)).next_model, null);
      await settle(sql);
      assert.deepEqual(await problems(sql, store, 32), []);
      assert.ok(p.fake.stats.requests > 0);
    });
  });

  Deno.test(`stores I10: a new content function re-embeds exactly the rows whose text changed: ${store.name}`, async () => {
    await withNotes(store, async (sql, p) => {
      const before = p.fake.stats.inputs;
      assert.equal((await status(sql, store)).content_changed_at, null);

      // Rows 1 and 2 get other text; the rest keep theirs.
      await sql.unsafe(`
          create or replace function public.note_text(n public.notes) returns text language sql immutable
            as $$ select case when n.id <= 2 then n.title || ' (revised): ' || n.body
                              else n.title || ': ' || n.body end $$`);
      assert.equal((await status(sql, store)).stale, 2, "status sees the two changed rows stale");
      await settle(sql);

      assert.deepEqual(await problems(sql, store, TEST_DIMENSIONS), []);
      assert.equal(p.fake.stats.inputs - before, 2, "only the two changed texts cost inputs");
      const after = await status(sql, store);
      assert.deepEqual(
        [after.embedded, after.missing, after.stale],
        [NOTES.length, 0, 0],
      );
      assert.ok(after.content_changed_at !== null, "status says when the function changed");
    });
  });

  Deno.test(`stores: rows without text show as empty in status and the CLI, never as missing: ${store.name}`, async () => {
    await withNotes(store, async (sql, _p, url) => {
      const counts = async () => {
        const [row] = await sql`
          select total_rows::int, embedded::int, missing::int, stale::int, empty::int,
                 dead_lettered::int
            from util.embedding_status_exact() where table_name = 'notes' and embedding_column = ${store.target}`;
        return { ...row };
      };
      // Premise: every note has text and is embedded.
      assert.deepEqual(await counts(), {
        total_rows: 5,
        embedded: 5,
        missing: 0,
        stale: 0,
        empty: 0,
        dead_lettered: 0,
      });
      // Notes titled 'blank' are their body alone, and 'null' ones have no text at all.
      await sql.unsafe(`
        create or replace function public.note_text(n public.notes) returns text language sql immutable
          as $$ select case n.title when 'blank' then n.body when 'null' then null
                                    else n.title || ': ' || n.body end $$`);
      const blanks = ["", "   ", "\t\n\r ", "\u00a0\u3000\ufeff\u2028"];
      for (const [i, body] of blanks.entries()) {
        await sql`insert into notes (id, title, body) values (${10 + i}, 'blank', ${body})`;
      }
      await sql`insert into notes (id, title, body) values
                  (20, 'null', 'a body the content function ignores'),
                  (21, 'blank', ' words at last ')`;
      // Note 1 loses its text: its vector is of text it no longer has.
      await sql`update notes set title = 'blank', body = ' ' where id = 1`;
      assert.deepEqual(await counts(), {
        total_rows: 11,
        embedded: 5,
        missing: 1,
        stale: 1,
        empty: 5,
        dead_lettered: 0,
      });

      await settle(sql);
      // Note 1's vector went with its text; the rest without text need none.
      assert.deepEqual(await counts(), {
        total_rows: 11,
        embedded: 5,
        missing: 0,
        stale: 0,
        empty: 6,
        dead_lettered: 0,
      });

      let r = await runCli(["status", "-d", url, "--json"]);
      assert.equal(r.code, 0, r.stderr);
      const row = JSON.parse(r.stdout).find((s: { column: string }) => s.column === store.target);
      assert.deepEqual([row.rows, row.embedded, row.missing, row.empty].map(Number), [11, 5, 0, 6]);
      r = await runCli(["status", "-d", url]);
      assert.equal(r.code, 0, r.stderr);
      const [header, , line] = r.stdout.split("\n");
      const cells = (text: string) => text.trim().split(/\s+/);
      assert.equal(cells(line)[cells(header).indexOf("empty")], "6", r.stdout);
    });
  });

  Deno.test(`stores I13: search by text finds the nearest rows as the caller: ${store.name}`, async () => {
    await withTestDb(async (sql, url) => {
      // Wider vectors: the lexical fake provider ranks words better.
      const dimensions = TEST_DIMENSIONS * 4;
      await createNotes(sql, dimensions);
      await store.attach(sql, dimensions);
      const p = await startPipeline(sql, url, { vectors: "lexical" });
      try {
        await settle(sql);
      } finally {
        await p.stop();
      }
      const stack = await startSearchStack(url);
      try {
        const everything = { match_count: 10, match_threshold: -1 };
        for (const mode of ["vector", "hybrid"]) {
          const res = await invokeSearch(stack.client(), {
            table: "notes",
            column: store.target,
            query: "ef_search recall latency",
            mode,
            ...everything,
          });
          assert.equal(res.status, 200, res.error ?? "");
          const results = res.data!.results;
          assert.equal(results[0].id, "2", `${mode}: the right note first`);
          assert.equal(results[0].row.title, "note 2");
          assert.deepEqual(Object.keys(results[0].row).sort(), ["body", "id", "public", "title"]);
          assert.deepEqual(
            results.map((r) => r.id).sort(),
            ["1", "2", "3", "4"],
            `${mode}: anon finds the public notes only`,
          );
          const sims = results.map((r) => r.similarity!);
          assert.deepEqual(sims, [...sims].sort((a, b) => b - a), `${mode}: best first`);
        }
        const service = await invokeSearch(stack.client(stack.serviceKey), {
          table: "notes",
          column: store.target,
          query: "private note rotating the bearer secret every night",
          ...everything,
        });
        assert.equal(service.status, 200, service.error ?? "");
        assert.equal(service.data!.results[0].id, "5", "the service key sees the private one");
      } finally {
        await stack.stop();
      }
    });
  });
}
