-- autoembed schema 70: diagnose with plain SQL. util.embedding_status has
-- one row per attached (table, embedding column), answered from the figures
-- the pipeline keeps (68_service_levels) and the queue's (16_jobs), so
-- dashboards and alerts may poll it; util.embedding_status_exact() scans
-- the tables for the figures only a scan can tell, and repairs the kept
-- ones. util.embedding_usage says what the provider calls cost.
-- util.embedding_errors (10) has one row per failed attempt; the dead
-- letters are in pgmq.a_embedding_jobs.

-- internal: the regular expression a blank text matches (its row has
-- nothing to embed): only the characters the processing core trims (core.ts,
-- `content.trim() === ""`: ECMAScript's white space and line terminators),
-- or none. Spelled out, as [[:space:]] follows the database's locale
-- (C.UTF-8 counts neither U+00A0 nor U+FEFF). Null text is blank too:
-- coalesce(text, '') ~ util._blank_text_pattern().
create or replace function util._blank_text_pattern()
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
  select U&'^[\0009\000A\000B\000C\000D\0020\00A0\1680\2000\2001\2002\2003\2004\2005\2006\2007\2008\2009\200A\2028\2029\202F\205F\3000\FEFF]*$'
$$;

-- internal: per-target figures behind util.embedding_status (live targets;
-- a model change in progress shows in the next_* columns of its table),
-- from small tables only: of a user's table it reads its size
-- (util._table_rows), so its cost does not grow with the tables.
create or replace function util._embedding_status()
returns table (
  schema_name text,
  table_name text,
  embedding_column text,
  model text,
  dimensions int,
  total_rows bigint,
  embedded bigint,
  missing bigint,
  stale bigint,
  models jsonb,
  queued bigint,
  in_flight bigint,
  oldest_queued_age interval,
  dead_lettered bigint,
  last_error text,
  last_error_at timestamptz,
  content_changed_at timestamptz,
  sweep_started_at timestamptz,
  sweep_checked bigint,
  next_model text,
  next_dimensions int,
  next_embedded bigint,
  next_started_at timestamptz,
  next_state text,
  destination text,
  chunks bigint,
  provider text,
  model_known boolean,
  circuit_open_since timestamptz,
  circuit_reason text,
  circuit_retry_at timestamptz,
  empty bigint,
  total_rows_estimated boolean,
  counted_at timestamptz,
  fresh_p50 interval,
  fresh_p95 interval,
  fresh_rows_last_hour bigint,
  rows_per_minute numeric,
  eta interval
)
language sql
stable
security definer
set search_path = ''
as $$
  with counts as (select * from util._embedded_counts()),
  queue as (select * from util._queue_figures()),
  fresh as (select * from util._freshness_figures())
  select n.nspname::text, c.relname::text, t.embedding_column::text, t.model, t.dimensions,
         r.rows,
         coalesce(k.embedded, 0),
         greatest(r.rows - coalesce(k.embedded, 0) - coalesce(k.counted_empty, 0), 0),
         k.counted_stale,
         case when k.embedded > 0 then pg_catalog.jsonb_build_object(t.model, k.embedded) else '{}'::jsonb end,
         coalesce(q.queued, 0), coalesce(q.in_flight, 0), pg_catalog.now() - q.oldest_enqueued_at,
         coalesce(q.dead_lettered, 0),
         e.error, e.created_at,
         t.content_changed_at,
         t.sweep_started_at,
         case when t.sweep_started_at is not null then t.sweep_checked end,
         s.model, s.dimensions, case when s.id is not null then coalesce(sk.embedded, 0) end, s.created_at,
         -- Where a model change is, from the kept counts and the catalog (no scan).
         case when s.id is null then null
              when s.sweep_started_at is not null or coalesce(sk.embedded, 0) < coalesce(k.embedded, 0)
                then 'embedding'
              when exists (select from util._store_twin_plan(t, s) p where p.twin_valid is not true)
                then 'indexing'
              else 'switching'
         end,
         t.destination::text,
         ch.rows,
         util._provider_of(t.model),
         util._model_known(t.model),
         p.opened_at, p.reason, p.retry_at,
         k.counted_empty,
         r.estimated or coalesce(ch.estimated, false),
         k.counted_at,
         f.p50, f.p95, coalesce(f.rows_last_hour, 0), coalesce(f.rows_per_minute, 0),
         case when coalesce(q.queued, 0) = 0 then interval '0'
              when f.rows_per_minute > 0
                then pg_catalog.make_interval(secs => q.queued / f.rows_per_minute * 60)
              when b.tokens_per_minute > 0 and u.tokens_per_input > 0
                then pg_catalog.make_interval(secs => q.queued * u.tokens_per_input / b.tokens_per_minute * 60)
         end
    from util.embedding_targets t
    join pg_catalog.pg_class c on c.oid = t.table_oid
    join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    left join counts k on k.target_id = t.id
    cross join lateral util._table_rows(t.table_oid) r
    left join lateral util._table_rows(case when t.store = 'chunks' then t.destination end) ch on true
    left join util.embedding_targets s on s.shadow_of = t.id
    left join counts sk on sk.target_id = s.id
    left join queue q on q.schema_name = n.nspname::text and q.table_name = c.relname::text
                     and q.embedding_column = t.embedding_column::text
    left join fresh f on f.target_id = t.id
    left join util.provider_circuits p on p.provider = util._provider_of(t.model)
    left join lateral (
      select x.error, x.created_at from util.embedding_errors x
       where x.target_id in (t.id, s.id) order by x.created_at desc, x.id desc limit 1
    ) e on true
    cross join lateral (
      select util._budget_tokens_per_minute(util._provider_of(t.model)) as tokens_per_minute
    ) b
    cross join lateral (
      select pg_catalog.sum(d.online_tokens)::numeric / nullif(pg_catalog.sum(d.online_inputs), 0) as tokens_per_input
        from util.embedding_usage_daily d
       where d.target_id = t.id and d.day >= (pg_catalog.now() at time zone 'utc')::date - 1
    ) u
   where t.shadow_of is null and t.retired_at is null
   order by 1, 2, 3
$$;

-- public: one row per attached (table, embedding column), cheap enough to
-- poll: it reads the figures the pipeline keeps and the queue, never a
-- scan of a table beyond 8 MB. total_rows: the table's rows, counted while
-- it is small (8 MB), else the planner's estimate (total_rows_estimated
-- says so; null until the table is first analyzed); embedded: rows whose
-- store holds vectors the pipeline wrote (exact, kept as it writes: a row
-- whose embedding a util.clear_column trigger just cleared counts until
-- its new one is written); missing: total_rows - embedded - empty (an
-- estimate with total_rows); stale and empty (rows whose content function
-- returns null or blank text: nothing to embed) only a scan can tell: they
-- are as the last util.embedding_status_exact() found them, at counted_at
-- (null before one). models: rows per model; queued / in-flight rows, the
-- oldest queued job's age, dead-lettered rows, the last error; when the
-- content function last changed and how far a sweep (backfill, recheck)
-- has come; a model change in progress: next_model, next_dimensions,
-- next_embedded (rows the new model holds so far), next_started_at, and
-- next_state, where it is: 'embedding' (the new model's vectors are being
-- computed), 'indexing' (they are all in; twins of the live store's vector
-- indexes are being built, concurrently, while searches use the live ones),
-- 'switching' (ready: the switch comes at the next tick, unless last_error
-- says what holds it back). For a
-- chunked target (embedding_column is then its destination's table name):
-- destination, and chunks (rows of the destination, counted or estimated
-- as total_rows); embedded counts source rows with a chunk set. provider:
-- who embeds the model ('openai' for any OpenAI-compatible endpoint,
-- 'local'); model_known: the registry (util.embedding_models) knows the
-- model, else it runs with the dimensions given and conservative limits;
-- while all its calls fail, its circuit is open: since when
-- (circuit_open_since), the last failure (circuit_reason), and when the
-- next probe may go (circuit_retry_at). Its rows wait in the queue
-- meanwhile, spending no attempts. Freshness as a service level: fresh_p50
-- and fresh_p95, how long rows took over the last hour from their change
-- (the job's enqueue) to done (embedded, or found fresh), over
-- fresh_rows_last_hour rows; rows_per_minute, the rate rows became fresh
-- over the last ten minutes; eta, when the queued rows will be done at
-- that rate (or, when nothing ran lately, at the provider's budget, where
-- one is known): 0 with nothing queued, null when unknown.
-- internal: the batch lane per attached (table, column), for
-- util.embedding_status: batches open (staging or at the provider, the
-- model change's included), their texts and those answered so far, the
-- rows whose jobs wait parked for them, and the US dollars the batch lane
-- saved against online prices (util.embedding_models), since attached.
-- Security definer, as util._embedding_status: the view's readers read
-- the queue and the batches through it.
create or replace function util._batch_figures()
returns table (schema_name text, table_name text, embedding_column text, batches_open int,
               batch_texts bigint, batch_texts_done bigint, parked bigint, batch_saved_usd numeric)
language sql
stable
security definer
set search_path = ''
as $$
  with open as (
    select n.nspname::text as schema_name, c.relname::text as table_name, l.embedding_column::text as embedding_column,
           count(distinct b.id)::int as batches_open, coalesce(sum(b.requests), 0)::bigint as texts,
           coalesce(sum(b.completed), 0)::bigint as done
      from util.embedding_batches b
      join util.embedding_targets t on t.id = b.target_id
      join util.embedding_targets l on l.id = coalesce(t.shadow_of, t.id)
      join pg_catalog.pg_class c on c.oid = l.table_oid
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where b.state in ('staging', 'submitting', 'submitted')
     group by 1, 2, 3
  ), parked as (
    select q.message ->> 'schema' as schema_name, q.message ->> 'table' as table_name,
           q.message ->> 'embeddingColumn' as embedding_column, sum(util._job_rows(q.message))::bigint as parked
      from pgmq.q_embedding_jobs q
     where q.message ? 'parked'
     group by 1, 2, 3
  ), saved as (
    select d.schema_name, d.table_name, d.embedding_column,
           pg_catalog.round(sum(d.batch_tokens * (m.price_per_mtok - m.batch_price_per_mtok)) / 1000000, 6) as usd
      from util.embedding_usage_daily d
      join util.embedding_models m on m.model = util._model_registry_key(d.model)
     where d.batch_tokens > 0
     group by 1, 2, 3
  )
  select coalesce(o.schema_name, p.schema_name, s.schema_name), coalesce(o.table_name, p.table_name, s.table_name),
         coalesce(o.embedding_column, p.embedding_column, s.embedding_column),
         coalesce(o.batches_open, 0), coalesce(o.texts, 0), coalesce(o.done, 0), coalesce(p.parked, 0), s.usd
    from open o
    full join parked p using (schema_name, table_name, embedding_column)
    full join saved s using (schema_name, table_name, embedding_column)
$$;

-- The batch lane (55_batch_lane): batches_open (staging, or at the
-- provider), batch_texts in them and batch_texts_done (answered so far),
-- parked (rows whose jobs wait for them), and batch_saved_usd, what the
-- batch lane saved against online prices since the table was attached.
-- Change capture (35_capture): capture (triggers or logical), and for a
-- logical target its slot, capture_lag_bytes (write-ahead log the slot
-- holds), capture_lag_seconds (0 when it holds none, else since the worker
-- last confirmed) and capture_attached (a worker follows the slot now).
create or replace view util.embedding_status as
select s.*,
       coalesce(b.batches_open, 0) as batches_open,
       coalesce(b.batch_texts, 0) as batch_texts,
       coalesce(b.batch_texts_done, 0) as batch_texts_done,
       coalesce(b.parked, 0) as parked,
       b.batch_saved_usd,
       case when c.schema_name is null then 'triggers' else 'logical' end as capture,
       c.capture_slot,
       c.capture_lag_bytes,
       c.capture_lag_seconds,
       c.capture_attached
  from util._embedding_status() s
  left join util._batch_figures() b
    on b.schema_name = s.schema_name and b.table_name = s.table_name and b.embedding_column = s.embedding_column
  left join util._capture_figures() c
    on c.schema_name = s.schema_name and c.table_name = s.table_name and c.embedding_column = s.embedding_column;

-- public: util.embedding_status, exact: total_rows, embedded (rows whose
-- store holds vectors, whoever wrote them), missing, stale, empty (null
-- while the content function raises for some row), models, next_embedded
-- and chunks, counted by scanning each attached table and running its
-- content function once a row: the explicit, slow call (seconds on a large
-- table). It also repairs the kept count of rows holding vectors (from the
-- fingerprints) and keeps stale and empty for util.embedding_status
-- (counted_at).
create or replace function util.embedding_status_exact()
returns setof util.embedding_status
language plpgsql
security definer
set search_path = ''
as $$
declare
  st util.embedding_status;
  t record;
  s_id int;
  fingerprinted bigint;
  has_vector text;
  total_rows bigint;
  embedded bigint;
  missing bigint;
  stale bigint;
  empty bigint;
begin
  for st in select * from util.embedding_status loop
    select c.*, x as target into t
      from util._target_config c join util.embedding_targets x on x.id = c.id
     where c.shadow_of is null and c.schema_name = st.schema_name and c.table_name = st.table_name
       and c.embedding_column = st.embedding_column;
    if t.id is null then
      continue;
    end if;
    -- Embedded: rows whose store holds their vectors (util._store_has_vector);
    -- missing: rows with text (not blank: util._blank_text_pattern) and none;
    -- empty: the other rows without vectors, whose text is null or blank, so
    -- they need none; stale: vectors of other text (or other chunk settings)
    -- than the row has now, or of unknown text. One scan, and the content
    -- function runs once a row: a row's vectors decide which one count reads
    -- its text (missing or stale), and empty is what is left.
    has_vector := util._store_has_vector(t.target, 'r', 'f');
    begin
      execute format(
        'select count(*),
                count(*) filter (where %4$s),
                count(*) filter (where not (%4$s) and coalesce(x.content, '''') !~ $3),
                count(*) filter (where %4$s and (f.row_id is null
                                   or f.content_hash <> util._chunked_hash($2, x.content)))
           from %1$s r
           cross join lateral (select %2$s(r) as content) x
           left join util.embedding_fingerprints f on f.target_id = $1 and f.row_id = r.%3$s::text',
        t.table_sql, t.content_function_sql, t.pk_sql, has_vector)
        into total_rows, embedded, missing, stale
        using t.id, util._fingerprint_key(t.target), util._blank_text_pattern();
      empty := total_rows - embedded - missing;
    exception when others then
      -- A content function that raises for some row must not take status
      -- down: count without it (missing then includes rows without text,
      -- empty is unknown: null; stale only rows without a fingerprint).
      execute format(
        'select count(*),
                count(*) filter (where %3$s),
                count(*) filter (where not (%3$s)),
                count(*) filter (where %3$s and f.row_id is null)
           from %1$s r
           left join util.embedding_fingerprints f on f.target_id = $1 and f.row_id = r.%2$s::text',
        t.table_sql, t.pk_sql, has_vector)
        into total_rows, embedded, missing, stale using t.id;
      empty := null;
    end;
    st.total_rows := total_rows;
    st.total_rows_estimated := false;
    st.embedded := embedded;
    st.missing := missing;
    st.stale := stale;
    st.empty := empty;
    st.chunks := util._store_chunks(t.target);
    select count(*) into fingerprinted from util.embedding_fingerprints f where f.target_id = t.id;
    st.models := case when fingerprinted > 0 then jsonb_build_object(t.model, fingerprinted) else '{}'::jsonb end;
    s_id := null;
    select x.id into s_id from util.embedding_targets x where x.shadow_of = t.id;
    st.next_embedded := case when s_id is not null
                             then (select count(*) from util.embedding_fingerprints f where f.target_id = s_id) end;
    -- The repair, after every fold committed so far (the lock orders them,
    -- and this statement's snapshot is taken after it): the kept count
    -- becomes the fingerprints less the deltas not folded yet.
    perform util._lock_counts();
    insert into util.embedding_counts as k (target_id, embedded, counted_at, counted_rows, counted_empty, counted_stale)
    select x.id,
           (select count(*) from util.embedding_fingerprints f where f.target_id = x.id)
             - coalesce((select sum(d.embedded) from util.embedding_count_deltas d where d.target_id = x.id), 0),
           case when x.id = t.id then now() end,
           case when x.id = t.id then total_rows end,
           case when x.id = t.id then empty end,
           case when x.id = t.id then stale end
      from util.embedding_targets x
     where x.id = t.id or x.id = s_id
     order by x.id
    on conflict (target_id) do update
      set embedded = excluded.embedded,
          counted_at = coalesce(excluded.counted_at, k.counted_at),
          counted_rows = case when excluded.counted_at is null then k.counted_rows else excluded.counted_rows end,
          counted_empty = case when excluded.counted_at is null then k.counted_empty else excluded.counted_empty end,
          counted_stale = case when excluded.counted_at is null then k.counted_stale else excluded.counted_stale end;
    st.counted_at := now();
    return next st;
  end loop;
end
$$;

-------------------------------------------------------------------------------
-- Cost as a service level
-------------------------------------------------------------------------------

-- public: what the provider calls cost, per target, model and day (UTC):
-- tokens sent online, through the batch API (0 until the batch lane
-- exists) and saved by reuse (texts whose vector was reused by content
-- hash: copied from a row holding it, or a chunk kept), inputs of each,
-- and US dollars at the registry's prices (util.embedding_models:
-- price_per_mtok online, batch_price_per_mtok in batch; reuse saves the
-- online price, saved_usd; the batch lane saves the difference,
-- batch_saved_usd). Cost columns are null for a model the registry does not
-- know. Rows of a detached table stay, under its last names.
create or replace view util.embedding_usage as
select d.day,
       d.schema_name,
       d.table_name,
       d.embedding_column,
       d.model,
       d.online_tokens,
       d.batch_tokens,
       d.reused_tokens,
       d.online_inputs,
       d.batch_inputs,
       d.reused_inputs,
       pg_catalog.round(d.online_tokens * m.price_per_mtok / 1000000, 6) as online_usd,
       pg_catalog.round(d.batch_tokens * m.batch_price_per_mtok / 1000000, 6) as batch_usd,
       pg_catalog.round((d.online_tokens * m.price_per_mtok + d.batch_tokens * m.batch_price_per_mtok) / 1000000, 6)
         as cost_usd,
       pg_catalog.round(d.reused_tokens * m.price_per_mtok / 1000000, 6) as saved_usd,
       pg_catalog.round(d.batch_tokens * (m.price_per_mtok - m.batch_price_per_mtok) / 1000000, 6)
         as batch_saved_usd
  from util.embedding_usage_daily d
  left join util.embedding_models m on m.model = util._model_registry_key(d.model);
