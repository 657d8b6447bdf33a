// The store seam of the TypeScript side: where a target's vectors live (its
// rows' own embedding column, or its side table of chunks) is decided here
// and nowhere else, as util._store_* decide it in SQL
// (supabase/schemas/22_stores.sql). The core asks which apply path a
// target's rows take, the search function how to rank a target's rows; a new
// kind of store is a new branch in each function below.
import type postgres from "postgres";
import type { SearchTarget } from "../search/target.ts";
import type { SearchRequest, SearchResult } from "../search/types.ts";
import type { Target } from "./targets.ts";

/**
 * Splits a batch's work by the store of its target (util._target_config's
 * `store`): `column` rows go through the whole-row path (sql/rows.ts,
 * sql/write.ts), `chunks` rows through chunking/apply.ts (sql/chunks.ts).
 */
export function byStore<V>(
  work: Map<Target, V>,
): { column: Map<Target, V>; chunks: Map<Target, V> } {
  const split = { column: new Map<Target, V>(), chunks: new Map<Target, V>() };
  for (const [target, value] of work) {
    const store = split[target.store];
    if (!store) throw new Error(`unknown store ${target.store} of target ${target.id}`);
    store.set(target, value);
  }
  return split;
}

interface MatchRow {
  id: string;
  similarity: number | null;
  row_data: Record<string, unknown> | null;
  /** Chunks store only: the row's best chunk. */
  chunk_seq?: number;
  chunk?: string;
}

/**
 * The rows of `target` nearest to the query, as the caller (`tx` has the
 * caller's role and claims): util.match_hybrid over the embedding column, or
 * util.match_chunked over the side table of chunks (full-text ranking over
 * the chunks' text; each row with its best chunk). Everything is bound.
 */
export async function matchAsCaller(
  tx: postgres.TransactionSql,
  target: SearchTarget,
  vectorText: string,
  request: SearchRequest,
): Promise<SearchResult[]> {
  const hybrid = request.mode === "hybrid";
  if (target.store === "column") {
    const rows = await tx<MatchRow[]>`
      select id, similarity, row_data
        from util.match_hybrid(
               ${target.table_oid}::oid::regclass,
               ${vectorText}::extensions.vector,
               ${hybrid ? request.query : null}::text,
               ${hybrid ? target.content_function_oid : null}::oid::regprocedure,
               ${request.match_count}::int,
               ${request.match_threshold}::float8,
               ${JSON.stringify(request.filter)}::text::jsonb,
               ${target.embedding_column}::name)`;
    return rows.map((r) => ({ id: r.id, similarity: r.similarity, row: r.row_data ?? {} }));
  }
  if (target.store !== "chunks") throw new Error(`unknown store ${target.store}`);
  const rows = await tx<MatchRow[]>`
    select id, similarity, chunk_seq, chunk, row_data
      from util.match_chunked(
             ${target.table_oid}::oid::regclass,
             ${target.destination_oid}::oid::regclass,
             ${vectorText}::extensions.vector,
             ${hybrid ? request.query : null}::text,
             ${request.match_count}::int,
             ${request.match_threshold}::float8,
             ${JSON.stringify(request.filter)}::text::jsonb)`;
  return rows.map((r) => ({
    id: r.id,
    similarity: r.similarity,
    row: r.row_data ?? {},
    chunk: { seq: r.chunk_seq!, text: r.chunk!, similarity: r.similarity },
  }));
}
