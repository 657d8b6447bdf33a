// The SQL of chunked targets (the chunks store, supabase/schemas/22_stores.sql):
// per batch and target, one read of the rows' text and fingerprints, one look-up
// of which chunk texts already have a vector in the destination, and one
// transaction writing every row's chunk set under a compare-and-set (I2, I12).
// A long text split in portions across calls (util.chunk_set_drafts) adds
// each portion to its draft instead, and its last portion's write takes the
// drafted chunks along.
import type postgres from "postgres";
import { isRetryableNow } from "../db_errors.ts";
import { contentOfRow, readRowsIsolated } from "./rows.ts";
import type { Target } from "./targets.ts";

export interface ChunkedRow {
  row_id: string;
  /** The text, only when the row is not fresh (its fingerprint differs). */
  content: string | null;
  /** The content function's error for this row (safe read only). */
  error: string | null;
  /** sha256 (hex) of the chunking key and the text: the row's fingerprint when written. */
  hash: string;
  fresh: boolean;
  /** The row's draft of this very text, when earlier calls split a part of it: its chunks so far. */
  draft_chunks: number | null;
  /** Where its split resumes (see SplitResume). */
  resume_at: number | null;
  resume_start: number | null;
}

/**
 * The read: each row's fingerprint hash over the target's current chunk
 * settings, compared with the stored one; the text travels only for rows
 * that are not fresh. `safe` catches content function errors per row
 * (util._try_content), the fallback when the plain read failed.
 */
function loadQuery(target: Target, safe: boolean): string {
  const content = contentOfRow(target, safe);
  const pk = target.pk_sql;
  return `
    select r.${pk}::text as row_id,
           case when f.content_hash is distinct from h.hash then x.content end as content,
           x.error,
           encode(h.hash, 'hex') as hash,
           f.content_hash is not distinct from h.hash and x.error is null as fresh,
           d.chunks as draft_chunks, d.resume_at, d.resume_start
      from ${target.table_sql} r
      cross join lateral ${content} x
      cross join lateral (select util._chunked_hash($2, x.content) as hash) h
      left join util.embedding_fingerprints f on f.target_id = $1 and f.row_id = r.${pk}::text
      left join util.chunk_set_drafts d
             on d.target_id = $1 and d.row_id = r.${pk}::text and d.content_hash = h.hash
     where r.${pk} = any (
             array(select jsonb_array_elements_text($3::text::jsonb))::${target.pk_type_sql}[])`;
}

/**
 * Reads the rows of a chunked target in one query; as loadRows (rows.ts) for
 * whole-row targets, a failing plain read is followed by a refusal of ids
 * that are no key value and a safe read that isolates rows whose content
 * function raises (I5).
 */
export function loadChunkedRows(
  sql: postgres.Sql,
  target: Target,
  rowIds: string[],
  onRowError: (rowId: string, message: string, retryable: boolean) => void,
): Promise<Map<string, ChunkedRow>> {
  return readRowsIsolated<ChunkedRow>(
    sql,
    target,
    (safe) => loadQuery(target, safe),
    target.chunking_key!,
    rowIds,
    onRowError,
  );
}

/**
 * Which of the chunk text hashes (hex) already have a vector in the
 * destination, in any row: those chunks cost no provider call. One query,
 * one hash-index probe per distinct hash.
 */
export async function existingChunkHashes(
  sql: postgres.Sql,
  target: Target,
  hashes: string[],
): Promise<Set<string>> {
  if (hashes.length === 0) return new Set();
  const rows = await sql.unsafe<{ hash: string }[]>(
    `select encode(h.hash, 'hex') as hash
       from (select distinct decode(x, 'hex') as hash from jsonb_array_elements_text($1::text::jsonb) x) h
      where exists (select from ${target.destination_sql} d
                     where d.chunk_hash = h.hash and d.embedding is not null)`,
    [JSON.stringify(hashes)],
  );
  return new Set(rows.map((r) => r.hash));
}

export interface ChunkSetWrite {
  rowId: string;
  /** The row's fingerprint hash (hex) computed from the text that was split. */
  hash: string;
  /** chunk_seq of the first of `chunks`: the chunks before it are the row's draft. */
  firstSeq: number;
  /** The chunks in order; `embedding` null: reuse the vector a chunk of the same text holds. */
  chunks: { chunk: string; embedding: string | null }[];
}

/** A portion of a row's chunks for its draft, and where its split resumes. */
export interface ChunkDraftWrite extends ChunkSetWrite {
  resumeAt: number;
  resumeStart: number;
}

export type ChunkSetOutcome = "written" | "superseded" | "incomplete";

/** Where several statements take a write's input rows and the target's current chunking key. */
function inputSql(target: Target): { input: string; settings: string; matches: string } {
  return {
    input: `
      select i.row_id, i.hash, i.first_seq, i.chunks, i.resume_at, i.resume_start
        from jsonb_to_recordset($1::text::jsonb)
          as i(row_id text, hash text, first_seq int, chunks jsonb, resume_at int, resume_start int)`,
    settings: `
      select util._chunking_key(t) as chunking_key from util.embedding_targets t
       where t.id = $2 and t.retired_at is null and t.embedding_column = $3`,
    // The row's text, read now, still hashes to what was split (I2).
    matches: `case when r.${target.pk_sql} = i.row_id::${target.pk_type_sql}
                   then util._chunked_hash(s.chunking_key, ${target.content_function_sql}(r)) = decode(i.hash, 'hex')
              end`,
  };
}

/** The chunks of an input row (`c.chunks`), numbered from its first_seq. */
const INPUT_CHUNKS = `
  cross join lateral (select e.chunk, e.embedding, c.first_seq + (o.ordinality - 1)::int as chunk_seq
                        from jsonb_array_elements(c.chunks) with ordinality as o(value, ordinality)
                        cross join lateral jsonb_to_record(o.value) as e(chunk text, embedding text)) x`;

/**
 * The write of a target's chunk sets, one transaction of two statements
 * sent together (one round trip):
 *   1. locks the batch's source rows (no key update, as the user's own
 *      updates do), in key order so that two writers never deadlock: a
 *      concurrent edit and a concurrent writer of the same row wait, and the
 *      next statement's snapshot, taken after the locks, sees their
 *      committed work (a single statement's snapshot would predate it, and
 *      its delete of surplus chunks miss chunks a writer just inserted);
 *   2. for the rows whose text (with the target's chunk settings, read now)
 *      still hashes to what was split (compare-and-set, I2) and all of whose
 *      chunks have a vector (a reused one looked up by its text's hash, in
 *      this statement's snapshot, so the row's own old chunks still lend
 *      theirs), and, for a text split in portions, whose draft holds every
 *      chunk before the batch's: upserts each chunk (the draft's, then the
 *      batch's), leaving unchanged ones untouched, deletes the chunks past
 *      the new end, sets the fingerprint (an empty set deletes it) and
 *      deletes the row's draft. A reader sees a row's old set or its new
 *      one (I12).
 * Returns each row's outcome: written, superseded (its text changed since it
 * was read; its newer job writes it), or incomplete (a reused vector, or the
 * draft, went away meanwhile; retried from the start).
 */
function writeQuery(target: Target): { lock: string; write: string } {
  const pk = target.pk_sql;
  const dest = target.destination_sql!;
  const { input, settings, matches } = inputSql(target);
  const write = `
    with input as (${input}
    ), settings as (${settings}
    ), current as (
      select r.${pk} as source_id, r.${pk}::text as row_id, i.hash, i.first_seq, i.chunks
        from input i
        join ${target.table_sql} r on r.${pk} = i.row_id::${target.pk_type_sql}
        cross join settings s
       where ${matches}
    ), drafted as (
      select c.source_id, d.chunk_seq, d.chunk, d.chunk_hash, d.embedding
        from current c
        join util.chunk_set_drafts h
          on h.target_id = $2 and h.row_id = c.row_id and h.content_hash = decode(c.hash, 'hex')
         and h.chunks = c.first_seq
        join util.chunk_set_draft_chunks d
          on d.target_id = $2 and d.row_id = c.row_id and d.chunk_seq < c.first_seq
    ), pieces as (
      select p.source_id, p.chunk_seq, p.chunk, p.chunk_hash,
             coalesce(p.embedding::${target.embedding_type_sql},
                      (select d.embedding from ${dest} d
                        where d.chunk_hash = p.chunk_hash and d.embedding is not null
                        limit 1)) as embedding
        from (select c.source_id, x.chunk_seq, x.chunk, util._content_hash(x.chunk) as chunk_hash, x.embedding
                from current c ${INPUT_CHUNKS}
              union all
              select * from drafted) p
    ), complete as (
      select c.* from current c
       where not exists (select from pieces p where p.source_id = c.source_id and p.embedding is null)
         and (select count(*) from drafted d where d.source_id = c.source_id) = c.first_seq
    ), upserted as (
      insert into ${dest} as d (source_id, chunk_seq, chunk, chunk_hash, embedding)
      select p.source_id, p.chunk_seq, p.chunk, p.chunk_hash, p.embedding
        from pieces p join complete c on c.source_id = p.source_id
      on conflict (source_id, chunk_seq) do update
        set chunk = excluded.chunk, chunk_hash = excluded.chunk_hash, embedding = excluded.embedding
        where d.chunk_hash is distinct from excluded.chunk_hash or d.embedding is null
      returning 1
    ), surplus as (
      delete from ${dest} d using complete c
       where d.source_id = c.source_id and d.chunk_seq >= c.first_seq + jsonb_array_length(c.chunks)
      returning 1
    ), fingerprinted as (
      insert into util.embedding_fingerprints as f (target_id, row_id, content_hash)
      select $2, c.row_id, decode(c.hash, 'hex') from complete c
       where c.first_seq + jsonb_array_length(c.chunks) > 0
      on conflict (target_id, row_id) do update
        set content_hash = excluded.content_hash, embedded_at = now()
    ), unfingerprinted as (
      delete from util.embedding_fingerprints f using complete c
       where c.first_seq + jsonb_array_length(c.chunks) = 0 and f.target_id = $2 and f.row_id = c.row_id
    ), undrafted as (
      delete from util.chunk_set_drafts h using current c where h.target_id = $2 and h.row_id = c.row_id
    )
    select c.row_id, exists (select from complete k where k.row_id = c.row_id) as complete
      from current c`;
  return { lock: lockQuery(target), write };
}

/**
 * Locks a write's source rows (no key update, as the user's own updates
 * do), in key order, so that two writers of a row never deadlock and the
 * next statement's snapshot sees their committed work.
 */
function lockQuery(target: Target): string {
  const pk = target.pk_sql;
  const ids =
    `array(select i.row_id from jsonb_to_recordset($1::text::jsonb) as i(row_id text))::${target.pk_type_sql}[]`;
  return `
    select from ${target.table_sql} r where r.${pk} = any (${ids})
     order by r.${pk} for no key update`;
}

/**
 * The draft of rows split in portions, one transaction (lock as the write;
 * then a row starting its draft drops any draft of an older text; then one
 * statement): for the rows whose text still hashes to what was split and,
 * when continuing, whose draft holds exactly the chunks before this
 * portion, adds the portion's chunks (a vector, or null when the
 * destination holds one for the chunk's text) and records where the split
 * resumes. Concurrent calls for a row queue on its lock; the second's
 * portion then no longer follows the draft and is left out.
 */
function draftQuery(target: Target): { lock: string; restart: string; draft: string } {
  const pk = target.pk_sql;
  const { input, settings, matches } = inputSql(target);
  const restart = `
    delete from util.chunk_set_drafts h using (${input}) i
     where h.target_id = $2 and h.row_id = i.row_id and i.first_seq = 0`;
  const draft = `
    with input as (${input}
    ), settings as (${settings}
    ), current as (
      select i.* from input i
        join ${target.table_sql} r on r.${pk} = i.row_id::${target.pk_type_sql}
        cross join settings s
       where ${matches}
         and (i.first_seq = 0
              or exists (select from util.chunk_set_drafts h
                          where h.target_id = $2 and h.row_id = i.row_id
                            and h.content_hash = decode(i.hash, 'hex') and h.chunks = i.first_seq))
    ), headed as (
      insert into util.chunk_set_drafts as h
             (target_id, row_id, content_hash, chunks, resume_at, resume_start)
      select $2, c.row_id, decode(c.hash, 'hex'), c.first_seq + jsonb_array_length(c.chunks),
             c.resume_at, c.resume_start
        from current c
      on conflict (target_id, row_id) do update
        set content_hash = excluded.content_hash, chunks = excluded.chunks,
            resume_at = excluded.resume_at, resume_start = excluded.resume_start, updated_at = now()
    ), added as (
      insert into util.chunk_set_draft_chunks as d
             (target_id, row_id, chunk_seq, chunk, chunk_hash, embedding)
      select $2, c.row_id, x.chunk_seq, x.chunk, util._content_hash(x.chunk), x.embedding
        from current c ${INPUT_CHUNKS}
      on conflict (target_id, row_id, chunk_seq) do update
        set chunk = excluded.chunk, chunk_hash = excluded.chunk_hash, embedding = excluded.embedding
    )
    select c.row_id from current c`;
  return { lock: lockQuery(target), restart, draft };
}

export async function writeChunkSets(
  sql: postgres.Sql,
  target: Target,
  writes: ChunkSetWrite[],
): Promise<Map<string, ChunkSetOutcome>> {
  const input = JSON.stringify(
    writes.map((w) => ({ row_id: w.rowId, hash: w.hash, first_seq: w.firstSeq, chunks: w.chunks })),
  );
  const { lock, write } = writeQuery(target);
  for (let attempt = 1;; attempt++) {
    try {
      const [, rows] = await sql.begin((tx) => [
        tx.unsafe(lock, [input]),
        tx.unsafe<{ row_id: string; complete: boolean }[]>(write, [
          input,
          target.id,
          target.embedding_column,
        ]),
      ]);
      const outcomes = new Map<string, ChunkSetOutcome>();
      for (const w of writes) outcomes.set(w.rowId, "superseded");
      for (const r of rows) outcomes.set(r.row_id, r.complete ? "written" : "incomplete");
      return outcomes;
    } catch (err) {
      if (attempt < 3 && isRetryableNow(err)) continue;
      throw err;
    }
  }
}

/**
 * Adds a portion of each row's chunks to its draft (draftQuery). Returns the
 * rows drafted; the others' text changed since it was read (their newer job
 * splits them again), or another call drafted them meanwhile.
 */
export async function draftChunkSets(
  sql: postgres.Sql,
  target: Target,
  drafts: ChunkDraftWrite[],
): Promise<Set<string>> {
  const input = JSON.stringify(
    drafts.map((w) => ({
      row_id: w.rowId,
      hash: w.hash,
      first_seq: w.firstSeq,
      chunks: w.chunks,
      resume_at: w.resumeAt,
      resume_start: w.resumeStart,
    })),
  );
  const { lock, restart, draft } = draftQuery(target);
  for (let attempt = 1;; attempt++) {
    try {
      const [, , rows] = await sql.begin((tx) => [
        tx.unsafe(lock, [input]),
        tx.unsafe(restart, [input, target.id]),
        tx.unsafe<{ row_id: string }[]>(draft, [input, target.id, target.embedding_column]),
      ]);
      return new Set(rows.map((r) => r.row_id));
    } catch (err) {
      if (attempt < 3 && isRetryableNow(err)) continue;
      throw err;
    }
  }
}
