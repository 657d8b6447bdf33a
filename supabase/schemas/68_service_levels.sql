-- autoembed schema 68: the figures the pipeline keeps as it works, so that
-- util.embedding_status (70) answers from a few small tables instead of
-- scanning the users' tables: rows holding vectors per target (and so per
-- model: a target's vectors are all of its model), how long changes took to
-- become fresh (per target, per minute), and what the provider calls cost
-- (per target, model and day). Exact recounts are util.embedding_status_exact
-- (70), which also repairs the kept count.
--
-- None of it adds work to a user's INSERT or UPDATE: the counts follow the
-- fingerprints (written by the pipeline, deleted with the user's rows), and
-- the rest is recorded when a batch settles (util._settle_batch).

-------------------------------------------------------------------------------
-- Rows holding vectors, per target
-------------------------------------------------------------------------------

-- internal: per target, the rows whose store holds vectors the pipeline
-- wrote (their fingerprints), as of the last fold; the pending changes are
-- util.embedding_count_deltas. The last exact recount's figures are kept
-- beside (util.embedding_status_exact).
create table if not exists util.embedding_counts (
  target_id int primary key references util.embedding_targets (id) on delete cascade,
  embedded bigint not null default 0,
  -- the last exact recount: when, and the figures only a scan can tell
  counted_at timestamptz,
  counted_rows bigint,
  counted_empty bigint,
  counted_stale bigint
);

-- internal: changes of util.embedding_counts.embedded not folded in yet:
-- one row per statement that added or removed fingerprints, appended in the
-- statement's own transaction (exact under concurrency and crashes, and no
-- lock a writer waits for: a counter row updated in place would make every
-- writer of a target queue behind the longest open transaction that wrote
-- it). util._fold_counts moves them into util.embedding_counts.
create table if not exists util.embedding_count_deltas (
  target_id int not null,
  embedded bigint not null
);

-- internal trigger (AFTER INSERT or DELETE, statement level, with the
-- transition table added_fingerprints or removed_fingerprints): appends the
-- statement's change of each target's count. Every path that adds or
-- removes fingerprints goes through it: the core's writes, the deletes and
-- truncates of users' rows, retirements, detaching (the cascade).
create or replace function util._count_fingerprints()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- For plpgsql_check only (no-ops at run time): the transition tables.
  perform 'PRAGMA:TABLE: added_fingerprints (target_id int, row_id text, content_hash bytea, embedded_at timestamptz)';
  perform 'PRAGMA:TABLE: removed_fingerprints (target_id int, row_id text, content_hash bytea, embedded_at timestamptz)';
  if tg_op = 'INSERT' then
    insert into util.embedding_count_deltas (target_id, embedded)
    select n.target_id, pg_catalog.count(*) from added_fingerprints n group by n.target_id;
  else
    insert into util.embedding_count_deltas (target_id, embedded)
    select o.target_id, -pg_catalog.count(*) from removed_fingerprints o group by o.target_id;
  end if;
  return null;
end
$$;

create or replace trigger embedding_fingerprints_added
  after insert on util.embedding_fingerprints
  referencing new table as added_fingerprints
  for each statement execute function util._count_fingerprints();

create or replace trigger embedding_fingerprints_removed
  after delete on util.embedding_fingerprints
  referencing old table as removed_fingerprints
  for each statement execute function util._count_fingerprints();

-- internal: the lock that orders folds and repairs of the counts (an
-- advisory one: the writers appending deltas never take it).
create or replace function util._lock_counts()
returns void
language sql
set search_path = ''
as $$ select pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('autoembed.embedding_counts')) $$;

-- internal: folds the pending deltas into util.embedding_counts (deltas of
-- targets that are gone are dropped). util.maintain_embeddings runs it, so
-- the deltas stay few; status adds those not folded yet.
create or replace function util._fold_counts()
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  folded bigint;
begin
  perform util._lock_counts();
  with moved as (
    delete from util.embedding_count_deltas d returning d.target_id, d.embedded
  ), summed as (
    select m.target_id, pg_catalog.sum(m.embedded)::bigint as embedded, pg_catalog.count(*) as n
      from moved m group by m.target_id
  ), kept as (
    insert into util.embedding_counts as c (target_id, embedded)
    select s.target_id, s.embedded from summed s
     where exists (select from util.embedding_targets t where t.id = s.target_id)
     order by s.target_id
    on conflict (target_id) do update set embedded = c.embedded + excluded.embedded
  )
  select coalesce(pg_catalog.sum(s.n), 0)::bigint into folded from summed s;
  return folded;
end
$$;

-- internal: per target, its rows holding vectors (exact: the fold and the
-- pending deltas, read in one snapshot).
create or replace function util._embedded_counts()
returns table (target_id int, embedded bigint, counted_at timestamptz, counted_rows bigint,
               counted_empty bigint, counted_stale bigint)
language sql
stable
set search_path = ''
as $$
  with pending as (
    select d.target_id, pg_catalog.sum(d.embedded)::bigint as embedded
      from util.embedding_count_deltas d group by d.target_id
  )
  select t.id, coalesce(c.embedded, 0) + coalesce(p.embedded, 0), c.counted_at, c.counted_rows,
         c.counted_empty, c.counted_stale
    from util.embedding_targets t
    left join util.embedding_counts c on c.target_id = t.id
    left join pending p on p.target_id = t.id
$$;

-- internal: the rows of table `rel`: counted when it is small (at most
-- 1,024 pages, 8 MB: a few milliseconds), else the planner's estimate
-- (pg_class.reltuples scaled to the table's current size, as the planner
-- does), null when the table was never analyzed (autovacuum does it soon
-- after a bulk load). `estimated` says which.
create or replace function util._table_rows(rel regclass, out rows bigint, out estimated boolean)
language plpgsql
stable
set search_path = ''
as $$
declare
  tuples float4;
  pages int;
  current_pages float8;
begin
  if rel is null then
    return;
  end if;
  select c.reltuples, c.relpages into tuples, pages from pg_catalog.pg_class c where c.oid = rel;
  current_pages := pg_catalog.pg_relation_size(rel)::float8
                   / pg_catalog.current_setting('block_size')::float8;
  if current_pages <= 1024 then
    execute pg_catalog.format('select pg_catalog.count(*) from %s', rel) into rows;
    estimated := false;
  else
    estimated := true;
    if tuples >= 0 and pages > 0 then
      rows := pg_catalog.round(tuples / pages * current_pages)::bigint;
    end if;
  end if;
end
$$;

-------------------------------------------------------------------------------
-- Time to fresh, per target and minute
-------------------------------------------------------------------------------

-- internal: the upper bounds (seconds) of the time-to-fresh buckets; a
-- time falls in bucket width_bucket(seconds, bounds): 0 below the first,
-- cardinality(bounds) at or above the last.
create or replace function util._freshness_bounds()
returns float8[]
language sql
immutable
parallel safe
set search_path = ''
as $$
  select '{0.1,0.25,0.5,1,2.5,5,10,30,60,120,300,600,1800,3600,7200,21600,86400}'::float8[]
$$;

-- internal: how long the rows of a target's jobs took from their change
-- (the job's enqueue time: the change's transaction) to done (the settle
-- after their embeddings were written, or found fresh), per minute of
-- settling and bucket, and seconds summed. Kept two hours
-- (util._prune_service_levels).
create table if not exists util.embedding_freshness (
  target_id int not null references util.embedding_targets (id) on delete cascade,
  minute timestamptz not null,
  bucket smallint not null,
  rows bigint not null,
  seconds float8 not null,
  primary key (target_id, minute, bucket)
);

-- internal: the same, summed since the target was attached: what the
-- worker's metrics serve as a Prometheus histogram (counters only grow).
create table if not exists util.embedding_freshness_totals (
  target_id int not null references util.embedding_targets (id) on delete cascade,
  bucket smallint not null,
  rows bigint not null,
  seconds float8 not null,
  primary key (target_id, bucket)
);

-- internal: records the time to fresh of the messages `done`, which the
-- settle that calls it deletes next. Rows are taken by live target; a
-- packed message counts all its rows (a row that failed left it before, as
-- a message of its own, which counts when it is done).
create or replace function util._record_freshness(done bigint[])
returns void
language sql
set search_path = ''
as $$
  with ages as (
    select t.id as target_id, a.rows,
           greatest(extract(epoch from pg_catalog.clock_timestamp() - a.enqueued_at), 0)::float8
             as seconds
      from util._job_ages(done) a
      join pg_catalog.pg_namespace n on n.nspname = a.schema_name
      join pg_catalog.pg_class c on c.relnamespace = n.oid and c.relname = a.table_name
      join util.embedding_targets t on t.table_oid = c.oid and t.embedding_column = a.embedding_column
                                   and t.shadow_of is null and t.retired_at is null
  ), buckets as (
    select g.target_id, pg_catalog.width_bucket(g.seconds, util._freshness_bounds())::smallint as bucket,
           pg_catalog.sum(g.rows)::bigint as rows, pg_catalog.sum(g.rows * g.seconds) as seconds
      from ages g group by 1, 2
  ), per_minute as (
    insert into util.embedding_freshness as f (target_id, minute, bucket, rows, seconds)
    select b.target_id, pg_catalog.date_trunc('minute', pg_catalog.now()), b.bucket, b.rows, b.seconds
      from buckets b order by b.target_id, b.bucket
    on conflict (target_id, minute, bucket) do update
      set rows = f.rows + excluded.rows, seconds = f.seconds + excluded.seconds
  )
  insert into util.embedding_freshness_totals as f (target_id, bucket, rows, seconds)
  select b.target_id, b.bucket, b.rows, b.seconds from buckets b order by b.target_id, b.bucket
  on conflict (target_id, bucket) do update
    set rows = f.rows + excluded.rows, seconds = f.seconds + excluded.seconds
$$;

-- internal: the `q` quantile (0 to 1) of a histogram: `counts[b + 1]`
-- rows in bucket b of util._freshness_bounds(), linearly within the bucket
-- (as Prometheus' histogram_quantile); the last bucket, which has no upper
-- bound, answers its lower one. Null without rows.
create or replace function util._freshness_quantile(counts bigint[], q float8)
returns float8
language plpgsql
immutable
set search_path = ''
as $$
declare
  bounds float8[] := util._freshness_bounds();
  total float8 := 0;
  below float8 := 0;
  rank float8;
  lower float8;
begin
  for b in 1 .. coalesce(pg_catalog.cardinality(counts), 0) loop
    total := total + coalesce(counts[b], 0);
  end loop;
  if total = 0 then
    return null;
  end if;
  rank := q * total;
  for b in 1 .. pg_catalog.cardinality(counts) loop
    if coalesce(counts[b], 0) > 0 and below + counts[b] >= rank then
      lower := case when b = 1 then 0 else bounds[b - 1] end;
      if b > pg_catalog.cardinality(bounds) then
        return lower;
      end if;
      return lower + (bounds[b] - lower) * greatest(rank - below, 0) / counts[b];
    end if;
    below := below + coalesce(counts[b], 0);
  end loop;
  return bounds[pg_catalog.cardinality(bounds)];
end
$$;

-- internal: per live target, time to fresh over the last hour (p50, p95,
-- rows), and the rate rows became fresh lately (rows per minute over the
-- last ten minutes, or since the first of them that saw any).
create or replace function util._freshness_figures()
returns table (target_id int, p50 interval, p95 interval, rows_last_hour bigint, rows_per_minute numeric)
language sql
stable
set search_path = ''
as $$
  with hour as (
    select f.target_id, f.bucket, pg_catalog.sum(f.rows)::bigint as rows
      from util.embedding_freshness f
     where f.minute >= pg_catalog.date_trunc('minute', pg_catalog.now()) - interval '59 minutes'
     group by 1, 2
  ), histograms as (
    select h.target_id,
           array(select coalesce((select x.rows from hour x where x.target_id = h.target_id and x.bucket = b), 0)
                   from pg_catalog.generate_series(0, pg_catalog.cardinality(util._freshness_bounds())) b
                  order by b) as counts,
           pg_catalog.sum(h.rows)::bigint as rows
      from hour h group by h.target_id
  ), recent as (
    select f.target_id, pg_catalog.sum(f.rows) as rows, pg_catalog.min(f.minute) as since
      from util.embedding_freshness f
     where f.minute >= pg_catalog.date_trunc('minute', pg_catalog.now()) - interval '9 minutes'
     group by 1
  )
  select h.target_id,
         pg_catalog.make_interval(secs => util._freshness_quantile(h.counts, 0.5)),
         pg_catalog.make_interval(secs => util._freshness_quantile(h.counts, 0.95)),
         h.rows,
         pg_catalog.round(r.rows / greatest(extract(epoch from pg_catalog.now() - r.since) / 60, 1), 1)
    from histograms h
    left join recent r on r.target_id = h.target_id
$$;

-------------------------------------------------------------------------------
-- Cost: tokens per target, model and day (UTC)
-------------------------------------------------------------------------------

-- internal (read through util.embedding_usage): tokens the provider was
-- sent online, through the batch API (0 until the batch lane exists), and
-- tokens not sent because a vector of the same text was reused (copied
-- from a row holding it, or a chunk's kept). No foreign key: what was spent
-- outlives the target, whose names are kept beside.
create table if not exists util.embedding_usage_daily (
  target_id int not null,
  model text not null,
  day date not null,
  schema_name text not null,
  table_name text not null,
  embedding_column text not null,
  online_tokens bigint not null default 0,
  online_inputs bigint not null default 0,
  batch_tokens bigint not null default 0,
  batch_inputs bigint not null default 0,
  reused_tokens bigint not null default 0,
  reused_inputs bigint not null default 0,
  primary key (target_id, model, day)
);

-- internal: adds a batch's usage: a JSON array of {target_id, model,
-- online_tokens, online_inputs, batch_tokens, batch_inputs, reused_tokens,
-- reused_inputs} (the core counts tokens with the model's tokenizer; batch:
-- vectors the batch lane brought, 55_batch_lane). Usage of a target that
-- is gone is dropped.
create or replace function util._record_usage(usage jsonb)
returns void
language sql
set search_path = ''
as $$
  insert into util.embedding_usage_daily as d (target_id, model, day, schema_name, table_name, embedding_column,
                                               online_tokens, online_inputs, batch_tokens, batch_inputs,
                                               reused_tokens, reused_inputs)
  select u.target_id, u.model, (pg_catalog.now() at time zone 'utc')::date, n.nspname, c.relname,
         coalesce(l.embedding_column, t.embedding_column),
         coalesce(u.online_tokens, 0), coalesce(u.online_inputs, 0),
         coalesce(u.batch_tokens, 0), coalesce(u.batch_inputs, 0),
         coalesce(u.reused_tokens, 0), coalesce(u.reused_inputs, 0)
    from pg_catalog.jsonb_to_recordset(coalesce(usage, '[]')) as u(target_id int, model text, online_tokens bigint,
                                                                  online_inputs bigint, batch_tokens bigint,
                                                                  batch_inputs bigint, reused_tokens bigint,
                                                                  reused_inputs bigint)
    join util.embedding_targets t on t.id = u.target_id
    left join util.embedding_targets l on l.id = t.shadow_of
    join pg_catalog.pg_class c on c.oid = t.table_oid
    join pg_catalog.pg_namespace n on n.oid = c.relnamespace
   order by u.target_id, u.model
  on conflict (target_id, model, day) do update
    set schema_name = excluded.schema_name, table_name = excluded.table_name,
        embedding_column = excluded.embedding_column,
        online_tokens = d.online_tokens + excluded.online_tokens,
        online_inputs = d.online_inputs + excluded.online_inputs,
        batch_tokens = d.batch_tokens + excluded.batch_tokens,
        batch_inputs = d.batch_inputs + excluded.batch_inputs,
        reused_tokens = d.reused_tokens + excluded.reused_tokens,
        reused_inputs = d.reused_inputs + excluded.reused_inputs
$$;

-- internal: the tokens per minute the rate budgets of `provider`'s models
-- (17_budgets) let backfill work draw now: the limit set by hand, else the
-- one learned from the provider's headers, scaled down after unforeseen
-- 429s, at the backfill bucket's refill rate (1 - b - 2s of it). For the ETA
-- of util.embedding_status when nothing was embedded lately; null when no
-- limit is known.
create or replace function util._budget_tokens_per_minute(provider text)
returns numeric
language sql
stable
set search_path = ''
as $$
  select pg_catalog.max(coalesce(l.tokens_per_minute, b.learned_tokens_per_minute) * b.scale
                        * (1 - util._setting('budget_burst_percent')::numeric / 100
                             - 2 * util._setting('budget_search_percent')::numeric / 100))
    from util.provider_budgets b
    left join lateral (
      select r.tokens_per_minute from util.provider_rate_limits r
       where r.model = b.model and r.base_url in (b.base_url, '')
       order by r.base_url desc limit 1
    ) l on true
   where util._provider_of(b.model) = _budget_tokens_per_minute.provider
$$;

-------------------------------------------------------------------------------
-- The settle of a batch, with its figures
-------------------------------------------------------------------------------

-- internal: settles a batch (util._settle_jobs, 16_jobs: its arguments and
-- result) and records, in the same transaction, the time to fresh of its
-- done messages and its usage (util._record_usage's `usage`): recorded
-- exactly once per settled batch, and not at all when the settle fails.
create or replace function util._settle_batch(done bigint[], outcomes jsonb, circuits jsonb, usage jsonb)
returns table (job_id bigint, row_id text, dead_lettered boolean, retry_in_seconds int)
language plpgsql
set search_path = ''
as $$
begin
  if pg_catalog.cardinality(done) > 0 then
    perform util._record_freshness(done);
  end if;
  if pg_catalog.jsonb_array_length(coalesce(usage, '[]')) > 0 then
    perform util._record_usage(usage);
  end if;
  return query select s.job_id, s.row_id, s.dead_lettered, s.retry_in_seconds
                 from util._settle_jobs(done, outcomes, circuits) s;
end
$$;

-- internal: folds the count deltas and drops time-to-fresh minutes older
-- than two hours; util.maintain_embeddings runs it.
create or replace function util._prune_service_levels()
returns void
language plpgsql
set search_path = ''
as $$
begin
  perform util._fold_counts();
  delete from util.embedding_freshness f where f.minute < pg_catalog.now() - interval '2 hours';
end
$$;
