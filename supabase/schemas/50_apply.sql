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

-- internal: records failed attempts and reschedules them in one call.
-- Retryable failures become visible again after an exponential backoff
-- (or the provider's Retry-After, whichever is longer); permanent ones and
-- those at max_attempts are archived (dead-lettered). `failures` is a JSON
-- array of {job_id, target_id, table_name, row_id, error, retryable, retry_after}
-- (retry_after in seconds, optional).
create or replace function util._record_failures(failures jsonb)
returns table (job_id bigint, dead_lettered boolean, retry_in_seconds int)
language plpgsql
set search_path = ''
as $$
declare
  max_attempts int := util._setting('max_attempts')::int;
  base int := util._setting('backoff_base_seconds')::int;
  cap int := util._setting('backoff_max_seconds')::int;
begin
  -- For plpgsql_check only (a no-op at run time): the temp table below, as it is created.
  perform 'PRAGMA:TABLE: _autoembed_failed (job_id bigint, target_id int, table_name text, row_id text, error text, retryable boolean, retry_after int, attempt int, dead boolean, delay int)';
  create temp table if not exists _autoembed_failed (
    job_id bigint, target_id int, table_name text, row_id text, error text,
    retryable boolean, retry_after int, attempt int, dead boolean, delay int
  ) on commit drop;
  truncate _autoembed_failed;
  insert into _autoembed_failed
  select f.job_id, f.target_id, f.table_name, f.row_id, f.error, f.retryable, f.retry_after,
         coalesce(q.read_ct, 1),
         (not f.retryable) or coalesce(q.read_ct, 1) >= max_attempts,
         least(cap, greatest(coalesce(f.retry_after, 0),
               (base * power(2, greatest(coalesce(q.read_ct, 1) - 1, 0)) * (0.75 + random() * 0.5))::int))
    from jsonb_to_recordset(failures) as f(job_id bigint, target_id int, table_name text, row_id text,
                                          error text, retryable boolean, retry_after int)
    left join pgmq.q_embedding_jobs q on q.msg_id = f.job_id;

  insert into util.embedding_errors (job_id, target_id, table_name, row_id, attempt, retryable, dead_lettered, error)
  select x.job_id, x.target_id, x.table_name, x.row_id, x.attempt, x.retryable, x.dead, x.error
    from _autoembed_failed x;

  perform pgmq.archive('embedding_jobs', array(select x.job_id from _autoembed_failed x where x.dead));
  perform pgmq.set_vt('embedding_jobs', x.job_id, x.delay) from _autoembed_failed x where not x.dead;

  return query select x.job_id, x.dead, case when x.dead then null else x.delay end from _autoembed_failed x;
end
$$;

-- public: puts dead-lettered jobs (archived after max attempts) back on the
-- queue with a fresh attempt count, optionally for one table only. Returns
-- how many. Runs as its owner, so service_role may call it.
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
  select array_agg(message) into moved from taken;
  if moved is null then
    return 0;
  end if;
  perform pgmq.send_batch('embedding_jobs', moved);
  perform util._notify_jobs();
  return pg_catalog.cardinality(moved);
end
$$;
