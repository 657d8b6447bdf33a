// The store seam of the core (sql/store.ts): a batch's work is split by
// where its target keeps its vectors, and nothing else decides it.
import assert from "node:assert/strict";
import { byStore } from "../../supabase/functions/_shared/sql/store.ts";
import type { Target } from "../../supabase/functions/_shared/sql/targets.ts";

const target = (id: number, destination: string | null) =>
  ({ id, destination_sql: destination }) as unknown as Target;

Deno.test("byStore: whole-row targets to the column path, chunked ones to the chunks path", () => {
  const column = target(1, null);
  const chunks = target(2, "public.article_chunks");
  const shadow = target(3, "public._autoembed_chunks_2");
  const work = new Map<Target, string>([[column, "a"], [chunks, "b"], [shadow, "c"]]);
  const split = byStore(work);
  assert.deepEqual([...split.column], [[column, "a"]]);
  assert.deepEqual([...split.chunks], [[chunks, "b"], [shadow, "c"]]);
  assert.equal(byStore(new Map()).column.size + byStore(new Map()).chunks.size, 0);
});
