// `autoembed worker --metrics-port N`: Prometheus text format, as a scraper
// reads it from the real worker process: this worker's rows, provider calls,
// tokens and 429s; the database's queue depth, oldest job age and the
// time-to-fresh histogram.
import assert from "node:assert/strict";
import { providerEnv, spawnWorker } from "../../devtools/cli.ts";
import { withTestDb } from "../../devtools/db.ts";
import { startFakeOpenAI } from "../../devtools/fake_openai.ts";
import { createDocuments, TEST_MODEL } from "../../devtools/pipeline.ts";
import { waitFor } from "../../devtools/wait.ts";
import { tokenCounterFor } from "../../supabase/functions/_shared/providers/tokens.ts";
import { assertAllFresh, insertRows } from "../_support/rows.ts";

/** The value of the series `series` (name and labels exactly as printed), or undefined. */
function value(text: string, series: string): number | undefined {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

Deno.test("worker --metrics-port serves Prometheus metrics of the worker and of the database", async () => {
  await withTestDb(async (sql, url) => {
    const fake = await startFakeOpenAI();
    const worker = spawnWorker(
      ["--metrics-port", "0", "--poll-interval", "200ms"],
      providerEnv(fake, url),
    );
    try {
      await createDocuments(sql);
      const line = await worker.waitForLine(/"event":"metrics"/);
      const metricsUrl = JSON.parse(line).url as string;
      const scrape = async () => {
        const res = await fetch(metricsUrl);
        assert.equal(res.status, 200);
        assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
        return await res.text();
      };

      // One 429 first (the rows wait, no attempt spent), then the rows embed.
      fake.setFault({ kind: "status", status: 429, times: 1, retryAfter: "0" });
      await insertRows(sql, 30);
      await waitFor(
        async () => (await sql`select count(*)::int as n from pgmq.q_embedding_jobs`)[0].n === 0,
        {
          what: "the worker to drain the queue",
          timeoutMs: 30_000,
        },
      );
      await assertAllFresh(sql);
      const texts =
        (await sql<{ text: string }[]>`select documents_input(d) as text from documents d`)
          .map((r) => r.text);
      const tokens = texts.reduce((sum, t) => sum + tokenCounterFor(TEST_MODEL).count(t), 0);
      const target = 'schema="public",table="documents",column="embedding"';

      let text = "";
      await waitFor(async () => {
        text = await scrape();
        return value(text, "autoembed_rows_embedded_total") === 30;
      }, { what: "the scrape to count the rows", timeoutMs: 10_000 });
      assert.equal(value(text, "autoembed_provider_rate_limited_total"), 1, text);
      assert.equal(value(text, "autoembed_provider_inputs_total"), 60, "30 answered 429, then 30");
      assert.equal(value(text, 'autoembed_provider_tokens_total{kind="online"}'), tokens);
      // The 429 paused the budget: the batch slept before it went again whole.
      assert.ok((value(text, "autoembed_budget_waits_total") ?? 0) >= 1, text);
      assert.ok((value(text, "autoembed_budget_wait_seconds_total") ?? 0) > 0, text);
      assert.equal(value(text, `autoembed_queue_rows{${target}}`), 0);
      assert.equal(value(text, `autoembed_queue_oldest_job_age_seconds{${target}}`), 0);
      assert.equal(value(text, `autoembed_embedded_rows{${target}}`), 30);
      assert.equal(value(text, `autoembed_time_to_fresh_seconds_count{${target}}`), 30);
      assert.equal(value(text, `autoembed_time_to_fresh_seconds_bucket{${target},le="+Inf"}`), 30);
      assert.match(text, /# TYPE autoembed_time_to_fresh_seconds histogram/);
      assert.ok(!text.includes("content of"), "no embedded text in the metrics");

      // While the provider is down, rows wait in the queue: the next scrapes show them.
      fake.setFault({ kind: "outage", untilMs: Date.now() + 60_000 });
      await insertRows(sql, 5, { prefix: "later" });
      await waitFor(async () => {
        text = await scrape();
        return value(text, `autoembed_queue_rows{${target}}`) === 5 &&
          value(text, `autoembed_queue_oldest_job_age_seconds{${target}}`)! > 0;
      }, { what: "the scrape to show the queued rows", timeoutMs: 10_000 });
      fake.setFault(null);
    } finally {
      await worker.stop("SIGTERM").catch(() => {});
      await fake.close();
    }
  });
});
