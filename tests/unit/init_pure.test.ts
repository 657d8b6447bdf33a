// Pure parts of `autoembed init` and of the npm package: the project id, the
// config.toml it writes (whose function entries must say what the repository's
// own config says), and the prepack check that the package's Deno lock
// resolved nothing deno.lock does not hold.
import assert from "node:assert/strict";
import { CONFIG_TEMPLATE, configToml, projectIdOf } from "../../cli/init.ts";
import { embedBlockOf, tomlTable } from "../../cli/install.ts";
import { entriesNotIn } from "../../cli/package_lock.ts";

Deno.test("projectIdOf: the folder's name, lower case, safe characters only", () => {
  const cases: [string, string][] = [
    ["/home/me/my-app", "my-app"],
    ["/home/me/My App", "my-app"],
    ["relative/Shop_2", "shop_2"],
    ["/tmp/--x--/", "x"],
    ["/tmp/ünïcode", "n-code"],
    ["/", "my-project"],
  ];
  for (const [dir, id] of cases) assert.equal(projectIdOf(dir), id, dir);
});

Deno.test("init's config.toml: the project id, and the function entries of the repository's own", async () => {
  const template = await Deno.readTextFile(CONFIG_TEMPLATE);
  const config = configToml(template, "my-app");
  assert.match(config, /^project_id = "my-app"$/m);
  assert.equal(config.match(/^project_id = /gm)?.length, 1);
  const own = await Deno.readTextFile(new URL("../../supabase/config.toml", import.meta.url));
  assert.ok(embedBlockOf(own), "the repository's config has the embed entry");
  assert.equal(embedBlockOf(config), embedBlockOf(own));
  // Each table's settings, without the comments (the next table's lead in with them).
  const settings = (toml: string, table: string) =>
    tomlTable(toml, table)?.split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
  for (const table of ["functions.embed", "functions.search", "db.seed"]) {
    assert.ok(settings(own, table)?.length, `the repository's config sets ${table}`);
    assert.deepEqual(settings(config, table), settings(own, table), table);
  }
});

Deno.test("entriesNotIn: what the package's lock holds that deno.lock lacks or holds otherwise", () => {
  const source = {
    specifiers: { "npm:a@1": "1.0.0", "npm:b@2": "2.0.0" },
    npm: { "a@1.0.0": { integrity: "x" }, "b@2.0.0": { integrity: "y", dependencies: ["a"] } },
  };
  assert.deepEqual(entriesNotIn({ specifiers: { "npm:a@1": "1.0.0" }, npm: {} }, source), []);
  assert.deepEqual(entriesNotIn(source, source), []);
  assert.deepEqual(
    entriesNotIn({
      specifiers: { "npm:a@1": "1.0.1", "npm:c@1": "1.0.0" },
      npm: { "b@2.0.0": { integrity: "y", dependencies: [] } },
    }, source),
    ["specifiers: npm:a@1", "specifiers: npm:c@1", "npm: b@2.0.0"],
  );
});
