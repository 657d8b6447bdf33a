// Logical capture under faults (cli/capture.ts, supabase/schemas/35_capture.sql):
// a worker killed mid-stream, Postgres restarted, two workers for one slot,
// a target switched between triggers and the slot while it is written, a
// chunked target, and the guard rails (lag, the last target's notice,
// `autoembed cdc drop`, the refusals of enable_embeddings).
import assert from "node:assert/strict";
import { providerEnv, runCli, type WorkerProcess } from "../../devtools/cli.ts";
import { connect, type Sql, withTestDb } from "../../devtools/db.ts";
import { type FakeOpenAI, startFakeOpenAI } from "../../devtools/fake_openai.ts";
import { createDocuments, TEST_DIMENSIONS, TEST_MODEL } from "../../devtools/pipeline.ts";
import { waitFor } from "../../devtools/wait.ts";
import { startEphemeralCluster } from "../../local/cluster.ts";
import { applyMigrations } from "../../local/migrate.ts";
import { surviveDatabaseDisconnects } from "../../supabase/functions/_shared/postgres_guard.ts";
import {
  attachLogical,
  events,
  repeats,
  triggerCount,
  waitDrained,
  worker,
} from "../_support/capture.ts";
import { ARTICLE_SETTINGS, chunkProblems, createArticlesTable } from "../_support/chunks.ts";
import { assertAllFresh, embeddedCount, insertRows, staleRows } from "../_support/rows.ts";

/** One transaction of `rows` rows with text of their own (`<prefix> <n>/<g>`). */
async function insertTxn(sql: Sql, prefix: string, n: number, rows: number): Promise<void> {
  await sql`
    insert into public.documents (title, content)
    select ${`${prefix} ${n}`} || '/' || g, 'content of ' || ${`${prefix} ${n}`} || '/' || g
      from generate_series(1, ${rows}) g`;
}

/** `count` transactions of `rows` rows each, one after the other. */
async function insertTxns(sql: Sql, prefix: string, count: number, rows: number): Promise<void> {
  for (let n = 0; n < count; n++) await insertTxn(sql, prefix, n, rows);
}

/** The number of rows of public.documents. */
async function rowCount(sql: Sql): Promise<number> {
  const [{ n }] = await sql`select count(*)::int as n from public.documents`;
  return n;
}

/** Whether public.<table> is in the publication autoembed. */
async function published(sql: Sql, table = "documents"): Promise<boolean> {
  const [{ n }] = await sql`
    select count(*)::int as n from pg_publication_tables
     where pubname = 'autoembed' and schemaname = 'public' and tablename = ${table}`;
  return n === 1;
}

/** The texts of public.documents whose rows hold an embedding now. */
async function embeddedTexts(sql: Sql): Promise<Set<string>> {
  const rows = await sql<{ text: string }[]>`
    select public.documents_input(d) as text from public.documents d where embedding is not null`;
  return new Set(rows.map((r) => r.text));
}

/**
 * What the provider was paid for twice that is not allowed: repeats are
 * allowed only of texts a killed or cut-off worker had been paid for
 * (`sentBefore`) without their row holding it then (`heldBefore`): its
 * batch was in flight. Returns the repeats outside that.
 */
function unexplainedRepeats(
  fake: FakeOpenAI,
  sentBefore: string[],
  heldBefore: Set<string>,
): string[] {
  const inFlight = new Set(sentBefore.filter((t) => !heldBefore.has(t)));
  return repeats(fake).filter((t) => !inFlight.has(t));
}

Deno.test("logical capture: a worker killed mid-stream; the next one resumes from the slot", async () => {
  await withTestDb(async (sql, url) => {
    const BATCH = 100;
    const fake = await startFakeOpenAI({ latencyMs: 100 });
    await createDocuments(sql, { attach: false });
    await attachLogical(sql);
    const first = worker(fake, url, ["--batch-size", String(BATCH)]);
    let second: WorkerProcess | null = null;
    try {
      await first.waitForLine(/"capture_following"/);
      // Transactions of 20 rows, one after the other, at most 1,000 rows
      // ahead of the worker until the kill; 40 more after it.
      let txns = 0;
      let killed = false;
      let stopAt = Infinity;
      const writing = (async () => {
        while (txns < stopAt) {
          if (!killed && txns % 10 === 0) {
            await waitFor(async () => killed || txns * 20 - await embeddedCount(sql) < 1_000, {
              what: "the worker within 1,000 rows of the writer",
              intervalMs: 20,
            });
          }
          await insertTxn(sql, "stream", txns++, 20);
        }
      })();
      await waitFor(async () => await embeddedCount(sql) >= 15 * BATCH, {
        what: "15 batches embedded",
        intervalMs: 20,
      });
      await first.stop("SIGKILL");
      killed = true;
      const txnsAtKill = txns;
      stopAt = txns + 40;
      await writing;
      await waitFor(() => fake.inFlight === 0, { what: "the killed worker's calls answered" });
      const sentBefore = [...fake.stats.embeddedTexts];
      const heldBefore = await embeddedTexts(sql);
      const rowsAtKill = txnsAtKill * 20;
      // Premise: the kill came mid-stream: rows were being written, some
      // embedded, some not (and the last 40 transactions only in the slot).
      assert.ok(
        heldBefore.size > 0 && heldBefore.size < rowsAtKill,
        `some rows embedded at the kill (${heldBefore.size} of ${rowsAtKill})`,
      );
      assert.equal(await rowCount(sql), stopAt * 20);

      second = worker(fake, url, ["--batch-size", String(BATCH)]);
      await waitDrained(sql, "every row after the restart of the worker");
      await assertAllFresh(sql);
      assert.equal(await embeddedCount(sql), stopAt * 20, "every row embedded");
      const unexplained = unexplainedRepeats(fake, sentBefore, heldBefore);
      assert.deepEqual(unexplained, [], "only the killed batch's texts paid for twice");
      assert.ok(
        repeats(fake).length <= BATCH,
        `at most one batch paid twice (${repeats(fake).length})`,
      );
      console.log(
        `rows ${stopAt * 20}, embedded at the kill ${heldBefore.size}, ` +
          `paid twice ${repeats(fake).length}`,
      );
    } finally {
      await first.stop("SIGKILL");
      await second?.stop("SIGTERM");
      await fake.close();
    }
  });
});

Deno.test("logical capture: Postgres restarted (fast, then immediate) while the worker follows the slot", async () => {
  // Postgres ending the test's own connections can throw from a timer.
  const unguard = surviveDatabaseDisconnects(() => {});
  const cluster = await startEphemeralCluster();
  const url = cluster.url("postgres");
  const sql = connect(url);
  const BATCH = 100;
  const fake = await startFakeOpenAI({ latencyMs: 50 });
  let w: WorkerProcess | null = null;
  const back = () =>
    waitFor(async () => {
      try {
        await sql`select 1`;
        return true;
      } catch {
        return false;
      }
    }, { what: "Postgres back after the restart" });
  try {
    await applyMigrations(url);
    await createDocuments(sql, { attach: false });
    await attachLogical(sql);
    w = worker(fake, url, ["--batch-size", String(BATCH)]);
    const following = () => events(w!, "capture_following").length;
    await waitFor(() => following() === 1, { what: "the worker following the slot" });

    let inserted = 0;
    for (const mode of ["fast", "immediate"] as const) {
      const embeddedBefore = await embeddedCount(sql);
      await insertTxns(sql, `before ${mode}`, 20, 50);
      inserted += 1_000;
      await waitFor(async () => await embeddedCount(sql) >= embeddedBefore + BATCH, {
        what: `a batch embedded before the ${mode} restart`,
        intervalMs: 20,
      });
      // More changes the worker has not seen yet, then the restart.
      await insertTxns(sql, `just before ${mode}`, 10, 20);
      inserted += 200;
      const embeddedAtRestart = await embeddedCount(sql);
      const followedBefore = following();
      await cluster.restart(mode);
      // Premise: the restart came mid-stream.
      assert.ok(
        embeddedAtRestart < inserted,
        `rows left to embed at the ${mode} restart (${embeddedAtRestart} of ${inserted})`,
      );
      await back();
      await insertTxns(sql, `after ${mode}`, 10, 20);
      inserted += 200;
      await waitFor(() => following() > followedBefore, {
        what: `the worker following the slot again after the ${mode} restart`,
        timeoutMs: 45_000,
      });
      await waitDrained(sql, `every row after the ${mode} restart`);
    }
    await assertAllFresh(sql);
    assert.equal(await embeddedCount(sql), inserted, "no row lost");
    assert.ok(
      repeats(fake).length <= 2 * BATCH,
      `at most the batch each restart cut off paid twice (${repeats(fake).length})`,
    );
    console.log(`rows ${inserted}, paid twice ${repeats(fake).length}`);
  } finally {
    await w?.stop("SIGTERM");
    await sql.end({ timeout: 1 }).catch(() => {});
    await fake.close();
    await cluster.destroy();
    unguard();
  }
});

Deno.test("logical capture: two workers at once, one follows the slot; the other takes over when it is killed", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI({ latencyMs: 20 });
    await createDocuments(sql, { attach: false });
    await insertRows(sql, 500, { prefix: "before" });
    await attachLogical(sql);
    const workers = [
      worker(fake, url, ["--batch-size", "100"]),
      worker(fake, url, ["--batch-size", "100"]),
    ];
    try {
      const follows = (w: WorkerProcess) => events(w, "capture_following").length > 0;
      const busy = (w: WorkerProcess) => events(w, "capture_slot_busy").length > 0;
      await waitFor(() => workers.some(follows) && workers.some(busy), {
        what: "one worker following, the other told the slot is busy",
        describe: () => workers.map((w) => w.lines.join("\n")).join("\n---\n"),
      });
      await insertTxns(sql, "both", 40, 50);
      await waitDrained(sql, "the rows with two workers");
      const leader = workers.find(follows)!;
      const other = workers.find((w) => w !== leader)!;
      assert.equal(workers.filter(follows).length, 1, "exactly one worker followed the slot");
      assert.ok(busy(other) && !busy(leader), "the other one was told the slot is busy");
      await assertAllFresh(sql);
      assert.deepEqual(repeats(fake), [], "nothing embedded twice");
      const [{ created }] = await sql`
        select count(*)::int as created from util.capture_position`;
      assert.equal(created, 1, "one slot position");

      await leader.stop("SIGKILL");
      await other.waitForLine(/"capture_following"/, 45_000);
      await insertTxns(sql, "after takeover", 10, 50);
      await waitDrained(sql, "the rows after the takeover");
      await assertAllFresh(sql);
      assert.equal(await rowCount(sql), 500 + 2_000 + 500);
      assert.deepEqual(repeats(fake), [], "nothing embedded twice after the takeover");
    } finally {
      for (const w of workers) await w.stop("SIGKILL");
      await fake.close();
    }
  });
});

Deno.test("logical capture: switching a written table from triggers to the slot and back loses no change", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI();
    await createDocuments(sql);
    // Another logical target: the slot exists and is followed before the
    // switch, so no sweep at its creation hides a change the switch lost.
    await createDocuments(sql, { table: "notes", attach: false });
    await attachLogical(sql, "notes");
    await insertRows(sql, 10, { table: "notes" });
    // A row the writer leaves alone, changed once just before the switch back.
    await sql`insert into public.documents (title, content) values ('witness', 'as inserted')`;
    const w = worker(fake, url, ["--batch-size", "100"]);
    const writer = connect(url, { max: 1 });
    let iterations = 0;
    let writing = true;
    const written = (async () => {
      while (writing) {
        const n = iterations++;
        await writer`
          insert into public.documents (title, content)
          select ${`w${n}`} || '/' || g, 'content' from generate_series(1, 5) g`;
        await writer`
          update public.documents set content = content || ${` +${n}`}
           where id in (select id from public.documents where title like 'w%' order by random() limit 3)`;
      }
    })();
    const progress = (more: number) => {
      const at = iterations + more;
      return waitFor(() => iterations >= at, { what: `${more} more writes` });
    };
    // The switches do not sweep (backfill => false): a change neither the
    // triggers nor the slot saw would stay stale.
    const attach = (capture: string) =>
      sql`select util.enable_embeddings('public.documents', 'documents_input', model => ${TEST_MODEL},
                                        capture => ${capture}, backfill => false)`;
    try {
      await w.waitForLine(/"capture_following"/);
      await progress(30);
      assert.ok(await triggerCount(sql) > 0, "triggers before the switch");
      assert.ok(!(await published(sql)), "not published before the switch");

      await attach("logical");
      const [{ last }] = await sql`select max(id)::int as last from public.documents`;
      assert.equal(await triggerCount(sql), 0, "no trigger while logical");
      assert.ok(await published(sql), "published while logical");
      await progress(30);
      await waitFor(async () => {
        const [{ n }] = await sql`
          select count(*)::int as n from public.documents where id > ${last} and embedding is not null`;
        return n > 0;
      }, { what: "rows inserted after the switch embedded through the slot" });

      // A change committed while logical whose flush (util._capture_changes)
      // comes after the switch back: the lock holds the worker's flush
      // until the switch in the same transaction commits.
      await sql.begin(async (tx) => {
        await tx`lock table util.embedding_targets in access exclusive mode`;
        await sql`update public.documents set content = 'changed while logical' where title = 'witness'`;
        await waitFor(async () => {
          const [{ n }] = await sql`
            select count(*)::int as n from pg_stat_activity
             where wait_event_type = 'Lock' and query like '%util._capture%'`;
          return n > 0;
        }, { what: "the worker's flush of the change held by the lock" });
        await tx`select util.enable_embeddings('public.documents', 'documents_input', model => ${TEST_MODEL},
                                               capture => 'triggers', backfill => false)`;
      });
      assert.ok(await triggerCount(sql) > 0, "triggers again after switching back");
      assert.ok(!(await published(sql)), "out of the publication after switching back");
      await progress(30);
      writing = false;
      await written;
      await waitDrained(sql, "every row after both switches", { timeoutMs: 30_000 });
      await assertAllFresh(sql);
      assert.ok(iterations >= 90, `${iterations} rounds of writes`);
    } finally {
      writing = false;
      await written.catch(() => {});
      await writer.end();
      await w.stop("SIGTERM");
      await fake.close();
    }
  });
});

Deno.test("logical capture, chunked target: an edit re-embeds its own chunks; delete and truncate take chunks away", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI();
    await createArticlesTable(sql, false);
    const insertArticles = (from: number, to: number) =>
      sql`
        insert into public.articles (title, body)
        select 'a' || g, '# Article ' || g || E'\n\n' ||
               string_agg('Paragraph ' || p || ' of article ' || g || ' says something of its own.', E'\n\n')
          from generate_series(${from}::int, ${to}::int) g, generate_series(1, 60) p group by g`;
    await insertArticles(1, 10);
    await sql`
      select util.enable_embeddings('public.articles', 'article_text',
        destination => 'public.article_chunks', model => ${TEST_MODEL}, dimensions => ${TEST_DIMENSIONS},
        chunk_size => ${ARTICLE_SETTINGS.chunkSize}, chunk_overlap => ${ARTICLE_SETTINGS.chunkOverlap},
        splitter => ${ARTICLE_SETTINGS.splitter}, capture => 'logical')`;
    assert.equal(await triggerCount(sql, "articles"), 0, "no trigger on the table");
    const w = worker(fake, url);
    const problems = () => chunkProblems(sql);
    const chunksOf = async (where: string) =>
      (await sql.unsafe(
        `select source_id::text, chunk_seq, chunk, embedding::text from public.article_chunks
          where ${where} order by source_id, chunk_seq`,
      )).map((r) => JSON.stringify(r));
    try {
      await waitDrained(sql, "every article's chunks", { problems });
      const others = await chunksOf("source_id <> 1");
      const [{ n: chunksOfOne }] = await sql`
        select count(*)::int as n from public.article_chunks where source_id = 1`;
      assert.ok(chunksOfOne > 3, `article 1 has several chunks (${chunksOfOne})`);

      const paid = fake.stats.embeddedTexts.length;
      await sql`update public.articles set body = body || E'\n\nA last paragraph, new.' where id = 1`;
      await waitDrained(sql, "the edited article's chunks", { problems });
      const paidForEdit = fake.stats.embeddedTexts.slice(paid);
      const chunkTexts = new Set(
        (await sql`select chunk from public.article_chunks where source_id = 1`).map((r) =>
          r.chunk
        ),
      );
      assert.ok(paidForEdit.length > 0, "the edit was embedded");
      assert.ok(
        paidForEdit.length < chunksOfOne,
        `only the chunks the edit changed (${paidForEdit.length} of ${chunksOfOne})`,
      );
      assert.ok(paidForEdit.every((t) => chunkTexts.has(t)), "only article 1's chunks");
      assert.deepEqual(
        await chunksOf("source_id <> 1"),
        others,
        "other articles' chunks untouched",
      );

      await sql`delete from public.articles where id = 2`;
      await waitDrained(sql, "the deleted article's chunks gone", { problems });
      assert.deepEqual(await chunksOf("source_id = 2"), [], "no chunk of the deleted article");
      assert.deepEqual(
        await chunksOf("source_id not in (1, 2)"),
        others.filter((c) => JSON.parse(c).source_id !== "2"),
      );

      await sql`truncate public.articles`;
      await waitFor(async () => (await chunksOf("true")).length === 0, {
        what: "every chunk gone after the truncate",
      });
      const [{ f }] = await sql`select count(*)::int as f from util.embedding_fingerprints`;
      assert.equal(f, 0, "no fingerprint left");
      await insertArticles(11, 12);
      await waitDrained(sql, "the articles after the truncate", { problems });
      const [{ n }] = await sql`select count(*)::int as n from public.article_chunks`;
      assert.ok(n > 0, "the articles inserted after the truncate are chunked");
    } finally {
      await w.stop("SIGTERM");
      await fake.close();
    }
  });
});

Deno.test("logical capture: a slot nobody follows shows its lag; the last target's notice; cdc drop", async () => {
  await withTestDb(async (sql, url, name) => {
    const fake = await startFakeOpenAI();
    await createDocuments(sql, { attach: false });
    await attachLogical(sql);
    await insertRows(sql, 100, { prefix: "first" });
    const status = async () => (await sql`select * from util.embedding_status`)[0];
    let w = worker(fake, url);
    try {
      await waitDrained(sql, "the first rows");
      assert.equal((await status()).capture_attached, true);
      assert.equal(await w.stop("SIGTERM"), 0);
      await waitFor(async () => (await status()).capture_attached === false, {
        what: "the slot shown unattached",
      });

      await insertRows(sql, 500, { prefix: "unfollowed" });
      // Premise: nothing but the slot saw them.
      assert.equal((await staleRows(sql)).length, 500, "the new rows wait");
      const lagging = await waitFor(async () => {
        const s = await status();
        return Number(s.capture_lag_bytes) > 0 && Number(s.capture_lag_seconds) > 0 && s;
      }, { what: "the slot's lag in bytes and seconds" });
      assert.equal(lagging.capture, "logical");
      assert.equal(lagging.capture_slot, name);

      const refused = await runCli(["cdc", "drop"], providerEnv(fake, url));
      assert.equal(refused.code, 2, refused.stderr);
      assert.match(refused.stderr, /logical targets remain: public\.documents/);

      w = worker(fake, url);
      await waitDrained(sql, "the rows the slot kept");
      await assertAllFresh(sql);
      await waitFor(async () => {
        const s = await status();
        return s.capture_attached === true && Number(s.capture_lag_bytes) < 1_000_000;
      }, { what: "the lag back near zero with a worker following" });

      const notices: { message: string; hint?: string }[] = [];
      const noticed = connect(url, { max: 1, onnotice: (n) => notices.push(n as never) });
      try {
        await noticed`select util.disable_embeddings('public.documents')`;
      } finally {
        await noticed.end();
      }
      assert.ok(
        notices.some((n) => /util\.drop_capture\(\)/.test(`${n.message} ${n.hint}`)),
        `a notice offering util.drop_capture(): ${JSON.stringify(notices)}`,
      );

      // The worker still follows the slot: refused, unless forced.
      const following = await runCli(["cdc", "drop"], providerEnv(fake, url));
      assert.equal(following.code, 2, following.stderr);
      assert.match(following.stderr, /a worker follows the slot/);
      assert.equal(await w.stop("SIGTERM"), 0);
      await waitFor(async () => {
        const [s] = await sql`select active from pg_replication_slots where slot_name = ${name}`;
        return s?.active === false;
      }, { what: "the slot released" });
      const dropped = await runCli(["cdc", "drop"], providerEnv(fake, url));
      assert.equal(dropped.code, 0, dropped.stderr);
      assert.match(dropped.stdout, new RegExp(`replication slot ${name}, publication autoembed`));
      const [{ slots }] = await sql`
        select count(*)::int as slots from pg_replication_slots where slot_name = ${name}`;
      const [{ pubs }] = await sql`
        select count(*)::int as pubs from pg_publication where pubname = 'autoembed'`;
      assert.deepEqual([slots, pubs], [0, 0], "slot and publication dropped");
    } finally {
      await w.stop("SIGTERM");
      await fake.close();
    }
  });
});

Deno.test("logical capture: refused with clear_on_change, or a replica identity without the key", async () => {
  await withTestDb(async (sql) => {
    await createDocuments(sql, { attach: false });
    const code = (p: Promise<unknown>) =>
      p.then(() => "accepted", (err) => (err as { code?: string }).code ?? String(err));

    await sql`alter table public.documents replica identity nothing`;
    assert.equal(await code(attachLogical(sql)), "AE003", "replica identity nothing");
    await sql`alter table public.documents replica identity default`;
    assert.equal(await code(attachLogical(sql)), "accepted", "replica identity default");
    assert.ok(await published(sql), "published");

    assert.equal(
      await code(attachLogical(sql, "documents", ", clear_on_change => true")),
      "AE003",
      "clear_on_change",
    );
    const [{ capture }] = await sql`select capture from util.embedding_targets`;
    assert.equal(capture, "logical", "the refused call changed nothing");
    assert.equal(await triggerCount(sql), 0);
  });
});
