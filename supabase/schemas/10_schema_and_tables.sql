-- autoembed schema 10: the `util` schema, the queue and every table the
-- pipeline keeps. Detect (triggers, 30) -> queue (pgmq `embedding_jobs`) ->
-- schedule (util.process_embeddings through pg_net, 60) -> apply (the `embed`
-- function or the worker, calling the helpers of 50).
--
-- Public API (stable): util.enable_embeddings, util.disable_embeddings,
-- util.reembed, util.refresh_embeddings, util.cancel_reembed,
-- util.retry_failed, util.maintain_embeddings, util.process_embeddings,
-- util.queue_embeddings (trigger), util.clear_column (trigger),
-- util.project_url, util.invoke_edge_function, util.embedding_status (view),
-- util.embedding_errors (table), util.settings (table), util.embedding_models
-- (table, read-only: the model registry, 15_models). Everything named
-- util._* is internal. Errors carry SQLSTATEs of class AE:
--   AE001  an index on the embedding column a model change cannot carry over
--   AE002  not attached: no such target (table and embedding column)
--   AE003  a registration or argument mistake (message, detail and hint say which)
--   AE004  configuration missing (a Vault secret)
--
-- Names follow the Supabase "automatic embeddings" guide so its readers can
-- switch without rewriting their triggers.

create schema if not exists util;

-- The queue `embedding_jobs` is the jobs module's (16_jobs.sql).

-------------------------------------------------------------------------------
-- Settings (public: edit with update util.settings set value = ... where name = ...)
-------------------------------------------------------------------------------

create table if not exists util.settings (
  name text primary key,
  value text not null,
  description text not null
);

-- Defaults; a value a user changed is kept, descriptions follow this file.
insert into util.settings (name, value, description) values
  ('default_model', 'text-embedding-3-small', 'model for tables attached without an explicit model'),
  ('max_attempts', '5', 'attempts before a job is dead-lettered (archived in pgmq.a_embedding_jobs)'),
  ('backoff_base_seconds', '5', 'first retry delay; doubles with each attempt'),
  ('backoff_max_seconds', '600', 'upper bound of the retry delay'),
  ('sweep_slice_rows', '10000',
   'rows a backfill, recheck or model change visits per step; a step runs only while the queue holds fewer jobs'),
  ('batch_min_texts', '2000',
   'lane auto: a sweep (backfill, model change, recheck) of a table of at least this many rows goes through the batch API'),
  ('batch_stage_seconds', '30',
   'batch lane: how long texts collect before their batch is submitted (a full batch goes at once)'),
  ('batch_poll_seconds', '60', 'batch lane: how often a submitted batch is polled'),
  ('batch_max_requests', '50000', 'batch lane: most texts (lines) per batch file (the provider''s limit: 50,000)'),
  ('batch_max_bytes', '180000000',
   'batch lane: most bytes per batch file (the provider''s limit: 200 MB; kept below for the JSON around each text)'),
  ('batch_enqueued_tokens', '0',
   'batch lane: the account''s enqueued-token limit for the model (0: unknown); batches wait rather than exceed it, and one failed with token_limit_exceeded is resubmitted'),
  ('batch_on_expiry', 'resubmit',
   'batch lane: texts of an expired or failed batch are resubmitted in a new batch (resubmit) or embedded online (online)'),
  ('batch_max_attempts', '3', 'batch lane: submissions of a text before it goes online'),
  ('batch_resubmit_errors', '100',
   'batch lane: error-file lines of a batch go into a new batch when at least this many, else online'),
  ('batch_park_seconds', '3600',
   'batch lane: how long a job waiting for its batch stays hidden before it looks again (its batch ending releases it at once)'),
  ('batch_keep_hours', '24',
   'batch lane: hours at most the texts and vectors of an ended batch are kept (they go as soon as the jobs waiting for them are done)'),
  ('kick_on_change', 'off',
   'on: push mode; the first change while no call is in flight POSTs one kick to the embed function at once instead of waiting for the next tick, and changes send no NOTIFY (set on where pg_cron runs process-embeddings); off: changes NOTIFY listening workers'),
  ('index_build_maintenance_work_mem', '256MB',
   'maintenance_work_mem of the session that builds a model change''s vector indexes (CREATE INDEX CONCURRENTLY, once the new vectors are all in): pgvector builds an HNSW index fastest while its graph fits in it (about 1.1 KB a row at 256 dimensions, 3.5 KB at 1536); keep it well under the memory the server can spare'),
  ('capture_slot', 'autoembed',
   'logical capture: the replication slot the worker follows (one per database: slot names are the whole server''s)'),
  ('capture_lag_warn_bytes', '1073741824',
   'logical capture: the worker warns when the slot holds more write-ahead log than this (a slot nobody follows keeps all of it)'),
  ('index_build_parallel_workers', '2',
   'max_parallel_maintenance_workers of that session: the parallel workers pgvector builds an HNSW index with (bounded by the server''s max_parallel_workers and max_worker_processes); 0 builds in the session''s own process')
on conflict (name) do update set description = excluded.description;

-- internal: a setting's value; raises (AE003) when the name is unknown.
create or replace function util._setting(setting_name text)
returns text
language plpgsql
stable
set search_path = ''
as $$
declare
  result text;
begin
  select s.value into result from util.settings s where s.name = setting_name;
  if result is null then
    raise exception 'unknown autoembed setting "%"', setting_name
      using errcode = 'AE003', hint = 'See select * from util.settings.';
  end if;
  return result;
end
$$;

-------------------------------------------------------------------------------
-- Targets: which (table, embedding column) pairs the pipeline may write, with
-- which content function and model. A queue message is only ever acted on
-- when it names a target exactly (invariant I8). A model change in progress
-- is a *shadow* target beside the live one (see 40_sweeps_and_model_changes).
-------------------------------------------------------------------------------

create table if not exists util.embedding_targets (
  id serial primary key,
  -- the user's table; regclass follows renames
  table_oid regclass not null,
  -- the column that receives embeddings (vector or halfvec)
  embedding_column name not null,
  -- single-column primary key used to address rows
  pk_column name not null,
  -- the content function exactly as the trigger or registration named it (matched against jobs)
  content_function text not null,
  -- where that name resolved to
  content_function_schema name not null,
  content_function_name name not null,
  model text not null,
  dimensions int not null check (dimensions > 0),
  created_at timestamptz not null default now(),
  -- sha256 of the content function's definition when it was last checked
  content_definition bytea,
  -- when a change of that definition was last detected
  content_changed_at timestamptz,
  -- a shadow target: the live target whose model change it builds
  shadow_of int references util.embedding_targets (id) on delete cascade,
  -- sweep in progress since (null: none)
  sweep_started_at timestamptz,
  -- last primary key value (as text) the sweep visited; null: from the start
  sweep_after text,
  sweep_checked bigint not null default 0,
  sweep_enqueued bigint not null default 0,
  -- a live target replaced by its shadow: its fingerprints are being deleted
  retired_at timestamptz,
  unique (table_oid, embedding_column),
  -- a chunked target (null: whole-row): the side table of chunks the
  -- pipeline created and owns; embedding_column then names the target (the
  -- destination's table name), the vectors go to the destination's `embedding`
  destination regclass,
  -- chunk size and overlap in tokens of the model's tokenizer, and the splitter
  chunk_size int,
  chunk_overlap int,
  splitter text,
  -- where the vectors live (22_stores): 'column' (the row's own
  -- embedding_column) or 'chunks' (the side table `destination`)
  store text not null default 'column',
  -- the table's schema and name as its jobs carry them (its names when last
  -- seen): jobs follow a rename, and are found after a drop (45_table_life)
  jobs_schema name,
  jobs_table name,
  -- how its bulk work (sweeps) is embedded: online, batch (the provider's
  -- batch API), auto (batch for tables of at least batch_min_texts rows);
  -- live edits always go online (55_batch_lane)
  lane text not null default 'online' check (lane in ('online', 'batch', 'auto')),
  -- the lane of the sweep in progress, resolved when it began
  sweep_lane text,
  -- how its changes are detected: triggers on the table (30_detect), or
  -- logical, the worker following the write-ahead log through the
  -- publication `autoembed` and its replication slot (35_capture)
  capture text not null default 'triggers' check (capture in ('triggers', 'logical'))
);
-- At most one model change per live target.
create unique index if not exists embedding_targets_one_shadow on util.embedding_targets (shadow_of);

-------------------------------------------------------------------------------
-- Fingerprints: what each embedding was computed from, kept beside the
-- user's table (which stays untouched). Used to skip unchanged text (I3, I4),
-- for the compare-and-set at write time (I2), for "stale" in status, and to
-- copy a vector some row already holds for the same text (I11). A target's
-- fingerprints are always of the target's model.
-------------------------------------------------------------------------------

create table if not exists util.embedding_fingerprints (
  target_id int not null references util.embedding_targets (id) on delete cascade,
  row_id text not null,                -- primary key value as text
  content_hash bytea not null,         -- sha256 of the embedded text
  embedded_at timestamptz not null default now(),
  primary key (target_id, row_id)
);
-- "Has this text been embedded by this model anywhere?" (hash: 4 bytes a row).
create index if not exists embedding_fingerprints_content_hash
  on util.embedding_fingerprints using hash (content_hash);

-------------------------------------------------------------------------------
-- Errors (public): one row per failed attempt, for users to query.
-------------------------------------------------------------------------------

create table if not exists util.embedding_errors (
  id bigint generated always as identity primary key,
  job_id bigint,                       -- pgmq message id in embedding_jobs
  target_id int references util.embedding_targets (id) on delete set null,
  table_name text,                     -- schema-qualified, as named by the job
  row_id text,
  attempt int,
  retryable boolean not null,
  dead_lettered boolean not null default false,
  error text not null,
  created_at timestamptz not null default now()
);
create index if not exists embedding_errors_job on util.embedding_errors (job_id);
create index if not exists embedding_errors_target on util.embedding_errors (target_id, created_at desc);

-------------------------------------------------------------------------------
-- Requests: calls to the embed function in flight (push mode), so that
-- util.process_embeddings keeps at most max_requests of them. A lease ends
-- when the function reports back, when pg_net recorded the call's end, or
-- at its deadline (see util._release_ended_leases in 60_schedule).
-------------------------------------------------------------------------------

create table if not exists util.embedding_requests (
  id bigint generated always as identity primary key,
  jobs int not null,
  started_at timestamptz not null default now(),
  expires_at timestamptz not null,
  -- the pg_net request, so a call that ended without reporting back can be
  -- told from one still running
  request_id bigint,
  -- the queue messages the call carries, brought back when it ended unreported
  job_ids bigint[] not null default '{}',
  -- the parameters the lease was made with; the next calls use the same
  batch_size int not null default 100,
  max_requests int not null default 4,
  timeout_milliseconds int not null default 120000
);

-------------------------------------------------------------------------------
-- Maintenance requests: the last time util.process_embeddings asked the
-- embed function for a maintenance task ({"maintenance": [task]}, 60), so a
-- task that runs longer than a tick (building a model change's indexes) is
-- asked for once, not on every tick.
-------------------------------------------------------------------------------

create table if not exists util.maintenance_requests (
  task text primary key,
  requested_at timestamptz not null,
  -- the pg_net request, to find its answer in net._http_response
  request_id bigint
);

-- When the last kick was sent (epoch milliseconds; 0: none pending), so a
-- burst of changes while the pipeline is idle sends one kick, not one per
-- transaction. A sequence because setval is not transactional and takes no
-- lock held to the end of the user's transaction, as a table row would.
-- util.process_embeddings sets it back to 0 before it reads the queue.
create sequence if not exists util.embedding_kick_clock minvalue 0 start 0;
