-- pgmq 1.5.1 as plain SQL: the local stack's stand-in for the pgmq extension,
-- which has no Debian package. Schema, function names, argument names, types,
-- defaults and result columns are upstream's, so migrations run unchanged on
-- Supabase; only the non-partitioned queue and the verbs autoembed needs exist.
-- Functions run as the caller (security invoker), as upstream's do. Queue
-- names reach SQL only through format('%I'); values only as parameters.

\echo Use "CREATE EXTENSION pgmq" to load this file. \quit

------------------------------------------------------------------------------
-- Catalog and result types
------------------------------------------------------------------------------

-- public: one row per queue, as upstream; list_queues() and metrics_all() read it.
-- queue_name keeps the caller's spelling while the tables use it lower-cased.
create table pgmq.meta (
  queue_name varchar unique not null,
  is_partitioned boolean not null,
  is_unlogged boolean not null,
  created_at timestamptz not null default now()
);

-- public: a message as read(), pop() and set_vt() return it (the live table's row).
create type pgmq.message_record as (
  msg_id bigint,
  read_ct integer,
  enqueued_at timestamptz,
  vt timestamptz,
  message jsonb,
  headers jsonb
);

-- public: a row of list_queues().
create type pgmq.queue_record as (
  queue_name varchar,
  is_partitioned boolean,
  is_unlogged boolean,
  created_at timestamptz
);

-- public: what metrics() and metrics_all() report; queue_visible_length comes
-- last because upstream appended it in 1.5.0.
create type pgmq.metrics_result as (
  queue_name text,
  queue_length bigint,
  newest_msg_age_sec integer,
  oldest_msg_age_sec integer,
  total_messages bigint,
  scrape_time timestamptz,
  queue_visible_length bigint
);

------------------------------------------------------------------------------
-- Queue names and tables
------------------------------------------------------------------------------

-- internal (upstream keeps this name): the table of a queue. Upstream only
-- refuses `$`, `;`, `--` and quotes; the shim admits letters, digits and
-- underscores, so anything that works here also works upstream.
create function pgmq.format_table_name(
  queue_name text, -- the queue, as the caller spells it
  prefix text -- 'q' for live messages, 'a' for the archive
)
returns text
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if queue_name is null or queue_name !~ '^[A-Za-z0-9_]+$' then
    raise exception 'invalid pgmq queue name: %', coalesce(quote_literal(queue_name), 'NULL')
      using errcode = 'invalid_name',
        detail = 'A queue name is one or more ASCII letters, digits or underscores.',
        hint = 'Use a name such as embedding_jobs.';
  end if;
  -- Upstream lower-cases the table name but not the name kept in pgmq.meta.
  return lower(prefix || '_' || queue_name);
end
$$;

-- internal (upstream keeps this name): refuses names whose derived identifiers
-- (pgmq.q_<name>_msg_id_seq, archived_at_idx_<name>) would pass Postgres's
-- 63-byte limit and be silently truncated. Upstream 1.5.1 also allows 47.
create function pgmq.validate_queue_name(
  queue_name text -- the queue, as the caller spells it
)
returns void
language plpgsql
immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if length(queue_name) > 47 then
    raise exception 'queue name is too long, maximum length is 47 characters'
      using errcode = 'name_too_long',
        detail = format('%s has %s characters.', quote_literal(queue_name), length(queue_name)),
        hint = 'Choose a queue name of at most 47 characters.';
  end if;
end
$$;

-- internal: format_table_name for a queue that must exist. A missing queue
-- fails with undefined_table like upstream, but the message says what to do.
create function pgmq._queue_table(
  queue_name text, -- the queue, as the caller spells it
  prefix text -- 'q' for live messages, 'a' for the archive
)
returns text
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
  tbl text := pgmq.format_table_name(queue_name, prefix);
begin
  if to_regclass(format('pgmq.%I', tbl)) is null then
    raise exception 'pgmq queue % does not exist', quote_literal(queue_name)
      using errcode = 'undefined_table',
        detail = format('Table pgmq.%I is missing.', tbl),
        hint = format('Create the queue first: select pgmq.create(%L);', queue_name);
  end if;
  return tbl;
end
$$;

-- internal: whether relation pgmq.<rel> is a member of this extension. Queue
-- tables are members, as upstream's are, so dropping the extension drops them.
create function pgmq._is_member(
  rel text -- a table or sequence name in schema pgmq
)
returns boolean
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
  select exists (
    select
    from pg_catalog.pg_depend d
    join pg_catalog.pg_extension e on e.oid = d.refobjid
    where e.extname = 'pgmq'
      and d.deptype = 'e'
      and d.classid = 'pg_catalog.pg_class'::regclass
      and d.objid = to_regclass(format('pgmq.%I', rel))
  )
$$;

-- public: creates queue `queue_name`: pgmq.q_<name> for live messages and
-- pgmq.a_<name> for archived ones. Creating an existing queue does nothing.
create function pgmq.create(
  queue_name text -- letters, digits, underscores; at most 47 characters
)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  qtable text := pgmq.format_table_name(queue_name, 'q');
  atable text := pgmq.format_table_name(queue_name, 'a');
begin
  perform pgmq.validate_queue_name(queue_name);
  -- "if not exists" alone still lets two sessions race on the catalogs;
  -- serialize creators of one queue until commit.
  perform pg_advisory_xact_lock(hashtext('pgmq.' || qtable));

  execute format(
    $ddl$
    create table if not exists pgmq.%I (
      msg_id bigint generated always as identity primary key,
      read_ct integer not null default 0,
      enqueued_at timestamptz not null default now(),
      vt timestamptz not null,
      message jsonb,
      headers jsonb
    )
    $ddl$,
    qtable
  );
  execute format(
    $ddl$
    create table if not exists pgmq.%I (
      msg_id bigint primary key,
      read_ct integer not null default 0,
      enqueued_at timestamptz not null default now(),
      archived_at timestamptz not null default now(),
      vt timestamptz not null,
      message jsonb,
      headers jsonb
    )
    $ddl$,
    atable
  );
  execute format('create index if not exists %I on pgmq.%I (vt)', qtable || '_vt_idx', qtable);
  execute format(
    'create index if not exists %I on pgmq.%I (archived_at)',
    'archived_at_idx_' || lower(queue_name),
    atable
  );

  if not pgmq._is_member(qtable) then
    execute format('alter extension pgmq add table pgmq.%I', qtable);
    execute format('alter extension pgmq add sequence pgmq.%I', qtable || '_msg_id_seq');
  end if;
  if not pgmq._is_member(atable) then
    execute format('alter extension pgmq add table pgmq.%I', atable);
  end if;

  insert into pgmq.meta (queue_name, is_partitioned, is_unlogged)
  values (queue_name, false, false)
  on conflict do nothing;
end
$$;

-- public: drops queue `queue_name`, its archive and its pgmq.meta row. Like
-- upstream 1.5.1 it returns true or raises (here undefined_table, with a
-- hint) for a queue that does not exist.
create function pgmq.drop_queue(
  queue_name text -- the queue to drop
)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  qtable text := pgmq._queue_table(queue_name, 'q');
  atable text := pgmq.format_table_name(queue_name, 'a');
begin
  perform pg_advisory_xact_lock(hashtext('pgmq.' || qtable));
  -- Postgres refuses to drop an extension member, so detach each one first.
  if pgmq._is_member(qtable) then
    execute format('alter extension pgmq drop table pgmq.%I', qtable);
  end if;
  if pgmq._is_member(qtable || '_msg_id_seq') then
    execute format('alter extension pgmq drop sequence pgmq.%I', qtable || '_msg_id_seq');
  end if;
  if pgmq._is_member(atable) then
    execute format('alter extension pgmq drop table pgmq.%I', atable);
  end if;
  execute format('drop table if exists pgmq.%I, pgmq.%I', qtable, atable);
  delete from pgmq.meta m where m.queue_name = drop_queue.queue_name;
  return true;
end
$$;

-- public: deletes every live message of `queue_name` (the archive stays) and
-- returns how many there were. DELETE rather than upstream's count+TRUNCATE,
-- so the count is exact and readers are not blocked by an exclusive lock.
create function pgmq.purge_queue(
  queue_name text -- the queue to empty
)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  deleted bigint;
begin
  execute format('delete from pgmq.%I', pgmq._queue_table(queue_name, 'q'));
  get diagnostics deleted = row_count;
  return deleted;
end
$$;

-- public: every queue in pgmq.meta.
create function pgmq.list_queues()
returns setof pgmq.queue_record
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
  select m.queue_name, m.is_partitioned, m.is_unlogged, m.created_at
  from pgmq.meta m
  order by m.queue_name
$$;

------------------------------------------------------------------------------
-- Sending
------------------------------------------------------------------------------

-- public: the one real send; the five overloads below call it. Returns the new
-- message's id. The message becomes visible to read() at `delay`.
create function pgmq.send(
  queue_name text, -- the queue
  msg jsonb, -- the message body
  headers jsonb, -- optional metadata stored beside the body (null for none)
  delay timestamptz -- when the message becomes visible
)
returns setof bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  return query execute format(
    'insert into pgmq.%I (vt, message, headers) values ($1, $2, $3) returning msg_id',
    pgmq._queue_table(queue_name, 'q')
  ) using delay, msg, headers;
end
$$;

-- public: send, visible at once, no headers.
create function pgmq.send(queue_name text, msg jsonb)
returns setof bigint
language sql
set search_path = pg_catalog, pg_temp
as $$
  select pgmq.send(queue_name, msg, null::jsonb, clock_timestamp())
$$;

-- public: send, visible after `delay` seconds, no headers.
create function pgmq.send(queue_name text, msg jsonb, delay integer)
returns setof bigint
language sql
set search_path = pg_catalog, pg_temp
as $$
  select pgmq.send(queue_name, msg, null::jsonb, clock_timestamp() + make_interval(secs => delay))
$$;

-- public: send, visible at time `delay`, no headers.
create function pgmq.send(queue_name text, msg jsonb, delay timestamptz)
returns setof bigint
language sql
set search_path = pg_catalog, pg_temp
as $$
  select pgmq.send(queue_name, msg, null::jsonb, delay)
$$;

-- public: send with headers, visible at once.
create function pgmq.send(queue_name text, msg jsonb, headers jsonb)
returns setof bigint
language sql
set search_path = pg_catalog, pg_temp
as $$
  select pgmq.send(queue_name, msg, headers, clock_timestamp())
$$;

-- public: send with headers, visible after `delay` seconds.
create function pgmq.send(queue_name text, msg jsonb, headers jsonb, delay integer)
returns setof bigint
language sql
set search_path = pg_catalog, pg_temp
as $$
  select pgmq.send(queue_name, msg, headers, clock_timestamp() + make_interval(secs => delay))
$$;

-- public: the one real send_batch; the five overloads below call it. Inserts
-- one message per element of `msgs`, in order, and returns their ids in order.
-- Upstream pairs msgs[i] with headers[i] and pads the shorter array with nulls
-- (so surplus headers become empty messages); the shim refuses arrays of
-- different lengths instead.
create function pgmq.send_batch(
  queue_name text, -- the queue
  msgs jsonb[], -- the message bodies
  headers jsonb[], -- headers[i] goes with msgs[i]; null for none
  delay timestamptz -- when the messages become visible
)
returns setof bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  if headers is not null and cardinality(headers) is distinct from cardinality(msgs) then
    raise exception 'pgmq.send_batch: % messages but % headers',
      coalesce(cardinality(msgs), 0), cardinality(headers)
      using errcode = 'array_subscript_error',
        detail = 'headers[i] belongs to msgs[i], so both arrays need the same length.',
        hint = 'Pass one header object (or null) per message, or null for no headers.';
  end if;
  return query execute format(
    $sql$
    insert into pgmq.%I (vt, message, headers)
    select $1, m.message, m.headers
    from unnest($2, $3) with ordinality as m (message, headers, n)
    order by m.n
    returning msg_id
    $sql$,
    pgmq._queue_table(queue_name, 'q')
  ) using delay, msgs, headers;
end
$$;

-- public: send_batch, visible at once, no headers.
create function pgmq.send_batch(queue_name text, msgs jsonb[])
returns setof bigint
language sql
set search_path = pg_catalog, pg_temp
as $$
  select pgmq.send_batch(queue_name, msgs, null::jsonb[], clock_timestamp())
$$;

-- public: send_batch, visible after `delay` seconds, no headers.
create function pgmq.send_batch(queue_name text, msgs jsonb[], delay integer)
returns setof bigint
language sql
set search_path = pg_catalog, pg_temp
as $$
  select pgmq.send_batch(queue_name, msgs, null::jsonb[], clock_timestamp() + make_interval(secs => delay))
$$;

-- public: send_batch, visible at time `delay`, no headers.
create function pgmq.send_batch(queue_name text, msgs jsonb[], delay timestamptz)
returns setof bigint
language sql
set search_path = pg_catalog, pg_temp
as $$
  select pgmq.send_batch(queue_name, msgs, null::jsonb[], delay)
$$;

-- public: send_batch with headers, visible at once.
create function pgmq.send_batch(queue_name text, msgs jsonb[], headers jsonb[])
returns setof bigint
language sql
set search_path = pg_catalog, pg_temp
as $$
  select pgmq.send_batch(queue_name, msgs, headers, clock_timestamp())
$$;

-- public: send_batch with headers, visible after `delay` seconds.
create function pgmq.send_batch(queue_name text, msgs jsonb[], headers jsonb[], delay integer)
returns setof bigint
language sql
set search_path = pg_catalog, pg_temp
as $$
  select pgmq.send_batch(queue_name, msgs, headers, clock_timestamp() + make_interval(secs => delay))
$$;

------------------------------------------------------------------------------
-- Receiving and acknowledging
------------------------------------------------------------------------------

-- public: claims up to `qty` visible messages, oldest id first, hides them for
-- `vt` seconds and counts the read. Returns them in msg_id order.
create function pgmq.read(
  queue_name text, -- the queue
  vt integer, -- seconds the claimed messages stay invisible to other reads
  qty integer, -- at most this many messages
  conditional jsonb default '{}' -- only messages containing it (@>); '{}' or null: all
)
returns setof pgmq.message_record
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  -- One statement claims and hides: SKIP LOCKED lets concurrent readers pass
  -- over rows another transaction is claiming instead of waiting and then
  -- returning the same message; the new vt hides the rows once that commits.
  -- The '{}' test keeps non-object messages readable without a condition
  -- (an array or scalar does not contain '{}').
  return query execute format(
    $sql$
    with claimable as (
      select q.msg_id
      from pgmq.%1$I q
      where q.vt <= clock_timestamp()
        and ($3 is null or $3 = '{}'::jsonb or q.message @> $3)
      order by q.msg_id
      limit $2
      for update skip locked
    ),
    claimed as (
      update pgmq.%1$I q
      set vt = clock_timestamp() + make_interval(secs => $1),
        read_ct = q.read_ct + 1
      from claimable c
      where q.msg_id = c.msg_id
      returning q.msg_id, q.read_ct, q.enqueued_at, q.vt, q.message, q.headers
    )
    select * from claimed order by msg_id
    $sql$,
    pgmq._queue_table(queue_name, 'q')
  ) using vt, qty, conditional;
end
$$;

-- public: takes the oldest visible message off the queue for good (no archive)
-- and returns it; nothing when none is visible.
create function pgmq.pop(
  queue_name text -- the queue
)
returns setof pgmq.message_record
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  -- SKIP LOCKED for the same reason as in read(): concurrent pops take
  -- different messages instead of queueing behind one another.
  return query execute format(
    $sql$
    with next_visible as (
      select q.msg_id
      from pgmq.%1$I q
      where q.vt <= clock_timestamp()
      order by q.msg_id
      limit 1
      for update skip locked
    )
    delete from pgmq.%1$I q
    using next_visible n
    where q.msg_id = n.msg_id
    returning q.msg_id, q.read_ct, q.enqueued_at, q.vt, q.message, q.headers
    $sql$,
    pgmq._queue_table(queue_name, 'q')
  );
end
$$;

-- public: deletes messages for good; returns the ids that existed (ids that
-- were not in the queue are left out).
create function pgmq.delete(
  queue_name text, -- the queue
  msg_ids bigint[] -- the messages to delete
)
returns setof bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  return query execute format(
    'delete from pgmq.%I where msg_id = any($1) returning msg_id',
    pgmq._queue_table(queue_name, 'q')
  ) using msg_ids;
end
$$;

-- public: deletes one message; true when it existed.
create function pgmq.delete(queue_name text, msg_id bigint)
returns boolean
language sql
set search_path = pg_catalog, pg_temp
as $$
  select count(*) > 0 from pgmq.delete(queue_name, array[msg_id])
$$;

-- public: moves messages from pgmq.q_<name> to pgmq.a_<name>, stamping
-- archived_at; returns the ids that were moved.
create function pgmq.archive(
  queue_name text, -- the queue
  msg_ids bigint[] -- the messages to archive
)
returns setof bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  return query execute format(
    $sql$
    with moved as (
      delete from pgmq.%I
      where msg_id = any($1)
      returning msg_id, read_ct, enqueued_at, vt, message, headers
    )
    insert into pgmq.%I (msg_id, read_ct, enqueued_at, vt, message, headers)
    select msg_id, read_ct, enqueued_at, vt, message, headers from moved
    returning msg_id
    $sql$,
    pgmq._queue_table(queue_name, 'q'),
    pgmq._queue_table(queue_name, 'a')
  ) using msg_ids;
end
$$;

-- public: archives one message; true when it existed.
create function pgmq.archive(queue_name text, msg_id bigint)
returns boolean
language sql
set search_path = pg_catalog, pg_temp
as $$
  select count(*) > 0 from pgmq.archive(queue_name, array[msg_id])
$$;

-- public: sets a message's visibility to `vt` seconds from now (0 makes it
-- visible again) and returns it; nothing when the message does not exist.
create function pgmq.set_vt(
  queue_name text, -- the queue
  msg_id bigint, -- the message
  vt integer -- seconds from now until the message is visible
)
returns setof pgmq.message_record
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  return query execute format(
    $sql$
    update pgmq.%I q
    set vt = clock_timestamp() + make_interval(secs => $2)
    where q.msg_id = $1
    returning q.msg_id, q.read_ct, q.enqueued_at, q.vt, q.message, q.headers
    $sql$,
    pgmq._queue_table(queue_name, 'q')
  ) using msg_id, vt;
end
$$;

------------------------------------------------------------------------------
-- Metrics
------------------------------------------------------------------------------

-- public: one queue's figures. Ages are whole seconds since the newest and the
-- oldest enqueued_at (null when empty); total_messages counts every message
-- ever sent (the id sequence), deleted or not.
create function pgmq.metrics(
  queue_name text -- the queue
)
returns pgmq.metrics_result
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  qtable text := pgmq._queue_table(queue_name, 'q');
  result pgmq.metrics_result;
begin
  execute format(
    $sql$
    select
      $1,
      count(*),
      extract(epoch from now() - max(q.enqueued_at))::integer,
      extract(epoch from now() - min(q.enqueued_at))::integer,
      (select case when s.is_called then s.last_value else 0 end from pgmq.%I s),
      now(),
      count(*) filter (where q.vt <= now())
    from pgmq.%I q
    $sql$,
    qtable || '_msg_id_seq',
    qtable
  ) into result using queue_name;
  return result;
end
$$;

-- public: metrics() of every queue in pgmq.meta.
create function pgmq.metrics_all()
returns setof pgmq.metrics_result
language sql
set search_path = pg_catalog, pg_temp
as $$
  select m.*
  from pgmq.meta q
  cross join lateral pgmq.metrics(q.queue_name) m
  order by q.queue_name
$$;

------------------------------------------------------------------------------
-- Privileges
------------------------------------------------------------------------------

-- As upstream: pg_monitor may read every pgmq table, including queues made later.
grant usage on schema pgmq to pg_monitor;
grant select on all tables in schema pgmq to pg_monitor;
grant select on all sequences in schema pgmq to pg_monitor;
alter default privileges in schema pgmq grant select on tables to pg_monitor;
alter default privileges in schema pgmq grant select on sequences to pg_monitor;

-- Supabase's Queues integration gives service_role full use of pgmq tables;
-- the shim does the same where that role exists, for queues later created by
-- the role installing the extension (the default privileges are per creator).
-- The functions run as the caller, so these grants are what service_role needs.
do $$
begin
  if exists (select from pg_catalog.pg_roles where rolname = 'service_role') then
    grant usage on schema pgmq to service_role;
    grant select on pgmq.meta to service_role;
    alter default privileges in schema pgmq
      grant select, insert, update, delete on tables to service_role;
    alter default privileges in schema pgmq grant usage, select on sequences to service_role;
  end if;
end
$$;
