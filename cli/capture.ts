// Logical capture (supabase/schemas/35_capture.sql): the worker follows the
// write-ahead log through one replication slot (pgoutput, over the
// replication protocol, by pg-logical-replication) and turns each committed
// transaction's changes to logically captured tables into the work the
// triggers would have queued, through util._capture_changes. Only one
// process can stream a slot at a time (the server refuses a second with
// SQLSTATE 55006): the worker that gets it follows it, the others process
// the queue and try again at their next poll, so one takes over when the
// follower stops.
//
// What arrives is buffered per transaction and only committed transactions
// count; a transaction that carries the pipeline's own marker (its write of
// embeddings, sql/write.ts) is dropped. Committed changes are coalesced (a
// row changed ten times is one job) and flushed in one statement per flush;
// the slot is told the position of the last transaction flushed only after
// that statement committed, so a crash at any point loses nothing: the
// server sends again everything after the confirmed position (at least
// once; a repeated job costs nothing, I3).
import { LogicalReplicationService, type Pgoutput, PgoutputPlugin } from "pg-logical-replication";
import type postgres from "postgres";
import { errorCode, isConnectionError } from "../supabase/functions/_shared/db_errors.ts";
import { APPLYING_MESSAGE } from "../supabase/functions/_shared/sql/write.ts";

export interface CaptureOptions {
  dbUrl: string;
  /** The worker's pool (it may be replaced after a lost connection). */
  sql: () => postgres.Sql;
  /** The slot to follow; default the setting capture_slot. */
  slot?: string;
  log: (event: Record<string, unknown>) => void;
  /** Called after a flush enqueued jobs, so the worker's own slots look at once. */
  onJobs?: () => void;
}

/** A row's key as the slot gave it: its text, or (table not known yet) the identity's columns. */
type Key = string | Record<string, unknown>;

/** The committed, not yet flushed changes of one table since the last truncate of it. */
interface TableChanges {
  forget: Set<Key>;
  upsert: Set<Key>;
}

type Segment = Map<number, TableChanges>;

/** An op as util._capture_changes takes it. */
interface CaptureOp {
  t: number;
  op: "upsert" | "forget" | "truncate";
  ids?: string[];
}

/** The changes the slot sent, committed, not yet flushed: segments split at truncates. */
interface Pending {
  steps: (Segment | { truncate: number[] })[];
  keys: number;
  /** The end of the last committed transaction in it, and its commit time. */
  endLsn: bigint;
  committedAt: Date;
}

const lsnToBig = (lsn: string): bigint => {
  const [hi, lo] = lsn.split("/");
  return (BigInt(parseInt(hi, 16)) << 32n) | BigInt(parseInt(lo, 16));
};

const bigToLsn = (n: bigint): string =>
  `${(n >> 32n).toString(16).toUpperCase()}/${(n & 0xffffffffn).toString(16).toUpperCase()}`;

/**
 * What to pass pg-logical-replication's acknowledge() for the slot to be
 * told `end` (the position after the last byte handled): it takes the last
 * byte received and sends one more. Exactly `end` matters: a fast shutdown
 * of the server waits until the position a client confirmed equals what
 * was sent to it, so one byte more held every restart for ever.
 */
const ackLsn = (end: bigint): string => bigToLsn(end > 0n ? end - 1n : 0n);

/** A key value as text, as Postgres prints it (util._capture_changes casts it back). */
function keyText(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  if (value instanceof Date) return value.toISOString();
  if (value instanceof Uint8Array) return null;
  return String(value);
}

/** Seconds between lag checks, and between tries to get the slot while another worker holds it. */
const LAG_CHECK_MS = 30_000;
/** Flushes at most this often while commits stream in, unless FLUSH_KEYS rows wait. */
const FLUSH_EVERY_MS = 25;
const FLUSH_KEYS = 5_000;
const RETRY_MIN_MS = 1_000;
const RETRY_MAX_MS = 10_000;

export class Capture {
  readonly #options: CaptureOptions;
  #service: LogicalReplicationService | null = null;
  #running: Promise<void> | null = null;
  #stopped = false;
  #slot = "";
  /** Table oid -> its key column, for the tables of live targets (util._capture_targets). */
  #keys = new Map<number, string>();
  #keysStale = true;
  /** The open transaction: its changes, and whether it is the pipeline's own write. */
  #txn: { pending: Pending; ours: boolean } | null = null;
  #pending: Pending | null = null;
  #flushing: Promise<void> | null = null;
  #flushTimer: ReturnType<typeof setTimeout> | undefined;
  #lastFlush = 0;
  /** The position confirmed to the slot this session. */
  #confirmed = 0n;
  #nextTry = 0;
  #failures = 0;
  #lastLagCheck = 0;
  #lastEvent = "";

  constructor(options: CaptureOptions) {
    this.#options = options;
  }

  get following(): boolean {
    return this.#running !== null;
  }

  /**
   * Called at every poll of the worker: starts following the slot when
   * logical targets exist (creating the slot, then sweeping those targets,
   * when there is none), or tries again when another worker holds it;
   * while following, warns when the slot's lag passes capture_lag_warn_bytes.
   */
  async ensure(): Promise<void> {
    if (this.#stopped) return;
    const sql = this.#options.sql();
    if (this.#running) {
      if (Date.now() - this.#lastLagCheck >= LAG_CHECK_MS) await this.#checkLag(sql);
      return;
    }
    if (Date.now() < this.#nextTry) return;
    const [state] = await sql<
      {
        slot: string;
        wanted: boolean;
        database: string | null;
        here: string;
        wal_level: string;
        lost: boolean;
      }[]
    >`
      with name as (
        select coalesce(${this.#options.slot ?? null}::text, util._setting('capture_slot')) as slot
      )
      select n.slot, exists (select from util._capture_targets() c where c.logical) as wanted,
             (select s.database::text from pg_catalog.pg_replication_slots s
               where s.slot_name = n.slot) as database,
             pg_catalog.current_database()::text as here,
             pg_catalog.current_setting('wal_level') as wal_level,
             exists (select from pg_catalog.pg_replication_slots s
                      where s.slot_name = n.slot and s.wal_status = 'lost') as lost
        from name n`;
    this.#slot = state.slot;
    const exists = state.database === state.here;
    if (!state.wanted && !exists) return;
    if (state.wal_level !== "logical") {
      this.#event({ event: "capture_unavailable", reason: `wal_level is ${state.wal_level}` });
      this.#retryLater();
      return;
    }
    if (state.database !== null && !exists) {
      // Slot names are the whole server's.
      this.#event({
        event: "capture_unavailable",
        reason: `the slot ${state.slot} belongs to database ${state.database}: ` +
          "set util.settings capture_slot (or --slot) to another name",
      });
      this.#retryLater();
      return;
    }
    if (exists && state.lost) {
      // Past max_slot_wal_keep_size the server gave up the slot's WAL: its
      // changes are gone, so a new slot is made and its targets swept.
      this.#options.log({ event: "capture_slot_lost", level: "warning", slot: this.#slot });
      await sql`select pg_catalog.pg_drop_replication_slot(${this.#slot})`;
    }
    if (!exists || state.lost) await this.#createSlot(sql);
    this.#running = this.#follow().finally(() => this.#running = null);
  }

  /** Creates the slot, then sweeps the logical targets: what changed before it existed. */
  async #createSlot(sql: postgres.Sql): Promise<void> {
    try {
      await sql`select pg_catalog.pg_create_logical_replication_slot(${this.#slot}, 'pgoutput')`;
    } catch (err) {
      // Another worker made it at the same time: follow it.
      if (errorCode(err) === "42710") return;
      throw err;
    }
    const [{ swept }] = await sql<{ swept: number }[]>`select util._capture_begun() as swept`;
    this.#options.log({ event: "capture_slot_created", slot: this.#slot, targetsSwept: swept });
  }

  /** Streams the slot until the connection ends; then the next ensure() tries again. */
  async #follow(): Promise<void> {
    const service = new LogicalReplicationService(
      { connectionString: this.#options.dbUrl, application_name: "autoembed capture" },
      // Positions are confirmed by this module alone: never the library's
      // last received one, which may not be flushed yet.
      { acknowledge: { auto: false, timeoutSeconds: 0 } },
    );
    this.#service = service;
    this.#txn = null;
    this.#pending = null;
    this.#keysStale = true;
    // Where the slot stands: an answer to the server never confirms less
    // (Postgres 15 takes a lower position as is, and would send again).
    const [slot] = await this.#options.sql()<{ lsn: string | null }[]>`
      select confirmed_flush_lsn::text as lsn from pg_catalog.pg_replication_slots
       where slot_name = ${this.#slot}`.catch(() => []);
    this.#confirmed = slot?.lsn ? lsnToBig(slot.lsn) : 0n;
    service.on("data", (_lsn: string, message: Pgoutput.Message) => this.#onMessage(message));
    service.on("heartbeat", (lsn: string, _time: number, reply: boolean) => {
      this.#onHeartbeat(lsn, reply);
    });
    service.on("start", () => {
      this.#failures = 0;
      this.#event({ event: "capture_following", slot: this.#slot });
    });
    service.on("error", () => {}); // the subscribe promise carries it
    const plugin = new PgoutputPlugin({
      protoVersion: 1,
      publicationNames: ["autoembed"],
      messages: true,
    });
    // A stream that ended, or a database that went away (a restart), is
    // followed again at the first poll it answers; a busy slot or another
    // failure waits longer each time.
    let backOff = false;
    try {
      // From the slot's confirmed position (0/0: the server's choice), never
      // from what an earlier connection received.
      await service.subscribe(plugin, this.#slot, "0/0");
      if (!this.#stopped) this.#options.log({ event: "capture_ended", slot: this.#slot });
    } catch (err) {
      if (this.#stopped) return;
      backOff = !isConnectionError(err);
      const code = errorCode(err);
      if (code === "55006") {
        this.#event({ event: "capture_slot_busy", slot: this.#slot });
      } else {
        this.#event({
          event: isConnectionError(err) ? "capture_disconnected" : "capture_failed",
          slot: this.#slot,
          code,
          message: String((err as Error)?.message).slice(0, 200),
        });
      }
    } finally {
      this.#service = null;
      await service.destroy().catch(() => {});
      if (backOff) this.#retryLater();
      else this.#nextTry = Date.now() + RETRY_MIN_MS;
    }
  }

  #retryLater(): void {
    this.#failures++;
    this.#nextTry = Date.now() +
      Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** Math.min(this.#failures - 1, 5));
  }

  /** Logs an event once until another one replaces it (a busy slot is tried every poll). */
  #event(event: Record<string, unknown>): void {
    const key = JSON.stringify(event);
    if (key === this.#lastEvent) return;
    this.#lastEvent = key;
    this.#options.log(event);
  }

  #onMessage(message: Pgoutput.Message): void {
    switch (message.tag) {
      case "begin":
        this.#txn = { pending: newPending(), ours: false };
        return;
      case "message":
        if (this.#txn && message.transactional && message.prefix === APPLYING_MESSAGE) {
          this.#txn.ours = true;
        }
        return;
      case "relation":
        if (!this.#keys.has(message.relationOid)) this.#keysStale = true;
        return;
      case "insert":
        this.#change(message.relation, "upsert", message.new);
        return;
      case "update": {
        const before = message.key ?? message.old;
        if (before) {
          // The key changed (or the identity is the whole row): the old key's row is gone.
          const was = this.#key(message.relation, before);
          const now = this.#key(message.relation, message.new);
          if (was !== null && JSON.stringify(was) !== JSON.stringify(now)) {
            this.#change(message.relation, "forget", before);
          }
        }
        this.#change(message.relation, "upsert", message.new);
        return;
      }
      case "delete":
        this.#change(message.relation, "forget", message.key ?? message.old ?? {});
        return;
      case "truncate":
        if (!this.#txn || this.#txn.ours) return;
        this.#txn.pending.steps.push({ truncate: message.relations.map((r) => r.relationOid) });
        return;
      case "commit":
        this.#commit(message);
        return;
    }
  }

  /** The row's key: its text when the table's key column is known, else the identity's columns. */
  #key(relation: Pgoutput.MessageRelation, tuple: Record<string, unknown>): Key | null {
    const column = this.#keys.get(relation.relationOid);
    if (column !== undefined) return keyText(tuple[column]);
    const identity: Record<string, unknown> = {};
    for (const name of relation.keyColumns) identity[name] = keyText(tuple[name]);
    return identity;
  }

  #change(
    relation: Pgoutput.MessageRelation,
    op: "upsert" | "forget",
    tuple: Record<string, unknown>,
  ): void {
    const txn = this.#txn;
    if (!txn || txn.ours) return;
    const key = this.#key(relation, tuple);
    if (key === null) return;
    const pending = txn.pending;
    let segment = pending.steps.at(-1);
    if (!(segment instanceof Map)) pending.steps.push(segment = new Map());
    let table = segment.get(relation.relationOid);
    if (!table) segment.set(relation.relationOid, table = { forget: new Set(), upsert: new Set() });
    const set = op === "upsert" ? table.upsert : table.forget;
    if (typeof key === "string") {
      if (!set.has(key)) pending.keys++;
      set.add(key);
    } else {
      set.add(key);
      pending.keys++;
    }
  }

  /** A committed transaction: its changes join those waiting for the next flush. */
  #commit(message: Pgoutput.MessageCommit): void {
    const txn = this.#txn;
    this.#txn = null;
    if (!txn || !message.commitEndLsn) return;
    // The pipeline's own write: nothing to do, but its position counts.
    if (txn.ours) txn.pending.steps = [];
    txn.pending.endLsn = lsnToBig(message.commitEndLsn);
    txn.pending.committedAt = new Date(Number((message.commitTime as unknown as bigint) / 1000n));
    this.#pending = this.#pending ? merged(this.#pending, txn.pending) : txn.pending;
    this.#flushSoon();
  }

  /**
   * The server's keepalive: with nothing open or waiting, every change
   * before its position is flushed (or none was ours), so the slot may move
   * there: otherwise unrelated writes would keep it holding WAL.
   */
  #onHeartbeat(lsn: string, reply: boolean): void {
    const idle = !this.#txn && !this.#pending && !this.#flushing;
    const at = lsnToBig(lsn);
    if (idle && at > this.#confirmed) {
      this.#confirmed = at;
      void this.#service?.acknowledge(ackLsn(at));
    } else if (reply) {
      void this.#service?.acknowledge(ackLsn(this.#confirmed));
    }
  }

  /**
   * Flushes what is pending: at once when the last flush began at least
   * FLUSH_EVERY_MS ago (a lone commit waits for nothing), else when that
   * much has passed, or at once when FLUSH_KEYS rows wait. Under a stream
   * of small transactions one flush takes many of them: each flush is a
   * statement and a commit of the database's, off the users' write path
   * but on the same server (bench/RESULTS.md, logical capture).
   */
  #flushSoon(): void {
    if (this.#flushing || !this.#pending || this.#flushTimer !== undefined) return;
    const wait = FLUSH_EVERY_MS - (Date.now() - this.#lastFlush);
    if (wait > 0 && this.#pending.keys < FLUSH_KEYS && !this.#stopped) {
      this.#flushTimer = setTimeout(() => {
        this.#flushTimer = undefined;
        this.#flushSoon();
      }, wait);
      return;
    }
    this.#lastFlush = Date.now();
    this.#flushing = this.#flush().finally(() => {
      this.#flushing = null;
      this.#flushSoon();
    });
  }

  /** One statement for everything committed so far; then the slot is told. */
  async #flush(): Promise<void> {
    const pending = this.#pending;
    if (!pending) return;
    // Commits that arrive meanwhile wait for the next flush.
    this.#pending = null;
    const service = this.#service;
    const sql = this.#options.sql();
    try {
      if (this.#keysStale) await this.#loadKeys(sql);
      const ops = this.#ops(pending);
      const [{ n }] = await sql<{ n: string }[]>`
        select util._capture_changes(${JSON.stringify(ops)}::text::jsonb, ${this.#slot},
                                     ${bigToLsn(pending.endLsn)}::pg_lsn,
                                     ${pending.committedAt}) as n`;
      if (service === this.#service && pending.endLsn > this.#confirmed) {
        this.#confirmed = pending.endLsn;
        await service?.acknowledge(ackLsn(pending.endLsn));
      }
      if (Number(n) > 0) this.#options.onJobs?.();
    } catch (err) {
      this.#options.log({
        event: "capture_flush_failed",
        code: errorCode(err),
        message: isConnectionError(err) ? undefined : String((err as Error)?.message).slice(0, 200),
      });
      if (isConnectionError(err) && service && service === this.#service) {
        // The server may be stopping: a fast shutdown waits for this stream
        // to confirm everything it sent, which takes the connection just
        // lost, so it would wait for ever. The stream ends instead; the
        // next one sends again what was not confirmed.
        await service.stop().catch(() => {});
        return;
      }
      await new Promise((r) => setTimeout(r, 1000));
      // Not confirmed: tried again, before what came since; unless the
      // stream it came from ended (the next one sends it again).
      if (service && service === this.#service) {
        this.#pending = this.#pending ? merged(pending, this.#pending) : pending;
      }
    }
  }

  async #loadKeys(sql: postgres.Sql): Promise<void> {
    const rows = await sql<{ table_oid: number; pk_column: string }[]>`
      select table_oid::int8::float8 as table_oid, pk_column::text from util._capture_targets()`;
    this.#keys = new Map(rows.map((r) => [Number(r.table_oid), r.pk_column]));
    this.#keysStale = false;
  }

  /** The pending changes as util._capture_changes' ops, in log order, keys made text. */
  #ops(pending: Pending): CaptureOp[] {
    const ops: CaptureOp[] = [];
    const text = (oid: number, keys: Set<Key>): string[] => {
      const column = this.#keys.get(oid);
      const out = new Set<string>();
      for (const k of keys) {
        const v = typeof k === "string" ? k : column ? (k[column] as string | null) : null;
        if (v !== null && v !== undefined) out.add(v);
      }
      return [...out];
    };
    for (const step of pending.steps) {
      if (step instanceof Map) {
        for (const [oid, changes] of step) {
          if (!this.#keys.has(oid)) continue;
          if (changes.forget.size) {
            ops.push({ t: oid, op: "forget", ids: text(oid, changes.forget) });
          }
          if (changes.upsert.size) {
            ops.push({ t: oid, op: "upsert", ids: text(oid, changes.upsert) });
          }
        }
      } else {
        for (const oid of step.truncate) ops.push({ t: oid, op: "truncate" });
      }
    }
    return ops;
  }

  /** Warns (once per crossing) when the slot holds more WAL than capture_lag_warn_bytes. */
  async #checkLag(sql: postgres.Sql): Promise<void> {
    this.#lastLagCheck = Date.now();
    const [row] = await sql<{ lag: string | null; warn: string }[]>`
      select pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint as lag,
             util._setting('capture_lag_warn_bytes') as warn
        from pg_catalog.pg_replication_slots s where s.slot_name = ${this.#slot}`;
    if (!row || row.lag === null) return;
    if (Number(row.lag) > Number(row.warn)) {
      this.#options.log({
        event: "capture_lag",
        level: "warning",
        slot: this.#slot,
        lagBytes: Number(row.lag),
        warnBytes: Number(row.warn),
      });
    }
  }

  /**
   * `worker --once`: follows the slot until every change written before
   * this call is confirmed (its jobs queued, for the run to drain), then
   * stops. False when there was nothing to follow or another worker holds
   * the slot (that one queues the changes).
   */
  async catchUp(): Promise<boolean> {
    await this.ensure();
    if (!this.#running) return false;
    const [{ lsn }] = await this.#options.sql()<{ lsn: string }[]>`
      select pg_catalog.pg_current_wal_lsn()::text as lsn`;
    const target = lsnToBig(lsn);
    while (this.following && this.#confirmed < target) {
      // Asks the server for a keepalive: with nothing left to send, its
      // position is past everything written before, and is confirmed.
      void this.#service?.acknowledge(ackLsn(this.#confirmed), true).catch(() => {});
      await new Promise((r) => setTimeout(r, 50));
    }
    const caughtUp = this.#confirmed >= target;
    await this.stop();
    return caughtUp;
  }

  /** Stops following: what is not flushed is sent again to the next follower. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#flushTimer);
    this.#flushTimer = undefined;
    await this.#flushing;
    await this.#service?.stop().catch(() => {});
    await this.#running;
  }
}

/** `later`'s changes after `earlier`'s (a table's changes in one segment until a truncate). */
function merged(earlier: Pending, later: Pending): Pending {
  for (const step of later.steps) {
    const last = earlier.steps.at(-1);
    if (step instanceof Map && last instanceof Map) {
      for (const [oid, changes] of step) {
        const into = last.get(oid);
        if (!into) {
          last.set(oid, changes);
          continue;
        }
        for (const k of changes.forget) into.forget.add(k);
        for (const k of changes.upsert) into.upsert.add(k);
      }
    } else earlier.steps.push(step);
  }
  earlier.keys += later.keys;
  earlier.endLsn = later.endLsn;
  earlier.committedAt = later.committedAt;
  return earlier;
}

function newPending(): Pending {
  return { steps: [], keys: 0, endLsn: 0n, committedAt: new Date(0) };
}
