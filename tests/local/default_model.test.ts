// The local stack's default model follows the configuration the user gave:
// seed.sql chooses none, and a database built like `npm start` builds it
// (migrations, the decided default, seed) attaches every table with it.
import assert from "node:assert/strict";
import {
  chooseDefaultModel,
  OFFLINE_MODEL,
  PROVIDER_DEFAULT_MODEL,
} from "../../local/default_model.ts";
import { migrateLocalDatabase } from "../../local/start.ts";
import { SEED_FILE } from "../../local/migrate.ts";
import { type Sql, withTestDb } from "../../devtools/db.ts";

async function targetModel(sql: Sql, table: string): Promise<string> {
  const [row] = await sql`
    select model from util.embedding_status where schema_name = 'public' and table_name = ${table}`;
  assert.ok(row, `public.${table} is attached`);
  return row.model;
}

/** A table attached later the guide's way: row triggers calling util.queue_embeddings. */
async function attachNotesGuideStyle(sql: Sql): Promise<void> {
  await sql.unsafe(`
    create table public.notes (id bigint primary key generated always as identity,
                               body text not null, embedding halfvec(1536));
    create function public.note_input(n public.notes) returns text
      language sql immutable as $$ select n.body $$;
    create trigger embed_notes_on_insert after insert on public.notes
      for each row execute function util.queue_embeddings('note_input', 'embedding');
    insert into public.notes (body) values ('a note');
  `).simple();
}

Deno.test("seed.sql chooses no model; the migrations' default is the provider default", async () => {
  const seed = await Deno.readTextFile(SEED_FILE);
  const statements = seed.split("\n").filter((line) => !line.trim().startsWith("--")).join("\n");
  assert.doesNotMatch(statements, /default_model|local-hash|text-embedding/);
  await withTestDb(async (sql) => {
    const [{ value }] = await sql`select value from util.settings where name = 'default_model'`;
    assert.equal(value, PROVIDER_DEFAULT_MODEL);
  });
});

for (
  const [label, env, expected] of [
    ["with a key", { OPENAI_API_KEY: "sk-test" }, PROVIDER_DEFAULT_MODEL],
    ["without a key", {}, OFFLINE_MODEL],
  ] as const
) {
  Deno.test(`a fresh database (migrations, decided default, seed) ${label} attaches tables with ${expected}`, async () => {
    const choice = chooseDefaultModel(env, null);
    assert.equal(choice.model, expected);
    await withTestDb(async (sql, url) => {
      const previous = await migrateLocalDatabase(url, { seed: true, choice });
      assert.equal(previous, PROVIDER_DEFAULT_MODEL, "the migrations' default, before the change");
      assert.equal(await targetModel(sql, "documents"), expected, "the seeded demo table");
      await attachNotesGuideStyle(sql);
      assert.equal(await targetModel(sql, "notes"), expected, "a table attached later");
    }, { template: "template1" });
  });
}

Deno.test("a later start with another configuration changes the default for tables attached from then on", async () => {
  await withTestDb(async (sql, url) => {
    await migrateLocalDatabase(url, { seed: true, choice: chooseDefaultModel({}, null) });
    const choice = chooseDefaultModel({}, "OPENAI_API_KEY=sk-test\n");
    const lines: string[] = [];
    const previous = await migrateLocalDatabase(url, {
      seed: false,
      choice,
      log: (line) => lines.push(line),
    });
    assert.deepEqual(lines, [
      "model: text-embedding-3-small (OPENAI_API_KEY in supabase/functions/.env; " +
      "default_model was local-hash-v1)",
    ]);
    assert.equal(previous, OFFLINE_MODEL);
    const [{ n }] = await sql`select count(*)::int as n from public.documents`;
    assert.equal(n, 8, "no second seed");
    assert.equal(await targetModel(sql, "documents"), OFFLINE_MODEL, "attached tables keep theirs");
    await attachNotesGuideStyle(sql);
    assert.equal(await targetModel(sql, "notes"), PROVIDER_DEFAULT_MODEL);
  }, { template: "template1" });
});
