// Writes a target's embeddings and fingerprints in one statement and one
// transaction, under a compare-and-set on the content hash (I2).
import type postgres from "postgres";
import { isRetryableNow } from "../db_errors.ts";
import type { Target } from "./targets.ts";
import { type Vector, vectorList } from "../vectors.ts";

export interface EmbeddingWrite {
  rowId: string;
  /** sha256 (hex) of the text the vector was computed from. */
  hash: string;
  /**
   * The provider's vector, or the text of one copied from a row that holds
   * it, or null to clear the embedding (the row has no text any more).
   */
  vector: Vector | string | null;
}

/**
 * The UPDATE only takes rows whose current text still hashes to what was
 * embedded (compare-and-set), and only while the target is still what the
 * batch read: a model switch that committed meanwhile (the target retired,
 * or its column renamed) makes the write take nothing, so a vector of the
 * old model never lands in the new column (I7). The compare-and-set sits in
 * a CASE behind the key match: as a plain conjunct the planner may make it a
 * hash key and call the content function on every row of the table (slow,
 * and one row whose function raises would fail every write). A null vector
 * clears the row's embedding and deletes its fingerprint. Returns the row
 * ids written.
 */
function writeQuery(target: Target): string {
  const pk = target.pk_sql;
  return `
    with input as (
      -- Parsed once here: the vectors are most of the work. They come as one
      -- text that string_to_array splits on ';': a jsonb document (as
      -- before) or a text[] literal costs Postgres more CPU to take apart
      -- (bench/RESULTS.md, section 1b); the short ids and hashes as text[].
      -- unnest pairs the three by position. Its estimate (100 rows) keeps the
      -- join on the primary key index: string_to_table, estimated at 1,000,
      -- made the planner hash the whole table instead.
      select i.row_id, i.hash, i.embedding::${target.embedding_type_sql} as embedding
        from unnest($1::text::text[], $2::text::text[], string_to_array($3::text, ';', ''))
             as i(row_id, hash, embedding)
    ), written as (
      update ${target.table_sql} r
         set ${target.embedding_sql} = i.embedding
        from input i
       where r.${pk} = i.row_id::${target.pk_type_sql}
         and exists (select from util.embedding_targets t
                      where t.id = $4 and t.retired_at is null and t.embedding_column = $5)
         and case when r.${pk} = i.row_id::${target.pk_type_sql}
                  then util._content_hash(${target.content_function_sql}(r)) = decode(i.hash, 'hex')
             end
      returning r.${pk}::text as row_id, i.hash, i.embedding is null as cleared
    ), fingerprinted as (
      insert into util.embedding_fingerprints as f (target_id, row_id, content_hash)
      select $4, w.row_id, decode(w.hash, 'hex') from written w where not w.cleared
      on conflict (target_id, row_id) do update
        set content_hash = excluded.content_hash, embedded_at = now()
        -- A second job for the same text (a sweep and a trigger both queued
        -- the row) leaves the fingerprint as it is: no dead row per repeat.
        where f.content_hash is distinct from excluded.content_hash
    ), unfingerprinted as (
      delete from util.embedding_fingerprints f
       using written w
       where w.cleared and f.target_id = $4 and f.row_id = w.row_id
    )
    select row_id from written`;
}

export async function writeEmbeddings(
  sql: postgres.Sql,
  target: Target,
  writes: EmbeddingWrite[],
): Promise<Set<string>> {
  const rowIds = textArrayLiteral(writes.map((w) => w.rowId));
  const hashes = textArrayLiteral(writes.map((w) => w.hash));
  const vectors = vectorList(writes.map((w) => w.vector), target.embedding_type_sql);
  for (let attempt = 1;; attempt++) {
    try {
      const rows = await sql.begin(async (tx) => {
        // Our own write must not enqueue new jobs through the update trigger.
        await tx`select set_config('autoembed.applying', 'on', true)`;
        return await tx.unsafe<{ row_id: string }[]>(writeQuery(target), [
          rowIds,
          hashes,
          vectors,
          target.id,
          target.embedding_column,
        ]);
      });
      return new Set(rows.map((r) => r.row_id));
    } catch (err) {
      if (attempt < 3 && isRetryableNow(err)) continue;
      throw err;
    }
  }
}

/** `values` as a text[] literal: each quoted, its quotes and backslashes escaped. */
export function textArrayLiteral(values: string[]): string {
  return `{${values.map((v) => `"${v.replace(/[\\"]/g, "\\$&")}"`).join(",")}}`;
}
