// I12 under every writer at once: the push kick, the cron tick, a backfill
// (util.refresh_embeddings' sweep) and two pull workers apply concurrent
// edits of the same documents' chunks while two busy processes load the
// CPU. In every snapshot, and when the queue has drained, each chunk holds
// the vector of exactly its stored chunk text (a race once left a chunk
// 0.023 in cosine distance from its own text's vector, under CPU load).
import assert from "node:assert/strict";
import { chunkProblems, createArticles } from "../_support/chunks.ts";
import { providerEnv, spawnScript, spawnWorker } from "../../devtools/cli.ts";
import { withTestDb } from "../../devtools/db.ts";
import { editParagraph, makeDocument } from "../../devtools/documents.ts";
import { startPipeline } from "../../devtools/pipeline.ts";
import { cronTick, drain, seed, seededRandom, workerArgs } from "../_support/reliability.ts";
import { sleep } from "../../supabase/functions/_shared/sleep.ts";
import { embeddingProblem } from "../_support/rows.ts";

const DOCUMENTS = 4;
const EDITS = 80;

Deno.test("chunks writers: kick, tick, backfill and two workers at once, CPU loaded: each chunk holds its own text's vector", async () => {
  const seedValue = seed();
  console.log(
    `chunks writers seed ${seedValue} (replay with AUTOEMBED_RELIABILITY_SEED=${seedValue})`,
  );
  const random = seededRandom(seedValue);
  await withTestDb(async (sql, url) => {
    await createArticles(sql);
    const bodies: string[] = [];
    for (let i = 1; i <= DOCUMENTS; i++) {
      bodies[i] = makeDocument(300 + i, 25);
      await sql`insert into articles (id, title, body) values (${i}, ${"doc " + i}, ${bodies[i]})`;
    }
    // Push mode as on Supabase: a change kicks an idle pipeline at once.
    await sql`update util.settings set value = 'on' where name = 'kick_on_change'`;
    const p = await startPipeline(sql, url);
    const tick = cronTick(sql, 150, { batchSize: 2, maxRequests: 2, timeoutMs: 3_000 });
    const env = providerEnv(p.fake, url);
    const workers = [0, 1].map(() => spawnWorker(workerArgs(2, 1, 3_000), env));
    // Two busy processes (of this test's own, bounded by it) on a 2-core machine.
    const load = [0, 1].map(() =>
      spawnScript("tests/_support/busy.ts", [], { AUTOEMBED_BUSY_MS: "120000" })
    );
    const problems: string[] = [];
    let running = true;
    /** One snapshot: every chunk's vector against its own chunk text. */
    const audit = async () => {
      const chunks = await sql<{ id: string; seq: number; chunk: string; embedding: string }[]>`
        select source_id::text as id, chunk_seq as seq, chunk, embedding::text
          from article_chunks`;
      for (const c of chunks) {
        const problem = embeddingProblem(c.embedding, c.chunk);
        if (problem) problems.push(`${c.id}/${c.seq}: ${problem}`);
      }
    };
    const auditing = (async () => {
      while (running) {
        await audit();
        await sleep(40);
      }
    })();
    try {
      await Promise.all(workers.map((w) => w.waitForLine(/"event":"started"/)));
      for (let e = 0; e < EDITS; e++) {
        const id = 1 + Math.floor(random() * DOCUMENTS);
        const roll = random();
        if (roll < 0.75) {
          try {
            bodies[id] = editParagraph(bodies[id], Math.floor(random() * 20));
          } catch (err) {
            if (!(err instanceof RangeError)) throw err;
            bodies[id] = makeDocument(400 + e, 10 + Math.floor(random() * 20));
          }
        } else bodies[id] = makeDocument(400 + e, 10 + Math.floor(random() * 20));
        await sql`update articles set body = ${bodies[id]} where id = ${id}`;
        // Now and then, a backfill of the whole table beside the edits.
        if (e % 20 === 10) await sql`select util.refresh_embeddings('articles', 'article_chunks')`;
        await sleep(random() * 40);
      }
      running = false;
      await auditing;
      await drain(sql, { timeoutMs: 180_000, what: "the queue after the edits" });
      await audit();
      assert.deepEqual(
        problems.slice(0, 10),
        [],
        "every snapshot: each chunk holds its text's vector",
      );
      assert.deepEqual(await chunkProblems(sql), [], "the chunks are those of the final texts");
      const workerBatches = workers.map((w) =>
        w.lines.filter((l) => /"event":"batch","jobs":[1-9]/.test(l)).length
      );
      const pushBatches = p.logs.filter((l) => l.includes('"event":"batch"')).length;
      console.log(JSON.stringify({ workerBatches, pushBatches, snapshotsAudited: true }));
      assert.ok(workerBatches.some((n) => n > 0), "a worker took part");
      assert.ok(pushBatches > 0, "push mode took part");
    } finally {
      running = false;
      await auditing;
      await tick.stop();
      for (const w of [...workers, ...load]) await w.stop("SIGKILL");
      await p.stop();
    }
  });
});
