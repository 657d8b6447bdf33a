// The end-of-scenario check of the reliability suite: every row of every
// attached table holds exactly what the pipeline promises (I1, I2), every job
// is accounted for, and the provider was not paid twice for the same text.
// It recomputes expectations independently of the product: vectors with the
// fake provider's fakeVector (rows.ts), hashes with node:crypto.
import { createHash } from "node:crypto";
import type { Sql } from "../../devtools/db.ts";
import type { FakeOpenAI } from "../../devtools/fake_openai.ts";
import { embeddingProblem } from "./rows.ts";

/** Schema of the job ledger that trackJobs installs. */
const LEDGER = "reliability_ledger";

/** Joined to a queue table `q`: a row per row id its message names (`id`, or each of `ids`). */
const EACH_ROW = `cross join lateral jsonb_array_elements_text(
  case when jsonb_typeof(q.message -> 'ids') = 'array' then q.message -> 'ids'
       else jsonb_build_array(q.message -> 'id') end) e(id_text)`;

/**
 * Records every message that enters the embedding_jobs queue (by any path:
 * triggers, backfills, retry_failed) in a ledger table, so the check can tell
 * a job that finished from one that vanished. Install before the scenario.
 */
export async function trackJobs(sql: Sql): Promise<void> {
  await sql.unsafe(`
    create schema if not exists ${LEDGER};
    create table if not exists ${LEDGER}.jobs (msg_id bigint primary key, message jsonb not null);
    create or replace function ${LEDGER}.record() returns trigger language plpgsql as $$
    begin
      insert into ${LEDGER}.jobs select n.msg_id, n.message from new_rows n on conflict do nothing;
      return null;
    end $$;
    drop trigger if exists reliability_ledger on pgmq.q_embedding_jobs;
    create trigger reliability_ledger after insert on pgmq.q_embedding_jobs
      referencing new table as new_rows for each statement execute function ${LEDGER}.record();
  `).simple();
}

export interface ConsistencyOptions {
  /** The provider whose paid-for inputs are counted for duplicates. */
  fake?: FakeOpenAI;
  /** What the provider should have been sent for a row's text (default: the text itself). */
  expectedText?: (text: string) => string;
  /** Names (`schema.table`) of tables to check; default every attached one. */
  tables?: string[];
}

export interface ConsistencyReport {
  /** Rows read, over all attached tables. */
  rowsChecked: number;
  /** Rows whose state is wrong and that no queued or dead-lettered job covers. */
  rowsWrong: number;
  /** Rows with text and the embedding of exactly that text and model. */
  rowsFresh: number;
  /** Rows whose content function gives NULL or blank text (and hold no embedding). */
  rowsEmpty: number;
  /** Rows whose content function raises, covered by a queued or dead-lettered job. */
  rowsPoison: number;
  /** Rows not fresh, waiting for a queued job. */
  rowsPending: number;
  /** Rows not fresh whose job was dead-lettered with its error recorded. */
  rowsDeadLettered: number;
  /** Jobs the ledger saw (0 without trackJobs). */
  jobsTracked: number;
  /** Ledger jobs no longer queued or archived. */
  jobsDone: number;
  jobsQueued: number;
  /** Archived jobs with a dead-lettered error row in util.embedding_errors. */
  jobsDeadLettered: number;
  /** Jobs gone without their work done, or archived without a recorded error. */
  jobsLost: number;
  /** Paid-for provider inputs repeating a text already embedded (needs `fake`). */
  duplicateInputs: number;
  /**
   * util.embedding_status_exact() totals, which must agree with a clean table
   * (and util.embedding_status's kept counts with it: else a problem).
   */
  statusMissing: number;
  statusStale: number;
  /** Targets whose kept count (util.embedding_status) differs from the exact recount. */
  statusKeptWrong: number;
  /** Up to 20 descriptions of what is wrong, for the assertion message. */
  problems: string[];
}

interface Target {
  id: number;
  schema_name: string;
  table_name: string;
  embedding_column: string;
  model: string;
  dimensions: number;
  table_sql: string;
  pk_sql: string;
  embedding_sql: string;
  content_function_sql: string;
}

interface Row {
  id: string;
  content: string | null;
  error: string | null;
  embedding: string | null;
  fp_hash: string | null;
}

function sha256Hex(text: string): string {
  return createHash("sha256").update(text, "utf8").digest("hex");
}

function rowKey(schema: string, table: string, column: string, id: string): string {
  return `${schema}\u0000${table}\u0000${column}\u0000${id}`;
}

/**
 * Reads every attached table and the queue, and returns the figures. It
 * asserts nothing: see assertConsistent.
 */
export async function checkConsistency(
  sql: Sql,
  options: ConsistencyOptions = {},
): Promise<ConsistencyReport> {
  const expectedText = options.expectedText ?? ((t: string) => t);
  const report: ConsistencyReport = {
    rowsChecked: 0,
    rowsWrong: 0,
    rowsFresh: 0,
    rowsEmpty: 0,
    rowsPoison: 0,
    rowsPending: 0,
    rowsDeadLettered: 0,
    jobsTracked: 0,
    jobsDone: 0,
    jobsQueued: 0,
    jobsDeadLettered: 0,
    jobsLost: 0,
    duplicateInputs: 0,
    statusMissing: 0,
    statusStale: 0,
    statusKeptWrong: 0,
    problems: [],
  };
  const problem = (text: string) => {
    if (report.problems.length < 20) report.problems.push(text);
  };

  // Jobs by the row they name: queued, and archived (with or without a recorded error).
  const queued = new Set<string>();
  const dead = new Set<string>();
  const keyOf = (m: Record<string, unknown>) =>
    rowKey(String(m.schema), String(m.table), String(m.embeddingColumn), String(m.id));
  const queuedIds = new Set<string>();
  /** (message, row) pairs still queued: a packed message loses its rows as they are done. */
  const queuedRows = new Set<string>();
  for (
    const q of await sql.unsafe(
      `select q.msg_id::text, q.message, e.id_text from pgmq.q_embedding_jobs q ${EACH_ROW}`,
    )
  ) {
    queued.add(keyOf({ ...q.message, id: q.id_text }));
    queuedIds.add(q.msg_id);
    queuedRows.add(`${q.msg_id}:${q.id_text}`);
  }
  report.jobsQueued = queuedIds.size;
  const archivedIds = new Map<string, boolean>();
  for (
    const a of await sql.unsafe(`
      select a.msg_id::text, a.message, e.id_text,
             exists (select 1 from util.embedding_errors e
                      where e.job_id = a.msg_id and e.dead_lettered) as has_error
        from pgmq.a_embedding_jobs a ${EACH_ROW.replaceAll("q.", "a.")}`)
  ) {
    if (archivedIds.has(a.msg_id)) {
      dead.add(keyOf({ ...a.message, id: a.id_text }));
      continue;
    }
    archivedIds.set(a.msg_id, a.has_error);
    if (a.has_error) {
      dead.add(keyOf({ ...a.message, id: a.id_text }));
      report.jobsDeadLettered++;
    } else {
      report.jobsLost++;
      problem(`job ${a.msg_id} archived without a dead-lettered error in util.embedding_errors`);
    }
  }

  // Rows: each one fresh, empty, or covered by a job that is still queued or dead-lettered.
  const wrongRows = new Set<string>();
  const existing = new Set<string>();
  const targets = await sql<Target[]>`
    select id, schema_name, table_name, embedding_column, model, dimensions, table_sql, pk_sql,
           embedding_sql, content_function_sql
      from util._target_config where shadow_of is null order by id`;
  for (const t of targets) {
    if (options.tables && !options.tables.includes(`${t.schema_name}.${t.table_name}`)) continue;
    // Identifiers come quoted from util._target_config.
    const rows = await sql.unsafe<Row[]>(
      `select r.${t.pk_sql}::text as id, x.content, x.error, r.${t.embedding_sql}::text as embedding,
              encode(f.content_hash, 'hex') as fp_hash
         from ${t.table_sql} r
         cross join lateral util._try_content($1, r) x
         left join util.embedding_fingerprints f
                on f.target_id = $2 and f.row_id = r.${t.pk_sql}::text`,
      [t.content_function_sql, t.id],
    );
    for (const row of rows) {
      report.rowsChecked++;
      const key = rowKey(t.schema_name, t.table_name, t.embedding_column, row.id);
      existing.add(key);
      const label = `${t.schema_name}.${t.table_name} row ${row.id.slice(0, 60)}`;
      const covered = queued.has(key) ? "pending" : dead.has(key) ? "dead" : null;
      const wrong = (why: string) => {
        if (covered === "pending") report.rowsPending++;
        else if (covered === "dead") report.rowsDeadLettered++;
        else {
          report.rowsWrong++;
          wrongRows.add(key);
          problem(`${label}: ${why}`);
        }
      };
      if (row.error !== null) {
        report.rowsPoison++;
        if (!covered) {
          report.rowsWrong++;
          wrongRows.add(key);
          problem(`${label}: the content function fails and no job is queued or dead-lettered`);
        }
        continue;
      }
      if (row.content === null || row.content.trim() === "") {
        report.rowsEmpty++;
        if (row.embedding !== null || row.fp_hash !== null) {
          wrong("no text, but an embedding or fingerprint is left behind");
        }
        continue;
      }
      const why = embeddingProblem(row.embedding, expectedText(row.content), t.dimensions) ??
        (row.fp_hash !== sha256Hex(row.content)
          ? "its fingerprint is not the hash of its text"
          : null);
      if (why === null) report.rowsFresh++;
      else wrong(why);
    }
    // The kept figures first (the exact recount repairs them), then the recount.
    const where = sql`schema_name = ${t.schema_name} and table_name = ${t.table_name}
                      and embedding_column = ${t.embedding_column}`;
    const [kept] = await sql`
      select embedded::int, models, next_embedded::int from util.embedding_status where ${where}`;
    const [status] = await sql`
      select missing::int, stale::int, embedded::int, models, next_embedded::int
        from util.embedding_status_exact() where ${where}`;
    report.statusMissing += status?.missing ?? 0;
    report.statusStale += status?.stale ?? 0;
    if (
      kept && status &&
      (kept.embedded !== status.embedded || kept.next_embedded !== status.next_embedded ||
        JSON.stringify(kept.models) !== JSON.stringify(status.models))
    ) {
      report.statusKeptWrong++;
      problem(
        `${t.schema_name}.${t.table_name} (${t.embedding_column}): util.embedding_status keeps ` +
          `${kept.embedded} embedded (next ${kept.next_embedded}), the exact recount finds ` +
          `${status.embedded} (next ${status.next_embedded})`,
      );
    }
  }

  // The ledger: a job that is neither queued nor archived must have left its row right.
  const [{ present }] = await sql`select to_regclass(${`${LEDGER}.jobs`}) is not null as present`;
  if (present) {
    for (
      const j of await sql.unsafe(
        `select q.msg_id::text, q.message, e.id_text from ${LEDGER}.jobs q ${EACH_ROW}`,
      )
    ) {
      report.jobsTracked++;
      if (queuedRows.has(`${j.msg_id}:${j.id_text}`) || archivedIds.has(j.msg_id)) continue;
      report.jobsDone++;
      const key = keyOf({ ...j.message, id: j.id_text });
      if (wrongRows.has(key)) report.jobsLost++;
    }
  }

  if (options.fake) {
    const texts = options.fake.stats.embeddedTexts;
    report.duplicateInputs = texts.length - new Set(texts).size;
  }
  return report;
}

export interface ConsistencyExpectations {
  /** Paid-for duplicate inputs the scenario forces (default 0). */
  allowedDuplicates?: number;
  /** Rows expected to end dead-lettered (default 0). */
  deadLetteredRows?: number;
  /** Jobs may still be queued (e.g. waiting out a backoff); default false. */
  allowQueued?: boolean;
}

/** The assertions every scenario ends with; the message carries the report. */
export function assertConsistent(
  report: ConsistencyReport,
  expect: ConsistencyExpectations = {},
): void {
  const failures: string[] = [];
  if (report.rowsWrong !== 0) failures.push(`${report.rowsWrong} rows wrong`);
  if (report.jobsLost !== 0) failures.push(`${report.jobsLost} jobs lost`);
  if (report.rowsChecked === 0) failures.push("no rows checked");
  if (!expect.allowQueued && report.jobsQueued !== 0) {
    failures.push(`${report.jobsQueued} jobs still queued`);
  }
  if (report.rowsDeadLettered !== (expect.deadLetteredRows ?? 0)) {
    failures.push(
      `${report.rowsDeadLettered} rows dead-lettered, expected ${expect.deadLetteredRows ?? 0}`,
    );
  }
  if (report.duplicateInputs > (expect.allowedDuplicates ?? 0)) {
    failures.push(
      `${report.duplicateInputs} duplicate provider inputs, at most ${
        expect.allowedDuplicates ?? 0
      } expected`,
    );
  }
  // With every row settled, the status view must agree that nothing is missing or stale.
  if (report.rowsPending === 0 && report.rowsDeadLettered === 0 && report.rowsPoison === 0) {
    if (report.statusMissing !== 0 || report.statusStale !== 0) {
      failures.push(
        `util.embedding_status_exact() says ${report.statusMissing} missing, ${report.statusStale} stale`,
      );
    }
  }
  if (report.statusKeptWrong !== 0) {
    failures.push(`${report.statusKeptWrong} targets' kept counts differ from the exact recount`);
  }
  if (failures.length) {
    const { problems, ...figures } = report;
    throw new Error(
      `inconsistent: ${failures.join("; ")}\nfigures: ${JSON.stringify(figures)}\n` +
        problems.join("\n"),
    );
  }
}
