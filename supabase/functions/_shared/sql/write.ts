// Writes a target's embeddings and fingerprints in one statement, its own
// implicit transaction (one round trip, no begin or commit), under a
// compare-and-set on the content hash (I2): the vectors in binary through
// node-postgres where the column is a pgvector type and the caller gave a
// BinaryWrites pool, as text through postgres.js otherwise.
import pg from "pg";
import type postgres from "postgres";
import { errorCode, isConnectionError, isRetryableNow } from "../db_errors.ts";
import type { Target } from "./targets.ts";
import { binaryVectorType, type Vector, vectorArrayBinary, vectorList } from "../vectors.ts";

/** The prefix of the logical message a write to a logically captured table emits. */
export const APPLYING_MESSAGE = "autoembed.applying";

export interface EmbeddingWrite {
  rowId: string;
  /** sha256 (hex) of the text the vector was computed from. */
  hash: string;
  /**
   * The provider's vector, or the text of one copied from a row that holds
   * it, or null to clear the embedding (the row has no text any more).
   */
  vector: Vector | string | null;
}

/**
 * The UPDATE only takes rows whose current text still hashes to what was
 * embedded (compare-and-set), and only while the target is still what the
 * batch read: a model switch that committed meanwhile (the target retired,
 * or its column renamed) makes the write take nothing, so a vector of the
 * old model never lands in the new column (I7). The compare-and-set sits in
 * a CASE behind the key match: as a plain conjunct the planner may make it a
 * hash key and call the content function on every row of the table (slow,
 * and one row whose function raises would fail every write). A null vector
 * clears the row's embedding and deletes its fingerprint. Returns the row
 * ids written.
 *
 * The statement sets autoembed.applying itself, so it needs no transaction
 * around it (one round trip, no begin or commit): while it is on, the
 * insert and update triggers util.enable_embeddings generates and the
 * guide's util.queue_embeddings return at once, so our own write enqueues no
 * job. `applying` is read by the UPDATE's first one-time filter: Postgres
 * checks that before the UPDATE reads its first row, so the setting is on
 * before any BEFORE row trigger and the AFTER triggers at the statement's
 * end, even when no row is written (a BEFORE statement trigger, fired
 * earlier still, would not see it; the pipeline installs none). It is local
 * to the transaction, so it ends with the statement: the connection's next
 * statement (a user's update on the same pooled connection) enqueues as
 * usual (tests/pipeline/write_applying.test.ts).
 */
function writeQuery(target: Target, binary: boolean): string {
  const pk = target.pk_sql;
  const type = target.embedding_type_sql;
  // Binary: one ${type}[] parameter that array_recv hands to halfvec_recv
  // element by element: no text to parse (most of the text form's cost).
  // Text: one text that string_to_array splits on ';', each part parsed here
  // once: a jsonb document or a text[] literal costs Postgres more CPU to take
  // apart (bench/RESULTS.md, section 1b).
  const vectors = binary ? `$3::${type}[]` : `string_to_array($3::text, ';', '')`;
  // A logically captured table (35_capture.sql): the transaction says it is
  // ours in the write-ahead log too, and the worker following the slot
  // drops its changes (cli/capture.ts), as the triggers return on applying.
  const mark = target.capture === "logical"
    ? `, pg_catalog.pg_logical_emit_message(true, '${APPLYING_MESSAGE}', '')`
    : "";
  return `
    with applying as materialized (
      select pg_catalog.set_config('autoembed.applying', 'on', true)${mark}
    ), input as (
      -- The short ids and hashes as text[]; unnest pairs the three by
      -- position. Its estimate (100 rows) keeps the join on the primary key
      -- index: string_to_table, estimated at 1,000, made the planner hash the
      -- whole table instead.
      select i.row_id, i.hash, i.embedding::${type} as embedding
        from unnest($1::text::text[], $2::text::text[], ${vectors}) as i(row_id, hash, embedding)
    ), written as (
      update ${target.table_sql} r
         set ${target.embedding_sql} = i.embedding
        from input i
       where r.${pk} = i.row_id::${target.pk_type_sql}
         -- The one-time filters, in this order: applying first.
         and exists (select from applying)
         and exists (select from util.embedding_targets t
                      where t.id = $4 and t.retired_at is null and t.embedding_column = $5)
         and case when r.${pk} = i.row_id::${target.pk_type_sql}
                  then util._content_hash(${target.content_function_sql}(r)) = decode(i.hash, 'hex')
             end
      returning r.${pk}::text as row_id, i.hash, i.embedding is null as cleared
    ), fingerprinted as (
      insert into util.embedding_fingerprints as f (target_id, row_id, content_hash)
      select $4, w.row_id, decode(w.hash, 'hex') from written w where not w.cleared
      on conflict (target_id, row_id) do update
        set content_hash = excluded.content_hash, embedded_at = now()
        -- A second job for the same text (a sweep and a trigger both queued
        -- the row) leaves the fingerprint as it is: no dead row per repeat.
        where f.content_hash is distinct from excluded.content_hash
    ), unfingerprinted as (
      delete from util.embedding_fingerprints f
       using written w
       where w.cleared and f.target_id = $4 and f.row_id = w.row_id
    )
    select row_id from written`;
}

/**
 * A node-postgres pool for the write alone. node-postgres binds a Uint8Array
 * parameter in binary (format code 1 in its Bind message); postgres.js binds
 * every parameter as text. Everything but the write stays on postgres.js.
 */
export class BinaryWrites {
  readonly #pool: pg.Pool;
  /** The oid of each embedding column type's element, by its SQL name (array_recv checks it). */
  readonly #oids = new Map<string, number>();

  constructor(dbUrl: string, options: { max: number; applicationName?: string }) {
    this.#pool = new pg.Pool({
      connectionString: dbUrl,
      max: options.max,
      idleTimeoutMillis: 30_000,
      connectionTimeoutMillis: 10_000,
      application_name: options.applicationName,
    });
    // A pooled connection the server closed while idle: the pool drops it and
    // the next write connects anew. Without a listener the event would be thrown.
    this.#pool.on("error", () => {});
  }

  /**
   * `query`, one statement in its own implicit transaction (one round trip,
   * after the element's oid is known), with the parameters `params` makes
   * from the oid of the column type's element.
   */
  async write(
    typeSql: string,
    query: string,
    params: (elementOid: number) => unknown[],
  ): Promise<{ row_id: string }[]> {
    const client = await this.#pool.connect();
    try {
      const oid = await this.#elementOid(client, typeSql);
      const result = await client.query<{ row_id: string }>(query, params(oid));
      client.release();
      return result.rows;
    } catch (err) {
      // The type was dropped and made anew (another oid): look it up again next time.
      if (errorCode(err) === "42804") this.#oids.delete(typeSql);
      // A statement the server refused leaves its connection ready for the
      // next: the server rolled the implicit transaction back, settings and
      // all. Anything else (a lost connection, an error before the statement
      // was sent) discards the connection.
      const refused = err instanceof pg.DatabaseError && !isConnectionError(err);
      client.release(refused ? undefined : true);
      throw err;
    }
  }

  async #elementOid(client: pg.PoolClient, type: string): Promise<number> {
    let oid = this.#oids.get(type);
    if (oid === undefined) {
      const { rows } = await client.query<{ oid: number }>("select $1::regtype::oid as oid", [
        type,
      ]);
      oid = Number(rows[0].oid);
      this.#oids.set(type, oid);
    }
    return oid;
  }

  async end(): Promise<void> {
    await this.#pool.end();
  }
}

export async function writeEmbeddings(
  sql: postgres.Sql,
  target: Target,
  writes: EmbeddingWrite[],
  binaryWrites?: BinaryWrites,
): Promise<Set<string>> {
  const rowIds = textArrayLiteral(writes.map((w) => w.rowId));
  const hashes = textArrayLiteral(writes.map((w) => w.hash));
  const type = target.embedding_type_sql;
  const binaryType = binaryWrites ? binaryVectorType(type) : null;
  const query = writeQuery(target, binaryType !== null);
  const vectors = writes.map((w) => w.vector);
  const text = binaryType ? "" : vectorList(vectors, type);
  const params = (vectors: string | Uint8Array) =>
    [rowIds, hashes, vectors, target.id, target.embedding_column] as const;
  for (let attempt = 1;; attempt++) {
    try {
      const rows = binaryType
        ? await binaryWrites!.write(
          type,
          query,
          (oid) => [...params(vectorArrayBinary(vectors, binaryType, oid))],
        )
        // Prepared (where the client allows it; the embed function's pool,
        // made for poolers, does not): unprepared, sql.unsafe sends Parse and
        // Describe and waits for the parameter types before it binds, two
        // round trips per write instead of one.
        : await sql.unsafe<{ row_id: string }[]>(query, [...params(text)], { prepare: true });
      return new Set(rows.map((r) => r.row_id));
    } catch (err) {
      if (attempt < 3 && isRetryableNow(err)) continue;
      throw err;
    }
  }
}

/** `values` as a text[] literal: each quoted, its quotes and backslashes escaped. */
export function textArrayLiteral(values: string[]): string {
  return `{${values.map((v) => `"${v.replace(/[\\"]/g, "\\$&")}"`).join(",")}}`;
}
