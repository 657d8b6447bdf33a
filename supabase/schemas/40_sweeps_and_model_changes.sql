-- autoembed schema 40: work that visits a whole table. A *sweep* visits a
-- target's rows in primary-key slices of sweep_slice_rows, only while the
-- queue is short, and enqueues the rows whose embedding is missing or whose
-- text no longer hashes to its fingerprint: backfills (enable_embeddings),
-- rechecks (refresh_embeddings, reembed without a model, a changed content
-- function, I10) and model changes. A model change builds the new model's
-- vectors in a shadow store beside the live one and switches in one
-- transaction when complete (I7). Written once for every kind of store,
-- through the util._store_* functions (22_stores). util.maintain_embeddings,
-- run on every push tick and worker poll, drives all of it.

-- internal: the job message (without its row id) that names live target
-- `live_id` as its triggers would.
create or replace function util._job_base(live_id int)
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
-- live target, as the triggers do; up to 100 rows a message) for each row
-- whose store holds no vector for it (util._store_has_vector) or whose text
-- no longer hashes to its fingerprint (util._fingerprint_key: the text alone
-- for a whole-row target, with the chunk settings for a chunked one). The
-- content function runs only for rows that have a fingerprint to compare.
-- Ends the sweep when the table is exhausted. The rows are enqueued in the
-- order that costs the store's writes least (util._store_sweep_order).
-- Returns the jobs enqueued.
create or replace function util._sweep_step(target_id int, max_rows int)
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
  if t.sweep_started_at is null then
    return 0;
  end if;
  if c.id is null then
    -- Its table or store is gone (45_table_life retires it): a sweep that
    -- could never finish ends here, so nothing waits for it.
    update util.embedding_targets x set sweep_started_at = null, sweep_after = null where x.id = target_id;
    return 0;
  end if;
  -- A batch-lane sweep's jobs say so (55_batch_lane); the triggers' never do.
  job := util._job_base(coalesce(t.shadow_of, t.id))
         || case when t.sweep_lane = 'batch' then '{"lane": "batch"}'::jsonb else '{}'::jsonb end;
  scan := pg_catalog.format(
    'with slice as (
       select r.%1$s as key, r.ctid as tid, not (%2$s) as unembedded, f.content_hash, r as source
         from %3$s r
         left join util.embedding_fingerprints f on f.target_id = $3 and f.row_id = r.%1$s::text
        where $1::text is null or r.%1$s > $1::%4$s
        order by r.%1$s
        limit $2
     ), picked as (
       select s.key, s.tid from slice s
        where case when s.unembedded or s.content_hash is null then true
                   else s.content_hash is distinct from util._chunked_hash($5, %5$s(s.source)) end
     ), queued as (
       %6$s
       returning 1
     )
     select (select count(*) from slice),
            (select s.key::text from slice s order by s.key desc limit 1),
            (select count(*) from picked)',
    c.pk_sql, util._store_has_vector(t, 'r', 'f'), c.table_sql, c.pk_type_sql, c.content_function_sql,
    -- the picked rows as queue messages (the jobs module's statement)
    util._enqueue_sql('select p.key as id from picked p ' || util._store_sweep_order(t), '$4'));
  begin
    execute scan into visited, last_key, enqueued
      using t.sweep_after, max_rows, t.id, job, util._fingerprint_key(t);
  exception when others then
    -- The content function raises for some row of the slice: enqueue the
    -- whole slice instead; the core isolates that row and records its error.
    execute pg_catalog.replace(scan, 'else s.content_hash is distinct from', 'else true or s.content_hash is distinct from')
      into visited, last_key, enqueued using t.sweep_after, max_rows, t.id, job, util._fingerprint_key(t);
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

-------------------------------------------------------------------------------
-- The lane of a sweep (55_batch_lane)
-------------------------------------------------------------------------------

-- internal: the lane the jobs of a sweep of target `t` go by: `lane`, else
-- the target's, with 'auto' resolved by the size of its table (batch from
-- batch_min_texts rows, by util._table_rows: an estimate for a large table,
-- which a sweep must not count).
create or replace function util._resolve_lane(t util.embedding_targets, lane text default null)
returns text
language plpgsql
stable
set search_path = ''
as $$
begin
  lane := coalesce(lane, t.lane, 'online');
  if lane = 'auto' then
    return case when (util._table_rows(t.table_oid)).rows >= util._setting('batch_min_texts')::bigint
                then 'batch' else 'online' end;
  end if;
  return lane;
end
$$;

-- internal: raises AE003 unless `lane` is a lane (or null: unchanged).
create or replace function util._check_lane(lane text)
returns void
language plpgsql
immutable
set search_path = ''
as $$
begin
  if lane is not null and lane not in ('online', 'batch', 'auto') then
    raise exception 'autoembed: unknown lane "%"', lane
      using errcode = 'AE003',
            hint = 'online (the default), batch (the provider''s batch API, half price within 24 h), or auto (batch from batch_min_texts rows).';
  end if;
end
$$;

-- internal: marks a sweep of target `target_id` started (or restarted)
-- from the first key, in `lane` (default the target's), resolved by
-- util._resolve_lane; util.maintain_embeddings takes its steps.
create or replace function util._begin_sweep(target_id int, lane text default null)
returns void
language sql
set search_path = ''
as $$
  update util.embedding_targets x
     set sweep_started_at = now(), sweep_after = null, sweep_checked = 0, sweep_enqueued = 0,
         sweep_lane = util._resolve_lane(x, _begin_sweep.lane)
   where x.id = _begin_sweep.target_id
$$;

-- internal: starts (or restarts) a sweep of target `target_id` in `lane`
-- (default the target's) and runs its first step now, so small tables are
-- enqueued at once. Returns the jobs enqueued by that first step.
create or replace function util._start_sweep(target_id int, lane text default null)
returns bigint
language plpgsql
set search_path = ''
as $$
begin
  perform util._begin_sweep(target_id, lane);
  return util._sweep_step(target_id, util._setting('sweep_slice_rows')::int);
end
$$;

-- internal: one step of target `target_id`'s sweep for
-- util.maintain_embeddings, which must not stop for one target: a passing
-- failure (a lock not granted in time, a conflict) is tried again at the
-- next tick; any other stops the sweep, and util.embedding_errors says why
-- and how to start it again. Returns the jobs enqueued.
create or replace function util._maintain_sweep(target_id int, max_rows int)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  t util.embedding_targets;
begin
  return util._sweep_step(target_id, max_rows);
exception
  when serialization_failure or deadlock_detected or lock_not_available then
    return 0;
  when others then
    update util.embedding_targets x set sweep_started_at = null, sweep_after = null
     where x.id = target_id
    returning * into t;
    insert into util.embedding_errors (target_id, table_name, retryable, error)
    values (t.id, t.table_oid::text, false,
            pg_catalog.format('the sweep of %s (%s) stopped: %s; start it again with select util.refresh_embeddings(%L, %L);',
                              t.table_oid, t.embedding_column, sqlerrm, t.table_oid::text, t.embedding_column));
    return 0;
end
$$;

-- internal: switches live target `live_id` to its shadow when the shadow is
-- complete: its sweep is done, its store holds everything the live store
-- does (util._store_shadow_behind) and every index of the live store has a
-- valid twin (util._store_twin_plan). Twins are never built here: under
-- this function's locks a build would hold the table for its whole length;
-- they are built beside, concurrently, once the shadow is full
-- (util._twin_index_builds), and the switch waits for them. One
-- transaction, under ACCESS EXCLUSIVE locks on the store's tables
-- (util._store_relations) taken with a short lock_timeout (a busy table is
-- tried again at the next tick): the shadow store takes the live store's
-- place and names (util._store_swap), and the shadow target becomes the
-- live one. Readers see the old model before and the new one after, never a
-- mix (I7). Returns whether it switched; when the swap is refused (e.g. a
-- view depends on the live column or table, or an index made during the
-- change cannot have a twin: AE001), the reason goes to
-- util.embedding_errors, once an hour.
create or replace function util._switch_model(live_id int)
returns boolean
language plpgsql
set search_path = ''
as $$
declare
  l util.embedding_targets;
  s util.embedding_targets;
  saved_timeout text := pg_catalog.current_setting('lock_timeout');
  problem text;
  detail text;
  twin record;
begin
  select * into l from util.embedding_targets where id = live_id;
  select * into s from util.embedding_targets where shadow_of = live_id;
  if s.id is null or s.sweep_started_at is not null then
    return false;
  end if;
  -- Checked before the locks too, so an unfinished change costs no lock.
  if util._store_shadow_behind(l, s) then
    return false;
  end if;
  -- Twins still to build (or being built): the builder's turn, not ours.
  if exists (select from util._store_twin_plan(l, s) p where p.twin_valid is not true and p.problem is null) then
    perform util._twin_request_failed(l, s);
    return false;
  end if;
  begin
    select p.* into twin from util._store_twin_plan(l, s) p where p.problem is not null order by p.index_name limit 1;
    if twin.index_name is not null then
      raise exception '%', twin.problem using errcode = 'AE001', detail = coalesce(twin.detail, '');
    end if;
    perform pg_catalog.set_config('lock_timeout', '500ms', true);
    execute pg_catalog.format('lock table %s in access exclusive mode',
                              pg_catalog.array_to_string(util._store_relations(l, s), ', '));
    perform pg_catalog.set_config('lock_timeout', saved_timeout, true);
    -- Again under the locks: rows written, or indexes made, since.
    if util._store_shadow_behind(l, s)
       or exists (select from util._store_twin_plan(l, s) p where p.twin_valid is not true) then
      return false;
    end if;
    perform util._store_swap(l, s);
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
      get stacked diagnostics detail = pg_exception_detail;
      problem := pg_catalog.format('the switch to model %s is waiting: %s', s.model, sqlerrm)
                 || case when coalesce(detail, '') <> '' then ': ' || pg_catalog.replace(detail, pg_catalog.chr(10), '; ') else '' end
                 || case when sqlstate = '2BP01'
                         then pg_catalog.format(' (drop or change what depends on %s; the switch retries every tick)',
                                                util._store_label(l))
                         when sqlstate = 'AE001'
                         then pg_catalog.format(' (drop %I; create it again after the switch, which retries every tick)',
                                                twin.index_name)
                         else '' end;
      if not exists (select from util.embedding_errors e
                      where e.target_id = l.id and e.error = problem and e.created_at > now() - interval '1 hour') then
        insert into util.embedding_errors (target_id, table_name, retryable, error)
        values (l.id, l.table_oid::text, true, problem);
      end if;
      return false;
  end;
end
$$;

-------------------------------------------------------------------------------
-- Index twins, built once the shadow is full
-------------------------------------------------------------------------------

-- internal: the advisory lock a session holds while it builds index twins
-- (util._begin_twin_index_builds), as its two keys.
create or replace function util._twin_build_lock(out class_key int, out object_key int)
language sql
immutable
set search_path = ''
as $$ select pg_catalog.hashtext('autoembed'), pg_catalog.hashtext('index twins') $$;

-- internal: whether a session builds index twins now (it holds
-- util._twin_build_lock; a build whose client went away holds it until the
-- statement ends, as its server process lives on until then).
create or replace function util._twin_builds_running()
returns boolean
language sql
stable
set search_path = ''
as $$
  select exists (
    select from pg_catalog.pg_locks k, util._twin_build_lock() b
     where k.locktype = 'advisory' and k.granted and k.objsubid = 2
       and k.database = (select d.oid from pg_catalog.pg_database d where d.datname = pg_catalog.current_database())
       and k.classid = b.class_key::oid and k.objid = b.object_key::oid)
$$;

-- internal: what the index twins of full shadows still need, as statements
-- to run one at a time outside any transaction (CREATE INDEX CONCURRENTLY
-- cannot run in one, nor in a function): for each model change whose sweep
-- is done and whose shadow store holds everything the live one does
-- (util._store_shadow_behind: checked once, before the build; a row written
-- after it is indexed as it is written), the twins util._store_twin_plan
-- finds missing or not valid. A twin that is not valid while no other
-- session builds (the caller holds util._twin_build_lock) is the leftover
-- of a build that failed: it is dropped, concurrently, and built again. A
-- change with an index no twin can copy is left to util._switch_model,
-- which says why. Rows: the shadow target, the twin, the statement.
create or replace function util._twin_index_builds()
returns table (shadow_id int, twin_name name, statement text)
language plpgsql
stable
set search_path = ''
as $$
declare
  change record;
  l util.embedding_targets;
  s util.embedding_targets;
begin
  for change in
    select x.id, x.shadow_of from util.embedding_targets x
     where x.shadow_of is not null and x.sweep_started_at is null
       -- both stores still there (a dropped table is retired by the next tick)
       and exists (select from util._target_config c where c.id = x.id)
       and exists (select from util._target_config c where c.id = x.shadow_of)
     order by x.id
  loop
    select * into l from util.embedding_targets x where x.id = change.shadow_of;
    select * into s from util.embedding_targets x where x.id = change.id;
    continue when not exists (select from util._store_twin_plan(l, s) p where p.twin_valid is not true)
               or exists (select from util._store_twin_plan(l, s) p where p.problem is not null)
               or util._store_shadow_behind(l, s);
    return query
      select s.id, p.twin_name, step.sql_text
        from util._store_twin_plan(l, s) p
        cross join lateral (values
          (1, case when not p.twin_valid
                   then pg_catalog.format('drop index concurrently if exists %I.%I', p.twin_schema, p.twin_name) end),
          (2, util._twin_create_sql(p.unique_index, p.twin_name, p.relation, p.using_sql, true))) step (n, sql_text)
       where p.twin_valid is not true and step.sql_text is not null
       order by p.index_name, step.n;
  end loop;
end
$$;

-- internal: whether index twins are due (util._twin_index_builds has
-- work) and no session builds them now: util.process_embeddings then asks
-- the embed function to build them, the worker builds them itself. Both
-- ask after util.maintain_embeddings, in its transaction, which holds rows
-- of util.embedding_counts by then: so the look at a shadow store waits at
-- most 200 ms for its table (a cancel_reembed dropping the shadow holds it
-- and waits for those rows), and a busy table is "not due" until the next tick.
create or replace function util._twin_indexes_due()
returns boolean
language plpgsql
stable
set search_path = ''
set lock_timeout = '200ms'
as $$
begin
  -- In this order: the first is one look at the targets, the last may scan a shadow store.
  if not exists (select from util.embedding_targets x where x.shadow_of is not null and x.sweep_started_at is null)
     or util._twin_builds_running() then
    return false;
  end if;
  return exists (select from util._twin_index_builds());
exception when lock_not_available or deadlock_detected then
  return false;
end
$$;

-- internal: begins a session's building of index twins
-- (supabase/functions/_shared/twin_indexes.ts, for the worker and the
-- embed function): takes util._twin_build_lock, at session level, so that
-- one session builds at a time (it holds it until
-- util._end_twin_index_builds or its end); sets the session up for
-- building: maintenance_work_mem and max_parallel_maintenance_workers from
-- the settings index_build_maintenance_work_mem and
-- index_build_parallel_workers (pgvector builds an HNSW graph in memory
-- and in parallel with them), no statement timeout; and returns
-- util._twin_index_builds(), the statements to run in order. Returns
-- nothing when another session builds.
create or replace function util._begin_twin_index_builds()
returns table (shadow_id int, twin_name name, statement text)
language plpgsql
set search_path = ''
as $$
begin
  if not (select pg_catalog.pg_try_advisory_lock(b.class_key, b.object_key) from util._twin_build_lock() b) then
    return;
  end if;
  perform pg_catalog.set_config('maintenance_work_mem', util._setting('index_build_maintenance_work_mem'), false);
  perform pg_catalog.set_config('max_parallel_maintenance_workers', util._setting('index_build_parallel_workers'), false);
  perform pg_catalog.set_config('statement_timeout', '0', false);
  return query select * from util._twin_index_builds();
end
$$;

-- internal: ends what util._begin_twin_index_builds began: releases the
-- lock (the session's settings end with it). Returns whether it held it.
create or replace function util._end_twin_index_builds()
returns boolean
language sql
set search_path = ''
as $$ select pg_catalog.pg_advisory_unlock(b.class_key, b.object_key) from util._twin_build_lock() b $$;

-- internal: records that `statement`, a build of an index twin of shadow
-- target `shadow_id` (a row of util._twin_index_builds), failed with
-- `error`: the model change waits (its switch needs the twin), the build
-- is tried again at the next tick or poll, and the error says how to run it
-- by hand. Once an hour for the same error, as the switch's own. Nothing
-- when the change is gone (cancelled meanwhile).
create or replace function util._twin_index_failed(shadow_id int, statement text, error text)
returns void
language plpgsql
set search_path = ''
as $$
declare
  l util.embedding_targets;
  s util.embedding_targets;
  problem text;
begin
  select * into s from util.embedding_targets x where x.id = _twin_index_failed.shadow_id;
  select * into l from util.embedding_targets x where x.id = s.shadow_of;
  if l.id is null then
    return;
  end if;
  problem := pg_catalog.format(
    'the switch to model %s is waiting for its index, whose build failed: %s (it is built again at the next '
    'tick or worker poll; to build it by hand, as the table''s owner: %s;)', s.model, error, statement);
  if not exists (select from util.embedding_errors e
                  where e.target_id = l.id and e.error = problem and e.created_at > now() - interval '1 hour') then
    insert into util.embedding_errors (target_id, table_name, retryable, error)
    values (l.id, l.table_oid::text, true, problem);
  end if;
end
$$;

-- internal: for a model change of `l` to `s` waiting for its index twins:
-- in push mode the embed function builds them when util.process_embeddings
-- asks (util._request_maintenance). When its last answer to that request
-- was not a success (a function deployed before this release refuses the
-- request with 400) and nothing builds, util.embedding_errors says so,
-- once an hour. Nothing where pg_net is not installed (pull mode: the
-- worker builds).
create or replace function util._twin_request_failed(l util.embedding_targets, s util.embedding_targets)
returns void
language plpgsql
set search_path = ''
as $$
declare
  answer text;
  problem text;
begin
  if pg_catalog.to_regclass('net._http_response') is null or util._twin_builds_running() then
    return;
  end if;
  execute 'select coalesce(h.status_code::text, h.error_msg, ''no answer'')
             from util.maintenance_requests m join net._http_response h on h.id = m.request_id
            where m.task = ''indexes'' and (h.status_code is null or h.status_code not between 200 and 299)'
    into answer;
  if answer is null then
    return;
  end if;
  problem := pg_catalog.format(
    'the switch to model %s is waiting for its index: the embed function answered %s when asked to build it '
    '(deploy this release''s embed function: supabase functions deploy embed; it is asked again every minute)',
    s.model, answer);
  if not exists (select from util.embedding_errors e
                  where e.target_id = l.id and e.error = problem and e.created_at > now() - interval '1 hour') then
    insert into util.embedding_errors (target_id, table_name, retryable, error)
    values (l.id, l.table_oid::text, true, problem);
  end if;
end
$$;

-- internal: the live target of (table, column), with its bookkeeping rows
-- (its own and its shadow's) locked before any table is: the order
-- util.maintain_embeddings takes them in, so a model change, a cancel and a
-- tick never deadlock. NO KEY UPDATE, not UPDATE: a writer of the table
-- checks its fingerprints' foreign key with KEY SHARE on these rows while it
-- holds the table, which FOR UPDATE would block while this waits for the
-- table: a deadlock.
create or replace function util._lock_model_change(target_table regclass, embedding_column name)
returns util.embedding_targets
language plpgsql
set search_path = ''
as $$
declare
  l util.embedding_targets := util._live_target(target_table, embedding_column);
begin
  perform from util.embedding_targets x where x.id = l.id or x.shadow_of = l.id for no key update;
  return l;
end
$$;

-- public: cancels a model change of (table, column) started by
-- util.reembed: drops its shadow store (util._store_drop_shadow) and its
-- bookkeeping. The live store is untouched. Returns whether there was one.
create or replace function util.cancel_reembed(
  target_table regclass,
  embedding_column name default 'embedding'
)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  l util.embedding_targets := util._lock_model_change(target_table, embedding_column);
  s util.embedding_targets;
begin
  select * into s from util.embedding_targets where shadow_of = l.id;
  if s.id is null then
    return false;
  end if;
  perform util._store_drop_shadow(l, s);
  delete from util.embedding_targets where id = s.id;
  return true;
end
$$;

-- public: re-embeds a table in the background.
--   * With a model or dimensions other than the table's: builds the new
--     model's embeddings in a shadow store beside the live one (a shadow
--     column, or a shadow side table of chunks: util._store_create_shadow),
--     keeps the live store on the old model and fresh, builds twins of the
--     live store's vector indexes once the new model covers every row
--     (concurrently, beside: util._twin_index_builds), and then switches
--     atomically (util._switch_model; see util.embedding_status:
--     next_model, next_embedded, next_state). Calling it again with the same model is a no-op; with
--     another, it replaces the change in progress; with the table's own
--     model, it cancels it.
--   * Without: rechecks every row, enqueueing those whose embedding is
--     missing or whose text changed (as after a content function change).
-- `lane` says how this work is embedded (55_batch_lane): online, batch or
-- auto; default the table's lane (util.enable_embeddings). Live edits go
-- online whatever it says.
-- Returns the jobs enqueued now; the rest follow in slices.
create or replace function util.reembed(
  target_table regclass,
  embedding_column name default 'embedding',
  model text default null,
  dimensions int default null,
  lane text default null
)
returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
  l util.embedding_targets := util._lock_model_change(target_table, embedding_column);
  s util.embedding_targets;
  new_id int;
begin
  perform util._check_lane(lane);
  if model is not null then
    perform util._check_model_name(model);
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
      perform util._start_sweep(s.id, lane);
    end if;
    return util._start_sweep(l.id, lane);
  end if;
  if s.id is not null then
    if s.model = model and s.dimensions = dimensions then
      return 0;
    end if;
    perform util.cancel_reembed(target_table, embedding_column);
  end if;
  new_id := util._store_create_shadow(l, model, dimensions);
  -- The shadow keeps the table's lane (it is the table's once switched).
  update util.embedding_targets x set lane = l.lane where x.id = new_id;
  return util._start_sweep(new_id, lane);
end
$$;

-- public: rechecks every row of (table, column) and re-embeds those whose
-- text changed, e.g. after changing a function that the content function
-- calls (changes of the content function itself are noticed without it).
-- Returns the jobs enqueued now; the rest follow in slices.
create or replace function util.refresh_embeddings(
  target_table regclass,
  embedding_column name default 'embedding'
)
returns bigint
language sql
security definer
set search_path = ''
as $$ select util.reembed(target_table, embedding_column) $$;

-- public: the pipeline's background work, cheap when there is none:
--   0. follows renamed tables and retires targets whose table, store or
--      content function is gone (45_table_life), where the event triggers
--      did not already;
--   1. notices content functions whose definition changed and starts a
--      sweep (a recheck) of their targets (I10);
--   2. advances every sweep by one slice while the queue holds fewer than
--      sweep_slice_rows jobs;
--   3. switches finished model changes whose index twins are built (I7;
--      the twins are built beside: util._twin_index_builds);
--   4. deletes fingerprints of retired targets in slices, forgets
--      util.embedding_target_events older than 30 days, chunk set
--      drafts nobody continued for a day (util.chunk_set_drafts), and
--      what ended batches no longer need (util._prune_batches);
--   5. folds the kept counts of util.embedding_status and drops its
--      time-to-fresh minutes older than two hours (68_service_levels).
-- util.process_embeddings calls it on every tick; the worker on every poll.
-- Concurrent callers skip the targets another one is working on. It waits
-- at most 200 ms for a lock on a user's table (the next tick tries again):
-- a DDL statement that holds the table (a drop, say) while its event trigger
-- waits for a target this holds must never deadlock with it, and a request
-- for an exclusive lock behind a long query must not hold up the table's
-- readers. A sweep that fails (util._maintain_sweep) does not stop the
-- others. Returns the jobs it enqueued.
create or replace function util.maintain_embeddings()
returns bigint
language plpgsql
security definer
set search_path = ''
set lock_timeout = '200ms'
as $$
declare
  slice int := util._setting('sweep_slice_rows')::int;
  t record;
  enqueued bigint := 0;
  queued bigint;
  retired int;
begin
  -- 0. Renames and retirements the event triggers did not see.
  begin
    perform util._check_targets('maintenance');
  exception when serialization_failure or deadlock_detected or lock_not_available then
    null;
  end;

  -- 1. Definitions: one catalog lookup per target; the recheck's steps are step 2's.
  for t in
    select x.id, x.shadow_of from util.embedding_targets x
     where x.retired_at is null
       and util._content_function_of(x) is not null
       and x.content_definition is distinct from util._content_definition(util._content_function_of(x))
     for update skip locked
  loop
    update util.embedding_targets x
       set content_definition = util._content_definition(util._content_function_of(x)),
           content_changed_at = now()
     where x.id = t.id;
    perform util._begin_sweep(t.id);
  end loop;

  -- 2. Sweeps, while the queue is short (rows, counted over the first slice-size messages only).
  for t in
    select x.id from util.embedding_targets x
     where x.sweep_started_at is not null and x.retired_at is null
     order by x.sweep_started_at
     for update skip locked
  loop
    queued := util._queued_rows(slice);
    exit when queued >= slice;
    enqueued := enqueued + util._maintain_sweep(t.id, slice);
  end loop;

  -- 3. Finished model changes (NO KEY UPDATE: see util._lock_model_change).
  for t in
    select x.shadow_of as live_id from util.embedding_targets x
     where x.shadow_of is not null and x.sweep_started_at is null
     for no key update skip locked
  loop
    begin
      perform util._switch_model(t.live_id);
    exception when serialization_failure or deadlock_detected or lock_not_available then
      null;
    end;
  end loop;

  -- 4. Retired targets' fingerprints, then the targets; old events.
  for t in select x.id from util.embedding_targets x where x.retired_at is not null for update skip locked loop
    begin
      delete from util.embedding_fingerprints f
       where f.ctid = any (array(select g.ctid from util.embedding_fingerprints g
                                  where g.target_id = t.id limit 50000));
      get diagnostics retired = row_count;
      if retired < 50000 then
        delete from util.embedding_targets x where x.id = t.id;
      end if;
    exception when serialization_failure or deadlock_detected or lock_not_available then
      null;
    end;
  end loop;
  delete from util.embedding_target_events e where e.happened_at < now() - interval '30 days';
  delete from util.chunk_set_drafts d where d.updated_at < now() - interval '1 day';
  perform util._prune_batches();
  -- 5. The kept figures of util.embedding_status (68_service_levels).
  begin
    perform util._prune_service_levels();
  exception when serialization_failure or deadlock_detected or lock_not_available or foreign_key_violation then
    null;
  end;
  return enqueued;
end
$$;
