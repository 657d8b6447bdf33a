// The batch lane (supabase/schemas/55_batch_lane.sql): bulk work through the
// provider's batch API, against the fake provider's /v1/files and
// /v1/batches, with the real worker and the real push path.
import assert from "node:assert/strict";
import { providerEnv, runCli, spawnWorker, type WorkerProcess } from "../../devtools/cli.ts";
import type { Sql } from "../../devtools/db.ts";
import { withTestDb } from "../../devtools/db.ts";
import { type FakeOpenAI, fakeVector, startFakeOpenAI } from "../../devtools/fake_openai.ts";
import {
  createDocuments,
  queueLength,
  startPipeline,
  TEST_DIMENSIONS,
  TEST_MODEL,
} from "../../devtools/pipeline.ts";
import { waitFor } from "../../devtools/wait.ts";
import { ARTICLE_SETTINGS, chunkProblems, createArticlesTable } from "../_support/chunks.ts";
import { runBatchTick } from "../../supabase/functions/_shared/batch_tick.ts";
import { createLocalProvider } from "../../supabase/functions/_shared/providers/local.ts";
import { coreSettings } from "../../supabase/functions/_shared/settings.ts";
import {
  assertAllFresh,
  embeddedCount,
  insertRows,
  parseVector,
  staleRows,
} from "../_support/rows.ts";

const OLD_MODEL = "local-hash-v1";

const close = (a: number[], b: number[]) =>
  a.length === b.length && a.every((v, i) => Math.abs(v - b[i]) < 2e-3);

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
        () => fake.stats.batches >= 1 && fake.stats.batchEmbeddedTexts.length >= 180,
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

for (const onExpiry of ["resubmit", "online"] as const) {
  Deno.test(`batch lane: an expired batch's unanswered texts are ${onExpiry === "resubmit" ? "resubmitted" : "sent online"} (batch_on_expiry ${onExpiry})`, async () => {
    await withTestDb(async (sql, url) => {
      const fake = await startFakeOpenAI();
      fake.setBatchBehaviour({ expire: { fraction: 0.5 } });
      await quickBatches(sql, { batch_on_expiry: onExpiry });
      await backfillByBatch(sql, 200);
      const w = worker(fake, url);
      try {
        await waitFor(async () => (await batchStates(sql))[0] === "expired", {
          what: "the first batch to expire",
        });
        fake.setBatchBehaviour({});
        await waitAllFresh(sql, "every row embedded");
        await assertAllFresh(sql);
        assert.equal(fake.stats.batchEmbeddedTexts.length, onExpiry === "resubmit" ? 200 : 100);
        assert.equal(fake.stats.batches, onExpiry === "resubmit" ? 2 : 1);
        assert.equal(fake.stats.inputs, onExpiry === "resubmit" ? 0 : 100);
        assert.equal(await w.stop("SIGTERM"), 0);
      } finally {
        await w.stop("SIGKILL");
        await fake.close();
      }
    });
  });
}

Deno.test("batch lane: a worker SIGKILLed while its batch is pending; another worker finishes it", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI();
    fake.setBatchBehaviour({ completionDelayMs: 3_600_000 });
    await quickBatches(sql);
    await backfillByBatch(sql, 300);
    const first = worker(fake, url);
    let second: WorkerProcess | null = null;
    try {
      await waitFor(async () => (await batchStates(sql)).includes("submitted"), {
        what: "the batch to be submitted",
      });
      assert.notEqual(await first.stop("SIGKILL"), 0);
      assert.equal(await embeddedCount(sql), 0, "the premise: the batch is still pending");
      fake.setBatchBehaviour({ completionDelayMs: 0 });
      second = worker(fake, url);
      await waitAllFresh(sql, "the second worker to apply the first one's batch");
      await assertAllFresh(sql);
      assert.equal(fake.stats.batches, 1, "the batch was not submitted again");
      assert.equal(fake.stats.inputs, 0);
      assert.equal(await second.stop("SIGTERM"), 0);
    } finally {
      await first.stop("SIGKILL");
      await second?.stop("SIGKILL");
      await fake.close();
    }
  });
});

Deno.test("batch lane, push mode: the tick submits, polls and applies a batch with no worker", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url);
    try {
      await quickBatches(sql);
      await backfillByBatch(sql, 500);
      // pg_cron's tick, every half second here.
      await waitFor(async () => {
        await sql`select util.process_embeddings()`;
        return (await staleRows(sql)).length === 0;
      }, {
        what: "the push tick to embed every row through a batch",
        timeoutMs: 60_000,
        intervalMs: 500,
      });
      await assertAllFresh(sql);
      assert.equal(p.fake.stats.batchInputs, 500);
      assert.equal(p.fake.stats.inputs, 0, "nothing online");
      assert.ok(
        p.logs.some((l) => l.includes('"event":"batch_submitted"')),
        "the embed function submitted it",
      );
    } finally {
      await p.stop();
    }
  });
});

Deno.test("batch lane: util.cancel_batches cancels a pending batch and sends its rows online", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI();
    fake.setBatchBehaviour({ completionDelayMs: 3_600_000 });
    await quickBatches(sql);
    await backfillByBatch(sql, 300);
    const w = worker(fake, url);
    try {
      await waitFor(async () => (await batchStates(sql)).includes("submitted"), {
        what: "the batch to be submitted",
      });
      const [{ n }] = await sql`select util.cancel_batches('documents') as n`;
      assert.equal(n, 1);
      await waitAllFresh(sql, "the rows embedded online after the cancel");
      await assertAllFresh(sql);
      assert.equal(fake.stats.inputs, 300);
      await waitFor(async () => (await batchStates(sql))[0] === "cancelled", {
        what: "the provider's batch cancelled",
      });
      assert.equal(await w.stop("SIGTERM"), 0);
    } finally {
      await w.stop("SIGKILL");
      await fake.close();
    }
  });
});

Deno.test("batch lane: an endpoint without a batch API falls back online, with one warning", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI();
    fake.setBatchBehaviour({ unsupported: true });
    await quickBatches(sql);
    await backfillByBatch(sql, 300);
    const w = worker(fake, url);
    try {
      await waitAllFresh(sql, "every row embedded online");
      await assertAllFresh(sql);
      assert.equal(fake.stats.inputs, 300);
      assert.equal(fake.stats.batches, 0);
      const warnings =
        await sql`select error from util.embedding_errors where error like '%falls back online%'`;
      assert.equal(warnings.length, 1, "one warning");
      assert.match(warnings[0].error, /no batch API/);
      assert.equal(await w.stop("SIGTERM"), 0);
    } finally {
      await w.stop("SIGKILL");
      await fake.close();
    }
  });
});

Deno.test("batch lane: lane auto goes by batch from batch_min_texts rows, online below; live edits online", async () => {
  await withTestDb(async (sql) => {
    await sql`update util.settings set value = '100' where name = 'batch_min_texts'`;
    await backfillByBatch(sql, 150, "auto");
    const [big] = await sql`select lane, sweep_lane from util.embedding_targets`;
    assert.deepEqual({ ...big }, { lane: "auto", sweep_lane: "batch" });
    const lanes = await sql`select distinct message ->> 'lane' as lane from pgmq.q_embedding_jobs`;
    assert.deepEqual(lanes.map((r) => r.lane), ["batch"]);
    await sql`delete from pgmq.q_embedding_jobs`;
    await sql`insert into documents (title, content) values ('live', 'an edit')`;
    const live = await sql`select message ->> 'lane' as lane from pgmq.q_embedding_jobs`;
    assert.deepEqual(live.map((r) => r.lane), [null], "a live edit's job carries no lane");
    await sql`delete from documents where id > 50`;
    await sql`select util.refresh_embeddings('documents')`;
    const [small] = await sql`select sweep_lane from util.embedding_targets`;
    assert.equal(small.sweep_lane, "online", "50 rows: under batch_min_texts");
    await assert.rejects(sql`select util.reembed('documents', lane => 'fast')`, /unknown lane/);
  });
});

Deno.test("batch lane: a model change through batches switches at once when complete; searches never see two models", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI();
    fake.setBatchBehaviour({ completionDelayMs: 3_600_000 });
    await quickBatches(sql);
    await createDocuments(sql, { model: OLD_MODEL });
    await insertRows(sql, 400);
    const w = worker(fake, url);
    try {
      await waitFor(async () => await embeddedCount(sql) === 400, {
        what: "the old model's backfill",
      });
      const local = createLocalProvider({ model: OLD_MODEL, dimensions: TEST_DIMENSIONS });
      const rows =
        await sql`select id::int, documents_input(d) as text from documents d order by id`;
      const oldVectors = await local.embed(rows.map((r) => r.text));
      const textOf = new Map(rows.map((r, i) => [r.id as number, i]));
      const modelOf = (id: number, vector: number[]) => {
        const i = textOf.get(id)!;
        if (close(vector, Array.from(oldVectors[i]))) return "old";
        if (close(vector, fakeVector(rows[i].text, TEST_DIMENSIONS))) return "new";
        return "neither";
      };
      /** The models the live column holds, and what a search by a row's own vector returns. */
      const sample = async () => {
        const live = await sql`select id::int, embedding::text from documents`;
        const models = new Set(live.map((r) => modelOf(r.id, parseVector(r.embedding))));
        const [probe] = live;
        const found = await sql`
          select id::int from util.match('documents', ${probe.embedding}::vector, 5)`;
        assert.ok(found.length > 0, "a search during the change answers");
        return [...models].sort().join(",");
      };
      await sql`select util.reembed('documents', model => ${TEST_MODEL}, lane => 'batch')`;
      await waitFor(async () => (await batchStates(sql)).includes("submitted"), {
        what: "the model change's batch submitted",
      });
      assert.equal(
        await sample(),
        "old",
        "the live column keeps the old model while the batch is pending",
      );
      fake.setBatchBehaviour({ completionDelayMs: 0 });
      const seen = new Set<string>();
      await waitFor(async () => {
        const models = await sample();
        seen.add(models);
        return models === "new";
      }, { what: "the switch to the new model", timeoutMs: 60_000 });
      assert.deepEqual([...seen].sort(), ["new", "old"], "one model at every sample: never mixed");
      assert.equal(fake.stats.batchInputs, 400, "the new model's vectors came through a batch");
      assert.equal(fake.stats.inputs, 0, "nothing online");
      const [t] =
        await sql`select model, lane from util.embedding_targets where retired_at is null`;
      assert.deepEqual({ ...t }, { model: TEST_MODEL, lane: "online" }, "the table keeps its lane");
      assert.equal(await w.stop("SIGTERM"), 0);
    } finally {
      await w.stop("SIGKILL");
      await fake.close();
    }
  });
});

Deno.test("batch lane, push mode: an output applied over several calls of the function (EMBED_BATCH_LINES_PER_CALL)", async () => {
  await withTestDb(async (sql, url) => {
    const p = await startPipeline(sql, url, { env: { EMBED_BATCH_LINES_PER_CALL: "150" } });
    try {
      // One batch of all 500 texts: it goes when full, not after a wait.
      await quickBatches(sql, { batch_stage_seconds: "3600", batch_max_requests: "500" });
      await backfillByBatch(sql, 500);
      await waitFor(async () => {
        await sql`select util.process_embeddings()`;
        return (await staleRows(sql)).length === 0;
      }, { what: "every row embedded", timeoutMs: 90_000, intervalMs: 500 });
      await assertAllFresh(sql);
      const batches = await sql`select state, applied_lines from util.embedding_batches`;
      assert.ok(batches.every((b) => b.state === "applied"), JSON.stringify(batches));
      assert.equal(batches.reduce((n, b) => n + b.applied_lines, 0), 500);
      assert.equal(batches.length, 1);
      assert.equal(p.fake.stats.batches, 1);
      const cut = p.logs.filter((l) =>
        l.includes('"event":"batch_tick"') && /"vectors":150/.test(l)
      );
      assert.equal(cut.length, 3, "the apply went in calls of 150, 150, 150 and 50 lines");
    } finally {
      await p.stop();
    }
  });
});

Deno.test("batch lane: a batch created by a tick that died before recording it is found again, not created twice", async () => {
  await withTestDb(async (sql) => {
    const fake = await startFakeOpenAI();
    try {
      await quickBatches(sql);
      await backfillByBatch(sql, 0);
      const [t] = await sql`select id from util.embedding_targets`;
      const texts = Array.from({ length: 20 }, (_, i) => ({
        custom_id: `${i}`.padStart(64, "0"),
        input: `text ${i}`,
        tokens: 2,
      }));
      await sql`select util._stage_batch_inputs(${t.id}, ${JSON.stringify(texts)}::text::jsonb)`;
      await sql`update util.embedding_batches set due_at = now()`;
      const env = providerEnv(fake);
      const settings = coreSettings((k) => env[k]);
      const account = settings.batchAccountFor(TEST_MODEL, TEST_DIMENSIONS)!;
      // The provider creates the batch, then the tick dies before it records it.
      const dying = {
        ...account,
        client: {
          ...account.client,
          async create(fileId: string, metadata: Record<string, string>, signal?: AbortSignal) {
            await account.client.create(fileId, metadata, signal);
            throw new Error("the process died here");
          },
        },
      };
      await runBatchTick(sql, { accountFor: () => dying, leaseSeconds: 0 });
      const [mid] =
        await sql`select state, provider_batch_id, input_file_id from util.embedding_batches`;
      assert.equal(mid.state, "submitting");
      assert.equal(mid.provider_batch_id, null);
      assert.ok(mid.input_file_id, "the upload was recorded");
      assert.equal(fake.stats.batches, 1);
      await sql`update util.embedding_batches set due_at = now()`;
      await runBatchTick(sql, { accountFor: () => account, leaseSeconds: 0 });
      const [after] = await sql`select state, provider_batch_id from util.embedding_batches`;
      assert.equal(after.state, "submitted");
      assert.ok(after.provider_batch_id);
      assert.equal(fake.stats.batches, 1, "found by its metadata, not created again");
      assert.equal(fake.stats.filesUploaded, 1, "not uploaded again");
    } finally {
      await fake.close();
    }
  });
});

Deno.test("batch lane: batches are cut to batch_max_requests and wait for the account's enqueued-token limit", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI();
    fake.setBatchBehaviour({ enqueuedTokenLimit: 1200 });
    // About 9 tokens a text: 100 texts a batch, two at once would be over the limit.
    await quickBatches(sql, { batch_max_requests: "100", batch_enqueued_tokens: "1200" });
    await backfillByBatch(sql, 350);
    const w = worker(fake, url);
    try {
      await waitAllFresh(sql, "every row embedded");
      await assertAllFresh(sql);
      const batches = await sql<{ requests: number; state: string }[]>`
        select requests, state from util.embedding_batches order by id`;
      assert.ok(batches.every((b) => b.requests <= 100), JSON.stringify(batches));
      assert.ok(batches.every((b) => b.state === "applied"), "none over the limit: none failed");
      assert.equal(fake.stats.batchInputs, 350);
      assert.equal(fake.stats.inputs, 0);
      // Each job runs twice (staged and parked, then written once its own
      // batch ended), not once more for every batch of the table that ends.
      const rows = w.lines.filter((l) => l.includes('"event":"batch"'))
        .reduce((n, l) => n + (JSON.parse(l).jobs ?? 0), 0);
      assert.ok(rows <= 2 * 350 + 50, `rows given to the core: ${rows} for 350 rows in 4 batches`);
      assert.equal(await w.stop("SIGTERM"), 0);
    } finally {
      await w.stop("SIGKILL");
      await fake.close();
    }
  });
});

Deno.test("batch lane: a batch failed with token_limit_exceeded is resubmitted", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI();
    fake.setBatchBehaviour({ enqueuedTokenLimit: 1200, completionDelayMs: 1500 });
    // The account's limit unknown here (batch_enqueued_tokens 0): the provider refuses the excess.
    await quickBatches(sql, { batch_max_requests: "100", batch_max_attempts: "10" });
    await backfillByBatch(sql, 350);
    const w = worker(fake, url);
    try {
      await waitAllFresh(sql, "every row embedded", 90_000);
      await assertAllFresh(sql);
      const failed = await sql`select error from util.embedding_batches where state = 'failed'`;
      assert.ok(failed.length > 0, "the premise: a batch went over the limit");
      assert.match(failed[0].error, /token_limit_exceeded/);
      const [{ resubmitted }] = await sql`
        select count(*)::int as resubmitted from util.embedding_batches where attempt > 1`;
      assert.ok(resubmitted > 0, "its texts went again in a new batch");
      assert.equal(fake.stats.inputs, 0, "none online");
      assert.equal(await w.stop("SIGTERM"), 0);
    } finally {
      await w.stop("SIGKILL");
      await fake.close();
    }
  });
});

Deno.test("batch lane: worker --once submits what it staged and exits; a later --once writes the batch's vectors", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI();
    try {
      // Texts wait an hour before their batch goes, unless --once sends them.
      await quickBatches(sql, { batch_stage_seconds: "3600" });
      await backfillByBatch(sql, 300);
      const first = await runCli(["worker", "--once"], providerEnv(fake, url));
      assert.equal(first.code, 0, first.stderr);
      assert.deepEqual(await batchStates(sql), ["submitted"]);
      assert.equal(await embeddedCount(sql), 0);
      // A later run looks at the batch once it is due a poll (batch_poll_seconds after its submission).
      await waitFor(async () => {
        const [{ due }] =
          await sql`select bool_and(due_at <= now()) as due from util.embedding_batches`;
        return due === true;
      }, { what: "the batch due a poll" });
      const second = await runCli(["worker", "--once"], providerEnv(fake, url));
      assert.equal(second.code, 0, second.stderr);
      await assertAllFresh(sql);
      assert.equal(fake.stats.batchInputs, 300);
      assert.equal(fake.stats.inputs, 0);
      const [{ n }] = await sql`select count(*)::int as n from util.embedding_batch_inputs`;
      assert.equal(n, 0, "the batch's texts and vectors are forgotten once written (I11)");
    } finally {
      await fake.close();
    }
  });
});

Deno.test("batch lane, chunks store: a chunked backfill through batches, an edit during the batch online", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI();
    fake.setBatchBehaviour({ completionDelayMs: 3_600_000 });
    await quickBatches(sql);
    await createArticlesTable(sql, false);
    await sql`
      insert into public.articles (title, body)
      select 'a' || g, '# Article ' || g || E'\n\n' ||
             string_agg('Paragraph ' || p || ' of article ' || g || ' says something of its own.', E'\n\n')
        from generate_series(1, 40) g, generate_series(1, 30) p group by g`;
    await sql`
      select util.enable_embeddings('public.articles', 'article_text',
        destination => 'public.article_chunks', model => ${TEST_MODEL}, dimensions => ${TEST_DIMENSIONS},
        chunk_size => ${ARTICLE_SETTINGS.chunkSize}, chunk_overlap => ${ARTICLE_SETTINGS.chunkOverlap},
        splitter => ${ARTICLE_SETTINGS.splitter}, lane => 'batch')`;
    const w = worker(fake, url);
    try {
      await waitFor(async () => {
        const [s] = await sql`select parked, batch_texts from util.embedding_status`;
        return Number(s.parked) === 40 && (await batchStates(sql)).includes("submitted");
      }, { what: "every article parked for its batch" });
      await sql`update public.articles set body = body || E'\n\nAn edit of article one.' where id = 1`;
      await waitFor(async () => {
        const [{ n }] =
          await sql`select count(*)::int as n from public.article_chunks where source_id = 1`;
        return n > 0;
      }, { what: "the edited article's chunks written online" });
      fake.setBatchBehaviour({ completionDelayMs: 0 });
      await waitFor(async () => (await chunkProblems(sql)).length === 0, {
        what: "every article's chunks written",
        timeoutMs: 60_000,
      });
      const online = fake.stats.inputs;
      assert.ok(online > 0 && online < 20, `the edit's chunks went online (${online})`);
      const [{ total }] = await sql`select count(*)::int as total from public.article_chunks`;
      assert.ok(
        fake.stats.batchInputs >= total - online,
        `${fake.stats.batchInputs} of ${total} chunks through the batch`,
      );
      assert.equal(await w.stop("SIGTERM"), 0);
    } finally {
      await w.stop("SIGKILL");
      await fake.close();
    }
  });
});
