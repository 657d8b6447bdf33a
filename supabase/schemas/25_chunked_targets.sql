-- autoembed schema 25: chunked targets. util.enable_embeddings(...,
-- destination => ...) attaches a table whose rows are split into chunks kept
-- in a side table (the destination) that the pipeline creates and owns:
-- (source_id, chunk_seq, chunk, embedding, chunk_hash), primary key
-- (source_id, chunk_seq), source_id referencing the source row on delete
-- cascade, an HNSW index on embedding and RLS following the source. Such a
-- target is a row of util.embedding_targets with `destination` set; its
-- embedding_column is the destination's table name, which names it in jobs,
-- triggers (embed_<destination>_insert ...) and in util.disable_embeddings,
-- util.refresh_embeddings and util.embedding_status. A row's fingerprint is
-- the hash of its text with the chunk settings (util._chunked_hash), so a
-- settings change (util.set_chunking) makes every row stale (I10). A model
-- change builds a shadow destination table and switches it in whole
-- (util.reembed, 40_sweeps_and_model_changes).
-- util.match_chunks searches a destination as the caller (I13).

-- internal: raises AE003 when chunk settings are out of range (the same
-- limits as validateChunkSettings in supabase/functions/_shared/chunking/;
-- the largest chunk is the longest input of the model registry, 15_models).
create or replace function util._check_chunk_settings(chunk_size int, chunk_overlap int, splitter text)
returns void
language plpgsql
stable
set search_path = ''
as $$
declare
  largest int := util._largest_input_tokens();
begin
  if chunk_size is null or chunk_size < 16 or chunk_size > largest then
    raise exception 'autoembed: chunk_size must be between 16 and % tokens, got %', largest, coalesce(chunk_size::text, 'null')
      using errcode = 'AE003', hint = 'E.g. chunk_size => 512 (tokens of the model''s tokenizer).';
  end if;
  if chunk_overlap is null or chunk_overlap < 0 or chunk_overlap > chunk_size / 2 then
    raise exception 'autoembed: chunk_overlap must be between 0 and chunk_size / 2 (%), got %',
      chunk_size / 2, coalesce(chunk_overlap::text, 'null')
      using errcode = 'AE003', hint = 'E.g. chunk_overlap => 64 with chunk_size => 512.';
  end if;
  if splitter is null or splitter not in ('recursive', 'markdown', 'none') then
    raise exception 'autoembed: splitter must be recursive, markdown or none, got %', coalesce(pg_catalog.quote_literal(splitter), 'null')
      using errcode = 'AE003',
            detail = 'recursive: paragraphs, lines, sentences, words; markdown: headings first, '
                     'each chunk keeps its heading path; none: the whole text is one chunk.';
  end if;
end
$$;

-- internal: what a chunked row's fingerprint hashes besides its text: the
-- chunk settings and the model (whose tokenizer counts the chunk sizes).
create or replace function util._chunking_key(t util.embedding_targets)
returns text
language sql
immutable
set search_path = ''
as $$
  select pg_catalog.format('autoembed chunks v1 splitter=%s size=%s overlap=%s model=%s', t.splitter,
                           t.chunk_size, t.chunk_overlap, t.model) || pg_catalog.chr(10)
$$;

-- internal: the fingerprint hash of a chunked row: its text with the
-- settings key in front. Null text hashes like empty text, as util._content_hash.
create or replace function util._chunked_hash(chunking_key text, content text)
returns bytea
language sql
immutable
parallel safe
set search_path = ''
as $$ select pg_catalog.sha256(pg_catalog.convert_to(chunking_key || coalesce(content, ''), 'UTF8')) $$;

-- internal: vector size of a model the registry knows (15_models), for a
-- destination created without an explicit dimensions argument (null:
-- unknown, pass dimensions).
create or replace function util._default_dimensions(model text)
returns int
language sql
stable
set search_path = ''
as $$
  select m.native_dimensions from util.embedding_models m
   where m.model = util._model_registry_key(_default_dimensions.model)
$$;

-- internal: creates a chunk table `dest_schema`.`dest_name` for source
-- `target_table`: (source_id, chunk_seq, chunk, embedding halfvec(dimensions),
-- chunk_hash), its primary key, its reference to the source row (on delete
-- cascade) and its RLS policy; the caller adds indexes and grants. Used for
-- a chunked target's destination and for the shadow destination of its
-- model change.
create or replace function util._create_chunk_table(
  target_table regclass,
  dest_schema name,
  dest_name name,
  dimensions int
)
returns regclass
language plpgsql
set search_path = ''
as $$
declare
  pk record;
  dest regclass;
begin
  select a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) as type_sql into pk
    from pg_catalog.pg_index i
    join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = any (i.indkey)
   where i.indrelid = target_table and i.indisprimary;
  execute pg_catalog.format(
    'create table %1$I.%2$I (
       source_id %3$s not null references %4$s (%5$I) on delete cascade,
       chunk_seq int not null,
       chunk text not null,
       embedding extensions.halfvec(%6$s),
       chunk_hash bytea not null,
       primary key (source_id, chunk_seq)
     )', dest_schema, dest_name, pk.type_sql, target_table, pk.attname, dimensions);
  dest := pg_catalog.format('%I.%I', dest_schema, dest_name)::regclass;
  -- A role sees the chunks of exactly the source rows it sees: the
  -- subquery runs under the source's own RLS policies.
  execute pg_catalog.format('alter table %s enable row level security', dest);
  execute pg_catalog.format(
    'create policy %I on %s for select using (exists (select 1 from %s s where s.%I = %I.source_id))',
    'chunks visible with their source row', dest, target_table, pk.attname, dest_name);
  return dest;
end
$$;

-- internal: creates the destination of a chunked target and records the
-- target (enable_embeddings with destination => ...). An existing chunked
-- target with the same destination keeps its chunks and its model (another
-- model goes through util.reembed, as enable_embeddings does): changed
-- settings go through util.set_chunking. Returns the target id.
create or replace function util._register_chunked_target(
  target_table regclass,   -- the source table
  content_function text,   -- f(row of target_table) returns text
  destination text,        -- the side table, schema-qualified or in the source's schema
  chunk_size int,
  chunk_overlap int,
  splitter text,
  model text,
  dimensions int
)
returns int
language plpgsql
set search_path = ''
as $$
declare
  rel record;
  pk record;
  dest_schema name;
  dest_name name;
  dest regclass;
  existing util.embedding_targets;
  target_id int;
  grantee text;
begin
  perform util._check_chunk_settings(chunk_size, chunk_overlap, splitter);
  select c.oid, c.relname, n.nspname, c.relkind into rel
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
   where c.oid = target_table;
  if rel.relkind not in ('r', 'p') then
    raise exception 'autoembed: % is not a table', target_table
      using errcode = 'AE003', hint = 'Chunks are kept for ordinary or partitioned tables.';
  end if;
  select a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) as type_sql, pg_catalog.count(*) over () as n
    into pk
    from pg_catalog.pg_index i
    join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = any (i.indkey)
   where i.indrelid = target_table and i.indisprimary;
  if pk.n is distinct from 1 then
    raise exception 'autoembed: % needs a single-column primary key', target_table
      using errcode = 'AE003',
            hint = 'Add one, e.g. alter table ... add column id bigint generated always as identity primary key;';
  end if;
  -- The destination's name as given: schema.name, or a name in the source's schema.
  if pg_catalog.strpos(destination, '.') > 0 then
    select x[1], x[2] into dest_schema, dest_name from pg_catalog.parse_ident(destination) x;
  else
    select rel.nspname, x[1] into dest_schema, dest_name from pg_catalog.parse_ident(destination) x;
  end if;
  if dest_name is null or pg_catalog.octet_length('embed_' || dest_name || '_insert') > 63 then
    raise exception 'autoembed: "%" cannot name a destination table', destination
      using errcode = 'AE003',
            detail = 'Its triggers on the source are named embed_<destination>_insert, _update and _delete, at most 63 bytes.',
            hint = 'Name a table of 50 bytes at most, e.g. destination => ''public.article_chunks''.';
  end if;
  dest := pg_catalog.to_regclass(pg_catalog.format('%I.%I', dest_schema, dest_name));
  select * into existing from util.embedding_targets t
   where t.table_oid = target_table and t.embedding_column = dest_name;
  if existing.id is not null and existing.destination is distinct from dest then
    raise exception 'autoembed: % already has a target named "%"', target_table, dest_name
      using errcode = 'AE003', hint = 'Pick another destination name, or util.disable_embeddings it first.';
  end if;
  if existing.id is null and dest is not null then
    raise exception 'autoembed: % already exists', dest
      using errcode = 'AE003',
            detail = 'The destination of a chunked target is created and owned by the pipeline.',
            hint = 'Name a new table, or drop this one first.';
  end if;
  if existing.id is not null then
    model := existing.model;
    dimensions := existing.dimensions;
  end if;
  model := coalesce(model, util._setting('default_model'));
  if pg_catalog.btrim(model) = '' or pg_catalog.length(model) > 200 then
    raise exception 'autoembed: "%" is not a model name', pg_catalog.left(model, 200)
      using errcode = 'AE003', hint = 'Name the provider''s model, e.g. text-embedding-3-small, or a local-* model.';
  end if;
  dimensions := coalesce(dimensions, util._default_dimensions(model));
  if dimensions is null or dimensions < 1 or dimensions > 4000 then
    raise exception 'autoembed: dimensions must be between 1 and 4000 for a chunked target, got %', coalesce(dimensions::text, 'none')
      using errcode = 'AE003',
            hint = 'Pass the model''s vector size, e.g. dimensions => 1536 (halfvec HNSW indexes take up to 4000).';
  end if;
  if existing.id is not null then
    -- The same target again: its content function may change (noticed and
    -- swept by util.maintain_embeddings; a model change in progress builds
    -- from the same text), its chunks stay.
    perform util._register_target_function(t.id, _register_chunked_target.content_function)
       from util.embedding_targets t where t.id = existing.id or t.shadow_of = existing.id;
    if (existing.chunk_size, existing.chunk_overlap, existing.splitter) is distinct from (chunk_size, chunk_overlap, splitter) then
      perform util._set_chunking(existing.id, chunk_size, chunk_overlap, splitter);
    end if;
    return existing.id;
  end if;

  dest := util._create_chunk_table(target_table, dest_schema, dest_name, dimensions);
  execute pg_catalog.format('create index %I on %s using hnsw (embedding extensions.halfvec_cosine_ops)',
                            dest_name || '_embedding_idx', dest);
  -- Reuse of a vector for the same chunk text, in this row or another.
  execute pg_catalog.format('create index %I on %s using hash (chunk_hash)', dest_name || '_chunk_hash_idx', dest);
  for grantee in
    select distinct case when a.grantee = 0 then 'public' else pg_catalog.quote_ident(r.rolname) end
      from pg_catalog.pg_class c
      cross join lateral pg_catalog.aclexplode(c.relacl) a
      left join pg_catalog.pg_roles r on r.oid = a.grantee
     where c.oid = target_table and a.privilege_type = 'SELECT'
       and a.grantee is distinct from c.relowner
  loop
    execute pg_catalog.format('grant select on %s to %s', dest, grantee);
  end loop;

  target_id := util._register_target_function(null, content_function, target_table, dest_name, model, dimensions);
  update util.embedding_targets t
     set destination = dest, chunk_size = _register_chunked_target.chunk_size,
         chunk_overlap = _register_chunked_target.chunk_overlap, splitter = _register_chunked_target.splitter
   where t.id = target_id;
  return target_id;
end
$$;

-- internal: records (or, for `target_id`, updates) the content function of
-- a chunked target, with the checks util._register_target makes of it.
-- Returns the target id.
create or replace function util._register_target_function(
  target_id int,
  content_function text,
  target_table regclass default null,
  target_name name default null,
  model text default null,
  dimensions int default null
)
returns int
language plpgsql
set search_path = ''
as $$
declare
  fn_oid regprocedure;
  fn record;
  rel record;
  pk name;
  created int;
begin
  if target_id is not null then
    select t.table_oid into target_table from util.embedding_targets t where t.id = target_id;
  end if;
  select c.oid, n.nspname, c.reltype into rel
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
   where c.oid = target_table;
  if content_function like '%.%' then
    fn_oid := pg_catalog.to_regprocedure(pg_catalog.format('%s(%s)', content_function, rel.reltype::regtype));
  else
    fn_oid := coalesce(
      pg_catalog.to_regprocedure(pg_catalog.format('%I.%I(%s)', rel.nspname, content_function, rel.reltype::regtype)),
      pg_catalog.to_regprocedure(pg_catalog.format('public.%I(%s)', content_function, rel.reltype::regtype)));
  end if;
  select n.nspname, p.proname, p.prokind, p.proretset, p.prorettype into fn
    from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
   where p.oid = fn_oid;
  if fn_oid is null or fn.prokind <> 'f' or fn.proretset or fn.prorettype <> 'text'::regtype then
    raise exception 'autoembed: content function %(%) not found, or not a plain function returning text', content_function, target_table
      using errcode = 'AE003',
            detail = 'The content function takes one argument, a row of the table, and returns text.',
            hint = pg_catalog.format('create function %s(r %s) returns text language sql immutable as $f$ select r.title || '' '' || r.content $f$;',
                                     content_function, target_table);
  end if;
  if target_id is not null then
    update util.embedding_targets t
       set content_function = _register_target_function.content_function,
           content_function_schema = fn.nspname, content_function_name = fn.proname
     where t.id = target_id;
    return target_id;
  end if;
  select a.attname into pk
    from pg_catalog.pg_index i
    join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = any (i.indkey)
   where i.indrelid = target_table and i.indisprimary;
  insert into util.embedding_targets
    (table_oid, embedding_column, pk_column, content_function, content_function_schema, content_function_name,
     model, dimensions, content_definition)
  values
    (target_table, target_name, pk, content_function, fn.nspname, fn.proname, model, dimensions,
     util._content_definition(fn_oid))
  returning id into created;
  return created;
end
$$;

-- internal: sets the chunk settings of chunked target `target_id` and starts
-- a sweep: every row's fingerprint includes the settings, so every row is
-- re-chunked; chunks whose text is unchanged keep their vectors (matched by
-- hash), so only new chunk texts cost provider calls. A model change in
-- progress (its shadow target) takes the same settings. Returns the jobs
-- enqueued now.
create or replace function util._set_chunking(target_id int, chunk_size int, chunk_overlap int, splitter text)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  shadow_id int;
begin
  perform util._check_chunk_settings(chunk_size, chunk_overlap, splitter);
  update util.embedding_targets t
     set chunk_size = _set_chunking.chunk_size, chunk_overlap = _set_chunking.chunk_overlap,
         splitter = _set_chunking.splitter
   where t.id = target_id or t.shadow_of = target_id;
  select t.id into shadow_id from util.embedding_targets t where t.shadow_of = target_id;
  if shadow_id is not null then
    perform util._start_sweep(shadow_id);
  end if;
  return util._start_sweep(target_id);
end
$$;

-- public: changes the chunk settings of the chunked target of `target_table`
-- (the one named `destination` when it has several); arguments left null keep
-- their value. Re-chunks every row in the background, paying only for chunk
-- texts not embedded before. Returns the jobs enqueued now.
create or replace function util.set_chunking(
  target_table regclass,             -- the source table
  chunk_size int default null,       -- tokens, 16..8191
  chunk_overlap int default null,    -- tokens, 0..chunk_size / 2
  splitter text default null,        -- recursive | markdown | none
  destination regclass default null  -- needed only when the table has several chunked targets
)
returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
  t util.embedding_targets;
  found int;
begin
  select count(*) into found from util.embedding_targets x
   where x.table_oid = target_table and x.destination is not null and x.retired_at is null and x.shadow_of is null
     and (set_chunking.destination is null or x.destination = set_chunking.destination);
  if found = 0 then
    raise exception 'autoembed: % has no chunked target%', target_table,
      case when destination is null then '' else pg_catalog.format(' with destination %s', destination) end
      using errcode = 'AE002', hint = 'Attach one with util.enable_embeddings(..., destination => ...).';
  end if;
  if found > 1 then
    raise exception 'autoembed: % has % chunked targets', target_table, found
      using errcode = 'AE003', hint = 'Name the one to change: destination => ''schema.table''.';
  end if;
  select * into t from util.embedding_targets x
   where x.table_oid = target_table and x.destination is not null and x.retired_at is null and x.shadow_of is null
     and (set_chunking.destination is null or x.destination = set_chunking.destination)
     for update;
  return util._set_chunking(t.id, coalesce(chunk_size, t.chunk_size),
                            coalesce(chunk_overlap, least(t.chunk_overlap, coalesce(chunk_size, t.chunk_size) / 2)),
                            coalesce(splitter, t.splitter));
end
$$;

-- public: searches the chunks of `destination` (a chunked target's side
-- table): the best-matching source rows, one row each with its best chunk,
-- most similar first. Runs as the caller (security invoker): the
-- destination's RLS policy shows only chunks of source rows the caller may
-- select. Call it from a per-table wrapper (see public.match_article_sections
-- in supabase/seed.sql) to use it through supabase.rpc.
create or replace function util.match_chunks(
  destination regclass,             -- the chunked target's side table
  query_embedding extensions.halfvec, -- the query, embedded with the target's model
  match_count int default 10,       -- source rows to return
  match_threshold float default 0   -- least cosine similarity of a returned chunk
)
returns table (source_id text, chunk_seq int, chunk text, similarity float)
language plpgsql
stable
security invoker
set search_path = ''
as $$
begin
  if match_count is null or match_count < 1 or match_count > 1000 then
    raise exception 'autoembed: match_count must be between 1 and 1000, got %', coalesce(match_count::text, 'null')
      using errcode = 'AE003';
  end if;
  -- The nearest chunks through the HNSW index (a few per wanted row, as
  -- several chunks of one row are often near each other), then each row's
  -- best. A loop over the result rather than return query execute, so the
  -- linter sees the OUT columns set.
  for source_id, chunk_seq, chunk, similarity in execute pg_catalog.format(
    'select b.source_id::text, b.chunk_seq, b.chunk, b.similarity
       from (select distinct on (n.source_id) n.source_id, n.chunk_seq, n.chunk, n.similarity
               from (select d.source_id, d.chunk_seq, d.chunk,
                            1 - (d.embedding operator(extensions.<=>) $1) as similarity
                       from %s d
                      where d.embedding is not null
                      order by d.embedding operator(extensions.<=>) $1
                      limit $2 * 8) n
              where n.similarity >= $3
              order by n.source_id, n.similarity desc, n.chunk_seq) b
      order by b.similarity desc, b.chunk_seq
      limit $2', destination)
    using query_embedding, match_count, match_threshold
  loop
    return next;
  end loop;
end
$$;
