-- autoembed schema 80: search. util.match (nearest rows to a query vector,
-- the match_documents pattern for any table) and util.match_hybrid (the same
-- fused by reciprocal rank with a full-text ranking, as in Supabase's
-- hybrid-search guide); util.match_chunked does both for a chunked target
-- (25_chunked_targets): it ranks the chunks and returns each source row with
-- its best chunk. Both are one search, util._match (22_stores: the store
-- module names where each store's pieces and vectors are), over the pieces
-- of a store: a row's whole text, or a chunk. The `search` edge function embeds a
-- query text with the table's model and calls, as the caller, the one its
-- target's store searches with (supabase/functions/_shared/sql/store.ts).
--
-- All are security invoker and read only the system catalog and the table
-- they are given: they run with the caller's privileges, so row-level
-- security decides which rows exist for the caller (a hidden row is neither
-- returned nor counted nor ranked). That is why app roles may execute them
-- (90_privileges), unlike every other util function.
--
-- The query vector must come from the model and dimensions the column holds
-- now: select model, dimensions from util.embedding_status (service_role), or
-- let the search function embed the text. Names are checked against the
-- catalog and quoted (format %I); values are always bound parameters.

-- internal: the SQL conditions of a search's `filter` on the rows of
-- `target_table` (alias r), for util.match_hybrid and util.match_chunked.
-- Each key must be a column of the table, not one of `excluded` (its
-- embedding columns) nor a shadow column of a model change; its value is
-- read from the bound filter, parameter $3 of the caller's statement, as the
-- column's type. Raises AE003 on anything else. Returns '' for no filter.
create or replace function util._match_filter_conditions(
  target_table regclass,  -- the searched table
  filter jsonb,           -- {"column": value}, equality; null matches null
  excluded name[]         -- columns that may not be filtered on
)
returns text
language plpgsql
stable
security invoker
set search_path = ''
as $$
declare
  col record;
  key text;
  conditions text := '';
begin
  if filter is not null and pg_catalog.jsonb_typeof(filter) <> 'object' then
    raise exception 'autoembed: filter must be a JSON object of column names and values'
      using errcode = 'AE003';
  end if;
  for key in select k from pg_catalog.jsonb_object_keys(coalesce(filter, '{}')) k order by k loop
    select a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) as type_sql into col
      from pg_catalog.pg_attribute a
     where a.attrelid = target_table and a.attname::text = key and a.attnum > 0 and not a.attisdropped;
    if col.attname is null or col.attname = any (excluded) or key like '\_autoembed\_next\_%' then
      raise exception 'autoembed: filter names "%", which is no column of % that can be filtered', key, target_table
        using errcode = 'AE003', hint = 'Filter on the table''s own columns, by equality.';
    end if;
    conditions := conditions || pg_catalog.format(' and r.%I is not distinct from ($3 ->> %L)::%s',
                                                  col.attname, key, col.type_sql);
  end loop;
  return conditions;
end
$$;

-- public: rows of `target_table` nearest to `query_embedding`, best first,
-- optionally fused with a full-text ranking of `query_text` over
-- `content_function(row)`. Returns each row's primary key as text, the cosine
-- similarity of its embedding (null for a row found by its words alone whose
-- embedding is not computed yet), its score (vector only: the similarity;
-- hybrid: 1/(rrf_k + rank) summed over both rankings, weighted) and the row
-- as jsonb without its embedding column. Raises AE003 on a bad argument.
-- The column store's search by util._match, as util.match is.
create or replace function util.match_hybrid(
  target_table regclass,                 -- the table to search (a single-column primary key)
  query_embedding extensions.vector,     -- the query's vector, from the column's model
  query_text text default null,          -- the query's words for full-text ranking; null: vector only
  content_function regprocedure default null, -- the text of a row for full-text ranking (the target's content function)
  match_count int default 10,            -- rows returned, 1 to 200
  match_threshold float8 default 0,      -- least cosine similarity a row of the vector ranking must have
  filter jsonb default '{}',             -- equality on columns, {"column": value}; null matches null
  embedding_column name default 'embedding', -- the vector or halfvec column
  text_search_config regconfig default 'english', -- for to_tsvector and websearch_to_tsquery
  full_text_weight float8 default 1,     -- weight of the full-text ranking in the fused score
  semantic_weight float8 default 1,      -- weight of the vector ranking in the fused score
  rrf_k int default 50                   -- smoothing constant of reciprocal rank fusion
)
returns table (id text, similarity float8, score float8, row_data jsonb)
language sql
stable
security invoker
set search_path = ''
as $$
  select m.id, m.similarity, m.score, m.row_data
    from util._match(target_table, null, embedding_column, content_function, query_embedding,
                     query_text, match_count, match_threshold, filter, text_search_config,
                     full_text_weight, semantic_weight, rrf_k) m
$$;

-- public: rows of `target_table` nearest to `query_embedding`, best first
-- (the match_documents pattern for any table): primary key as text, cosine
-- similarity, and the row as jsonb without its embedding columns.
create or replace function util.match(
  target_table regclass,                 -- the table to search (a single-column primary key)
  query_embedding extensions.vector,     -- the query's vector, from the column's model
  match_count int default 10,            -- rows returned, 1 to 200
  match_threshold float8 default 0,      -- least cosine similarity
  filter jsonb default '{}',             -- equality on columns, {"column": value}; null matches null
  embedding_column name default 'embedding' -- the vector or halfvec column
)
returns table (id text, similarity float8, row_data jsonb)
language sql
stable
security invoker
set search_path = ''
as $$
  select m.id, m.similarity, m.row_data
    from util.match_hybrid(target_table, query_embedding, null, null, match_count, match_threshold,
                           filter, embedding_column) m
$$;

-- public: the source rows of chunked target `destination` (its side table of
-- chunks) whose chunks are nearest to `query_embedding`, best first, one row
-- each with its best chunk; optionally fused with a full-text ranking of
-- `query_text` over the chunks' text. Returns each source row's primary key as
-- text, the cosine similarity of its best chunk (null for a chunk found by its
-- words alone whose embedding is not computed yet), the best chunk's score
-- (vector only: the similarity; hybrid: 1/(rrf_k + rank) summed over both
-- rankings of chunks, weighted), that chunk's seq and text, and the source row
-- as jsonb without its vector columns. `filter` applies to the source row.
-- Security invoker like util.match_hybrid: the source's RLS (and through it
-- the destination's policy) decides which rows and chunks exist for the
-- caller. Raises AE003 on a bad argument. The chunks store's search by util._match.
create or replace function util.match_chunked(
  target_table regclass,                 -- the source table (a single-column primary key)
  destination regclass,                  -- its chunked target's side table (source_id, chunk_seq, chunk, embedding)
  query_embedding extensions.vector,     -- the query's vector, from the target's model
  query_text text default null,          -- the query's words for full-text ranking of chunks; null: vector only
  match_count int default 10,            -- source rows returned, 1 to 200
  match_threshold float8 default 0,      -- least cosine similarity a chunk of the vector ranking must have
  filter jsonb default '{}',             -- equality on the source's columns, {"column": value}; null matches null
  text_search_config regconfig default 'english', -- for to_tsvector and websearch_to_tsquery
  full_text_weight float8 default 1,     -- weight of the full-text ranking in the fused score
  semantic_weight float8 default 1,      -- weight of the vector ranking in the fused score
  rrf_k int default 50                   -- smoothing constant of reciprocal rank fusion
)
returns table (id text, similarity float8, score float8, chunk_seq int, chunk text, row_data jsonb)
language sql
stable
security invoker
set search_path = ''
as $$
  select m.id, m.similarity, m.score, m.chunk_seq, m.chunk, m.row_data
    from util._match(target_table, destination, null, null, query_embedding, query_text,
                     match_count, match_threshold, filter, text_search_config, full_text_weight,
                     semantic_weight, rrf_k) m
$$;
