// The SQL of chunked targets (the chunks store, supabase/schemas/22_stores.sql):
// per batch and target, one read of the rows' text and fingerprints, one look-up
// of which chunk texts already have a vector in the destination, and one
// transaction writing every row's chunk set under a compare-and-set (I2, I12).
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
           f.content_hash is not distinct from h.hash and x.error is null as fresh
      from ${target.table_sql} r
      cross join lateral ${content} x
      cross join lateral (select util._chunked_hash($2, x.content) as hash) h
      left join util.embedding_fingerprints f on f.target_id = $1 and f.row_id = r.${pk}::text
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
  /** The chunks in order; `embedding` null: reuse the vector a chunk of the same text holds. */
  chunks: { chunk: string; embedding: string | null }[];
}

export type ChunkSetOutcome = "written" | "superseded" | "incomplete";

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
 *      theirs): upserts each chunk, leaving unchanged ones untouched, deletes
 *      the chunks past the new end, and sets the fingerprint (an empty set
 *      deletes it). A reader sees a row's old set or its new one (I12).
 * Returns each row's outcome: written, superseded (its text changed since it
 * was read; its newer job writes it), or incomplete (a reused vector was
 * replaced meanwhile; retried).
 */
function writeQuery(target: Target): { lock: string; write: string } {
  const pk = target.pk_sql;
  const dest = target.destination_sql!;
  const ids =
    `array(select i.row_id from jsonb_to_recordset($1::text::jsonb) as i(row_id text))::${target.pk_type_sql}[]`;
  const lock = `
    select from ${target.table_sql} r where r.${pk} = any (${ids})
     order by r.${pk} for no key update`;
  const write = `
    with input as (
      select i.row_id, i.hash, i.chunks
        from jsonb_to_recordset($1::text::jsonb) as i(row_id text, hash text, chunks jsonb)
    ), settings as (
      select util._chunking_key(t) as chunking_key from util.embedding_targets t
       where t.id = $2 and t.retired_at is null and t.embedding_column = $3
    ), current as (
      select r.${pk} as source_id, r.${pk}::text as row_id, i.hash, i.chunks
        from input i
        join ${target.table_sql} r on r.${pk} = i.row_id::${target.pk_type_sql}
        cross join settings s
       where case when r.${pk} = i.row_id::${target.pk_type_sql}
                  then util._chunked_hash(s.chunking_key, ${target.content_function_sql}(r)) = decode(i.hash, 'hex')
             end
    ), pieces as (
      select c.source_id, (x.ordinality - 1)::int as chunk_seq, x.chunk, util._content_hash(x.chunk) as chunk_hash,
             coalesce(x.embedding::${target.embedding_type_sql},
                      (select d.embedding from ${dest} d
                        where d.chunk_hash = util._content_hash(x.chunk) and d.embedding is not null
                        limit 1)) as embedding
        from current c
        cross join lateral (select e.chunk, e.embedding, o.ordinality
                              from jsonb_array_elements(c.chunks) with ordinality as o(value, ordinality)
                              cross join lateral jsonb_to_record(o.value) as e(chunk text, embedding text)) x
    ), complete as (
      select c.* from current c
       where not exists (select from pieces p where p.source_id = c.source_id and p.embedding is null)
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
       where d.source_id = c.source_id and d.chunk_seq >= jsonb_array_length(c.chunks)
      returning 1
    ), fingerprinted as (
      insert into util.embedding_fingerprints as f (target_id, row_id, content_hash)
      select $2, c.row_id, decode(c.hash, 'hex') from complete c where jsonb_array_length(c.chunks) > 0
      on conflict (target_id, row_id) do update
        set content_hash = excluded.content_hash, embedded_at = now()
    ), unfingerprinted as (
      delete from util.embedding_fingerprints f using complete c
       where jsonb_array_length(c.chunks) = 0 and f.target_id = $2 and f.row_id = c.row_id
    )
    select c.row_id, exists (select from complete k where k.row_id = c.row_id) as complete
      from current c`;
  return { lock, write };
}

export async function writeChunkSets(
  sql: postgres.Sql,
  target: Target,
  writes: ChunkSetWrite[],
): Promise<Map<string, ChunkSetOutcome>> {
  const input = JSON.stringify(
    writes.map((w) => ({ row_id: w.rowId, hash: w.hash, chunks: w.chunks })),
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
