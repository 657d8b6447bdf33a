-- autoembed: reliability fixes, from the fault-injection suite
-- (tests/reliability/). Intent:
--
-- * A content function that raises for a row must never fail the user's
--   write (I5). The UPDATE paths of util.queue_embeddings (row and statement
--   level) and util.clear_column compared the row's old and new text by
--   calling the content function bare, so an UPDATE touching such a row (even
--   one meant to repair it) failed with the function's error, and a bulk
--   UPDATE failed for every row because of one. Now such a row counts as
--   changed: its job is enqueued and fails on its own, with the error in
--   util.embedding_errors, like any poison row.
--
-- * util.embedding_status counted rows whose text is only whitespace as
--   "missing", forever: the core never embeds blank text (nor NULL or '').
--   Missing now means a row with non-blank text and no embedding.
--
-- clear_column here also carries the change of 20261125000100 (a clear
-- error without a column or with an unknown one); a later change to it must
-- start from this version.

-- util.queue_embeddings: the change described above is made in 20261125000300_performance.sql,
-- which declares the function once with every change of these migrations.


-- public trigger (BEFORE UPDATE, row level): sets the embedding column to
-- NULL when, and only when, the text to embed changed, so searches never see
-- an embedding of old text. Arguments: embedding column name, and optionally
-- the content function (otherwise taken from the table's registration, or,
-- failing that, any change outside the embedding column counts).
create or replace function util.clear_column()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  clear_column name = tg_argv[0];
  content_function text = case when tg_nargs > 1 then tg_argv[1] end;
  call_fn text;
  changed boolean;
begin
  if tg_level <> 'ROW' or tg_when <> 'BEFORE' or tg_op <> 'UPDATE' then
    raise exception 'autoembed: util.clear_column must be a BEFORE UPDATE ... FOR EACH ROW trigger';
  end if;
  if tg_nargs < 1 or clear_column = '' then
    raise exception 'autoembed: util.clear_column needs the embedding column as its argument'
      using hint = 'execute function util.clear_column(''embedding'')';
  end if;
  if content_function is not null then
    select format('%I.%I', t.content_function_schema, t.content_function_name) into call_fn
      from util._target_for_trigger(tg_relid, content_function, clear_column) t;
  else
    select format('%I.%I', t.content_function_schema, t.content_function_name) into call_fn
      from util.embedding_targets t
     where t.table_oid = tg_relid and t.embedding_column = clear_column;
  end if;
  if call_fn is not null then
    begin
      execute format('select %1$s($1) is distinct from %1$s($2)', call_fn) into changed using old, new;
    exception when others then
      -- No text can be built for the row: its embedding cannot be current,
      -- and the user's update must not fail because of it.
      changed := true;
    end;
  else
    if not pg_catalog.to_jsonb(new) ? clear_column::text then
      raise exception 'autoembed: util.clear_column(%): % has no such column', clear_column, tg_relid::regclass
        using hint = 'Name the embedding column, e.g. util.clear_column(''embedding'').';
    end if;
    changed := (pg_catalog.to_jsonb(new) - clear_column::text) is distinct from (pg_catalog.to_jsonb(old) - clear_column::text);
  end if;
  if changed then
    new := pg_catalog.jsonb_populate_record(new, jsonb_build_object(clear_column, null));
  end if;
  return new;
end
$$;


-- internal: per-target figures behind util.embedding_status. Security
-- definer, as 20261125000100 made it. Text that is only whitespace counts as
-- no text, as in the core, which never embeds it.
create or replace function util._embedding_status()
returns table (
  schema_name text,
  table_name text,
  embedding_column text,
  model text,
  dimensions int,
  total_rows bigint,
  embedded bigint,
  missing bigint,
  stale bigint,
  models jsonb,
  queued bigint,
  in_flight bigint,
  oldest_queued_age interval,
  dead_lettered bigint,
  last_error text,
  last_error_at timestamptz
)
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  t record;
begin
  for t in select c.* from util._target_config c order by c.schema_name, c.table_name, c.embedding_column loop
    schema_name := t.schema_name;
    table_name := t.table_name;
    embedding_column := t.embedding_column;
    model := t.model;
    dimensions := t.dimensions;
    begin
      execute format(
        'select count(*),
                count(*) filter (where r.%2$s is not null),
                count(*) filter (where r.%2$s is null and coalesce(x.content, '''') !~ ''^[[:space:]]*$''),
                count(*) filter (where r.%2$s is not null and (f.row_id is null or f.model <> $2
                                   or f.content_hash <> util._content_hash(x.content)))
           from %1$s r
           cross join lateral (select %3$s(r) as content) x
           left join util.embedding_fingerprints f on f.target_id = $1 and f.row_id = r.%4$s::text',
        t.table_sql, t.embedding_sql, t.content_function_sql, t.pk_sql)
        into total_rows, embedded, missing, stale using t.id, t.model;
    exception when others then
      -- A content function that raises for some row must not take status
      -- down: count without it (missing then includes rows without text,
      -- stale covers model changes only).
      execute format(
        'select count(*),
                count(*) filter (where r.%2$s is not null),
                count(*) filter (where r.%2$s is null),
                count(*) filter (where r.%2$s is not null and (f.row_id is null or f.model <> $2))
           from %1$s r
           left join util.embedding_fingerprints f on f.target_id = $1 and f.row_id = r.%3$s::text',
        t.table_sql, t.embedding_sql, t.pk_sql)
        into total_rows, embedded, missing, stale using t.id, t.model;
    end;
    select coalesce(jsonb_object_agg(m.model, m.n), '{}') into models
      from (select f.model, count(*) as n from util.embedding_fingerprints f
             where f.target_id = t.id group by f.model) m;
    select count(*), count(*) filter (where q.read_ct > 0 and q.vt > now()), now() - min(q.enqueued_at)
      into queued, in_flight, oldest_queued_age
      from pgmq.q_embedding_jobs q
     where q.message ->> 'schema' = t.schema_name and q.message ->> 'table' = t.table_name
       and q.message ->> 'embeddingColumn' = t.embedding_column;
    select count(*) into dead_lettered
      from pgmq.a_embedding_jobs a
     where a.message ->> 'schema' = t.schema_name and a.message ->> 'table' = t.table_name
       and a.message ->> 'embeddingColumn' = t.embedding_column;
    select e.error, e.created_at into last_error, last_error_at
      from util.embedding_errors e where e.target_id = t.id order by e.created_at desc, e.id desc limit 1;
    return next;
  end loop;
end
$$;


-- Privileges as the migrations before left them (create or replace keeps
-- grants; this is for functions created since).
revoke all on all functions in schema util from public, anon, authenticated;
