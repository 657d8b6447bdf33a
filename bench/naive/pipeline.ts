// The naive reference pipeline's scheduler and embed function, built the
// straightforward guide-style way: every 10 s a cron tick reads a fixed slice
// of 100 jobs and sends them as 10 concurrent requests of 10 jobs; each
// request processes its jobs one by one: read the row's text, one provider
// call with one input, one UPDATE, one pgmq.delete. Requests run in this
// process instead of behind pg_net and HTTP, which only flatters it.
import OpenAI from "openai";
import postgres from "postgres";
import { sleep } from "../../supabase/functions/_shared/sleep.ts";

export const NAIVE_SQL = new URL("./naive.sql", import.meta.url);

export const TICK_MS = 10_000;
export const BATCH_SIZE = 10;
export const MAX_REQUESTS = 10;
/** The guide's call timeout, which it also uses as the visibility timeout. */
const TIMEOUT_SECONDS = 5 * 60;

interface NaiveJob {
  jobId: number;
  id: number;
  schema: string;
  table: string;
  contentFunction: string;
  embeddingColumn: string;
}

export interface NaiveRun {
  ticks: number;
  jobsDone: number;
  jobsFailed: number;
  /** Wall time of each tick's work (read + all its requests). */
  tickWorkMs: number[];
  /** From the first tick to the end of the last tick's work. */
  seconds: number;
}

export interface NaiveOptions {
  dbUrl: string;
  baseURL: string;
  apiKey: string;
  model: string;
  /** Ticks start at 0, TICK_MS, 2 * TICK_MS, ... while below this. */
  durationMs: number;
}

/** Installs the naive triggers and queue on bench_docs. */
export async function installNaive(sql: postgres.Sql): Promise<void> {
  await sql.unsafe(await Deno.readTextFile(NAIVE_SQL)).simple();
}

/** Runs the naive pipeline's cron ticks for `durationMs`, then waits for their work to end. */
export async function runNaive(options: NaiveOptions): Promise<NaiveRun> {
  const sql = postgres(options.dbUrl, { max: MAX_REQUESTS, onnotice: () => {} });
  const openai = new OpenAI({ apiKey: options.apiKey, baseURL: options.baseURL, maxRetries: 0 });
  const run: NaiveRun = { ticks: 0, jobsDone: 0, jobsFailed: 0, tickWorkMs: [], seconds: 0 };

  async function processJob(job: NaiveJob): Promise<void> {
    const [row] = await sql`
      select id, ${sql(job.contentFunction)}(t) as content
        from ${sql(job.schema)}.${sql(job.table)} t
       where id = ${job.id}`;
    if (!row) throw new Error(`row not found: ${job.schema}.${job.table}/${job.id}`);
    const response = await openai.embeddings.create({ model: options.model, input: row.content });
    const embedding = response.data[0].embedding;
    await sql`
      update ${sql(job.schema)}.${sql(job.table)}
         set ${sql(job.embeddingColumn)} = ${JSON.stringify(embedding)}
       where id = ${job.id}`;
    await sql`select pgmq.delete('naive_jobs', ${job.jobId}::bigint)`;
  }

  /** One call of the embed function: its jobs in order, one at a time. */
  async function request(jobs: NaiveJob[]): Promise<void> {
    for (const job of jobs) {
      try {
        await processJob(job);
        run.jobsDone++;
      } catch {
        run.jobsFailed++;
      }
    }
  }

  /** process_embeddings: one read of a fixed slice, split into fixed-size requests. */
  async function tick(): Promise<void> {
    const started = performance.now();
    const messages = await sql<{ msg_id: string; message: Omit<NaiveJob, "jobId"> }[]>`
      select msg_id, message
        from pgmq.read(queue_name => 'naive_jobs', vt => ${TIMEOUT_SECONDS},
                       qty => ${MAX_REQUESTS * BATCH_SIZE})`;
    const jobs = messages.map((m) => ({ ...m.message, jobId: Number(m.msg_id) }));
    const requests: Promise<void>[] = [];
    for (let i = 0; i < jobs.length; i += BATCH_SIZE) {
      requests.push(request(jobs.slice(i, i + BATCH_SIZE)));
    }
    await Promise.all(requests);
    run.tickWorkMs.push(performance.now() - started);
  }

  const started = performance.now();
  const ticks: Promise<void>[] = [];
  try {
    for (let at = 0; at < options.durationMs; at += TICK_MS) {
      const wait = started + at - performance.now();
      if (wait > 0) await sleep(wait);
      run.ticks++;
      ticks.push(tick());
    }
    await Promise.all(ticks);
    run.seconds = (performance.now() - started) / 1000;
  } finally {
    await sql.end({ timeout: 5 });
  }
  return run;
}
