-- autoembed schema 25: chunking. util.enable_embeddings(..., destination
-- => ...) attaches a table whose rows are split into chunks (the splitter
-- and its settings, kept here) stored in a side table the pipeline creates
-- and owns (the chunks store, 22_stores). A row's fingerprint is the hash of
-- its text with the chunk settings (util._chunked_hash, util._fingerprint_key),
-- so a settings change (util.set_chunking) makes every row stale (I10).
-- util.match_chunks searches a side table of chunks as the caller (I13).

-- internal: chunk sets built across calls. The embed function splits a long
-- text in portions within its CPU budget (EMBED_CPU_BUDGET_MS; splitPortion
-- in supabase/functions/_shared/chunking/split.ts): each call adds its
-- portion's chunks and vectors to the row's draft and hands the row back to
-- the queue; the call that splits the last portion writes the whole set to
-- the destination in one transaction (readers see the old set until then,
-- I12) and deletes the draft. A draft is of one text (content_hash): a row
-- whose text changed starts over. util.maintain_embeddings deletes drafts
-- left untouched for a day (their row was deleted, or its jobs dead-lettered).
create table if not exists util.chunk_set_drafts (
  target_id int not null references util.embedding_targets (id) on delete cascade,
  row_id text not null,                -- primary key value as text
  content_hash bytea not null,         -- the row's fingerprint hash the draft was split from
  chunks int not null,                 -- chunks drafted: chunk_seq 0 to chunks - 1
  resume_at int not null,              -- where the split resumes: the next body's UTF-16 offset
  resume_start int not null,           -- where the next chunk's text starts (with its overlap)
  updated_at timestamptz not null default now(),
  primary key (target_id, row_id)
);

-- internal: the chunks of the drafts, in order.
create table if not exists util.chunk_set_draft_chunks (
  target_id int not null,
  row_id text not null,
  chunk_seq int not null,
  chunk text not null,
  chunk_hash bytea not null,           -- sha256 of chunk
  embedding text,                      -- the vector's text; null: a chunk of the destination with this chunk_hash holds it
  primary key (target_id, row_id, chunk_seq),
  foreign key (target_id, row_id) references util.chunk_set_drafts (target_id, row_id) on delete cascade
);

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
-- splitters' version, the chunk settings and the model (whose tokenizer
-- counts the chunk sizes). v2: the splitters of 0.2.0 (chunks that fill
-- their size; supabase/functions/_shared/chunking/); `none` is unchanged
-- and keeps v1, so its rows are not swept again for nothing.
create or replace function util._chunking_key(t util.embedding_targets)
returns text
language sql
immutable
set search_path = ''
as $$
  select pg_catalog.format('autoembed chunks %s splitter=%s size=%s overlap=%s model=%s',
                           case when t.splitter = 'none' then 'v1' else 'v2' end, t.splitter,
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

-- internal: what the fingerprints of target `t`'s rows hash besides their
-- text, as util._chunked_hash(key, text): nothing for a target whose text is
-- one chunk (the hash is then util._content_hash of the text), the chunk
-- settings and the model for a target with a splitter.
create or replace function util._fingerprint_key(t util.embedding_targets)
returns text
language sql
immutable
set search_path = ''
as $$ select case when t.splitter is null then '' else util._chunking_key(t) end $$;

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
   where x.table_oid = target_table and x.splitter is not null and x.retired_at is null and x.shadow_of is null
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
   where x.table_oid = target_table and x.splitter is not null and x.retired_at is null and x.shadow_of is null
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
