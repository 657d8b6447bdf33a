// Pure parts of `deno task autoembed install|upgrade`: what to write, what to
// refuse, the config.toml entry and the function's import map.
import assert from "node:assert/strict";
import {
  CONFIG_TOML,
  embedBlockOf,
  importMapFor,
  InstallError,
  MANIFEST,
  planConfig,
  type PlanInput,
  planInstall,
  sha256,
  tomlTable,
} from "../../cli/install.ts";

const BLOCK = "# own secret\n[functions.embed]\nverify_jwt = false\n";
const MIGRATION = "supabase/migrations/20260101000000_a.sql";
const FN = "supabase/functions/embed/index.ts";

function input(over: Partial<PlanInput>): PlanInput {
  return {
    mode: "install",
    source: new Map([[MIGRATION, "create table a();"], [FN, "serve()"]]),
    target: new Map(),
    manifest: null,
    configToml: "[api]\nport = 1\n",
    embedBlock: BLOCK,
    ...over,
  };
}

Deno.test("planInstall: a fresh project gets every file, the config entry and a manifest", () => {
  const plan = planInstall(input({}));
  assert.deepEqual(plan.added, [FN, MIGRATION]);
  assert.deepEqual(plan.conflicts, []);
  assert.equal(plan.writes.get(CONFIG_TOML), `[api]\nport = 1\n\n${BLOCK}`);
  assert.deepEqual(JSON.parse(plan.writes.get(MANIFEST)!).files, {
    [FN]: sha256("serve()"),
    [MIGRATION]: sha256("create table a();"),
  });
});

Deno.test("planInstall: identical files and an installed manifest mean nothing to write", () => {
  const plan = planInstall(input({
    mode: "upgrade",
    target: new Map([[MIGRATION, "create table a();"], [FN, "serve()"]]),
    manifest: new Map([[FN, sha256("serve()")], [MIGRATION, sha256("create table a();")]]),
    configToml: `[api]\n\n${BLOCK}`,
  }));
  assert.equal(plan.writes.size, 0);
  assert.deepEqual(plan.unchanged, [FN, MIGRATION, CONFIG_TOML]);
});

Deno.test("planInstall: which differences upgrade may replace and which it refuses", () => {
  const cases: [string, Partial<PlanInput>, { updated: string[]; conflicts: string[] }][] = [
    ["install never replaces a function file", {
      target: new Map([[FN, "old()"]]),
      manifest: new Map([[FN, sha256("old()")]]),
    }, { updated: [], conflicts: [FN] }],
    ["upgrade replaces a file still as installed", {
      mode: "upgrade",
      target: new Map([[FN, "old()"]]),
      manifest: new Map([[FN, sha256("old()")]]),
    }, { updated: [FN], conflicts: [] }],
    ["upgrade refuses a file edited since", {
      mode: "upgrade",
      target: new Map([[FN, "old() // mine"]]),
      manifest: new Map([[FN, sha256("old()")]]),
    }, { updated: [], conflicts: [FN] }],
    ["upgrade refuses a file it has no record of", {
      mode: "upgrade",
      target: new Map([[FN, "old()"]]),
    }, { updated: [], conflicts: [FN] }],
    ["a migration is never replaced, even as installed", {
      mode: "upgrade",
      target: new Map([[MIGRATION, "old"]]),
      manifest: new Map([[MIGRATION, sha256("old")]]),
    }, { updated: [], conflicts: [MIGRATION] }],
  ];
  for (const [what, over, expected] of cases) {
    const plan = planInstall(input(over));
    assert.deepEqual(
      plan.updated.filter((p) => p !== CONFIG_TOML),
      expected.updated,
      `${what}: updated`,
    );
    assert.deepEqual(plan.conflicts.map((c) => c.path), expected.conflicts, `${what}: conflicts`);
  }
});

Deno.test("planConfig adds the entry once, accepts it as set, refuses verify_jwt on", () => {
  assert.equal(planConfig(null, BLOCK).text, null);
  assert.equal(planConfig(`a = 1\n\n\n`, BLOCK).text, `a = 1\n\n${BLOCK}`);
  assert.equal(planConfig(`[functions.embed] # ours\nverify_jwt = false\n`, BLOCK).text, null);
  assert.match(planConfig(`[functions.embed]\nverify_jwt = true\n`, BLOCK).conflict!, /= true/);
  assert.match(
    planConfig(`[functions.embed]\nimport_map = "x"\n[db]\nverify_jwt = false\n`, BLOCK).conflict!,
    /leaves verify_jwt at its default/,
  );
  assert.equal(tomlTable(`[a]\nx = 1\n[b]\ny = 2\n`, "a"), "x = 1");
  assert.equal(tomlTable(`[a]\n`, "b"), null);
});

Deno.test("planInstall: no config.toml is a note with the entry to add, not a file", () => {
  const plan = planInstall(input({ configToml: null }));
  assert.ok(!plan.writes.has(CONFIG_TOML));
  assert.match(plan.notes[0], /no supabase\/config\.toml here[\s\S]*verify_jwt = false/);
});

Deno.test("embedBlockOf takes the table with the comment lines above it", () => {
  const toml =
    `[db]\nport = 1\n\n# why\n# more why\n[functions.embed]\nverify_jwt = false\n\n[x]\n`;
  assert.equal(embedBlockOf(toml), "# why\n# more why\n[functions.embed]\nverify_jwt = false\n");
  assert.equal(embedBlockOf("[db]\n"), null);
});

Deno.test("importMapFor maps exactly the bare specifiers the function imports", () => {
  const imports = {
    postgres: "npm:postgres@3",
    openai: "npm:openai@7",
    zod: "npm:zod@4",
    x: "npm:x",
  };
  const sources = [
    `import postgres from "postgres";\nimport type { Sql } from 'postgres';`,
    `import { APIError } from "openai/error";\nimport { a } from "./local.ts";`,
    `import { b } from "../_shared/b.ts"; import c from "npm:c@1"; import p from "node:path";`,
  ];
  assert.deepEqual(importMapFor(sources, imports), {
    openai: "npm:openai@7",
    postgres: "npm:postgres@3",
  });
  assert.throws(() => importMapFor([`import z from "zed";`], imports), InstallError);
});
