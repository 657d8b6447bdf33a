// Scenario 11, a shared rate budget (issue 23, I17): a backlog drained by
// three workers and push together against a provider that enforces
// OpenAI-style limits (requests and tokens per minute over sliding
// one-minute windows, with OpenAI's x-ratelimit-* headers and Retry-After).
// The same drive runs the code as it was before the budget (a worktree of
// BEFORE_COMMIT: its workers and its embed function, on the same database)
// and the code of this tree, one after the other in the same run.
import { join } from "node:path";
import { ROOT } from "../../local/config.ts";
import { capture } from "../../local/proc.ts";
import { spawnProcess, type WorkerProcess } from "../../devtools/cli.ts";
import { type FakeOpenAI, startFakeOpenAI } from "../../devtools/fake_openai.ts";
import { tokenCounterFor } from "../../supabase/functions/_shared/providers/tokens.ts";
import { sleep } from "../../supabase/functions/_shared/sleep.ts";
import { fmt, Section } from "../report.ts";
import {
  attach,
  type BenchContext,
  cloneDb,
  counts,
  MODEL,
  providerEnv,
  startPushPath,
} from "../stack.ts";

/** main before issue 23: no rate budget, each caller learns of the limit from its own 429s. */
export const BEFORE_COMMIT = "1a4f3d7";

/** OpenAI-style limits of the drive (the bench: 60,000 TPM, 600 RPM). */
export const LIMITS = { requestsPerMinute: 600, tokensPerMinute: 60_000 };
const WORKERS = 3;
const WORKER_ARGS = [
  "-c",
  "2",
  "--batch-size",
  "100",
  "--poll-interval",
  "200ms",
  "--visibility-timeout",
  "120s",
];
/** Provider latency: a realistic embeddings request, not the 20 ms of the throughput scenarios. */
const LATENCY_MS = 150;

export interface RateBudgetRun {
  code: string;
  /** The provider's window at the start: empty, or full as at the limit for a minute. */
  window: "empty" | "full";
  rows: number;
  tokens: number;
  seconds: number;
  idealSeconds: number;
  /** Tokens per minute achieved over the drain, as a share of the limit. */
  tpmShare: number;
  requests: number;
  rateLimited: number;
  deadLettered: number;
}

export interface RateBudgetFigures {
  section: Section;
  runs: RateBudgetRun[];
}

/** A worktree of BEFORE_COMMIT under .local-stack (made once, left for the next run). */
async function beforeTree(): Promise<string> {
  const path = join(ROOT, ".local-stack", `before-${BEFORE_COMMIT}`);
  try {
    await Deno.stat(join(path, "cli", "autoembed.ts"));
    return path;
  } catch {
    const { code, stderr } = await capture("git", [
      "worktree",
      "add",
      "--detach",
      path,
      BEFORE_COMMIT,
    ], { cwd: ROOT });
    if (code !== 0) throw new Error(`git worktree add failed: ${stderr}`);
    return path;
  }
}

/** A row's text: about 40 tokens, distinct per row. */
function rowsSql(count: number): string {
  return `
    insert into public.bench_docs (title, body)
    select 'document ' || g, repeat('lorem ipsum dolor sit amet consectetur ', 5) || 'rate ' || g
      from generate_series(1, ${count}) g`;
}

async function drive(
  ctx: BenchContext,
  label: string,
  code: string,
  tree: string,
  rows: number,
  window: "empty" | "full",
) {
  const db = await cloneDb(`rate_${label}`);
  const env = { DATABASE_URL: db.url };
  const workers: WorkerProcess[] = [];
  let fake: FakeOpenAI | undefined;
  let push;
  let ticking = true;
  let tick: Promise<void> | undefined;
  try {
    await attach(db.sql, false);
    // Its limits set (and its window filled) once the callers are up: only the drain is measured.
    fake = await startFakeOpenAI({ latencyMs: LATENCY_MS });
    Object.assign(env, providerEnv(fake));
    push = await startPushPath(db, fake, {}, join(tree, "supabase", "functions"));
    for (let i = 0; i < WORKERS; i++) {
      workers.push(
        spawnProcess(
          Deno.execPath(),
          ["run", "-A", join(tree, "cli", "autoembed.ts"), "worker", ...WORKER_ARGS],
          env,
          tree,
        ),
      );
    }
    await Promise.all(workers.map((w) => w.waitForLine(/"event":"started"/, 60_000)));
    fake.setRateLimits({ ...LIMITS, startFull: window === "full" });
    const started = performance.now();
    await db.sql.unsafe(rowsSql(rows));
    const texts = await db.sql<{ t: string }[]>`
      select public.bench_docs_input(d) as t from public.bench_docs d`;
    const counter = tokenCounterFor(MODEL);
    const tokens = texts.reduce((sum, { t }) => sum + counter.count(t), 0);
    // pg_cron's tick, as on Supabase (the continuation keeps push going between ticks).
    tick = (async () => {
      while (ticking) {
        await db.sql`select util.process_embeddings(100, 2)`.catch(() => {});
        await sleep(10_000);
      }
    })();
    for (;;) {
      const now = await counts(db.sql);
      if (now.embedded === rows && now.queued === 0) break;
      if (performance.now() - started > 20 * 60_000) {
        throw new Error(`${code}: ${now.embedded}/${rows} embedded after 20 minutes`);
      }
      await sleep(250);
    }
    const seconds = (performance.now() - started) / 1000;
    const [{ dead }] = await db.sql`select count(*)::int as dead from pgmq.a_embedding_jobs`;
    const run: RateBudgetRun = {
      code,
      window,
      rows,
      tokens,
      seconds,
      idealSeconds: (tokens / LIMITS.tokensPerMinute) * 60,
      tpmShare: fake.stats.tokens / (seconds / 60) / LIMITS.tokensPerMinute,
      requests: fake.stats.requests,
      rateLimited: fake.stats.rateLimited,
      deadLettered: dead,
    };
    ctx.log(`rate budget (${code}): ${JSON.stringify(run)}`);
    return run;
  } finally {
    ticking = false;
    await tick;
    await Promise.all(workers.map((w) => w.stop("SIGTERM")));
    await push?.stop();
    await fake?.close();
    await db.drop();
  }
}

export async function rateBudgetScenario(ctx: BenchContext): Promise<RateBudgetFigures> {
  const rows = ctx.quick ? 600 : 3000;
  const before = await beforeTree();
  const runs: RateBudgetRun[] = [];
  for (const window of ["full", "empty"] as const) {
    runs.push(
      await drive(ctx, `before_${window}`, `before (${BEFORE_COMMIT})`, before, rows, window),
    );
    runs.push(await drive(ctx, `after_${window}`, "after (this tree)", ROOT, rows, window));
  }
  const section = new Section("11. Shared rate budget (issue 23)");
  section.text(
    `${
      rows.toLocaleString("en-US")
    } rows (about 40 tokens each, counted with cl100k_base) drained ` +
      `by ${WORKERS} workers (\`worker ${WORKER_ARGS.join(" ")}\`) and push ` +
      "(`util.process_embeddings(100, 2)` every 10 s, as pg_cron, plus its continuation) " +
      `together, against the fake provider limited to ${
        LIMITS.tokensPerMinute.toLocaleString("en-US")
      } tokens and ${LIMITS.requestsPerMinute} requests per minute over sliding one-minute ` +
      `windows (${LATENCY_MS} ms per request; 429 with Retry-After and OpenAI's x-ratelimit-* ` +
      `headers). "before" is commit ${BEFORE_COMMIT} (its workers and embed function), ` +
      'on the same database schema; "after" is this tree. One run of each, in the same bench ' +
      "run, with the provider's window full at the start (as for an account that has been at " +
      "its limit for a minute: room comes back at the limit's rate, the steady state of a long " +
      "backlog, where tokens / TPM is the ideal drain) and empty (a whole minute's worth is " +
      "allowed at once, and again a minute later, so two minutes' tokens can go in about one: " +
      "tokens / TPM then overstates the ideal, and tokens per minute may pass the limit).",
  );
  section.table(
    [
      "code",
      "window at start",
      "drain",
      "tokens / TPM",
      "tokens/min, % of limit",
      "requests",
      "429s",
      "dead letters",
    ],
    runs.map((r) => [
      r.code,
      r.window,
      `${fmt(r.seconds, 1)} s`,
      `${fmt(r.idealSeconds, 1)} s`,
      `${Math.round(r.tpmShare * LIMITS.tokensPerMinute).toLocaleString("en-US")} (${
        Math.round(r.tpmShare * 100)
      }%)`,
      String(r.requests),
      `${r.rateLimited} (${fmt((r.rateLimited / Math.max(1, r.requests)) * 100, 1)}%)`,
      String(r.deadLettered),
    ]),
  );
  return { section, runs };
}
