// The processing core shared by the `embed` edge function (push mode) and the
// pull worker: turns a batch of queue jobs into written embeddings with a
// fixed number of round trips — per batch one read of the targets, one read
// of rows per table, one provider call per provider batch, one write per
// table, one delete, one failure record.
//
// Crash safety: embeddings, fingerprints and cache entries of a table are
// written in one transaction; the queue messages are deleted after that
// commit. A crash in between only makes the jobs reappear after their
// visibility timeout, when the fingerprints show the text is already embedded
// and they finish at zero provider cost. Nothing is lost or written stale.
import type postgres from "postgres";
import { type Job, QUEUE_NAME, type RefusedJob } from "./jobs.ts";
import { type EmbeddingProvider, ProviderError } from "./providers/types.ts";
import { estimateTokens, planBatches, truncateToTokens } from "./providers/tokens.ts";

export interface ProcessOptions {
  /** The provider for a target's model and dimensions (may throw ProviderError, e.g. missing key). */
  providerFor: (model: string, dimensions: number) => EmbeddingProvider;
  /** Epoch ms after which no new provider call starts; unstarted jobs are handed back. */
  deadline?: number;
  /** Aborts provider calls (runtime shutdown); unfinished jobs are handed back. */
  signal?: AbortSignal;
  /** Over-long text: truncate to the model's limit instead of failing the row. */
  truncate?: boolean;
  /** Provider batches in flight at once within this batch. */
  providerConcurrency?: number;
  /** Structured events (counts and durations only: never text or secrets). */
  log?: (event: Record<string, unknown>) => void;
  /** Messages of this batch refused as malformed before it ran: recorded with its failures. */
  refused?: RefusedJob[];
}

export interface FailedJob {
  jobId: number;
  error: string;
  retryable: boolean;
  deadLettered?: boolean;
}

export interface BatchStats {
  jobs: number;
  rows: number;
  fresh: number;
  cached: number;
  embedded: number;
  written: number;
  superseded: number;
  deleted: number;
  emptyText: number;
  providerCalls: number;
  providerInputs: number;
  failed: number;
  refused: number;
  handedBack: number;
  durationMs: number;
}

export interface BatchResult {
  completedJobs: number[];
  failedJobs: FailedJob[];
  stats: BatchStats;
}

/** A target as util._target_config describes it (identifiers already quoted). */
interface Target {
  id: number;
  schema_name: string;
  table_name: string;
  embedding_column: string;
  content_function: string;
  model: string;
  dimensions: number;
  table_sql: string;
  pk_sql: string;
  pk_type_sql: string;
  embedding_sql: string;
  embedding_type_sql: string;
  content_function_sql: string;
}

interface LoadedRow {
  row_id: string;
  content: string | null;
  /** The content function's error for this row (safe read only). */
  error: string | null;
  hash: string;
  has_embedding: boolean;
  fp_hash: string | null;
  fp_model: string | null;
  cached: string | null;
}

/** A row to act on, with every job that asked for it (duplicates coalesce here). */
interface RowWork {
  target: Target;
  rowId: string;
  jobIds: number[];
  hash?: string;
  text?: string;
  /** The embedding to write; null clears it (the row has no text any more). */
  vector?: string | null;
  fromProvider?: boolean;
}

interface Failure {
  job_id: number;
  target_id: number | null;
  table_name: string | null;
  row_id: string | null;
  error: string;
  retryable: boolean;
  retry_after?: number;
}

/**
 * Provider statuses that may come from one bad input of a batch, so halving the
 * batch isolates it; a bad key (401/403) or an unknown model (404) fails every
 * half alike and is not split.
 */
const SPLITTABLE_STATUSES = new Set([400, 413, 422]);

/** SQLSTATEs worth retrying at once (deadlock, serialization failure). */
const RETRY_NOW_SQLSTATES = new Set(["40P01", "40001"]);

function targetKey(schema: string, table: string, column: string): string {
  return `${schema}\u0000${table}\u0000${column}`;
}

function tableLabel(t: { schema_name: string; table_name: string }): string {
  return `${t.schema_name}.${t.table_name}`;
}

/** Processes one batch of jobs. Throws only when the database itself is unreachable. */
export async function processBatch(
  sql: postgres.Sql,
  jobs: Job[],
  options: ProcessOptions,
): Promise<BatchResult> {
  const started = performance.now();
  const stats: BatchStats = {
    jobs: jobs.length,
    rows: 0,
    fresh: 0,
    cached: 0,
    embedded: 0,
    written: 0,
    superseded: 0,
    deleted: 0,
    emptyText: 0,
    providerCalls: 0,
    providerInputs: 0,
    failed: 0,
    refused: 0,
    handedBack: 0,
    durationMs: 0,
  };
  const completed: number[] = [];
  const failures: Failure[] = [];
  const handedBack: number[] = [];
  for (const r of options.refused ?? []) {
    stats.jobs++;
    stats.refused++;
    failures.push({
      job_id: r.jobId,
      target_id: null,
      table_name: null,
      row_id: null,
      error: r.error,
      retryable: false,
    });
  }

  // 1. Targets: a job is acted on only when it names an attached target exactly (I8).
  const targets = new Map<string, Target>();
  const configured = jobs.length ? await sql<Target[]>`select * from util._target_config` : [];
  for (const t of configured) {
    targets.set(targetKey(t.schema_name, t.table_name, t.embedding_column), t);
  }
  const rowsByTarget = new Map<Target, Map<string, RowWork>>();
  for (const job of jobs) {
    const target = targets.get(targetKey(job.schema, job.table, job.embeddingColumn));
    if (!target || target.content_function !== job.contentFunction) {
      stats.refused++;
      failures.push({
        job_id: job.jobId,
        target_id: null,
        table_name: `${job.schema}.${job.table}`,
        row_id: String(job.id),
        error: "refused: the job names no attached table, embedding column and content function " +
          "(attach it with util.enable_embeddings or a util.queue_embeddings trigger)",
        retryable: false,
      });
      continue;
    }
    const rowId = String(job.id);
    if (!idFitsKeyType(rowId, target.pk_type_sql)) {
      stats.refused++;
      failures.push({
        job_id: job.jobId,
        target_id: target.id,
        table_name: tableLabel(target),
        row_id: rowId.slice(0, 100),
        error: `refused: the job's id is not a valid ${target.pk_type_sql} primary key value`,
        retryable: false,
      });
      continue;
    }
    let rows = rowsByTarget.get(target);
    if (!rows) rowsByTarget.set(target, rows = new Map());
    const work = rows.get(rowId);
    if (work) work.jobIds.push(job.jobId);
    else rows.set(rowId, { target, rowId, jobIds: [job.jobId] });
  }

  const fail = (work: RowWork, error: string, retryable: boolean, retryAfter?: number) => {
    for (const jobId of work.jobIds) {
      failures.push({
        job_id: jobId,
        target_id: work.target.id,
        table_name: tableLabel(work.target),
        row_id: work.rowId,
        error,
        retryable,
        retry_after: retryAfter,
      });
    }
  };

  // 2. Read each table's rows once: text, hash, fingerprint and cache hit together.
  const toWrite = new Map<Target, RowWork[]>();
  const toEmbed: RowWork[] = [];
  for (const [target, rows] of rowsByTarget) {
    stats.rows += rows.size;
    const loaded = await loadRows(sql, target, [...rows.keys()], (rowId, message, retryable) => {
      if (!retryable) stats.refused++;
      fail(rows.get(rowId)!, message, retryable);
      rows.delete(rowId);
    });
    const provider = safeProvider(options, target);
    for (const work of rows.values()) {
      const row = loaded.get(work.rowId);
      if (!row) {
        stats.deleted++; // I6: the row is gone, so is the job
        completed.push(...work.jobIds);
        continue;
      }
      if (row.content === null || row.content.trim() === "") {
        stats.emptyText++;
        // No text any more: an embedding of earlier text would keep the row
        // findable by what it no longer says (and stale in status), so it goes,
        // with its fingerprint, under the same compare-and-set as a write.
        if (row.has_embedding || row.fp_hash !== null) {
          work.hash = row.hash;
          work.vector = null;
          pushTo(toWrite, target, work);
        } else completed.push(...work.jobIds);
        continue;
      }
      if (row.has_embedding && row.fp_hash === row.hash && row.fp_model === target.model) {
        stats.fresh++; // I3/I4: already embedded from exactly this text by this model
        completed.push(...work.jobIds);
        continue;
      }
      work.hash = row.hash;
      if (row.cached) {
        stats.cached++;
        work.vector = row.cached;
        pushTo(toWrite, target, work);
        continue;
      }
      let text = row.content;
      if (provider instanceof ProviderError) {
        fail(work, provider.message, provider.retryable);
        continue;
      }
      const tokens = estimateTokens(text);
      if (tokens > provider.maxInputTokens) {
        if (!options.truncate) {
          fail(
            work,
            `text is about ${tokens} tokens, over the ${provider.maxInputTokens}-token input limit of ` +
              `${target.model}: shorten what the content function returns, or set EMBEDDING_TRUNCATE=true`,
            false,
          );
          continue;
        }
        text = truncateToTokens(text, provider.maxInputTokens);
      }
      work.text = text;
      toEmbed.push(work);
    }
  }

  // 3. Provider calls: identical texts once, batched by count and token estimate.
  await embedAll(toEmbed, options, stats, fail, handedBack);
  for (const work of toEmbed) if (work.vector) pushTo(toWrite, work.target, work);

  // 4. One write per table, compare-and-set on the content hash (I2).
  for (const [target, works] of toWrite) {
    try {
      const written = await writeTarget(sql, target, works);
      for (const work of works) {
        if (written.has(work.rowId)) stats.written++;
        else stats.superseded++; // text changed since it was read; its newer job re-embeds it
        completed.push(...work.jobIds);
      }
    } catch (err) {
      if (isConnectionError(err)) throw err;
      const message = `writing embeddings failed: ${(err as Error).message}`;
      for (const work of works) fail(work, message, true);
    }
  }

  // 5. Acknowledge, reschedule, hand back: one call each.
  if (completed.length) {
    await sql`select pgmq.delete(${QUEUE_NAME}, array(select jsonb_array_elements_text(${
      JSON.stringify(completed)
    }::text::jsonb)::bigint))`;
  }
  const failedJobs: FailedJob[] = [];
  if (failures.length) {
    const outcome = await sql<{ job_id: string; dead_lettered: boolean }[]>`
      select job_id, dead_lettered from util._record_failures(${
      JSON.stringify(failures)
    }::text::jsonb)`;
    const dead = new Map(outcome.map((o) => [Number(o.job_id), o.dead_lettered]));
    for (const f of failures) {
      failedJobs.push({
        jobId: f.job_id,
        error: f.error,
        retryable: f.retryable,
        deadLettered: dead.get(f.job_id),
      });
    }
  }
  if (handedBack.length) {
    await sql`select pgmq.set_vt(${QUEUE_NAME}, id::bigint, 0)
                from jsonb_array_elements_text(${JSON.stringify(handedBack)}::text::jsonb) id`;
    for (const jobId of handedBack) {
      failedJobs.push({
        jobId,
        error: "handed back unprocessed (time budget or shutdown); retried at once",
        retryable: true,
      });
    }
  }
  stats.failed = failures.length;
  stats.handedBack = handedBack.length;
  stats.durationMs = Math.round(performance.now() - started);
  options.log?.({ event: "batch", ...stats });
  return { completedJobs: completed, failedJobs, stats };
}

function pushTo(map: Map<Target, RowWork[]>, target: Target, work: RowWork) {
  const list = map.get(target);
  if (list) list.push(work);
  else map.set(target, [work]);
}

function safeProvider(options: ProcessOptions, target: Target): EmbeddingProvider | ProviderError {
  try {
    return options.providerFor(target.model, target.dimensions);
  } catch (err) {
    if (err instanceof ProviderError) return err;
    return new ProviderError(
      `cannot set up the provider for ${target.model}: ${(err as Error).message}`,
      {
        retryable: false,
      },
    );
  }
}

/**
 * The read of a batch's rows: text, hash, fingerprint and cache hit in one
 * query. `safe` calls the content function through util._try_content, which
 * catches its errors per row (slower: one subtransaction per row), so it is
 * only the fallback when the plain query failed.
 */
function loadQuery(target: Target, safe: boolean): string {
  // Identifiers come from util._target_config (quoted there), never from the job.
  const content = safe
    ? `util._try_content('${target.content_function_sql.replaceAll("'", "''")}', r)`
    : `(select ${target.content_function_sql}(r) as content, null::text as error)`;
  return `
    select r.${target.pk_sql}::text as row_id,
           x.content,
           x.error,
           encode(util._content_hash(x.content), 'hex') as hash,
           r.${target.embedding_sql} is not null as has_embedding,
           encode(f.content_hash, 'hex') as fp_hash,
           f.model as fp_model,
           c.embedding::text as cached
      from ${target.table_sql} r
      cross join lateral ${content} x
      left join util.embedding_fingerprints f
             on f.target_id = $1 and f.row_id = r.${target.pk_sql}::text
      left join util.embedding_cache c
             on c.model = $2 and c.dimensions = $3 and c.content_hash = util._content_hash(x.content)
     where r.${target.pk_sql} = any (
             array(select jsonb_array_elements_text($4::text::jsonb))::${target.pk_type_sql}[])`;
}

/** Whether `id` can be a value of a primary key of type `pkType` (checked before it reaches SQL). */
export function idFitsKeyType(id: string, pkType: string): boolean {
  const ranges: Record<string, bigint> = {
    smallint: 2n ** 15n,
    integer: 2n ** 31n,
    bigint: 2n ** 63n,
  };
  const bound = ranges[pkType];
  if (bound !== undefined) {
    if (!/^-?\d{1,19}$/.test(id)) return false;
    const value = BigInt(id);
    return value >= -bound && value < bound;
  }
  if (pkType === "uuid") return /^[0-9a-f]{8}-?([0-9a-f]{4}-?){3}[0-9a-f]{12}$/i.test(id);
  return id.length <= 1000 && !id.includes("\u0000");
}

/** Key types whose values idFitsKeyType checks exactly, so no id of a job can fail their cast. */
const EXACTLY_CHECKED_KEY_TYPES = new Set(["smallint", "integer", "bigint", "uuid", "text"]);

/**
 * Reads rows in one query (I5: a failing row never blocks the others). When
 * the plain read fails, typically because a content function raises for some
 * row, one more read catches errors per row and reports those rows alone.
 * Before it, ids that are no value of the key type (a forged job for, say, a
 * numeric or date key) are refused, as their cast would fail that read too.
 * The plain read runs in its own transaction: its rollback also leaves the
 * connection clean for the next query (postgres.js miscounts result rows
 * after an error in the middle of a result).
 */
async function loadRows(
  sql: postgres.Sql,
  target: Target,
  rowIds: string[],
  onRowError: (rowId: string, message: string, retryable: boolean) => void,
): Promise<Map<string, LoadedRow>> {
  const params = [target.id, target.model, target.dimensions, JSON.stringify(rowIds)];
  const byId = (rows: LoadedRow[]) => new Map(rows.map((r) => [r.row_id, r]));
  try {
    return byId(await sql.begin((tx) => tx.unsafe<LoadedRow[]>(loadQuery(target, false), params)));
  } catch (err) {
    if (isConnectionError(err)) throw err;
  }
  if (!EXACTLY_CHECKED_KEY_TYPES.has(target.pk_type_sql)) {
    const [{ invalid }] = await sql<{ invalid: string[] }[]>`
      select util._invalid_keys(${target.id}, ${params[3]}::text::jsonb) as invalid`;
    if (invalid.length) {
      const refused = new Set(invalid);
      for (const rowId of refused) {
        onRowError(
          rowId,
          `refused: the job's id is not a valid ${target.pk_type_sql} primary key value`,
          false,
        );
      }
      rowIds = rowIds.filter((id) => !refused.has(id));
      if (rowIds.length === 0) return new Map();
      params[3] = JSON.stringify(rowIds);
    }
  }
  let rows: LoadedRow[];
  try {
    rows = await sql.begin((tx) => tx.unsafe<LoadedRow[]>(loadQuery(target, true), params));
  } catch (err) {
    if (isConnectionError(err)) throw err;
    for (const rowId of rowIds) {
      onRowError(rowId, `reading the row failed: ${(err as Error).message}`, true);
    }
    return new Map();
  }
  const result = new Map<string, LoadedRow>();
  for (const row of rows) {
    if (row.error === null) result.set(row.row_id, row);
    else onRowError(row.row_id, `the content function failed: ${row.error}`, true);
  }
  return result;
}

/**
 * A vector as Postgres reads it. For a halfvec column each value is rounded
 * to float16 here, as halfvec_in would, and written with the fewest digits
 * that read back as the same float16 (a table of all 65,536): less than half
 * the text of the full doubles, which Postgres parses in the write of every
 * batch (see bench/RESULTS.md). Other columns get the doubles as they are.
 */
function vectorLiteral(values: number[], columnType: string): string {
  if (columnType.startsWith("halfvec") && typeof Float16Array === "function") {
    const table = float16Texts ??= float16TextTable();
    // Through float32 first, as halfvec_in reads the text (strtof), then to float16.
    const bits = new Uint16Array(Float16Array.from(Float32Array.from(values)).buffer);
    let text = "[";
    for (let i = 0; i < bits.length; i++) text += (i ? "," : "") + table[bits[i]];
    return `${text}]`;
  }
  return `[${values.join(",")}]`;
}

let float16Texts: string[] | undefined;

/** The shortest decimal text of every float16 value that reads back as that value. */
function float16TextTable(): string[] {
  const value = new Float16Array(1);
  const bits = new Uint16Array(value.buffer);
  const table = new Array<string>(65536);
  for (let b = 0; b < 65536; b++) {
    bits[0] = b;
    const h = value[0];
    table[b] = Object.is(h, -0) ? "-0" : String(h); // NaN, ±Infinity: refused by Postgres, as before
    if (!Number.isFinite(h) || h === 0) continue;
    for (let digits = 1; digits <= 6; digits++) {
      const text = String(Number(h.toPrecision(digits)));
      if (Math.f16round(Number(text)) === h && Math.f16round(Math.fround(Number(text))) === h) {
        table[b] = text;
        break;
      }
    }
  }
  return table;
}

/** Calls providers for all rows needing embeddings; sets work.vector or records a failure. */
async function embedAll(
  works: RowWork[],
  options: ProcessOptions,
  stats: BatchStats,
  fail: (work: RowWork, error: string, retryable: boolean, retryAfter?: number) => void,
  handedBack: number[],
): Promise<void> {
  // Group by model and dimensions, then by text: one input per distinct text.
  const groups = new Map<string, { provider: EmbeddingProvider; byText: Map<string, RowWork[]> }>();
  for (const work of works) {
    const key = `${work.target.model}\u0000${work.target.dimensions}`;
    let group = groups.get(key);
    if (!group) {
      groups.set(
        key,
        group = {
          provider: options.providerFor(work.target.model, work.target.dimensions),
          byText: new Map(),
        },
      );
    }
    const same = group.byText.get(work.text!);
    if (same) same.push(work);
    else group.byText.set(work.text!, [work]);
  }
  const tasks: (() => Promise<void>)[] = [];
  for (const { provider, byText } of groups.values()) {
    const texts = [...byText.keys()];
    for (
      const indices of planBatches(texts, {
        maxInputs: provider.maxBatchInputs,
        maxTokens: provider.maxBatchTokens,
      })
    ) {
      tasks.push(() =>
        embedBatch(provider, indices.map((i) => texts[i]), byText, options, stats, fail, handedBack)
      );
    }
  }
  const concurrency = Math.max(1, options.providerConcurrency ?? 2);
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(concurrency, tasks.length) }, async () => {
    while (next < tasks.length) await tasks[next++]();
  }));
}

async function embedBatch(
  provider: EmbeddingProvider,
  texts: string[],
  byText: Map<string, RowWork[]>,
  options: ProcessOptions,
  stats: BatchStats,
  fail: (work: RowWork, error: string, retryable: boolean, retryAfter?: number) => void,
  handedBack: number[],
): Promise<void> {
  const worksOf = (text: string) => byText.get(text) ?? [];
  if ((options.deadline && Date.now() > options.deadline) || options.signal?.aborted) {
    for (const text of texts) for (const work of worksOf(text)) handedBack.push(...work.jobIds);
    return;
  }
  try {
    stats.providerCalls++;
    stats.providerInputs += texts.length;
    const vectors = await provider.embed(texts, options.signal);
    texts.forEach((text, i) => {
      for (const work of worksOf(text)) {
        work.vector = vectorLiteral(vectors[i], work.target.embedding_type_sql);
        work.fromProvider = true;
      }
    });
    stats.embedded += texts.length;
  } catch (err) {
    if (options.signal?.aborted) {
      for (const text of texts) for (const work of worksOf(text)) handedBack.push(...work.jobIds);
      return;
    }
    const error = err instanceof ProviderError
      ? err
      : new ProviderError(`embedding failed: ${(err as Error)?.message ?? err}`, {
        retryable: true,
      });
    // A permanent rejection of a multi-input batch may come from one bad
    // input: split it to find that one, so the others still embed (I5).
    if (!error.retryable && texts.length > 1 && SPLITTABLE_STATUSES.has(error.status ?? 0)) {
      const half = Math.ceil(texts.length / 2);
      await embedBatch(provider, texts.slice(0, half), byText, options, stats, fail, handedBack);
      await embedBatch(provider, texts.slice(half), byText, options, stats, fail, handedBack);
      return;
    }
    const retryAfter = error.retryAfterMs ? Math.ceil(error.retryAfterMs / 1000) : undefined;
    for (const text of texts) {
      for (const work of worksOf(text)) fail(work, error.message, error.retryable, retryAfter);
    }
  }
}

/**
 * Writes a table's embeddings in one statement: the UPDATE only takes rows
 * whose current text still hashes to what was embedded (compare-and-set),
 * and the fingerprints and cache entries go in with it, in one transaction.
 * A null embedding clears the row's embedding and deletes its fingerprint.
 * The compare-and-set sits in a CASE behind the key match: as a plain
 * conjunct the planner may make it a hash key and call the content function
 * on every row of the table (slow, and one row whose function raises would
 * fail every write). Returns the row ids written.
 */
async function writeTarget(
  sql: postgres.Sql,
  target: Target,
  works: RowWork[],
): Promise<Set<string>> {
  const input = JSON.stringify(works.map((w) => ({
    row_id: w.rowId,
    hash: w.hash,
    embedding: w.vector,
    new: w.fromProvider === true,
  })));
  const query = `
    with input as (
      -- Parsed once here, for the table and the cache (the vectors are most of the work).
      select i.row_id, i.hash, i.new, i.embedding::${target.embedding_type_sql} as embedding
        from jsonb_to_recordset($1::text::jsonb) as i(row_id text, hash text, embedding text, new boolean)
    ), written as (
      update ${target.table_sql} r
         set ${target.embedding_sql} = i.embedding
        from input i
       where r.${target.pk_sql} = i.row_id::${target.pk_type_sql}
         and case when r.${target.pk_sql} = i.row_id::${target.pk_type_sql}
                  then util._content_hash(${target.content_function_sql}(r)) = decode(i.hash, 'hex')
             end
      returning r.${target.pk_sql}::text as row_id, i.hash, i.embedding is null as cleared
    ), fingerprinted as (
      insert into util.embedding_fingerprints as f (target_id, row_id, content_hash, model)
      select $2, w.row_id, decode(w.hash, 'hex'), $3 from written w where not w.cleared
      on conflict (target_id, row_id) do update
        set content_hash = excluded.content_hash, model = excluded.model, embedded_at = now()
    ), unfingerprinted as (
      delete from util.embedding_fingerprints f
       using written w
       where w.cleared and f.target_id = $2 and f.row_id = w.row_id
    ), cached as (
      insert into util.embedding_cache (model, dimensions, content_hash, embedding)
      select distinct on (i.hash) $3, $4, decode(i.hash, 'hex'), i.embedding::extensions.halfvec
        from input i where i.new
      on conflict do nothing
    )
    select row_id from written`;
  for (let attempt = 1;; attempt++) {
    try {
      const rows = await sql.begin(async (tx) => {
        // Our own write must not enqueue new jobs through the update trigger.
        await tx`select set_config('autoembed.applying', 'on', true)`;
        return await tx.unsafe<{ row_id: string }[]>(query, [
          input,
          target.id,
          target.model,
          target.dimensions,
        ]);
      });
      return new Set(rows.map((r) => r.row_id));
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (attempt < 3 && code && RETRY_NOW_SQLSTATES.has(code)) continue;
      throw err;
    }
  }
}

/** Connection-level error codes of postgres.js and of the socket below it. */
const CONNECTION_CODES = new Set([
  "57P01", // admin_shutdown
  "57P02", // crash_shutdown
  "57P03", // cannot_connect_now
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  "CONNECT_TIMEOUT",
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ERR_STREAM_WRITE_AFTER_END",
]);

/**
 * Errors that mean the database is unreachable, as opposed to a failing
 * statement: SQLSTATE class 08, the shutdown codes, and socket errors (which
 * carry no SQLSTATE, e.g. a write on a socket the server already closed).
 */
export function isConnectionError(err: unknown): boolean {
  const e = err as { code?: string; name?: string; message?: string } | null;
  const code = e?.code ?? "";
  if (code.startsWith("08") || CONNECTION_CODES.has(code)) return true;
  return e?.name !== "PostgresError" && /socket|connection/i.test(e?.message ?? "");
}
