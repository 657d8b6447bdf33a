-- autoembed: push mode without waiting for the tick. The first change that
-- finds no call to the embed function in flight POSTs one kick through pg_net
-- (sent when its transaction commits), which runs util.process_embeddings at
-- once; later changes ride the calls in flight. The 10 s tick stays as the
-- safety net. On where pg_cron runs process-embeddings (setting kick_on_change).
-- In push mode changes no longer NOTIFY: Postgres commits notifying
-- transactions one at a time, which with fsync on cost single-row writes
-- about two thirds of their rate; without pg_cron they NOTIFY as before.
-- Also: util._target_for_trigger no longer fails a write when another
-- transaction's first write registered the same target at the same time.
--
-- Re-declares util._target_for_trigger, util.queue_embeddings,
-- util.process_embeddings and util._kick_embeddings as supabase/schemas/
-- (20_registration.sql, 30_detect.sql, 60_schedule.sql) defines them. Written
-- by hand: the setting kick_on_change, the sequence util.embedding_kick_clock,
-- and turning the kick on where pg_cron already runs process-embeddings here.

insert into util.settings (name, value, description) values
  ('kick_on_change', 'off',
   'on: push mode; the first change while no call is in flight POSTs one kick to the embed function at once instead of waiting for the next tick, and changes send no NOTIFY (set on where pg_cron runs process-embeddings); off: changes NOTIFY listening workers')
on conflict (name) do update set description = excluded.description;

-- When the last kick was sent (epoch milliseconds; 0: none pending), so a
-- burst of changes while the pipeline is idle sends one kick, not one per
-- transaction. A sequence because setval is not transactional and takes no
-- lock held to the end of the user's transaction, as a table row would.
-- util.process_embeddings sets it back to 0 before it reads the queue.
create sequence if not exists util.embedding_kick_clock minvalue 0 start 0;
revoke all on all sequences in schema util from public, anon, authenticated;

do $$
begin
  -- Two steps: cron.job is only planned where pg_cron is installed.
  if pg_catalog.to_regnamespace('cron') is null then
    return;
  end if;
  if exists (select from cron.job j where j.jobname = 'process-embeddings'
              and j.database = pg_catalog.current_database()) then
    update util.settings set value = 'on' where name = 'kick_on_change';
  end if;
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
      perform util._register_target(target_table, content_function, embedding_column,
                                    case when found.id is null then null else found.model end);
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
-- result would cancel the user's write. It inserts into the queue table
-- itself (the message, visible at once, as pgmq.send writes it): pgmq.send
-- runs its insert through dynamic SQL planned again on every call, which was
-- most of what the trigger added to a one-row insert (bench/RESULTS.md).
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

-- public: moves queued jobs to the embed function. First runs
-- util.maintain_embeddings (content function changes, sweeps, model
-- switches) and ends the leases of calls that are over
-- (util._release_ended_leases). Then reads up to (max_requests - calls in
-- flight) * batch_size jobs, hiding them for the call's timeout, and POSTs
-- them in batches of batch_size. When a call finishes, the function asks for
-- the next slice through util._embedding_request_done, so a backlog drains
-- continuously at max_requests calls in flight instead of one slice per cron
-- tick. An empty queue costs one read and nothing else. A message that is
-- not a JSON object is sent as an object with its queue id only, which the
-- function refuses and dead-letters; a message's own jobId or attempt never
-- counts.
create or replace function util.process_embeddings(
  batch_size int default 100,
  max_requests int default 4,
  timeout_milliseconds int default 2 * 60 * 1000
)
returns int
language plpgsql
security definer
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
      using errcode = 'AE003', hint = 'batch_size >= 1, max_requests >= 1, timeout_milliseconds >= 1000';
  end if;
  -- Background work first, so what it enqueues goes out in this very call.
  -- Its failure must not stop the drain: it is reported and tried next tick.
  begin
    perform util.maintain_embeddings();
  exception when others then
    raise warning 'autoembed: util.maintain_embeddings failed: %', sqlerrm;
  end;
  -- Serialises concurrent callers (cron tick and finishing calls) so the
  -- in-flight bound holds; held for a few milliseconds.
  lock table util.embedding_requests in share row exclusive mode;
  -- A kick that was pending is being served: from here on a change that
  -- sees no call in flight may kick again (util._kick_embeddings). Before
  -- the read, so a change committed after the read is never left waiting.
  if (select c.last_value from util.embedding_kick_clock c) <> 0 then
    perform pg_catalog.setval('util.embedding_kick_clock', 0);
  end if;
  perform util._release_ended_leases();
  select process_embeddings.max_requests - count(*) into free_slots from util.embedding_requests;
  if free_slots <= 0 then
    return 0;
  end if;

  for batch in
    select jsonb_agg(
             case when jsonb_typeof(m.message) = 'object' then m.message else '{}'::jsonb end
             || jsonb_build_object('jobId', m.msg_id, 'attempt', m.read_ct)
             order by m.msg_id)
      from (select r.*, (row_number() over (order by r.msg_id) - 1) / batch_size as batch_no
              from pgmq.read('embedding_jobs', ceil(timeout_milliseconds / 1000.0)::int + 5,
                             free_slots * batch_size) r) m
     group by m.batch_no
     order by m.batch_no
  loop
    insert into util.embedding_requests
      (jobs, expires_at, job_ids, batch_size, max_requests, timeout_milliseconds)
    values (jsonb_array_length(batch), now() + make_interval(secs => timeout_milliseconds / 1000.0 + 5),
            array(select (j ->> 'jobId')::bigint from jsonb_array_elements(batch) j),
            process_embeddings.batch_size, process_embeddings.max_requests,
            process_embeddings.timeout_milliseconds)
    returning id into lease;
    update util.embedding_requests r
       set request_id = util.invoke_edge_function(
             name => 'embed',
             body => batch,
             timeout_milliseconds => process_embeddings.timeout_milliseconds,
             params => jsonb_build_object('lease', lease))
     where r.id = lease;
    requests := requests + 1;
  end loop;
  return requests;
end
$$;

-- internal, called by util.queue_embeddings after it enqueued jobs, once per
-- transaction; records in autoembed.wake how this transaction wakes the
-- pipeline. When push mode is on (setting kick_on_change) and no call to the
-- embed function is in flight, POSTs one kick to it, which runs util.process_embeddings at
-- once instead of at the next tick. pg_net sends the request only after the
-- user's transaction commits (its queue is a table), so the kick never runs
-- before the jobs it is for are visible, and a rolled-back write sends
-- nothing. While calls are in flight it does nothing: each finishing call
-- already asks for the next slice, so the change rides that chain. A kick
-- sent less than a second ago and not yet served (util.embedding_kick_clock)
-- stands for the whole burst. The trigger asks once per transaction
-- (autoembed.wake, a transaction-local setting: 'kick' in push mode, else
-- 'notify'), so a bulk statement through row-level triggers pays for one
-- look, not one per row. It never
-- fails the user's write: without pg_net or a Vault secret the change
-- simply waits for the tick, whose failure (AE004) is where a missing secret
-- shows. Takes no lock beyond the user's own statement's: the clock is a
-- sequence, the in-flight check a plain read.
create or replace function util._kick_embeddings()
returns void
language plpgsql
set search_path = ''
as $$
declare
  now_ms bigint;
begin
  if (select s.value from util.settings s where s.name = 'kick_on_change') is distinct from 'on' then
    perform pg_catalog.set_config('autoembed.wake', 'notify', true);
    return;
  end if;
  perform pg_catalog.set_config('autoembed.wake', 'kick', true);
  if exists (select from util.embedding_requests) then
    return;
  end if;
  now_ms := (extract(epoch from pg_catalog.clock_timestamp()) * 1000)::bigint;
  if (select c.last_value from util.embedding_kick_clock c) > now_ms - 1000 then
    return;
  end if;
  perform pg_catalog.setval('util.embedding_kick_clock', now_ms);
  begin
    perform util.invoke_edge_function(
      name => 'embed',
      body => '[]'::jsonb,
      timeout_milliseconds => 60 * 1000,
      params => jsonb_build_object('kick', 1));
  exception when others then
    null;
  end;
end
$$;

-- Privileges, as supabase/schemas declares them.
revoke all on all functions in schema util from public, anon, authenticated;
grant execute on function
  util.process_embeddings(int, int, int),
  util.maintain_embeddings(),
  util.reembed(regclass, name, text, int),
  util.refresh_embeddings(regclass, name),
  util.cancel_reembed(regclass, name),
  util.retry_failed(regclass),
  util._embedding_status()
  to service_role;
revoke all on all functions in schema util from public, anon, authenticated;
