-- autoembed schema 70: diagnose with plain SQL. util.embedding_status has
-- one row per attached (table, embedding column); util.embedding_errors (10)
-- one row per failed attempt; the queue's figures come from the jobs module
-- (16_jobs), the dead letters are in pgmq.a_embedding_jobs.

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
-- a model change in progress shows in the next_* columns of its table).
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
  destination text,
  chunks bigint,
  provider text,
  model_known boolean,
  circuit_open_since timestamptz,
  circuit_reason text,
  circuit_retry_at timestamptz,
  empty bigint
)
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  t record;
  s record;
  fingerprinted bigint;
  has_vector text;
begin
  for t in
    select c.*, x.content_changed_at, x.sweep_started_at, x.sweep_checked, x.created_at, x as target
      from util._target_config c join util.embedding_targets x on x.id = c.id
     where c.shadow_of is null
     order by c.schema_name, c.table_name, c.embedding_column
  loop
    schema_name := t.schema_name;
    table_name := t.table_name;
    embedding_column := t.embedding_column;
    model := t.model;
    dimensions := t.dimensions;
    content_changed_at := t.content_changed_at;
    sweep_started_at := t.sweep_started_at;
    sweep_checked := case when t.sweep_started_at is not null then t.sweep_checked end;
    destination := t.destination_sql;
    chunks := util._store_chunks(t.target);
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
    select count(*) into fingerprinted from util.embedding_fingerprints f where f.target_id = t.id;
    models := case when fingerprinted > 0 then jsonb_build_object(t.model, fingerprinted) else '{}'::jsonb end;
    select x.id, x.model, x.dimensions, x.created_at into s
      from util.embedding_targets x where x.shadow_of = t.id;
    next_model := s.model;
    next_dimensions := s.dimensions;
    next_started_at := s.created_at;
    next_embedded := case when s.id is not null
                          then (select count(*) from util.embedding_fingerprints f where f.target_id = s.id) end;
    select c.queued, c.in_flight, c.oldest_queued_age, c.dead_lettered
      into queued, in_flight, oldest_queued_age, dead_lettered
      from util._queue_counts(t.schema_name, t.table_name, t.embedding_column) c;
    provider := util._provider_of(t.model);
    model_known := util._model_known(t.model);
    select p.opened_at, p.reason, p.retry_at into circuit_open_since, circuit_reason, circuit_retry_at
      from util.provider_circuits p where p.provider = util._provider_of(t.model);
    select e.error, e.created_at into last_error, last_error_at
      from util.embedding_errors e where e.target_id in (t.id, s.id) order by e.created_at desc, e.id desc limit 1;
    return next;
  end loop;
end
$$;

-- public: one row per attached (table, embedding column): rows, embedded,
-- missing (text but no embedding), stale (embedding of other text than the
-- content function now returns), empty (the last column: rows whose content
-- function returns null or blank text, so there is nothing to embed;
-- total_rows = embedded + missing + empty; null while the content function
-- raises for some row), rows per model, queued / in-flight jobs,
-- oldest queued job's age, dead-lettered jobs, the last error; when the
-- content function last changed and how far a sweep (backfill, recheck) has
-- come; and a model change in progress: next_model, next_dimensions,
-- next_embedded (rows the new model holds so far), next_started_at. For a
-- chunked target (embedding_column is then its destination's table name):
-- destination, and chunks (rows of the destination); embedded counts source
-- rows with a current chunk set, missing those without, stale those whose
-- text or chunk settings changed since. provider: who embeds the model
-- ('openai' for any OpenAI-compatible endpoint, 'local'); model_known: the
-- registry (util.embedding_models) knows the model, else it runs with the
-- dimensions given and conservative limits; while all its
-- calls fail, its circuit is open: since when (circuit_open_since), the
-- last failure (circuit_reason), and when the next probe may go
-- (circuit_retry_at). Its rows wait in the queue meanwhile, spending no
-- attempts.
create or replace view util.embedding_status as select * from util._embedding_status();
