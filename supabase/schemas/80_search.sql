-- autoembed schema 80: search. util.match (nearest rows to a query vector,
-- the match_documents pattern for any table) and util.match_hybrid (the same
-- fused by reciprocal rank with a full-text ranking, as in Supabase's
-- hybrid-search guide); util.match_chunked does both for a chunked target
-- (25_chunked_targets): it ranks the chunks and returns each source row with
-- its best chunk. Both are one search, util._match, over the pieces of a
-- store: a row's whole text, or a chunk. The `search` edge function embeds a
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

-- internal: the one search of every store, for util.match_hybrid (a
-- whole-row target: `destination` null, the vectors in `embedding_column` of
-- the table's rows) and util.match_chunked (a chunked target: its side table
-- `destination` of chunks). It ranks pieces, a row's whole text or a chunk:
-- the nearest in index order, and (with `query_text`) those whose text
-- matches by ts_rank_cd, the text being content_function(row) or the chunk.
-- Reciprocal rank fusion scores each piece, each row keeps its best, and the
-- rows come best first, as the caller (security invoker: the source's RLS,
-- and through it the destination's policy, decide which rows and chunks
-- exist). Returns each source row's primary key as text, the cosine
-- similarity of its best piece (null for one found by its words alone whose
-- vector is not computed yet), that piece's score (vector only: the
-- similarity; hybrid: 1/(rrf_k + rank) summed over both rankings, weighted),
-- its seq and, for a chunk, its text, and the row as jsonb without its
-- vector columns. Raises AE003 on a bad argument. A new kind of store is one
-- more branch below, where the pieces and their vectors are named.
create or replace function util._match(
  target_table regclass,
  destination regclass,
  embedding_column name,
  content_function regprocedure,
  query_embedding extensions.vector,
  query_text text,
  match_count int,
  match_threshold float8,
  filter jsonb,
  text_search_config regconfig,
  full_text_weight float8,
  semantic_weight float8,
  rrf_k int
)
returns table (id text, similarity float8, score float8, chunk_seq int, chunk text, row_data jsonb)
language plpgsql
stable
security invoker
set search_path = ''
as $$
declare
  rel record;
  type_sql text;
  pk name;
  excluded name[];
  text_sql text;
  pieces text;      -- the FROM of the pieces, with the source row as r
  best_join text;   -- how a ranked piece (k) finds its vector and text again
  piece_key text;
  piece_seq text;
  piece_vector text;
  piece_text text;
  piece_chunk text;
  fused text;
  scan_setting text;
  candidates int;
  pool bigint;
  found_ids text[];
  found_similarities float8[];
  found_scores float8[];
  found_seqs int[];
  found_chunks text[];
  found_rows jsonb[];
  r_id text;
  r_similarity float8;
  r_score float8;
  r_seq int;
  r_chunk text;
  r_row jsonb;
begin
  if match_count is null or match_count < 1 or match_count > 200 then
    raise exception 'autoembed: match_count must be between 1 and 200, got %', match_count
      using errcode = 'AE003', hint = 'Ask for fewer rows, and page by raising the threshold.';
  end if;
  select c.oid, c.reltype, c.relkind into rel from pg_catalog.pg_class c where c.oid = target_table;
  if rel.oid is null or rel.relkind not in ('r', 'p') then
    raise exception 'autoembed: % is not a table', target_table using errcode = 'AE003';
  end if;
  select min(a.attname) into pk
    from pg_catalog.pg_index i
    join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = any (i.indkey)
   where i.indrelid = target_table and i.indisprimary
  having count(*) = 1;
  if pk is null then
    raise exception 'autoembed: % needs a single-column primary key', target_table using errcode = 'AE003';
  end if;

  if destination is null then
    -- The column store: a row is one piece, its vector in embedding_column.
    select pg_catalog.format_type(a.atttypid, a.atttypmod) into type_sql
      from pg_catalog.pg_attribute a join pg_catalog.pg_type t on t.oid = a.atttypid
     where a.attrelid = target_table and a.attname = embedding_column and a.attnum > 0
       and not a.attisdropped and t.typname in ('vector', 'halfvec');
    if type_sql is null then
      raise exception 'autoembed: % has no vector or halfvec column "%"', target_table, embedding_column
        using errcode = 'AE003', hint = 'Name the embedding column with embedding_column => ...';
    end if;
    if query_text is not null then
      if content_function is null then
        raise exception 'autoembed: a hybrid search needs the content function'
          using errcode = 'AE003', hint = 'Pass content_function => ''public.documents_input(public.documents)''.';
      end if;
      select pg_catalog.format('%I.%I', n.nspname, p.proname) into text_sql
        from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
       where p.oid = content_function and p.pronargs = 1 and p.proargtypes[0] = rel.reltype
         and p.prorettype = 'text'::regtype;
      if text_sql is null then
        raise exception 'autoembed: % does not take a row of % and return text', content_function, target_table
          using errcode = 'AE003';
      end if;
    end if;
    excluded := array[embedding_column];
    pieces := pg_catalog.format('%s r', target_table);
    best_join := pg_catalog.format('%s r on r.%I = k.source_id', target_table, pk);
    piece_key := pg_catalog.format('r.%I', pk);
    piece_seq := '0';
    piece_vector := pg_catalog.format('r.%I', embedding_column);
    piece_text := coalesce(text_sql || '(r)', 'null::text');
    piece_chunk := 'null::text';
    candidates := match_count * 2;
  else
    -- The chunks store: the destination must be a side table of this source
    -- (a policy on it reads the source: the pipeline gives each one that
    -- shows a role the chunks of the rows it sees, util._create_chunk_table)
    -- with the chunks' embedding column.
    select pg_catalog.format_type(a.atttypid, a.atttypmod) into type_sql
      from pg_catalog.pg_attribute a join pg_catalog.pg_type t on t.oid = a.atttypid
     where a.attrelid = destination and a.attname = 'embedding' and a.attnum > 0
       and not a.attisdropped and t.typname in ('vector', 'halfvec')
       and exists (select from pg_catalog.pg_policy p
                     join pg_catalog.pg_depend d
                       on d.classid = 'pg_catalog.pg_policy'::regclass and d.objid = p.oid
                      and d.refclassid = 'pg_catalog.pg_class'::regclass and d.refobjid = target_table
                    where p.polrelid = destination);
    if type_sql is null then
      raise exception 'autoembed: % is not a table of chunks of %', destination, target_table
        using errcode = 'AE003', hint = 'Name the destination of the source''s chunked target.';
    end if;
    -- The source's own vector columns (a whole-row target's) stay out of the
    -- returned row and of the filter.
    select coalesce(pg_catalog.array_agg(a.attname), '{}') into excluded
      from pg_catalog.pg_attribute a join pg_catalog.pg_type t on t.oid = a.atttypid
     where a.attrelid = target_table and a.attnum > 0 and not a.attisdropped
       and t.typname in ('vector', 'halfvec', 'sparsevec');
    pieces := pg_catalog.format('%s d join %s r on r.%I = d.source_id', destination, target_table, pk);
    best_join := pg_catalog.format('%s d on d.source_id = k.source_id and d.chunk_seq = k.chunk_seq',
                                   destination);
    piece_key := 'd.source_id';
    piece_seq := 'd.chunk_seq';
    piece_vector := 'd.embedding';
    piece_text := 'd.chunk';
    piece_chunk := 'd.chunk';
    candidates := match_count * 8;
  end if;

  -- Both rankings are of pieces of rows the caller may see (joined to the
  -- source under its RLS, filtered), $11 each. `pool` is how many pieces the
  -- vector ranking took. Parameters: $1 vector, $2 text, $3 filter, $4
  -- threshold, $5 count, $6 text search configuration, $7 and $8 weights,
  -- $9 rrf_k, $10 the columns left out of the row, $11 pieces per ranking.
  fused := pg_catalog.format($sql$
    with semantic as (
      select s.source_id, s.chunk_seq, pg_catalog.row_number() over (order by s.distance) as rank_ix
        from (select %3$s as source_id, %4$s as chunk_seq, %5$s operator(extensions.<=>) $1::%1$s as distance
                from %2$s
               where %5$s operator(extensions.<=>) $1::%1$s < 1 - $4 %6$s
               order by %5$s operator(extensions.<=>) $1::%1$s
               limit $11) s
    ), full_text as (
      select f.source_id, f.chunk_seq, pg_catalog.row_number() over (order by f.rank desc) as rank_ix
        from (select %3$s as source_id, %4$s as chunk_seq,
                     pg_catalog.ts_rank_cd(pg_catalog.to_tsvector($6, %7$s),
                                           pg_catalog.websearch_to_tsquery($6, $2)) as rank
                from %2$s
               where $2 is not null
                 and pg_catalog.to_tsvector($6, %7$s)
                     operator(pg_catalog.@@) pg_catalog.websearch_to_tsquery($6, $2) %6$s
               order by 3 desc
               limit $11) f
    ), ranked as (
      select coalesce(s.source_id, f.source_id) as source_id, coalesce(s.chunk_seq, f.chunk_seq) as chunk_seq,
             case when $2 is not null
                  then coalesce($7 / ($9 + f.rank_ix), 0.0) + coalesce($8 / ($9 + s.rank_ix), 0.0)
             end as fused
        from semantic s full join full_text f on f.source_id = s.source_id and f.chunk_seq = s.chunk_seq
    ), best as (
      select distinct on (b.source_id) b.source_id, b.chunk_seq, b.chunk, b.similarity, b.score
        from (select k.source_id, k.chunk_seq, %8$s as chunk,
                     1 - (%5$s operator(extensions.<=>) $1::%1$s)::float8 as similarity,
                     coalesce(k.fused, 1 - (%5$s operator(extensions.<=>) $1::%1$s)::float8) as score
                from ranked k
                join %9$s) b
       order by b.source_id, b.score desc nulls last, b.chunk_seq
    )
    select b.source_id::text, b.similarity, b.score, b.chunk_seq, b.chunk,
           (select pg_catalog.jsonb_object_agg(j.key, j.value)
              from pg_catalog.jsonb_each(pg_catalog.to_jsonb(r)) j
             where j.key <> all ($10) and j.key not like '\_autoembed\_next\_%%'),
           (select pg_catalog.count(*) from semantic)
      from best b join %10$s r on r.%11$I = b.source_id
     order by b.score desc nulls last, 1
     limit $5
  $sql$, type_sql, pieces, piece_key, piece_seq, piece_vector,
         util._match_filter_conditions(target_table, filter, excluded),
         piece_text, piece_chunk, best_join, target_table, pk);
  -- A plain HNSW scan yields at most hnsw.ef_search (40) pieces: those of a
  -- few rows when a row's chunks lie close together, fewer still after RLS
  -- and the filter. pgvector 0.8+ scans on until the limit is met
  -- (iterative scan); the ranking above orders by distance itself, so
  -- relaxed_order is enough. Set for this statement and restored after (on
  -- an error the transaction ends anyway); older pgvector has no such setting.
  scan_setting := pg_catalog.current_setting('hnsw.iterative_scan', true);
  if scan_setting is not null then
    perform pg_catalog.set_config('hnsw.iterative_scan', 'relaxed_order', true);
  end if;
  -- When the pieces taken cover fewer rows than asked (a row's chunks crowd
  -- the nearest) and there were more to take, take four times as many: once
  -- they cover match_count rows, those rows are the best (a row not among
  -- them has no nearer piece). Rows are kept in arrays (at most 200) until
  -- then; scalars, which plpgsql_check can follow, unlike return query execute.
  loop
    found_ids := '{}'; found_similarities := '{}'; found_scores := '{}';
    found_seqs := '{}'; found_chunks := '{}'; found_rows := '{}';
    pool := 0;
    for r_id, r_similarity, r_score, r_seq, r_chunk, r_row, pool in execute fused
      using query_embedding, query_text, coalesce(filter, '{}'), match_threshold, match_count,
            text_search_config, full_text_weight, semantic_weight, rrf_k::float8, excluded::text[],
            candidates
    loop
      found_ids := found_ids || r_id;
      found_similarities := found_similarities || r_similarity;
      found_scores := found_scores || r_score;
      found_seqs := found_seqs || r_seq;
      found_chunks := found_chunks || r_chunk;
      found_rows := found_rows || r_row;
    end loop;
    exit when pg_catalog.cardinality(found_ids) >= match_count or pool < candidates or candidates >= 10000;
    candidates := candidates * 4;
  end loop;
  for i in 1 .. pg_catalog.cardinality(found_ids) loop
    id := found_ids[i]; similarity := found_similarities[i]; score := found_scores[i];
    chunk_seq := found_seqs[i]; chunk := found_chunks[i]; row_data := found_rows[i];
    return next;
  end loop;
  if scan_setting is not null then
    perform pg_catalog.set_config('hnsw.iterative_scan', scan_setting, true);
  end if;
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
