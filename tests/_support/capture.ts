// Logical capture's tests share these: a worker that follows the slot, a
// table attached with capture => 'logical', and the wait for a drain that
// includes the slot's confirmed position.
import { providerEnv, spawnWorker, type WorkerProcess } from "../../devtools/cli.ts";
import type { Sql } from "../../devtools/db.ts";
import type { FakeOpenAI } from "../../devtools/fake_openai.ts";
import { queueLength, TEST_MODEL } from "../../devtools/pipeline.ts";
import { waitFor } from "../../devtools/wait.ts";
import { staleRows } from "./rows.ts";

/** A worker with quick polls and a short visibility timeout; `args` come last, so they win. */
export function worker(fake: FakeOpenAI, url: string, args: string[] = []): WorkerProcess {
  return spawnWorker(
    ["--poll-interval", "300ms", "--batch-size", "500", "--visibility-timeout", "5s", ...args],
    providerEnv(fake, url),
  );
}

/** Attaches public.<table> (createDocuments) with capture => 'logical'; `extra` more arguments. */
export async function attachLogical(sql: Sql, table = "documents", extra = "") {
  await sql.unsafe(
    `select util.enable_embeddings('public.${table}', '${table}_input', model => $1,
                                   capture => 'logical'${extra})`,
    [TEST_MODEL],
  );
}

/** User triggers on public.<table>. */
export async function triggerCount(sql: Sql, table = "documents"): Promise<number> {
  const [{ n }] = await sql`
    select count(*)::int as n from pg_trigger where tgrelid = ${`public.${table}`}::regclass
       and not tgisinternal`;
  return n;
}

/** Whether the slot (setting capture_slot) has confirmed every change up to `lsn`. */
export async function slotCaughtUp(sql: Sql, lsn: string): Promise<boolean> {
  const [s] = await sql`
    select confirmed_flush_lsn >= ${lsn}::pg_lsn as caught_up from pg_replication_slots
     where slot_name = (select value from util.settings where name = 'capture_slot')`;
  return s?.caught_up === true;
}

/**
 * Waits until nothing is wrong (`problems`: default, public.documents' stale
 * rows), the queue is empty and the slot confirmed everything written so far.
 */
export async function waitDrained(
  sql: Sql,
  what: string,
  options: { timeoutMs?: number; problems?: () => Promise<string[]> } = {},
) {
  const problems = options.problems ?? (() => staleRows(sql));
  const [{ lsn }] = await sql`select pg_current_wal_lsn()::text as lsn`;
  let last = "";
  await waitFor(async () => {
    const found = await problems();
    const queued = await queueLength(sql);
    last = `${found.length} problems (${found.slice(0, 3).join("; ")}), ${queued} rows queued`;
    if (found.length > 0 || queued > 0) return false;
    return await slotCaughtUp(sql, lsn);
  }, { what, timeoutMs: options.timeoutMs ?? 60_000, describe: () => last });
}

/** Texts the provider was paid to embed more than once. */
export function repeats(fake: FakeOpenAI): string[] {
  const seen = new Set<string>();
  const twice: string[] = [];
  for (const t of fake.stats.embeddedTexts) {
    if (seen.has(t)) twice.push(t);
    seen.add(t);
  }
  return twice;
}

/** The worker's JSON log lines whose event is `event`. */
export function events(w: WorkerProcess, event: string): Record<string, unknown>[] {
  const found: Record<string, unknown>[] = [];
  for (const line of w.lines) {
    if (!line.startsWith("{")) continue;
    try {
      const parsed = JSON.parse(line);
      if (parsed.event === event) found.push(parsed);
    } catch {
      // not a log event
    }
  }
  return found;
}
