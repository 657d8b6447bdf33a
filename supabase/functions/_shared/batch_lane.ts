// The core's side of the batch lane (supabase/schemas/55_batch_lane.sql):
// the texts of a batch-lane job that no store holds a vector of are looked
// up among the target's batch texts by their sha256 (the batch line's
// custom_id). A vector a finished batch brought is used as the provider's
// would be, under the same compare-and-set; a text its batch has not
// answered yet, or a new one (staged here into the target's open batch),
// parks the row's job until the batch ends; a text its batch failed goes
// online. One look-up and at most one staging statement per target.
import { createHash } from "node:crypto";
import type postgres from "postgres";
import type { Piece } from "./sql/store.ts";
import { type BatchText, lookUpBatchTexts, stageBatchTexts } from "./sql/batches.ts";

/** A text of a batch-lane row: the row (`owner`), its target and the piece to embed. */
export interface LaneText<T> {
  owner: T;
  targetId: number;
  piece: Piece;
  /** Its tokens by the model's tokenizer (the batch's size against the account's limits). */
  tokens: number;
}

export interface LaneOutcome<T> {
  /** Texts whose vector a batch brought (set on the piece). */
  fromBatch: LaneText<T>[];
  /** Texts to embed online: their batch failed them, or the endpoint has no batch API. */
  online: LaneText<T>[];
  /** Rows waiting for a batch, with the last batch they wait for: nothing of theirs is written or sent now. */
  parked: Map<T, number>;
}

/** The custom_id of a piece: the sha256 (hex) of what the provider is given. */
export function customIdOf(piece: Piece): string {
  if (piece.input === undefined && piece.hash) return piece.hash;
  return createHash("sha256").update(piece.input ?? piece.text, "utf8").digest("hex");
}

export async function resolveBatchLane<T>(
  sql: postgres.Sql,
  texts: LaneText<T>[],
): Promise<LaneOutcome<T>> {
  const outcome: LaneOutcome<T> = { fromBatch: [], online: [], parked: new Map() };
  const park = (owner: T, batch: number) =>
    outcome.parked.set(owner, Math.max(batch, outcome.parked.get(owner) ?? 0));
  const byTarget = new Map<number, LaneText<T>[]>();
  for (const text of texts) {
    const list = byTarget.get(text.targetId);
    if (list) list.push(text);
    else byTarget.set(text.targetId, [text]);
  }
  for (const [targetId, list] of byTarget) {
    const ids = list.map((t) => customIdOf(t.piece));
    const known = await lookUpBatchTexts(sql, targetId, [...new Set(ids)]);
    const toStage = new Map<string, { custom_id: string; input: string; tokens: number }>();
    const staged: LaneText<T>[] = [];
    list.forEach((text, i) => {
      const held: BatchText | undefined = known.get(ids[i]);
      if (!held) {
        toStage.set(ids[i], {
          custom_id: ids[i],
          input: text.piece.input ?? text.piece.text,
          tokens: text.tokens,
        });
        staged.push(text);
      } else if ("vector" in held) {
        text.piece.vector = held.vector;
        outcome.fromBatch.push(text);
      } else if ("error" in held) outcome.online.push(text);
      else park(text.owner, held.pending);
    });
    if (toStage.size) {
      const batch = await stageBatchTexts(sql, targetId, [...toStage.values()]);
      if (batch !== null) { for (const text of staged) park(text.owner, batch); }
      else outcome.online.push(...staged);
    }
  }
  // A parked row waits whole: none of its texts is sent or written now.
  outcome.fromBatch = outcome.fromBatch.filter((t) => !outcome.parked.has(t.owner));
  outcome.online = outcome.online.filter((t) => !outcome.parked.has(t.owner));
  return outcome;
}
