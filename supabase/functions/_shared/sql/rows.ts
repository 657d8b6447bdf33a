// Reads a batch's rows of one target in one query: each row's text (through
// the content function), its hash, whether its embedding is current (the
// fingerprint), and, for rows that need a vector, a row of any target of the
// same model and dimensions that already holds one for the same text (a
// "donor"), so text embedded once is never paid for again (I3).
import type postgres from "postgres";
import { isConnectionError } from "../db_errors.ts";
import { EXACTLY_CHECKED_KEY_TYPES } from "../keys.ts";
import type { Target } from "./targets.ts";

export interface LoadedRow {
  row_id: string;
  content: string | null;
  /** The content function's error for this row (safe read only). */
  error: string | null;
  hash: string;
  has_embedding: boolean;
  fp_hash: string | null;
  /** A row holding a vector of this text by this model: its target and key. */
  donor_target: number | null;
  donor_row: string | null;
  /** The donor's vector, when the donor is a row of this same target. */
  donor_vector: string | null;
}

/**
 * The read. `safe` calls the content function through util._try_content,
 * which catches its errors per row (slower: one subtransaction per row), so
 * it is only the fallback when the plain query failed. The donor look-up
 * runs only for rows whose own embedding is not current; it goes through
 * the hash index on content_hash. A donor of this target is read in the same
 * snapshot as its fingerprint, so its vector is the one of that text.
 */
function loadQuery(target: Target, safe: boolean): string {
  const content = contentOfRow(target, safe);
  const pk = target.pk_sql;
  const emb = target.embedding_sql;
  return `
    select r.${pk}::text as row_id,
           x.content,
           x.error,
           encode(h.hash, 'hex') as hash,
           r.${emb} is not null as has_embedding,
           encode(f.content_hash, 'hex') as fp_hash,
           d.target_id as donor_target,
           d.row_id as donor_row,
           dr.${emb}::text as donor_vector
      from ${target.table_sql} r
      cross join lateral ${content} x
      cross join lateral (select util._content_hash(x.content) as hash) h
      left join util.embedding_fingerprints f
             on f.target_id = $1 and f.row_id = r.${pk}::text
      left join lateral (
             select g.target_id, g.row_id
               from util.embedding_fingerprints g
              where (r.${emb} is null or f.content_hash is distinct from h.hash)
                and g.content_hash = h.hash
                and g.target_id = any (array(select jsonb_array_elements_text($2::text::jsonb)::int))
                and not (g.target_id = $1 and g.row_id = r.${pk}::text)
              order by g.target_id <> $1
              limit 1) d on true
      left join ${target.table_sql} dr
             on dr.${pk} = case when d.target_id = $1 then d.row_id::${target.pk_type_sql} end
     where r.${pk} = any (
             array(select jsonb_array_elements_text($3::text::jsonb))::${target.pk_type_sql}[])`;
}

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
export function loadRows(
  sql: postgres.Sql,
  target: Target,
  donorTargets: number[],
  rowIds: string[],
  onRowError: (rowId: string, message: string, retryable: boolean) => void,
): Promise<Map<string, LoadedRow>> {
  return readRowsIsolated<LoadedRow>(
    sql,
    target,
    (safe) => loadQuery(target, safe),
    JSON.stringify(donorTargets),
    rowIds,
    onRowError,
  );
}

/**
 * The content function's text of row `r` as `(content, error)`. `safe` goes
 * through util._try_content, which catches its errors per row (slower: one
 * subtransaction per row). Identifiers come from util._target_config (quoted
 * there), never from the job.
 */
export function contentOfRow(target: Target, safe: boolean): string {
  return safe
    ? `util._try_content('${target.content_function_sql.replaceAll("'", "''")}', r)`
    : `(select ${target.content_function_sql}(r) as content, null::text as error)`;
}

/**
 * The read of `loadRows`, for any row query with parameters ($1 target id,
 * $2 `second`, $3 the ids as a JSON array) whose rows carry `row_id` and the
 * content function's `error`; chunked targets read their rows through it too.
 */
export async function readRowsIsolated<R extends { row_id: string; error: string | null }>(
  sql: postgres.Sql,
  target: Target,
  query: (safe: boolean) => string,
  second: string,
  rowIds: string[],
  onRowError: (rowId: string, message: string, retryable: boolean) => void,
): Promise<Map<string, R>> {
  const params = [target.id, second, JSON.stringify(rowIds)];
  const read = async (safe: boolean) =>
    (await sql.begin((tx) => tx.unsafe(query(safe), params))) as unknown as R[];
  try {
    return new Map((await read(false)).map((r) => [r.row_id, r]));
  } catch (err) {
    if (isConnectionError(err)) throw err;
  }
  if (!EXACTLY_CHECKED_KEY_TYPES.has(target.pk_type_sql)) {
    const [{ invalid }] = await sql<{ invalid: string[] }[]>`
      select util._invalid_keys(${target.id}, ${params[2]}::text::jsonb) as invalid`;
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
      params[2] = JSON.stringify(rowIds);
    }
  }
  let rows: R[];
  try {
    rows = await read(true);
  } catch (err) {
    if (isConnectionError(err)) throw err;
    for (const rowId of rowIds) {
      onRowError(rowId, `reading the row failed: ${(err as Error).message}`, true);
    }
    return new Map();
  }
  const result = new Map<string, R>();
  for (const row of rows) {
    if (row.error === null) result.set(row.row_id, row);
    else onRowError(row.row_id, `the content function failed: ${row.error}`, true);
  }
  return result;
}

/**
 * The vectors of donor rows of another target: `wanted` maps a donor row id
 * to the text hash it must still hold. A row whose fingerprint changed since
 * it was found (its text was edited and re-embedded) is left out, so a copy
 * is always of the text it is meant for. One query per donor target.
 */
export async function loadDonorVectors(
  sql: postgres.Sql,
  donor: Target,
  wanted: Map<string, string>,
): Promise<Map<string, string>> {
  const rows = await sql.unsafe<{ row_id: string; hash: string; vector: string }[]>(
    `select r.${donor.pk_sql}::text as row_id, encode(f.content_hash, 'hex') as hash,
            r.${donor.embedding_sql}::text as vector
       from ${donor.table_sql} r
       join util.embedding_fingerprints f on f.target_id = $1 and f.row_id = r.${donor.pk_sql}::text
      where r.${donor.pk_sql} = any (
              array(select jsonb_array_elements_text($2::text::jsonb))::${donor.pk_type_sql}[])
        and r.${donor.embedding_sql} is not null`,
    [donor.id, JSON.stringify([...wanted.keys()])],
  );
  const vectors = new Map<string, string>();
  for (const row of rows) {
    if (wanted.get(row.row_id) === row.hash) vectors.set(row.row_id, row.vector);
  }
  return vectors;
}
