// Pure parts of `deno task schema:migration`: splitting SQL into statements,
// naming what each declares, choosing declarations and grants, versions.
import assert from "node:assert/strict";
import {
  declaredObject,
  mentions,
  normalizeName,
  splitStatements,
} from "../../cli/sql_statements.ts";
import {
  declarations,
  nextVersion,
  pickDeclarations,
  privilegesFor,
  renderMigration,
  SchemaMigrationError,
} from "../../cli/schema_migration.ts";

Deno.test("splitStatements ends statements only at semicolons outside quotes, comments and bodies", () => {
  const sql = `-- banner
-------------------------------------------------------------------------------

-- internal: one
-- two
create function util.f(a text default 'x;y')
returns text language plpgsql as $$
begin
  return 'a;' || $q$;$q$; -- ; in a comment
end
$$;
/* block ; comment */ select "semi;colon", E'it\\'s;', $1x;
grant execute on function util.f(text) to service_role;
select 1`;
  const statements = splitStatements(sql);
  assert.deepEqual(statements.map((s) => s.text.split("\n")[0]), [
    "create function util.f(a text default 'x;y')",
    `select "semi;colon", E'it\\'s;', $1x;`,
    "grant execute on function util.f(text) to service_role;",
    "select 1",
  ]);
  assert.equal(statements[0].comment, "-- internal: one\n-- two");
  assert.equal(statements[0].line, 6);
  assert.ok(statements[0].text.endsWith("end\n$$;"));
  assert.equal(statements[2].comment, "", "a statement after another on no comment line");
});

Deno.test("a comment separated by a blank line or a banner does not belong to the statement", () => {
  const [a, b] = splitStatements(
    "-- about a\n\ncreate view util.a as select 1;\n------\ncreate view util.b as select 2;",
  );
  assert.equal(a.comment, "");
  assert.equal(b.comment, "");
});

Deno.test("declaredObject names functions, views, tables, indexes and triggers", () => {
  const cases: [string, ReturnType<typeof declaredObject>][] = [
    ["create or replace function util.process_embeddings(\n  batch_size int", {
      kind: "function",
      name: "util.process_embeddings",
    }],
    ["CREATE FUNCTION Util._Setting(name text)", { kind: "function", name: "util._setting" }],
    ['create function "Util"."Odd Name"()', { kind: "function", name: "Util.Odd Name" }],
    ["create or replace view util.embedding_status as select 1", {
      kind: "view",
      name: "util.embedding_status",
    }],
    ["create table if not exists util.settings (", { kind: "table", name: "util.settings" }],
    ["create unique index if not exists one_shadow on util.embedding_targets (shadow_of)", {
      kind: "index",
      name: "util.one_shadow",
    }],
    ["create trigger t after insert on public.x", { kind: "trigger", name: "public.t" }],
    ["grant execute on function util.f() to x", null],
    ["select pgmq.create('embedding_jobs')", null],
    ["do $$ begin end $$", null],
  ];
  for (const [sql, expected] of cases) assert.deepEqual(declaredObject(sql), expected, sql);
});

Deno.test("normalizeName and mentions match whole, schema-qualified names", () => {
  assert.equal(normalizeName("process_embeddings"), "util.process_embeddings");
  assert.equal(normalizeName("Public.Docs", "util"), "public.docs");
  const grant = "grant select on util.embedding_status, util.settings to service_role";
  assert.ok(mentions(grant, "util.embedding_status"));
  assert.ok(mentions(grant, "util.settings"));
  assert.ok(!mentions(grant, "util._embedding_status"));
  assert.ok(
    !mentions("grant execute on function util._embedding_status() to x", "util.embedding_status"),
  );
  assert.ok(!mentions("grant select on util.settings_old to x", "util.settings"));
});

const FILES = [
  {
    name: "10_tables.sql",
    text: "create table if not exists util.t (id int);\n",
  },
  {
    name: "20_functions.sql",
    text: `-- internal: g
create or replace function util.g() returns int language sql as $$ select 1 $$;

-- public: f
create or replace function util.f(x int) returns int language sql as $$ select util.g() + x $$;
create or replace function util.f(x text) returns text language sql as $$ select x $$;
create or replace view util.v as select util.g() as one;
`,
  },
  {
    name: "90_privileges.sql",
    text: `revoke all on all tables in schema util from public;
revoke all on all functions in schema util from public;
grant execute on function util.f(int) to service_role;
grant select on util.v to service_role;
grant select on util.t to service_role;
`,
  },
];

Deno.test("pickDeclarations takes every overload, in schema file order, and refuses tables", () => {
  const all = declarations(FILES);
  const picked = pickDeclarations(all, ["util.f", "g"]);
  assert.deepEqual(picked.map((d) => [d.name, d.file, d.comment]), [
    ["util.g", "20_functions.sql", "-- internal: g"],
    ["util.f", "20_functions.sql", "-- public: f"],
    ["util.f", "20_functions.sql", ""],
  ]);
  assert.throws(() => pickDeclarations(all, ["util.t"]), /util\.t is a table: write its change/);
  assert.throws(() => pickDeclarations(all, ["util.nope"]), /not declared in supabase\/schemas/);
  assert.throws(() => pickDeclarations(all, []), SchemaMigrationError);
});

Deno.test("privilegesFor keeps the grants naming the objects, the schema-wide revokes of their kind and the grants those revokes take back", () => {
  const all = declarations(FILES);
  const texts = (names: string[]) =>
    privilegesFor(all, pickDeclarations(all, names)).map((d) => d.text);
  assert.deepEqual(texts(["util.f"]), [
    "revoke all on all functions in schema util from public;",
    "grant execute on function util.f(int) to service_role;",
  ]);
  assert.deepEqual(texts(["util.v"]), [
    "revoke all on all tables in schema util from public;",
    "grant select on util.v to service_role;",
    // The revoke took util.t's grant back too: a migration must give it again.
    "grant select on util.t to service_role;",
  ]);
  // util.g has no grant of its own; the revoke it needs takes back util.f's.
  assert.deepEqual(texts(["util.g"]), [
    "revoke all on all functions in schema util from public;",
    "grant execute on function util.f(int) to service_role;",
  ]);
});

Deno.test("nextVersion is now in UTC, or one second after the newest migration", () => {
  const now = new Date("2027-01-02T03:04:05.678Z");
  assert.equal(nextVersion(now, ["20261202000300"]), "20270102030405");
  assert.equal(nextVersion(now, []), "20270102030405");
  assert.equal(nextVersion(now, ["20270102030405"]), "20270102030406");
  assert.equal(nextVersion(now, ["20271231235959", "20261202000300"]), "20280101000000");
});

Deno.test("renderMigration: header on intent, each declaration with its comment, then the grants", () => {
  const all = declarations(FILES);
  const picked = pickDeclarations(all, ["util.g"]);
  const text = renderMigration({
    name: "faster_g",
    intent: "g answers from memory.",
    picked,
    privileges: privilegesFor(all, picked),
  });
  assert.equal(
    text,
    `-- autoembed: faster g.
-- g answers from memory.
--
-- Re-declares util.g as supabase/schemas/ (20_functions.sql, 90_privileges.sql) defines them;
-- generated by \`deno task schema:migration\`. Arguments or result type changed? Add the
-- \`drop function\` of the old signature above its declaration by hand.

-- internal: g
create or replace function util.g() returns int language sql as $$ select 1 $$;

-- Privileges, as supabase/schemas declares them.
revoke all on all functions in schema util from public;
grant execute on function util.f(int) to service_role;
`,
  );
  assert.match(
    renderMigration({ name: "x", picked, privileges: [] }),
    /^-- Intent: TODO say why/m,
    "without an intent the header asks for one",
  );
});
