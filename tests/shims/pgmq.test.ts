// The SQL-only pgmq shim (local/shims/pgmq) against a real Postgres: upstream
// 1.5.1 signatures, visibility timeout, read_ct, SKIP LOCKED, archive, metrics.
import assert from "node:assert/strict";
import { type Sql, withTestDb as withDb } from "../../devtools/db.ts";
import { waitFor } from "../../devtools/wait.ts";

/** A database without the migrations (bootstrapped template1), so pgmq is not yet installed. */
const withTestDb = (fn: (sql: Sql) => Promise<void>) => withDb(fn, { template: "template1" });

const Q = "shim_jobs";

/**
 * Makes sure the Supabase API roles exist (cluster-wide; a bare test server
 * lacks them) before the extension, whose grants depend on them, is created.
 */
async function install(sql: Sql): Promise<void> {
  await sql`do $$ begin
    create role service_role nologin;
  exception when duplicate_object or unique_violation then null;
  end $$`;
  await sql`do $$ begin
    create role anon nologin;
  exception when duplicate_object or unique_violation then null;
  end $$`;
  await sql`create extension if not exists pgmq`;
}

/** install() plus a fresh queue named Q. */
async function installWithQueue(sql: Sql): Promise<void> {
  await install(sql);
  await sql`select pgmq.create(${Q})`;
}

/** Reads up to `qty` messages hidden for `vt` seconds; ids as numbers. */
async function readIds(sql: Sql, vt: number, qty: number): Promise<number[]> {
  const rows = await sql`select msg_id::int as id from pgmq.read(${Q}, ${vt}::int, ${qty}::int)`;
  return rows.map((r) => r.id);
}

/** Live rows of queue Q, in id order. */
async function liveRows(sql: Sql) {
  return await sql`
    select msg_id::int as id, read_ct, message, headers,
      extract(epoch from vt - clock_timestamp())::float8 as hidden_for
    from pgmq.q_shim_jobs order by msg_id`;
}

/** A PostgresError matcher for assert.rejects: SQLSTATE and message pattern. */
function pgError(code: string, message: RegExp) {
  return (e: unknown): boolean => {
    const err = e as { code?: string; message?: string };
    assert.equal(err.code, code, `SQLSTATE of ${err.message}`);
    assert.match(err.message ?? "", message);
    return true;
  };
}

Deno.test("pgmq shim: public functions match upstream 1.5.1 names, arguments, defaults and results", async () => {
  await withTestDb(async (sql) => {
    await install(sql);
    const rows = await sql.begin(async (tx) => {
      // Unqualified type names in the output would hide a schema drift.
      await tx`set local search_path = public`;
      return await tx`
        select p.proname || '(' || pg_get_function_arguments(p.oid) || ') -> ' ||
          pg_get_function_result(p.oid) as signature
        from pg_proc p
        where p.pronamespace = 'pgmq'::regnamespace and p.proname !~ '^_'
        order by 1`;
    });
    const ts = "timestamp with time zone";
    const expected = [
      "archive(queue_name text, msg_id bigint) -> boolean",
      "archive(queue_name text, msg_ids bigint[]) -> SETOF bigint",
      "create(queue_name text) -> void",
      "delete(queue_name text, msg_id bigint) -> boolean",
      "delete(queue_name text, msg_ids bigint[]) -> SETOF bigint",
      "drop_queue(queue_name text) -> boolean",
      "format_table_name(queue_name text, prefix text) -> text",
      "list_queues() -> SETOF pgmq.queue_record",
      "metrics(queue_name text) -> pgmq.metrics_result",
      "metrics_all() -> SETOF pgmq.metrics_result",
      "pop(queue_name text) -> SETOF pgmq.message_record",
      "purge_queue(queue_name text) -> bigint",
      "read(queue_name text, vt integer, qty integer, conditional jsonb DEFAULT '{}'::jsonb)" +
      " -> SETOF pgmq.message_record",
      "send(queue_name text, msg jsonb) -> SETOF bigint",
      `send(queue_name text, msg jsonb, delay ${ts}) -> SETOF bigint`,
      "send(queue_name text, msg jsonb, delay integer) -> SETOF bigint",
      `send(queue_name text, msg jsonb, headers jsonb, delay ${ts}) -> SETOF bigint`,
      "send(queue_name text, msg jsonb, headers jsonb, delay integer) -> SETOF bigint",
      "send(queue_name text, msg jsonb, headers jsonb) -> SETOF bigint",
      "send_batch(queue_name text, msgs jsonb[]) -> SETOF bigint",
      `send_batch(queue_name text, msgs jsonb[], delay ${ts}) -> SETOF bigint`,
      "send_batch(queue_name text, msgs jsonb[], delay integer) -> SETOF bigint",
      `send_batch(queue_name text, msgs jsonb[], headers jsonb[], delay ${ts}) -> SETOF bigint`,
      "send_batch(queue_name text, msgs jsonb[], headers jsonb[], delay integer) -> SETOF bigint",
      "send_batch(queue_name text, msgs jsonb[], headers jsonb[]) -> SETOF bigint",
      "set_vt(queue_name text, msg_id bigint, vt integer) -> SETOF pgmq.message_record",
      "validate_queue_name(queue_name text) -> void",
    ];
    assert.deepEqual(rows.map((r) => r.signature), [...expected].sort());
  });
});

Deno.test("pgmq shim: every function pins search_path and runs as its caller", async () => {
  await withTestDb(async (sql) => {
    await install(sql);
    const rows = await sql`
      select p.oid::regprocedure::text as fn, p.proconfig as config, p.prosecdef as definer
      from pg_proc p where p.pronamespace = 'pgmq'::regnamespace`;
    assert.ok(rows.length >= 27, `found ${rows.length} functions`);
    for (const r of rows) {
      assert.deepEqual(r.config, ["search_path=pg_catalog, pg_temp"], r.fn);
      assert.equal(r.definer, false, r.fn);
    }
  });
});

Deno.test("pgmq shim: result types and queue tables have upstream's columns", async () => {
  await withTestDb(async (sql) => {
    await installWithQueue(sql);
    const columns = async (rel: string) =>
      (await sql`
        select a.attname || ' ' || format_type(a.atttypid, a.atttypmod) ||
          case when a.attnotnull then ' not null' else '' end ||
          coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '') ||
          case when a.attidentity = 'a' then ' identity always' else '' end as col
        from pg_attribute a
        left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
        where a.attrelid = ${rel}::regclass and a.attnum > 0 and not a.attisdropped
        order by a.attnum`).map((r) => r.col);
    const ts = "timestamp with time zone";
    assert.deepEqual(await columns("pgmq.message_record"), [
      "msg_id bigint",
      "read_ct integer",
      `enqueued_at ${ts}`,
      `vt ${ts}`,
      "message jsonb",
      "headers jsonb",
    ]);
    assert.deepEqual(await columns("pgmq.queue_record"), [
      "queue_name character varying",
      "is_partitioned boolean",
      "is_unlogged boolean",
      `created_at ${ts}`,
    ]);
    assert.deepEqual(await columns("pgmq.metrics_result"), [
      "queue_name text",
      "queue_length bigint",
      "newest_msg_age_sec integer",
      "oldest_msg_age_sec integer",
      "total_messages bigint",
      `scrape_time ${ts}`,
      "queue_visible_length bigint",
    ]);
    assert.deepEqual(await columns("pgmq.meta"), [
      "queue_name character varying not null",
      "is_partitioned boolean not null",
      "is_unlogged boolean not null",
      `created_at ${ts} not null default now()`,
    ]);
    assert.deepEqual(await columns(`pgmq.q_${Q}`), [
      "msg_id bigint not null identity always",
      "read_ct integer not null default 0",
      `enqueued_at ${ts} not null default now()`,
      `vt ${ts} not null`,
      "message jsonb",
      "headers jsonb",
    ]);
    assert.deepEqual(await columns(`pgmq.a_${Q}`), [
      "msg_id bigint not null",
      "read_ct integer not null default 0",
      `enqueued_at ${ts} not null default now()`,
      `archived_at ${ts} not null default now()`,
      `vt ${ts} not null`,
      "message jsonb",
      "headers jsonb",
    ]);
    const indexes = (await sql`
      select tablename || ': ' || regexp_replace(indexdef, '^.* USING ', '') as ix
      from pg_indexes where schemaname = 'pgmq' and tablename like '%shim_jobs'
      order by 1`).map((r) => r.ix);
    assert.deepEqual(indexes, [
      `a_${Q}: btree (archived_at)`,
      `a_${Q}: btree (msg_id)`,
      `q_${Q}: btree (msg_id)`,
      `q_${Q}: btree (vt)`,
    ]);
  });
});

Deno.test("pgmq shim: create is idempotent, keeps messages, and joins the extension", async () => {
  await withTestDb(async (sql) => {
    await installWithQueue(sql);
    await sql`select pgmq.send(${Q}, '{"keep": true}')`;
    await sql`select pgmq.create(${Q})`;
    assert.equal((await liveRows(sql)).length, 1);
    const [{ n }] = await sql`select count(*)::int as n from pgmq.meta where queue_name = ${Q}`;
    assert.equal(n, 1);
    const members = (await sql`
      select c.relname from pg_depend d
      join pg_class c on c.oid = d.objid and d.classid = 'pg_class'::regclass
      where d.refobjid = (select oid from pg_extension where extname = 'pgmq') and d.deptype = 'e'
      order by 1`).map((r) => r.relname);
    assert.deepEqual(members, [`a_${Q}`, "meta", `q_${Q}`, `q_${Q}_msg_id_seq`]);
    // Members go with the extension (the schema, made for it by the control file, stays).
    await sql`drop extension pgmq cascade`;
    const [{ left }] = await sql`select count(*)::int as left from pg_class
      where relnamespace = 'pgmq'::regnamespace`;
    assert.equal(left, 0);
  });
});

Deno.test("pgmq shim: queue names are validated with message, detail and hint", async () => {
  await withTestDb(async (sql) => {
    await install(sql);
    for (const bad of ["bad-name", "has space", "", "x'; drop table pgmq.meta; --", "üml"]) {
      await assert.rejects(sql`select pgmq.create(${bad})`, (e: unknown) => {
        const err = e as { code?: string; message?: string; detail?: string; hint?: string };
        assert.equal(err.code, "42602", `${JSON.stringify(bad)}: ${err.message}`);
        assert.match(err.message ?? "", /invalid pgmq queue name/);
        assert.match(err.detail ?? "", /letters, digits or underscores/);
        assert.ok(err.hint, "hint present");
        return true;
      });
    }
    await assert.rejects(sql`select pgmq.create(null)`, pgError("42602", /NULL/));
    await assert.rejects(
      sql`select pgmq.create(${"a".repeat(48)})`,
      pgError("42622", /maximum length is 47/),
    );
    const longest = "b".repeat(47);
    await sql`select pgmq.create(${longest})`;
    const [{ id }] = await sql`select pgmq.send(${longest}, '{}')::int as id`;
    assert.equal(id, 1);
    const [{ seq }] =
      await sql`select to_regclass(${`pgmq.q_${longest}_msg_id_seq`}) is not null as seq`;
    assert.equal(seq, true, "identity sequence name was not truncated");
    const names = (await sql`select queue_name from pgmq.meta`).map((r) => r.queue_name);
    assert.deepEqual(names, [longest], "no rejected name was registered");
  });
});

Deno.test("pgmq shim: tables use the lower-cased name, pgmq.meta keeps the spelling (as upstream)", async () => {
  await withTestDb(async (sql) => {
    await install(sql);
    await sql`select pgmq.create('MiXeD_Case')`;
    const [{ present }] = await sql`select to_regclass('pgmq.q_mixed_case') is not null as present`;
    assert.equal(present, true);
    await sql`select pgmq.send('MiXeD_Case', '{"n": 1}')`;
    await sql`select pgmq.send('mixed_case', '{"n": 2}')`;
    const [{ n }] = await sql`select count(*)::int as n from pgmq.q_mixed_case`;
    assert.equal(n, 2);
    const names = (await sql`select queue_name from pgmq.list_queues()`).map((r) => r.queue_name);
    assert.ok(names.includes("MiXeD_Case"), names.join(","));
  });
});

Deno.test("pgmq shim: a missing queue fails with undefined_table and a hint", async () => {
  await withTestDb(async (sql) => {
    await install(sql);
    await assert.rejects(sql`select pgmq.send('nope', '{}')`, (e: unknown) => {
      const err = e as { code?: string; hint?: string };
      assert.equal(err.code, "42P01");
      assert.match(err.hint ?? "", /pgmq\.create\('nope'\)/);
      return true;
    });
    await assert.rejects(
      sql`select * from pgmq.read('nope', 1, 1)`,
      pgError("42P01", /does not exist/),
    );
  });
});

Deno.test("pgmq shim: send overloads set message, headers and visibility", async () => {
  await withTestDb(async (sql) => {
    await installWithQueue(sql);
    const ids = await sql`
      select pgmq.send(${Q}, '{"n": 1}')::int as id
      union all select pgmq.send(${Q}, '{"n": 2}', 60)::int
      union all select pgmq.send(${Q}, '{"n": 3}', '2000-01-01 00:00:00+00'::timestamptz)::int
      union all select pgmq.send(${Q}, '{"n": 4}', '{"h": 4}'::jsonb)::int
      union all select pgmq.send(${Q}, '{"n": 5}', '{"h": 5}'::jsonb, 60)::int
      union all select pgmq.send(${Q}, '{"n": 6}', '{"h": 6}'::jsonb, now() + interval '1 hour')::int`;
    assert.deepEqual(ids.map((r) => r.id), [1, 2, 3, 4, 5, 6]);
    const rows = await liveRows(sql);
    assert.deepEqual(rows.map((r) => r.message), [1, 2, 3, 4, 5, 6].map((n) => ({ n })));
    assert.deepEqual(rows.map((r) => r.headers), [null, null, null, { h: 4 }, { h: 5 }, { h: 6 }]);
    assert.deepEqual(rows.map((r) => r.read_ct), [0, 0, 0, 0, 0, 0]);
    const hidden = rows.map((r) => r.hidden_for);
    assert.ok(hidden[0] <= 0 && hidden[0] > -5, `immediate: ${hidden[0]}`);
    assert.ok(hidden[1] > 55 && hidden[1] <= 60, `delay 60: ${hidden[1]}`);
    assert.ok(hidden[2] < -365 * 24 * 3600, `timestamp in the past: ${hidden[2]}`);
    assert.ok(hidden[3] <= 0 && hidden[3] > -5, `headers only: ${hidden[3]}`);
    assert.ok(hidden[4] > 55 && hidden[4] <= 60, `headers + delay 60: ${hidden[4]}`);
    assert.ok(hidden[5] > 3500 && hidden[5] <= 3600, `headers + timestamp: ${hidden[5]}`);
    const [{ exact }] = await sql`
      select vt = '2000-01-01 00:00:00+00'::timestamptz as exact from pgmq.q_shim_jobs where msg_id = 3`;
    assert.equal(exact, true, "a timestamptz delay is stored as given");
    // Only the messages without a delay are readable now, oldest first.
    assert.deepEqual(await readIds(sql, 30, 10), [1, 3, 4]);
  });
});

Deno.test("pgmq shim: send_batch overloads keep order and pair headers with messages", async () => {
  await withTestDb(async (sql) => {
    await installWithQueue(sql);
    const ids = async (rows: Promise<{ id: number }[]>) => (await rows).map((r) => r.id);
    // Two messages each time; headers, where given, only for the first.
    assert.deepEqual(
      await ids(sql`select id::int from pgmq.send_batch(${Q},
        array['{"b": 1}', '{"b": 2}']::jsonb[]) id`),
      [1, 2],
    );
    assert.deepEqual(
      await ids(sql`select id::int from pgmq.send_batch(${Q},
        array['{"b": 1}', '{"b": 2}']::jsonb[], 60) id`),
      [3, 4],
    );
    assert.deepEqual(
      await ids(sql`select id::int from pgmq.send_batch(${Q},
        array['{"b": 1}', '{"b": 2}']::jsonb[], '2000-01-01 00:00:00+00'::timestamptz) id`),
      [5, 6],
    );
    assert.deepEqual(
      await ids(sql`select id::int from pgmq.send_batch(${Q},
        array['{"b": 1}', '{"b": 2}']::jsonb[], array['{"h": 1}', null]::jsonb[]) id`),
      [7, 8],
    );
    assert.deepEqual(
      await ids(sql`select id::int from pgmq.send_batch(${Q},
        array['{"b": 1}', '{"b": 2}']::jsonb[], array['{"h": 1}', null]::jsonb[], 60) id`),
      [9, 10],
    );
    assert.deepEqual(
      await ids(sql`select id::int from pgmq.send_batch(${Q},
        array['{"b": 1}', '{"b": 2}']::jsonb[], array['{"h": 1}', null]::jsonb[],
        now() + interval '1 hour') id`),
      [11, 12],
    );
    assert.deepEqual(
      await ids(sql`select id::int from pgmq.send_batch(${Q}, '{}'::jsonb[]) id`),
      [],
    );
    const rows = await liveRows(sql);
    assert.deepEqual(rows.map((r) => r.message.b), [1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2]);
    assert.deepEqual(
      rows.map((r) => r.headers),
      [null, null, null, null, null, null, { h: 1 }, null, { h: 1 }, null, { h: 1 }, null],
    );
    const delayed = rows.filter((r) => r.hidden_for > 30).map((r) => r.id);
    assert.deepEqual(delayed, [3, 4, 9, 10, 11, 12]);
    await assert.rejects(
      sql`select pgmq.send_batch(${Q}, array['{"b": 1}', '{"b": 2}']::jsonb[], array['{}']::jsonb[])`,
      pgError("2202E", /2 messages but 1 headers/),
    );
  });
});

Deno.test("pgmq shim: read hides messages for vt seconds and counts reads", async () => {
  await withTestDb(async (sql) => {
    await installWithQueue(sql);
    await sql`select pgmq.send_batch(${Q}, array['{"n": 1}', '{"n": 2}', '{"n": 3}']::jsonb[])`;
    const first = await sql`select msg_id::int as id, read_ct, message, headers,
      extract(epoch from vt - clock_timestamp())::float8 as hidden_for
      from pgmq.read(${Q}, 30, 2)`;
    assert.deepEqual(first.map((r) => [r.id, r.read_ct, r.message.n]), [[1, 1, 1], [2, 1, 2]]);
    for (const r of first) assert.ok(r.hidden_for > 28 && r.hidden_for <= 30, `${r.hidden_for}`);
    assert.deepEqual(await readIds(sql, 1, 10), [3], "1 and 2 are hidden");
    assert.deepEqual(await readIds(sql, 1, 10), [], "3 is hidden for a second");
    await waitFor(async () => {
      const [{ due }] =
        await sql`select vt <= clock_timestamp() as due from pgmq.q_shim_jobs where msg_id = 3`;
      return due;
    }, { what: "message 3's visibility timeout to pass" });
    const again = await sql`select msg_id::int as id, read_ct from pgmq.read(${Q}, 30, 10)`;
    assert.deepEqual(again.map((r) => [r.id, r.read_ct]), [[3, 2]]);
  });
});

Deno.test("pgmq shim: concurrent reads in open transactions skip each other's messages", async () => {
  await withTestDb(async (sql) => {
    await installWithQueue(sql);
    await sql`select pgmq.send_batch(${Q}, array(select jsonb_build_object('n', g) from generate_series(1, 6) g))`;
    const a = await sql.reserve();
    const b = await sql.reserve();
    try {
      await a`begin`;
      const fromA = (await a`select msg_id::int as id from pgmq.read(${Q}, 30, 2)`).map((r) =>
        r.id
      );
      await b`begin`;
      // Without SKIP LOCKED, b would wait for a's row locks: fail fast instead.
      await b`set local lock_timeout = '2s'`;
      const fromB = (await b`select msg_id::int as id from pgmq.read(${Q}, 30, 2)`).map((r) =>
        r.id
      );
      assert.deepEqual(fromA, [1, 2]);
      assert.deepEqual(fromB, [3, 4]);
      await a`commit`;
      await b`rollback`;
    } finally {
      a.release();
      b.release();
    }
    // b's claim rolled back: its messages are visible again, never read.
    const rest = await sql`select msg_id::int as id, read_ct from pgmq.read(${Q}, 30, 10)`;
    assert.deepEqual(rest.map((r) => [r.id, r.read_ct]), [[3, 1], [4, 1], [5, 1], [6, 1]]);

    // Many readers at once through the pool: no message is handed out twice.
    await sql`select pgmq.send_batch(${Q}, array(select jsonb_build_object('n', g) from generate_series(1, 40) g))`;
    const batches = await Promise.all(Array.from({ length: 12 }, () => readIds(sql, 30, 3)));
    const seen = batches.flat();
    assert.equal(new Set(seen).size, seen.length, `duplicates in ${seen.join(",")}`);
    const all = [...seen, ...(await readIds(sql, 30, 100))].sort((x, y) => x - y);
    assert.deepEqual(all, Array.from({ length: 40 }, (_, i) => i + 7));
  });
});

Deno.test("pgmq shim: conditional read returns only messages containing the condition", async () => {
  await withTestDb(async (sql) => {
    await installWithQueue(sql);
    await sql`select pgmq.send_batch(${Q}, array[
      '{"kind": "a"}', '{"kind": "b"}', '{"kind": "a", "x": 1}', '[1, 2]', 'null'
    ]::jsonb[])`;
    const matching =
      await sql`select msg_id::int as id from pgmq.read(${Q}, 30, 10, '{"kind": "a"}')`;
    assert.deepEqual(matching.map((r) => r.id), [1, 3]);
    const none = await sql`select msg_id::int as id from pgmq.read(${Q}, 30, 10, '{"kind": "z"}')`;
    assert.deepEqual(none.map((r) => r.id), []);
    // '{}' (the default) reads everything, arrays and scalars included.
    const rest = await sql`select msg_id::int as id from pgmq.read(${Q}, 30, 10, '{}')`;
    assert.deepEqual(rest.map((r) => r.id), [2, 4, 5]);
  });
});

Deno.test("pgmq shim: pop removes the oldest visible message for good", async () => {
  await withTestDb(async (sql) => {
    await installWithQueue(sql);
    await sql`select pgmq.send(${Q}, '{"n": 1}', '{"h": 1}'::jsonb)`;
    await sql`select pgmq.send(${Q}, '{"n": 2}')`;
    await sql`select pgmq.send(${Q}, '{"n": 3}', 60)`;
    const [first] =
      await sql`select msg_id::int as id, read_ct, message, headers from pgmq.pop(${Q})`;
    assert.deepEqual({ ...first }, { id: 1, read_ct: 0, message: { n: 1 }, headers: { h: 1 } });
    const [second] = await sql`select msg_id::int as id from pgmq.pop(${Q})`;
    assert.equal(second.id, 2);
    assert.equal((await sql`select * from pgmq.pop(${Q})`).length, 0, "3 is not visible yet");
    assert.deepEqual((await liveRows(sql)).map((r) => r.id), [3]);
    const [{ archived }] = await sql`select count(*)::int as archived from pgmq.a_shim_jobs`;
    assert.equal(archived, 0);
  });
});

Deno.test("pgmq shim: delete returns true/false for one id and only existing ids for an array", async () => {
  await withTestDb(async (sql) => {
    await installWithQueue(sql);
    await sql`select pgmq.send_batch(${Q}, array['{}', '{}', '{}', '{}']::jsonb[])`;
    const [one] = await sql`select pgmq.delete(${Q}, 1::bigint) as deleted`;
    assert.equal(one.deleted, true);
    const [again] = await sql`select pgmq.delete(${Q}, 1::bigint) as deleted`;
    assert.equal(again.deleted, false);
    const many =
      await sql`select id::int from pgmq.delete(${Q}, array[3, 1, 999, 2]::bigint[]) as id order by 1`;
    assert.deepEqual(many.map((r) => r.id), [2, 3]);
    const none = await sql`select * from pgmq.delete(${Q}, array[]::bigint[])`;
    assert.equal(none.length, 0);
    assert.deepEqual((await liveRows(sql)).map((r) => r.id), [4]);
  });
});

Deno.test("pgmq shim: archive moves rows, with read_ct, headers and archived_at", async () => {
  await withTestDb(async (sql) => {
    await installWithQueue(sql);
    await sql`select pgmq.send_batch(${Q}, array['{"n": 1}', '{"n": 2}', '{"n": 3}']::jsonb[],
      array['{"h": 1}', '{"h": 2}', '{"h": 3}']::jsonb[])`;
    await readIds(sql, 30, 1);
    const [one] = await sql`select pgmq.archive(${Q}, 1::bigint) as archived`;
    assert.equal(one.archived, true);
    const [again] = await sql`select pgmq.archive(${Q}, 1::bigint) as archived`;
    assert.equal(again.archived, false);
    const many = await sql`select id::int from pgmq.archive(${Q}, array[3, 42]::bigint[]) as id`;
    assert.deepEqual(many.map((r) => r.id), [3]);
    assert.deepEqual((await liveRows(sql)).map((r) => r.id), [2]);
    const archived = await sql`
      select a.msg_id::int as id, a.read_ct, a.message, a.headers,
        a.archived_at >= a.enqueued_at and a.archived_at <= now() as stamped
      from pgmq.a_shim_jobs a order by a.msg_id`;
    assert.deepEqual(archived.map((r) => ({ ...r })), [
      { id: 1, read_ct: 1, message: { n: 1 }, headers: { h: 1 }, stamped: true },
      { id: 3, read_ct: 0, message: { n: 3 }, headers: { h: 3 }, stamped: true },
    ]);
  });
});

Deno.test("pgmq shim: set_vt makes a message visible again or hides it", async () => {
  await withTestDb(async (sql) => {
    await installWithQueue(sql);
    await sql`select pgmq.send(${Q}, '{"n": 1}')`;
    assert.deepEqual(await readIds(sql, 300, 1), [1]);
    assert.deepEqual(await readIds(sql, 300, 1), []);
    const [shown] = await sql`select msg_id::int as id, read_ct, vt <= clock_timestamp() as visible
      from pgmq.set_vt(${Q}, 1, 0)`;
    assert.deepEqual({ ...shown }, { id: 1, read_ct: 1, visible: true });
    const reread = await sql`select msg_id::int as id, read_ct from pgmq.read(${Q}, 0, 1)`;
    assert.deepEqual(reread.map((r) => [r.id, r.read_ct]), [[1, 2]]);
    const [hidden] = await sql`select extract(epoch from vt - clock_timestamp())::float8 as secs
      from pgmq.set_vt(${Q}, 1, 120)`;
    assert.ok(hidden.secs > 115 && hidden.secs <= 120, `${hidden.secs}`);
    assert.deepEqual(await readIds(sql, 30, 1), []);
    assert.equal((await sql`select * from pgmq.set_vt(${Q}, 999, 0)`).length, 0);
  });
});

Deno.test("pgmq shim: metrics and metrics_all report lengths, ages and totals", async () => {
  await withTestDb(async (sql) => {
    await installWithQueue(sql);
    const metrics = async () => {
      const [m] = await sql`select queue_name, queue_length::int, newest_msg_age_sec,
        oldest_msg_age_sec, total_messages::int, scrape_time, queue_visible_length::int
        from pgmq.metrics(${Q})`;
      return m;
    };
    const empty = await metrics();
    assert.deepEqual({ ...empty, scrape_time: null }, {
      queue_name: Q,
      queue_length: 0,
      newest_msg_age_sec: null,
      oldest_msg_age_sec: null,
      total_messages: 0,
      scrape_time: null,
      queue_visible_length: 0,
    });
    assert.ok(empty.scrape_time instanceof Date);
    await sql`select pgmq.send_batch(${Q}, array['{}', '{}', '{}']::jsonb[])`;
    await sql`select pgmq.send(${Q}, '{}', 600)`;
    await sql`update pgmq.q_shim_jobs set enqueued_at = now() - interval '100 seconds' where msg_id = 1`;
    await sql`select pgmq.delete(${Q}, 2::bigint)`;
    const busy = await metrics();
    assert.equal(busy.queue_length, 3);
    assert.equal(busy.queue_visible_length, 2);
    assert.equal(busy.total_messages, 4, "deleted messages still count");
    assert.equal(busy.oldest_msg_age_sec, 100);
    assert.equal(busy.newest_msg_age_sec, 0);
    const all = await sql`select queue_name, queue_length::int from pgmq.metrics_all()`;
    assert.deepEqual(all.filter((r) => r.queue_name === Q).map((r) => r.queue_length), [3]);
  });
});

Deno.test("pgmq shim: purge_queue empties the live table and returns the count", async () => {
  await withTestDb(async (sql) => {
    await installWithQueue(sql);
    await sql`select pgmq.send_batch(${Q}, array['{}', '{}', '{}', '{}', '{}']::jsonb[])`;
    await sql`select pgmq.archive(${Q}, 5::bigint)`;
    const [{ purged }] = await sql`select pgmq.purge_queue(${Q})::int as purged`;
    assert.equal(purged, 4);
    const [{ again }] = await sql`select pgmq.purge_queue(${Q})::int as again`;
    assert.equal(again, 0);
    const [{ archived }] = await sql`select count(*)::int as archived from pgmq.a_shim_jobs`;
    assert.equal(archived, 1, "the archive is kept");
    const [{ next }] = await sql`select pgmq.send(${Q}, '{}')::int as next`;
    assert.equal(next, 6, "ids are not reused");
  });
});

Deno.test("pgmq shim: drop_queue and list_queues", async () => {
  await withTestDb(async (sql) => {
    await installWithQueue(sql);
    await sql`select pgmq.create('shim_other')`;
    const names = async () =>
      (await sql`select queue_name from pgmq.list_queues()`).map((r) => r.queue_name);
    const before = await names();
    assert.ok(before.includes(Q) && before.includes("shim_other"), before.join(","));
    const [row] = await sql`select * from pgmq.list_queues() where queue_name = ${Q}`;
    assert.deepEqual({ ...row, created_at: null }, {
      queue_name: Q,
      is_partitioned: false,
      is_unlogged: false,
      created_at: null,
    });
    assert.ok(row.created_at instanceof Date);

    await sql`select pgmq.send(${Q}, '{}')`;
    const [{ dropped }] = await sql`select pgmq.drop_queue(${Q}) as dropped`;
    assert.equal(dropped, true);
    const [{ q, a, seq }] = await sql`select to_regclass('pgmq.q_shim_jobs') as q,
      to_regclass('pgmq.a_shim_jobs') as a, to_regclass('pgmq.q_shim_jobs_msg_id_seq') as seq`;
    assert.deepEqual([q, a, seq], [null, null, null]);
    const after = await names();
    assert.ok(!after.includes(Q) && after.includes("shim_other"), after.join(","));
    await assert.rejects(sql`select pgmq.drop_queue(${Q})`, pgError("42P01", /does not exist/));
    await sql`select pgmq.create(${Q})`;
    const [{ id }] = await sql`select pgmq.send(${Q}, '{}')::int as id`;
    assert.equal(id, 1, "a re-created queue starts afresh");
  });
});

Deno.test("pgmq shim: service_role can use existing queues, anon cannot", async () => {
  await withTestDb(async (sql) => {
    await installWithQueue(sql);
    await sql`select pgmq.send(${Q}, '{"n": 0}')`;
    const used = await sql.begin(async (tx) => {
      await tx`set local role service_role`;
      await tx`select pgmq.send(${Q}, '{"n": 1}')`;
      await tx`select pgmq.send_batch(${Q}, array['{"n": 2}', '{"n": 3}', '{"n": 4}']::jsonb[])`;
      const read = await tx`select msg_id::int as id from pgmq.read(${Q}, 30, 2)`;
      await tx`select pgmq.set_vt(${Q}, 1, 0)`;
      await tx`select pgmq.delete(${Q}, 1::bigint)`;
      await tx`select pgmq.archive(${Q}, 2::bigint)`;
      const popped = await tx`select msg_id::int as id from pgmq.pop(${Q})`;
      const [m] = await tx`select total_messages::int as total from pgmq.metrics(${Q})`;
      const all = await tx`select * from pgmq.metrics_all()`;
      const queues = await tx`select * from pgmq.list_queues()`;
      const [{ purged }] = await tx`select pgmq.purge_queue(${Q})::int as purged`;
      return {
        read: read.map((r) => r.id),
        popped: popped.map((r) => r.id),
        total: m.total,
        all,
        queues,
        purged,
      };
    });
    assert.deepEqual(used.read, [1, 2]);
    assert.deepEqual(used.popped, [3]);
    assert.equal(used.total, 5);
    assert.ok(used.all.length >= 1 && used.queues.length >= 1);
    assert.equal(used.purged, 2, "4 and 5 were left");
    await assert.rejects(
      sql.begin(async (tx) => {
        await tx`set local role anon`;
        await tx`select pgmq.send(${Q}, '{}')`;
      }),
      pgError("42501", /permission denied/),
    );
  });
});
