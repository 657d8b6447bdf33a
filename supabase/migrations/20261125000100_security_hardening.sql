-- autoembed: security hardening, from the hostile-input test suite
-- (tests/security/). Intent, item by item:
--
-- * Hostile queue messages (I8): util.process_embeddings sends every message
--   as an object carrying its queue id, even one that is not an object at
--   all, so the embed function can refuse and dead-letter it alone instead
--   of rejecting (and so blocking) the whole batch. util._invalid_keys finds
--   ids that are no value of a key type the core cannot check itself
--   (numeric, date, ...), so one forged id cannot fail the read of a batch.
-- * service_role could not use what it was granted: process_embeddings,
--   reembed, retry_failed, prune_embedding_cache and the status view failed
--   with "permission denied" on the util tables behind them. They now run as
--   their owner (security definer, search_path pinned), still executable by
--   the owner and service_role only.
-- * Registration mistakes fail loudly and leave nothing behind: a content
--   function that is an aggregate, procedure or set-returning function, an
--   empty model, non-positive dimensions; util.queue_embeddings as a BEFORE
--   trigger (its NULL result would silently cancel every insert); DELETE and
--   TRUNCATE triggers (now a no-op instead of a malformed job or a failed
--   statement); util.clear_column without a column or with an unknown one;
--   util.disable_embeddings of something that is not an attached table; an
--   embedding column name too long for enable_embeddings' trigger names.
-- * Privileges: anon and authenticated get nothing in util, and nothing on
--   the queue tables. pg_net grants its tables and functions to PUBLIC
--   upstream; its request queue holds the embed function's bearer secret (in
--   the Authorization header) until the request is sent, and its responses
--   our function's answers. So PUBLIC, anon and authenticated lose them here,
--   where this migration's role may revoke them (it owns pg_net locally).
--   On hosted Supabase the platform owns pg_net and decides; there this step
--   changes nothing and says so in a notice (PostgREST does not expose
--   schema net to those roles anyway). Code of yours that calls net.http_*
--   as anon or authenticated needs an explicit grant, or a security definer
--   function. The embed function's answers carry no error texts any more
--   (they stay in util.embedding_errors): a content function's error may
--   quote the row.

-------------------------------------------------------------------------------
-- Apply: ids of jobs that are no value of the key
-------------------------------------------------------------------------------

-- internal: which of `ids` (a JSON array of strings) are not values of the
-- primary key type of target `target_id`. One subtransaction per id, so the
-- core calls it only after a read of rows failed.
create function util._invalid_keys(target_id int, ids jsonb)
returns text[]
language plpgsql
stable
set search_path = ''
as $$
declare
  key_type text;
  id text;
  invalid text[] := '{}';
begin
  select pg_catalog.format_type(a.atttypid, a.atttypmod) into key_type
    from util.embedding_targets t
    join pg_catalog.pg_attribute a on a.attrelid = t.table_oid and a.attname = t.pk_column
   where t.id = target_id;
  if key_type is null then
    raise exception 'autoembed: no target with id %', target_id;
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

-------------------------------------------------------------------------------
-- Schedule: every message reaches the function as an object with its id
-------------------------------------------------------------------------------

-- util.process_embeddings: the change described above is made in 20261125000400_push_lease_release.sql,
-- which declares the function once with every change of these migrations.

-- What service_role was granted, it can now use: these run as their owner.
alter function util.reembed(regclass, name, text, int) security definer;
alter function util.retry_failed(regclass) security definer;
alter function util.prune_embedding_cache(bigint) security definer;
alter function util._embedding_status() security definer;

-------------------------------------------------------------------------------
-- Registration: refuse what would fail later, or silently
-------------------------------------------------------------------------------

-- internal: validates and records a target. Raises with message/detail/hint on
-- anything that would make the pipeline fail later. Returns the target id.
create or replace function util._register_target(
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
  fn record;
  pk name;
  pk_count int;
  fn_oid oid;
  declared int;
  existing util.embedding_targets;
  target_id int;
begin
  select c.oid, c.relname, n.nspname, c.relkind, c.reltype
    into rel
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
   where c.oid = target_table;
  if rel.oid is null then
    raise exception 'autoembed: relation with OID % does not exist', target_table::oid;
  end if;
  if rel.relkind not in ('r', 'p') then
    raise exception 'autoembed: % is not a table', target_table
      using detail = format('It is a %s.', case rel.relkind when 'v' then 'view' when 'm' then 'materialized view'
                                          when 'f' then 'foreign table' else 'relation of kind ' || rel.relkind::text end),
            hint = 'Embeddings are kept on ordinary or partitioned tables.';
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
  if dimensions is not null and dimensions < 1 then
    raise exception 'autoembed: dimensions must be a positive number, got %', dimensions
      using hint = 'Pass the model''s vector size, e.g. dimensions => 1536, or leave it to the column''s declaration.';
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
  select n.nspname, p.proname, p.prokind, p.proretset, p.prorettype into fn
    from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
   where p.oid = fn_oid;
  if fn.prokind <> 'f' or fn.proretset then
    raise exception 'autoembed: content function %.% must be a plain function returning one text value', fn.nspname, fn.proname
      using detail = format('It is %s.', case when fn.proretset then 'a set-returning function'
                                              when fn.prokind = 'a' then 'an aggregate'
                                              when fn.prokind = 'w' then 'a window function'
                                              else 'a procedure' end),
            hint = 'create function ...(r <table>) returns text language sql immutable as $f$ ... $f$;';
  end if;
  if fn.prorettype <> 'text'::regtype then
    raise exception 'autoembed: content function %.% must return text', fn.nspname, fn.proname
      using detail = format('It returns %s.', fn.prorettype::regtype),
            hint = 'Return the text to embed, e.g. r.title || '' '' || r.content.';
  end if;

  model := coalesce(model, util._setting('default_model'));
  if pg_catalog.btrim(model) = '' or pg_catalog.length(model) > 200 then
    raise exception 'autoembed: "%" is not a model name', pg_catalog.left(model, 200)
      using hint = 'Name the provider''s model, e.g. text-embedding-3-small, or a local-* model.';
  end if;

  select * into existing from util.embedding_targets t
   where t.table_oid = target_table and t.embedding_column = _register_target.embedding_column;
  if existing.id is not null then
    update util.embedding_targets t
       set content_function = _register_target.content_function,
           content_function_schema = fn.nspname,
           content_function_name = fn.proname,
           pk_column = pk,
           model = _register_target.model,
           dimensions = _register_target.dimensions
     where t.id = existing.id;
    return existing.id;
  end if;
  insert into util.embedding_targets
    (table_oid, embedding_column, pk_column, content_function, content_function_schema, content_function_name, model, dimensions)
  values
    (target_table, embedding_column, pk, content_function, fn.nspname, fn.proname, model, dimensions)
  returning id into target_id;
  return target_id;
end
$$;

-- public: attaches the pipeline to a table in one call. Creates statement
-- level insert/update triggers (one queue call per statement, however many
-- rows), optionally the clear trigger, records the configuration and
-- enqueues a backfill of the existing rows. Returns the number of rows
-- enqueued. Safe to call again (e.g. to change the model). Everything it
-- creates is created by this one statement, so an error leaves nothing.
create or replace function util.enable_embeddings(
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
  -- Longer names would be cut to 63 bytes, and the triggers' names collide.
  if pg_catalog.octet_length(prefix || '_insert') > 63 then
    raise exception 'autoembed: the embedding column name "%" is too long for the trigger names', embedding_column
      using detail = 'The triggers are named embed_<column>_insert and _update, at most 63 bytes.',
            hint = 'Rename the column (50 bytes at most), or create util.queue_embeddings triggers by hand.';
  end if;
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

-- util.queue_embeddings: the change described above is made in 20261125000300_performance.sql,
-- which declares the function once with every change of these migrations.

-- util.clear_column: the change described above is made in 20261125000200_reliability_fixes.sql,
-- which declares the function once with every change of these migrations.

-- public: the inverse of enable_embeddings. Drops its triggers, its pending
-- jobs and its fingerprints; leaves the embeddings in the table. Raises when
-- the table is not attached (under that embedding column).
create or replace function util.disable_embeddings(
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
  select n.nspname, c.relname, c.relkind into rel
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
   where c.oid = target_table;
  if rel.relkind is null or rel.relkind not in ('r', 'p') then
    raise exception 'autoembed: % is not a table', target_table
      using hint = 'See select * from util.embedding_status; for the attached tables.';
  end if;
  if not exists (select from util.embedding_targets t
                  where t.table_oid = target_table and t.embedding_column = disable_embeddings.embedding_column)
     and not exists (select from pg_catalog.pg_trigger g
                      where g.tgrelid = target_table
                        and g.tgname in (prefix || '_insert', prefix || '_update', prefix || '_clear')) then
    raise exception 'autoembed: % (column %) is not attached', target_table, embedding_column
      using hint = 'See select * from util.embedding_status; for the attached tables and their columns.';
  end if;
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

-------------------------------------------------------------------------------
-- Privileges
-------------------------------------------------------------------------------

-- Functions made since the first revoke (and any a create or replace reset).
revoke all on all functions in schema util from public, anon, authenticated;
revoke all on all tables in schema util from public, anon, authenticated;
revoke all on all sequences in schema util from public, anon, authenticated;
grant execute on function util.process_embeddings(int, int, int), util.reembed(regclass, name, text, int),
  util.retry_failed(regclass), util.prune_embedding_cache(bigint), util._embedding_status()
  to service_role;

-- The queue: the pipeline and service_role only. Skipped with a notice where
-- this role does not own the queue tables.
do $$
begin
  revoke all on pgmq.q_embedding_jobs, pgmq.a_embedding_jobs from public, anon, authenticated;
exception when insufficient_privilege then
  raise notice 'autoembed: privileges on the embedding_jobs queue tables left as they are (%)', sqlerrm;
end
$$;

-- pg_net: see the header. Skipped with a notice where this role may not.
do $$
begin
  if not exists (select from pg_catalog.pg_namespace n
                  where n.nspname = 'net' and pg_catalog.pg_has_role(n.nspowner, 'USAGE')) then
    raise notice 'autoembed: pg_net privileges left as its owner set them'
      using hint = 'Who may read net.http_request_queue (it holds the embed bearer secret) is the platform''s decision here.';
    return;
  end if;
  revoke all on all tables in schema net from public, anon, authenticated;
  revoke all on all sequences in schema net from public, anon, authenticated;
  revoke all on all functions in schema net from public, anon, authenticated;
exception when insufficient_privilege then
  raise notice 'autoembed: pg_net privileges left as they are (%)', sqlerrm
    using hint = 'The platform owns pg_net here; its grants decide who may read net.http_request_queue.';
end
$$;
