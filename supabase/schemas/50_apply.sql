-- autoembed schema 50: helpers the processing core
-- (supabase/functions/_shared/) calls while it applies a batch, one round
-- trip each: the targets' configuration, the text hash, fallbacks for rows
-- and ids that fail a set-based read, and the bookkeeping of failures
-- (retry with backoff, dead letters) with its inverse, util.retry_failed.

-- internal: the configuration the core needs for the targets a batch names,
-- identifiers already quoted for dynamic SQL. Retired targets are gone;
-- shadow targets are listed with the live target they belong to.
create or replace view util._target_config as
select t.id,
       n.nspname::text as schema_name,
       c.relname::text as table_name,
       t.embedding_column::text as embedding_column,
       t.content_function,
       t.model,
       t.dimensions,
       t.table_oid::text as table_sql,
       pg_catalog.quote_ident(t.pk_column) as pk_sql,
       pg_catalog.format_type(pk.atttypid, pk.atttypmod) as pk_type_sql,
       pg_catalog.quote_ident(emb.attname) as embedding_sql,
       pg_catalog.format_type(emb.atttypid, emb.atttypmod) as embedding_type_sql,
       pg_catalog.format('%I.%I', t.content_function_schema, t.content_function_name) as content_function_sql,
       t.shadow_of,
       -- chunked targets (null for whole-row ones): the side table, its
       -- settings, and what the row fingerprints hash besides the text
       t.destination::text as destination_sql,
       t.chunk_size,
       t.chunk_overlap,
       t.splitter,
       case when t.destination is not null then util._chunking_key(t) end as chunking_key
  from util.embedding_targets t
  join pg_catalog.pg_class c on c.oid = t.table_oid
  join pg_catalog.pg_namespace n on n.oid = c.relnamespace
  join pg_catalog.pg_attribute pk on pk.attrelid = t.table_oid and pk.attname = t.pk_column
  -- the vectors: the table's embedding column, or a chunked target's destination's
  join pg_catalog.pg_attribute emb
    on emb.attrelid = coalesce(t.destination, t.table_oid)
   and emb.attname = case when t.destination is null then t.embedding_column else 'embedding' end
 where t.retired_at is null;

-- internal: the hash the fingerprints and the compare-and-set use.
create or replace function util._content_hash(content text)
returns bytea
language sql
immutable
parallel safe
set search_path = ''
as $$ select pg_catalog.sha256(pg_catalog.convert_to(coalesce(content, ''), 'UTF8')) $$;

-- internal: the text of `source_row` by `content_function` (a name quoted by
-- util._target_config, never taken from a job), or the error it raised.
create or replace function util._try_content(content_function text, source_row anyelement, out content text, out error text)
language plpgsql
stable
set search_path = ''
as $$
begin
  execute pg_catalog.format('select %s($1)', content_function) into content using source_row;
exception when others then
  error := sqlerrm;
end
$$;

-- internal: which of `ids` (a JSON array of strings) are not values of the
-- primary key type of target `target_id` (AE002 for an unknown target).
create or replace function util._invalid_keys(target_id int, ids jsonb)
returns text[]
language plpgsql
stable
set search_path = ''
as $$
declare
  key_type text;
  id text;
  invalid text[] := array[]::text[];
begin
  select pg_catalog.format_type(a.atttypid, a.atttypmod) into key_type
    from util.embedding_targets t
    join pg_catalog.pg_attribute a on a.attrelid = t.table_oid and a.attname = t.pk_column
   where t.id = target_id;
  if key_type is null then
    raise exception 'autoembed: no target with id %', target_id
      using errcode = 'AE002';
  end if;
  for id in select pg_catalog.jsonb_array_elements_text(ids) loop
    begin
      -- the id is bound as a literal; the type comes from the catalog
      execute pg_catalog.format('select %L::%s', id, key_type);
    exception when others then
      invalid := invalid || id;
    end;
  end loop;
  return invalid;
end
$$;

-- internal: how many rows a queue message asks for. A statement-level
-- trigger or a sweep packs up to 100 row ids into one message
-- (`{"ids": [...], ...}`, `{"id": ...}` for one row); a row-level trigger
-- writes one (`{"id": ...}`).
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

-- internal: claims the oldest visible messages of the embedding_jobs queue
-- for `vt_seconds`, as pgmq.read does (skip locked, read_ct + 1), but sized
-- by rows rather than messages: messages are taken in queue order while
-- their rows add up to at most `max_rows`. A first message with more rows
-- than that is cut: the claim keeps its first max_rows ids, the rest go back
-- to the queue as a message of their own, visible at once. `conditional` as
-- in pgmq.read: only messages containing it; '{}' or null for all. The
-- cursor locks one message at a time, as it takes it, so concurrent claims
-- skip only what this one takes (locking a whole candidate slice would make
-- them find the queue empty while it holds more than it claims).
create or replace function util._read_jobs(vt_seconds int, max_rows int, conditional jsonb default '{}')
returns table (msg_id bigint, read_ct int, message jsonb)
language plpgsql
set search_path = ''
as $$
declare
  candidates cursor for
    -- util._job_rows, inline (a function call per message costs more than the rest)
    select q.msg_id,
           case when pg_catalog.jsonb_typeof(q.message -> 'ids') = 'array'
                then greatest(pg_catalog.jsonb_array_length(q.message -> 'ids'), 1)
                else 1 end as n
      from pgmq.q_embedding_jobs q
     where q.vt <= pg_catalog.clock_timestamp()
       and (conditional is null or conditional = '{}'::jsonb or q.message @> conditional)
     order by q.msg_id
       for update skip locked;
  candidate record;
  taken bigint[] := '{}'::bigint[];
  total int := 0;
  cut bigint;
begin
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

-- internal: records failed attempts and reschedules them in one call.
-- Retryable failures become visible again after an exponential backoff
-- (or the provider's Retry-After, whichever is longer); permanent ones and
-- those at max_attempts are archived (dead-lettered). `failures` is a JSON
-- array of {job_id, target_id, table_name, row_id, error, retryable,
-- retry_after, handed_back} (retry_after in seconds, optional).
--
-- A packed message (`ids`, util._job_rows) is settled row by row: the core
-- sends a record for each of its rows that is not done, a failure or
-- `handed_back` (unstarted: no error, no backoff). Dead rows leave it as
-- messages of their own (with its read count), archived, so dead letters
-- and util.retry_failed stay per row; the rest stay in it, rescheduled by
-- their longest backoff; rows not listed were done and leave it. A message
-- left with no rows is deleted. All in this one transaction. Returns a row
-- per failure: row_id names the row of a packed message (null otherwise).
create or replace function util._record_failures(failures jsonb)
returns table (job_id bigint, row_id text, dead_lettered boolean, retry_in_seconds int)
language plpgsql
set search_path = ''
as $$
declare
  max_attempts int := util._setting('max_attempts')::int;
  base int := util._setting('backoff_base_seconds')::int;
  cap int := util._setting('backoff_max_seconds')::int;
  dead_row record;
  split_id bigint;
begin
  -- For plpgsql_check only (a no-op at run time): the temp table below, as it is created.
  perform 'PRAGMA:TABLE: _autoembed_failed (job_id bigint, target_id int, table_name text, row_id text, error text, retryable boolean, retry_after int, attempt int, dead boolean, delay int, handed_back boolean, packed boolean, dead_job_id bigint)';
  create temp table if not exists _autoembed_failed (
    job_id bigint, target_id int, table_name text, row_id text, error text,
    retryable boolean, retry_after int, attempt int, dead boolean, delay int,
    handed_back boolean, packed boolean, dead_job_id bigint
  ) on commit drop;
  truncate _autoembed_failed;
  insert into _autoembed_failed
  select f.job_id, f.target_id, f.table_name, f.row_id, f.error, f.retryable, f.retry_after,
         coalesce(q.read_ct, 1),
         not coalesce(f.handed_back, false)
           and ((not f.retryable) or coalesce(q.read_ct, 1) >= max_attempts),
         case when coalesce(f.handed_back, false) then 0
              else least(cap, greatest(coalesce(f.retry_after, 0),
                   (base * power(2, greatest(coalesce(q.read_ct, 1) - 1, 0)) * (0.75 + random() * 0.5))::int))
         end,
         coalesce(f.handed_back, false),
         f.row_id is not null and coalesce(pg_catalog.jsonb_typeof(q.message -> 'ids') = 'array', false),
         null
    from jsonb_to_recordset(failures) as f(job_id bigint, target_id int, table_name text, row_id text,
                                          error text, retryable boolean, retry_after int, handed_back boolean)
    left join pgmq.q_embedding_jobs q on q.msg_id = f.job_id;

  -- A packed message's dead rows: each a message of its own, to archive.
  for dead_row in select x.job_id, x.row_id from _autoembed_failed x where x.packed and x.dead loop
    split_id := null;
    insert into pgmq.q_embedding_jobs (vt, read_ct, message)
    select pg_catalog.clock_timestamp(), q.read_ct,
           (q.message - 'ids') || pg_catalog.jsonb_build_object('id', e.value)
      from pgmq.q_embedding_jobs q
     cross join lateral pg_catalog.jsonb_array_elements(q.message -> 'ids') e
     where q.msg_id = dead_row.job_id and (e.value #>> '{}') = dead_row.row_id
     limit 1
    returning msg_id into split_id;
    update _autoembed_failed x set dead_job_id = split_id
     where x.job_id = dead_row.job_id and x.row_id = dead_row.row_id;
  end loop;

  insert into util.embedding_errors (job_id, target_id, table_name, row_id, attempt, retryable, dead_lettered, error)
  select coalesce(x.dead_job_id, x.job_id), x.target_id, x.table_name, x.row_id, x.attempt, x.retryable, x.dead, x.error
    from _autoembed_failed x
   where not x.handed_back;

  perform pgmq.archive('embedding_jobs', array(
    select coalesce(x.dead_job_id, x.job_id) from _autoembed_failed x
     where x.dead and (not x.packed or x.dead_job_id is not null)));
  perform pgmq.set_vt('embedding_jobs', x.job_id, x.delay) from _autoembed_failed x
   where not x.dead and not x.packed;

  -- Packed messages keep the rows still to do, or go.
  with kept as (
    select q.msg_id,
           (select pg_catalog.jsonb_agg(e.value order by e.ordinality)
              from pg_catalog.jsonb_array_elements(q.message -> 'ids') with ordinality e
             where (e.value #>> '{}') in (select x.row_id from _autoembed_failed x
                                           where x.job_id = q.msg_id and x.packed and not x.dead)) as ids,
           (select max(x.delay) from _autoembed_failed x
             where x.job_id = q.msg_id and x.packed and not x.dead) as delay
      from pgmq.q_embedding_jobs q
     where q.msg_id in (select x.job_id from _autoembed_failed x where x.packed)
  ), emptied as (
    delete from pgmq.q_embedding_jobs q using kept k where q.msg_id = k.msg_id and k.ids is null
  )
  update pgmq.q_embedding_jobs q
     set message = pg_catalog.jsonb_set(q.message, '{ids}', k.ids),
         vt = pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => k.delay)
    from kept k
   where q.msg_id = k.msg_id and k.ids is not null;

  return query select x.job_id, case when x.packed then x.row_id end, x.dead,
                      case when x.dead then null else x.delay end
    from _autoembed_failed x where not x.handed_back;
end
$$;

-- public: puts dead-lettered jobs (archived after max attempts) back on the
-- queue with a fresh attempt count, optionally for one table only. Returns
-- how many rows. Runs as its owner, so service_role may call it.
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
