-- autoembed schema 30: detect. The triggers that turn a user's writes into
-- queue messages (util.queue_embeddings) and keep searches from seeing an
-- embedding of old text (util.clear_column), and the NOTIFY that wakes
-- listening workers. Both triggers are security definer so that inserts by
-- anon/authenticated work without any grant in util.

-- internal: wakes listening workers; a NOTIFY per transaction, not per row
-- (Postgres folds identical notifications of one transaction into one).
create or replace function util._notify_jobs()
returns void
language sql
set search_path = ''
as $$ select pg_catalog.pg_notify('embedding_jobs', '') $$;

-- public trigger: enqueues embedding jobs. Arguments: content function name,
-- embedding column name (as in the Supabase guide). Works as
--   * a row-level trigger (the guide's form): one message per row; on UPDATE
--     only when the content function's text changed;
--   * a statement-level trigger with transition tables named new_rows (and
--     old_rows for UPDATE and DELETE): one insert into the queue per
--     statement, however many rows: one message per pack_size rows, `{"ids":
--     [...]}` (`{"id": ...}` when it is one row), built by util._enqueue_sql
--     (16_jobs). The core expands a packed message into its rows and settles
--     it row by row (util._settle_jobs). util.enable_embeddings uses it for
--     DELETE; for INSERT and UPDATE it writes the target its own function
--     with the same behaviour and static SQL (util._create_queue_function).
-- On DELETE (row level, or statement level with old_rows) and TRUNCATE it
-- deletes the fingerprints of the rows that went, so the bookkeeping stays
-- as small as the table, and their vectors a store keeps elsewhere (a
-- chunked target's chunks: 22_stores); a TRUNCATE also drops the target's
-- jobs and dead letters. Must fire AFTER: as a BEFORE trigger its NULL
-- result would cancel the user's write. A row-level firing inserts its
-- one-row message into the queue table itself, as util._enqueue_sql's
-- statement does (pgmq.send plans its insert again on every call).
-- It wakes the pipeline once per transaction: in push mode (setting
-- kick_on_change) by kicking it when it is idle (util._kick_embeddings), so a
-- change need not wait for the next tick; otherwise by a NOTIFY for listening
-- workers. Push mode sends no NOTIFY: Postgres commits notifying transactions
-- one at a time (a lock held until the commit is flushed), which with fsync
-- on cost single-row writes about two thirds of their rate (bench/RESULTS.md);
-- a worker beside push mode then finds the jobs by its poll.
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
  store_target util.embedding_targets;
  forget_sql text;
  call_fn text;
  job jsonb;
  enqueued bigint;
  changed boolean;
begin
  if tg_when <> 'AFTER' then
    raise exception 'autoembed: util.queue_embeddings must be an AFTER trigger, not %', tg_when
      using errcode = 'AE003',
            detail = 'Its NULL result would cancel the insert or update of every row.',
            hint = 'create trigger ... after insert on ... for each row execute function util.queue_embeddings(''embedding_input'', ''embedding'');';
  end if;
  if tg_op in ('DELETE', 'TRUNCATE') then
    select * into target from util.embedding_targets t
     where t.table_oid = tg_relid and t.embedding_column = tg_argv[1];
    if target.id is null then
      return null;
    end if;
    if tg_op = 'TRUNCATE' then
      -- Every row is gone: so are their vectors elsewhere, their
      -- fingerprints, and the target's jobs (35_capture).
      perform util._truncated(target);
      return null;
    end if;
    -- The rows that went: their vectors elsewhere (util._store_forget_sql,
    -- run here, where the transition table is visible), then their fingerprints.
    for store_target in select * from util.embedding_targets t where t.id = target.id or t.shadow_of = target.id loop
      forget_sql := util._store_forget_sql(store_target,
        case when tg_level = 'ROW' then pg_catalog.format('select ($1).%I', target.pk_column)
             else pg_catalog.format('select o.%I from old_rows o', target.pk_column) end);
      if forget_sql is not null and tg_level = 'ROW' then
        execute forget_sql using old;
      elsif forget_sql is not null then
        execute forget_sql;
      end if;
    end loop;
    if tg_level = 'ROW' then
      delete from util.embedding_fingerprints f
       where f.target_id in (select t.id from util.embedding_targets t
                              where t.id = target.id or t.shadow_of = target.id)
         and f.row_id = pg_catalog.to_jsonb(old) ->> target.pk_column::text;
    else
      execute format(
        'delete from util.embedding_fingerprints f
          where f.target_id in (select t.id from util.embedding_targets t where t.id = $1 or t.shadow_of = $1)
            and f.row_id in (select o.%1$I::text from old_rows o)', target.pk_column)
        using target.id;
    end if;
    return null;
  end if;
  -- The pipeline's own writes of embeddings need no new jobs.
  if pg_catalog.current_setting('autoembed.applying', true) = 'on' then
    return null;
  end if;
  if tg_nargs < 2 then
    raise exception 'autoembed: util.queue_embeddings needs two arguments, got %', tg_nargs
      using errcode = 'AE003',
            hint = 'execute function util.queue_embeddings(''embedding_input'', ''embedding'')';
  end if;
  -- The registered target, read here (one cached plan); only a first firing
  -- or another content function goes through util._target_for_trigger.
  select * into target from util.embedding_targets t
   where t.table_oid = tg_relid and t.embedding_column = tg_argv[1] and t.content_function = tg_argv[0];
  if target.id is null then
    target := util._target_for_trigger(tg_relid, content_function, embedding_column);
  end if;
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
    insert into pgmq.q_embedding_jobs (vt, message)
    values (pg_catalog.clock_timestamp(), jsonb_build_object(
      'id', pg_catalog.to_jsonb(new) -> target.pk_column::text,
      'schema', tg_table_schema,
      'table', tg_table_name,
      'contentFunction', content_function,
      'embeddingColumn', embedding_column));
    -- (One row's message, as util._enqueue_sql's statement writes it: static
    -- SQL here because this runs once per row.)
    -- How to wake the pipeline, decided once per transaction
    -- (util._kick_embeddings): a bulk statement's rows do not each look again.
    if coalesce(pg_catalog.current_setting('autoembed.wake', true), '') not in ('kick', 'notify') then
      perform util._kick_embeddings();
    end if;
    if pg_catalog.current_setting('autoembed.wake', true) = 'notify' then
      perform pg_catalog.pg_notify('embedding_jobs', '');
    end if;
    return null;
  end if;

  -- Statement level: one statement over the transition tables enqueues every
  -- job. The part of the message that is the same for every row is built once.
  job := jsonb_build_object('schema', tg_table_schema, 'table', tg_table_name,
                            'contentFunction', content_function, 'embeddingColumn', embedding_column);
  if tg_op = 'INSERT' then
    execute util._enqueue_sql(format('select n.%1$I as id from new_rows n', target.pk_column), '$1')
      using job;
  else
    begin
      execute util._enqueue_sql(format(
        'select n.%1$I as id from new_rows n left join old_rows o on o.%1$I = n.%1$I
          where o.%1$I is null or %2$s(n) is distinct from %2$s(o)', target.pk_column, call_fn), '$1')
        using job;
    exception when others then
      -- The content function raises for some row of the statement. Compare
      -- row by row instead (a subtransaction per call, so only on this
      -- path), a row whose text cannot be built counting as changed.
      execute util._enqueue_sql(format(
        'select n.%1$I as id from new_rows n left join old_rows o on o.%1$I = n.%1$I
          cross join lateral util._try_content($2, n) x
          cross join lateral util._try_content($2, o) y
          where o.%1$I is null or x.error is not null or y.error is not null
             or x.content is distinct from y.content', target.pk_column), '$1')
        using job, call_fn;
    end;
  end if;
  get diagnostics enqueued = row_count;
  if enqueued > 0 then
    if coalesce(pg_catalog.current_setting('autoembed.wake', true), '') not in ('kick', 'notify') then
      perform util._kick_embeddings();
    end if;
    if pg_catalog.current_setting('autoembed.wake', true) = 'notify' then
      perform pg_catalog.pg_notify('embedding_jobs', '');
    end if;
  end if;
  return null;
end
$$;

-- public trigger (BEFORE UPDATE, row level): sets the embedding column to
-- NULL when, and only when, the text to embed changed. Arguments: embedding
-- column name, and optionally the content function. Misuse raises AE003.
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
    raise exception 'autoembed: util.clear_column must be a BEFORE UPDATE ... FOR EACH ROW trigger'
      using errcode = 'AE003';
  end if;
  if tg_nargs < 1 or clear_column = '' then
    raise exception 'autoembed: util.clear_column needs the embedding column as its argument'
      using errcode = 'AE003', hint = 'execute function util.clear_column(''embedding'')';
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
        using errcode = 'AE003', hint = 'Name the embedding column, e.g. util.clear_column(''embedding'').';
    end if;
    changed := (pg_catalog.to_jsonb(new) - clear_column::text) is distinct from (pg_catalog.to_jsonb(old) - clear_column::text);
  end if;
  if changed then
    new := pg_catalog.jsonb_populate_record(new, jsonb_build_object(clear_column, null));
  end if;
  return new;
end
$$;


-- internal: the name of the trigger function util.enable_embeddings generates
-- for (table, embedding column): _queue_embeddings_<table oid>_<8 hex digits
-- of md5(column)>, short and free of the column's characters. By the oid, as
-- the triggers are: renaming the table keeps it; the target's id would not
-- (a model change switches to the shadow's row).
create or replace function util._queue_function_name(target_table regclass, embedding_column name)
returns name
language sql
immutable
set search_path = ''
as $$
  select ('_queue_embeddings_' || target_table::oid::text || '_'
          || pg_catalog.left(pg_catalog.md5(embedding_column::text), 8))::name
$$;

-- internal: (re)writes util.<util._queue_function_name>(), the insert and
-- update trigger function of one target, and returns it. It does what
-- util.queue_embeddings does at statement level, with the target's key column
-- and content function written into its SQL: its statements are static, so
-- plpgsql plans them once per session instead of once per statement (the
-- generic trigger's dynamic INSERT and target look-up were most of what it
-- added to a single-row insert, bench/RESULTS.md section 4), and it reads no
-- target. util.enable_embeddings calls it whenever it (re)creates the
-- triggers, i.e. whenever the key column, the content function's name or the
-- target changes; a create or replace of the content function needs nothing
-- (the cached plans depend on the function and are replanned). Deletes stay
-- with util.queue_embeddings (fingerprints of the live and shadow targets).
-- Identifiers go through %I, literals through %L, the whole body as a literal.
create or replace function util._create_queue_function(target_id int)
returns regprocedure
language plpgsql
set search_path = ''
as $$
declare
  t util.embedding_targets;
  fn_name name;
  call_fn text;
  body text;
begin
  select * into t from util.embedding_targets x where x.id = target_id;
  if t.id is null then
    raise exception 'autoembed: no target with id %', target_id using errcode = 'AE002';
  end if;
  fn_name := util._queue_function_name(t.table_oid, t.embedding_column);
  call_fn := pg_catalog.format('%I.%I', t.content_function_schema, t.content_function_name);
  -- %3$L and %4$L the message's contentFunction and embeddingColumn, %6$s
  -- to %8$s the enqueue statements (util._enqueue_sql) for inserts, for
  -- updates, and for updates where the content function raises.
  body := pg_catalog.format($body$
declare
  job jsonb;
  enqueued bigint;
begin
  -- The pipeline's own writes of embeddings need no new jobs.
  if pg_catalog.current_setting('autoembed.applying', true) = 'on' then
    return null;
  end if;
  job := pg_catalog.jsonb_build_object('schema', tg_table_schema, 'table', tg_table_name,
                                       'contentFunction', %3$L::text, 'embeddingColumn', %4$L::text);
  if tg_op = 'INSERT' then
    %6$s;
  else
    begin
      -- Only rows whose text changed (I4).
      %7$s;
    exception when others then
      -- The content function raises for some row: compare row by row, a row
      -- whose text cannot be built counting as changed.
      %8$s;
    end;
  end if;
  get diagnostics enqueued = row_count;
  if enqueued > 0 then
    if coalesce(pg_catalog.current_setting('autoembed.wake', true), '') not in ('kick', 'notify') then
      perform util._kick_embeddings();
    end if;
    if pg_catalog.current_setting('autoembed.wake', true) = 'notify' then
      perform pg_catalog.pg_notify('embedding_jobs', '');
    end if;
  end if;
  return null;
end
$body$, t.pk_column, call_fn, t.content_function, t.embedding_column, call_fn,
    -- %6$s to %8$s: the enqueue statements, static SQL in the generated function
    util._enqueue_sql(pg_catalog.format('select n.%I as id from new_rows n', t.pk_column), 'job'),
    util._enqueue_sql(pg_catalog.format(
      'select n.%1$I as id from new_rows n left join old_rows o on o.%1$I = n.%1$I
        where o.%1$I is null or %2$s(n) is distinct from %2$s(o)', t.pk_column, call_fn), 'job'),
    util._enqueue_sql(pg_catalog.format(
      'select n.%1$I as id from new_rows n left join old_rows o on o.%1$I = n.%1$I
        cross join lateral util._try_content(%2$L, n) x
        cross join lateral util._try_content(%2$L, o) y
        where o.%1$I is null or x.error is not null or y.error is not null
           or x.content is distinct from y.content', t.pk_column, call_fn), 'job'));
  execute pg_catalog.format(
    'create or replace function util.%I() returns trigger language plpgsql security definer '
    'set search_path = '''' as %L', fn_name, body);
  -- Only its triggers call it: PUBLIC's EXECUTE and any default privilege go.
  perform util._revoke_inherited('function', pg_catalog.format('util.%I()', fn_name)::regprocedure);
  execute pg_catalog.format(
    'comment on function util.%I() is %L', fn_name,
    pg_catalog.format('autoembed: insert and update trigger of %s (%s), generated by util.enable_embeddings',
                      t.table_oid, t.embedding_column));
  return pg_catalog.format('util.%I()', fn_name)::regprocedure;
end
$$;

-- internal: drops the generated trigger function of (table, column) when it
-- exists (drop function if exists would print a notice when it does not).
create or replace function util._drop_queue_function(target_table regclass, embedding_column name)
returns void
language plpgsql
set search_path = ''
as $$
declare
  fn regprocedure := pg_catalog.to_regprocedure(
    pg_catalog.format('util.%I()', util._queue_function_name(target_table, embedding_column)));
begin
  if fn is not null then
    execute pg_catalog.format('drop function %s', fn);
  end if;
end
$$;
