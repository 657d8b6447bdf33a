// The row query of a search, run as the caller: in one transaction, under
// the connection's own role, check that the target still has the model the
// query was embedded with; then `set local role` to the caller's role and
// put the caller's claims in request.jwt.claims (as PostgREST does), so the
// table's privileges and RLS policies (auth.uid(), auth.jwt()) apply; then
// the target's store's ranking (sql/store.ts: util.match_hybrid or
// util.match_chunked). Everything is bound; the role is one of three fixed names.
import type postgres from "postgres";
import { errorCode, PIPELINE_SQLSTATES } from "../db_errors.ts";
import { storeOf } from "../sql/store.ts";
import { type Vector, vectorLiteral } from "../vectors.ts";
import { type Caller, SEARCH_ROLES } from "./caller.ts";
import type { SearchTarget } from "./target.ts";
import { SearchError, type SearchRequest, type SearchResult } from "./types.ts";

/** The target's model changed between reading it and querying: embed again with the new one. */
export class ModelChanged extends Error {}

export interface QueryOptions {
  /** statement_timeout of the row query, ms. */
  statementTimeoutMs: number;
}

export async function queryAsCaller(
  sql: postgres.Sql,
  target: SearchTarget,
  vector: Vector,
  request: SearchRequest,
  caller: Caller,
  options: QueryOptions,
): Promise<SearchResult[]> {
  try {
    return await sql.begin(async (tx) => {
      const [current] = await tx<{ model: string; dimensions: number }[]>`
        select model, dimensions from util.embedding_targets
         where id = ${target.id} and shadow_of is null and retired_at is null`;
      if (current?.model !== target.model || current?.dimensions !== target.dimensions) {
        throw new ModelChanged();
      }
      await tx.unsafe(`set local role ${SEARCH_ROLES[caller.role]}`);
      await tx`
        select set_config('request.jwt.claims', ${JSON.stringify(caller.claims)}::text, true),
               set_config('statement_timeout', ${String(options.statementTimeoutMs)}, true)`;
      return await storeOf(target).match(tx, target, vectorLiteral(vector, "vector"), request);
    });
  } catch (err) {
    throw classifyQueryError(err);
  }
}

/** A failed row query as what the caller gets; unknown errors pass through (500). */
function classifyQueryError(err: unknown): unknown {
  if (err instanceof ModelChanged || err instanceof SearchError) return err;
  const code = errorCode(err) ?? "";
  const message = (err as Error).message;
  if (code === PIPELINE_SQLSTATES.invalidArgument) return new SearchError(400, message);
  if (code === "42501") {
    return new SearchError(403, "your role may not read this table (or one of its columns)");
  }
  if (code === "57014") {
    return new SearchError(503, "the search took too long; try again", { "Retry-After": "1" });
  }
  // pgvector's "different vector dimensions" (a plain data exception): the
  // column changed size between the model check and the query.
  if (code === "22000") return new ModelChanged();
  // A filter value the column's type refused (class 22: not a number, a date, ...).
  if (code.startsWith("22")) {
    return new SearchError(400, `a filter value does not fit its column: ${message}`);
  }
  return err;
}
