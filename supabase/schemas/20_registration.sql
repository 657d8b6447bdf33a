-- autoembed schema 20: attaching tables. util.enable_embeddings (and the
-- first firing of a hand-made guide-style trigger) validates a (table,
-- embedding column, content function, model) and records it as a target;
-- util.disable_embeddings undoes it. Mistakes raise AE002/AE003 with
-- message, detail and hint, and leave nothing behind.

-- internal: a fingerprint of a function's whole definition (body, language,
-- volatility, SET options), to notice create or replace / alter function.
create or replace function util._content_definition(fn regprocedure)
returns bytea
language sql
stable
set search_path = ''
as $$ select pg_catalog.sha256(pg_catalog.convert_to(pg_catalog.pg_get_functiondef(fn), 'UTF8')) $$;

-- internal: the content function a target names, resolved now (null when it
-- no longer exists under that name).
create or replace function util._content_function_of(t util.embedding_targets)
returns regprocedure
language sql
stable
set search_path = ''
as $$
  select pg_catalog.to_regprocedure(pg_catalog.format('%I.%I(%s)', t.content_function_schema,
           t.content_function_name, c.reltype::regtype))
    from pg_catalog.pg_class c where c.oid = t.table_oid
$$;

-- internal: the function `content_function` names for a row of
-- `target_table`, or null. Any spelling regprocedure reads: a quoted or
-- schema-qualified name ('"My Fn"', 'public."My Fn"'), with or without its
-- argument list ('"My Fn"(notes)'); an unqualified name is looked up in the
-- table's schema, then public. A name without a dot ('documents_input',
-- 'My Fn', even 'in''put "fn') is first taken as it is written, as before
-- and as the guide's examples do. Never raises: text regprocedure cannot
-- parse names nothing. Its own function, so the search path it sets ends
-- with it.
create or replace function util._resolve_content_function(target_table regclass, content_function text)
returns regprocedure
language plpgsql
stable
set search_path = ''
as $$
declare
  rel record;
  row_type text;
  fn regprocedure;
  spelling text;
begin
  select n.nspname, c.reltype into rel
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
   where c.oid = target_table;
  -- Schema-qualified, as the search path is still empty.
  row_type := rel.reltype::regtype::text;
  if pg_catalog.strpos(content_function, '.') = 0 then
    fn := coalesce(
      pg_catalog.to_regprocedure(pg_catalog.format('%I.%I(%s)', rel.nspname, content_function, row_type)),
      pg_catalog.to_regprocedure(pg_catalog.format('public.%I(%s)', content_function, row_type)));
    if fn is not null then
      return fn;
    end if;
  end if;
  -- pg_catalog stays first (implicitly) and pg_temp last: neither a
  -- temporary object nor a user's one stands in for a system type.
  perform pg_catalog.set_config('search_path',
            pg_catalog.format('%I, public, pg_temp', rel.nspname), true);
  foreach spelling in array array[content_function || '(' || row_type || ')', content_function] loop
    begin
      fn := pg_catalog.to_regprocedure(spelling);
    exception when others then
      -- not a name regprocedure can read (a syntax error, too many dots)
      fn := null;
    end;
    if fn is not null then
      return fn;
    end if;
  end loop;
  return null;
end
$$;

-- internal: raises unless `target_table` is an ordinary or partitioned
-- table (AE002 when it does not exist, AE003 otherwise).
create or replace function util._check_source_table(target_table regclass)
returns void
language plpgsql
stable
set search_path = ''
as $$
declare
  rel record;
begin
  select c.oid, c.relkind into rel from pg_catalog.pg_class c where c.oid = target_table;
  if rel.oid is null then
    raise exception 'autoembed: relation with OID % does not exist', target_table::oid
      using errcode = 'AE002';
  end if;
  if rel.relkind not in ('r', 'p') then
    raise exception 'autoembed: % is not a table', target_table
      using errcode = 'AE003',
            detail = format('It is a %s.', case rel.relkind when 'v' then 'view' when 'm' then 'materialized view'
                                          when 'f' then 'foreign table' else 'relation of kind ' || rel.relkind::text end),
            hint = 'Embeddings are kept on ordinary or partitioned tables.';
  end if;
end
$$;

-- internal: the single-column primary key of `target_table`, by which the
-- pipeline addresses its rows; raises AE003 when it has none or several.
create or replace function util._primary_key(target_table regclass)
returns name
language plpgsql
stable
set search_path = ''
as $$
declare
  pk name;
  pk_count int;
begin
  select count(*), min(a.attname)
    into pk_count, pk
    from pg_catalog.pg_index i
    join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = any (i.indkey)
   where i.indrelid = target_table and i.indisprimary;
  if pk_count <> 1 then
    raise exception 'autoembed: % needs a single-column primary key (it has %)', target_table, pk_count
      using errcode = 'AE003',
            hint = 'Add one, e.g. alter table ... add column id bigint generated always as identity primary key;';
  end if;
  return pk;
end
$$;

-- internal: raises AE003 when `model` cannot name a model.
create or replace function util._check_model_name(model text)
returns void
language plpgsql
immutable
set search_path = ''
as $$
begin
  if model is null or pg_catalog.btrim(model) = '' or pg_catalog.length(model) > 200 then
    raise exception 'autoembed: "%" is not a model name', pg_catalog.left(model, 200)
      using errcode = 'AE003',
            hint = 'Name the provider''s model, e.g. text-embedding-3-small, or a local-* model.';
  end if;
end
$$;

-- internal: validates and records a target of any store (its store checked
-- or made by the caller, 22_stores): the source table, its single-column
-- primary key, the content function, the model. Raises with
-- message/detail/hint on anything that would make the pipeline fail later.
-- Returns the target id. An existing target (same table and name) takes the
-- content function, model and dimensions given, and a model change in
-- progress (its shadow) the same content function; a new one records its
-- content function's definition, so later changes are noticed.
create or replace function util._record_target(
  target_table regclass,            -- the user's table
  content_function text,            -- function taking the table's row and returning text
  embedding_column name,            -- the target's name: its vector column, or its side table's name
  model text,                       -- null: the target's model, else util.settings default_model
  dimensions int                    -- the store's vector size
)
returns int
language plpgsql
set search_path = ''
as $$
declare
  rel record;
  fn record;
  pk name;
  fn_oid oid;
  existing util.embedding_targets;
  target_id int;
begin
  perform util._check_source_table(target_table);
  select c.relname, n.nspname, c.reltype
    into rel
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
   where c.oid = target_table;
  pk := util._primary_key(target_table);

  -- An unqualified name resolves in the table's schema first, then public,
  -- like the guide's examples where both live in public.
  fn_oid := util._resolve_content_function(target_table, content_function);
  if fn_oid is null then
    raise exception 'autoembed: content function % not found',
      case when content_function ~ '\)\s*$' then content_function
           else format('%s(%s)', content_function, target_table) end
      using errcode = 'AE003',
            detail = 'The content function takes one argument, a row of the table, and returns text.',
            hint = format('create function %s(r %s) returns text language sql immutable as $f$ select r.title || '' '' || r.content $f$;',
                          regexp_replace(content_function, '\(.*\)\s*$', ''), target_table);
  end if;
  select n.nspname, p.proname, p.prokind, p.proretset, p.prorettype, p.pronargs, p.proargtypes[0] as argtype
    into fn
    from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
   where p.oid = fn_oid;
  -- Named with its argument list, it may take something else than the row.
  if fn.pronargs <> 1 or fn.argtype <> rel.reltype then
    raise exception 'autoembed: content function %.% does not take a row of %', fn.nspname, fn.proname, target_table
      using errcode = 'AE003',
            detail = format('It takes (%s).', pg_catalog.pg_get_function_identity_arguments(fn_oid)),
            hint = format('Name the one that takes a row: %s(%s).', regexp_replace(content_function, '\(.*\)\s*$', ''), target_table);
  end if;
  if fn.prokind <> 'f' or fn.proretset then
    raise exception 'autoembed: content function %.% must be a plain function returning one text value', fn.nspname, fn.proname
      using errcode = 'AE003',
            detail = format('It is %s.', case when fn.proretset then 'a set-returning function'
                                              when fn.prokind = 'a' then 'an aggregate'
                                              when fn.prokind = 'w' then 'a window function'
                                              else 'a procedure' end),
            hint = 'create function ...(r <table>) returns text language sql immutable as $f$ ... $f$;';
  end if;
  if fn.prorettype <> 'text'::regtype then
    raise exception 'autoembed: content function %.% must return text', fn.nspname, fn.proname
      using errcode = 'AE003',
            detail = format('It returns %s.', fn.prorettype::regtype),
            hint = 'Return the text to embed, e.g. r.title || '' '' || r.content.';
  end if;

  select * into existing from util.embedding_targets t
   where t.table_oid = target_table and t.embedding_column = _record_target.embedding_column;
  model := coalesce(model, existing.model, util._setting('default_model'));
  perform util._check_model_name(model);

  if existing.id is not null then
    -- A new content function is noticed by util.maintain_embeddings, which
    -- compares content_definition and rechecks the rows.
    update util.embedding_targets t
       set content_function = _record_target.content_function,
           content_function_schema = fn.nspname,
           content_function_name = fn.proname,
           pk_column = pk,
           model = _record_target.model,
           dimensions = _record_target.dimensions
     where t.id = existing.id;
    -- A model change in progress builds from the same text.
    update util.embedding_targets t
       set content_function = _record_target.content_function,
           content_function_schema = fn.nspname,
           content_function_name = fn.proname,
           pk_column = pk
     where t.shadow_of = existing.id;
    return existing.id;
  end if;
  insert into util.embedding_targets
    (table_oid, embedding_column, pk_column, content_function, content_function_schema, content_function_name,
     model, dimensions, content_definition, jobs_schema, jobs_table)
  values
    (target_table, embedding_column, pk, content_function, fn.nspname, fn.proname, model, dimensions,
     util._content_definition(fn_oid::regprocedure), rel.nspname, rel.relname)
  returning id into target_id;
  return target_id;
end
$$;

-- internal: the target a trigger fires for, registering it on first use so
-- that guide-style triggers created by hand get the same checks and status.
create or replace function util._target_for_trigger(target_table regclass, content_function text, embedding_column name)
returns util.embedding_targets
language plpgsql
set search_path = ''
as $$
declare
  found util.embedding_targets;
begin
  select * into found from util.embedding_targets t
   where t.table_oid = target_table and t.embedding_column = _target_for_trigger.embedding_column;
  if found.id is null or found.content_function <> _target_for_trigger.content_function then
    begin
      -- A guide-style trigger names a vector column; an attached one keeps its model.
      perform util._store_register(target_table, content_function, embedding_column,
                                   null, null, false, null, null, null, null);
    exception when unique_violation then
      -- Another transaction's first write registered the target at the same
      -- time (it waited for that one's commit): use its registration rather
      -- than fail this write.
      null;
    end;
    select * into found from util.embedding_targets t
     where t.table_oid = target_table and t.embedding_column = _target_for_trigger.embedding_column;
  end if;
  return found;
end
$$;

-- internal: drops trigger `trigger_name` of `target_table` when it exists
-- (drop trigger if exists would print a notice when it does not).
create or replace function util._drop_trigger(target_table regclass, trigger_name name)
returns void
language plpgsql
set search_path = ''
as $$
begin
  if exists (select from pg_catalog.pg_trigger g where g.tgrelid = target_table and g.tgname = trigger_name) then
    execute format('drop trigger %I on %s', trigger_name, target_table);
  end if;
end
$$;

-- internal: the names of the triggers util.enable_embeddings creates for
-- target `embedding_column`: embed_<column>_insert, _update, _delete,
-- _trunc and (clear_on_change) _clear.
create or replace function util._trigger_names(embedding_column name)
returns name[]
language sql
immutable
set search_path = ''
as $$
  select array(select ('embed_' || embedding_column || s.suffix)::name
                 from pg_catalog.unnest(array['_insert', '_update', '_delete', '_trunc', '_clear']) s(suffix))
$$;

-- internal: drops the triggers util.enable_embeddings created on
-- `target_table` for target `embedding_column` (those that exist).
create or replace function util._drop_triggers(target_table regclass, embedding_column name)
returns void
language plpgsql
set search_path = ''
as $$
declare
  trigger_name name;
begin
  foreach trigger_name in array util._trigger_names(embedding_column) loop
    perform util._drop_trigger(target_table, trigger_name);
  end loop;
end
$$;

-- internal: the live target of (table, column), or raises like the public
-- functions that take them.
create or replace function util._live_target(target_table regclass, embedding_column name)
returns util.embedding_targets
language plpgsql
stable
set search_path = ''
as $$
declare
  t util.embedding_targets;
begin
  select * into t from util.embedding_targets x
   where x.table_oid = target_table and x.embedding_column = _live_target.embedding_column
     and x.shadow_of is null and x.retired_at is null;
  if t.id is null then
    raise exception 'autoembed: % (column %) is not attached', target_table, embedding_column
      using errcode = 'AE002', hint = 'Attach it with select util.enable_embeddings(...).';
  end if;
  return t;
end
$$;

-- public: attaches the pipeline to a table in one call. Creates statement
-- level insert/update/delete/truncate triggers (one queue insert per statement,
-- however many rows; inserts and updates through a trigger function written
-- for this target, util._create_queue_function), optionally the clear trigger, records the configuration and
-- starts a backfill of the existing rows (the first slice is enqueued now,
-- the rest in the background). Returns the jobs enqueued now. Safe to call
-- again: with another model or dimensions it starts a model change
-- (util.reembed) instead of relabelling the live column. Everything it
-- creates is created by this one statement, so an error leaves nothing.
-- Prints nothing on success.
-- With `destination`, the target is chunked (see 25_chunked_targets): each
-- row's text is split into chunks of chunk_size tokens (chunk_overlap shared
-- with the previous chunk) kept with their embeddings in the destination
-- table, which this call creates; embedding_column and clear_on_change do
-- not apply, and the target is named by the destination's table name.
create or replace function util.enable_embeddings(
  target_table regclass,                      -- the table to keep embedded
  content_function text,                      -- f(row of target_table) returns text
  embedding_column name default 'embedding',  -- vector/halfvec column to fill
  model text default null,                    -- default: the target's, else util.settings default_model
  dimensions int default null,                -- default: the column's declared dimensions (chunked: the model's)
  clear_on_change boolean default false,      -- NULL the embedding as soon as its text changes
  backfill boolean default true,              -- enqueue existing rows now
  destination text default null,              -- chunked: the side table to create, e.g. 'public.article_chunks'
  chunk_size int default null,                -- chunked: tokens per chunk, 16..8191 (default 512)
  chunk_overlap int default null,             -- chunked: tokens shared with the previous chunk (default 64)
  splitter text default null,                 -- chunked: recursive (default) | markdown | none
  lane text default null,                     -- bulk work: online (default) | batch | auto (55_batch_lane)
  capture text default null                   -- how changes are seen: triggers (default) | logical (35_capture)
)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  target_id int;
  prefix text;
  existing util.embedding_targets;
  change_model boolean;
  queue_fn regprocedure;
begin
  -- Longer names would be cut to 63 bytes, and the triggers' names collide
  -- (a store that names the target itself checks the name it derives).
  if pg_catalog.octet_length('embed_' || embedding_column || '_insert') > 63 then
    raise exception 'autoembed: the embedding column name "%" is too long for the trigger names', embedding_column
      using errcode = 'AE003',
            detail = 'The triggers are named embed_<column>_insert, _update and _delete, at most 63 bytes.',
            hint = 'Rename the column (50 bytes at most), or create util.queue_embeddings triggers by hand.';
  end if;
  perform util._check_lane(lane);
  if capture is not null and capture not in ('triggers', 'logical') then
    raise exception 'autoembed: capture must be triggers or logical, got %', capture
      using errcode = 'AE003', hint = 'capture => ''triggers'' (the default) or capture => ''logical''.';
  end if;
  target_id := util._store_register(target_table, content_function, embedding_column, model, dimensions,
                                    clear_on_change, destination, chunk_size, chunk_overlap, splitter);
  if lane is not null then
    update util.embedding_targets t set lane = enable_embeddings.lane where t.id = target_id;
  end if;
  select * into existing from util.embedding_targets t where t.id = target_id;
  -- An attached target keeps its capture unless told otherwise.
  capture := coalesce(capture, existing.capture);
  embedding_column := existing.embedding_column;
  prefix := 'embed_' || embedding_column;
  -- An attached target keeps its model: another one is a model change (util.reembed).
  change_model := model is distinct from null and model <> existing.model
                  or dimensions is distinct from null and dimensions <> existing.dimensions;
  perform util._drop_triggers(target_table, embedding_column);
  if capture = 'logical' then
    -- No trigger on the table: it joins the publication in this transaction,
    -- as its triggers (if it had them) went, so no change falls between.
    if clear_on_change then
      raise exception 'autoembed: clear_on_change needs capture => ''triggers'''
        using errcode = 'AE003',
              detail = 'It is a BEFORE UPDATE trigger on the table; logical capture adds none.';
    end if;
    perform util._check_capture(target_table, existing.pk_column);
    perform util._drop_queue_function(target_table, embedding_column);
    update util.embedding_targets t set capture = 'logical' where t.id = target_id or t.shadow_of = target_id;
    perform util._capture_publish(target_table);
    if not util._capture_slot_exists() then
      raise notice 'autoembed: no replication slot % yet: start the worker (autoembed worker), which creates it and catches up',
        util._setting('capture_slot');
    end if;
  else
    update util.embedding_targets t set capture = 'triggers' where t.id = target_id or t.shadow_of = target_id;
    perform util._capture_unpublish(target_table);
    -- Inserts and updates go through the target's own trigger function, its
    -- SQL static (util._create_queue_function), written again on every call so
    -- it always has the registration just made.
    queue_fn := util._create_queue_function(target_id);
    execute format(
      'create trigger %I after insert on %s referencing new table as new_rows
         for each statement execute function %s()',
      prefix || '_insert', target_table, queue_fn::oid::regproc);
    execute format(
      'create trigger %I after update on %s referencing old table as old_rows new table as new_rows
         for each statement execute function %s()',
      prefix || '_update', target_table, queue_fn::oid::regproc);
    execute format(
      'create trigger %I after delete on %s referencing old table as old_rows
         for each statement execute function util.queue_embeddings(%L, %L)',
      prefix || '_delete', target_table, content_function, embedding_column);
    -- A truncate empties the store and drops the target's jobs (30_detect).
    execute format(
      'create trigger %I after truncate on %s
         for each statement execute function util.queue_embeddings(%L, %L)',
      prefix || '_trunc', target_table, content_function, embedding_column);
    if clear_on_change then
      execute format(
        'create trigger %I before update on %s
           for each row execute function util.clear_column(%L, %L)',
        prefix || '_clear', target_table, embedding_column, content_function);
    end if;
  end if;
  if change_model then
    return util.reembed(target_table, embedding_column, model, dimensions);
  end if;
  if backfill then
    return util._start_sweep(target_id);
  end if;
  return 0;
end
$$;

-- public: the inverse of enable_embeddings. Drops its triggers, a model
-- change in progress (shadow column included), its pending jobs and its
-- fingerprints; leaves the embeddings in the table. Raises when the table is
-- not attached (under that embedding column). A chunked target is named by
-- its destination's table name (embedding_column => 'article_chunks'); its
-- destination table (chunks, vectors, index, policy) stays, and a notice says
-- so, unless drop_destination => true drops it.
create or replace function util.disable_embeddings(
  target_table regclass,
  embedding_column name default 'embedding',
  drop_destination boolean default false      -- chunked: drop the side table of chunks too
)
returns void
language plpgsql
set search_path = ''
as $$
declare
  rel record;
  detached util.embedding_targets;
begin
  select n.nspname, c.relname, c.relkind into rel
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
   where c.oid = target_table;
  if rel.relkind is null or rel.relkind not in ('r', 'p') then
    raise exception 'autoembed: % is not a table', target_table
      using errcode = 'AE003', hint = 'See select * from util.embedding_status; for the attached tables.';
  end if;
  if not exists (select from util.embedding_targets t
                  where t.table_oid = target_table and t.embedding_column = disable_embeddings.embedding_column)
     and not exists (select from pg_catalog.pg_trigger g
                      where g.tgrelid = target_table
                        and g.tgname = any (util._trigger_names(embedding_column))) then
    raise exception 'autoembed: % (column %) is not attached', target_table, embedding_column
      using errcode = 'AE002',
            hint = 'See select * from util.embedding_status; for the attached tables and their columns.';
  end if;
  if exists (select from util.embedding_targets t
              where t.table_oid = target_table and t.embedding_column = disable_embeddings.embedding_column
                and t.shadow_of is null) then
    perform util.cancel_reembed(target_table, embedding_column);
  end if;
  perform util._drop_triggers(target_table, embedding_column);
  perform util._drop_queue_function(target_table, embedding_column);
  perform util._drop_jobs(rel.nspname, rel.relname, embedding_column);
  delete from util.embedding_targets t
   where t.table_oid = target_table and t.embedding_column = disable_embeddings.embedding_column
  returning * into detached;
  if detached.id is not null then
    perform util._store_detach(detached, drop_destination);
  end if;
  if detached.capture = 'logical' then
    perform util._capture_unpublish(target_table);
    if not exists (select from util.embedding_targets t where t.capture = 'logical')
       and util._capture_slot_exists() then
      raise notice 'autoembed: no target uses logical capture any more; its replication slot % keeps write-ahead log until dropped',
        util._setting('capture_slot')
        using hint = 'Drop the slot and the publication: select util.drop_capture(); (or autoembed cdc drop)';
    end if;
  end if;
end
$$;
