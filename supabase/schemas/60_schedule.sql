-- autoembed schema 60: push mode, as on Supabase. pg_cron ticks
-- util.process_embeddings, which runs util.maintain_embeddings, then reads
-- a slice of the queue and POSTs it in batches to the `embed` function
-- through pg_net, authenticated with the Vault secret `embed_secret`. Each
-- finished call asks for the next slice (util._embedding_request_done), so
-- a backlog drains at max_requests calls in flight, not one slice per tick.

-- public: the project's URL, from Vault (secret `project_url`); raises AE004 without it.
create or replace function util.project_url()
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
      using errcode = 'AE004', hint = 'select vault.create_secret(''https://<project-ref>.supabase.co'', ''project_url'');';
  end if;
  return secret_value;
end
$$;

-- public: POSTs `body` to edge function `name` through pg_net, with the
-- bearer secret `embed_secret` from Vault (AE004 without it). Returns pg_net's request id.
create or replace function util.invoke_edge_function(
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
      using errcode = 'AE004', hint = 'Create one equal to the function''s EMBED_SECRET: select vault.create_secret(''<secret>'', ''embed_secret'');';
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

-- internal: ends the leases of calls that are over without having reported
-- back and brings their jobs back (util._requeue_jobs) after a short pause
-- (util._backoff_seconds of one attempt, at most 30 s) instead of at the
-- end of their visibility timeout; the call counts as an attempt. A call is over when pg_net
-- recorded its response (it writes one for every request it sent: the
-- answer, a timeout or a connection error), when its deadline passed, or
-- when Postgres restarted since it began and its request is no longer in
-- pg_net's queue (what pg_net had in flight died with the server; a request
-- still queued is sent after the restart, so its lease stays). Returns how
-- many leases it ended. Runs under process_embeddings' lock.
create or replace function util._release_ended_leases()
returns int
language plpgsql
set search_path = ''
as $$
declare
  ended_jobs bigint[];
  ended int;
begin
  with gone as (
    delete from util.embedding_requests r
     where r.expires_at < now()
        or exists (select from net._http_response h where h.id = r.request_id)
        or (r.started_at < pg_catalog.pg_postmaster_start_time()
            and not exists (select from net.http_request_queue q where q.id = r.request_id))
    returning r.job_ids
  )
  select count(*), array(select pg_catalog.unnest(g.job_ids) from gone g)
    into ended, ended_jobs from gone;
  if ended > 0 then
    -- Jobs the call settled are gone; the rest come back.
    perform util._requeue_jobs(ended_jobs,
      util._backoff_seconds(1, util._setting('backoff_base_seconds')::int, 30), false);
  end if;
  return ended;
end
$$;

-- public: moves queued jobs to the embed function. First runs
-- util.maintain_embeddings (content function changes, sweeps, model
-- switches), ends the leases of calls that are over
-- (util._release_ended_leases) and asks the embed function for the
-- background work it does (util._request_maintenance): the batch lane's
-- due batches (util._batches_due, 55_batch_lane) and a model change's index
-- twins (util._twin_indexes_due). Then, for each free slot (max_requests -
-- calls in flight), claims up to batch_size rows' jobs (util._read_jobs: a
-- packed message counts its rows), hiding them for the call's timeout, and
-- POSTs them as one batch. When a call finishes, the function asks for
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
  -- A model change whose new vectors are all in needs its indexes built,
  -- which no function can do (CREATE INDEX CONCURRENTLY): the embed function
  -- builds them, asked once, outside the calls that carry jobs.
  begin
    if util._twin_indexes_due() then
      perform util._request_maintenance('indexes');
    end if;
  exception when others then
    raise warning 'autoembed: asking for the index builds failed: %', sqlerrm;
  end;
  -- The batch lane's submissions, polls and applies, likewise: the embed
  -- function runs them (they call the provider), asked once at a time.
  begin
    if util._batches_due() then
      perform util._request_maintenance('batches');
    end if;
  exception when others then
    raise warning 'autoembed: asking for the batch lane''s work failed: %', sqlerrm;
  end;
  select process_embeddings.max_requests - count(*) into free_slots from util.embedding_requests;
  if free_slots <= 0 then
    return 0;
  end if;

  while requests < free_slots loop
    select jsonb_agg(
             case when jsonb_typeof(m.message) = 'object' then m.message else '{}'::jsonb end
             || jsonb_build_object('jobId', m.msg_id, 'attempt', m.read_ct)
             order by m.msg_id)
      into batch
      from util._read_jobs(ceil(timeout_milliseconds / 1000.0)::int + 5, batch_size) m;
    exit when batch is null;
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

-- internal: asks the embed function to run maintenance task `task` (a
-- POST of {"maintenance": [task]}; the function runs its tasks by name,
-- supabase/functions/_shared/maintenance.ts), unless the last request for
-- it is less than a minute old and not answered with a success (pg_net
-- records every answer, a timeout or an error too). So a task that runs
-- longer than a tick is asked for once; one that finished is asked again
-- at the next tick if still due, one that failed a minute later. A task
-- that runs longer than a minute says so itself (the index builds hold a
-- lock that util._twin_indexes_due sees). Returns whether it asked. Runs
-- under process_embeddings' lock, so two callers never both ask.
create or replace function util._request_maintenance(task text)
returns boolean
language plpgsql
set search_path = ''
as $$
declare
  asked boolean;
begin
  insert into util.maintenance_requests as m (task, requested_at)
  values (_request_maintenance.task, now())
  on conflict on constraint maintenance_requests_pkey do update
    set requested_at = excluded.requested_at, request_id = null
    where m.requested_at < now() - interval '1 minute'
       or exists (select from net._http_response h
                   where h.id = m.request_id and h.status_code between 200 and 299)
  returning true into asked;
  if asked is null then
    return false;
  end if;
  update util.maintenance_requests m
     set request_id = util.invoke_edge_function(
           name => 'embed',
           body => pg_catalog.jsonb_build_object('maintenance', pg_catalog.jsonb_build_array(_request_maintenance.task)),
           timeout_milliseconds => 15 * 60 * 1000)
   where m.task = _request_maintenance.task;
  return true;
end
$$;

-- internal: called by the embed function when a call finishes: ends its
-- lease and, if there is more work, starts the next calls with the lease's
-- parameters. An unknown lease (it ended meanwhile) starts nothing.
create or replace function util._embedding_request_done(lease bigint)
returns int
language plpgsql
set search_path = ''
as $$
declare
  finished util.embedding_requests;
begin
  -- The lock process_embeddings takes, taken before the delete: taking it
  -- after (a lock upgrade) deadlocks two calls finishing at the same time.
  lock table util.embedding_requests in share row exclusive mode;
  delete from util.embedding_requests r where r.id = lease returning * into finished;
  if finished.id is null then
    return 0;
  end if;
  return util.process_embeddings(finished.batch_size, finished.max_requests, finished.timeout_milliseconds);
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
  wake text;
  busy boolean;
  last_kick bigint;
  now_ms bigint;
begin
  -- One statement for the setting, the calls in flight and the clock, and
  -- the record of the decision: it runs once in every single-row
  -- transaction, where each statement counts (bench/RESULTS.md section 4).
  select pg_catalog.set_config('autoembed.wake', case when s.value = 'on' then 'kick' else 'notify' end, true),
         exists (select from util.embedding_requests), c.last_value,
         (extract(epoch from pg_catalog.clock_timestamp()) * 1000)::bigint
    into wake, busy, last_kick, now_ms
    from util.embedding_kick_clock c left join util.settings s on s.name = 'kick_on_change';
  if wake = 'notify' or busy or last_kick > now_ms - 1000 then
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

-- The tick: every 10 seconds where pg_cron accepts second schedules (1.5+,
-- as on Supabase), every minute otherwise (Debian's 1.4). cron.schedule
-- updates a job of the same name. Skipped where pg_cron is not installed in
-- this database.
do $$
begin
  if pg_catalog.to_regnamespace('cron') is null then
    raise notice 'pg_cron is not installed in database %: no schedule created', current_database()
      using hint = 'Run the pull worker, or call util.process_embeddings() from your own scheduler.';
    return;
  end if;
  begin
    perform cron.schedule('process-embeddings', '10 seconds', 'select util.process_embeddings()');
  exception when others then
    perform cron.schedule('process-embeddings', '* * * * *', 'select util.process_embeddings()');
  end;
  -- Push mode is on here: changes kick an idle pipeline (util._kick_embeddings).
  update util.settings set value = 'on' where name = 'kick_on_change';
end
$$;
