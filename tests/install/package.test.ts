// The npm package as users get it: `npm pack` of this repository, installed
// from the tarball into a scratch npm project (from npm's cache: Deno comes
// with it and is not fetched again), then `npx autoembed ...` from there. An
// empty folder becomes a Supabase project (init); the real Supabase CLI pushes
// its migrations and its seed (the examples uncommented, as the seed says) to
// a fresh database; the package's worker embeds the seeded table through the
// fake provider; status reads it; install --into adds autoembed to another
// project without touching that project's files, and upgrade adds only what
// is new.
import assert from "node:assert/strict";
import { join } from "node:path";
import { ROOT } from "../../local/config.ts";
import { cliDbUrl, listMigrations, supabaseCli } from "../../local/migrate.ts";
import { capture, type RunResult } from "../../local/proc.ts";
import { providerEnv, spawnProcess } from "../../devtools/cli.ts";
import { withTestDb } from "../../devtools/db.ts";
import { startFakeOpenAI } from "../../devtools/fake_openai.ts";
import { waitFor } from "../../devtools/wait.ts";

const packageJson = JSON.parse(await Deno.readTextFile(join(ROOT, "package.json")));

/** What a user may find in the package: the launcher, the user commands, what they install. */
const SHIPPED = [
  /^package\.json$/,
  /^(README|CHANGELOG)\.md$/,
  /^LICENSE$/,
  /^deno\.json$/,
  /^deno\.package\.lock$/,
  /^bin\/autoembed\.mjs$/,
  /^cli\/(autoembed|capture|init|install|metrics|worker)\.ts$/,
  /^cli\/templates\/(config\.toml|seed\.sql)$/,
  /^supabase\/migrations\/\d+_\w+\.sql$/,
  /^supabase\/functions\/(embed|search|_shared)\/.+\.ts$/,
];

/** Runs a command to completion with colours off; npm's chatter kept quiet. */
function run(cmd: string, args: string[], cwd: string, env: Record<string, string> = {}) {
  return capture(cmd, args, {
    cwd,
    env: {
      NO_COLOR: "1",
      npm_config_loglevel: "error",
      npm_config_update_notifier: "false",
      ...env,
    },
  });
}

function ok(result: RunResult, what: string): RunResult {
  assert.equal(result.code, 0, `${what} failed (exit ${result.code}):\n${result.stderr}`);
  return result;
}

/** Every file under `dir` with its content. */
async function snapshot(dir: string, prefix = ""): Promise<Map<string, string>> {
  const files = new Map<string, string>();
  for await (const entry of Deno.readDir(join(dir, prefix))) {
    const path = join(prefix, entry.name);
    if (entry.isDirectory) { for (const [p, c] of await snapshot(dir, path)) files.set(p, c); }
    else files.set(path, await Deno.readTextFile(join(dir, path)));
  }
  return files;
}

Deno.test("the npm package: init, db push, worker, status, install and upgrade, run from npx", async (t) => {
  const scratch = await Deno.makeTempDir({ prefix: "autoembed-package-" });
  try {
    // npm pack (its prepack step writes deno.package.lock), then the tarball
    // into a scratch npm project, as `npm install autoembed` would.
    const packed = ok(
      await run("npm", ["pack", "--json", "--pack-destination", scratch], ROOT),
      "npm pack",
    );
    const [info] = JSON.parse(packed.stdout.slice(packed.stdout.indexOf("[")));
    const paths: string[] = info.files.map((f: { path: string }) => f.path);
    const npmProject = join(scratch, "npm");
    await Deno.mkdir(npmProject);
    ok(
      await run("npm", [
        "install",
        "--prefix",
        npmProject,
        "--prefer-offline",
        "--no-audit",
        "--no-fund",
        join(scratch, info.filename),
      ], scratch),
      "npm install of the tarball",
    );
    const bin = join(npmProject, "node_modules", ".bin", "autoembed");
    /** `npx autoembed <args>` in `cwd`, resolved from the scratch npm project. */
    const npx = (args: string[], cwd: string, env: Record<string, string> = {}) =>
      run("npx", ["--prefix", npmProject, "--no-install", "autoembed", ...args], cwd, env);

    await t.step("the tarball holds only what users need", () => {
      assert.deepEqual(paths.filter((p) => !SHIPPED.some((re) => re.test(p))), []);
      for (
        const path of [
          "bin/autoembed.mjs",
          "cli/autoembed.ts",
          "deno.package.lock",
          "supabase/functions/embed/index.ts",
          "supabase/functions/search/index.ts",
          "supabase/functions/_shared/core.ts",
          "CHANGELOG.md",
          "LICENSE",
        ]
      ) assert.ok(paths.includes(path), `${path} is in the package`);
      assert.ok(paths.filter((p) => p.startsWith("supabase/migrations/")).length >= 1);
      assert.equal(info.version, packageJson.version);
      assert.deepEqual(packageJson.bin, { autoembed: "bin/autoembed.mjs" });
    });

    await t.step("--version prints package.json's version", async () => {
      const result = ok(await npx(["--version"], scratch), "autoembed --version");
      assert.equal(result.stdout.trim(), packageJson.version);
    });

    const app = join(scratch, "my-app");
    await Deno.mkdir(app);
    await t.step("init makes an empty folder a Supabase project with autoembed in it", async () => {
      const result = ok(await npx(["init"], app), "autoembed init");
      const files = await snapshot(app);
      const shipped = (await listMigrations()).map((m) =>
        `supabase/migrations/${m.version}_${m.name}.sql`
      );
      for (const path of [...shipped, "supabase/config.toml", "supabase/seed.sql"]) {
        assert.ok(files.has(path), `${path} written`);
      }
      const functionFiles = [...files.keys()].filter((p) => p.startsWith("supabase/functions/"));
      for (const path of functionFiles.filter((p) => !p.endsWith("/deno.json"))) {
        assert.equal(
          files.get(path),
          await Deno.readTextFile(join(ROOT, path)),
          `${path} as shipped`,
        );
      }
      assert.ok(files.has("supabase/functions/embed/deno.json"), "embed's import map");
      assert.ok(files.has("supabase/functions/search/deno.json"), "search's import map");
      const config = files.get("supabase/config.toml")!;
      assert.match(config, /^project_id = "my-app"$/m);
      assert.match(config, /\[functions\.embed\]\nverify_jwt = false\n/);
      assert.match(result.stdout, /^created {2}supabase\/seed\.sql$/m);
      const again = await npx(["init"], app);
      assert.equal(again.code, 2, "a second init is refused");
      assert.match(
        again.stderr,
        /already has a supabase\/ folder: add autoembed to it with install/,
      );
      assert.deepEqual(await snapshot(app), files, "and writes nothing");
    });

    await t.step(
      "the real Supabase CLI pushes it; the seed attaches a table; the package's worker embeds it",
      async () => {
        await withTestDb(async (sql, url) => {
          const push = (extra: string[] = []) =>
            supabaseCli(
              ["db", "push", "--db-url", cliDbUrl(url), "--workdir", app, "--yes", ...extra],
              app,
            );
          ok(await push(), "supabase db push");
          const [{ applied }] = await sql`
          select count(*)::int as applied from supabase_migrations.schema_migrations`;
          assert.equal(applied, (await listMigrations(join(app, "supabase", "migrations"))).length);

          // As the seed says: delete the comment lines around the examples.
          const seedPath = join(app, "supabase", "seed.sql");
          const seed = await Deno.readTextFile(seedPath);
          const uncommented = seed.split("\n").filter((l) => l !== "/*" && l !== "*/").join("\n");
          assert.notEqual(uncommented, seed);
          await Deno.writeTextFile(seedPath, uncommented);
          ok(await push(["--include-seed"]), "supabase db push --include-seed");
          const secrets = await sql`select name from vault.decrypted_secrets order by name`;
          assert.deepEqual(secrets.map((r) => r.name), ["embed_secret", "project_url"]);
          await sql`insert into public.documents (title, body)
                  select 'Note ' || i, 'written after attaching, number ' || i
                    from generate_series(1, 10) i`;
          const [before] = await sql`
          select count(*)::int as total, count(embedding)::int as embedded from public.documents`;
          assert.deepEqual({ ...before }, { total: 12, embedded: 0 }, "nothing embedded yet");

          const fake = await startFakeOpenAI();
          try {
            const worker = ok(
              await npx(["worker", "--once", "-d", url], scratch, providerEnv(fake)),
              "autoembed worker --once",
            );
            assert.match(worker.stdout, /"event":"stopped"/);
            const [after] = await sql`
            select count(*)::int as total, count(embedding)::int as embedded,
                   min(vector_dims(embedding))::int as dims
              from public.documents`;
            assert.deepEqual({ ...after }, { total: 12, embedded: 12, dims: 1536 });
            assert.equal(fake.stats.inputs, 12, "each row's text embedded once");

            const status = ok(
              await npx(["status", "--json", "-d", url], scratch),
              "autoembed status",
            );
            const rows = JSON.parse(status.stdout);
            assert.deepEqual(
              rows.map((
                r: Record<string, unknown>,
              ) => [r.table, r.model, Number(r.embedded), Number(r.missing)]),
              [["public.documents", "text-embedding-3-small", 12, 0]],
            );

            // A long-running worker from the package's bin: it embeds a new row,
            // and SIGTERM, passed on by the launcher, stops it gracefully.
            const running = spawnProcess(
              bin,
              ["worker", "-d", url, "--poll-interval", "1s"],
              providerEnv(fake),
              scratch,
            );
            try {
              await running.waitForLine(/"event":"idle"/);
              await sql`insert into public.documents (title, body) values ('Late', 'a row for the running worker')`;
              await waitFor(
                async () =>
                  (await sql`select embedding is not null as done from public.documents where title = 'Late'`)[
                    0
                  ].done,
                { what: "the running worker to embed the new row" },
              );
              assert.equal(await running.stop("SIGTERM"), 0, running.lines.join("\n"));
              assert.ok(
                running.lines.some((l) => l.includes('"event":"stopped"')),
                running.lines.join("\n"),
              );
            } finally {
              await running.stop(); // SIGTERM: a no-op once it has exited
            }
          } finally {
            await fake.close();
          }
        }, { template: "template1" });
      },
    );

    await t.step(
      "install --into an existing project adds autoembed and leaves its files alone; upgrade adds only what is new",
      async () => {
        const existing = join(scratch, "existing");
        const own = new Map([
          ["supabase/config.toml", 'project_id = "existing"\n\n[api]\nport = 54321\n'],
          ["supabase/seed.sql", "insert into public.things values (1);\n"],
          [
            "supabase/migrations/20200101000000_things.sql",
            "create table public.things (id int);\n",
          ],
          ["supabase/functions/hello/index.ts", "Deno.serve(() => new Response('hi'));\n"],
          ["supabase/functions/_shared/mine.ts", "export const mine = 1;\n"],
          ["src/app.ts", "console.log('app');\n"],
        ]);
        for (const [path, content] of own) {
          await Deno.mkdir(join(existing, path, ".."), { recursive: true });
          await Deno.writeTextFile(join(existing, path), content);
        }
        const result = ok(await npx(["install", "--into", existing], scratch), "autoembed install");
        assert.match(result.stdout, /^updated {2}supabase\/config\.toml$/m);
        const after = await snapshot(existing);
        for (const [path, content] of own) {
          if (path === "supabase/config.toml") {
            assert.ok(after.get(path)!.startsWith(content), "the config keeps what it had");
            assert.match(after.get(path)!, /\n\[functions\.embed\]\nverify_jwt = false\n$/);
          } else {
            assert.equal(after.get(path), content, `${path} untouched`);
          }
        }
        assert.ok(after.has("supabase/functions/embed/index.ts"));

        // As an older release left it: without the newest migration.
        const newest = (await listMigrations(join(existing, "supabase", "migrations"))).at(-1)!;
        await Deno.remove(newest.path);
        const upgrade = ok(
          await npx(["upgrade", "--into", existing], scratch),
          "autoembed upgrade",
        );
        assert.deepEqual(
          upgrade.stdout.split("\n").filter((l) => /^(added|updated) /.test(l)),
          [`added    supabase/migrations/${newest.version}_${newest.name}.sql`],
        );
        assert.deepEqual(await snapshot(existing), after);
        const again = ok(await npx(["upgrade", "--into", existing], scratch), "autoembed upgrade");
        assert.match(again.stdout, /upgrade: nothing to do/);
      },
    );
  } finally {
    await Deno.remove(scratch, { recursive: true });
  }
});
