-- autoembed: push mode frees the slot of a call that ended without reporting
-- back, from the fault-injection suite (tests/reliability/restart.test.ts,
-- crash.test.ts).
--
-- A call to the embed function holds a slot (a lease in
-- util.embedding_requests) until the function reports back through
-- util._embedding_request_done. A call that ended without doing so (the
-- function lost its database, was shut down, crashed, or pg_net timed out)
-- kept its slot until its deadline, timeout + 5 s: two minutes by default.
-- A Postgres restart or a runtime shutdown in the middle of a drain thus
-- stalled the whole push drain once every slot was held so, although the
-- queue was reachable again. Leases now record their pg_net request, and
-- when the slots are full, a call whose outcome pg_net has already recorded
-- gives its slot back. Its jobs still wait out their visibility timeout (or
-- are visible at once when the function handed them back).
--
-- process_embeddings here also carries the change of 20261125000100 (every
-- message sent as an object with its queue id); a later change to it must
-- start from this version.

-- The pg_net request of each lease, so a call that ended without reporting
-- back can be told from one still running.
alter table util.embedding_requests add column request_id bigint;

-- public: moves queued jobs to the embed function. Reads up to
-- (max_requests - requests in flight) * batch_size jobs, hiding them for the
-- call's timeout, and POSTs them in batches of batch_size. When a call
-- finishes, the function asks for the next slice through
-- util._embedding_request_done, so a backlog drains continuously at
-- max_requests calls in flight instead of one slice per cron tick. An empty
-- queue costs one read and nothing else. A message that is not a JSON object
-- is sent as an object with its queue id only, which the function refuses
-- and dead-letters; a message's own jobId or attempt never counts.
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
      using hint = 'batch_size >= 1, max_requests >= 1, timeout_milliseconds >= 1000';
  end if;
  -- Serialises concurrent callers (cron tick and finishing calls) so the
  -- in-flight bound holds; held for a few milliseconds.
  lock table util.embedding_requests in share row exclusive mode;
  delete from util.embedding_requests r where r.expires_at < now();
  select max_requests - count(*) into free_slots from util.embedding_requests;
  if free_slots <= 0 then
    -- A call that ended without reporting back (the function failed, lost
    -- its database, was shut down, or pg_net timed out) frees its slot as
    -- soon as pg_net has recorded its outcome, not at its deadline: else a
    -- database restart or a runtime shutdown stalls the drain for the whole
    -- timeout. Looked up only when the slots are full (no index on id).
    delete from util.embedding_requests r
     where exists (select from net._http_response h where h.id = r.request_id);
    select max_requests - count(*) into free_slots from util.embedding_requests;
    if free_slots <= 0 then
      return 0;
    end if;
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
    insert into util.embedding_requests (jobs, expires_at)
    values (jsonb_array_length(batch), now() + make_interval(secs => timeout_milliseconds / 1000.0 + 5))
    returning id into lease;
    update util.embedding_requests r
       set request_id = util.invoke_edge_function(
             name => 'embed',
             body => batch,
             timeout_milliseconds => timeout_milliseconds,
             params => jsonb_build_object(
               'lease', lease, 'batch_size', batch_size, 'max_requests', max_requests,
               'timeout_milliseconds', timeout_milliseconds))
     where r.id = lease;
    requests := requests + 1;
  end loop;
  return requests;
end
$$;

