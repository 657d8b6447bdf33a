// The store seam of the TypeScript side: where a target's vectors live (its
// rows' own embedding column, or its side table of chunks) is decided here
// and nowhere else, as util._store_* decide it in SQL
// (supabase/schemas/22_stores.sql). The core (core.ts) runs one pipeline for
// every target: read the rows, split each text into pieces, reuse vectors
// already held, embed the rest, write under a compare-and-set. It asks the
// target's Store for the four steps that depend on where vectors live; the
// search function asks it how to rank a target's rows. A new kind of store
// is one more Store in STORES below, one more branch in matchAsCaller, and
// its util._store_* branches in SQL.
import { createHash } from "node:crypto";
import type postgres from "postgres";
import {
  type ChunkSettings,
  splitPortion,
  type SplitResume,
  type SplitterName,
} from "../chunking/split.ts";
import { tokenCounterFor } from "../providers/tokens.ts";
import type { SearchTarget } from "../search/target.ts";
import type { SearchRequest, SearchResult } from "../search/types.ts";
import { type Vector, vectorLiteral } from "../vectors.ts";
import {
  type ChunkSetOutcome,
  draftChunkSets,
  existingChunkHashes,
  loadChunkedRows,
  writeChunkSets,
} from "./chunks.ts";
import { loadDonorVectors, loadRows } from "./rows.ts";
import type { Target, Targets } from "./targets.ts";
import { type BinaryWrites, writeEmbeddings } from "./write.ts";

/** A row of a batch as its store read it (one query per target). */
export interface StoredRow {
  rowId: string;
  /** What the write's compare-and-set checks: the hash of the text (and settings) read. */
  hash: string;
  /** The store holds exactly this text's vectors already (I3/I4): nothing to do. */
  fresh: boolean;
  /** The text, when not fresh; null or blank: what the store holds for the row goes. */
  content: string | null;
  /** A row holding a vector of this same text by this model (whole-text stores, I3). */
  donor?: { target: number | null; row: string | null; vector: string | null };
  /** Chunks earlier calls split from this same text, and where its split resumes (chunks store). */
  draft?: { chunks: number; resume: SplitResume };
}

/** One text a row's store keeps a vector of: the row's whole text, or one of its chunks. */
export interface Piece {
  text: string;
  /** sha256 (hex) of the text, where the store looks vectors up by it. */
  hash?: string;
  /** What the provider is given when it is not `text` (its start, over the model's limit). */
  input?: string;
  /** The vector: the provider's, or one copied from a row that holds it. */
  vector: Vector | string | null;
  /** The store holds a vector of this text already; its write reuses it by hash. */
  reused?: boolean;
  /** Its tokens by the model's tokenizer, where known (the splitter counted them). */
  tokens?: number;
}

/** A row's pieces as one call splits them: all of them, or a portion of a long text's chunks. */
export interface Split {
  pieces: Piece[];
  /** The first piece's place in the row's set: the pieces before it are in the row's draft. */
  firstSeq: number;
  /** Where the next portion resumes; null when these pieces end the row's text. */
  next: SplitResume | null;
}

/** A row to write: its read hash and its pieces (none: clear what the store holds). */
export interface RowPlan extends Split {
  target: Target;
  rowId: string;
  row: StoredRow;
}

/**
 * What a write did to a row: written; superseded (its text changed since it
 * was read); incomplete (a reused vector was replaced meanwhile); drafted (a
 * portion of its chunks is kept for the call that splits the rest).
 */
export type WriteOutcome = ChunkSetOutcome | "drafted";

export interface Store {
  /**
   * True when a row's text is split into chunks, each with its own vector.
   * A chunk that is one indivisible unit over the model's input limit is
   * embedded from its start, with a note to the user; a whole text over the
   * limit fails its row instead (unless the caller asked to truncate).
   */
  readonly chunked: boolean;
  /** Reads the batch's rows of `target` in one query; a row whose content function raises is reported alone (I5). */
  read(
    sql: postgres.Sql,
    target: Target,
    targets: Targets,
    rowIds: string[],
    onRowError: (rowId: string, message: string, retryable: boolean) => void,
  ): Promise<Map<string, StoredRow>>;
  /**
   * The pieces of a row's (non-blank) text; a long text's chunks may stop
   * early (when `stop`, given the chunks split so far, says so after their
   * first part) and continue where the row's draft says.
   */
  split(target: Target, row: StoredRow, stop?: (chunks: number) => boolean): Split;
  /**
   * Finds the vectors already held for the pieces of `plans` (rows of this
   * store's targets, any number of targets): sets `vector` or `reused`, and
   * counts vectors copied. At most one query per target, plus one per other
   * target a vector is copied from.
   */
  reuse(
    sql: postgres.Sql,
    plans: RowPlan[],
    targets: Targets,
    counts: { copied: number },
  ): Promise<void>;
  /**
   * Writes `plans` (every piece has a vector, or is reused) in one
   * transaction under a compare-and-set (I2); a plan with a `next` goes to
   * the row's draft instead.
   */
  write(
    sql: postgres.Sql,
    target: Target,
    plans: RowPlan[],
    binaryWrites: BinaryWrites | undefined,
  ): Promise<Map<string, WriteOutcome>>;
  /**
   * The rows of `target` nearest to the query, as the caller (`tx` has the
   * caller's role and claims, so row-level security applies). Everything is bound.
   */
  match(
    tx: postgres.TransactionSql,
    target: SearchTarget,
    vectorText: string,
    request: SearchRequest,
  ): Promise<SearchResult[]>;
}

interface MatchRow {
  id: string;
  similarity: number | null;
  row_data: Record<string, unknown> | null;
  /** Chunks store only: the row's best chunk. */
  chunk_seq?: number;
  chunk?: string;
}

const blank = (text: string | null) => text === null || text.trim() === "";

/**
 * The source row's own embedding column (sql/rows.ts, sql/write.ts): a row's
 * text is one piece; a vector of the same text and model is copied from any
 * row that holds it, of this target or another (I3).
 */
const columnStore: Store = {
  chunked: false,

  async read(sql, target, targets, rowIds, onRowError) {
    const loaded = await loadRows(sql, target, targets.sameModel(target), rowIds, onRowError);
    const rows = new Map<string, StoredRow>();
    for (const r of loaded.values()) {
      rows.set(r.row_id, {
        rowId: r.row_id,
        hash: r.hash,
        // A blank row is fresh while it holds nothing: an embedding of earlier
        // text would keep it findable by what it no longer says, so that goes.
        fresh: blank(r.content)
          ? !r.has_embedding && r.fp_hash === null
          : r.has_embedding && r.fp_hash === r.hash,
        content: r.content,
        donor: { target: r.donor_target, row: r.donor_row, vector: r.donor_vector },
      });
    }
    return rows;
  },

  split: (_target, row) => ({
    pieces: [{ text: row.content!, vector: null }],
    firstSeq: 0,
    next: null,
  }),

  async reuse(sql, plans, targets, counts) {
    const fromDonors = new Map<number, { wanted: Map<string, string>; plans: RowPlan[] }>();
    for (const plan of plans) {
      const [piece] = plan.pieces;
      const donor = plan.row.donor;
      if (!piece || !donor) continue;
      if (donor.vector !== null) {
        piece.vector = donor.vector;
        counts.copied++;
      } else if (donor.target !== null && donor.target !== plan.target.id) {
        let from = fromDonors.get(donor.target);
        if (!from) fromDonors.set(donor.target, from = { wanted: new Map(), plans: [] });
        from.wanted.set(donor.row!, plan.row.hash);
        from.plans.push(plan);
      }
    }
    for (const [donorId, { wanted, plans }] of fromDonors) {
      const donor = targets.byId(donorId);
      const vectors = donor ? await loadDonorVectors(sql, donor, wanted) : new Map();
      const byHash = new Map<string, string>();
      for (const [rowId, vector] of vectors) byHash.set(wanted.get(rowId)!, vector);
      for (const plan of plans) {
        const vector = byHash.get(plan.row.hash);
        if (vector === undefined) continue;
        plan.pieces[0].vector = vector;
        counts.copied++;
      }
    }
  },

  async write(sql, target, plans, binaryWrites) {
    const written = await writeEmbeddings(
      sql,
      target,
      plans.map((p) => ({ rowId: p.rowId, hash: p.row.hash, vector: p.pieces[0]?.vector ?? null })),
      binaryWrites,
    );
    return new Map(plans.map((p) => [p.rowId, written.has(p.rowId) ? "written" : "superseded"]));
  },

  /** util.match_hybrid over the embedding column (full-text ranking through the content function). */
  async match(tx, target, vectorText, request) {
    const hybrid = request.mode === "hybrid";
    const rows = await tx<MatchRow[]>`
      select id, similarity, row_data
        from util.match_hybrid(
               ${target.table_oid}::oid::regclass,
               ${vectorText}::extensions.vector,
               ${hybrid ? request.query : null}::text,
               ${hybrid ? target.content_function_oid : null}::oid::regprocedure,
               ${request.match_count}::int,
               ${request.match_threshold}::float8,
               ${JSON.stringify(request.filter)}::text::jsonb,
               ${target.embedding_column}::name)`;
    return rows.map((r) => ({ id: r.id, similarity: r.similarity, row: r.row_data ?? {} }));
  },
};

const sha256 = (text: string) => createHash("sha256").update(text, "utf8").digest("hex");

export function chunkSettingsOf(target: Target): ChunkSettings {
  return {
    splitter: target.splitter as SplitterName,
    chunkSize: target.chunk_size!,
    chunkOverlap: target.chunk_overlap!,
  };
}

/**
 * The target's side table of chunks (sql/chunks.ts): a row's text is split
 * by the target's splitter; a chunk whose text some chunk of the side table
 * holds a vector for reuses it in the write (by the chunk text's hash).
 */
const chunksStore: Store = {
  chunked: true,

  async read(sql, target, _targets, rowIds, onRowError) {
    const loaded = await loadChunkedRows(sql, target, rowIds, onRowError);
    const rows = new Map<string, StoredRow>();
    for (const r of loaded.values()) {
      rows.set(r.row_id, {
        rowId: r.row_id,
        hash: r.hash,
        fresh: r.fresh,
        content: r.content,
        draft: r.draft_chunks === null
          ? undefined
          : { chunks: r.draft_chunks, resume: { at: r.resume_at!, start: r.resume_start! } },
      });
    }
    return rows;
  },

  split(target, row, stop) {
    const counter = tokenCounterFor(target.model);
    const { chunks, next } = splitPortion(row.content!, chunkSettingsOf(target), counter, {
      from: row.draft?.resume,
      stop,
    });
    return {
      pieces: chunks.map((c) => ({
        text: c.text,
        hash: sha256(c.text),
        tokens: c.tokens,
        vector: null,
      })),
      firstSeq: row.draft?.chunks ?? 0,
      next,
    };
  },

  async reuse(sql, plans) {
    const byTarget = new Map<Target, RowPlan[]>();
    for (const plan of plans) byTarget.set(plan.target, [...byTarget.get(plan.target) ?? [], plan]);
    for (const [target, list] of byTarget) {
      const pieces = list.flatMap((p) => p.pieces);
      const known = await existingChunkHashes(sql, target, pieces.map((c) => c.hash!));
      for (const piece of pieces) if (known.has(piece.hash!)) piece.reused = true;
    }
  },

  async write(sql, target, plans) {
    const toWrite = (p: RowPlan) => ({
      rowId: p.rowId,
      hash: p.row.hash,
      firstSeq: p.firstSeq,
      chunks: p.pieces.map((c) => ({
        chunk: c.text,
        embedding: c.vector === null || typeof c.vector === "string"
          ? c.vector
          : vectorLiteral(c.vector, target.embedding_type_sql),
      })),
    });
    const whole = plans.filter((p) => !p.next);
    const parts = plans.filter((p) => p.next);
    const outcomes = new Map<string, WriteOutcome>(
      whole.length ? await writeChunkSets(sql, target, whole.map(toWrite)) : [],
    );
    if (parts.length) {
      const drafted = await draftChunkSets(
        sql,
        target,
        parts.map((p) => ({ ...toWrite(p), resumeAt: p.next!.at, resumeStart: p.next!.start })),
      );
      for (const p of parts) outcomes.set(p.rowId, drafted.has(p.rowId) ? "drafted" : "superseded");
    }
    return outcomes;
  },

  /** util.match_chunked over the side table (full-text ranking over the chunks' text): each row with its best chunk. */
  async match(tx, target, vectorText, request) {
    const hybrid = request.mode === "hybrid";
    const rows = await tx<MatchRow[]>`
      select id, similarity, chunk_seq, chunk, row_data
        from util.match_chunked(
               ${target.table_oid}::oid::regclass,
               ${target.destination_oid}::oid::regclass,
               ${vectorText}::extensions.vector,
               ${hybrid ? request.query : null}::text,
               ${request.match_count}::int,
               ${request.match_threshold}::float8,
               ${JSON.stringify(request.filter)}::text::jsonb)`;
    return rows.map((r) => ({
      id: r.id,
      similarity: r.similarity,
      row: r.row_data ?? {},
      chunk: { seq: r.chunk_seq!, text: r.chunk!, similarity: r.similarity },
    }));
  },
};

/** Every kind of store, by util.embedding_targets.store. */
const STORES: Record<string, Store> = { column: columnStore, chunks: chunksStore };

/** The store of `target` (util._target_config's `store`). */
export function storeOf(target: { id: number; store: string }): Store {
  const store = STORES[target.store];
  if (!store) throw new Error(`unknown store ${target.store} of target ${target.id}`);
  return store;
}
