// Rows of an attached test table (createDocuments): inserting many at once,
// counting the embedded ones, and checking that each holds the fake
// provider's vector of exactly its current text (I1).
import assert from "node:assert/strict";
import type { Sql } from "../../devtools/db.ts";
import { fakeVector } from "../../devtools/fake_openai.ts";
import { TEST_DIMENSIONS } from "../../devtools/pipeline.ts";

/** Largest difference per dimension accepted between a stored halfvec and the exact vector. */
export const HALFVEC_TOLERANCE = 2e-3;

/**
 * Inserts `n` rows with distinct text in one statement: titles `<prefix> <g>`,
 * contents `content of <prefix> <g>`.
 */
export async function insertRows(
  sql: Sql,
  n: number,
  options: { prefix?: string; table?: string } = {},
): Promise<void> {
  await sql.unsafe(
    `insert into public.${options.table ?? "documents"} (title, content)
     select $2 || ' ' || g, 'content of ' || $2 || ' ' || g from generate_series(1, $1) g`,
    [n, options.prefix ?? "row"],
  );
}

/** Rows of `table` that hold an embedding (of whatever text). */
export async function embeddedCount(sql: Sql, table = "documents"): Promise<number> {
  const [{ n }] = await sql.unsafe(
    `select count(*)::int as n from public.${table} where embedding is not null`,
  );
  return n;
}

/** Parses a halfvec/vector text literal. */
export function parseVector(text: string): number[] {
  return JSON.parse(text);
}

/**
 * Why `embedding` (a halfvec/vector literal, or null) is not the fake
 * provider's vector of `text`, or null when it is.
 */
export function embeddingProblem(
  embedding: string | null,
  text: string,
  dimensions = TEST_DIMENSIONS,
): string | null {
  if (embedding === null) return "no embedding";
  const got = parseVector(embedding);
  const want = fakeVector(text, dimensions);
  if (got.length !== want.length) return `${got.length} dimensions, expected ${want.length}`;
  for (let i = 0; i < want.length; i++) {
    if (!(Math.abs(got[i] - want[i]) <= HALFVEC_TOLERANCE)) return "the embedding of other text";
  }
  return null;
}

/**
 * Rows of `table` (made by createDocuments: content function `<table>_input`)
 * that do not hold the embedding of exactly their current text, as
 * `<id>: <why>`; empty when every row is fresh.
 */
export async function staleRows(sql: Sql, table = "documents"): Promise<string[]> {
  const rows = await sql.unsafe(
    `select id::text, public.${table}_input(d) as text, embedding::text from public.${table} d`,
  );
  const stale: string[] = [];
  for (const row of rows) {
    const why = embeddingProblem(row.embedding, row.text);
    if (why) stale.push(`${row.id}: ${why}`);
  }
  return stale;
}

/** Every row of `table` (at least one) holds the embedding of exactly its current text. */
export async function assertAllFresh(sql: Sql, table = "documents"): Promise<void> {
  const [{ n }] = await sql.unsafe(`select count(*)::int as n from public.${table}`);
  assert.ok(n > 0, `${table} has no rows to check`);
  assert.deepEqual(await staleRows(sql, table), [], `${table}: rows without a fresh embedding`);
}
