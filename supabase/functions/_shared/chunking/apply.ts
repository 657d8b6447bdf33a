// Applies a batch's jobs of chunked targets: split each changed row's text,
// embed only chunk texts no chunk of the destination holds a vector for (all
// rows and targets of the batch together, one provider call per provider
// batch: I3), and write each target's chunk sets in one transaction under a
// compare-and-set (I2, I12). Jobs, failures and counts go through the same
// Outcome as whole-row targets (core.ts).
import { createHash } from "node:crypto";
import type postgres from "postgres";
import { isConnectionError } from "../db_errors.ts";
import { type EmbedRequest, embedTexts } from "../embed_texts.ts";
import { type EmbeddingProvider, ProviderError, providerOrError } from "../providers/types.ts";
import { tokenCounterFor } from "../providers/tokens.ts";
import type { ProviderHealth } from "../recovery.ts";
import {
  existingChunkHashes,
  loadChunkedRows,
  recordTruncatedChunks,
  writeChunkSets,
} from "../sql/chunks.ts";
import type { Target } from "../sql/targets.ts";
import { vectorLiteral } from "../vectors.ts";
import { type ChunkSettings, splitIntoChunks, type SplitterName } from "./split.ts";

/** What the core passes in: its per-row work items and the outcome of the batch. */
export interface ChunkedWork {
  rowId: string;
  jobIds: number[];
}

export interface ChunkOutcome<W extends ChunkedWork> {
  stats: {
    rows: number;
    fresh: number;
    deleted: number;
    emptyText: number;
    embedded: number;
    written: number;
    superseded: number;
    refused: number;
    providerCalls: number;
    providerInputs: number;
    chunks: number;
    chunksEmbedded: number;
  };
  /** How the providers fared in this batch (recovery.ts). */
  health?: ProviderHealth;
  /** Fails every job of `work` (once each). */
  fail(work: W, error: string, retryable: boolean, retryAfterMs?: number): void;
  /** Stopped by a provider-wide failure: waits, no attempt spent. */
  defer(work: W): void;
  handBack(work: W): void;
}

export interface ChunkApplyOptions {
  providerFor: (model: string, dimensions: number) => EmbeddingProvider;
  deadline?: number;
  signal?: AbortSignal;
  providerConcurrency?: number;
}

/** One chunk of a row's new set: its text, and its vector once known (null: reuse by hash). */
interface Piece {
  text: string;
  hash: string;
  /** What the provider is given: the text, or its start when one unit is over the model's limit. */
  input?: string;
  vector: string | null;
}

interface RowPlan<W> {
  target: Target;
  work: W;
  hash: string;
  pieces: Piece[];
  failed?: boolean;
}

const sha256 = (text: string) => createHash("sha256").update(text, "utf8").digest("hex");

export function chunkSettingsOf(target: Target): ChunkSettings {
  return {
    splitter: target.splitter as SplitterName,
    chunkSize: target.chunk_size!,
    chunkOverlap: target.chunk_overlap!,
  };
}

/** Applies the jobs of chunked targets. Throws only when the database is unreachable. */
export async function applyChunked<W extends ChunkedWork>(
  sql: postgres.Sql,
  rowsByTarget: Map<Target, Map<string, W>>,
  options: ChunkApplyOptions,
  outcome: ChunkOutcome<W>,
): Promise<void> {
  const { stats } = outcome;
  const plans: RowPlan<W>[] = [];
  const truncated = new Map<Target, { rowId: string; error: string }[]>();
  const requests: EmbedRequest[] = [];
  const requested: { piece: Piece; target: Target }[] = [];
  for (const [target, rows] of rowsByTarget) {
    stats.rows += rows.size;
    const loaded = await loadChunkedRows(
      sql,
      target,
      [...rows.keys()],
      (rowId, message, retryable) => {
        if (!retryable) stats.refused++;
        outcome.fail(rows.get(rowId)!, message, retryable);
        rows.delete(rowId);
      },
    );
    const counter = tokenCounterFor(target.model);
    const settings = chunkSettingsOf(target);
    const targetPlans: RowPlan<W>[] = [];
    for (const work of rows.values()) {
      const row = loaded.get(work.rowId);
      if (!row) {
        stats.deleted++; // I6: the row is gone; its chunks went with it (its delete trigger)
        continue;
      }
      if (row.fresh) {
        stats.fresh++; // I3/I4: the chunk set is of exactly this text and these settings
        continue;
      }
      const text = row.content ?? "";
      if (text.trim() === "") stats.emptyText++; // no text: its chunks go, under the same compare-and-set
      const pieces = text.trim() === ""
        ? []
        : splitIntoChunks(text, settings, counter).map((c) => ({
          text: c.text,
          hash: sha256(c.text),
          vector: null,
        }));
      targetPlans.push({ target, work, hash: row.hash, pieces });
    }
    const known = await existingChunkHashes(
      sql,
      target,
      targetPlans.flatMap((p) => p.pieces.map((c) => c.hash)),
    );
    let provider: EmbeddingProvider | ProviderError | undefined;
    for (const plan of targetPlans) {
      plans.push(plan);
      const fresh = plan.pieces.filter((c) => !known.has(c.hash));
      if (fresh.length === 0) continue;
      provider ??= providerOrError(options.providerFor, target);
      if (provider instanceof ProviderError) {
        plan.failed = true;
        outcome.fail(plan.work, provider.message, provider.retryable);
        continue;
      }
      for (const piece of fresh) {
        const tokens = counter.count(piece.text);
        piece.input = piece.text;
        if (tokens > provider.maxInputTokens) {
          // One indivisible unit over the model's limit: its vector is of its
          // start, and the user is told (the chunk text itself stays whole).
          piece.input = counter.truncate(piece.text, provider.maxInputTokens);
          const notes = truncated.get(target) ?? [];
          notes.push({
            rowId: plan.work.rowId,
            error:
              `a chunk of ${tokens} tokens is over the ${provider.maxInputTokens}-token input ` +
              `limit of ${target.model}: embedded its first ${provider.maxInputTokens} tokens ` +
              "(split the text with a splitter other than none, or break up the long unit)",
          });
          truncated.set(target, notes);
        }
        requests.push({ text: piece.input, model: target.model, dimensions: target.dimensions });
        requested.push({ piece, target });
      }
    }
  }

  const results = await embedTexts(requests, {
    providerFor: options.providerFor,
    deadline: options.deadline,
    signal: options.signal,
    concurrency: options.providerConcurrency,
    health: outcome.health,
  }, stats);
  const failures = new Map<
    Piece,
    { error: string; retryable: boolean; retryAfterMs?: number } | "handedBack" | "deferred"
  >();
  requested.forEach(({ piece, target }, i) => {
    const result = results[i];
    if ("vector" in result) {
      stats.chunksEmbedded++;
      piece.vector = vectorLiteral(result.vector, target.embedding_type_sql);
    } else if ("deferred" in result) failures.set(piece, "deferred");
    else if ("error" in result) failures.set(piece, result);
    else failures.set(piece, "handedBack");
  });

  const byTarget = new Map<Target, RowPlan<W>[]>();
  for (const plan of plans) {
    if (plan.failed) continue;
    // A row's worst: its own failure, then a provider's, then time running out.
    const found = plan.pieces.map((p) => failures.get(p)).filter((f) => f !== undefined);
    const failure = found.find((f) => typeof f === "object") ??
      found.find((f) => f === "deferred") ?? found[0];
    if (failure === "handedBack") outcome.handBack(plan.work);
    else if (failure === "deferred") outcome.defer(plan.work);
    else if (failure) {
      outcome.fail(plan.work, failure.error, failure.retryable, failure.retryAfterMs);
    } else {
      const list = byTarget.get(plan.target) ?? [];
      list.push(plan);
      byTarget.set(plan.target, list);
    }
  }
  for (const [target, list] of byTarget) {
    try {
      const written = await writeChunkSets(
        sql,
        target,
        list.map((p) => ({
          rowId: p.work.rowId,
          hash: p.hash,
          chunks: p.pieces.map((c) => ({ chunk: c.text, embedding: c.vector })),
        })),
      );
      for (const plan of list) {
        const result = written.get(plan.work.rowId);
        if (result === "written") {
          stats.written++;
          stats.chunks += plan.pieces.length;
        } else if (result === "incomplete") {
          outcome.fail(
            plan.work,
            "a chunk vector this row was to reuse was replaced meanwhile; retried",
            true,
          );
        } else stats.superseded++; // its text changed since it was read; its newer job writes it
      }
      const notes = truncated.get(target) ?? [];
      const writtenRows = new Set(
        list.filter((p) => written.get(p.work.rowId) === "written").map((p) => p.work.rowId),
      );
      await recordTruncatedChunks(sql, target, notes.filter((n) => writtenRows.has(n.rowId)));
    } catch (err) {
      if (isConnectionError(err)) throw err;
      const message = `writing chunks failed: ${(err as Error).message}`;
      for (const plan of list) outcome.fail(plan.work, message, true);
    }
  }
}
