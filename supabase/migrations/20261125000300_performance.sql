-- autoembed: performance, from the benchmarks (bench/, bench/RESULTS.md).
-- Intent:
--
-- * Cheaper writes for the user's statements. util.queue_embeddings enqueued
--   through pgmq.send / pgmq.send_batch. Those run their INSERT through
--   dynamic SQL behind a SQL-language overload, planned again on every call:
--   about 50 us per statement, most of what the trigger added to a
--   single-row INSERT (measured: 90-120 us of trigger per row before, about
--   35 us after). The trigger now makes the same insert into the queue table
--   itself (pgmq.q_embedding_jobs (vt, message), the columns every pgmq
--   release since 1.0 has, and what pgmq.send writes: the message, visible
--   at once), in one statement over the transition tables, and builds the
--   part of the message common to all rows once per statement. The jobs are
--   exactly those pgmq.send_batch made; the migrations already depend on the
--   queue table's columns (status, failures, disable).
--
-- queue_embeddings here also carries the changes of 20261125000100 (AFTER
-- only, DELETE/TRUNCATE no-ops) and 20261125000200 (a raising content
-- function counts as changed); a later change to it must start from this version.

-- public trigger: enqueues embedding jobs. Arguments: content function name,
-- embedding column name (as in the Supabase guide). Works as
--   * a row-level trigger (the guide's form): one message per row; on UPDATE
--     only when the content function's text changed;
--   * a statement-level trigger with transition tables named new_rows (and
--     old_rows for UPDATE), as util.enable_embeddings creates it: one
--     insert into the queue per statement, however many rows.
-- Must fire AFTER: as a BEFORE trigger its NULL result would cancel the
-- user's write. On DELETE and TRUNCATE it does nothing (nothing to embed).
create or replace function util.queue_embeddings()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  content_function text = tg_argv[0];
  embedding_column name = tg_argv[1];
  target util.embedding_targets;
  call_fn text;
  job jsonb;
  enqueued bigint;
  changed boolean;
begin
  if tg_when <> 'AFTER' then
    raise exception 'autoembed: util.queue_embeddings must be an AFTER trigger, not %', tg_when
      using detail = 'Its NULL result would cancel the insert or update of every row.',
            hint = 'create trigger ... after insert on ... for each row execute function util.queue_embeddings(''embedding_input'', ''embedding'');';
  end if;
  if tg_op not in ('INSERT', 'UPDATE') then
    return null;
  end if;
  -- The pipeline's own writes of embeddings need no new jobs.
  if pg_catalog.current_setting('autoembed.applying', true) = 'on' then
    return null;
  end if;
  if tg_nargs < 2 then
    raise exception 'autoembed: util.queue_embeddings needs two arguments, got %', tg_nargs
      using hint = 'execute function util.queue_embeddings(''embedding_input'', ''embedding'')';
  end if;
  target := util._target_for_trigger(tg_relid, content_function, embedding_column);
  call_fn := format('%I.%I', target.content_function_schema, target.content_function_name);

  if tg_level = 'ROW' then
    if tg_op = 'UPDATE' then
      begin
        execute format('select %1$s($1) is distinct from %1$s($2)', call_fn) into changed using old, new;
      exception when others then
        -- The content function raises for this row: enqueue anyway; the job
        -- records the error where the user sees it, and the write goes on.
        changed := true;
      end;
      if not changed then
        return null;
      end if;
    end if;
    -- What pgmq.send inserts, without its dynamic SQL (see the header).
    insert into pgmq.q_embedding_jobs (vt, message)
    values (pg_catalog.clock_timestamp(), jsonb_build_object(
      'id', pg_catalog.to_jsonb(new) -> target.pk_column::text,
      'schema', tg_table_schema,
      'table', tg_table_name,
      'contentFunction', content_function,
      'embeddingColumn', embedding_column));
    perform pg_catalog.pg_notify('embedding_jobs', '');
    return null;
  end if;

  -- Statement level: one statement over the transition tables enqueues every
  -- job, as pgmq.send_batch would insert them (see the header). The part of
  -- the message that is the same for every row is built once.
  job := jsonb_build_object('schema', tg_table_schema, 'table', tg_table_name,
                            'contentFunction', content_function, 'embeddingColumn', embedding_column);
  if tg_op = 'INSERT' then
    execute format(
      'insert into pgmq.q_embedding_jobs (vt, message)
       select pg_catalog.clock_timestamp(), $1 || jsonb_build_object(''id'', n.%1$I)
         from new_rows n', target.pk_column)
      using job;
  else
    begin
      execute format(
        'insert into pgmq.q_embedding_jobs (vt, message)
         select pg_catalog.clock_timestamp(), $1 || jsonb_build_object(''id'', n.%1$I)
           from new_rows n left join old_rows o on o.%1$I = n.%1$I
          where o.%1$I is null or %2$s(n) is distinct from %2$s(o)', target.pk_column, call_fn)
        using job;
    exception when others then
      -- The content function raises for some row of the statement. Compare
      -- row by row instead (a subtransaction per call, so only on this
      -- path), a row whose text cannot be built counting as changed: its job
      -- records the error, and the user's statement succeeds.
      execute format(
        'insert into pgmq.q_embedding_jobs (vt, message)
         select pg_catalog.clock_timestamp(), $1 || jsonb_build_object(''id'', n.%1$I)
           from new_rows n left join old_rows o on o.%1$I = n.%1$I
           cross join lateral util._try_content($2, n) x
           cross join lateral util._try_content($2, o) y
          where o.%1$I is null or x.error is not null or y.error is not null
             or x.content is distinct from y.content', target.pk_column)
        using job, call_fn;
    end;
  end if;
  get diagnostics enqueued = row_count;
  if enqueued > 0 then
    perform pg_catalog.pg_notify('embedding_jobs', '');
  end if;
  return null;
end
$$;
