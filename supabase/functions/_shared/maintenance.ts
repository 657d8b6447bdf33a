// Maintenance tasks the embed function runs by name when util.process_embeddings
// asks for them (util._request_maintenance): a body of {"maintenance":
// ["<task>", ...]} instead of a JSON array of jobs. Each task is long, calls
// the provider, or cannot run in SQL (CREATE INDEX CONCURRENTLY), so it runs
// here, beside the calls that carry jobs. A new task is one more entry in TASKS.
import type postgres from "postgres";
import { runBatchTick } from "./batch_tick.ts";
import type { CoreSettings } from "./settings.ts";
import { buildTwinIndexes } from "./twin_indexes.ts";

export interface MaintenanceContext {
  dbUrl: string;
  /** The function's pool, for the tasks that need no session of their own. */
  sql: postgres.Sql;
  settings: Pick<CoreSettings, "batchAccountFor" | "batchLinesPerCall">;
  log: (event: Record<string, unknown>) => void;
  /** The runtime's shutdown: a task ends at once (what the server runs for it goes on there). */
  signal?: AbortSignal;
}

type Task = (ctx: MaintenanceContext) => Promise<unknown>;

const TASKS: Record<string, Task> = {
  /**
   * The batch lane's due batches (batch_tick.ts): submitted, polled, their
   * output applied within the call's line budget (EMBED_BATCH_LINES_PER_CALL).
   */
  batches: (ctx) =>
    runBatchTick(ctx.sql, {
      accountFor: ctx.settings.batchAccountFor,
      maxLines: ctx.settings.batchLinesPerCall,
      signal: ctx.signal,
      log: ctx.log,
    }),
  /** Index twins of model changes whose new vectors are all in (twin_indexes.ts). */
  indexes: (ctx) =>
    buildTwinIndexes(ctx.dbUrl, {
      log: ctx.log,
      applicationName: "autoembed embed",
      signal: ctx.signal,
    }),
};

export const MAINTENANCE_TASKS = Object.keys(TASKS);

/**
 * The tasks a request body names: null when it is not a maintenance request
 * (not an object with a `maintenance` key), an error for one that names no
 * known task or names one twice.
 */
export function parseMaintenance(json: unknown): { tasks: string[] } | { error: string } | null {
  if (
    json === null || typeof json !== "object" || Array.isArray(json) || !("maintenance" in json)
  ) {
    return null;
  }
  const tasks = (json as { maintenance: unknown }).maintenance;
  if (!Array.isArray(tasks) || tasks.length === 0 || tasks.some((t) => typeof t !== "string")) {
    return { error: "maintenance must be a non-empty array of task names" };
  }
  // The unknown names are not echoed: the answer says which are known.
  const unknown = tasks.filter((t) => !Object.hasOwn(TASKS, t)).length;
  if (unknown) {
    return {
      error: `${unknown} unknown maintenance task(s); known: ${MAINTENANCE_TASKS.join(", ")}`,
    };
  }
  if (new Set(tasks).size !== tasks.length) return { error: "a maintenance task is named twice" };
  return { tasks };
}

/** Runs `tasks` in order: each one's result, and whether any failed (logged, asked for again later). */
export async function runMaintenance(
  tasks: string[],
  ctx: MaintenanceContext,
): Promise<{ results: Record<string, unknown>; failed: boolean }> {
  const results: Record<string, unknown> = {};
  let failed = false;
  for (const task of tasks) {
    try {
      results[task] = await TASKS[task](ctx);
    } catch (err) {
      failed = true;
      ctx.log({
        event: "maintenance_failed",
        task,
        message: String((err as Error)?.message).slice(0, 200),
      });
      results[task] = { error: "failed; it is asked for again at a later tick" };
    }
  }
  return { results, failed };
}
