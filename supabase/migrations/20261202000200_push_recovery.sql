-- autoembed: push mode recovers within seconds after a fault, and a lease
-- keeps its own parameters. Intent:
--
-- * A call to the embed function that ended without reporting back (the
--   function crashed, was shut down, answered 503 because it lost its
--   database, or pg_net lost the request in a Postgres restart) used to free
--   its slot only when the slots were full, and its jobs waited out their
--   whole visibility timeout (timeout + 5 s: 125 s by default) before anyone
--   retried them. Now every util.process_embeddings call first ends such
--   leases (util._release_ended_leases) and makes their jobs visible again
--   after a short backoff (backoff_base_seconds doubling with the attempt,
--   capped at 30 s: the call never got to run them, so waiting longer helps
--   nothing), so the next tick sends them again.
--   A call has ended when pg_net recorded its response (pg_net writes one
--   for every request it sent: the function's answer, a timeout, or a
--   connection error), when its deadline passed, or when Postgres restarted
--   since it began and its request is no longer in pg_net's queue: pg_net
--   sends requests from a background worker of the server, so what it had
--   in flight died with the server, and its queue and response tables are
--   unlogged (emptied after a crash). A request still queued is sent after
--   the restart, so its lease stays.
-- * The parameters a lease was made with (batch size, calls in flight,
--   timeout) are stored with it, so the function reports back with the lease
--   id alone (util._embedding_request_done(lease)) and the next calls use the
--   same parameters; they no longer travel as query parameters with defaults
--   repeated in the handler.

alter table util.embedding_requests
  add column job_ids bigint[] not null default '{}',
  add column batch_size int not null default 100,
  add column max_requests int not null default 4,
  add column timeout_milliseconds int not null default 120000;

-- internal: ends the leases of calls that are over without having reported
-- back (see the header) and brings their jobs back after a short backoff.
-- Returns how many leases it ended. Runs under process_embeddings' lock.
create function util._release_ended_leases()
returns int
language plpgsql
set search_path = ''
as $$
declare
  base int := util._setting('backoff_base_seconds')::int;
  ended int;
begin
  with gone as (
    delete from util.embedding_requests r
     where r.expires_at < now()
        or exists (select from net._http_response h where h.id = r.request_id)
        or (r.started_at < pg_catalog.pg_postmaster_start_time()
            and not exists (select from net.http_request_queue q where q.id = r.request_id))
    returning r.job_ids
  ), jobs as (
    select pg_catalog.unnest(g.job_ids) as msg_id from gone g
  ), soon as (
    update pgmq.q_embedding_jobs q
       set vt = pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs =>
                  least(30, base * power(2, greatest(q.read_ct - 1, 0))) * (0.75 + random() * 0.5))
      from jobs j
     where q.msg_id = j.msg_id
       and q.vt > pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => least(30, base))
  )
  select count(*) into ended from gone;
  return ended;
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

drop function util._embedding_request_done(bigint, int, int, int);

-- internal: called by the embed function when a call finishes: ends its
-- lease and, if there is more work, starts the next calls with the lease's
-- parameters. An unknown lease (it ended meanwhile) starts nothing.
create function util._embedding_request_done(lease bigint)
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

revoke all on all functions in schema util from public, anon, authenticated;
