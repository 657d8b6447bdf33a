// Search by text: find the attached target, embed the query with the
// target's current model (through the query cache and the same providers as
// the pipeline), then query the rows as the caller. Provider trouble becomes
// 503 with Retry-After. Logs carry counts and durations, never the query.
import type postgres from "postgres";
import { type EmbeddingProvider, ProviderError } from "../providers/types.ts";
import { budgetOf, BudgetSpent, embedWithinBudget, type RateBudget } from "../rate_budget.ts";
import type { Vector } from "../vectors.ts";
import type { QueryCache } from "./cache.ts";
import type { Caller } from "./caller.ts";
import { ModelChanged, queryAsCaller } from "./query.ts";
import { findSearchTarget, type SearchTarget } from "./target.ts";
import { SearchError, type SearchRequest, type SearchResponse } from "./types.ts";

export interface SearchDeps {
  sql: postgres.Sql;
  providerFor: (model: string, dimensions: number) => EmbeddingProvider;
  cache: QueryCache;
  /** The provider call's own timeout for a query, ms. */
  embedTimeoutMs: number;
  statementTimeoutMs: number;
  log: (event: Record<string, unknown>) => void;
  /** The providers' rate budget (default: the one in this database; null: none). */
  budget?: RateBudget | null;
}

/** Seconds a caller should wait after provider trouble, for Retry-After. */
function retryAfterSeconds(err: ProviderError): number {
  if (err.retryAfterMs !== undefined) return Math.max(1, Math.ceil(err.retryAfterMs / 1000));
  return err.retryable ? 1 : 60;
}

async function embedQuery(
  deps: SearchDeps,
  target: SearchTarget,
  text: string,
): Promise<{ vector: Vector; hit: boolean }> {
  try {
    return await deps.cache.vector(target.model, target.dimensions, text, async () => {
      const provider = deps.providerFor(target.model, target.dimensions);
      const signal = AbortSignal.timeout(deps.embedTimeoutMs);
      try {
        // Search has its own share of the budget: a backfill never makes it wait.
        const [vector] = await embedWithinBudget(provider, [text], {
          budget: deps.budget === null ? undefined : deps.budget ?? budgetOf(deps.sql),
          priority: "search",
          maxWaitMs: deps.embedTimeoutMs,
          deadline: Date.now() + deps.embedTimeoutMs,
          signal,
          // An app's query is not held through a 429: it gets 503 with Retry-After.
          retriesAfter429: 0,
        });
        return vector;
      } catch (err) {
        if (err instanceof BudgetSpent) {
          throw new ProviderError(`embedding with ${target.model} failed: ${err.message}`, {
            retryable: true,
            retryAfterMs: err.waitMs,
          });
        }
        if (signal.aborted) {
          throw new ProviderError(
            `embedding with ${target.model} failed: no answer within ${deps.embedTimeoutMs} ms`,
            { retryable: true },
          );
        }
        throw err;
      }
    });
  } catch (err) {
    if (err instanceof ProviderError) {
      // The message names the model and the kind of failure, never the input.
      throw new SearchError(503, `the embedding provider is unavailable: ${err.message}`, {
        "Retry-After": String(retryAfterSeconds(err)),
      });
    }
    throw err;
  }
}

/** One search. Throws SearchError for every outcome but success (and unexpected errors). */
export async function searchByText(
  deps: SearchDeps,
  request: SearchRequest,
  caller: Caller,
): Promise<SearchResponse> {
  const started = performance.now();
  // A model switch between reading the target and querying it: once more with the new model.
  for (let attempt = 1;; attempt++) {
    const target = await findSearchTarget(deps.sql, request.table, request.column);
    const embedStarted = performance.now();
    const { vector, hit } = await embedQuery(deps, target, request.query);
    const queryStarted = performance.now();
    try {
      const results = await queryAsCaller(deps.sql, target, vector, request, caller, {
        statementTimeoutMs: deps.statementTimeoutMs,
      });
      deps.log({
        event: "search",
        table: `${target.schema_name}.${target.table_name}`,
        mode: request.mode,
        role: caller.role,
        results: results.length,
        cache: hit ? "hit" : "miss",
        embed_ms: Math.round(queryStarted - embedStarted),
        query_ms: Math.round(performance.now() - queryStarted),
        total_ms: Math.round(performance.now() - started),
      });
      return { model: target.model, results };
    } catch (err) {
      if (!(err instanceof ModelChanged)) throw err;
      if (attempt >= 2) {
        throw new SearchError(503, "the table's model is changing; try again", {
          "Retry-After": "1",
        });
      }
    }
  }
}
