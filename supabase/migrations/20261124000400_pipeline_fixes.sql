-- autoembed: fixes to the pipeline of 20261124000200, found by its first
-- integration tests (tests/pipeline/, tests/worker/). Intent:
--
-- * util._try_content: reads a row's text through its content function and
--   returns the error instead of raising it, so one row whose function raises
--   does not fail the read of a whole batch (I5). The core uses it only as
--   the fallback after the plain, set-based read failed.
-- * util._embedding_request_done took the table lock of process_embeddings
--   after deleting its lease (a lock upgrade): two calls finishing at the
--   same moment deadlocked, one lease stayed until its deadline and the push
--   drain paused. It now takes the lock first.
-- * util.retry_failed() without a table raised 'record "rel" is not assigned
--   yet' whenever there was something to re-queue.

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
revoke all on function util._try_content(text, anyelement) from public, anon, authenticated;

-- internal: called by the embed function when a call finishes: ends its
-- lease and, if there is more work, starts the next calls.
create or replace function util._embedding_request_done(
  lease bigint,
  batch_size int,
  max_requests int,
  timeout_milliseconds int
)
returns int
language plpgsql
set search_path = ''
as $$
begin
  -- The lock process_embeddings takes, taken before the delete: taking it
  -- after (a lock upgrade) deadlocks two calls finishing at the same time.
  lock table util.embedding_requests in share row exclusive mode;
  delete from util.embedding_requests r where r.id = lease;
  return util.process_embeddings(batch_size, max_requests, timeout_milliseconds);
end
$$;

-- public: puts dead-lettered jobs (archived after max attempts) back on the
-- queue with a fresh attempt count, optionally for one table only. Returns
-- how many.
create or replace function util.retry_failed(target_table regclass default null)
returns bigint
language plpgsql
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
