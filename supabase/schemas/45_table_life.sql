-- autoembed schema 45: a table's whole life. Users drop, rename, truncate
-- and recreate attached tables (in migrations, tests, resets); each leaves
-- the pipeline in a clear state:
--   * the table, its embedding column or a chunked target's side table
--     dropped: the target is retired at once (util._retire_target): its
--     triggers, the trigger function written for it, a model change in
--     progress, its queued jobs and dead letters go; a side table of chunks
--     goes with its source; the fingerprints go in slices
--     (util.maintain_embeddings). No sweep runs on what is gone.
--   * the content function dropped: decided when the transaction commits.
--     Created again meanwhile (a migration that replaces it), the target
--     stays and its rows are rechecked (I10); else it is retired the same
--     way, its table and vectors left as util.disable_embeddings leaves them.
--   * the table or its schema renamed: the target follows (its regclass
--     does), and so do its queued jobs and dead letters, which name the table.
--   * the table truncated: its triggers empty the store and drop the
--     target's jobs (30_detect); the target stays.
--   * dropped and created again (a test suite, a reset): the old target is
--     retired; the new table is attached by its own registration.
-- util.embedding_target_events records each retirement and rename.
-- Event triggers (sql_drop, ddl_command_end) act as it happens, in the
-- statement's transaction; util.maintain_embeddings (every tick and worker
-- poll) notices what they did not see (disabled, a restore, a role that
-- may not create them).

-------------------------------------------------------------------------------
-- What happened to targets (public: read it)
-------------------------------------------------------------------------------

create table if not exists util.embedding_target_events (
  id bigint generated always as identity primary key,
  -- the table the target was attached to (its oid, which a rename keeps)
  table_oid oid not null,
  -- the target as its jobs named it before the event: schema, table, and
  -- embedding column (a chunked target: its side table's name)
  schema_name text,
  table_name text,
  embedding_column text not null,
  -- retired: the pipeline let go of the target; renamed: it follows the new name
  event text not null check (event in ('retired', 'renamed')),
  -- why, in words: table dropped, embedding column dropped or renamed,
  -- destination dropped, content function dropped or renamed, renamed to <schema>.<table>
  detail text not null,
  -- retired: the queued rows and dead-lettered rows dropped with it
  jobs_dropped bigint not null default 0,
  dead_letters_dropped bigint not null default 0,
  -- 'event trigger' (as it happened) or 'maintenance' (noticed by a later tick)
  noticed_by text not null,
  happened_at timestamptz not null default now()
);
create index if not exists embedding_target_events_names
  on util.embedding_target_events (schema_name, table_name, embedding_column);

-------------------------------------------------------------------------------
-- Checks
-------------------------------------------------------------------------------

-- internal: what target `t` needs and no longer has, in words for
-- util.embedding_target_events: its table, its store (util._store_missing),
-- its content function (dropped, renamed, or moved to another schema). Null:
-- nothing is missing.
create or replace function util._target_broken_reason(t util.embedding_targets)
returns text
language sql
stable
set search_path = ''
as $$
  select case
           when not exists (select from pg_catalog.pg_class c where c.oid = t.table_oid) then 'table dropped'
           else coalesce(util._store_missing(t),
                         case when util._content_function_of(t) is null then 'content function dropped or renamed' end)
         end
$$;

-- internal: retires live target `target_id`, whose table, store or content
-- function is gone (`reason`), as noticed by `noticed_by`: drops what
-- writes to it (its triggers, the trigger function written for it), a model
-- change in progress (its shadow store), its store where it is the
-- pipeline's alone (a side table of chunks whose source is gone; one whose
-- source stays is left as util.disable_embeddings leaves it), and its
-- queued jobs and dead letters; marks it and its shadow retired (their
-- fingerprints are deleted in slices by util.maintain_embeddings, then
-- they) and records the event.
create or replace function util._retire_target(target_id int, reason text, noticed_by text)
returns void
language plpgsql
set search_path = ''
as $$
declare
  t util.embedding_targets;
  s util.embedding_targets;
  source_exists boolean;
  own_ddl text := pg_catalog.current_setting('autoembed.own_ddl', true);
  dropped record;
begin
  select * into t from util.embedding_targets x
   where x.id = target_id and x.shadow_of is null and x.retired_at is null
     for update;
  if t.id is null then
    return;
  end if;
  source_exists := exists (select from pg_catalog.pg_class c where c.oid = t.table_oid);
  -- The pipeline's own DDL, which the event triggers leave alone.
  perform pg_catalog.set_config('autoembed.own_ddl', 'on', true);
  if source_exists then
    perform util._drop_triggers(t.table_oid, t.embedding_column);
  end if;
  perform util._drop_queue_function(t.table_oid, t.embedding_column);
  for s in select * from util.embedding_targets x where x.shadow_of = t.id loop
    perform util._store_drop_shadow(t, s);
  end loop;
  perform util._store_detach(t, not source_exists);
  perform pg_catalog.set_config('autoembed.own_ddl', coalesce(own_ddl, 'off'), true);
  -- Its jobs and dead letters name the table. They go, unless a live target
  -- goes by the same names (a table of that name created and attached since),
  -- whose jobs they may be.
  if not exists (select from util.embedding_targets x
                  where x.id <> t.id and x.retired_at is null and x.shadow_of is null
                    and x.jobs_schema = t.jobs_schema and x.jobs_table = t.jobs_table
                    and x.embedding_column = t.embedding_column) then
    select * into dropped from util._forget_jobs(t.jobs_schema, t.jobs_table, t.embedding_column);
  end if;
  update util.embedding_targets x
     set retired_at = now(), embedding_column = ('_autoembed_retired_' || x.id)::name,
         sweep_started_at = null, sweep_after = null, destination = null
   where x.id = t.id or x.shadow_of = t.id;
  insert into util.embedding_target_events
    (table_oid, schema_name, table_name, embedding_column, event, detail, jobs_dropped, dead_letters_dropped,
     noticed_by)
  values (t.table_oid, t.jobs_schema, t.jobs_table, t.embedding_column, 'retired', reason,
          coalesce(dropped.queued, 0), coalesce(dropped.dead_lettered, 0), noticed_by);
end
$$;

-- internal: follows tables (and their schemas) renamed since their targets
-- last saw them: their jobs and dead letters take the new names
-- (util._rename_jobs), an event records each live target's rename, and a
-- content function in a renamed schema follows too (with the trigger
-- function written for its target, which calls it by name). Returns the
-- tables followed.
create or replace function util._follow_renames(noticed_by text)
returns int
language plpgsql
set search_path = ''
as $$
declare
  r record;
  x util.embedding_targets;
  followed int := 0;
begin
  for r in
    select distinct on (t.table_oid) t.table_oid, t.jobs_schema as old_schema, t.jobs_table as old_table,
           n.nspname as new_schema, c.relname as new_table, c.reltype
      from util.embedding_targets t
      join pg_catalog.pg_class c on c.oid = t.table_oid
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where t.retired_at is null
       and (t.jobs_schema, t.jobs_table) is distinct from (n.nspname, c.relname)
     order by t.table_oid, t.jobs_table nulls last
  loop
    if r.old_table is not null then
      perform util._rename_jobs(r.old_schema, r.old_table, r.new_schema, r.new_table);
      insert into util.embedding_target_events
        (table_oid, schema_name, table_name, embedding_column, event, detail, noticed_by)
      select r.table_oid, r.old_schema, r.old_table, t.embedding_column, 'renamed',
             pg_catalog.format('renamed to %I.%I', r.new_schema, r.new_table), noticed_by
        from util.embedding_targets t
       where t.table_oid = r.table_oid and t.retired_at is null and t.shadow_of is null;
    end if;
    update util.embedding_targets t set jobs_schema = r.new_schema, jobs_table = r.new_table
     where t.table_oid = r.table_oid and t.retired_at is null;
    for x in
      select * from util.embedding_targets t
       where t.table_oid = r.table_oid and t.retired_at is null and t.content_function_schema = r.old_schema
         and util._content_function_of(t) is null
         and pg_catalog.to_regprocedure(pg_catalog.format('%I.%I(%s)', r.new_schema, t.content_function_name,
                                                          r.reltype::regtype)) is not null
    loop
      update util.embedding_targets t set content_function_schema = r.new_schema where t.id = x.id;
      if x.shadow_of is null
         and pg_catalog.to_regprocedure(pg_catalog.format('util.%I()',
               util._queue_function_name(x.table_oid, x.embedding_column))) is not null then
        perform util._create_queue_function(x.id);
      end if;
    end loop;
    followed := followed + 1;
  end loop;
  return followed;
end
$$;

-- Content function checks made when the transaction that dropped the
-- function commits (util._check_target_at_commit): one row per check,
-- gone by the commit.
create table if not exists util._pending_target_checks (
  target_id int not null
);

-- internal: follows renamed tables (util._follow_renames), then looks at
-- every target: a live one whose table, store or content function is gone
-- is retired (util._retire_target), a model change whose shadow store was
-- dropped by hand is cancelled. A content function dropped in the event
-- trigger's own transaction is checked when it commits instead (it may be
-- created again before). A retirement that fails is reported (a warning)
-- and left to the next tick: it never fails the caller. Returns the targets
-- retired or cancelled.
create or replace function util._check_targets(noticed_by text)
returns int
language plpgsql
set search_path = ''
as $$
declare
  t util.embedding_targets;
  reason text;
  acted int := 0;
begin
  perform util._follow_renames(noticed_by);
  for t in
    select * from util.embedding_targets x where x.retired_at is null order by x.shadow_of nulls first, x.id
  loop
    reason := util._target_broken_reason(t);
    continue when reason is null;
    if t.shadow_of is not null then
      if util._store_missing(t) is not null then
        delete from util.embedding_targets x where x.id = t.id and x.retired_at is null;
        acted := acted + 1;
      end if;
    elsif reason like 'content function%' and noticed_by = 'event trigger' then
      insert into util._pending_target_checks (target_id) values (t.id);
    else
      begin
        perform util._retire_target(t.id, reason, noticed_by);
        acted := acted + 1;
      exception when others then
        raise warning 'autoembed: retiring % (column %) failed: %; the next maintenance tick tries again',
          t.table_oid, t.embedding_column, sqlerrm;
      end;
    end if;
  end loop;
  return acted;
end
$$;

-- internal trigger (deferred to the commit of the transaction that dropped
-- a content function): retires the target if its content function is
-- still missing, i.e. was not created again in the same transaction.
create or replace function util._check_target_at_commit()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  t util.embedding_targets;
  reason text;
begin
  delete from util._pending_target_checks p where p.target_id = new.target_id;
  select * into t from util.embedding_targets x
   where x.id = new.target_id and x.retired_at is null and x.shadow_of is null;
  reason := util._target_broken_reason(t);
  if t.id is not null and reason is not null then
    begin
      perform util._retire_target(t.id, reason, 'event trigger');
    exception when others then
      raise warning 'autoembed: retiring % (column %) failed: %; the next maintenance tick tries again',
        t.table_oid, t.embedding_column, sqlerrm;
    end;
  end if;
  return null;
end
$$;

do $$
begin
  if not exists (select from pg_catalog.pg_trigger g
                  where g.tgrelid = 'util._pending_target_checks'::regclass and g.tgname = 'check_at_commit') then
    create constraint trigger check_at_commit after insert on util._pending_target_checks
      deferrable initially deferred for each row execute function util._check_target_at_commit();
  end if;
end
$$;

-------------------------------------------------------------------------------
-- For the processing core: jobs that name a target no longer there
-------------------------------------------------------------------------------

-- internal: what became of the targets `names` (a JSON array of {schema,
-- table, column}, as jobs name them) names, by their latest event: retired
-- (a job for it finishes quietly), or renamed (target_id: the live target
-- it is now, which a job claimed before the rename applies to). Names with
-- no event are left out.
create or replace function util._former_targets(names jsonb)
returns table (schema_name text, table_name text, embedding_column text, fate text, target_id int)
language sql
stable
set search_path = ''
as $$
  select n.schema, n."table", n."column", e.event, l.id
    from pg_catalog.jsonb_to_recordset(names) as n(schema text, "table" text, "column" text)
    cross join lateral (select x.event, x.table_oid from util.embedding_target_events x
                         where x.schema_name = n.schema and x.table_name = n."table"
                           and x.embedding_column = n."column"
                         order by x.id desc limit 1) e
    left join util.embedding_targets l
           on e.event = 'renamed' and l.table_oid = e.table_oid and l.embedding_column = n."column"
          and l.shadow_of is null and l.retired_at is null
$$;

-------------------------------------------------------------------------------
-- Event triggers
-------------------------------------------------------------------------------

-- internal event trigger (sql_drop): after a statement that dropped a
-- table, a column or a function, checks the targets (util._check_targets).
-- The pipeline's own drops (a model change's switch or cancel, a detach, a
-- retirement: autoembed.own_ddl) are not news.
create or replace function util._on_sql_drop()
returns event_trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if pg_catalog.current_setting('autoembed.own_ddl', true) = 'on'
     or not exists (select from util.embedding_targets t where t.retired_at is null)
     or not exists (select from pg_catalog.pg_event_trigger_dropped_objects() o
                     where o.object_type in ('table', 'table column', 'function')) then
    return;
  end if;
  perform util._check_targets('event trigger');
end
$$;

-- internal event trigger (ddl_command_end of ALTER TABLE and ALTER SCHEMA):
-- follows renamed tables and schemas (util._follow_renames).
create or replace function util._on_alter()
returns event_trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if exists (select from util.embedding_targets t where t.retired_at is null) then
    perform util._follow_renames('event trigger');
  end if;
end
$$;

-- Created where this role may create event triggers (a superuser; the
-- postgres role on Supabase); elsewhere skipped with a notice, and the
-- maintenance tick notices drops and renames instead.
do $$
begin
  drop event trigger if exists autoembed_drops;
  create event trigger autoembed_drops on sql_drop execute function util._on_sql_drop();
  drop event trigger if exists autoembed_renames;
  create event trigger autoembed_renames on ddl_command_end when tag in ('ALTER TABLE', 'ALTER SCHEMA')
    execute function util._on_alter();
exception when insufficient_privilege then
  raise notice 'autoembed: no event triggers (%): drops and renames of attached tables are noticed by the next maintenance tick', sqlerrm;
end
$$;
