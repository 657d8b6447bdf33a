// The store seam of the core (sql/store.ts): a batch's work is split by
// where its target keeps its vectors, and nothing else decides it.
import assert from "node:assert/strict";
import { byStore } from "../../supabase/functions/_shared/sql/store.ts";
import type { Target } from "../../supabase/functions/_shared/sql/targets.ts";

const target = (id: number, store: string) => ({ id, store }) as unknown as Target;

Deno.test("byStore: whole-row targets to the column path, chunked ones to the chunks path", () => {
  const column = target(1, "column");
  const chunks = target(2, "chunks");
  const shadow = target(3, "chunks");
  const work = new Map<Target, string>([[column, "a"], [chunks, "b"], [shadow, "c"]]);
  const split = byStore(work);
  assert.deepEqual([...split.column], [[column, "a"]]);
  assert.deepEqual([...split.chunks], [[chunks, "b"], [shadow, "c"]]);
  assert.equal(byStore(new Map()).column.size + byStore(new Map()).chunks.size, 0);
  assert.throws(() => byStore(new Map([[target(4, "elsewhere"), "d"]])), /unknown store elsewhere/);
});
