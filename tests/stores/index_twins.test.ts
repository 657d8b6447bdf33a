// Bulk writes are not index-bound (issue 24, item 5): a model change fills
// its shadow store without HNSW twins, builds them concurrently once the
// shadow is full (in push mode the embed function does, asked by
// util.process_embeddings; in pull mode the worker), and switches only when
// they are valid. Searches use the live index throughout, and the live store
// never holds two models' vectors. One test body per store; then a build
// that fails (its INVALID leftover is dropped and built again) and the pull
// worker's path.
import assert from "node:assert/strict";
import { connect, type Sql, withTestDb } from "../../devtools/db.ts";
import { providerEnv, runCli } from "../../devtools/cli.ts";
import { fakeVector, startFakeOpenAI } from "../../devtools/fake_openai.ts";
import {
  type Pipeline,
  startPipeline,
  TEST_DIMENSIONS,
  TEST_MODEL,
} from "../../devtools/pipeline.ts";
import { waitFor } from "../../devtools/wait.ts";
import { createLocalProvider } from "../../supabase/functions/_shared/providers/local.ts";
import { HALFVEC_TOLERANCE, parseVector } from "../_support/rows.ts";
import { settle } from "../_support/settle.ts";

/** The model the table starts on (the offline one), so old and new vectors of a text differ. */
const OLD_MODEL = "local-hash-v1";

/** A kind of store, as these tests attach, search and read it. */
interface Store {
  name: string;
  /** The target's name in util.* calls and util.embedding_status. */
  target: string;
  /** The live store's HNSW index, by the user's name. */
  liveIndex: string;
  /** Attaches public.notes on OLD_MODEL; the column store also gets its HNSW index. */
  attach(sql: Sql): Promise<void>;
  /** Where the twin of the live HNSW index is built (the table it is on). */
  twinRelation(sql: Sql): Promise<string>;
  /** A view that depends on the live store: it holds the switch back (2BP01). */
  holdSwitch: string;
  /** Each live vector with the text it must be of. */
  liveVectors(sql: Sql): Promise<{ text: string; embedding: string | null }[]>;
  /** A search through the store's util.match* function ($1: the query vector). */
  search: string;
}

const STORES: Store[] = [
  {
    name: "whole-row (the row's own column)",
    target: "embedding",
    liveIndex: "notes_embedding_idx",
    attach: async (sql) => {
      await sql`select util.enable_embeddings('public.notes', 'note_text', model => ${OLD_MODEL})`;
      await sql`create index notes_embedding_idx on notes using hnsw (embedding halfvec_cosine_ops)`;
    },
    twinRelation: () => Promise.resolve("public.notes"),
    holdSwitch: "create view public.note_vectors as select id, embedding from public.notes",
    liveVectors: (sql) => sql`select note_text(n) as text, embedding::text from notes n`,
    search: "select id from util.match('public.notes', $1::extensions.vector, 5)",
  },
  {
    name: "chunked (its side table of chunks)",
    target: "note_chunks",
    liveIndex: "note_chunks_embedding_idx",
    attach: async (sql) => {
      // splitter none: a row's whole text is its one chunk.
      await sql`select util.enable_embeddings('public.notes', 'note_text',
                  destination => 'public.note_chunks', model => ${OLD_MODEL},
                  dimensions => ${TEST_DIMENSIONS}, splitter => 'none')`;
    },
    twinRelation: async (sql) => {
      const [{ destination }] = await sql`
        select destination::text from util.embedding_targets where shadow_of is not null`;
      return destination;
    },
    holdSwitch:
      "create view public.note_chunk_vectors as select source_id, embedding from public.note_chunks",
    liveVectors: (sql) => sql`select chunk as text, embedding::text from note_chunks`,
    search: "select id from util.match_chunked('public.notes', 'public.note_chunks', " +
      "$1::extensions.vector, null, 5)",
  },
];

/** public.notes (id, title, body, embedding halfvec) with `rows` rows of distinct text. */
async function createNotes(sql: Sql, rows: number): Promise<void> {
  await sql.unsafe(`
    create table public.notes (
      id bigint primary key,
      title text not null,
      body text not null,
      embedding halfvec(${TEST_DIMENSIONS})
    );
    create function public.note_text(n public.notes) returns text language sql immutable
      as $$ select n.title || ': ' || n.body $$;
  `).simple();
  await sql`insert into notes (id, title, body)
            select g, 'note ' || g, 'the body of note ' || g from generate_series(1, ${rows}) g`;
}

/** Which model each live vector is of: "old", "new" or "neither" (a counted set). */
async function liveModels(sql: Sql, store: Store): Promise<Set<string>> {
  const rows = await store.liveVectors(sql);
  const old = await createLocalProvider({ model: OLD_MODEL, dimensions: TEST_DIMENSIONS })
    .embed(rows.map((r) => r.text));
  const close = (a: number[], b: number[]) =>
    a.length === b.length && a.every((v, i) => Math.abs(v - b[i]) <= HALFVEC_TOLERANCE);
  return new Set(rows.map((r, i) => {
    if (r.embedding === null) return "none";
    const v = parseVector(r.embedding);
    if (close(v, old[i])) return "old";
    if (close(v, fakeVector(r.text, TEST_DIMENSIONS))) return "new";
    return "neither";
  }));
}

/** The HNSW twins in public (named _autoembed_<shadow>_...), with whether each is valid. */
async function hnswTwins(sql: Sql): Promise<{ name: string; valid: boolean; on: string }[]> {
  return [
    ...await sql<{ name: string; valid: boolean; on: string }[]>`
    select c.relname::text as name, i.indisvalid as valid, i.indrelid::regclass::text as on
      from pg_index i
      join pg_class c on c.oid = i.indexrelid
      join pg_am a on a.oid = c.relam
     where c.relnamespace = 'public'::regnamespace and a.amname = 'hnsw'
       and c.relname like '\\_autoembed\\_%'`,
  ];
}

/** Whether the shadow store still lacks a vector the live store holds (the switch's own test). */
async function shadowBehind(sql: Sql): Promise<boolean> {
  const [{ behind }] = await sql`
    select util._store_shadow_behind(l, s) as behind
      from util.embedding_targets l join util.embedding_targets s on s.shadow_of = l.id`;
  return behind;
}

async function status(sql: Sql, store: Store) {
  const [row] = await sql`
    select model, next_model, next_state, last_error from util.embedding_status
     where table_name = 'notes' and embedding_column = ${store.target}`;
  return row;
}

/**
 * Runs the store's search with auto_explain reporting every nested plan as a
 * notice, and returns the plan of its ranking query (the one util._match builds).
 */
async function searchPlan(url: string, store: Store): Promise<string> {
  const notices: string[] = [];
  const db = connect(url, { max: 1, onnotice: (n) => notices.push(String(n.message)) });
  try {
    await db.unsafe(`
      load 'auto_explain';
      set auto_explain.log_min_duration = 0;
      set auto_explain.log_nested_statements = on;
      set auto_explain.log_level = notice;
      -- a few hundred rows: without this the planner would rather scan them
      set enable_seqscan = off;
    `).simple();
    await db.unsafe(store.search, [`[${fakeVector("note 7", TEST_DIMENSIONS).join(",")}]`]);
  } finally {
    await db.end();
  }
  const plan = notices.find((n) => n.includes("with semantic as"));
  assert.ok(plan, `the ranking query's plan was reported (${notices.length} notices)`);
  return plan;
}

function assertSearchUsesLive(plan: string, store: Store, when: string): void {
  assert.match(plan, new RegExp(`Index Scan using ${store.liveIndex} `), `${when}: ${plan}`);
  assert.doesNotMatch(plan, /_autoembed_/, `${when}: nothing of the change is read`);
}

for (const store of STORES) {
  Deno.test(`issue 24: a model change with an HNSW index fills without the twin, builds it once full, then switches: ${store.name}`, async () => {
    await withTestDb(async (sql, url) => {
      await createNotes(sql, 600);
      await store.attach(sql);
      const p = await startPipeline(sql, url);
      const driver = connect(url);
      try {
        await settle(sql);
        assert.deepEqual([...await liveModels(sql, store)], ["old"]);
        // A view on the live store holds the switch back, so the state after
        // the build (twin valid, not switched yet) can be looked at.
        await sql.unsafe(store.holdSwitch);

        p.fake.setLatency(40);
        await sql`select util.reembed('public.notes', ${store.target}, model => ${TEST_MODEL})`;
        assert.equal((await status(sql, store)).next_state, "embedding");
        const filling = settle(driver, { switches: false, batchSize: 25, maxRequests: 1 });
        let filled = false;
        filling.finally(() => filled = true).catch(() => {});
        const seen = { samples: 0, midFill: 0, twinWhileBehind: 0, searched: 0 };
        while (!filled) {
          // The twins first, then the shadow: once full, a shadow stays full
          // here (no edits), so a twin seen first must find it full.
          const twins = await hnswTwins(sql);
          const behind = await shadowBehind(sql);
          if (twins.length > 0 && behind) seen.twinWhileBehind++;
          if (behind) seen.midFill++;
          seen.samples++;
          if (seen.samples % 5 === 1) {
            assertSearchUsesLive(await searchPlan(url, store), store, "while the shadow fills");
            seen.searched++;
            assert.deepEqual([...await liveModels(sql, store)], ["old"], "the old model only");
          }
        }
        await filling;
        console.log(`samples: ${JSON.stringify(seen)}`);
        assert.ok(seen.midFill >= 2, `sampled while the shadow filled (${JSON.stringify(seen)})`);
        assert.ok(seen.searched >= 1, "searched while the shadow filled");
        assert.equal(seen.twinWhileBehind, 0, "no HNSW twin while the shadow fills");

        // Full: the embed function builds the twin (asked by a tick), then
        // the switch tries and the view holds it back.
        const held = await waitFor(async () => {
          await sql`select util.process_embeddings(25, 1)`;
          const s = await status(sql, store);
          return s.next_state === "switching" && s.last_error ? s : null;
        }, { what: "the twin built and the switch held back by the view" });
        assert.equal(held.model, OLD_MODEL, "not switched yet");
        assert.match(held.last_error, /switch to model text-embedding-3-small is waiting/);
        const twins = await hnswTwins(sql);
        assert.equal(twins.length, 1, JSON.stringify(twins));
        assert.equal(twins[0].valid, true, "the twin is valid before the switch");
        const [{ relation }] = await sql`
          select ${await store.twinRelation(sql)}::regclass::text as relation`;
        assert.equal(twins[0].on, relation, "on the shadow's table");
        assert.equal(await shadowBehind(sql), false);
        assert.ok(
          p.logs.some((l) => l.includes('"event":"index_twin_built"')),
          "the embed function built it",
        );
        assertSearchUsesLive(await searchPlan(url, store), store, "with the twin built");
        assert.deepEqual([...await liveModels(sql, store)], ["old"]);

        // The view goes: the switch.
        await sql.unsafe(`drop view ${store.holdSwitch.match(/view (\S+)/)![1]}`);
        await settle(sql);
        const after = await status(sql, store);
        assert.deepEqual([after.model, after.next_model, after.next_state], [
          TEST_MODEL,
          null,
          null,
        ]);
        assert.deepEqual([...await liveModels(sql, store)], ["new"], "the new model only");
        assert.deepEqual(await hnswTwins(sql), [], "no twin left over");
        const [index] = await sql`
          select indexdef from pg_indexes where schemaname = 'public' and indexname = ${store.liveIndex}`;
        assert.match(index.indexdef, /USING hnsw \(embedding (extensions\.)?halfvec_cosine_ops\)/);
        assertSearchUsesLive(await searchPlan(url, store), store, "after the switch");
      } finally {
        await driver.end();
        await p.stop();
      }
    });
  });

  Deno.test(`issue 24: a twin's failed concurrent build leaves an INVALID index, dropped and built again: ${store.name}`, async () => {
    await withTestDb(async (sql, url) => {
      await createNotes(sql, 40);
      await store.attach(sql);
      const p: Pipeline = await startPipeline(sql, url);
      const holderDb = connect(url, { max: 1 });
      const holder = await holderDb.reserve();
      try {
        await settle(sql);
        await sql`select util.reembed('public.notes', ${store.target}, model => ${TEST_MODEL})`;
        const relation = await store.twinRelation(sql);
        // A transaction that holds the twin's table as writers do (ROW
        // EXCLUSIVE, no row locked): the pipeline's writes go on, while
        // CREATE INDEX CONCURRENTLY waits for it before it builds.
        await holder`begin`;
        await holder.unsafe(`lock table ${relation} in row exclusive mode`);
        await settle(sql, { switches: false });
        const build = await waitFor(async () => {
          await sql`select util.process_embeddings()`;
          const [row] = await sql`
            select p.pid, p.phase from pg_stat_progress_create_index p
             where p.relid = ${relation}::regclass and p.command = 'CREATE INDEX CONCURRENTLY'`;
          return row;
        }, { what: "the concurrent build to start" });
        assert.equal(build.phase, "waiting for writers before build");
        assert.deepEqual((await hnswTwins(sql)).map((t) => t.valid), [false]);

        // While it builds: no switch, status says so, searches use the live index.
        await sql`select util.maintain_embeddings()`;
        const building = await status(sql, store);
        assert.deepEqual([building.model, building.next_state], [OLD_MODEL, "indexing"]);
        const [{ due }] = await sql`select util._twin_indexes_due() as due`;
        assert.equal(due, false, "a build in progress is not asked for again");
        assertSearchUsesLive(await searchPlan(url, store), store, "while the twin builds");

        // The build fails (cancelled): its INVALID index stays, the error is queryable.
        await sql`select pg_cancel_backend(${build.pid})`;
        const failed = await waitFor(async () => {
          const s = await status(sql, store);
          return /waiting for its index, whose build failed: canceling statement/.test(
            s.last_error ?? "",
          ) && s;
        }, { what: "the failed build in status" });
        assert.match(
          failed.last_error,
          /to build it by hand, as the table's owner: create index concurrently/,
        );
        await holder`rollback`;
        assert.deepEqual((await hnswTwins(sql)).map((t) => t.valid), [false], "the leftover");

        // The next tick asks again: the leftover is dropped, the twin built, the switch made.
        await settle(sql);
        const after = await status(sql, store);
        assert.deepEqual([after.model, after.next_model], [TEST_MODEL, null]);
        assert.deepEqual([...await liveModels(sql, store)], ["new"]);
        assert.deepEqual(await hnswTwins(sql), []);
        const [{ invalid }] = await sql`
          select count(*)::int as invalid from pg_index i
            join pg_class c on c.oid = i.indexrelid
           where c.relnamespace = 'public'::regnamespace and not i.indisvalid`;
        assert.equal(invalid, 0, "no INVALID index left anywhere");
        assert.ok(p.logs.some((l) => l.includes('"event":"index_twin_failed"')));
        assert.ok(p.logs.some((l) => l.includes('"event":"index_twin_dropped"')));
        assert.ok(p.logs.some((l) => l.includes('"event":"index_twin_built"')));
      } finally {
        await holder`rollback`.catch(() => {});
        holder.release();
        await holderDb.end();
        await p.stop();
      }
    });
  });
}

for (const store of STORES) {
  Deno.test(`issue 24: cancel_reembed during a twin's build cancels the build instead of waiting for it: ${store.name}`, async () => {
    await withTestDb(async (sql, url) => {
      await createNotes(sql, 40);
      await store.attach(sql);
      const p = await startPipeline(sql, url);
      const holderDb = connect(url, { max: 1 });
      const holder = await holderDb.reserve();
      try {
        await settle(sql);
        const before = await sql`
          select indexname::text, indexdef from pg_indexes where schemaname = 'public' order by 1`;
        await sql`select util.reembed('public.notes', ${store.target}, model => ${TEST_MODEL})`;
        const relation = await store.twinRelation(sql);
        // A snapshot older than the build, holding no lock: the build waits
        // for it at its end ("waiting for old snapshots"), as for any long query.
        await holder`begin isolation level repeatable read`;
        await holder`select 1`;
        await settle(sql, { switches: false });
        await waitFor(async () => {
          await sql`select util.process_embeddings()`;
          const [row] = await sql`
            select p.phase from pg_stat_progress_create_index p where p.relid = ${relation}::regclass`;
          return row?.phase === "waiting for old snapshots";
        }, { what: "the build to wait for the old snapshot" });

        // The cancel ends the build, and does not wait for the old snapshot's end.
        const cancelled = sql`
          select util.cancel_reembed('public.notes', ${store.target}) as cancelled`;
        let done = false;
        cancelled.finally(() => done = true).catch(() => {});
        await waitFor(() => done, { what: "cancel_reembed to return", timeoutMs: 10_000 });
        const [{ cancelled: was }] = await cancelled;
        assert.equal(was, true);
        await holder`rollback`;
        const after = await sql`
          select indexname::text, indexdef from pg_indexes where schemaname = 'public' order by 1`;
        assert.deepEqual(
          [...after],
          [...before],
          "nothing of the change is left, its index neither",
        );
        const [{ invalid }] = await sql`
          select count(*)::int as invalid from pg_index i
            join pg_class c on c.oid = i.indexrelid
           where c.relnamespace = 'public'::regnamespace and not i.indisvalid`;
        assert.equal(invalid, 0);
        assert.equal((await status(sql, store)).next_model, null);
      } finally {
        await holder`rollback`.catch(() => {});
        holder.release();
        await holderDb.end();
        await p.stop();
      }
    });
  });
}

Deno.test("issue 24: an embed function that cannot build the index (not deployed, or of an older release) is named in status", async () => {
  await withTestDb(async (sql, url) => {
    await createNotes(sql, 30);
    await STORES[0].attach(sql);
    const p = await startPipeline(sql, url);
    try {
      await settle(sql);
      await p.kill();
      await sql`select util.reembed('public.notes', model => ${TEST_MODEL})`;
      // The shadow made full by hand (any vectors will do): the function
      // is gone before it could be asked to build.
      const [{ shadow }] = await sql`
        select embedding_column::text as shadow from util.embedding_targets where shadow_of is not null`;
      await sql.unsafe(`update public.notes set ${shadow} = embedding`);
      await sql`select pgmq.purge_queue('embedding_jobs')`;
      const held = await waitFor(async () => {
        await sql`select util.process_embeddings()`;
        const s = await status(sql, STORES[0]);
        return s.model === OLD_MODEL && /embed function answered .* when asked to build it/.test(
          s.last_error ?? "",
        ) && s;
      }, { what: "status to say the function did not build the index" });
      assert.match(held.last_error, /deploy this release's embed function/);
    } finally {
      await p.revive();
      await p.stop();
    }
  });
});

Deno.test("issue 24: the shadow column's writes are HOT updates, so the live HNSW index gets no entry for them", async () => {
  await withTestDb(async (sql, url) => {
    // About ten rows a page (bodies of 700 characters), 40 pages.
    await createNotes(sql, 400);
    await sql`update notes set body = body || repeat('.', 700)`;
    await sql`vacuum full notes`;
    await STORES[0].attach(sql);
    const p = await startPipeline(sql, url);
    try {
      await settle(sql);
      const updates = async () => {
        const [u] = await sql`
          select n_tup_upd::int as all, n_tup_hot_upd::int as hot
            from pg_stat_user_tables where relid = 'public.notes'::regclass`;
        return u;
      };
      // Statistics reach pg_stat_user_tables when a session goes idle, within
      // seconds: 400 updates of the bodies, 400 of the first embedding.
      const before = await waitFor(async () => {
        const u = await updates();
        return u.all >= 800 && u;
      }, { what: "the first embedding's updates counted" });
      await sql`select util.reembed('public.notes', model => ${TEST_MODEL})`;
      // Batches of 20 rows: fewer than the pages, as a real table has.
      await settle(sql, { switches: false, batchSize: 20, maxRequests: 1 });
      const after = await waitFor(async () => {
        const u = await updates();
        return u.all >= before.all + 400 && u;
      }, { what: "the shadow's updates counted", timeoutMs: 30_000 });
      const hot = (after.hot - before.hot) / (after.all - before.all);
      console.log(
        `shadow writes: ${after.all - before.all} updates, ${Math.round(hot * 100)}% HOT`,
      );
      assert.ok(hot >= 0.6, `most shadow writes are HOT: ${Math.round(hot * 100)}%`);
      await settle(sql);
      assert.equal((await status(sql, STORES[0])).model, TEST_MODEL);
    } finally {
      await p.stop();
    }
  });
});

Deno.test("issue 24: the pull worker builds the twin beside its slots; worker --once ends switched", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI();
    try {
      await createNotes(sql, 120);
      await STORES[0].attach(sql);
      const env = providerEnv(fake, url);
      const worker = (args: string[] = []) =>
        runCli(["worker", "--once", "-c", "2", "--batch-size", "25", ...args], env);
      let r = await worker();
      assert.equal(r.code, 0, r.stderr);
      await sql`select util.reembed('public.notes', model => ${TEST_MODEL})`;
      r = await worker();
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /"event":"index_twin_built"/, "the worker built the twin");
      const after = await status(sql, STORES[0]);
      assert.deepEqual([after.model, after.next_model], [TEST_MODEL, null]);
      assert.deepEqual([...await liveModels(sql, STORES[0])], ["new"]);
      assert.deepEqual(await hnswTwins(sql), []);
    } finally {
      await fake.close();
    }
  });
});

Deno.test("issue 24: reembed refuses dimensions the HNSW index cannot take, before anything changes", async () => {
  await withTestDb(async (sql) => {
    await createNotes(sql, 3);
    await STORES[0].attach(sql);
    await assert.rejects(
      sql`select util.reembed('public.notes', model => ${TEST_MODEL}, dimensions => 4001)`,
      (err: { code?: string; message?: string; hint?: string }) =>
        err.code === "AE003" && /notes_embedding_idx cannot be built/.test(err.message ?? "") &&
        /drop "?notes_embedding_idx"?/i.test(err.hint ?? ""),
    );
    const [{ n }] = await sql`
      select count(*)::int as n from pg_attribute
       where attrelid = 'public.notes'::regclass and attname like '\\_autoembed%' and not attisdropped`;
    assert.equal(n, 0, "no shadow column");
    const [{ targets }] = await sql`select count(*)::int as targets from util.embedding_targets`;
    assert.equal(targets, 1);
  });
});
