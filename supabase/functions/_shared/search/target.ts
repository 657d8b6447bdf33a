// Which attached table a search names, with the model and dimensions its
// column holds now. Read with the function's own database role: the caller's
// role has no access to util.embedding_targets.
import type postgres from "postgres";
import { SearchError } from "./types.ts";

export interface SearchTarget {
  id: number;
  schema_name: string;
  table_name: string;
  /** pg_class oid of the table (bound as a parameter, cast to regclass). */
  table_oid: string;
  /** The vector column, or for a chunked target the destination's table name. */
  embedding_column: string;
  /** Where its vectors live (util.embedding_targets.store): its column, or its side table of chunks. */
  store: string;
  /** pg_class oid of a chunked target's side table of chunks; null for a whole-row target. */
  destination_oid: string | null;
  /** pg_proc oid of the content function, null when it no longer exists. */
  content_function_oid: string | null;
  model: string;
  dimensions: number;
}

/**
 * Splits `table` or `schema.table` (schema defaults to public). The names are
 * only ever compared with the catalog as bound values, so any text is
 * harmless; a name with more than one dot cannot be an attached table.
 */
export function parseTableName(table: string): { schema: string; name: string } {
  const parts = table.split(".");
  if (parts.length > 2 || parts.some((p) => p.length === 0 || p.length > 63)) {
    throw new SearchError(400, 'table must be "name" or "schema.name"');
  }
  return parts.length === 2
    ? { schema: parts[0], name: parts[1] }
    : { schema: "public", name: parts[0] };
}

/**
 * The live (not shadow, not retired) target of `table`, and of `column` when
 * given (else the table's only one, or the one named `embedding`). `table` is
 * always the source table; a chunked target is named by its destination's
 * table name (its embedding_column), as in util.embedding_status. 404 when
 * the table is not attached.
 */
export async function findSearchTarget(
  sql: postgres.Sql | postgres.TransactionSql,
  table: string,
  column?: string,
): Promise<SearchTarget> {
  const { schema, name } = parseTableName(table);
  const rows = await sql<SearchTarget[]>`
    select t.id, n.nspname::text as schema_name, c.relname::text as table_name,
           c.oid::int8::text as table_oid, t.embedding_column::text as embedding_column,
           t.store, t.destination::oid::int8::text as destination_oid,
           util._content_function_of(t)::oid::int8::text as content_function_oid,
           t.model, t.dimensions
      from util.embedding_targets t
      join pg_catalog.pg_class c on c.oid = t.table_oid
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where n.nspname = ${schema} and c.relname = ${name}
       and t.shadow_of is null and t.retired_at is null
     order by t.embedding_column = 'embedding' desc, t.id`;
  const found = column === undefined ? rows : rows.filter((r) => r.embedding_column === column);
  if (found.length === 0) {
    throw new SearchError(
      404,
      column === undefined || rows.length === 0
        ? `table ${schema}.${name} is not attached for embeddings`
        : `column ${column} of ${schema}.${name} is not attached for embeddings`,
    );
  }
  if (column === undefined && found.length > 1 && found[0].embedding_column !== "embedding") {
    throw new SearchError(
      400,
      `${schema}.${name} has several embedding targets: name one with "column" ` +
        "(an embedding column, or the table of chunks of a chunked target)",
    );
  }
  return found[0];
}
