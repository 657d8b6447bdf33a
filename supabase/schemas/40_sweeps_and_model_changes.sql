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
-- Ends the sweep when the table is exhausted. Returns the jobs enqueued.
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
       select r.%1$s as key, not (%2$s) as unembedded, f.content_hash, r as source
         from %3$s r
         left join util.embedding_fingerprints f on f.target_id = $3 and f.row_id = r.%1$s::text
        where $1::text is null or r.%1$s > $1::%4$s
        order by r.%1$s
        limit $2
     ), picked as (
       select s.key from slice s
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
    util._enqueue_sql('select p.key as id from picked p', '$4'));
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
-- complete: its sweep is done and its store holds everything the live store
-- does (util._store_shadow_behind). One transaction, under ACCESS EXCLUSIVE
-- locks on the store's tables (util._store_relations) taken with a short
-- lock_timeout (a busy table is tried again at the next tick): the shadow
-- store takes the live store's place and names (util._store_swap), and the
-- shadow target becomes the live one. Readers see the old model before and
-- the new one after, never a mix (I7). Returns whether it switched; when
-- the swap is refused (e.g. a view depends on the live column or table),
-- the reason goes to util.embedding_errors, once an hour.
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
  -- Indexes made on the live store since the change began get their twin now.
  perform util._store_twin_indexes(l, s);
  begin
    perform pg_catalog.set_config('lock_timeout', '500ms', true);
    execute pg_catalog.format('lock table %s in access exclusive mode',
                              pg_catalog.array_to_string(util._store_relations(l, s), ', '));
    perform pg_catalog.set_config('lock_timeout', saved_timeout, true);
    if util._store_shadow_behind(l, s) then
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
--     column with twins of its indexes, or a shadow side table of chunks:
--     util._store_create_shadow), keeps the live store on the old model and
--     fresh, and switches atomically when the new model covers every row
--     (util._switch_model; see util.embedding_status: next_model,
--     next_embedded). Calling it again with the same model is a no-op; with
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
--   3. switches finished model changes (I7);
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
