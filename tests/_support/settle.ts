// Drives the push path the way pg_cron would, until the pipeline has nothing
// left to do: no queued job, no call in flight, no sweep (backfill, recheck)
// in progress and, unless told otherwise, no model change in progress.
import type { Sql } from "../../devtools/db.ts";
import { waitFor } from "../../devtools/wait.ts";

export interface SettleOptions {
  batchSize?: number;
  maxRequests?: number;
  /** Also wait for model changes in progress to switch (default true). */
  switches?: boolean;
  waitMs?: number;
}

/** Ticks util.process_embeddings (which runs util.maintain_embeddings) until all is done. */
export async function settle(sql: Sql, options: SettleOptions = {}): Promise<void> {
  const tick = () =>
    sql`select util.process_embeddings(${options.batchSize ?? 100}, ${
      options.maxRequests ?? 4
    }, 10000)`;
  // At least one tick, as cron would make: it notices what changed since the last one.
  await tick();
  await waitFor(async () => {
    const [row] = await sql`
      select (select count(*) from pgmq.q_embedding_jobs)::int as queued,
             (select count(*) from util.embedding_requests where expires_at > now())::int as in_flight,
             (select count(*) from util.embedding_targets where sweep_started_at is not null)::int as sweeping,
             (select count(*) from util.embedding_targets
               where shadow_of is not null or retired_at is not null)::int as switching`;
    const done = row.queued === 0 && row.in_flight === 0 && row.sweeping === 0 &&
      (options.switches === false || row.switching === 0);
    if (!done && row.in_flight === 0) await tick();
    return done;
  }, { what: "the pipeline to settle", timeoutMs: options.waitMs ?? 60_000 });
}
