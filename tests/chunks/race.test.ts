// Concurrent edits of the same documents while 4 pull workers and the push
// path apply them: in every snapshot a document's chunks are the whole chunk
// set of the one text its fingerprint names (never half of two sets, I12),
// and when the queue has drained they are the chunks of its final text (I2).
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { ARTICLE_SETTINGS, chunkProblems, createArticles } from "../_support/chunks.ts";
import { providerEnv, spawnWorker } from "../../devtools/cli.ts";
import { withTestDb } from "../../devtools/db.ts";
import { editParagraph, makeDocument } from "../../devtools/documents.ts";
import { startPipeline, TEST_MODEL } from "../../devtools/pipeline.ts";
import { cronTick, drain, seed, seededRandom, workerArgs } from "../_support/reliability.ts";
import { sleep } from "../../supabase/functions/_shared/sleep.ts";
import { splitIntoChunks } from "../../supabase/functions/_shared/chunking/split.ts";
import { tokenCounterFor } from "../../supabase/functions/_shared/providers/tokens.ts";

const DOCUMENTS = 3;
const EDITS = 60;
const WORKERS = 4;

Deno.test("chunks race: 4 workers and push mode apply concurrent edits of the same documents", async () => {
  const seedValue = seed();
  console.log(
    `chunks race seed ${seedValue} (replay with AUTOEMBED_RELIABILITY_SEED=${seedValue})`,
  );
  const random = seededRandom(seedValue);
  await withTestDb(async (sql, url) => {
    await createArticles(sql);
    const [{ key }] = await sql`
      select util._chunking_key(t) as key from util.embedding_targets t where t.destination is not null`;
    const counter = tokenCounterFor(TEST_MODEL);
    /** Every text ever written, by its fingerprint hash (chunking key and text). */
    const textByFingerprint = new Map<string, string>();
    const remember = (text: string) =>
      textByFingerprint.set(createHash("sha256").update(key + text, "utf8").digest("hex"), text);
    const bodies: string[] = [];
    for (let i = 1; i <= DOCUMENTS; i++) {
      bodies[i] = makeDocument(100 + i, 30);
      remember(bodies[i]);
      await sql`insert into articles (id, title, body) values (${i}, ${"doc " + i}, ${bodies[i]})`;
    }

    const p = await startPipeline(sql, url);
    const tick = cronTick(sql, 100, { batchSize: 2, maxRequests: 2, timeoutMs: 3_000 });
    const env = providerEnv(p.fake, url);
    const workers = Array.from(
      { length: WORKERS },
      () => spawnWorker(workerArgs(2, 1, 3_000), env),
    );
    const problems: string[] = [];
    let running = true;
    /** One snapshot: each document's chunks against the text its fingerprint names. */
    const audit = async () => {
      const rows = await sql.begin("isolation level repeatable read", async (tx) => {
        const fingerprints = await tx`
          select f.row_id, encode(f.content_hash, 'hex') as fp
            from util.embedding_fingerprints f join util.embedding_targets t on t.id = f.target_id
           where t.destination is not null`;
        const chunks = await tx`
          select source_id::text, array_agg(chunk order by chunk_seq) as chunks
            from article_chunks group by source_id`;
        return { fingerprints, chunks };
      });
      const chunksOf = new Map(rows.chunks.map((r) => [r.source_id, r.chunks as string[]]));
      for (const f of rows.fingerprints) {
        const text = textByFingerprint.get(f.fp);
        if (text === undefined) {
          problems.push(`${f.row_id}: a fingerprint of no text written`);
          continue;
        }
        const want = splitIntoChunks(text, ARTICLE_SETTINGS, counter).map((c) => c.text);
        if (JSON.stringify(chunksOf.get(f.row_id) ?? []) !== JSON.stringify(want)) {
          problems.push(`${f.row_id}: chunks are not the chunk set of its fingerprint's text`);
        }
      }
    };
    const auditing = (async () => {
      while (running) {
        await audit();
        await sleep(50);
      }
    })();
    try {
      await Promise.all(workers.map((w) => w.waitForLine(/"event":"started"/)));
      for (let e = 0; e < EDITS; e++) {
        const id = 1 + Math.floor(random() * DOCUMENTS);
        const roll = random();
        const fresh = () => makeDocument(200 + e, 10 + Math.floor(random() * 30));
        if (roll < 0.7) {
          // A truncated text may have fewer paragraphs than the one picked: then a new text.
          try {
            bodies[id] = editParagraph(bodies[id], Math.floor(random() * 25));
          } catch (err) {
            if (!(err instanceof RangeError)) throw err;
            bodies[id] = fresh();
          }
        } else if (roll < 0.85) {
          bodies[id] = bodies[id].slice(0, Math.floor(bodies[id].length * (0.5 + random() / 2)));
        } else bodies[id] = fresh();
        remember(bodies[id]);
        await sql`update articles set body = ${bodies[id]} where id = ${id}`;
        await sleep(random() * 60);
      }
      running = false;
      await auditing;
      await drain(sql, { timeoutMs: 120_000, what: "the queue after the edits" });
      await audit();
      assert.deepEqual(problems.slice(0, 10), [], "every snapshot held whole chunk sets");
      assert.deepEqual(await chunkProblems(sql), [], "the chunks are those of the final texts");
      const workerBatches = workers.map((w) =>
        w.lines.filter((l) => /"event":"batch","jobs":[1-9]/.test(l)).length
      );
      const pushBatches = p.logs.filter((l) => l.includes('"event":"batch"')).length;
      console.log(JSON.stringify({ workerBatches, pushBatches }));
      assert.ok(workerBatches.filter((n) => n > 0).length >= 2, "several workers took part");
      assert.ok(pushBatches > 0, "push mode took part");
    } finally {
      running = false;
      await auditing;
      await tick.stop();
      for (const w of workers) await w.stop("SIGKILL");
      await p.stop();
    }
  });
});
