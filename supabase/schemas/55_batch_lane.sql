-- autoembed schema 55: the batch lane. Bulk work (a backfill, a model
-- change's shadow build, a sweep after a content function change) of a
-- target whose lane is 'batch' (or 'auto' over batch_min_texts rows) goes
-- through the provider's batch API (OpenAI's /v1/batches: half the price,
-- within 24 hours, its own rate pool) instead of online calls. Live edits
-- always go online: only the sweeps' jobs carry the lane.
--
-- How a text travels:
--   1. The core claims a batch-lane job as any other, reads the row, splits
--      it, reuses what is held, and for each text still to embed looks here
--      (util.embedding_batch_inputs, by target and the text's sha256, the
--      line's custom_id): a vector from a finished batch is written at once
--      under the usual compare-and-set; a text not yet sent is staged into
--      the target's open batch (state 'staging'), and its job is *parked*:
--      hidden in the queue, its attempt back (16_jobs, util._settle_jobs).
--   2. A worker poll, or in push mode the embed function called by the
--      tick (util.process_embeddings), takes the batches that are due
--      (util._claim_due_batches): a staging batch is uploaded as JSONL and
--      created at the provider, split to its limits (requests, bytes, the
--      account's enqueued tokens); an open one is polled. A finished one's
--      output file fills in the vectors, its error file the errors, and
--      its parked jobs are released (util._release_parked): they run again
--      and write the vectors, or, for a row edited meanwhile, find the row
--      fresh already (its live edit went online) or embed its new text.
--   3. Lines that failed go online, or into a new batch when numerous;
--      expired, failed and cancelled batches are resubmitted or go online
--      (setting batch_on_expiry). An endpoint without the batch API sends
--      everything online, with one warning in util.embedding_errors.
-- All state is here, so any worker continues what another started.

-------------------------------------------------------------------------------
-- Batches (public to read): one row per batch of one target, from staging
-- to applied.
-------------------------------------------------------------------------------

create table if not exists util.embedding_batches (
  id bigint generated always as identity primary key,
  -- the target whose texts it embeds (a shadow target for a model change)
  target_id int not null references util.embedding_targets (id) on delete cascade,
  model text not null,
  dimensions int not null,
  -- the lane that sent it: 'batch', or 'auto' resolved to batch
  lane text not null default 'batch',
  -- staging: collecting texts; submitting: being uploaded and created;
  -- submitted: at the provider; applied: its output written and its jobs
  -- released; cancelled: by util.cancel_batches; failed, expired: ended
  -- without all of its output (its texts were resubmitted or sent online);
  -- unsupported: the endpoint has no batch API (its texts went online)
  state text not null default 'staging'
    check (state in ('staging', 'submitting', 'submitted', 'applied', 'cancelled', 'failed', 'expired',
                     'unsupported')),
  -- the provider's own status (validating, in_progress, finalizing, ...)
  provider_status text,
  -- the provider's ids of the batch and its files
  provider_batch_id text,
  input_file_id text,
  output_file_id text,
  error_file_id text,
  -- the provider account it went to (endpoint and key fingerprint)
  base_url text,
  key_fingerprint text,
  requests int not null default 0,
  tokens bigint not null default 0,
  bytes bigint not null default 0,
  -- lines the provider reports done and failed
  completed int not null default 0,
  failed int not null default 0,
  -- submissions so far of the texts it holds (a resubmitted batch's count goes on)
  attempt int not null default 1,
  -- lines of its output and error files (in that order) applied so far: an
  -- apply cut short by a call's limits goes on from there
  applied_lines int not null default 0,
  created_at timestamptz not null default now(),
  submitted_at timestamptz,
  completed_at timestamptz,
  applied_at timestamptz,
  -- when a worker next looks at it (submits or polls it); moved on by a claim
  due_at timestamptz not null default now(),
  error text
);
create index if not exists embedding_batches_due on util.embedding_batches (due_at)
  where state in ('staging', 'submitting', 'submitted');
create index if not exists embedding_batches_target on util.embedding_batches (target_id, state);
-- One staging batch per target: texts collect there (util._staging_batch).
create unique index if not exists embedding_batches_one_staging on util.embedding_batches (target_id)
  where state = 'staging';

-- The texts of the batches (internal): one row per text of a target, its
-- custom_id the sha256 (hex) of the text, so identical texts are sent once
-- and a row whose text changed never takes another text's vector. The
-- input is kept until its batch ends (a resubmission sends it again), the
-- vector (float32, little-endian) until the jobs that wait for it are done.
create table if not exists util.embedding_batch_inputs (
  target_id int not null references util.embedding_targets (id) on delete cascade,
  custom_id text not null,
  batch_id bigint not null references util.embedding_batches (id) on delete cascade,
  input text,
  tokens int not null,
  vector bytea,
  -- why it goes online instead (an error line, an expiry, a cancel)
  error text,
  -- the error line's failure was a passing one (many go into a new batch)
  error_retryable boolean not null default false,
  primary key (target_id, custom_id)
);
create index if not exists embedding_batch_inputs_batch on util.embedding_batch_inputs (batch_id);

-------------------------------------------------------------------------------
-- Staging and lookup (the core)
-------------------------------------------------------------------------------

-- internal: stages texts of target `target_id` for the batch lane: `inputs`
-- is a JSON array of {custom_id, input, tokens}. Texts the target already
-- has (staged, sent or answered) are left as they are. They go into the
-- target's staging batch, made when there is none; the submitter splits it
-- to the provider's limits. Returns that batch's id; null instead, staging
-- nothing, when the target's endpoint was found without a batch API in the
-- last day (or the target is gone): its texts go online.
create or replace function util._stage_batch_inputs(target_id int, inputs jsonb)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  t util.embedding_targets;
  staging bigint;
  added int;
  added_tokens bigint;
  added_bytes bigint;
begin
  select * into t from util.embedding_targets x where x.id = _stage_batch_inputs.target_id;
  if t.id is null then
    return null;
  end if;
  if exists (select from util.embedding_batches b
              where b.target_id = t.id and b.state = 'unsupported' and b.created_at > now() - interval '1 day') then
    return null;
  end if;
  staging := util._staging_batch(t.id, 1, util._setting('batch_stage_seconds')::int);
  with added as (
    insert into util.embedding_batch_inputs (target_id, custom_id, batch_id, input, tokens)
    select t.id, i.custom_id, staging, i.input, i.tokens
      from pg_catalog.jsonb_to_recordset(inputs) as i(custom_id text, input text, tokens int)
    on conflict do nothing
    returning tokens, pg_catalog.octet_length(input) as bytes
  )
  select count(*), coalesce(sum(a.tokens), 0), coalesce(sum(a.bytes), 0) into added, added_tokens, added_bytes
    from added a;
  update util.embedding_batches b
     set requests = b.requests + added, tokens = b.tokens + added_tokens, bytes = b.bytes + added_bytes
   where b.id = staging;
  return staging;
end
$$;

-------------------------------------------------------------------------------
-- Parked jobs
-------------------------------------------------------------------------------

-- internal: makes the parked jobs of target `target_id` (its live target's
-- messages: a shadow's jobs name the live one) whose batch ended visible
-- now, no longer parked: their texts' vectors arrived, or they go online.
-- A message is parked on the last batch its rows' texts were in ("parked":
-- its id, util._settle_jobs); one parked on a batch still open waits for
-- it, so a target with many batches runs each job again once, not once per
-- batch. Wakes the listening workers when it released any. Returns the rows.
create or replace function util._release_parked(target_id int)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  released bigint;
begin
  with moved as (
    update pgmq.q_embedding_jobs q
       set vt = pg_catalog.clock_timestamp(), message = q.message - 'parked'
     where q.message ? 'parked'
       and q.message @> (select util._job_base(coalesce(t.shadow_of, t.id))
                           from util.embedding_targets t where t.id = _release_parked.target_id)
       and (pg_catalog.jsonb_typeof(q.message -> 'parked') <> 'number'
            or not exists (select from util.embedding_batches b
                            where b.id = (q.message ->> 'parked')::bigint
                              and b.state in ('staging', 'submitting', 'submitted')))
    returning util._job_rows(q.message) as rows
  )
  select coalesce(sum(m.rows), 0)::bigint into released from moved m;
  if released > 0 then
    -- Listening workers claim them now (at commit), not at their next poll.
    perform pg_catalog.pg_notify('embedding_jobs', '');
  end if;
  return released;
end
$$;

-------------------------------------------------------------------------------
-- Submitting and polling (the batch tick: the worker, or the embed function)
-------------------------------------------------------------------------------

-- internal: takes the batches due for a look (staging ones whose texts
-- waited batch_stage_seconds, or that are full, or all of them with
-- `staging_now`, as `worker --once` asks before it exits; submitted ones
-- due for a poll; submitting ones a crashed worker left), moving each on by
-- `lease_seconds` so that concurrent tickers take each once. Returns them.
create or replace function util._claim_due_batches(lease_seconds int default 300, max_batches int default 10,
                                                   staging_now boolean default false)
returns setof util.embedding_batches
language sql
set search_path = ''
as $$
  update util.embedding_batches b
     set due_at = now() + pg_catalog.make_interval(secs => lease_seconds)
   where b.id in (select x.id from util.embedding_batches x
                   where x.state in ('staging', 'submitting', 'submitted')
                     and (x.due_at <= now()
                          or (x.state = 'staging'
                              and (staging_now or x.requests >= util._setting('batch_max_requests')::int)))
                   order by x.due_at
                   limit max_batches
                   for update skip locked)
  returning b.*
$$;

-- internal: whether any batch is due for a look (util._claim_due_batches
-- would take one): push mode's tick asks before it calls the embed function.
create or replace function util._batches_due()
returns boolean
language sql
stable
set search_path = ''
as $$
  select exists (select from util.embedding_batches x
                  where x.state in ('staging', 'submitting', 'submitted')
                    and (x.due_at <= now()
                         or (x.state = 'staging' and x.requests >= util._setting('batch_max_requests')::int)))
$$;

-- internal: readies staging batch `batch_id` for submission, within
-- `max_requests` texts, `max_bytes` bytes of input and `max_tokens` tokens
-- (null: no limit). When all of its texts fit, it is marked submitting;
-- else the texts that fit move to a new batch, marked submitting, and the
-- rest stay in this one, staging and due at once. So the batch keeps its
-- id until its last texts go: the jobs parked on it (util._release_parked)
-- run again once, when all of its texts were answered, and not once per
-- part. Returns the submitting batch's id and texts (custom_id, input),
-- none when there is nothing to send.
create or replace function util._take_batch_inputs(batch_id bigint, max_requests int, max_bytes bigint,
                                                   max_tokens bigint)
returns table (submitting bigint, custom_id text, input text)
language plpgsql
set search_path = ''
as $$
declare
  b util.embedding_batches;
  rest bigint;
  taken bigint;
begin
  select * into b from util.embedding_batches x where x.id = _take_batch_inputs.batch_id for update;
  if b.state <> 'staging' then
    return;
  end if;
  -- The texts that fit, in the order of their custom_id (any order does).
  perform 'PRAGMA:TABLE: _autoembed_kept (custom_id text, bytes bigint, tokens int)';
  create temp table if not exists _autoembed_kept (custom_id text, bytes bigint, tokens int) on commit drop;
  truncate _autoembed_kept;
  insert into _autoembed_kept
  select k.custom_id, k.bytes, k.tokens from (
    -- a line's bytes: its text and, at most, the JSON around it
    select i.custom_id, pg_catalog.octet_length(i.input)::bigint + 256 as bytes, i.tokens,
           pg_catalog.row_number() over w as n,
           sum(pg_catalog.octet_length(i.input)::bigint + 256) over w as total_bytes,
           sum(i.tokens::bigint) over w as total_tokens
      from util.embedding_batch_inputs i
     where i.batch_id = b.id and i.vector is null and i.error is null
    window w as (order by i.custom_id)
  ) k
   where k.n <= max_requests and k.total_bytes <= max_bytes and (max_tokens is null or k.total_tokens <= max_tokens);
  select count(*) into rest from util.embedding_batch_inputs i
   where i.batch_id = b.id and i.vector is null and i.error is null
     and i.custom_id not in (select k.custom_id from _autoembed_kept k);
  taken := b.id;
  if rest > 0 and exists (select from _autoembed_kept) then
    -- Due when the caller's claim of `b` would be (it is submitting it now).
    insert into util.embedding_batches (target_id, model, dimensions, lane, attempt, state, base_url,
                                        key_fingerprint, due_at)
    values (b.target_id, b.model, b.dimensions, b.lane, b.attempt, 'submitting', b.base_url, b.key_fingerprint,
            b.due_at)
    returning id into taken;
    update util.embedding_batch_inputs i set batch_id = taken
     where i.batch_id = b.id and i.custom_id in (select k.custom_id from _autoembed_kept k);
    update util.embedding_batches x
       set requests = x.requests - k.n, tokens = x.tokens - k.tokens, bytes = x.bytes - k.bytes, due_at = now()
      from (select count(*)::int as n, coalesce(sum(tokens), 0) as tokens, coalesce(sum(bytes), 0) as bytes
              from _autoembed_kept) k
     where x.id = b.id;
  elsif rest > 0 then
    -- Not one text fits now (the account's enqueued tokens): it waits.
    return;
  end if;
  update util.embedding_batches x
     set state = case when k.n = 0 then 'applied' else 'submitting' end,
         applied_at = case when k.n = 0 then now() end,
         requests = k.n, tokens = k.tokens, bytes = k.bytes
    from (select count(*)::int as n, coalesce(sum(tokens), 0) as tokens, coalesce(sum(bytes), 0) as bytes
            from _autoembed_kept) k
   where x.id = taken;
  return query select taken, i.custom_id, i.input from util.embedding_batch_inputs i
                join _autoembed_kept k on k.custom_id = i.custom_id
               where i.batch_id = taken
               order by i.custom_id;
end
$$;

-- internal: the staging batch of target `target_id`, made when there is
-- none (one per target: concurrent stagers meet on its row, which this
-- locks to the end of the caller's transaction), due in `delay_seconds` at
-- the latest, its submissions at least `attempt`. Returns its id.
create or replace function util._staging_batch(target_id int, attempt int, delay_seconds int)
returns bigint
language sql
set search_path = ''
as $$
  insert into util.embedding_batches as b (target_id, model, dimensions, attempt, due_at)
  select t.id, t.model, t.dimensions, _staging_batch.attempt,
         now() + pg_catalog.make_interval(secs => delay_seconds)
    from util.embedding_targets t where t.id = _staging_batch.target_id
  on conflict (target_id) where state = 'staging' do update
    set attempt = greatest(b.attempt, excluded.attempt), due_at = least(b.due_at, excluded.due_at)
  returning b.id
$$;

-- internal: moves texts `custom_ids` of batch `from_batch` into its
-- target's staging batch (submission `attempt`), due in `delay_seconds` at
-- the latest. Returns that batch's id.
create or replace function util._restage(from_batch bigint, custom_ids text[], attempt int, delay_seconds int)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  b util.embedding_batches;
  staged bigint;
begin
  select * into b from util.embedding_batches x where x.id = from_batch;
  staged := util._staging_batch(b.target_id, attempt, delay_seconds);
  with moved as (
    update util.embedding_batch_inputs i set batch_id = staged, error = null, error_retryable = false
     where i.batch_id = from_batch and i.custom_id = any (custom_ids)
    returning i.tokens, pg_catalog.octet_length(i.input) as bytes
  )
  update util.embedding_batches x
     set requests = x.requests + m.n, tokens = x.tokens + m.tokens, bytes = x.bytes + m.bytes
    from (select count(*)::int as n, coalesce(sum(tokens), 0) as tokens, coalesce(sum(bytes), 0) as bytes
            from moved) m
   where x.id = staged;
  return staged;
end
$$;

-- internal: the tokens of the batches of (base_url, key_fingerprint,
-- model) the provider still holds: what counts against the account's
-- enqueued-token limit.
create or replace function util._batch_enqueued_tokens(base_url text, key_fingerprint text, model text)
returns bigint
language sql
stable
set search_path = ''
as $$
  select coalesce(sum(b.tokens), 0)::bigint from util.embedding_batches b
   where b.state in ('submitting', 'submitted') and b.base_url = _batch_enqueued_tokens.base_url
     and b.key_fingerprint = _batch_enqueued_tokens.key_fingerprint and b.model = _batch_enqueued_tokens.model
$$;

-- internal: ends batch `batch_id` at the provider's final word: its state
-- (applied, failed, expired, cancelled) and counts; the texts it did not
-- answer go to a new batch or online by `unanswered` ('resubmit' or
-- 'online') with `reason`, online after batch_max_attempts submissions;
-- its target's parked jobs are released. Returns the texts resubmitted.
create or replace function util._finish_batch(batch_id bigint, state text, provider_status text,
                                              completed int, failed int, unanswered text, reason text)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  b util.embedding_batches;
  open_ids text[];
  resubmitted bigint := 0;
begin
  select * into b from util.embedding_batches x where x.id = _finish_batch.batch_id for update;
  if b.state not in ('submitting', 'submitted') then
    return 0;
  end if;
  select array_agg(i.custom_id) into open_ids from util.embedding_batch_inputs i
   where i.batch_id = b.id and i.vector is null and i.error is null;
  if open_ids is not null then
    if unanswered = 'resubmit' and b.attempt < util._setting('batch_max_attempts')::int then
      perform util._restage(b.id, open_ids, b.attempt + 1, 0);
      resubmitted := pg_catalog.cardinality(open_ids);
    else
      update util.embedding_batch_inputs i set error = reason, input = null
       where i.batch_id = b.id and i.custom_id = any (open_ids);
    end if;
  end if;
  update util.embedding_batch_inputs i set input = null where i.batch_id = b.id and i.input is not null;
  update util.embedding_batches x
     set state = _finish_batch.state, provider_status = _finish_batch.provider_status,
         completed = _finish_batch.completed, failed = _finish_batch.failed,
         completed_at = coalesce(x.completed_at, now()), applied_at = now(),
         error = case when _finish_batch.state = 'applied' then null else reason end
   where x.id = b.id;
  -- Released even when texts were resubmitted: a job whose texts all came
  -- back writes now, one still waiting parks again at once.
  perform util._release_parked(b.target_id);
  return resubmitted;
end
$$;

-- internal: the endpoint of batch `batch_id` has no batch API: every text
-- of its target's open batches goes online (their jobs released), the
-- target stages nothing for a day (util._stage_batch_inputs), and one
-- warning a day says so.
create or replace function util._batch_unsupported(batch_id bigint, detail text)
returns void
language plpgsql
set search_path = ''
as $$
declare
  b util.embedding_batches;
  t util.embedding_targets;
begin
  select * into b from util.embedding_batches x where x.id = _batch_unsupported.batch_id;
  select * into t from util.embedding_targets x where x.id = b.target_id;
  update util.embedding_batch_inputs i
     set error = 'the endpoint has no batch API', input = null
    from util.embedding_batches x
   where x.id = i.batch_id and x.target_id = b.target_id and x.state in ('staging', 'submitting', 'submitted')
     and i.vector is null and i.error is null;
  update util.embedding_batches x set state = 'unsupported', applied_at = now(), error = detail
   where x.target_id = b.target_id and x.state in ('staging', 'submitting', 'submitted');
  if not exists (select from util.embedding_errors e
                  where e.target_id = t.id and e.created_at > now() - interval '1 day'
                    and e.error like 'the batch lane falls back online%') then
    insert into util.embedding_errors (target_id, table_name, retryable, error)
    values (t.id, t.table_oid::text, false,
            pg_catalog.format('the batch lane falls back online: %s (model %s); its bulk work is embedded online at the online price',
                              detail, t.model));
  end if;
  perform util._release_parked(b.target_id);
end
$$;

-- public: cancels the open batches of (table, column) (a chunked target:
-- its destination's name), the model change's too: they are cancelled at
-- the provider by the next batch tick, their texts and the rest of the
-- sweep go online now. Returns the batches cancelled.
create or replace function util.cancel_batches(
  target_table regclass,
  embedding_column name default 'embedding'
)
returns int
language plpgsql
security definer
set search_path = ''
as $$
declare
  l util.embedding_targets := util._live_target(target_table, embedding_column);
  ids int[];
  cancelled int;
  x int;
begin
  select array_agg(t.id) into ids from util.embedding_targets t where t.id = l.id or t.shadow_of = l.id;
  update util.embedding_targets t set sweep_lane = 'online' where t.id = any (ids) and t.sweep_lane = 'batch';
  update util.embedding_batch_inputs i
     set error = 'the batch was cancelled (util.cancel_batches)', input = null
    from util.embedding_batches b
   where b.id = i.batch_id and b.target_id = any (ids) and b.state in ('staging', 'submitting', 'submitted')
     and i.vector is null and i.error is null;
  -- Staging ones end here; the provider's are cancelled by the tick (due now).
  update util.embedding_batches b set state = 'cancelled', applied_at = now(), error = 'cancelled'
   where b.target_id = any (ids) and b.state = 'staging';
  get diagnostics cancelled = row_count;
  update util.embedding_batches b set error = 'cancel requested', due_at = now()
   where b.target_id = any (ids) and b.state in ('submitting', 'submitted');
  get diagnostics x = row_count;
  -- Parked jobs leave the batch lane: they go online now.
  update pgmq.q_embedding_jobs q
     set vt = pg_catalog.clock_timestamp(), message = q.message - 'parked' - 'lane'
   where q.message ? 'lane' and q.message @> util._job_base(l.id);
  return cancelled + x;
end
$$;

-- internal: forgets what the batch lane no longer needs: the texts and
-- vectors of ended batches once no batch-lane job of their target is left
-- in the queue (the jobs their end released have run: the vectors are
-- written, I11), or at the latest batch_keep_hours after they ended; and
-- batches that ended more than 30 days ago. util.maintain_embeddings runs
-- it.
create or replace function util._prune_batches()
returns void
language sql
set search_path = ''
as $$
  -- The queue is looked at once per ended batch that still has texts, not per text.
  with prunable as (
    select b.id from util.embedding_batches b
     where b.state not in ('staging', 'submitting', 'submitted')
       and exists (select from util.embedding_batch_inputs i where i.batch_id = b.id)
       and (b.applied_at < now() - pg_catalog.make_interval(hours => util._setting('batch_keep_hours')::int)
            or not exists (select from pgmq.q_embedding_jobs q
                            where q.message ? 'lane'
                              and q.message @> (select util._job_base(coalesce(t.shadow_of, t.id))
                                                  from util.embedding_targets t where t.id = b.target_id)))
  )
  delete from util.embedding_batch_inputs i using prunable p where i.batch_id = p.id;
  delete from util.embedding_batches b
   where b.state not in ('staging', 'submitting', 'submitted') and b.applied_at < now() - interval '30 days';
$$;
