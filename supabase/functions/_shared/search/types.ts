// What the search function accepts and answers: the request schema (zod) with
// its caps, the result shape, and the one error type that carries an HTTP
// status from wherever a search fails.
import { z } from "zod";

/** Caps of one search request. */
export const SEARCH_LIMITS = {
  /** Most rows one search returns. */
  maxMatchCount: 100,
  defaultMatchCount: 10,
  /** Longest query text, in characters (a query is a question, not a document). */
  maxQueryChars: 2000,
  /** Most columns one filter names. */
  maxFilterColumns: 16,
} as const;

const identifier = z.string().min(1).max(63);

/** POST body of the search function. */
export const searchRequestSchema = z.strictObject({
  /** `table` or `schema.table` of an attached table. */
  table: z.string().min(1).max(127),
  query: z.string().trim().min(1, "query is empty").max(
    SEARCH_LIMITS.maxQueryChars,
    `query is longer than ${SEARCH_LIMITS.maxQueryChars} characters`,
  ),
  match_count: z.number().int().min(1).max(SEARCH_LIMITS.maxMatchCount).default(
    SEARCH_LIMITS.defaultMatchCount,
  ),
  /** Least cosine similarity of the vector ranking (-1 to 1). */
  match_threshold: z.number().min(-1).max(1).default(0),
  mode: z.enum(["vector", "hybrid"]).default("vector"),
  /** Equality on columns of the table; values are bound, never interpolated. */
  filter: z.record(identifier, z.union([z.string(), z.number(), z.boolean(), z.null()]))
    .refine((f) => Object.keys(f).length <= SEARCH_LIMITS.maxFilterColumns, {
      message: `filter names more than ${SEARCH_LIMITS.maxFilterColumns} columns`,
    })
    .default({}),
  /** The embedding column, when the table has more than one attached. */
  column: identifier.optional(),
});

export type SearchRequest = z.infer<typeof searchRequestSchema>;

/**
 * The field of a parsed JSON body that holds a NUL character (U+0000), named
 * for a message ("query", "filter.title", "a key of filter"), or null. No text
 * of Postgres can hold one, so any string the request carries (names, the
 * query, filter keys and values) is checked before it goes anywhere. The walk
 * is iterative: a body of nested arrays is as deep as it is long.
 */
export function fieldWithNul(json: unknown): string | null {
  type Node = { value: unknown; key: string; up: Node | null };
  const nameOf = (node: Node | null): string => {
    const keys: string[] = [];
    for (let n = node; n?.up; n = n.up) keys.push(n.key);
    keys.reverse();
    // A name as deep as the body would be as long as the body.
    return keys.length > 4 ? `${keys.slice(0, 4).join(".")}...` : keys.join(".");
  };
  const stack: Node[] = [{ value: json, key: "", up: null }];
  while (stack.length > 0) {
    const node = stack.pop()!;
    if (typeof node.value === "string") {
      if (node.value.includes("\u0000")) return nameOf(node) || "body";
      continue;
    }
    if (node.value === null || typeof node.value !== "object") continue;
    // Pushed in reverse, so the first field in the body is the one named.
    for (const [key, value] of Object.entries(node.value).reverse()) {
      if (key.includes("\u0000")) return node.up ? `a key of ${nameOf(node)}` : "a field name";
      stack.push({ value, key, up: node });
    }
  }
  return null;
}

/** A parsed JSON body as a SearchRequest; SearchError 400 naming the field at fault otherwise. */
export function parseSearchRequest(json: unknown): SearchRequest {
  const nul = fieldWithNul(json);
  if (nul) {
    throw new SearchError(
      400,
      `invalid search request: ${nul} holds a NUL character (U+0000), which no text can store`,
    );
  }
  const parsed = searchRequestSchema.safeParse(json);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) =>
      `${i.path.length ? i.path.join(".") : "body"}: ${i.message}`
    );
    throw new SearchError(400, `invalid search request: ${issues.join("; ")}`);
  }
  return parsed.data;
}

/** The best chunk of a row, for a chunked target (its side table of chunks). */
export interface SearchChunk {
  /** The chunk's chunk_seq: its place in the row's text, from 0. */
  seq: number;
  /** The chunk's text (with the markdown splitter, led by its heading path). */
  text: string;
  /** Cosine similarity of the chunk to the query (null: found by its words, not embedded yet). */
  similarity: number | null;
}

export interface SearchResult {
  /** The row's primary key, as text. */
  id: string;
  /**
   * Cosine similarity of the row's embedding to the query's (null: not
   * embedded yet); for a chunked target, its best chunk's.
   */
  similarity: number | null;
  /** The row's columns without its embedding. */
  row: Record<string, unknown>;
  /** For a chunked target: the row's best chunk. */
  chunk?: SearchChunk;
}

export interface SearchResponse {
  /** The model the query was embedded with: the table's current model. */
  model: string;
  results: SearchResult[];
}

/** A search that ends with an HTTP status other than 200; `message` is safe to show the caller. */
export class SearchError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = "SearchError";
  }
}
