// The batch lane (supabase/schemas/55_batch_lane.sql): bulk work through the
// provider's batch API, against the fake provider's /v1/files and
// /v1/batches, with the real worker and the real push path.
import assert from "node:assert/strict";
import { providerEnv, spawnWorker, type WorkerProcess } from "../../devtools/cli.ts";
import type { Sql } from "../../devtools/db.ts";
import { withTestDb } from "../../devtools/db.ts";
import { type FakeOpenAI, startFakeOpenAI } from "../../devtools/fake_openai.ts";
import { createDocuments, queueLength, startPipeline } from "../../devtools/pipeline.ts";
import { waitFor } from "../../devtools/wait.ts";
import { assertAllFresh, embeddedCount, insertRows, staleRows } from "../_support/rows.ts";

/** Settings that make batches go and be polled within a second. */
async function quickBatches(sql: Sql, extra: Record<string, string> = {}) {
  const values = { batch_stage_seconds: "1", batch_poll_seconds: "1", ...extra };
  for (const [name, value] of Object.entries(values)) {
    await sql`update util.settings set value = ${value} where name = ${name}`;
  }
}

/** A table of `rows` rows, attached with lane batch (its backfill goes through batches). */
async function backfillByBatch(sql: Sql, rows: number, lane = "batch") {
  await createDocuments(sql, { attach: false });
  await insertRows(sql, rows);
  await sql.unsafe(
    `select util.enable_embeddings('public.documents', 'documents_input',
                                   model => 'text-embedding-3-small', dimensions => 16, lane => $1)`,
    [lane],
  );
}

function worker(fake: FakeOpenAI, url: string, args: string[] = []): WorkerProcess {
  return spawnWorker(
    ["--poll-interval", "300ms", "--batch-size", "500", ...args],
    providerEnv(fake, url),
  );
}

async function batchStates(sql: Sql): Promise<string[]> {
  const rows = await sql<{ state: string }[]>`select state from util.embedding_batches order by id`;
  return rows.map((r) => r.state);
}

async function waitAllFresh(sql: Sql, what: string, timeoutMs = 60_000) {
  await waitFor(async () => (await staleRows(sql)).length === 0, { what, timeoutMs });
}

Deno.test("batch lane: a 5,000-row backfill goes through batches (>= 95% of inputs), at the batch price", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI();
    await quickBatches(sql);
    await backfillByBatch(sql, 5000);
    const w = worker(fake, url);
    try {
      await waitAllFresh(sql, "every row embedded through the batch lane", 120_000);
      await assertAllFresh(sql);
      const batched = fake.stats.batchInputs;
      const online = fake.stats.inputs;
      assert.ok(batched >= 0.95 * 5000, `${batched} inputs through batches, ${online} online`);
      assert.equal(batched + online, 5000, "every text sent once");
      await waitFor(async () => (await queueLength(sql)) === 0, { what: "the queue to empty" });
      const states = await batchStates(sql);
      assert.ok(states.length > 0 && states.every((s) => s === "applied"), states.join(","));
      const [usage] = await sql<
        { batch_tokens: string; batch_inputs: string; batch_saved_usd: string }[]
      >`
        select sum(batch_tokens)::text as batch_tokens, sum(batch_inputs)::text as batch_inputs,
               sum(batch_saved_usd)::text as batch_saved_usd
          from util.embedding_usage`;
      assert.equal(Number(usage.batch_inputs), batched, "usage counts the batch's inputs");
      assert.ok(Number(usage.batch_saved_usd) > 0, "the batch lane saved money at list prices");
      const [status] =
        await sql`select batches_open, parked, batch_saved_usd from util.embedding_status`;
      assert.equal(status.batches_open, 0);
      assert.equal(Number(status.parked), 0);
      assert.equal(await w.stop("SIGTERM"), 0);
    } finally {
      await w.stop("SIGKILL");
      await fake.close();
    }
  });
});

Deno.test("batch lane: live edits during a pending batch go online at once and keep their embedding", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI();
    fake.setBatchBehaviour({ completionDelayMs: 3_600_000 });
    await quickBatches(sql);
    await backfillByBatch(sql, 300);
    const w = worker(fake, url);
    try {
      await waitFor(async () => (await batchStates(sql)).includes("submitted"), {
        what: "the backfill's batch to be submitted",
      });
      await waitFor(async () => {
        const [s] = await sql`select parked, queued from util.embedding_status`;
        return Number(s.parked) === 300 && Number(s.queued) === 0;
      }, { what: "every row's job parked for the batch" });
      assert.equal(await embeddedCount(sql), 0, "the premise: nothing embedded yet");
      await sql`update public.documents set content = content || ' (edited)' where id <= 10`;
      await waitFor(async () => await embeddedCount(sql) === 10, {
        what: "the edited rows to be embedded online while the batch is pending",
      });
      assert.equal(fake.stats.inputs, 10, "the live edits went online");
      // The batch now completes with vectors of the texts before the edits.
      fake.setBatchBehaviour({ completionDelayMs: 0 });
      await waitAllFresh(sql, "the batch's vectors applied");
      await assertAllFresh(sql);
      assert.equal(fake.stats.batchInputs, 300);
      assert.equal(await w.stop("SIGTERM"), 0);
    } finally {
      await w.stop("SIGKILL");
      await fake.close();
    }
  });
});

Deno.test("batch lane: a few error-file lines go online", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI();
    // A passing failure (500) of five lines inside the batch: fewer than batch_resubmit_errors.
    fake.setBatchBehaviour({ failLine: (t) => /^row [1-5]: /.test(t), failStatus: 500 });
    await quickBatches(sql, { batch_resubmit_errors: "100" });
    await backfillByBatch(sql, 200);
    const w = worker(fake, url);
    try {
      await waitAllFresh(sql, "every row embedded");
      await assertAllFresh(sql);
      assert.equal(fake.stats.batches, 1, "no second batch");
      assert.equal(fake.stats.batchEmbeddedTexts.length, 195);
      assert.equal(fake.stats.inputs, 5, "the five failed lines went online");
      assert.equal(await w.stop("SIGTERM"), 0);
    } finally {
      await w.stop("SIGKILL");
      await fake.close();
    }
  });
});

Deno.test("batch lane: many error-file lines go into a new batch", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI();
    // Eleven passing failures (rows 10-20), at least batch_resubmit_errors (10); the second batch succeeds.
    let first = true;
    fake.setBatchBehaviour({
      failLine: (t) => first && /^row (1\d|20): /.test(t),
      failStatus: 500,
    });
    await quickBatches(sql, { batch_resubmit_errors: "10" });
    await backfillByBatch(sql, 200);
    const w = worker(fake, url);
    try {
      await waitFor(
        async () => fake.stats.batches >= 1 && fake.stats.batchEmbeddedTexts.length >= 180,
        {
          what: "the first batch to end",
        },
      );
      first = false;
      await waitAllFresh(sql, "every row embedded");
      await assertAllFresh(sql);
      assert.equal(fake.stats.batches, 2, "the failed lines went into a second batch");
      assert.equal(fake.stats.batchInputs, 200 + 11, "the 11 failed lines were sent again");
      assert.equal(fake.stats.inputs, 0, "none went online");
      assert.equal(await w.stop("SIGTERM"), 0);
    } finally {
      await w.stop("SIGKILL");
      await fake.close();
    }
  });
});
