// Scenario 3, freshness: commit of a single-row UPDATE → its new embedding
// committed, for a steady trickle of updates, with the listening worker and
// with push mode (10 s tick alone, and the kick on change with the tick).
import postgres from "postgres";
import { fmt, percentile, Section } from "../report.ts";
import {
  attach,
  type BenchContext,
  type BenchDb,
  cloneDb,
  insertRows,
  providerEnv,
  startPushPath,
  startWorker,
} from "../stack.ts";
import { sleep } from "../../supabase/functions/_shared/sleep.ts";

const TABLE_ROWS = 2_000;
const RATE_PER_SECOND = 10;

export interface Latencies {
  p50: number;
  p95: number;
  p99: number;
  max: number;
  seen: number;
  sent: number;
}

/**
 * Sends `count` single-row updates at RATE_PER_SECOND, each changing one
 * distinct row's text, and returns commit → embedding-committed latencies in
 * ms. A bench-only trigger NOTIFYs when a row's embedding is written; the
 * notification is delivered when that write commits.
 */
async function measure(db: BenchDb, count: number): Promise<Latencies> {
  const listener = postgres(db.url, { max: 1, onnotice: () => {} });
  const committedAt = new Map<number, number>();
  const visibleAt = new Map<number, number>();
  try {
    await listener.listen("bench_embedded", (payload) => {
      const id = Number(payload);
      if (!visibleAt.has(id)) visibleAt.set(id, performance.now());
    });
    const ids = Array.from({ length: TABLE_ROWS }, (_, i) => i + 1)
      .sort(() => Math.random() - 0.5).slice(0, count);
    const started = performance.now();
    const updates: Promise<void>[] = [];
    for (let i = 0; i < ids.length; i++) {
      const wait = started + (i * 1000) / RATE_PER_SECOND - performance.now();
      if (wait > 0) await sleep(wait);
      const id = ids[i];
      updates.push(
        db.sql`update bench_docs set body = ${`fresh text ${i} ${crypto.randomUUID()}`} where id = ${id}`
          .then(() => void committedAt.set(id, performance.now())),
      );
    }
    await Promise.all(updates);
    const deadline = performance.now() + 30_000;
    while (visibleAt.size < ids.length && performance.now() < deadline) await sleep(50);
    const latencies = ids.filter((id) => visibleAt.has(id))
      .map((id) => visibleAt.get(id)! - committedAt.get(id)!);
    return {
      p50: percentile(latencies, 50),
      p95: percentile(latencies, 95),
      p99: percentile(latencies, 99),
      max: Math.max(...latencies),
      seen: latencies.length,
      sent: ids.length,
    };
  } finally {
    await listener.end({ timeout: 2 });
  }
}

async function prepare(ctx: BenchContext, label: string): Promise<BenchDb> {
  const db = await cloneDb(label);
  await attach(db.sql, false);
  await insertRows(db.sql, TABLE_ROWS, "fresh");
  const worker = startWorker(["--once", "-c", "4"], {
    DATABASE_URL: db.url,
    ...providerEnv(ctx.fake),
  });
  if ((await worker.finished()).code !== 0) throw new Error("initial drain failed");
  await db.sql.unsafe(`
    create function public.bench_notify_embedded() returns trigger language plpgsql as $$
    begin
      perform pg_notify('bench_embedded', new.id::text);
      return null;
    end $$;
    create trigger bench_embedded after update of embedding on public.bench_docs
      for each row when (new.embedding is not null) execute function public.bench_notify_embedded();
  `).simple();
  return db;
}

function print(ctx: BenchContext, label: string, l: Latencies) {
  ctx.log(
    `  ${label}: p50 ${fmt(l.p50)} ms, p95 ${fmt(l.p95)} ms, p99 ${fmt(l.p99)} ms, max ${
      fmt(l.max)
    } ms (${l.seen}/${l.sent} seen)`,
  );
}

export interface FreshnessFigures {
  section: Section;
  worker: Latencies;
  /** Push mode with the 10 s tick alone (kick_on_change off): before. */
  pushTick: Latencies;
  /** Push mode with the kick and the 10 s tick as the safety net: after. */
  push: Latencies;
}

/** The tick of Supabase's pg_cron schedule (10 s), emulated as local/push_tick.ts does. */
const TICK_MS = 10_000;

/** Push mode only (pg_net shim + embed function, no worker), ticking every TICK_MS. */
async function measurePush(
  ctx: BenchContext,
  label: string,
  kick: boolean,
  count: number,
): Promise<Latencies> {
  const db = await prepare(ctx, label);
  const path = await startPushPath(db, ctx.fake);
  await db.sql`update util.settings set value = ${
    kick ? "on" : "off"
  } where name = 'kick_on_change'`;
  const stopTicking = new AbortController();
  const ticker = (async () => {
    while (!stopTicking.signal.aborted) {
      await db.sql`select util.process_embeddings()`;
      await sleep(TICK_MS, stopTicking.signal);
    }
  })();
  try {
    return await measure(db, count);
  } finally {
    stopTicking.abort();
    await ticker;
    await path.stop();
    await db.drop();
  }
}

export async function freshnessScenario(ctx: BenchContext): Promise<FreshnessFigures> {
  const count = ctx.quick ? 50 : 200;
  ctx.log(`3. freshness (${count} updates at ${RATE_PER_SECOND}/s)`);

  let worker: Latencies;
  {
    const db = await prepare(ctx, "fresh_worker");
    const proc = startWorker(["-c", "1"], { DATABASE_URL: db.url, ...providerEnv(ctx.fake) });
    try {
      await proc.process.waitForLine(/"event":"started".*"listening":true/, 60_000);
      worker = await measure(db, count);
      print(ctx, "listening worker (-c 1)", worker);
    } finally {
      await proc.stop();
      await db.drop();
    }
  }

  const pushTick = await measurePush(ctx, "fresh_push_tick", false, count);
  print(ctx, "push, 10 s tick only (kick_on_change off)", pushTick);
  const push = await measurePush(ctx, "fresh_push_kick", true, count);
  print(ctx, "push, kick + 10 s tick", push);

  const section = new Section("3. Freshness latency");
  section.text(`
${count} single-row UPDATEs at ${RATE_PER_SECOND}/s, each changing the text of a distinct row of a
${TABLE_ROWS.toLocaleString("en-US")}-row embedded table. Latency = from the UPDATE's commit (its
reply to the client) to the commit of its new embedding, observed through a bench-only trigger
that NOTIFYs when the embedding column is written (a notification is delivered on commit). Push
rows: pg_net (the local shim's dispatcher) and the embed function only, no worker, with
\`util.process_embeddings()\` ticked every ${
    TICK_MS / 1000
  } s as Supabase's pg_cron schedule does.`);
  const row = (label: string, l: Latencies) => [
    label,
    fmt(l.p50),
    fmt(l.p95),
    fmt(l.p99),
    fmt(l.max),
    `${l.seen}/${l.sent}`,
  ];
  section.table(["mode", "p50 ms", "p95 ms", "p99 ms", "max ms", "embedded"], [
    row("pull: listening worker, `worker -c 1` (LISTEN, 5 s fallback poll)", worker),
    row(`push: ${TICK_MS / 1000} s tick only (kick_on_change off; before)`, pushTick),
    row(`push: kick on change + ${TICK_MS / 1000} s tick (kick_on_change on; after)`, push),
  ]);
  section.text(`
With the tick alone an update waits for the next tick, uniformly between 0 and the interval, then
as long as a call takes. With the kick, the first change that finds no call in flight POSTs one
request through pg_net on commit, which runs \`util.process_embeddings\` at once; later changes
ride the calls then in flight (each finished call asks for the next slice). pg_cron 1.4 (Debian
12, no second schedules) falls back to a per-minute tick; the kick does not depend on it.`);
  return { section, worker, pushTick, push };
}
