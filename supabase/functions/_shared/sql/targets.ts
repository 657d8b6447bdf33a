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
  /** Where its vectors live (sql/store.ts, 22_stores.sql). */
  store: "column" | "chunks";
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

export function tableLabel(t: { schema_name: string; table_name: string }): string {
  return `${t.schema_name}.${t.table_name}`;
}
