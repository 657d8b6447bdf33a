-- autoembed schema 15: the jobs. The one SQL module that builds, claims,
-- settles and counts the queue's messages; nothing else names pgmq's
-- tables. A message names one target (schema, table, content function,
-- embedding column) and one row (`{"id": ...}`) or up to pack_size rows of
-- one statement or sweep step (`{"ids": [...]}`).
--
-- Attempts are per row. A message's read_ct is the attempts each of its
-- rows has had: a claim adds one, and settling keeps that true. Rows that
-- failed leave their message as messages of their own, with that count and
-- their own backoff (or as dead letters); rows left unstarted, or stopped by
-- a provider-wide failure, stay and get their attempt back; done rows go.
--
-- Recovery: a provider that fails as a whole (unreachable, 5xx, 429,
-- timeouts on every call of a batch) opens its circuit
-- (util.provider_circuits). Claims skip the jobs of its targets until it is
-- due; the first claim then takes a small probe, and the first success
-- closes the circuit and wakes the workers. A provider outage spends no
-- row's attempts, however long it lasts.

-- pgmq.create is idempotent: it creates pgmq.q_embedding_jobs and
-- pgmq.a_embedding_jobs (the dead letters) when they are missing.
select pgmq.create('embedding_jobs');

-- The queue: the pipeline and service_role only (and pg_monitor, which
-- pgmq lets read every queue), its tables and the sequence of its message
-- ids. Skipped with a notice where this role does not own them.
do $$
declare
  msg_ids text := pg_catalog.pg_get_serial_sequence('pgmq.q_embedding_jobs', 'msg_id');
begin
  revoke all on pgmq.q_embedding_jobs, pgmq.a_embedding_jobs from public, anon, authenticated;
  if msg_ids is not null then
    execute pg_catalog.format('revoke all on sequence %s from public, anon, authenticated', msg_ids);
  end if;
exception when insufficient_privilege then
  raise notice 'autoembed: privileges on the embedding_jobs queue tables left as they are (%)', sqlerrm;
end
$$;

insert into util.settings (name, value, description) values
  ('pack_size', '100',
   'row ids one queue message carries (1 to 1000); generated trigger functions take a new value when their table is attached again'),
  ('circuit_base_seconds', '2', 'first pause of a provider whose calls all fail; doubles with each failed probe'),
  ('circuit_max_seconds', '30', 'longest pause between probes of a failing provider'),
  ('probe_rows', '10', 'rows a probe of a failing provider carries')
on conflict (name) do update set description = excluded.description;

-------------------------------------------------------------------------------
-- Circuits (public to read through util.embedding_status): one row per
-- provider whose calls all failed; no row: closed.
-------------------------------------------------------------------------------

create table if not exists util.provider_circuits (
  provider text primary key,
  -- when the provider first failed as a whole, and why (no input text in it)
  opened_at timestamptz not null default now(),
  reason text not null,
  -- failed batches and probes in a row: the pause doubles with each
  failures int not null default 1,
  -- claims skip the provider's jobs until then; the first claim after it
  -- takes a probe and moves it on by its visibility timeout
  retry_at timestamptz not null
);

-- internal: the provider that serves `model`, by the registry
-- (util.embedding_models, 15_models): the offline lexical embedder for
-- local-* models, the OpenAI-compatible endpoint for any other, known or not.
create or replace function util._provider_of(model text)
returns text
language sql
stable
set search_path = ''
as $$
  select coalesce((select m.provider from util.embedding_models m
                    where m.model = util._model_registry_key(_provider_of.model)), 'openai')
$$;

-- internal: seconds to wait before attempt `attempt` + 1, the one capped
-- exponential curve of the pipeline's SQL: `base` doubling per attempt,
-- jittered between 75% and 125%, at most `cap`, never less than what the
-- provider asked for (`retry_after`). Rows' retries, circuits' probes and
-- calls that ended unreported all wait by it.
create or replace function util._backoff_seconds(attempt int, base int, cap int, retry_after int default 0)
returns int
language sql
volatile
set search_path = ''
as $$
  select least(cap, greatest(coalesce(retry_after, 0),
           (base * power(2, greatest(coalesce(attempt, 1) - 1, 0)) * (0.75 + random() * 0.5))::int))
$$;

-- internal: how many rows a queue message asks for (`ids`, or one).
-- Anything else (a malformed message) counts as one: the core refuses it.
create or replace function util._job_rows(message jsonb)
returns int
language sql
immutable
set search_path = ''
as $$
  select case when pg_catalog.jsonb_typeof(message -> 'ids') = 'array'
              then greatest(pg_catalog.jsonb_array_length(message -> 'ids'), 1)
              else 1 end
$$;

-- internal: the statement that enqueues the rows `ids_query` returns (a
-- query with one column `id`, the key) as messages of pack_size rows each:
-- `header_sql` is the expression of the message's target part (a variable
-- or a parameter such as $1). Triggers and sweeps run it (the triggers
-- util.enable_embeddings generates hold it as static SQL). It inserts into
-- the queue table itself, the message visible at once as pgmq.send writes
-- it: pgmq.send plans its insert again on every call, which was most of
-- what a trigger added to a one-row insert (bench/RESULTS.md).
create or replace function util._enqueue_sql(ids_query text, header_sql text)
returns text
language sql
stable
set search_path = ''
as $$
  select pg_catalog.format(
    'insert into pgmq.q_embedding_jobs (vt, message)
     select pg_catalog.clock_timestamp(), %1$s || case when pg_catalog.jsonb_array_length(p.ids) = 1
                       then pg_catalog.jsonb_build_object(''id'', p.ids -> 0)
                       else pg_catalog.jsonb_build_object(''ids'', p.ids) end
       from (select pg_catalog.jsonb_agg(c.id) as ids
               from (select s.id, (pg_catalog.row_number() over () - 1) / %2$s as pack
                       from (%3$s) s) c
              group by c.pack) p',
    header_sql,
    -- the setting read inline: util._setting's call was 4.5 of this function's 11 us,
    -- paid once per statement by the generic trigger
    least(1000, greatest(1, coalesce(
      (select s.value::int from util.settings s where s.name = 'pack_size'), 100))),
    ids_query)
$$;

-- internal: the 'schema.table' names of the targets whose provider's
-- circuit is open (claims skip their jobs), and the providers due for a
-- probe, which this call moves on by `vt_seconds` so that one claim alone
-- probes each.
create or replace function util._circuit_gate(vt_seconds int, out blocked text[], out probing text[])
language plpgsql
set search_path = ''
as $$
begin
  with due as (
    update util.provider_circuits c
       set retry_at = pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => vt_seconds)
     where c.retry_at <= pg_catalog.clock_timestamp()
    returning c.provider
  )
  select array(select d.provider from due d) into probing;
  select coalesce(pg_catalog.array_agg(pg_catalog.format('%s.%s', n.nspname, c.relname)), '{}')
    into blocked
    from util.embedding_targets t
    join pg_catalog.pg_class c on c.oid = t.table_oid
    join pg_catalog.pg_namespace n on n.oid = c.relnamespace
   where t.shadow_of is null and t.retired_at is null
     and util._provider_of(t.model) in (select p.provider from util.provider_circuits p
                                         where p.provider <> all (probing));
end
$$;

-- internal: claims the oldest visible messages of the embedding_jobs queue
-- for `vt_seconds`, as pgmq.read does (skip locked, read_ct + 1), but sized
-- by rows rather than messages: messages are taken in queue order while
-- their rows add up to at most `max_rows`. A first message with more rows
-- than that is cut: the claim keeps its first max_rows ids, the rest go back
-- to the queue as a message of their own, visible at once. `conditional` as
-- in pgmq.read: only messages containing it; '{}' or null for all. Jobs of a
-- target whose provider's circuit is open are skipped; a claim that finds a
-- circuit due takes at most probe_rows rows (the probe). The cursor locks
-- one message at a time, as it takes it, so concurrent claims skip only
-- what this one takes (locking a whole candidate slice would make them find
-- the queue empty while it holds more than it claims).
create or replace function util._read_jobs(vt_seconds int, max_rows int, conditional jsonb default '{}')
returns table (msg_id bigint, read_ct int, message jsonb)
language plpgsql
set search_path = ''
as $$
declare
  blocked text[] := '{}'::text[];
  probing text[] := '{}'::text[];
  candidates cursor for
    -- util._job_rows, inline (a function call per message costs more than the rest)
    select q.msg_id,
           case when pg_catalog.jsonb_typeof(q.message -> 'ids') = 'array'
                then greatest(pg_catalog.jsonb_array_length(q.message -> 'ids'), 1)
                else 1 end as n
      from pgmq.q_embedding_jobs q
     where q.vt <= pg_catalog.clock_timestamp()
       and (conditional is null or conditional = '{}'::jsonb or q.message @> conditional)
       and (pg_catalog.cardinality(blocked) = 0
            or pg_catalog.format('%s.%s', q.message ->> 'schema', q.message ->> 'table') <> all (blocked))
     order by q.msg_id
       for update skip locked;
  candidate record;
  taken bigint[] := '{}'::bigint[];
  total int := 0;
  cut bigint;
begin
  -- A closed circuit has no row: the common case costs one index probe.
  if exists (select from util.provider_circuits) then
    select g.blocked, g.probing into blocked, probing from util._circuit_gate(vt_seconds) g;
    if pg_catalog.cardinality(probing) > 0 then
      max_rows := least(max_rows, util._setting('probe_rows')::int);
    end if;
  end if;
  open candidates;
  loop
    fetch candidates into candidate;
    exit when not found;
    exit when total > 0 and total + candidate.n > max_rows;
    taken := taken || candidate.msg_id;
    total := total + candidate.n;
    if total > max_rows then
      cut := candidate.msg_id;
    end if;
    exit when total >= max_rows;
  end loop;
  close candidates;
  if cut is not null then
    insert into pgmq.q_embedding_jobs (vt, read_ct, message)
    select pg_catalog.clock_timestamp(), q.read_ct,
           q.message || pg_catalog.jsonb_build_object('ids',
             (select pg_catalog.jsonb_agg(e.value order by e.ordinality)
                from pg_catalog.jsonb_array_elements(q.message -> 'ids') with ordinality e
               where e.ordinality > max_rows))
      from pgmq.q_embedding_jobs q
     where q.msg_id = cut;
    update pgmq.q_embedding_jobs q
       set message = q.message || pg_catalog.jsonb_build_object('ids',
             (select pg_catalog.jsonb_agg(e.value order by e.ordinality)
                from pg_catalog.jsonb_array_elements(q.message -> 'ids') with ordinality e
               where e.ordinality <= max_rows))
     where q.msg_id = cut;
  end if;
  return query
  update pgmq.q_embedding_jobs q
     set vt = pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => vt_seconds),
         read_ct = q.read_ct + 1
   where q.msg_id = any (taken)
  returning q.msg_id, q.read_ct, q.message;
end
$$;

-- internal: settles what one batch did with the messages it claimed, in one
-- transaction:
--   `done`      messages every row of which is done: deleted;
--   `outcomes`  a JSON array of {job_id, row_id, kind, error, retryable,
--               retry_after, target_id, table_name, batch_id}, for the rows (row_id)
--               of messages that are not done, or for a whole message
--               (row_id null: a single-row message, or one refused whole).
--               kind 'failed': the row's own failure (its content function
--               raised, its text is over the limit, the provider rejected
--               it, or the provider failed while it answered others). It
--               costs the row an attempt: it is retried after
--               util._backoff_seconds, alone, or dead-lettered when
--               permanent or at max_attempts, and recorded in
--               util.embedding_errors. kind 'deferred': stopped by a
--               provider-wide failure; kind 'unstarted': the call ran out of
--               time or was shut down. Both give the attempt back and stay
--               visible at once (the circuit, not a backoff, holds deferred
--               rows back). kind 'parked': its texts wait in a batch of the
--               batch lane (55_batch_lane): its attempt back, hidden until
--               the batch ends (util._release_parked) or for
--               batch_park_seconds, marked "parked" with `batch_id`, the
--               batch it waits for (a packed message's parked rows leave it
--               as one parked message, waiting for the last of theirs).
--   `circuits`  a JSON array of {provider, ok, reason, retry_after}: ok
--               closes the provider's circuit (and wakes the workers), a
--               provider-wide failure opens it or, when it was open, doubles
--               its pause.
-- Returns one row per failed outcome: whether it was dead-lettered, and in
-- how many seconds it is retried otherwise.
create or replace function util._settle_jobs(done bigint[], outcomes jsonb, circuits jsonb default '[]')
returns table (job_id bigint, row_id text, dead_lettered boolean, retry_in_seconds int)
language plpgsql
set search_path = ''
as $$
declare
  max_attempts int;
  base int;
  cap int;
  closed int;
  park int;
  failed_row record;
  own bigint;
begin
  -- Rows parked on batches (55_batch_lane): those batches are locked first
  -- (FOR SHARE, against util._finish_batch's FOR UPDATE, and in its order:
  -- batch, then queue), so a batch that ends meanwhile either waits for
  -- this settle and then releases its rows, or ended before and its rows
  -- are not parked at all (below): none is left hidden.
  if coalesce(outcomes @> '[{"kind": "parked"}]', false) then
    perform from util.embedding_batches b
     where b.id in (select o.batch_id from pg_catalog.jsonb_to_recordset(outcomes) as o(kind text, batch_id bigint)
                     where o.kind = 'parked')
     order by b.id
       for share;
  end if;

  if pg_catalog.cardinality(done) > 0 then
    delete from pgmq.q_embedding_jobs q where q.msg_id = any (done);
  end if;

  -- The common case, a healthy provider with no circuit open, touches no table.
  if exists (select from util.provider_circuits)
     or coalesce(circuits @> '[{"ok": false}]', false) then
    with ok as (
      delete from util.provider_circuits p
       where p.provider in (select c.provider from pg_catalog.jsonb_to_recordset(circuits) as c(provider text, ok boolean)
                             where c.ok)
      returning 1
    )
    select count(*) into closed from ok;
    insert into util.provider_circuits as p (provider, reason, failures, retry_at)
    select c.provider, pg_catalog.left(c.reason, 500), coalesce(o.failures, 0) + 1,
           pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs =>
             util._backoff_seconds(coalesce(o.failures, 0) + 1, util._setting('circuit_base_seconds')::int,
                                   util._setting('circuit_max_seconds')::int, c.retry_after))
      from pg_catalog.jsonb_to_recordset(circuits) as c(provider text, ok boolean, reason text, retry_after int)
      left join util.provider_circuits o on o.provider = c.provider
     where not c.ok
    on conflict (provider) do update
       set reason = excluded.reason, failures = excluded.failures, retry_at = excluded.retry_at;
    -- The provider answers again: listening workers claim its backlog now.
    if closed > 0 then
      perform util._notify_jobs();
    end if;
  end if;

  if pg_catalog.jsonb_array_length(coalesce(outcomes, '[]')) = 0 then
    return;
  end if;
  max_attempts := util._setting('max_attempts')::int;
  base := util._setting('backoff_base_seconds')::int;
  cap := util._setting('backoff_max_seconds')::int;
  park := util._setting('batch_park_seconds')::int;

  -- For plpgsql_check only (a no-op at run time): the temp table below, as it is created.
  perform 'PRAGMA:TABLE: _autoembed_settled (job_id bigint, row_id text, kind text, error text, retryable boolean, retry_after int, target_id int, table_name text, attempt int, packed boolean, dead boolean, delay int, own_id bigint, batch_id bigint)';
  create temp table if not exists _autoembed_settled (
    job_id bigint, row_id text, kind text, error text, retryable boolean, retry_after int,
    target_id int, table_name text, attempt int, packed boolean, dead boolean, delay int, own_id bigint,
    batch_id bigint
  ) on commit drop;
  truncate _autoembed_settled;
  -- An outcome of a message that is gone and whose target is gone or
  -- retired (its table dropped, or detached, while the batch ran: its jobs
  -- went with it) is no one's to retry or read: it is dropped. A target id
  -- that no longer exists is recorded as none.
  insert into _autoembed_settled
  select o.job_id, o.row_id,
         -- parked on a batch that ended already: visible at once, as unstarted
         case when o.kind = 'parked'
                   and not exists (select from util.embedding_batches b
                                    where b.id = o.batch_id and b.state in ('staging', 'submitting', 'submitted'))
              then 'unstarted' else o.kind end,
         o.error, coalesce(o.retryable, true), o.retry_after,
         (select t.id from util.embedding_targets t where t.id = o.target_id), o.table_name,
         coalesce(q.read_ct, 1),
         o.row_id is not null and coalesce(pg_catalog.jsonb_typeof(q.message -> 'ids') = 'array', false),
         o.kind = 'failed' and (not coalesce(o.retryable, true) or coalesce(q.read_ct, 1) >= max_attempts),
         case when o.kind = 'failed'
              then util._backoff_seconds(coalesce(q.read_ct, 1), base, cap, o.retry_after)
              when o.kind = 'parked'
                   and exists (select from util.embedding_batches b
                                where b.id = o.batch_id and b.state in ('staging', 'submitting', 'submitted'))
              then park
              else 0 end,
         null, o.batch_id
    from pg_catalog.jsonb_to_recordset(outcomes) as o(job_id bigint, row_id text, kind text, error text,
                                                     retryable boolean, retry_after int,
                                                     target_id int, table_name text, batch_id bigint)
    left join pgmq.q_embedding_jobs q on q.msg_id = o.job_id
   where q.msg_id is not null or o.target_id is null
      or exists (select from util.embedding_targets t where t.id = o.target_id and t.retired_at is null);

  -- A packed message's failed rows leave it as messages of their own, with
  -- its attempts and their own backoff (or straight to the dead letters).
  -- A loop: failures are few, and each new message must be told apart
  -- from another message's copy of the same row.
  for failed_row in select x.job_id, x.row_id, x.delay, x.attempt from _autoembed_settled x
                     where x.packed and x.kind = 'failed' loop
    own := null;
    insert into pgmq.q_embedding_jobs (vt, read_ct, message)
    select pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => failed_row.delay),
           failed_row.attempt, (q.message - 'ids') || pg_catalog.jsonb_build_object('id', e.value)
      from pgmq.q_embedding_jobs q
     cross join lateral pg_catalog.jsonb_array_elements(q.message -> 'ids') e
     where q.msg_id = failed_row.job_id and (e.value #>> '{}') = failed_row.row_id
     limit 1
    returning msg_id into own;
    update _autoembed_settled x set own_id = own
     where x.job_id = failed_row.job_id and x.row_id = failed_row.row_id;
  end loop;

  insert into util.embedding_errors (job_id, target_id, table_name, row_id, attempt, retryable, dead_lettered, error)
  select coalesce(x.own_id, x.job_id), x.target_id, x.table_name, x.row_id, x.attempt, x.retryable, x.dead,
         coalesce(x.error, '')
    from _autoembed_settled x
   where x.kind = 'failed';

  -- Dead letters: whole messages, and packed rows now on their own.
  perform pgmq.archive('embedding_jobs', array(
    select coalesce(x.own_id, x.job_id) from _autoembed_settled x
     where x.dead and (not x.packed or x.own_id is not null)));
  -- A whole message that failed: retried after its backoff. One that was
  -- deferred or left unstarted: its attempt back, visible at once. One
  -- parked (its texts are in a batch, 55_batch_lane): its attempt back,
  -- hidden until its batch ends (which releases it) or batch_park_seconds.
  update pgmq.q_embedding_jobs q
     set vt = pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => x.delay),
         read_ct = case when x.kind = 'failed' then q.read_ct else greatest(q.read_ct - 1, 0) end,
         message = case when x.kind = 'parked'
                        then q.message || pg_catalog.jsonb_build_object('parked', coalesce(pg_catalog.to_jsonb(x.batch_id), 'true'))
                        else q.message end
    from _autoembed_settled x
   where q.msg_id = x.job_id and not x.packed and not x.dead;

  -- A packed message's parked rows leave it together, as one parked
  -- message with its attempts back and its enqueue time.
  if exists (select from _autoembed_settled x where x.packed and x.kind = 'parked') then
    insert into pgmq.q_embedding_jobs (vt, read_ct, enqueued_at, message)
    select pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => park),
           greatest(q.read_ct - 1, 0), q.enqueued_at,
           (q.message - 'ids') || pg_catalog.jsonb_build_object(
             'ids', (select pg_catalog.jsonb_agg(e.value order by e.ordinality)
                       from pg_catalog.jsonb_array_elements(q.message -> 'ids') with ordinality e
                      where (e.value #>> '{}') in (select x.row_id from _autoembed_settled x
                                                    where x.job_id = q.msg_id and x.packed
                                                      and x.kind = 'parked')),
             'parked', coalesce((select pg_catalog.to_jsonb(max(x.batch_id)) from _autoembed_settled x
                                  where x.job_id = q.msg_id and x.packed and x.kind = 'parked'), 'true'))
      from pgmq.q_embedding_jobs q
     where q.msg_id in (select x.job_id from _autoembed_settled x where x.packed and x.kind = 'parked');
  end if;

  -- Packed messages keep their deferred and unstarted rows, with the
  -- attempt back, visible at once; with none left they go.
  with kept as (
    select q.msg_id,
           (select pg_catalog.jsonb_agg(e.value order by e.ordinality)
              from pg_catalog.jsonb_array_elements(q.message -> 'ids') with ordinality e
             where (e.value #>> '{}') in (select x.row_id from _autoembed_settled x
                                           where x.job_id = q.msg_id and x.packed
                                             and x.kind not in ('failed', 'parked'))) as ids
      from pgmq.q_embedding_jobs q
     where q.msg_id in (select x.job_id from _autoembed_settled x where x.packed)
  ), emptied as (
    delete from pgmq.q_embedding_jobs q using kept k where q.msg_id = k.msg_id and k.ids is null
  )
  update pgmq.q_embedding_jobs q
     set message = pg_catalog.jsonb_set(q.message, '{ids}', k.ids),
         read_ct = greatest(q.read_ct - 1, 0),
         vt = pg_catalog.clock_timestamp()
    from kept k
   where q.msg_id = k.msg_id and k.ids is not null;

  return query select x.job_id, case when x.packed then x.row_id end, x.dead,
                      case when x.dead then null else x.delay end
    from _autoembed_settled x where x.kind = 'failed';
end
$$;

-- internal: makes messages visible again in `delay_seconds`: a batch a
-- lost database connection cut off (the worker gives the attempt back: the
-- database's outage is no row's failure), or a call that ended without
-- reporting (util._release_ended_leases keeps the attempt: a row that
-- crashes the function every time must still reach max_attempts).
create or replace function util._requeue_jobs(msg_ids bigint[], delay_seconds int, give_back_attempt boolean)
returns int
language sql
set search_path = ''
as $$
  with moved as (
    update pgmq.q_embedding_jobs q
       set vt = pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => delay_seconds),
           read_ct = case when give_back_attempt then greatest(q.read_ct - 1, 0) else q.read_ct end
     where q.msg_id = any (msg_ids)
       and q.vt > pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => delay_seconds)
    returning 1
  )
  select count(*)::int from moved
$$;

-- internal: what the queue holds for the target (schema, table, embedding
-- column), counted in rows: queued, claimed and not yet settled (in
-- flight), the oldest one's age, and the dead letters.
create or replace function util._queue_counts(
  schema_name text, table_name text, embedding_column text,
  out queued bigint, out in_flight bigint, out oldest_queued_age interval, out dead_lettered bigint)
language sql
stable
set search_path = ''
as $$
  select coalesce(sum(util._job_rows(q.message)), 0),
         coalesce(sum(util._job_rows(q.message)) filter (where q.read_ct > 0 and q.vt > now()), 0),
         now() - min(q.enqueued_at),
         (select coalesce(sum(util._job_rows(a.message)), 0)
            from pgmq.a_embedding_jobs a
           where a.message ->> 'schema' = schema_name and a.message ->> 'table' = table_name
             and a.message ->> 'embeddingColumn' = embedding_column)
    from pgmq.q_embedding_jobs q
   where q.message ->> 'schema' = schema_name and q.message ->> 'table' = table_name
     and q.message ->> 'embeddingColumn' = embedding_column
$$;

-- internal: what the queue holds for every target at once, in one pass
-- over the queue and one over the dead letters (util._queue_counts looks at
-- one target): rows queued, claimed and not yet settled (in flight), the
-- oldest one's enqueue time, and the dead-lettered rows, by the schema,
-- table and embedding column the messages name. util.embedding_status
-- reads it, so its cost is the queue's length, never the tables'. Parked
-- jobs (waiting for a batch) count in util._batch_figures instead.
create or replace function util._queue_figures()
returns table (schema_name text, table_name text, embedding_column text,
               queued bigint, in_flight bigint, oldest_enqueued_at timestamptz, dead_lettered bigint)
language sql
stable
set search_path = ''
as $$
  with live as (
    select q.message ->> 'schema' as schema_name, q.message ->> 'table' as table_name,
           q.message ->> 'embeddingColumn' as embedding_column,
           sum(util._job_rows(q.message))::bigint as queued,
           coalesce(sum(util._job_rows(q.message)) filter (where q.read_ct > 0 and q.vt > now()), 0)::bigint
             as in_flight,
           min(q.enqueued_at) as oldest_enqueued_at
      from pgmq.q_embedding_jobs q
     where not q.message ? 'parked'
     group by 1, 2, 3
  ), dead as (
    select a.message ->> 'schema' as schema_name, a.message ->> 'table' as table_name,
           a.message ->> 'embeddingColumn' as embedding_column,
           sum(util._job_rows(a.message))::bigint as dead_lettered
      from pgmq.a_embedding_jobs a
     group by 1, 2, 3
  )
  select coalesce(l.schema_name, d.schema_name), coalesce(l.table_name, d.table_name),
         coalesce(l.embedding_column, d.embedding_column),
         coalesce(l.queued, 0), coalesce(l.in_flight, 0), l.oldest_enqueued_at, coalesce(d.dead_lettered, 0)
    from live l
    full join dead d using (schema_name, table_name, embedding_column)
$$;

-- internal: the messages `done` as the settle of their batch is about to
-- delete them: the target each names, its rows and when it was enqueued
-- (the change's transaction), for the time-to-fresh figures (68).
create or replace function util._job_ages(done bigint[])
returns table (schema_name text, table_name text, embedding_column text, rows int, enqueued_at timestamptz)
language sql
stable
set search_path = ''
as $$
  select q.message ->> 'schema', q.message ->> 'table', q.message ->> 'embeddingColumn',
         util._job_rows(q.message), q.enqueued_at
    from pgmq.q_embedding_jobs q
   where q.msg_id = any (done)
$$;

-- internal: rows queued (the worker's backlog line), or, with
-- `first_messages`, rows of the first that many messages only: the sweeps'
-- "is the queue short" look, which must not count a long queue through.
-- Parked jobs (waiting for a batch) are not queued work.
create or replace function util._queued_rows(first_messages int default null)
returns bigint
language sql
stable
set search_path = ''
as $$
  select coalesce(sum(util._job_rows(q.message)), 0)::bigint
    from (select x.message from pgmq.q_embedding_jobs x where not x.message ? 'parked' limit first_messages) q
$$;

-- internal: drops the queued jobs (not the dead letters) of a target,
-- when it is detached.
create or replace function util._drop_jobs(schema_name text, table_name text, embedding_column text)
returns bigint
language sql
set search_path = ''
as $$
  with gone as (
    delete from pgmq.q_embedding_jobs q
     where q.message ->> 'schema' = schema_name and q.message ->> 'table' = table_name
       and q.message ->> 'embeddingColumn' = embedding_column
    returning q.message
  )
  select coalesce(sum(util._job_rows(g.message)), 0)::bigint from gone g
$$;

-- internal: drops every job of a target whose rows are gone (a truncated
-- table) or which is retired (its table, store or content function
-- dropped, 45_table_life): the queued ones, in flight or not, and the dead
-- letters, which could only ever name rows that are gone or a target that
-- is. Returns the rows dropped of each.
create or replace function util._forget_jobs(
  schema_name text, table_name text, embedding_column text,
  out queued bigint, out dead_lettered bigint)
language plpgsql
set search_path = ''
as $$
begin
  with gone as (
    delete from pgmq.q_embedding_jobs q
     where q.message ->> 'schema' = schema_name and q.message ->> 'table' = table_name
       and q.message ->> 'embeddingColumn' = embedding_column
    returning q.message
  )
  select coalesce(sum(util._job_rows(g.message)), 0)::bigint into queued from gone g;
  with gone as (
    delete from pgmq.a_embedding_jobs a
     where a.message ->> 'schema' = schema_name and a.message ->> 'table' = table_name
       and a.message ->> 'embeddingColumn' = embedding_column
    returning a.message
  )
  select coalesce(sum(util._job_rows(g.message)), 0)::bigint into dead_lettered from gone g;
end
$$;

-- internal: rewrites the jobs and dead letters that name table
-- `old_schema`.`old_table` to name `new_schema`.`new_table`, when the table
-- or its schema was renamed (45_table_life): a message names its table, so
-- without this its jobs would be refused. Messages in flight are rewritten
-- too; their claim settles them by id. Returns the rows rewritten.
create or replace function util._rename_jobs(old_schema text, old_table text, new_schema text, new_table text)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  queued bigint;
  dead bigint;
begin
  with moved as (
    update pgmq.q_embedding_jobs q
       set message = q.message || pg_catalog.jsonb_build_object('schema', new_schema, 'table', new_table)
     where q.message ->> 'schema' = old_schema and q.message ->> 'table' = old_table
    returning q.message
  )
  select coalesce(sum(util._job_rows(m.message)), 0)::bigint into queued from moved m;
  with moved as (
    update pgmq.a_embedding_jobs a
       set message = a.message || pg_catalog.jsonb_build_object('schema', new_schema, 'table', new_table)
     where a.message ->> 'schema' = old_schema and a.message ->> 'table' = old_table
    returning a.message
  )
  select coalesce(sum(util._job_rows(m.message)), 0)::bigint into dead from moved m;
  return queued + dead;
end
$$;

-- public: puts dead-lettered jobs back on the queue with a fresh attempt
-- count, optionally for one table only. Returns how many rows. Runs as its
-- owner, so service_role may call it.
create or replace function util.retry_failed(target_table regclass default null)
returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
  table_schema text;
  table_name text;
  moved jsonb[];
  moved_rows bigint;
begin
  if target_table is not null then
    select n.nspname, c.relname into table_schema, table_name
      from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where c.oid = target_table;
  end if;
  with taken as (
    delete from pgmq.a_embedding_jobs a
     where target_table is null
        or (a.message ->> 'schema' = table_schema and a.message ->> 'table' = table_name)
    returning a.message
  )
  select array_agg(message), sum(util._job_rows(message)) into moved, moved_rows from taken;
  if moved is null then
    return 0;
  end if;
  perform pgmq.send_batch('embedding_jobs', moved);
  perform util._notify_jobs();
  return moved_rows;
end
$$;
