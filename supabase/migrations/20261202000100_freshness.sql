-- autoembed: fresh for every cause of staleness (text, preprocessing, model)
-- at a fraction of the storage. Intent, item by item:
--
-- * Preprocessing changes repair themselves. Each target records a hash of
--   its content function's definition (util._content_definition). Every
--   util.process_embeddings tick and every worker poll calls
--   util.maintain_embeddings, which compares it (one catalog read per target)
--   and, on a change (`create or replace function`, `alter function ... set`),
--   starts a *sweep* of the table: rows are visited in primary-key slices of
--   sweep_slice_rows (default 10,000), only while the queue is short, and a
--   row is enqueued only when its text no longer hashes to its fingerprint
--   (or it has no embedding). Unchanged texts cost no job and no provider
--   call. The same sweep serves backfills (enable_embeddings), rechecks
--   (util.refresh_embeddings, util.reembed without a model) and model
--   changes, so no call puts a million messages in one transaction.
--   Limit: a change in a function the content function *calls* is not
--   detected; util.refresh_embeddings(table) rechecks by hand.
--
-- * Model changes never mix models in the live column (I7).
--   util.reembed(table, model => ..., dimensions => ...) adds a shadow
--   column `_autoembed_next_<target id>` of the new size with a twin of every
--   index on the live column, registers it as a *shadow target* of the live
--   one, and sweeps it. The core applies every job to the live target and to
--   its shadow, so the live column keeps serving, and stays fresh under, the
--   old model while the new one fills the shadow. When the sweep is done and
--   no row has a live vector without a shadow one, util.maintain_embeddings
--   switches in one transaction under a brief ACCESS EXCLUSIVE lock: the old
--   column is dropped, the shadow renamed to the user's column name, its
--   index twins to the user's index names, and the shadow target becomes the
--   live target (the old one is retired and its fingerprints deleted in
--   slices afterwards). util.cancel_reembed drops the shadow column and its
--   target, leaving nothing behind. Fingerprints no longer carry a model: a
--   target's fingerprints are always of the target's model.
--
-- * No second copy of every embedding (I11). util.embedding_cache (a full
--   copy of every vector) is dropped with util.prune_embedding_cache and its
--   cron job. "Text embedded once is never paid for again" now comes from
--   the embeddings that exist: a fingerprint with the same text hash in any
--   target of the same model and dimensions points at a vector to copy (a
--   hash index on content_hash finds it). Deleting rows deletes their
--   fingerprints (enable_embeddings adds a statement-level delete trigger).
--
-- * util.enable_embeddings prints nothing on success (no "trigger does not
--   exist, skipping" notices) and, called again with another model or
--   dimensions, changes the model through util.reembed instead of relabelling
--   the live column. Calling it again without a model keeps the target's
--   model (it used to reset it to default_model).

-------------------------------------------------------------------------------
-- Settings
-------------------------------------------------------------------------------
delete from util.settings where name = 'cache_max_rows';
insert into util.settings (name, value, description) values
  ('sweep_slice_rows', '10000',
   'rows a backfill, recheck or model change visits per step; a step runs only while the queue holds fewer jobs');

-------------------------------------------------------------------------------
-- Targets: content definition, sweeps, shadows
-------------------------------------------------------------------------------
alter table util.embedding_targets
  -- sha256 of the content function's definition when it was last checked
  add column content_definition bytea,
  -- when a change of that definition was last detected
  add column content_changed_at timestamptz,
  -- a shadow target: the live target whose model change it builds
  add column shadow_of int references util.embedding_targets (id) on delete cascade,
  -- sweep in progress since (null: none)
  add column sweep_started_at timestamptz,
  -- last primary key value (as text) the sweep visited; null: from the start
  add column sweep_after text,
  add column sweep_checked bigint not null default 0,
  add column sweep_enqueued bigint not null default 0,
  -- a live target replaced by its shadow: its fingerprints are being deleted
  add column retired_at timestamptz;
create unique index embedding_targets_one_shadow on util.embedding_targets (shadow_of);

-- internal: a fingerprint of a function's whole definition (body, language,
-- volatility, SET options), to notice create or replace / alter function.
create function util._content_definition(fn regprocedure)
returns bytea
language sql
stable
set search_path = ''
as $$ select pg_catalog.sha256(pg_catalog.convert_to(pg_catalog.pg_get_functiondef(fn), 'UTF8')) $$;

-- internal: the content function a target names, resolved now (null when it
-- no longer exists under that name).
create function util._content_function_of(t util.embedding_targets)
returns regprocedure
language sql
stable
set search_path = ''
as $$
  select pg_catalog.to_regprocedure(pg_catalog.format('%I.%I(%s)', t.content_function_schema,
           t.content_function_name, c.reltype::regtype))
    from pg_catalog.pg_class c where c.oid = t.table_oid
$$;

update util.embedding_targets t
   set content_definition = util._content_definition(util._content_function_of(t));

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
       pg_catalog.quote_ident(t.embedding_column) as embedding_sql,
       pg_catalog.format_type(emb.atttypid, emb.atttypmod) as embedding_type_sql,
       pg_catalog.format('%I.%I', t.content_function_schema, t.content_function_name) as content_function_sql,
       t.shadow_of
  from util.embedding_targets t
  join pg_catalog.pg_class c on c.oid = t.table_oid
  join pg_catalog.pg_namespace n on n.oid = c.relnamespace
  join pg_catalog.pg_attribute pk on pk.attrelid = t.table_oid and pk.attname = t.pk_column
  join pg_catalog.pg_attribute emb on emb.attrelid = t.table_oid and emb.attname = t.embedding_column
 where t.retired_at is null;

-------------------------------------------------------------------------------
-- Fingerprints without a model; the cache goes
-------------------------------------------------------------------------------

-- Rows embedded by another model than their target's (an in-place model
-- change of the old util.reembed, unfinished) have no proof of freshness
-- any more: their fingerprints go, and their targets are swept below.
create temp table _autoembed_unproven on commit drop as
select distinct f.target_id
  from util.embedding_fingerprints f join util.embedding_targets t on t.id = f.target_id
 where f.model <> t.model;
delete from util.embedding_fingerprints f
 using util.embedding_targets t
 where t.id = f.target_id and f.model <> t.model;
alter table util.embedding_fingerprints drop column model;
-- "Has this text been embedded by this model anywhere?" (hash: 4 bytes a row).
create index embedding_fingerprints_content_hash on util.embedding_fingerprints using hash (content_hash);

do $$
begin
  if pg_catalog.to_regnamespace('cron') is not null then
    perform cron.unschedule(j.jobid) from cron.job j where j.jobname = 'prune-embedding-cache';
  end if;
end
$$;
drop function util.prune_embedding_cache(bigint);
drop table util.embedding_cache;

-------------------------------------------------------------------------------
-- Sweeps
-------------------------------------------------------------------------------

-- internal: the job message (without its row id) that names live target
-- `live_id` as its triggers would.
create function util._job_base(live_id int)
returns jsonb
language sql
stable
set search_path = ''
as $$
  select jsonb_build_object('schema', n.nspname, 'table', c.relname,
                            'contentFunction', t.content_function, 'embeddingColumn', t.embedding_column)
    from util.embedding_targets t
    join pg_catalog.pg_class c on c.oid = t.table_oid
    join pg_catalog.pg_namespace n on n.oid = c.relnamespace
   where t.id = live_id
$$;

-- internal: one step of target `target_id`'s sweep: visits up to `max_rows`
-- rows after the cursor in primary-key order and enqueues a job (naming the
-- live target, as the triggers do) for each row whose embedding is missing
-- or whose text no longer hashes to its fingerprint. The content function
-- runs only for rows that have a fingerprint to compare. Ends the sweep when
-- the table is exhausted. Returns the jobs enqueued.
create function util._sweep_step(target_id int, max_rows int)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  t util.embedding_targets;
  c record;
  job jsonb;
  visited bigint;
  last_key text;
  enqueued bigint;
  scan text;
begin
  select * into t from util.embedding_targets x where x.id = target_id;
  select * into c from util._target_config x where x.id = target_id;
  if c.id is null or t.sweep_started_at is null then
    return 0;
  end if;
  job := util._job_base(coalesce(t.shadow_of, t.id));
  scan := pg_catalog.format(
    'with slice as (
       select r.%1$s as key, r.%2$s is null as unembedded, r as source
         from %3$s r
        where $1::text is null or r.%1$s > $1::%4$s
        order by r.%1$s
        limit $2
     ), picked as (
       select s.key from slice s
         left join util.embedding_fingerprints f on f.target_id = $3 and f.row_id = s.key::text
        where case when s.unembedded or f.row_id is null then true
                   else f.content_hash is distinct from util._content_hash(%5$s(s.source)) end
     ), queued as (
       insert into pgmq.q_embedding_jobs (vt, message)
       select pg_catalog.clock_timestamp(), $4 || jsonb_build_object(''id'', p.key) from picked p
       returning 1
     )
     select (select count(*) from slice),
            (select s.key::text from slice s order by s.key desc limit 1),
            (select count(*) from queued)',
    c.pk_sql, c.embedding_sql, c.table_sql, c.pk_type_sql, c.content_function_sql);
  begin
    execute scan into visited, last_key, enqueued using t.sweep_after, max_rows, t.id, job;
  exception when others then
    -- The content function raises for some row of the slice: enqueue the
    -- whole slice instead; the core isolates that row and records its error.
    execute pg_catalog.replace(scan, 'else f.content_hash is distinct from', 'else true or f.content_hash is distinct from')
      into visited, last_key, enqueued using t.sweep_after, max_rows, t.id, job;
  end;
  update util.embedding_targets x
     set sweep_after = case when visited < max_rows then null else last_key end,
         sweep_started_at = case when visited < max_rows then null else x.sweep_started_at end,
         sweep_checked = x.sweep_checked + visited,
         sweep_enqueued = x.sweep_enqueued + enqueued
   where x.id = target_id;
  if enqueued > 0 then
    perform pg_catalog.pg_notify('embedding_jobs', '');
  end if;
  return enqueued;
end
$$;

-- internal: starts (or restarts) a sweep of target `target_id` and runs its
-- first step now, so small tables are enqueued at once. Returns the jobs
-- enqueued by that first step.
create function util._start_sweep(target_id int)
returns bigint
language plpgsql
set search_path = ''
as $$
begin
  update util.embedding_targets x
     set sweep_started_at = now(), sweep_after = null, sweep_checked = 0, sweep_enqueued = 0
   where x.id = target_id;
  return util._sweep_step(target_id, util._setting('sweep_slice_rows')::int);
end
$$;

-------------------------------------------------------------------------------
-- Model changes: shadow column, index twins, switch, cancel
-------------------------------------------------------------------------------

-- internal: the name of the twin (on the shadow of target `shadow_id`) of
-- the user's index `index_name`; renamed to `index_name` at the switch.
create function util._twin_name(shadow_id int, index_name name)
returns name
language sql
immutable
set search_path = ''
as $$ select ('_autoembed_' || shadow_id || '_' || pg_catalog.md5(index_name))::name $$;

-- internal: creates on the shadow column of `shadow_id` a twin of every
-- index on the live column that has none yet (same access method, operator
-- class and storage options). Raises for an index the twin cannot copy
-- (several columns, an expression, a predicate), before anything changed.
create function util._twin_indexes(shadow_id int)
returns int
language plpgsql
set search_path = ''
as $$
declare
  s util.embedding_targets;
  l util.embedding_targets;
  live_attnum int2;
  ix record;
  made int := 0;
begin
  select * into s from util.embedding_targets where id = shadow_id;
  select * into l from util.embedding_targets where id = s.shadow_of;
  select a.attnum into live_attnum from pg_catalog.pg_attribute a
   where a.attrelid = l.table_oid and a.attname = l.embedding_column;
  for ix in
    select ic.relname as index_name, i.indnatts, i.indkey[0] as key_attnum,
           i.indexprs is not null as has_expressions, i.indpred is not null as has_predicate,
           am.amname, oc.opcname, ocn.nspname as opc_schema, ic.reloptions
      from pg_catalog.pg_index i
      join pg_catalog.pg_class ic on ic.oid = i.indexrelid
      join pg_catalog.pg_am am on am.oid = ic.relam
      left join pg_catalog.pg_opclass oc on oc.oid = i.indclass[0]
      left join pg_catalog.pg_namespace ocn on ocn.oid = oc.opcnamespace
     where i.indrelid = l.table_oid
       and exists (select from pg_catalog.pg_depend d
                    where d.classid = 'pg_catalog.pg_class'::regclass and d.objid = i.indexrelid
                      and d.refclassid = 'pg_catalog.pg_class'::regclass and d.refobjid = l.table_oid
                      and d.refobjsubid = live_attnum)
     order by ic.relname
  loop
    if ix.indnatts <> 1 or ix.key_attnum <> live_attnum or ix.has_expressions or ix.has_predicate then
      raise exception 'autoembed: index % uses column "%" in a way a model change cannot carry over', ix.index_name, l.embedding_column
        using errcode = 'AE001',
              detail = 'Only indexes on the embedding column alone (no expression, no WHERE) get a twin on the new vectors.',
              hint = format('Drop %I for the change and create it again afterwards.', ix.index_name);
    end if;
    if not exists (select from pg_catalog.pg_class x
                    where x.relname = util._twin_name(shadow_id, ix.index_name)
                      and x.relnamespace = (select relnamespace from pg_catalog.pg_class where oid = l.table_oid)) then
      execute pg_catalog.format('create index %I on %s using %I (%I %s) %s',
        util._twin_name(shadow_id, ix.index_name), l.table_oid, ix.amname, s.embedding_column,
        pg_catalog.format('%I.%I', ix.opc_schema, ix.opcname),
        case when ix.reloptions is null then ''
             else 'with (' || pg_catalog.array_to_string(ix.reloptions, ', ') || ')' end);
      made := made + 1;
    end if;
  end loop;
  return made;
end
$$;

-- internal: switches live target `live_id` to its shadow when the shadow is
-- complete: its sweep is done and no row has a live vector without a shadow
-- one. One transaction, under an ACCESS EXCLUSIVE lock taken with a short
-- lock_timeout (a busy table is tried again at the next tick): the live
-- column is dropped (with its indexes), the shadow column takes its name and
-- the index twins their names, and the shadow target becomes the live one.
-- Readers see the old model before and the new one after, never a mix.
-- Returns whether it switched; when the drop is refused (a view depends on
-- the column), the reason goes to util.embedding_errors, once an hour.
create function util._switch_model(live_id int)
returns boolean
language plpgsql
set search_path = ''
as $$
declare
  l util.embedding_targets;
  s util.embedding_targets;
  unmatched boolean;
  saved_timeout text := pg_catalog.current_setting('lock_timeout');
  index_names name[];
  index_name name;
  problem text;
begin
  select * into l from util.embedding_targets where id = live_id;
  select * into s from util.embedding_targets where shadow_of = live_id;
  if s.id is null or s.sweep_started_at is not null then
    return false;
  end if;
  -- Checked before the lock too, so an unfinished change costs no lock.
  execute pg_catalog.format('select exists (select from %s r where r.%I is not null and r.%I is null)',
                            l.table_oid, l.embedding_column, s.embedding_column)
    into unmatched;
  if unmatched then
    return false;
  end if;
  -- Indexes made on the live column since the change began get their twin now.
  perform util._twin_indexes(s.id);
  begin
    perform pg_catalog.set_config('lock_timeout', '500ms', true);
    execute pg_catalog.format('lock table %s in access exclusive mode', l.table_oid);
    perform pg_catalog.set_config('lock_timeout', saved_timeout, true);
    execute pg_catalog.format('select exists (select from %s r where r.%I is not null and r.%I is null)',
                              l.table_oid, l.embedding_column, s.embedding_column)
      into unmatched;
    if unmatched then
      return false;
    end if;
    select pg_catalog.array_agg(ic.relname order by ic.relname) into index_names
      from pg_catalog.pg_index i
      join pg_catalog.pg_class ic on ic.oid = i.indexrelid
      join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0]
     where i.indrelid = l.table_oid and i.indnatts = 1 and a.attname = l.embedding_column;
    execute pg_catalog.format('alter table %s drop column %I', l.table_oid, l.embedding_column);
    execute pg_catalog.format('alter table %s rename column %I to %I', l.table_oid, s.embedding_column, l.embedding_column);
    foreach index_name in array coalesce(index_names, '{}') loop
      execute pg_catalog.format('alter index %I.%I rename to %I',
        (select n.nspname from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
          where c.oid = l.table_oid),
        util._twin_name(s.id, index_name), index_name);
    end loop;
    update util.embedding_targets t
       set embedding_column = ('_autoembed_retired_' || t.id)::name, retired_at = now(),
           sweep_started_at = null
     where t.id = l.id;
    update util.embedding_targets t
       set embedding_column = l.embedding_column, shadow_of = null,
           content_changed_at = coalesce(l.content_changed_at, t.content_changed_at)
     where t.id = s.id;
    return true;
  exception
    when lock_not_available then
      perform pg_catalog.set_config('lock_timeout', saved_timeout, true);
      return false;
    when others then
      perform pg_catalog.set_config('lock_timeout', saved_timeout, true);
      problem := pg_catalog.format('the switch to model %s is waiting: %s', s.model, sqlerrm);
      if not exists (select from util.embedding_errors e
                      where e.target_id = l.id and e.error = problem and e.created_at > now() - interval '1 hour') then
        insert into util.embedding_errors (target_id, table_name, retryable, error)
        values (l.id, l.table_oid::text, true,
                problem || case when sqlstate = '2BP01'
                                then ' (drop or change what depends on the column; the switch retries every tick)'
                                else '' end);
      end if;
      return false;
  end;
end
$$;

-- internal: the live target of (table, column), or raises like the public
-- functions that take them.
create function util._live_target(target_table regclass, embedding_column name)
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

-- public: cancels a model change of (table, column) started by
-- util.reembed: drops the shadow column (and its index twins) and its
-- bookkeeping. The live column is untouched. Returns whether there was one.
create function util.cancel_reembed(
  target_table regclass,
  embedding_column name default 'embedding'
)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  l util.embedding_targets := util._live_target(target_table, embedding_column);
  s util.embedding_targets;
begin
  select * into s from util.embedding_targets where shadow_of = l.id;
  if s.id is null then
    return false;
  end if;
  if exists (select from pg_catalog.pg_attribute a
              where a.attrelid = l.table_oid and a.attname = s.embedding_column and not a.attisdropped) then
    execute pg_catalog.format('alter table %s drop column %I', l.table_oid, s.embedding_column);
  end if;
  delete from util.embedding_targets where id = s.id;
  return true;
end
$$;

-- public: re-embeds a table in the background.
--   * With a model or dimensions other than the table's: builds the new
--     model's embeddings beside the live column (a shadow column with twins
--     of its indexes), keeps the live column on the old model and fresh, and
--     switches atomically when the new model covers every row (see
--     util.embedding_status: next_model, next_embedded). Calling it again with
--     the same model is a no-op; with another, it replaces the change in
--     progress; with the table's own model, it cancels it.
--   * Without: rechecks every row, enqueueing those whose embedding is
--     missing or whose text changed (as after a content function change).
-- Returns the jobs enqueued now; the rest follow in slices.
create or replace function util.reembed(
  target_table regclass,
  embedding_column name default 'embedding',
  model text default null,
  dimensions int default null
)
returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
  l util.embedding_targets := util._live_target(target_table, embedding_column);
  s util.embedding_targets;
  col record;
  shadow_column name := ('_autoembed_next_' || l.id)::name;
  shadow_id int;
begin
  if model is not null and (pg_catalog.btrim(model) = '' or pg_catalog.length(model) > 200) then
    raise exception 'autoembed: "%" is not a model name', pg_catalog.left(model, 200)
      using errcode = 'AE003', hint = 'Name the provider''s model, e.g. text-embedding-3-small, or a local-* model.';
  end if;
  if dimensions is not null and (dimensions < 1 or dimensions > 16000) then
    raise exception 'autoembed: dimensions must be between 1 and 16000, got %', dimensions
      using errcode = 'AE003', hint = 'Pass the model''s vector size, e.g. dimensions => 1536.';
  end if;
  select * into s from util.embedding_targets x where x.shadow_of = l.id;
  if model is not null or dimensions is not null then
    model := coalesce(model, l.model);
    dimensions := coalesce(dimensions, l.dimensions);
  end if;

  if model is null or (model = l.model and dimensions = l.dimensions) then
    if model is not null then
      perform util.cancel_reembed(target_table, embedding_column);
    end if;
    if s.id is not null and model is null then
      perform util._start_sweep(s.id);
    end if;
    return util._start_sweep(l.id);
  end if;
  if s.id is not null then
    if s.model = model and s.dimensions = dimensions then
      return 0;
    end if;
    perform util.cancel_reembed(target_table, embedding_column);
  end if;

  select t.typname, tn.nspname into col
    from pg_catalog.pg_attribute a
    join pg_catalog.pg_type t on t.oid = a.atttypid
    join pg_catalog.pg_namespace tn on tn.oid = t.typnamespace
   where a.attrelid = l.table_oid and a.attname = l.embedding_column;
  execute pg_catalog.format('alter table %s add column %I %I.%I(%s)',
                            l.table_oid, shadow_column, col.nspname, col.typname, dimensions);
  shadow_id := util._register_target(target_table, l.content_function, shadow_column, model, dimensions);
  update util.embedding_targets x set shadow_of = l.id where x.id = shadow_id;
  perform util._twin_indexes(shadow_id);
  return util._start_sweep(shadow_id);
end
$$;

-- public: rechecks every row of (table, column) and re-embeds those whose
-- text changed, e.g. after changing a function that the content function
-- calls (changes of the content function itself are noticed without it).
-- Returns the jobs enqueued now; the rest follow in slices.
create function util.refresh_embeddings(
  target_table regclass,
  embedding_column name default 'embedding'
)
returns bigint
language sql
security definer
set search_path = ''
as $$ select util.reembed(target_table, embedding_column) $$;

-------------------------------------------------------------------------------
-- Maintenance: one call per tick and per worker poll
-------------------------------------------------------------------------------

-- public: the pipeline's background work, cheap when there is none:
--   1. notices content functions whose definition changed and starts a
--      sweep of their targets (I10);
--   2. advances every sweep by one slice while the queue holds fewer than
--      sweep_slice_rows jobs;
--   3. switches finished model changes (I7);
--   4. deletes fingerprints of retired targets in slices.
-- util.process_embeddings calls it on every tick; the worker on every poll.
-- Concurrent callers skip the targets another one is working on. Returns
-- the jobs it enqueued.
create function util.maintain_embeddings()
returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
  slice int := util._setting('sweep_slice_rows')::int;
  t record;
  enqueued bigint := 0;
  queued bigint;
  retired int;
begin
  -- 1. Definitions: one catalog lookup per target.
  for t in
    select x.id, x.shadow_of from util.embedding_targets x
     where x.retired_at is null
       and x.content_definition is distinct from util._content_definition(util._content_function_of(x))
     for update skip locked
  loop
    update util.embedding_targets x
       set content_definition = util._content_definition(util._content_function_of(x)),
           content_changed_at = now()
     where x.id = t.id;
    enqueued := enqueued + util._start_sweep(t.id);
  end loop;

  -- 2. Sweeps, while the queue is short (counted up to the slice size only).
  for t in
    select x.id from util.embedding_targets x
     where x.sweep_started_at is not null and x.retired_at is null
     order by x.sweep_started_at
     for update skip locked
  loop
    select count(*) into queued from (select from pgmq.q_embedding_jobs limit slice) q;
    exit when queued >= slice;
    enqueued := enqueued + util._sweep_step(t.id, slice);
  end loop;

  -- 3. Finished model changes.
  for t in
    select x.shadow_of as live_id from util.embedding_targets x
     where x.shadow_of is not null and x.sweep_started_at is null
     for update skip locked
  loop
    perform util._switch_model(t.live_id);
  end loop;

  -- 4. Retired targets' fingerprints, then the targets.
  for t in select x.id from util.embedding_targets x where x.retired_at is not null for update skip locked loop
    delete from util.embedding_fingerprints f
     where f.ctid = any (array(select g.ctid from util.embedding_fingerprints g
                                where g.target_id = t.id limit 50000));
    get diagnostics retired = row_count;
    if retired < 50000 then
      delete from util.embedding_targets x where x.id = t.id;
    end if;
  end loop;
  return enqueued;
end
$$;

-------------------------------------------------------------------------------
-- Registration
-------------------------------------------------------------------------------

-- internal: validates and records a target. Raises with message/detail/hint on
-- anything that would make the pipeline fail later. Returns the target id.
-- An existing target keeps its model and dimensions unless they are given
-- (model changes of a live target go through util.reembed); a new one
-- records its content function's definition, so later changes are noticed.
create or replace function util._register_target(
  target_table regclass,            -- the user's table
  content_function text,            -- function taking the table's row and returning text
  embedding_column name,            -- vector/halfvec column to fill
  model text default null,          -- null: the target's model, else util.settings default_model
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

  select a.attname, a.atttypmod, t.typname
    into col
    from pg_catalog.pg_attribute a join pg_catalog.pg_type t on t.oid = a.atttypid
   where a.attrelid = target_table and a.attname = embedding_column and a.attnum > 0 and not a.attisdropped;
  if col.attname is null then
    raise exception 'autoembed: column "%" does not exist on %', embedding_column, target_table
      using errcode = 'AE003',
            hint = format('Add it first, e.g. alter table %s add column %I halfvec(1536);', target_table, embedding_column);
  end if;
  if col.typname not in ('vector', 'halfvec') then
    raise exception 'autoembed: column "%" of % has type %, expected vector or halfvec', embedding_column, target_table, col.typname
      using errcode = 'AE003', hint = 'Use a pgvector halfvec(N) or vector(N) column.';
  end if;
  if dimensions is not null and dimensions < 1 then
    raise exception 'autoembed: dimensions must be a positive number, got %', dimensions
      using errcode = 'AE003',
            hint = 'Pass the model''s vector size, e.g. dimensions => 1536, or leave it to the column''s declaration.';
  end if;
  declared := nullif(col.atttypmod, -1);
  if dimensions is null then
    dimensions := declared;
  elsif declared is not null and declared <> dimensions then
    raise exception 'autoembed: column "%" of % holds % dimensions, not %', embedding_column, target_table, declared, dimensions
      using errcode = 'AE003',
            hint = format('Change the column first: alter table %s alter column %I type %s(%s); or, to move an attached table '
                          'to another model or size, use util.reembed(%L, %L, model => ..., dimensions => %s).',
                          target_table, embedding_column, col.typname, dimensions, target_table::text, embedding_column, dimensions);
  end if;
  if dimensions is null then
    raise exception 'autoembed: column "%" of % has no declared dimensions', embedding_column, target_table
      using errcode = 'AE003', hint = 'Declare them (halfvec(1536)) or pass dimensions.';
  end if;

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
      using errcode = 'AE003',
            detail = 'The content function takes one argument, a row of the table, and returns text.',
            hint = format('create function %s(r %s) returns text language sql immutable as $f$ select r.title || '' '' || r.content $f$;', content_function, target_table);
  end if;
  select n.nspname, p.proname, p.prokind, p.proretset, p.prorettype into fn
    from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
   where p.oid = fn_oid;
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
   where t.table_oid = target_table and t.embedding_column = _register_target.embedding_column;
  model := coalesce(model, existing.model, util._setting('default_model'));
  if pg_catalog.btrim(model) = '' or pg_catalog.length(model) > 200 then
    raise exception 'autoembed: "%" is not a model name', pg_catalog.left(model, 200)
      using errcode = 'AE003',
            hint = 'Name the provider''s model, e.g. text-embedding-3-small, or a local-* model.';
  end if;

  if existing.id is not null then
    -- A new content function is noticed by util.maintain_embeddings, which
    -- compares content_definition and rechecks the rows.
    update util.embedding_targets t
       set content_function = _register_target.content_function,
           content_function_schema = fn.nspname,
           content_function_name = fn.proname,
           pk_column = pk,
           model = _register_target.model,
           dimensions = _register_target.dimensions
     where t.id = existing.id;
    -- A model change in progress builds from the same text.
    update util.embedding_targets t
       set content_function = _register_target.content_function,
           content_function_schema = fn.nspname,
           content_function_name = fn.proname,
           pk_column = pk
     where t.shadow_of = existing.id;
    return existing.id;
  end if;
  insert into util.embedding_targets
    (table_oid, embedding_column, pk_column, content_function, content_function_schema, content_function_name,
     model, dimensions, content_definition)
  values
    (target_table, embedding_column, pk, content_function, fn.nspname, fn.proname, model, dimensions,
     util._content_definition(fn_oid::regprocedure))
  returning id into target_id;
  return target_id;
end
$$;

-------------------------------------------------------------------------------
-- Detect: deletes take their fingerprints along
-------------------------------------------------------------------------------

-- public trigger: enqueues embedding jobs. Arguments: content function name,
-- embedding column name (as in the Supabase guide). Works as
--   * a row-level trigger (the guide's form): one message per row; on UPDATE
--     only when the content function's text changed;
--   * a statement-level trigger with transition tables named new_rows (and
--     old_rows for UPDATE and DELETE), as util.enable_embeddings creates it:
--     one insert into the queue per statement, however many rows.
-- On DELETE (row level, or statement level with old_rows) and TRUNCATE it
-- deletes the fingerprints of the rows that went, so the bookkeeping stays
-- as small as the table. Must fire AFTER: as a BEFORE trigger its NULL
-- result would cancel the user's write. Since 20261125000300 it inserts into
-- the queue table itself, as pgmq.send would (see that migration's header).
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
      delete from util.embedding_fingerprints f
       where f.target_id in (select t.id from util.embedding_targets t
                              where t.id = target.id or t.shadow_of = target.id);
    elsif tg_level = 'ROW' then
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
  -- job. The part of the message that is the same for every row is built once.
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
      -- path), a row whose text cannot be built counting as changed.
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

-- internal: drops trigger `trigger_name` of `target_table` when it exists
-- (drop trigger if exists would print a notice when it does not).
create function util._drop_trigger(target_table regclass, trigger_name name)
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

-- public: attaches the pipeline to a table in one call. Creates statement
-- level insert/update/delete triggers (one queue call per statement, however
-- many rows), optionally the clear trigger, records the configuration and
-- starts a backfill of the existing rows (the first slice is enqueued now,
-- the rest in the background). Returns the jobs enqueued now. Safe to call
-- again: with another model or dimensions it starts a model change
-- (util.reembed) instead of relabelling the live column. Everything it
-- creates is created by this one statement, so an error leaves nothing.
-- Prints nothing on success.
create or replace function util.enable_embeddings(
  target_table regclass,                      -- the table to keep embedded
  content_function text,                      -- f(row of target_table) returns text
  embedding_column name default 'embedding',  -- vector/halfvec column to fill
  model text default null,                    -- default: the target's, else util.settings default_model
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
  existing util.embedding_targets;
  change_model boolean;
begin
  -- Longer names would be cut to 63 bytes, and the triggers' names collide.
  if pg_catalog.octet_length(prefix || '_insert') > 63 then
    raise exception 'autoembed: the embedding column name "%" is too long for the trigger names', embedding_column
      using errcode = 'AE003',
            detail = 'The triggers are named embed_<column>_insert, _update and _delete, at most 63 bytes.',
            hint = 'Rename the column (50 bytes at most), or create util.queue_embeddings triggers by hand.';
  end if;
  select * into existing from util.embedding_targets t
   where t.table_oid = target_table and t.embedding_column = enable_embeddings.embedding_column
     and t.shadow_of is null and t.retired_at is null;
  change_model := existing.id is not null
    and (model is distinct from null and model <> existing.model
         or dimensions is distinct from null and dimensions <> existing.dimensions);
  if change_model then
    target_id := util._register_target(target_table, content_function, embedding_column);
  else
    target_id := util._register_target(target_table, content_function, embedding_column, model, dimensions);
  end if;
  perform util._drop_trigger(target_table, (prefix || '_insert')::name);
  perform util._drop_trigger(target_table, (prefix || '_update')::name);
  perform util._drop_trigger(target_table, (prefix || '_delete')::name);
  perform util._drop_trigger(target_table, (prefix || '_clear')::name);
  execute format(
    'create trigger %I after insert on %s referencing new table as new_rows
       for each statement execute function util.queue_embeddings(%L, %L)',
    prefix || '_insert', target_table, content_function, embedding_column);
  execute format(
    'create trigger %I after update on %s referencing old table as old_rows new table as new_rows
       for each statement execute function util.queue_embeddings(%L, %L)',
    prefix || '_update', target_table, content_function, embedding_column);
  execute format(
    'create trigger %I after delete on %s referencing old table as old_rows
       for each statement execute function util.queue_embeddings(%L, %L)',
    prefix || '_delete', target_table, content_function, embedding_column);
  if clear_on_change then
    execute format(
      'create trigger %I before update on %s
         for each row execute function util.clear_column(%L, %L)',
      prefix || '_clear', target_table, embedding_column, content_function);
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
-- not attached (under that embedding column).
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
      using errcode = 'AE003', hint = 'See select * from util.embedding_status; for the attached tables.';
  end if;
  if not exists (select from util.embedding_targets t
                  where t.table_oid = target_table and t.embedding_column = disable_embeddings.embedding_column)
     and not exists (select from pg_catalog.pg_trigger g
                      where g.tgrelid = target_table
                        and g.tgname in (prefix || '_insert', prefix || '_update', prefix || '_delete', prefix || '_clear')) then
    raise exception 'autoembed: % (column %) is not attached', target_table, embedding_column
      using errcode = 'AE002',
            hint = 'See select * from util.embedding_status; for the attached tables and their columns.';
  end if;
  if exists (select from util.embedding_targets t
              where t.table_oid = target_table and t.embedding_column = disable_embeddings.embedding_column
                and t.shadow_of is null) then
    perform util.cancel_reembed(target_table, embedding_column);
  end if;
  perform util._drop_trigger(target_table, (prefix || '_insert')::name);
  perform util._drop_trigger(target_table, (prefix || '_update')::name);
  perform util._drop_trigger(target_table, (prefix || '_delete')::name);
  perform util._drop_trigger(target_table, (prefix || '_clear')::name);
  delete from pgmq.q_embedding_jobs q
   where q.message ->> 'schema' = rel.nspname and q.message ->> 'table' = rel.relname
     and q.message ->> 'embeddingColumn' = embedding_column;
  delete from util.embedding_targets t
   where t.table_oid = target_table and t.embedding_column = disable_embeddings.embedding_column;
end
$$;

drop function util._enqueue_missing(int);

-- Tables attached by an earlier util.enable_embeddings get its delete trigger.
do $$
declare
  t record;
begin
  for t in
    select x.table_oid, x.content_function, x.embedding_column
      from util.embedding_targets x
     where exists (select from pg_catalog.pg_trigger g
                    where g.tgrelid = x.table_oid and g.tgname = 'embed_' || x.embedding_column || '_insert')
       and not exists (select from pg_catalog.pg_trigger g
                        where g.tgrelid = x.table_oid and g.tgname = 'embed_' || x.embedding_column || '_delete')
  loop
    execute format(
      'create trigger %I after delete on %s referencing old table as old_rows
         for each statement execute function util.queue_embeddings(%L, %L)',
      'embed_' || t.embedding_column || '_delete', t.table_oid, t.content_function, t.embedding_column);
  end loop;
end
$$;

-- Targets whose unproven fingerprints went above are rechecked.
select util._start_sweep(u.target_id) from _autoembed_unproven u;

-------------------------------------------------------------------------------
-- Schedule: util.process_embeddings runs util.maintain_embeddings first on
-- every tick; it is re-declared once, with that and the push recovery, in
-- 20261202000200_push_recovery.sql.
-------------------------------------------------------------------------------

-------------------------------------------------------------------------------
-- Diagnose
-------------------------------------------------------------------------------

drop view util.embedding_status;
drop function util._embedding_status();

-- internal: per-target figures behind util.embedding_status (live targets;
-- a model change in progress shows in the next_* columns of its table).
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
  last_error_at timestamptz,
  content_changed_at timestamptz,
  sweep_started_at timestamptz,
  sweep_checked bigint,
  next_model text,
  next_dimensions int,
  next_embedded bigint,
  next_started_at timestamptz
)
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  t record;
  s record;
  fingerprinted bigint;
begin
  for t in
    select c.*, x.content_changed_at, x.sweep_started_at, x.sweep_checked, x.created_at
      from util._target_config c join util.embedding_targets x on x.id = c.id
     where c.shadow_of is null
     order by c.schema_name, c.table_name, c.embedding_column
  loop
    schema_name := t.schema_name;
    table_name := t.table_name;
    embedding_column := t.embedding_column;
    model := t.model;
    dimensions := t.dimensions;
    content_changed_at := t.content_changed_at;
    sweep_started_at := t.sweep_started_at;
    sweep_checked := case when t.sweep_started_at is not null then t.sweep_checked end;
    begin
      execute format(
        'select count(*),
                count(*) filter (where r.%2$s is not null),
                count(*) filter (where r.%2$s is null and coalesce(x.content, '''') !~ ''^[[:space:]]*$''),
                count(*) filter (where r.%2$s is not null and (f.row_id is null
                                   or f.content_hash <> util._content_hash(x.content)))
           from %1$s r
           cross join lateral (select %3$s(r) as content) x
           left join util.embedding_fingerprints f on f.target_id = $1 and f.row_id = r.%4$s::text',
        t.table_sql, t.embedding_sql, t.content_function_sql, t.pk_sql)
        into total_rows, embedded, missing, stale using t.id;
    exception when others then
      -- A content function that raises for some row must not take status
      -- down: count without it (missing then includes rows without text,
      -- stale only rows without a fingerprint).
      execute format(
        'select count(*),
                count(*) filter (where r.%2$s is not null),
                count(*) filter (where r.%2$s is null),
                count(*) filter (where r.%2$s is not null and f.row_id is null)
           from %1$s r
           left join util.embedding_fingerprints f on f.target_id = $1 and f.row_id = r.%3$s::text',
        t.table_sql, t.embedding_sql, t.pk_sql)
        into total_rows, embedded, missing, stale using t.id;
    end;
    select count(*) into fingerprinted from util.embedding_fingerprints f where f.target_id = t.id;
    models := case when fingerprinted > 0 then jsonb_build_object(t.model, fingerprinted) else '{}'::jsonb end;
    select x.id, x.model, x.dimensions, x.created_at into s
      from util.embedding_targets x where x.shadow_of = t.id;
    next_model := s.model;
    next_dimensions := s.dimensions;
    next_started_at := s.created_at;
    next_embedded := case when s.id is not null
                          then (select count(*) from util.embedding_fingerprints f where f.target_id = s.id) end;
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
      from util.embedding_errors e where e.target_id in (t.id, s.id) order by e.created_at desc, e.id desc limit 1;
    return next;
  end loop;
end
$$;

-- public: one row per attached (table, embedding column): rows, embedded,
-- missing (text but no embedding), stale (embedding of other text than the
-- content function now returns), rows per model, queued / in-flight jobs,
-- oldest queued job's age, dead-lettered jobs, the last error; when the
-- content function last changed and how far a sweep (backfill, recheck) has
-- come; and a model change in progress: next_model, next_dimensions,
-- next_embedded (rows the new model holds so far), next_started_at.
create view util.embedding_status as select * from util._embedding_status();

-------------------------------------------------------------------------------
-- Privileges
-------------------------------------------------------------------------------
revoke all on all functions in schema util from public, anon, authenticated;
revoke all on all tables in schema util from public, anon, authenticated;
grant select on util.embedding_status to service_role;
grant execute on function util._embedding_status(), util.maintain_embeddings(),
  util.refresh_embeddings(regclass, name), util.cancel_reembed(regclass, name)
  to service_role;
