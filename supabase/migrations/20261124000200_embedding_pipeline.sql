-- autoembed 2/3: the pipeline's SQL side. Detect (triggers) -> queue (pgmq
-- `embedding_jobs`) -> schedule (util.process_embeddings through pg_net) ->
-- apply (the `embed` function / worker, which calls the util._* helpers here).
--
-- Public API (stable): util.enable_embeddings, util.disable_embeddings,
-- util.reembed, util.retry_failed, util.process_embeddings,
-- util.queue_embeddings (trigger), util.clear_column (trigger),
-- util.project_url, util.invoke_edge_function, util.embedding_status (view),
-- util.embedding_errors (table), util.prune_embedding_cache.
-- Everything named util._* is internal to the pipeline.
--
-- Names follow the Supabase "automatic embeddings" guide so its readers can
-- switch without rewriting their triggers.

create schema if not exists util;
revoke all on schema util from public;
grant usage on schema util to service_role;

select pgmq.create('embedding_jobs');

-------------------------------------------------------------------------------
-- Settings (public: edit with update)
-------------------------------------------------------------------------------
create table util.settings (
  name text primary key,
  value text not null,
  description text not null
);

insert into util.settings (name, value, description) values
  ('default_model', 'text-embedding-3-small', 'model for tables attached without an explicit model'),
  ('max_attempts', '5', 'attempts before a job is dead-lettered (archived in pgmq.a_embedding_jobs)'),
  ('backoff_base_seconds', '5', 'first retry delay; doubles with each attempt'),
  ('backoff_max_seconds', '600', 'upper bound of the retry delay'),
  ('cache_max_rows', '1000000', 'embedding cache size bound, enforced by util.prune_embedding_cache()');

-- internal: a setting's value; raises when the name is unknown.
create function util._setting(setting_name text)
returns text
language plpgsql
stable
set search_path = ''
as $$
declare
  result text;
begin
  select s.value into result from util.settings s where s.name = setting_name;
  if result is null then
    raise exception 'unknown autoembed setting "%"', setting_name
      using hint = 'See select * from util.settings.';
  end if;
  return result;
end
$$;

-------------------------------------------------------------------------------
-- Targets: which (table, embedding column) pairs the pipeline may write, with
-- which content function and model. A queue message is only ever acted on
-- when it names a target exactly (invariant I8).
-------------------------------------------------------------------------------
create table util.embedding_targets (
  id serial primary key,
  -- the user's table; regclass follows renames
  table_oid regclass not null,
  -- the column that receives embeddings (vector or halfvec)
  embedding_column name not null,
  -- single-column primary key used to address rows
  pk_column name not null,
  -- the content function exactly as the trigger or registration named it (matched against jobs)
  content_function text not null,
  -- where that name resolved to
  content_function_schema name not null,
  content_function_name name not null,
  model text not null,
  dimensions int not null check (dimensions > 0),
  created_at timestamptz not null default now(),
  unique (table_oid, embedding_column)
);

-- internal: validates and records a target. Raises with message/detail/hint on
-- anything that would make the pipeline fail later. Returns the target id.
create function util._register_target(
  target_table regclass,            -- the user's table
  content_function text,            -- function taking the table's row and returning text
  embedding_column name,            -- vector/halfvec column to fill
  model text default null,          -- null: util.settings default_model
  dimensions int default null       -- null: the column's declared dimensions
)
returns int
language plpgsql
set search_path = ''
as $$
declare
  rel record;
  col record;
  pk name;
  pk_count int;
  fn_oid oid;
  fn_schema name;
  fn_name name;
  declared int;
  existing util.embedding_targets;
  target_id int;
begin
  select c.oid, c.relname, n.nspname, c.relkind, c.reltype
    into rel
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
   where c.oid = target_table;
  if rel.relkind not in ('r', 'p') then
    raise exception 'autoembed: % is not a table', target_table
      using hint = 'Embeddings are kept on ordinary or partitioned tables.';
  end if;

  select a.attname, a.atttypmod, t.typname
    into col
    from pg_catalog.pg_attribute a join pg_catalog.pg_type t on t.oid = a.atttypid
   where a.attrelid = target_table and a.attname = embedding_column and a.attnum > 0 and not a.attisdropped;
  if col.attname is null then
    raise exception 'autoembed: column "%" does not exist on %', embedding_column, target_table
      using hint = format('Add it first, e.g. alter table %s add column %I halfvec(1536);', target_table, embedding_column);
  end if;
  if col.typname not in ('vector', 'halfvec') then
    raise exception 'autoembed: column "%" of % has type %, expected vector or halfvec', embedding_column, target_table, col.typname
      using hint = 'Use a pgvector halfvec(N) or vector(N) column.';
  end if;
  declared := nullif(col.atttypmod, -1);
  if dimensions is null then
    dimensions := declared;
  elsif declared is not null and declared <> dimensions then
    raise exception 'autoembed: column "%" of % holds % dimensions, not %', embedding_column, target_table, declared, dimensions
      using hint = format('Change the column first: alter table %s alter column %I type %s(%s);', target_table, embedding_column, col.typname, dimensions);
  end if;
  if dimensions is null then
    raise exception 'autoembed: column "%" of % has no declared dimensions', embedding_column, target_table
      using hint = 'Declare them (halfvec(1536)) or pass dimensions.';
  end if;

  select count(*), min(a.attname)
    into pk_count, pk
    from pg_catalog.pg_index i
    join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = any (i.indkey)
   where i.indrelid = target_table and i.indisprimary;
  if pk_count <> 1 then
    raise exception 'autoembed: % needs a single-column primary key (it has %)', target_table, pk_count
      using hint = 'Add one, e.g. alter table ... add column id bigint generated always as identity primary key;';
  end if;

  -- An unqualified name resolves in the table's schema first, then public,
  -- like the guide's examples where both live in public.
  if content_function like '%.%' then
    fn_oid := pg_catalog.to_regprocedure(format('%s(%s)', content_function, rel.reltype::regtype));
  else
    fn_oid := coalesce(
      pg_catalog.to_regprocedure(format('%I.%I(%s)', rel.nspname, content_function, rel.reltype::regtype)),
      pg_catalog.to_regprocedure(format('public.%I(%s)', content_function, rel.reltype::regtype)));
  end if;
  if fn_oid is null then
    raise exception 'autoembed: content function %(%) not found', content_function, target_table
      using detail = 'The content function takes one argument, a row of the table, and returns text.',
            hint = format('create function %s(r %s) returns text language sql immutable as $f$ select r.title || '' '' || r.content $f$;', content_function, target_table);
  end if;
  select n.nspname, p.proname into fn_schema, fn_name
    from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
   where p.oid = fn_oid;
  if (select p.prorettype from pg_catalog.pg_proc p where p.oid = fn_oid) <> 'text'::regtype then
    raise exception 'autoembed: content function %.% must return text', fn_schema, fn_name
      using hint = 'Return the text to embed, e.g. r.title || '' '' || r.content.';
  end if;

  model := coalesce(model, util._setting('default_model'));

  select * into existing from util.embedding_targets t
   where t.table_oid = target_table and t.embedding_column = _register_target.embedding_column;
  if existing.id is not null then
    update util.embedding_targets t
       set content_function = _register_target.content_function,
           content_function_schema = fn_schema,
           content_function_name = fn_name,
           pk_column = pk,
           model = _register_target.model,
           dimensions = _register_target.dimensions
     where t.id = existing.id;
    return existing.id;
  end if;
  insert into util.embedding_targets
    (table_oid, embedding_column, pk_column, content_function, content_function_schema, content_function_name, model, dimensions)
  values
    (target_table, embedding_column, pk, content_function, fn_schema, fn_name, model, dimensions)
  returning id into target_id;
  return target_id;
end
$$;

-- internal: the target a trigger fires for, registering it on first use so
-- that guide-style triggers created by hand get the same checks and status.
create function util._target_for_trigger(target_table regclass, content_function text, embedding_column name)
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
    perform util._register_target(target_table, content_function, embedding_column,
                                  case when found.id is null then null else found.model end);
    select * into found from util.embedding_targets t
     where t.table_oid = target_table and t.embedding_column = _target_for_trigger.embedding_column;
  end if;
  return found;
end
$$;

-------------------------------------------------------------------------------
-- Fingerprints and cache
-------------------------------------------------------------------------------

-- internal: what each embedding was computed from, kept beside the user's
-- table (which stays untouched). Used to skip unchanged text (I3, I4), for
-- the compare-and-set at write time (I2), and for "stale" in status (I7).
create table util.embedding_fingerprints (
  target_id int not null references util.embedding_targets (id) on delete cascade,
  row_id text not null,                -- primary key value as text
  content_hash bytea not null,         -- sha256 of the embedded text
  model text not null,
  embedded_at timestamptz not null default now(),
  primary key (target_id, row_id)
);

-- internal: embeddings by (model, dimensions, text hash), so text embedded
-- once is never paid for again. Bounded by util.prune_embedding_cache().
create table util.embedding_cache (
  model text not null,
  dimensions int not null,
  content_hash bytea not null,
  embedding extensions.halfvec not null,
  created_at timestamptz not null default now(),
  primary key (model, dimensions, content_hash)
);
create index embedding_cache_created_at on util.embedding_cache (created_at);

-- internal: the hash the fingerprints and the compare-and-set use.
create function util._content_hash(content text)
returns bytea
language sql
immutable
parallel safe
set search_path = ''
as $$ select pg_catalog.sha256(pg_catalog.convert_to(coalesce(content, ''), 'UTF8')) $$;

-- public: keeps the cache within `max_rows` (default: the cache_max_rows
-- setting), dropping the oldest entries. Returns how many it deleted.
create function util.prune_embedding_cache(max_rows bigint default null)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  bound bigint := coalesce(max_rows, util._setting('cache_max_rows')::bigint);
  deleted bigint;
begin
  with doomed as (
    select c.model, c.dimensions, c.content_hash
      from util.embedding_cache c
     order by c.created_at desc
    offset bound
  )
  delete from util.embedding_cache c
   using doomed d
   where c.model = d.model and c.dimensions = d.dimensions and c.content_hash = d.content_hash;
  get diagnostics deleted = row_count;
  return deleted;
end
$$;

-------------------------------------------------------------------------------
-- Errors: one row per failed attempt, for users to query.
-------------------------------------------------------------------------------
create table util.embedding_errors (
  id bigint generated always as identity primary key,
  job_id bigint,                       -- pgmq message id in embedding_jobs
  target_id int references util.embedding_targets (id) on delete set null,
  table_name text,                     -- schema-qualified, as named by the job
  row_id text,
  attempt int,
  retryable boolean not null,
  dead_lettered boolean not null default false,
  error text not null,
  created_at timestamptz not null default now()
);
create index embedding_errors_job on util.embedding_errors (job_id);
create index embedding_errors_target on util.embedding_errors (target_id, created_at desc);

-------------------------------------------------------------------------------
-- Detect: triggers
-------------------------------------------------------------------------------

-- internal: wakes listening workers; a NOTIFY per transaction, not per row
-- (Postgres folds identical notifications of one transaction into one).
create function util._notify_jobs()
returns void
language sql
set search_path = ''
as $$ select pg_catalog.pg_notify('embedding_jobs', '') $$;

-- public trigger: enqueues embedding jobs. Arguments: content function name,
-- embedding column name (as in the Supabase guide). Works as
--   * a row-level trigger (the guide's form): one message per row; on UPDATE
--     only when the content function's text changed;
--   * a statement-level trigger with transition tables named new_rows (and
--     old_rows for UPDATE), as util.enable_embeddings creates it: one
--     pgmq.send_batch per statement, however many rows.
create function util.queue_embeddings()
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
  msgs jsonb[];
  changed boolean;
begin
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
      execute format('select %1$s($1) is distinct from %1$s($2)', call_fn) into changed using old, new;
      if not changed then
        return null;
      end if;
    end if;
    perform pgmq.send('embedding_jobs', jsonb_build_object(
      'id', pg_catalog.to_jsonb(new) -> target.pk_column::text,
      'schema', tg_table_schema,
      'table', tg_table_name,
      'contentFunction', content_function,
      'embeddingColumn', embedding_column));
    perform util._notify_jobs();
    return null;
  end if;

  -- Statement level: one query over the transition tables, one send_batch.
  if tg_op = 'INSERT' then
    execute format(
      'select array_agg(jsonb_build_object(''id'', n.%1$I, ''schema'', $1, ''table'', $2,
                                           ''contentFunction'', $3, ''embeddingColumn'', $4))
         from new_rows n', target.pk_column)
      into msgs using tg_table_schema, tg_table_name, content_function, embedding_column;
  elsif tg_op = 'UPDATE' then
    execute format(
      'select array_agg(jsonb_build_object(''id'', n.%1$I, ''schema'', $1, ''table'', $2,
                                           ''contentFunction'', $3, ''embeddingColumn'', $4))
         from new_rows n left join old_rows o on o.%1$I = n.%1$I
        where o.%1$I is null or %2$s(n) is distinct from %2$s(o)', target.pk_column, call_fn)
      into msgs using tg_table_schema, tg_table_name, content_function, embedding_column;
  else
    raise exception 'autoembed: util.queue_embeddings handles INSERT and UPDATE, not %', tg_op;
  end if;
  if msgs is not null then
    perform pgmq.send_batch('embedding_jobs', msgs);
    perform util._notify_jobs();
  end if;
  return null;
end
$$;

-- public trigger (BEFORE UPDATE, row level): sets the embedding column to
-- NULL when, and only when, the text to embed changed, so searches never see
-- an embedding of old text. Arguments: embedding column name, and optionally
-- the content function (otherwise taken from the table's registration, or,
-- failing that, any change outside the embedding column counts).
create function util.clear_column()
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
  if content_function is not null then
    select format('%I.%I', t.content_function_schema, t.content_function_name) into call_fn
      from util._target_for_trigger(tg_relid, content_function, clear_column) t;
  else
    select format('%I.%I', t.content_function_schema, t.content_function_name) into call_fn
      from util.embedding_targets t
     where t.table_oid = tg_relid and t.embedding_column = clear_column;
  end if;
  if call_fn is not null then
    execute format('select %1$s($1) is distinct from %1$s($2)', call_fn) into changed using old, new;
  else
    changed := (pg_catalog.to_jsonb(new) - clear_column::text) is distinct from (pg_catalog.to_jsonb(old) - clear_column::text);
  end if;
  if changed then
    new := pg_catalog.jsonb_populate_record(new, jsonb_build_object(clear_column, null));
  end if;
  return new;
end
$$;

-------------------------------------------------------------------------------
-- Registration helpers
-------------------------------------------------------------------------------

-- internal: enqueues rows of a target that lack an embedding or whose
-- fingerprint is missing or from another model. Returns how many.
create function util._enqueue_missing(target_id int)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  t util.embedding_targets;
  rel record;
  msgs jsonb[];
begin
  select * into t from util.embedding_targets where id = target_id;
  select n.nspname, c.relname into rel
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
   where c.oid = t.table_oid;
  execute format(
    'select array_agg(jsonb_build_object(''id'', r.%1$I, ''schema'', $1, ''table'', $2,
                                         ''contentFunction'', $3, ''embeddingColumn'', $4))
       from %2$s r
       left join util.embedding_fingerprints f on f.target_id = $5 and f.row_id = r.%1$I::text
      where r.%3$I is null or f.row_id is null or f.model <> $6',
    t.pk_column, t.table_oid, t.embedding_column)
    into msgs using rel.nspname, rel.relname, t.content_function, t.embedding_column, t.id, t.model;
  if msgs is null then
    return 0;
  end if;
  perform pgmq.send_batch('embedding_jobs', msgs);
  perform util._notify_jobs();
  return pg_catalog.cardinality(msgs);
end
$$;

-- public: attaches the pipeline to a table in one call. Creates statement
-- level insert/update triggers (one queue call per statement, however many
-- rows), optionally the clear trigger, records the configuration and
-- enqueues a backfill of the existing rows. Returns the number of rows
-- enqueued. Safe to call again (e.g. to change the model).
create function util.enable_embeddings(
  target_table regclass,                      -- the table to keep embedded
  content_function text,                      -- f(row of target_table) returns text
  embedding_column name default 'embedding',  -- vector/halfvec column to fill
  model text default null,                    -- default: util.settings default_model
  dimensions int default null,                -- default: the column's declared dimensions
  clear_on_change boolean default false,      -- NULL the embedding as soon as its text changes
  backfill boolean default true               -- enqueue existing rows now
)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  target_id int;
  prefix text := 'embed_' || embedding_column;
begin
  target_id := util._register_target(target_table, content_function, embedding_column, model, dimensions);
  execute format('drop trigger if exists %I on %s', prefix || '_insert', target_table);
  execute format('drop trigger if exists %I on %s', prefix || '_update', target_table);
  execute format('drop trigger if exists %I on %s', prefix || '_clear', target_table);
  execute format(
    'create trigger %I after insert on %s referencing new table as new_rows
       for each statement execute function util.queue_embeddings(%L, %L)',
    prefix || '_insert', target_table, content_function, embedding_column);
  execute format(
    'create trigger %I after update on %s referencing old table as old_rows new table as new_rows
       for each statement execute function util.queue_embeddings(%L, %L)',
    prefix || '_update', target_table, content_function, embedding_column);
  if clear_on_change then
    execute format(
      'create trigger %I before update on %s
         for each row execute function util.clear_column(%L, %L)',
      prefix || '_clear', target_table, embedding_column, content_function);
  end if;
  if backfill then
    return util._enqueue_missing(target_id);
  end if;
  return 0;
end
$$;

-- public: the inverse of enable_embeddings. Drops its triggers, its pending
-- jobs and its fingerprints; leaves the embeddings in the table.
create function util.disable_embeddings(
  target_table regclass,
  embedding_column name default 'embedding'
)
returns void
language plpgsql
set search_path = ''
as $$
declare
  prefix text := 'embed_' || embedding_column;
  rel record;
begin
  select n.nspname, c.relname into rel
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
   where c.oid = target_table;
  execute format('drop trigger if exists %I on %s', prefix || '_insert', target_table);
  execute format('drop trigger if exists %I on %s', prefix || '_update', target_table);
  execute format('drop trigger if exists %I on %s', prefix || '_clear', target_table);
  delete from pgmq.q_embedding_jobs q
   where q.message ->> 'schema' = rel.nspname and q.message ->> 'table' = rel.relname
     and q.message ->> 'embeddingColumn' = embedding_column;
  delete from util.embedding_targets t
   where t.table_oid = target_table and t.embedding_column = disable_embeddings.embedding_column;
end
$$;

-- public: switches a target to another model (and/or dimensions) and
-- re-embeds in the background every row not yet embedded by it. Without a
-- model, re-enqueues rows that are missing or on another model. Returns the
-- number of rows enqueued.
create function util.reembed(
  target_table regclass,
  embedding_column name default 'embedding',
  model text default null,
  dimensions int default null
)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  t util.embedding_targets;
begin
  select * into t from util.embedding_targets x
   where x.table_oid = target_table and x.embedding_column = reembed.embedding_column;
  if t.id is null then
    raise exception 'autoembed: % (column %) is not attached', target_table, embedding_column
      using hint = 'Attach it with select util.enable_embeddings(...).';
  end if;
  if model is not null or dimensions is not null then
    perform util._register_target(target_table, t.content_function, embedding_column,
                                  coalesce(model, t.model), coalesce(dimensions, t.dimensions));
  end if;
  return util._enqueue_missing(t.id);
end
$$;

-- public: puts dead-lettered jobs (archived after max attempts) back on the
-- queue with a fresh attempt count, optionally for one table only. Returns
-- how many.
create function util.retry_failed(target_table regclass default null)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  rel record;
  moved jsonb[];
begin
  if target_table is not null then
    select n.nspname, c.relname into rel
      from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where c.oid = target_table;
  end if;
  with taken as (
    delete from pgmq.a_embedding_jobs a
     where target_table is null
        or (a.message ->> 'schema' = rel.nspname and a.message ->> 'table' = rel.relname)
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

-------------------------------------------------------------------------------
-- Apply: helpers the processing core calls (one round trip each)
-------------------------------------------------------------------------------

-- internal: the configuration the core needs for the targets a batch names,
-- identifiers already quoted for dynamic SQL.
create view util._target_config as
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
       pg_catalog.quote_ident(t.embedding_column) as embedding_sql,
       pg_catalog.format_type(emb.atttypid, emb.atttypmod) as embedding_type_sql,
       pg_catalog.format('%I.%I', t.content_function_schema, t.content_function_name) as content_function_sql
  from util.embedding_targets t
  join pg_catalog.pg_class c on c.oid = t.table_oid
  join pg_catalog.pg_namespace n on n.oid = c.relnamespace
  join pg_catalog.pg_attribute pk on pk.attrelid = t.table_oid and pk.attname = t.pk_column
  join pg_catalog.pg_attribute emb on emb.attrelid = t.table_oid and emb.attname = t.embedding_column;

-- internal: records failed attempts and reschedules them in one call.
-- Retryable failures become visible again after an exponential backoff
-- (or the provider's Retry-After, whichever is longer); permanent ones and
-- those at max_attempts are archived (dead-lettered). `failures` is a JSON
-- array of {job_id, target_id, table_name, row_id, error, retryable, retry_after}
-- (retry_after in seconds, optional).
create function util._record_failures(failures jsonb)
returns table (job_id bigint, dead_lettered boolean, retry_in_seconds int)
language plpgsql
set search_path = ''
as $$
declare
  max_attempts int := util._setting('max_attempts')::int;
  base int := util._setting('backoff_base_seconds')::int;
  cap int := util._setting('backoff_max_seconds')::int;
begin
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

-------------------------------------------------------------------------------
-- Schedule (push mode): pg_cron -> process_embeddings -> pg_net -> embed
-------------------------------------------------------------------------------

-- public: the project's URL, from Vault (secret `project_url`).
create function util.project_url()
returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  secret_value text;
begin
  select s.decrypted_secret into secret_value from vault.decrypted_secrets s where s.name = 'project_url';
  if secret_value is null then
    raise exception 'autoembed: Vault has no secret named project_url'
      using hint = 'select vault.create_secret(''https://<project-ref>.supabase.co'', ''project_url'');';
  end if;
  return secret_value;
end
$$;

-- public: POSTs `body` to edge function `name` through pg_net, with the
-- bearer secret `embed_secret` from Vault. Returns pg_net's request id.
create function util.invoke_edge_function(
  name text,
  body jsonb,
  timeout_milliseconds int default 5 * 60 * 1000,
  params jsonb default '{}'            -- query string parameters
)
returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
  secret_value text;
begin
  select s.decrypted_secret into secret_value from vault.decrypted_secrets s where s.name = 'embed_secret';
  if secret_value is null then
    raise exception 'autoembed: Vault has no secret named embed_secret'
      using hint = 'Create one equal to the function''s EMBED_SECRET: select vault.create_secret(''<secret>'', ''embed_secret'');';
  end if;
  return net.http_post(
    url => util.project_url() || '/functions/v1/' || name,
    body => body,
    params => params,
    headers => jsonb_build_object(
      'Content-Type', 'application/json',
      'Authorization', 'Bearer ' || secret_value),
    timeout_milliseconds => timeout_milliseconds);
end
$$;

-- internal: requests to the embed function that are in flight, so that
-- process_embeddings keeps at most max_requests of them. A lease ends when
-- the function reports back, or at its deadline if the call was lost.
create table util.embedding_requests (
  id bigint generated always as identity primary key,
  jobs int not null,
  started_at timestamptz not null default now(),
  expires_at timestamptz not null
);

-- public: moves queued jobs to the embed function. Reads up to
-- (max_requests - requests in flight) * batch_size jobs, hiding them for the
-- call's timeout, and POSTs them in batches of batch_size. When a call
-- finishes, the function asks for the next slice through
-- util._embedding_request_done, so a backlog drains continuously at
-- max_requests calls in flight instead of one slice per cron tick. An empty
-- queue costs one read and nothing else.
create function util.process_embeddings(
  batch_size int default 100,
  max_requests int default 4,
  timeout_milliseconds int default 2 * 60 * 1000
)
returns int
language plpgsql
set search_path = ''
as $$
declare
  free_slots int;
  batch jsonb;
  lease bigint;
  requests int := 0;
begin
  if batch_size < 1 or max_requests < 1 or timeout_milliseconds < 1000 then
    raise exception 'autoembed: process_embeddings(batch_size => %, max_requests => %, timeout_milliseconds => %) out of range',
      batch_size, max_requests, timeout_milliseconds
      using hint = 'batch_size >= 1, max_requests >= 1, timeout_milliseconds >= 1000';
  end if;
  -- Serialises concurrent callers (cron tick and finishing calls) so the
  -- in-flight bound holds; held for a few milliseconds.
  lock table util.embedding_requests in share row exclusive mode;
  delete from util.embedding_requests r where r.expires_at < now();
  select max_requests - count(*) into free_slots from util.embedding_requests;
  if free_slots <= 0 then
    return 0;
  end if;

  for batch in
    select jsonb_agg(m.message || jsonb_build_object('jobId', m.msg_id, 'attempt', m.read_ct) order by m.msg_id)
      from (select r.*, (row_number() over (order by r.msg_id) - 1) / batch_size as batch_no
              from pgmq.read('embedding_jobs', ceil(timeout_milliseconds / 1000.0)::int + 5,
                             free_slots * batch_size) r) m
     group by m.batch_no
     order by m.batch_no
  loop
    insert into util.embedding_requests (jobs, expires_at)
    values (jsonb_array_length(batch), now() + make_interval(secs => timeout_milliseconds / 1000.0 + 5))
    returning id into lease;
    perform util.invoke_edge_function(
      name => 'embed',
      body => batch,
      timeout_milliseconds => timeout_milliseconds,
      params => jsonb_build_object(
        'lease', lease, 'batch_size', batch_size, 'max_requests', max_requests,
        'timeout_milliseconds', timeout_milliseconds));
    requests := requests + 1;
  end loop;
  return requests;
end
$$;

-- internal: called by the embed function when a call finishes: ends its
-- lease and, if there is more work, starts the next calls.
create function util._embedding_request_done(
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
  delete from util.embedding_requests r where r.id = lease;
  return util.process_embeddings(batch_size, max_requests, timeout_milliseconds);
end
$$;

-------------------------------------------------------------------------------
-- Diagnose
-------------------------------------------------------------------------------

-- internal: per-target figures behind util.embedding_status.
create function util._embedding_status()
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
                count(*) filter (where r.%2$s is null and coalesce(x.content, '''') <> ''''),
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

-- public: one row per attached (table, embedding column): rows, embedded,
-- missing (text but no embedding), stale (embedding of other text or another
-- model), rows per model, queued / in-flight jobs, oldest queued job's age,
-- dead-lettered jobs and the last error.
create view util.embedding_status as select * from util._embedding_status();

-------------------------------------------------------------------------------
-- Privileges: the pipeline runs as the migration owner; application roles
-- reach it only through the security-definer triggers.
-------------------------------------------------------------------------------
revoke all on all tables in schema util from public, anon, authenticated;
revoke all on all functions in schema util from public, anon, authenticated;
revoke all on all sequences in schema util from public, anon, authenticated;
grant select on util.embedding_status, util.embedding_errors, util.settings to service_role;
grant execute on function util.process_embeddings(int, int, int), util.reembed(regclass, name, text, int),
  util.retry_failed(regclass), util.prune_embedding_cache(bigint), util._embedding_status()
  to service_role;
