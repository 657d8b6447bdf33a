// The store seam of the core (sql/store.ts): where a target keeps its
// vectors decides how its text is split into pieces, and nothing else does.
import assert from "node:assert/strict";
import { storeOf } from "../../supabase/functions/_shared/sql/store.ts";
import type { Target } from "../../supabase/functions/_shared/sql/targets.ts";
import type { StoredRow } from "../../supabase/functions/_shared/sql/store.ts";

const target = (id: number, store: string, extra: Partial<Target> = {}) =>
  ({ id, store, model: "text-embedding-3-small", ...extra }) as unknown as Target;

Deno.test("storeOf: a whole-row target's text is one piece; a chunked target's, its chunks", () => {
  const text = Array.from({ length: 12 }, (_, i) => `Paragraph ${i}: ${"words ".repeat(10)}`)
    .join("\n\n");
  const column = target(1, "column");
  assert.equal(storeOf(column).chunked, false);
  const row: StoredRow = { rowId: "1", hash: "", fresh: false, content: text };
  assert.deepEqual(storeOf(column).split(column, row), {
    pieces: [{ text, vector: null }],
    firstSeq: 0,
    next: null,
  });

  const chunks = target(2, "chunks", { splitter: "recursive", chunk_size: 32, chunk_overlap: 0 });
  const { pieces, firstSeq, next } = storeOf(chunks).split(chunks, row);
  assert.equal(storeOf(chunks).chunked, true);
  assert.deepEqual([firstSeq, next], [0, null]);
  assert.ok(pieces.length >= 2, `${pieces.length} pieces`);
  for (const piece of pieces) {
    assert.ok(text.includes(piece.text), piece.text);
    assert.match(piece.hash!, /^[0-9a-f]{64}$/);
    assert.equal(piece.vector, null);
    assert.ok(piece.tokens! > 0 && piece.tokens! <= 32, `${piece.tokens} tokens`);
  }

  // Told to stop, a chunked target's split stops after its first part and
  // says where the next continues; continued from a draft, it numbers on.
  const first = storeOf(chunks).split(chunks, row, () => true);
  assert.ok(first.next && first.pieces.length < pieces.length);
  const rest = storeOf(chunks).split(chunks, {
    ...row,
    draft: { chunks: first.pieces.length, resume: first.next },
  });
  assert.equal(rest.firstSeq, first.pieces.length);
  assert.deepEqual([...first.pieces, ...rest.pieces], pieces);
  assert.throws(() => storeOf(target(4, "elsewhere")), /unknown store elsewhere of target 4/);
});
