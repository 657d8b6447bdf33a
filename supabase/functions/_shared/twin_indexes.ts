// Builds the index twins of model changes whose new vectors are all in: the
// twins of the live store's vector indexes wait for a full shadow store
// (util._twin_index_builds), and are built then with CREATE INDEX
// CONCURRENTLY, which no function and no transaction may run. So this runs
// the statements SQL hands it, one at a time, on a session of its own in
// autocommit: the user's table keeps taking writes and searches keep using
// the live indexes meanwhile. The worker and the embed function both call it.
import postgres from "postgres";
import { errorCode, isConnectionError } from "./db_errors.ts";

export interface TwinIndexOptions {
  /** Events (JSON-ready, never row text): each statement run, its time, or its failure. */
  log?: (event: Record<string, unknown>) => void;
  applicationName?: string;
  /**
   * Ends the run at once when aborted (its connection is closed): a build
   * the server is running goes on there and keeps the lock until it ends.
   */
  signal?: AbortSignal;
}

export interface TwinIndexResult {
  /** Statements that built a twin. */
  built: number;
  /** Statements that dropped the leftover of a failed build. */
  dropped: number;
  /** Statements that failed (each recorded in util.embedding_errors). */
  failed: number;
  /** Another session was building: this one did nothing. */
  busy: boolean;
  /** Whether util.maintain_embeddings ran after the builds (it switches what they finished). */
  switched: boolean;
}

interface Build {
  shadow_id: number;
  twin_name: string;
  statement: string;
}

/**
 * Builds what util._begin_twin_index_builds hands out, in order, then lets
 * util.maintain_embeddings switch the changes it finished. A statement that
 * fails is recorded (util._twin_index_failed) and the rest of its twin is
 * skipped; its leftover INVALID index is dropped and built again by the
 * next run. An unreachable database ends the run (the next one starts over:
 * a build the server still runs keeps the lock until it ends).
 */
export async function buildTwinIndexes(
  dbUrl: string,
  options: TwinIndexOptions = {},
): Promise<TwinIndexResult> {
  const log = options.log ?? (() => {});
  const result: TwinIndexResult = { built: 0, dropped: 0, failed: 0, busy: false, switched: false };
  // One connection: the lock and the session's settings are this session's.
  const sql = postgres(dbUrl, {
    max: 1,
    prepare: false,
    onnotice: () => {},
    idle_timeout: 0,
    connect_timeout: 10,
    connection: { application_name: options.applicationName ?? "autoembed index twins" },
  });
  const abort = () => void sql.end({ timeout: 0 }).catch(() => {});
  options.signal?.addEventListener("abort", abort, { once: true });
  try {
    options.signal?.throwIfAborted();
    const [{ running }] = await sql<{ running: boolean }[]>`
      select util._twin_builds_running() as running`;
    if (running) return { ...result, busy: true };
    const builds = await sql<Build[]>`
      select shadow_id, twin_name::text, statement from util._begin_twin_index_builds()`;
    const failedTwins = new Set<string>();
    for (const build of builds) {
      if (failedTwins.has(build.twin_name)) continue;
      const dropping = build.statement.startsWith("drop ");
      const started = performance.now();
      try {
        // The statements are util._twin_index_builds' own, every name quoted
        // with format('%I'). Simple protocol: nothing to bind, and no
        // implicit transaction around the CONCURRENTLY statement.
        await sql.unsafe(build.statement).simple();
      } catch (err) {
        if (isConnectionError(err) || options.signal?.aborted) throw err;
        result.failed++;
        failedTwins.add(build.twin_name);
        const message = (err as Error).message ?? String(err);
        log({
          event: "index_twin_failed",
          shadow: build.shadow_id,
          twin: build.twin_name,
          code: errorCode(err),
          message: message.slice(0, 200),
        });
        await sql`select util._twin_index_failed(${build.shadow_id}, ${build.statement}, ${message})`;
        continue;
      }
      if (dropping) result.dropped++;
      else result.built++;
      log({
        event: dropping ? "index_twin_dropped" : "index_twin_built",
        shadow: build.shadow_id,
        twin: build.twin_name,
        ms: Math.round(performance.now() - started),
      });
    }
    if (result.built > 0) {
      // The switch of what was just finished, now rather than at the next tick.
      await sql`select util.maintain_embeddings()`;
      result.switched = true;
    }
    return result;
  } finally {
    options.signal?.removeEventListener("abort", abort);
    if (!options.signal?.aborted) {
      await sql`select util._end_twin_index_builds()`.catch(() => {});
      await sql.end({ timeout: 5 });
    }
  }
}
