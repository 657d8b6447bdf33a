// The local stack's stand-in for pg_cron's seconds schedules. Debian 12's
// pg_cron (1.4) has none, so the schedule migration fell back to running
// `process-embeddings` every minute; while the stack runs, this runs that
// job's own command every 10 s, as Supabase's pg_cron does. Where pg_cron
// already runs the job in seconds, or the job was changed by hand, it stays off.
import postgres from "postgres";

/** The pg_cron job of the schedule migration, and the interval it asks for. */
export const PUSH_JOB = "process-embeddings";
export const PUSH_INTERVAL_MS = 10_000;

/** The schedule the migration falls back to when pg_cron refuses seconds. */
export const MINUTE_FALLBACK = "* * * * *";

/** application_name of the tick's session, so a command can tell its runs apart. */
export const PUSH_TICK_APPLICATION_NAME = "autoembed push tick";

/** The fields of a cron.job row the decision needs. */
export interface CronJob {
  schedule: string;
  command: string;
  database: string;
  username: string;
  active: boolean;
}

export type TickPlan =
  | { tick: true; reason: string }
  | { tick: false; reason: string };

/**
 * Whether the local stack must tick `job` itself: only the migration's
 * per-minute fallback, active, in the database the stack serves. A seconds
 * schedule means pg_cron already ticks; any other schedule was chosen by hand.
 */
export function planPushTick(
  job: CronJob | null,
  database: string,
  options: { jobName?: string; intervalMs?: number } = {},
): TickPlan {
  const name = options.jobName ?? PUSH_JOB;
  const seconds = (options.intervalMs ?? PUSH_INTERVAL_MS) / 1000;
  if (!job) return { tick: false, reason: `no pg_cron job ${name} in database ${database}` };
  if (/^\s*\d+\s+seconds?\s*$/i.test(job.schedule)) {
    return { tick: false, reason: `pg_cron runs ${name} every ${job.schedule.trim()}` };
  }
  if (job.database !== database) {
    return { tick: false, reason: `${name} runs in database ${job.database}, not ${database}` };
  }
  if (!job.active) return { tick: false, reason: `${name} is inactive in cron.job` };
  if (job.schedule.trim().split(/\s+/).join(" ") !== MINUTE_FALLBACK) {
    return { tick: false, reason: `${name} keeps its own schedule '${job.schedule}'` };
  }
  return {
    tick: true,
    reason: `pg_cron schedules ${name} per minute (no seconds schedules before pg_cron 1.5); ` +
      `the local stack runs it every ${seconds} s`,
  };
}

export interface PushTickOptions {
  /** Database whose pg_cron job is ticked (the stack's `postgres`). */
  dbUrl: string;
  jobName?: string;
  intervalMs?: number;
  /** One line when the plan changes, on the first tick, and per new error; never a command's text. */
  log?: (line: string) => void;
}

export interface PushTick {
  /** The plan at start, e.g. to print which component ticks. */
  readonly plan: TickPlan;
  /** Reads of the job (one per interval), runs of its command that completed, failed intervals. */
  readonly stats: { checks: number; ticks: number; errors: number };
  stop(): Promise<void>;
}

/**
 * Starts ticking. The job is read again before every tick, so unscheduling,
 * pausing or rescheduling it (cron.alter_job) takes effect at the next one.
 * The first tick runs at once; a tick that overruns the interval delays the
 * next, as pg_cron never runs a job twice at the same time.
 */
export async function startPushTick(options: PushTickOptions): Promise<PushTick> {
  const jobName = options.jobName ?? PUSH_JOB;
  const intervalMs = options.intervalMs ?? PUSH_INTERVAL_MS;
  const log = options.log ?? (() => {});
  const database = decodeURIComponent(new URL(options.dbUrl).pathname.slice(1)) || "postgres";
  const sql = postgres(options.dbUrl, {
    max: 1,
    onnotice: () => {},
    connect_timeout: 10,
    connection: { application_name: PUSH_TICK_APPLICATION_NAME },
  });
  const stats = { checks: 0, ticks: 0, errors: 0 };

  async function readPlan(): Promise<{ plan: TickPlan; job: CronJob | null }> {
    const [cron] = await sql`select to_regclass('cron.job') is not null as present`;
    if (!cron.present) return { plan: planPushTick(null, database, options), job: null };
    const [job] = await sql<CronJob[]>`
      select schedule, command, database, username, active
        from cron.job where jobname = ${jobName}
       order by jobid desc limit 1`;
    return { plan: planPushTick(job ?? null, database, options), job: job ?? null };
  }

  let lastReason = "";
  let lastError = "";
  async function tick(): Promise<void> {
    try {
      const { plan, job } = await readPlan();
      stats.checks++;
      if (plan.reason !== lastReason && lastReason !== "") log(plan.reason);
      lastReason = plan.reason;
      if (!plan.tick || !job) return;
      // As pg_cron does: the job's command, as the job's user, in a transaction of its own.
      await sql.begin(async (tx) => {
        await tx`select set_config('role', ${job.username}, true)`;
        await tx.unsafe(job.command).simple();
      });
      stats.ticks++;
      if (stats.ticks === 1) log(`first tick ran ${jobName}`);
      lastError = "";
    } catch (err) {
      stats.errors++;
      const message = (err as Error).message ?? String(err);
      if (message !== lastError) {
        log(`${jobName} failed: ${message}; trying again in ${intervalMs / 1000} s`);
      }
      lastError = message;
    }
  }

  const initial = await readPlan();
  lastReason = initial.plan.reason;
  let stopped = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let running: Promise<void> = Promise.resolve();
  const loop = async () => {
    const started = Date.now();
    running = tick();
    await running;
    if (!stopped) timer = setTimeout(loop, Math.max(0, intervalMs - (Date.now() - started)));
  };
  await loop();

  return {
    plan: initial.plan,
    stats,
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await running;
      await sql.end({ timeout: 2 });
    },
  };
}
