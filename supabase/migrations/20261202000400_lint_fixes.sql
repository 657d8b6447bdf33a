-- autoembed: `supabase db lint` (plpgsql_check) finds nothing in util.
-- Two functions are re-declared from their latest definitions, behaviour unchanged:
--   util._record_failures  works in a temp table it creates at run time, which a
--                          static check cannot see: a plpgsql_check pragma declares
--                          it. The pragma is a plain string literal, so nothing
--                          here needs plpgsql_check installed to run.
--   util._invalid_keys     its empty-array default is typed, not cast from text.

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

revoke all on all functions in schema util from public, anon, authenticated;
