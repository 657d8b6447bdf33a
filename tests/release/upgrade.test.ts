// Upgrades from 0.1.0: a database built by the baseline migration alone,
// with real state in it (whole-row and chunked targets embedded, a backlog
// in the queue, a dead-lettered row, a model change half done), takes every
// later migration of the repository (or, while there is none, a synthetic
// one made by `deno task schema:migration` the way a release would make
// it). Nothing is lost, and the pipeline then finishes the backlog, the
// retried row and the model change.
import assert from "node:assert/strict";
import { join } from "node:path";
import { readLock } from "../../cli/migration_lock.ts";
import { generateMigration, MIGRATIONS_DIR } from "../../cli/schema_migration.ts";
import { applyMigrations } from "../../local/migrate.ts";
import { type Sql, withTestDb } from "../../devtools/db.ts";
import { makeDocument } from "../../devtools/documents.ts";
import { createDocuments, queueLength, startPipeline } from "../../devtools/pipeline.ts";
import { providerEnv } from "../../devtools/cli.ts";
import { processBatch } from "../../supabase/functions/_shared/core.ts";
import { claimJobs } from "../../supabase/functions/_shared/sql/queue.ts";
import { coreSettings } from "../../supabase/functions/_shared/settings.ts";
import { waitFor } from "../../devtools/wait.ts";
import { ARTICLE_SETTINGS, chunkProblems, createArticles } from "../_support/chunks.ts";
import { embeddingProblem, insertRows } from "../_support/rows.ts";
import { settle } from "../_support/settle.ts";

const POISON = "row 7";
const NEW_DIMENSIONS = 32;

/** Two folders of migrations: the baseline alone, and the baseline with everything after it. */
async function histories(
  root: string,
): Promise<{ baseline: string; later: string[]; all: string }> {
  const [first, ...recorded] = [...(await readLock()).keys()];
  assert.ok(first, "supabase/migrations.lock records no baseline");
  const baseline = join(root, "baseline");
  const all = join(root, "all");
  await Deno.mkdir(baseline);
  await Deno.mkdir(all);
  await Deno.copyFile(join(MIGRATIONS_DIR, first), join(baseline, first));
  for (const name of [first, ...recorded]) {
    await Deno.copyFile(join(MIGRATIONS_DIR, name), join(all, name));
  }
  let later = recorded;
  if (later.length === 0) {
    // No release after the baseline yet: one made as a release makes one,
    // re-declaring the functions every batch goes through.
    const path = await generateMigration({
      name: "synthetic_later",
      objects: ["util._read_jobs", "util._settle_jobs", "util.process_embeddings"],
      intent: "A synthetic later migration for the upgrade test.",
      migrationsDir: all,
      lockFile: join(root, "synthetic.lock"),
    });
    later = [path.split("/").at(-1)!];
  }
  return { baseline, later, all };
}

/** documents_input raises for the poisoned row; with max_attempts 1 it is dead-lettered at once. */
async function poison(sql: Sql): Promise<void> {
  await sql.unsafe(`
    create or replace function public.documents_input(d public.documents) returns text
      language plpgsql immutable as $$
    begin
      if d.title = '${POISON}' then raise exception 'cannot build text for %', d.id; end if;
      return d.title || ': ' || d.content;
    end $$`);
}

async function figures(sql: Sql) {
  const [row] = await sql<
    {
      documents_embedded: number;
      chunks_embedded: number;
      fingerprints: number;
      dead_lettered: number;
      shadows: number;
    }[]
  >`
    select (select count(*) from documents where embedding is not null)::int as documents_embedded,
           (select count(*) from article_chunks where embedding is not null)::int as chunks_embedded,
           (select count(*) from util.embedding_fingerprints)::int as fingerprints,
           (select sum(dead_lettered) from util.embedding_status)::int as dead_lettered,
           (select count(*) from util.embedding_targets where shadow_of is not null)::int as shadows`;
  return { ...row, queued: await queueLength(sql) };
}

Deno.test("upgrade: a 0.1.0 database with targets, a backlog, a dead letter and a model change half done takes every later migration", async () => {
  const root = await Deno.makeTempDir({ prefix: "autoembed-upgrade-" });
  try {
    const { baseline, later, all } = await histories(root);
    await withTestDb(async (sql, url) => {
      assert.deepEqual(
        (await applyMigrations(url, { dir: baseline })).length,
        1,
        "the premise: the baseline alone",
      );
      await createDocuments(sql);
      await poison(sql);
      await sql`update util.settings set value = '1' where name = 'max_attempts'`;
      await insertRows(sql, 30);
      await createArticles(sql);
      for (let i = 1; i <= 4; i++) {
        await sql`insert into articles (title, body) values (${"a" + i}, ${makeDocument(i, 8)})`;
      }
      let p = await startPipeline(sql, url);
      let before: Awaited<ReturnType<typeof figures>>;
      try {
        await settle(sql);
        // A model change half done: the shadow column has some rows, not all.
        await sql`select util.reembed('documents', model => 'text-embedding-3-large',
                                      dimensions => ${NEW_DIMENSIONS})`;
        // One batch of five rows of it, by the core itself: the shadow has some rows, not all.
        await waitFor(async () => {
          await sql`select util.maintain_embeddings()`;
          return (await queueLength(sql)) > 0;
        }, { what: "the model change's sweep to queue its rows" });
        const { jobs } = await claimJobs(sql, { visibilitySeconds: 60, maxRows: 5 });
        const env = providerEnv(p.fake);
        await processBatch(sql, jobs, { providerFor: coreSettings((k) => env[k]).providerFor });
        // A backlog: rows changed while nothing processes the queue.
        await insertRows(sql, 10, { prefix: "late" });
        await sql`update articles set body = body || ' Revised.' where id <= 2`;
        before = await figures(sql);
      } finally {
        await p.stop();
      }
      const [{ shadow_rows }] = await sql`
        select count(*)::int as shadow_rows from util.embedding_fingerprints f
          join util.embedding_targets t on t.id = f.target_id where t.shadow_of is not null`;
      assert.ok(shadow_rows > 0 && shadow_rows < 30, `the premise: ${shadow_rows} of 30 moved`);
      assert.equal(before.shadows, 1, "the premise: a model change in progress");
      assert.ok(before.dead_lettered >= 1, "the premise: the poisoned row dead-lettered");
      assert.ok(before.queued >= 12, `the premise: a backlog (${before.queued} rows)`);
      assert.equal(before.documents_embedded, 29);

      const applied = await applyMigrations(url, { dir: all });
      assert.deepEqual(applied, later.map((name) => name.slice(0, 14)));
      // Nothing lost by the migrations themselves.
      assert.deepEqual(await figures(sql), before);

      // A new function instance (another URL) for the rest.
      await sql`delete from vault.secrets where name in ('project_url', 'embed_secret')`;
      p = await startPipeline(sql, url);
      try {
        // The dead letter is still there to retry: the content function is fixed and the row retried.
        await createDocumentsInput(sql);
        const [{ retried }] = await sql`select util.retry_failed('documents') as retried`;
        assert.equal(Number(retried), before.dead_lettered, "every dead letter goes back");
        await settle(sql);
        const status = await sql`
          select table_name, model, dimensions, stale::int, dead_lettered::int, next_model
            from util.embedding_status_exact() order by table_name`;
        assert.deepEqual(status.map((s) => ({ ...s })), [
          {
            table_name: "articles",
            model: "text-embedding-3-small",
            dimensions: 16,
            stale: 0,
            dead_lettered: 0,
            next_model: null,
          },
          {
            table_name: "documents",
            model: "text-embedding-3-large",
            dimensions: NEW_DIMENSIONS,
            stale: 0,
            dead_lettered: 0,
            next_model: null,
          },
        ]);
        const documents = await sql<{ id: string; text: string; embedding: string }[]>`
          select id::text, documents_input(d) as text, embedding::text from documents d`;
        assert.equal(documents.length, 40);
        assert.deepEqual(
          documents.map((d) => embeddingProblem(d.embedding, d.text, NEW_DIMENSIONS)).filter((x) =>
            x
          ),
          [],
        );
        assert.deepEqual(await chunkProblems(sql, ARTICLE_SETTINGS), []);
        assert.equal(await queueLength(sql), 0);
      } finally {
        await p.stop();
      }
    }, { template: "template1" });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

/** The documents' content function as createDocuments makes it (no poisoned row). */
async function createDocumentsInput(sql: Sql): Promise<void> {
  await sql.unsafe(`
    create or replace function public.documents_input(d public.documents) returns text
      language sql immutable as $$ select d.title || ': ' || d.content $$`);
}
