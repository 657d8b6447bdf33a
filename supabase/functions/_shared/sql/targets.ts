// Reads the attached targets (util._target_config): which (table, embedding
// column) pairs a job may name, with their content function and model, and
// the shadow targets of model changes in progress. One query per batch.
import type postgres from "postgres";

/** A target as util._target_config describes it (identifiers already quoted). */
export interface Target {
  id: number;
  schema_name: string;
  table_name: string;
  embedding_column: string;
  content_function: string;
  model: string;
  dimensions: number;
  table_sql: string;
  pk_sql: string;
  pk_type_sql: string;
  embedding_sql: string;
  embedding_type_sql: string;
  content_function_sql: string;
  /** For a shadow target (a model change in progress): the live target it will replace. */
  shadow_of: number | null;
  /** A chunked target's side table of chunks (null: a whole-row target), and its settings. */
  destination_sql: string | null;
  chunk_size: number | null;
  chunk_overlap: number | null;
  splitter: string | null;
  /** What a chunked row's fingerprint hashes besides its text (util._chunking_key). */
  chunking_key: string | null;
  /** Where its vectors live: a key of STORES in sql/store.ts (and of util._store_* in 22_stores.sql). */
  store: string;
  /** How its table's changes are detected: "triggers" or "logical" (35_capture.sql). */
  capture: string;
}

export interface Targets {
  /** The live target a job names, by schema, table and embedding column. */
  live(schema: string, table: string, column: string): Target | undefined;
  /** The targets a job for live target `target` applies to: itself, then its shadow if any. */
  appliesTo(target: Target): Target[];
  /** Ids of the targets whose vectors a target may copy: same model and dimensions. */
  sameModel(target: Target): number[];
  byId(id: number): Target | undefined;
}

const key = (schema: string, table: string, column: string) =>
  `${schema}\u0000${table}\u0000${column}`;

export async function loadTargets(sql: postgres.Sql): Promise<Targets> {
  const rows = await sql<Target[]>`select * from util._target_config`;
  const live = new Map<string, Target>();
  const shadows = new Map<number, Target>();
  const byModel = new Map<string, number[]>();
  const byId = new Map<number, Target>();
  for (const t of rows) {
    byId.set(t.id, t);
    if (t.shadow_of === null) live.set(key(t.schema_name, t.table_name, t.embedding_column), t);
    else shadows.set(t.shadow_of, t);
    const m = `${t.model}\u0000${t.dimensions}`;
    byModel.set(m, [...byModel.get(m) ?? [], t.id]);
  }
  return {
    live: (schema, table, column) => live.get(key(schema, table, column)),
    appliesTo: (t) => {
      const shadow = shadows.get(t.id);
      return shadow ? [t, shadow] : [t];
    },
    sameModel: (t) => byModel.get(`${t.model}\u0000${t.dimensions}`) ?? [t.id],
    byId: (id) => byId.get(id),
  };
}

/** What became of a target a job names that is no longer attached under that name. */
export type FormerTarget = { fate: "retired" } | { fate: "renamed"; target: Target };

/** `schema.table.column` of a job's target, the key of formerTargets' answer. */
export const jobTargetKey = (job: { schema: string; table: string; embeddingColumn: string }) =>
  key(job.schema, job.table, job.embeddingColumn);

/**
 * What util.embedding_target_events says became of the targets `names`
 * names (jobs that name no attached target): retired (its table, store or
 * content function dropped: its jobs finish quietly), or renamed (a job
 * claimed before the rename applies to the live target it is now). One
 * query, made only for a batch that has such jobs.
 */
export async function formerTargets(
  sql: postgres.Sql,
  targets: Targets,
  names: { schema: string; table: string; embeddingColumn: string }[],
): Promise<Map<string, FormerTarget>> {
  const fates = new Map<string, FormerTarget>();
  if (names.length === 0) return fates;
  const rows = await sql<
    {
      schema_name: string;
      table_name: string;
      embedding_column: string;
      fate: string;
      target_id: number | null;
    }[]
  >`select * from util._former_targets(${
    JSON.stringify(
      names.map((n) => ({ schema: n.schema, table: n.table, column: n.embeddingColumn })),
    )
  }::text::jsonb)`;
  for (const r of rows) {
    const k = key(r.schema_name, r.table_name, r.embedding_column);
    const now = r.target_id === null ? undefined : targets.byId(r.target_id);
    if (r.fate === "retired") fates.set(k, { fate: "retired" });
    else if (r.fate === "renamed" && now) fates.set(k, { fate: "renamed", target: now });
  }
  return fates;
}

export function tableLabel(t: { schema_name: string; table_name: string }): string {
  return `${t.schema_name}.${t.table_name}`;
}
