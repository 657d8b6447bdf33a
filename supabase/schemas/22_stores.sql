-- autoembed schema 22: the store seam. Where a target's vectors live is
-- decided here, on the SQL side. A target is (source table, content
-- function, splitter, model, store); its store is one of
--   * column: one vector per row, in the source row's own embedding column
--     (the target is named by that column);
--   * chunks: one vector per chunk, in the side table of chunks the
--     pipeline created and owns (`destination`; the target is named by the
--     side table's name; chunking and its settings: 25_chunked_targets).
-- util.embedding_targets.store says which; the util._store_* functions
-- below branch on it, and nothing else does (util._target_config reads
-- util._store_vectors).
-- Registration (20), sweeps (40), model changes and their cancel (40),
-- status (70) and search (80) are written once against the functions here:
-- the util._store_* functions dispatch on the store, and the functions after
-- them implement one store each; util._match (at the end) ranks any store's
-- pieces. The processing core's side of the seam is
-- supabase/functions/_shared/sql/store.ts (how each store reads, splits,
-- reuses, writes and searches), which reads `store` from util._target_config
-- (50). A new kind of store is a branch in each of them, and nothing else.

-------------------------------------------------------------------------------
-- Registration
-------------------------------------------------------------------------------

-- internal: records the target that util.enable_embeddings' arguments name,
-- in the store they choose (`destination`: chunks, else the column), and
-- returns its id. An attached target keeps its model and dimensions: another
-- model is a model change, which util.enable_embeddings starts (util.reembed).
create or replace function util._store_register(
  target_table regclass,     -- the source table
  content_function text,     -- f(row of target_table) returns text
  embedding_column name,     -- column store: the vector column
  model text,                -- null: the target's, else util.settings default_model
  dimensions int,            -- null: the column's declared dimensions (chunks: the model's)
  clear_on_change boolean,   -- column store only
  destination text,          -- chunks: the side table to create
  chunk_size int,            -- chunks: tokens per chunk (default 512)
  chunk_overlap int,         -- chunks: tokens shared with the previous chunk (default 64)
  splitter text              -- chunks: recursive (default) | markdown | none
)
returns int
language plpgsql
set search_path = ''
as $$
begin
  if destination is null then
    if chunk_size is not null or chunk_overlap is not null or splitter is not null then
      raise exception 'autoembed: chunk_size, chunk_overlap and splitter apply to chunked targets only'
        using errcode = 'AE003', hint = 'Name the side table of chunks: destination => ''public.<table>_chunks''.';
    end if;
    if exists (select from util.embedding_targets t
                where t.table_oid = target_table and t.embedding_column = _store_register.embedding_column
                  and t.shadow_of is null and t.retired_at is null) then
      return util._register_target(target_table, content_function, embedding_column);
    end if;
    return util._register_target(target_table, content_function, embedding_column, model, dimensions);
  end if;
  if clear_on_change then
    raise exception 'autoembed: clear_on_change does not apply to a chunked target'
      using errcode = 'AE003', detail = 'Its chunks are replaced as a whole, atomically, when the text changed.';
  end if;
  chunk_size := coalesce(chunk_size, 512);
  return util._register_chunked_target(
    target_table, content_function, destination, chunk_size,
    coalesce(chunk_overlap, least(64, chunk_size / 2)), coalesce(splitter, 'recursive'), model, dimensions);
end
$$;

-- internal: what detaching target `t` does to its store (its registration
-- already deleted or retired: util.disable_embeddings, or a retirement,
-- 45_table_life): a column keeps its vectors. A side table of chunks is
-- dropped with `drop_store`; else it stays, and a notice says so, with a
-- foreign key to its source (on delete cascade, not validated), so that
-- deleting source rows still deletes their chunks, as the triggers did
-- while it was attached. A side table already gone needs nothing.
create or replace function util._store_detach(t util.embedding_targets, drop_store boolean)
returns void
language plpgsql
set search_path = ''
as $$
declare
  own_ddl text := pg_catalog.current_setting('autoembed.own_ddl', true);
begin
  if t.store = 'column' or t.destination is null
     or not exists (select from pg_catalog.pg_class c where c.oid = t.destination) then
    return;
  end if;
  -- The pipeline's own DDL, which the event triggers leave alone (45_table_life).
  perform pg_catalog.set_config('autoembed.own_ddl', 'on', true);
  if drop_store then
    execute pg_catalog.format('drop table %s', t.destination);
  else
    if exists (select from pg_catalog.pg_class c where c.oid = t.table_oid)
       and not exists (select from pg_catalog.pg_constraint k where k.conrelid = t.destination and k.contype = 'f') then
      execute pg_catalog.format(
        'alter table %s add foreign key (source_id) references %s (%I) on delete cascade not valid',
        t.destination, t.table_oid, t.pk_column);
    end if;
    raise notice 'autoembed: % is no longer kept fresh; it stays, with its chunks, vectors, index and policy', t.destination
      using hint = pg_catalog.format('Drop it with drop table %s; or util.disable_embeddings(..., drop_destination => true).',
                                     t.destination);
  end if;
  perform pg_catalog.set_config('autoembed.own_ddl', coalesce(own_ddl, 'off'), true);
end
$$;

-- internal: the SQL that deletes from the store of target `t` the vectors
-- of the source rows whose keys `ids_query` returns (a query with one
-- column), for the DELETE trigger (30_detect) to run where its transition
-- table is visible: a chunked row's chunks; nothing for a column, whose
-- vectors went with the rows. Null: nothing to run.
create or replace function util._store_forget_sql(t util.embedding_targets, ids_query text)
returns text
language sql
immutable
set search_path = ''
as $$
  select case t.store
           when 'chunks' then pg_catalog.format('delete from %s d where d.source_id in (%s)', t.destination, ids_query)
         end
$$;

-- internal: empties the store of target `t` after its source table was
-- truncated (30_detect): a side table of chunks is truncated too (unless
-- the same statement emptied it already); a column went with the rows.
create or replace function util._store_truncate(t util.embedding_targets)
returns void
language plpgsql
set search_path = ''
as $$
declare
  holds boolean;
begin
  if t.store <> 'chunks' or t.destination is null then
    return;
  end if;
  -- A table truncated by this very statement (truncate articles,
  -- article_chunks) is still open in it and cannot be truncated again.
  execute pg_catalog.format('select exists (select from %s)', t.destination) into holds;
  if holds then
    execute pg_catalog.format('truncate %s', t.destination);
  end if;
end
$$;

-- internal: what of target `t`'s store is gone while its table is not,
-- in words for util.embedding_target_events (45_table_life): its vector
-- column (dropped, or renamed: the target names it), or its side table of
-- chunks. Null: the store is there.
create or replace function util._store_missing(t util.embedding_targets)
returns text
language sql
stable
set search_path = ''
as $$
  select case t.store
           when 'column' then
             case when not exists (select from pg_catalog.pg_attribute a
                                    where a.attrelid = t.table_oid and a.attname = t.embedding_column
                                      and a.attnum > 0 and not a.attisdropped)
                  then 'embedding column dropped or renamed' end
           when 'chunks' then
             case when t.destination is null
                    or not exists (select from pg_catalog.pg_class c where c.oid = t.destination)
                  then 'destination dropped' end
         end
$$;

-------------------------------------------------------------------------------
-- Reading
-------------------------------------------------------------------------------

-- internal: where target `t`'s vectors live: the relation and its vector
-- column (the source table's embedding column, or the side table's
-- `embedding`). util._target_config reads it for the core's writes.
create or replace function util._store_vectors(t util.embedding_targets, out relation regclass, out vector_column name)
language sql
immutable
set search_path = ''
as $$
  select case t.store when 'column' then t.table_oid when 'chunks' then t.destination end,
         case t.store when 'column' then t.embedding_column when 'chunks' then 'embedding'::name end
$$;

-- internal: a SQL condition, true when a source row holds its vectors in the
-- store of target `t`; `source_alias` names the source row and
-- `fingerprint_alias` its fingerprint (util.embedding_fingerprints, left
-- joined) in the caller's statement. A chunked row holds vectors when it has
-- a chunk set, which its fingerprint records (a blank text has neither).
create or replace function util._store_has_vector(t util.embedding_targets, source_alias text, fingerprint_alias text)
returns text
language sql
immutable
set search_path = ''
as $$
  select case t.store
           when 'column' then pg_catalog.format('%s.%I is not null', source_alias, t.embedding_column)
           when 'chunks' then pg_catalog.format('%s.row_id is not null', fingerprint_alias)
         end
$$;

-- internal: the order in which a sweep of target `t` enqueues the rows it
-- picked (an ORDER BY of `p`, whose `tid` is the source row's ctid), so that
-- the store's writes cost least. The shadow column of a model change
-- (nothing indexes it until it is full): page by page in turns, each row's
-- place on its page first, so that a batch updates at most one row of a
-- page and a page's later rows come in later batches, when the room the
-- page's earlier update freed is there again (pruned once that update
-- committed): their updates are HOT, and add nothing to the table's
-- indexes. In key order a batch updates every row of a page at once, none
-- fits in it, and each moves to another page with a new entry in every
-- index of the table: the live vectors' HNSW index too, a graph search a
-- row (bench/RESULTS.md, model change). Else: none (the key's order).
create or replace function util._store_sweep_order(t util.embedding_targets)
returns text
language sql
immutable
set search_path = ''
as $$
  select case when t.store = 'column' and t.shadow_of is not null
              then 'order by (p.tid::text::point)[1], (p.tid::text::point)[0]'
              else '' end
$$;

-- internal: the vectors target `t`'s store holds beyond one a row, for
-- util.embedding_status: a chunked target's chunks (null for a column).
create or replace function util._store_chunks(t util.embedding_targets)
returns bigint
language plpgsql
stable
set search_path = ''
as $$
declare
  chunks bigint;
begin
  if t.store = 'column' then
    return null;
  end if;
  execute pg_catalog.format('select count(*) from %s', t.destination) into chunks;
  return chunks;
end
$$;

-------------------------------------------------------------------------------
-- Model change: a shadow store beside the live one, switched atomically
-------------------------------------------------------------------------------

-- internal: starts a model change of live target `l`: creates its shadow
-- store for `model` and `dimensions` (a shadow column, or a shadow side
-- table: util._shadow_chunk_table) and registers it as the shadow target.
-- Twins of the live store's indexes on its vectors wait for the shadow to be
-- full (util._twin_index_builds): inserting every new vector into an HNSW
-- graph one row at a time is what bounded a change, while building the
-- graph at once, in parallel, is not. Twins of its other indexes (the
-- chunks' hash index, which the shadow's writes read) are made now, on the
-- empty store. Every index is checked first: AE001 for one the twin cannot
-- copy, AE003 for dimensions the store cannot index (the caller's statement
-- then changes nothing). Returns the shadow target's id.
create or replace function util._store_create_shadow(l util.embedding_targets, model text, dimensions int)
returns int
language plpgsql
set search_path = ''
as $$
declare
  col record;
  shadow_column name := ('_autoembed_next_' || l.id)::name;
  shadow_id int;
  s util.embedding_targets;
  twin record;
  own_ddl text := pg_catalog.current_setting('autoembed.own_ddl', true);
begin
  if l.store = 'chunks' then
    if dimensions > 4000 then
      raise exception 'autoembed: dimensions must be between 1 and 4000 for a chunked target, got %', dimensions
        using errcode = 'AE003', hint = 'halfvec HNSW indexes take up to 4000 dimensions.';
    end if;
    shadow_id := util._shadow_chunk_table(l.id, model, dimensions);
  else
    select t.typname, tn.nspname into col
      from pg_catalog.pg_attribute a
      join pg_catalog.pg_type t on t.oid = a.atttypid
      join pg_catalog.pg_namespace tn on tn.oid = t.typnamespace
     where a.attrelid = l.table_oid and a.attname = l.embedding_column;
    execute pg_catalog.format('alter table %s add column %I %I.%I(%s)',
                              l.table_oid, shadow_column, col.nspname, col.typname, dimensions);
    shadow_id := util._register_target(l.table_oid, l.content_function, shadow_column, model, dimensions);
    update util.embedding_targets x set shadow_of = l.id where x.id = shadow_id;
  end if;
  -- Its table's changes are detected as the live target's are (35_capture).
  update util.embedding_targets x set capture = l.capture where x.id = shadow_id;
  select * into s from util.embedding_targets x where x.id = shadow_id;
  select p.* into twin from util._store_twin_plan(l, s) p where p.problem is not null order by p.index_name limit 1;
  if twin.index_name is not null then
    raise exception '%', twin.problem using errcode = 'AE001', detail = twin.detail,
      hint = pg_catalog.format('Drop %I for the change and create it again afterwards.', twin.index_name);
  end if;
  -- Each deferred twin is tried now on an empty copy of its table's columns
  -- (a temporary table), so that one the index method refuses (more
  -- dimensions than it takes, say) stops the change before any vector is
  -- paid for, not once the shadow is full.
  perform pg_catalog.set_config('autoembed.own_ddl', 'on', true);
  for twin in select p.* from util._store_twin_plan(l, s) p where p.deferred loop
    execute pg_catalog.format('create temporary table _autoembed_twin_check (like %s)', twin.relation);
    begin
      execute pg_catalog.format('create %sindex on pg_temp._autoembed_twin_check %s',
                                case when twin.unique_index then 'unique ' else '' end, twin.using_sql);
    exception when others then
      raise exception 'autoembed: index % cannot be built on the new model''s % dimensions: %', twin.index_name, dimensions, sqlerrm
        using errcode = 'AE003',
              hint = pg_catalog.format('Pick dimensions the index takes, or drop %I for the change and create it again afterwards.',
                                       twin.index_name);
    end;
    drop table pg_temp._autoembed_twin_check;
  end loop;
  perform pg_catalog.set_config('autoembed.own_ddl', coalesce(own_ddl, 'off'), true);
  for twin in select p.* from util._store_twin_plan(l, s) p where not p.deferred and p.twin_valid is null loop
    execute util._twin_create_sql(twin.unique_index, twin.twin_name, twin.relation, twin.using_sql, false);
  end loop;
  return shadow_id;
end
$$;

-- internal: the twins on the shadow store of `s` of the indexes of the live
-- store of `l`, one row per live index but its primary key (a chunk table's
-- comes with it): the live index's name, its twin's name (util._twin_name)
-- and schema; whether the twin waits for the shadow to be full (deferred:
-- an index of the vectors); how to create it (util._twin_create_sql); the
-- twin as it is (twin_valid: null while it does not exist, false while it is
-- not valid: being built concurrently, or the leftover of a build that
-- failed, true when it is ready); and, for an index no twin can copy, why
-- (problem and detail, for AE001). Reads the catalog only.
create or replace function util._store_twin_plan(l util.embedding_targets, s util.embedding_targets)
returns table (
  index_name name,
  twin_name name,
  twin_schema name,
  relation regclass,     -- the table the twin is on
  deferred boolean,
  unique_index boolean,
  using_sql text,        -- what follows CREATE [UNIQUE] INDEX [CONCURRENTLY] <twin> ON <relation>
  twin_valid boolean,
  problem text,
  detail text
)
language plpgsql
stable
set search_path = ''
as $$
begin
  if l.store = 'column' then
    return query select * from util._twin_column_plan(l, s);
  else
    return query select * from util._twin_chunk_plan(l, s);
  end if;
end
$$;

-- internal: the CREATE INDEX statement of a twin (from its row of
-- util._store_twin_plan), CONCURRENTLY or not.
create or replace function util._twin_create_sql(
  unique_index boolean,
  twin_name name,
  relation regclass,
  using_sql text,
  concurrent boolean
)
returns text
language sql
stable
set search_path = ''
as $$
  select pg_catalog.format('create %sindex %s%I on %s %s', case when unique_index then 'unique ' else '' end,
                           case when concurrent then 'concurrently ' else '' end, twin_name, relation, using_sql)
$$;

-- internal: whether the shadow store of `s` still lacks what the live store
-- of `l` holds: a row with a live vector and no shadow one, a source row
-- with a live chunk set and no shadow one. A model change switches only
-- when it is false.
create or replace function util._store_shadow_behind(l util.embedding_targets, s util.embedding_targets)
returns boolean
language plpgsql
stable
set search_path = ''
as $$
declare
  behind boolean;
begin
  if l.store = 'column' then
    execute pg_catalog.format('select exists (select from %s r where r.%I is not null and r.%I is null)',
                              l.table_oid, l.embedding_column, s.embedding_column)
      into behind;
  else
    execute pg_catalog.format(
      'select exists (select from %s d where not exists (select from %s x where x.source_id = d.source_id))',
      l.destination, s.destination)
      into behind;
  end if;
  return behind;
end
$$;

-- internal: the tables a switch of `l` to its shadow `s` locks (ACCESS
-- EXCLUSIVE): the source, and a chunked target's two side tables.
create or replace function util._store_relations(l util.embedding_targets, s util.embedding_targets)
returns regclass[]
language sql
immutable
set search_path = ''
as $$
  select case l.store
           when 'column' then array[l.table_oid]
           when 'chunks' then array[l.table_oid, l.destination, s.destination]
         end
$$;

-- internal: how a switch's error names the live store of `l`, for the
-- user to see what holds it back.
create or replace function util._store_label(l util.embedding_targets)
returns text
language sql
immutable
set search_path = ''
as $$ select case l.store when 'column' then 'the column' when 'chunks' then 'the destination table' end $$;

-- internal: the switch itself, under the locks of util._store_relations:
-- the shadow store of `s` takes the place and the names of the live store
-- of `l`, which is dropped. A column: the live column goes (with its
-- indexes), the shadow column and its index twins take their names. A side
-- table: the live one goes, the shadow table takes its name (its primary
-- key and index twins theirs; the destination's other policies
-- and forced RLS are made again on it). The targets' own rows are
-- util._switch_model's.
create or replace function util._store_swap(l util.embedding_targets, s util.embedding_targets)
returns void
language plpgsql
set search_path = ''
as $$
declare
  live record;
  index_names name[];
  index_name name;
  pkey_name name;
  policies text[];
  policy text;
  own_ddl text := pg_catalog.current_setting('autoembed.own_ddl', true);
begin
  -- The pipeline's own DDL, which the event triggers leave alone (45_table_life).
  perform pg_catalog.set_config('autoembed.own_ddl', 'on', true);
  if l.store = 'column' then
    select pg_catalog.array_agg(ic.relname order by ic.relname) into index_names
      from pg_catalog.pg_index i
      join pg_catalog.pg_class ic on ic.oid = i.indexrelid
      join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0]
     where i.indrelid = l.table_oid and i.indnatts = 1 and a.attname = l.embedding_column;
    execute pg_catalog.format('alter table %s drop column %I', l.table_oid, l.embedding_column);
    execute pg_catalog.format('alter table %s rename column %I to %I', l.table_oid, s.embedding_column, l.embedding_column);
    foreach index_name in array coalesce(index_names, '{}') loop
      execute pg_catalog.format('alter index %I.%I rename to %I',
        (select n.nspname from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
          where c.oid = l.table_oid),
        util._twin_name(s.id, index_name), index_name);
    end loop;
    perform pg_catalog.set_config('autoembed.own_ddl', coalesce(own_ddl, 'off'), true);
    return;
  end if;
  select n.nspname, c.relname, c.relforcerowsecurity into live
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
   where c.oid = l.destination;
  select pg_catalog.array_agg(ic.relname order by ic.relname) filter (where not i.indisprimary),
         pg_catalog.min(ic.relname) filter (where i.indisprimary)
    into index_names, pkey_name
    from pg_catalog.pg_index i join pg_catalog.pg_class ic on ic.oid = i.indexrelid
   where i.indrelid = l.destination;
  -- The live destination's other policies (and forced RLS), created again
  -- on the shadow once it has the destination's name, which they may use.
  select pg_catalog.array_agg(pg_catalog.format('create policy %I on %I.%I as %s for %s to %s%s%s',
           p.polname, live.nspname, live.relname,
           case when p.polpermissive then 'permissive' else 'restrictive' end,
           case p.polcmd when 'r' then 'select' when 'a' then 'insert' when 'w' then 'update'
                         when 'd' then 'delete' else 'all' end,
           (select pg_catalog.string_agg(case when r.oid = 0 then 'public' else pg_catalog.quote_ident(r.rolname) end, ', ')
              from pg_catalog.unnest(p.polroles) x(oid)
              left join pg_catalog.pg_roles r on r.oid = x.oid),
           ' using (' || pg_catalog.pg_get_expr(p.polqual, p.polrelid) || ')',
           ' with check (' || pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) || ')'))
    into policies
    from pg_catalog.pg_policy p
   where p.polrelid = l.destination
     and not exists (select from pg_catalog.pg_policy x where x.polrelid = s.destination and x.polname = p.polname);
  execute pg_catalog.format('drop table %s', l.destination);
  execute pg_catalog.format('alter table %s rename to %I', s.destination, live.relname);
  if pkey_name is not null then
    execute pg_catalog.format('alter table %s rename constraint %I to %I', s.destination,
      (select k.conname from pg_catalog.pg_constraint k where k.conrelid = s.destination and k.contype = 'p'), pkey_name);
  end if;
  foreach index_name in array coalesce(index_names, '{}') loop
    execute pg_catalog.format('alter index %I.%I rename to %I', live.nspname, util._twin_name(s.id, index_name), index_name);
  end loop;
  foreach policy in array coalesce(policies, '{}') loop
    execute policy;
  end loop;
  if live.relforcerowsecurity then
    execute pg_catalog.format('alter table %s force row level security', s.destination);
  end if;
  -- The retired target's destination is gone.
  update util.embedding_targets t set destination = null where t.id = l.id;
  perform pg_catalog.set_config('autoembed.own_ddl', coalesce(own_ddl, 'off'), true);
end
$$;

-- internal: drops the shadow store of `s` (a cancelled model change of
-- `l`): the shadow column, or the shadow side table, where it is still
-- there. The live store is untouched. A concurrent build of one of its
-- index twins (util._twin_index_builds) holds the table for as long as it
-- runs, so it is cancelled first: the drop then waits for its rollback only.
create or replace function util._store_drop_shadow(l util.embedding_targets, s util.embedding_targets)
returns void
language plpgsql
set search_path = ''
as $$
declare
  own_ddl text := pg_catalog.current_setting('autoembed.own_ddl', true);
begin
  begin
    perform pg_catalog.pg_cancel_backend(p.pid)
       from pg_catalog.pg_stat_progress_create_index p
       join pg_catalog.pg_class c on c.oid = p.index_relid
       join util._store_twin_plan(l, s) twin on twin.twin_name = c.relname
      where p.datid = (select d.oid from pg_catalog.pg_database d where d.datname = pg_catalog.current_database());
  exception when others then
    -- Not allowed to (another role's build): the drop waits for it instead.
    null;
  end;
  -- The pipeline's own DDL, which the event triggers leave alone (45_table_life).
  perform pg_catalog.set_config('autoembed.own_ddl', 'on', true);
  if s.store = 'chunks' then
    if exists (select from pg_catalog.pg_class c where c.oid = s.destination) then
      execute pg_catalog.format('drop table %s', s.destination);
    end if;
  elsif exists (select from pg_catalog.pg_attribute a
                 where a.attrelid = l.table_oid and a.attname = s.embedding_column and not a.attisdropped) then
    execute pg_catalog.format('alter table %s drop column %I', l.table_oid, s.embedding_column);
  end if;
  perform pg_catalog.set_config('autoembed.own_ddl', coalesce(own_ddl, 'off'), true);
end
$$;

-------------------------------------------------------------------------------
-- The column store: the row's own vector column, and index twins of the
-- shadow column of a model change
-------------------------------------------------------------------------------

-- internal: validates and records a target of the column store: the
-- vector column `embedding_column` of `target_table` (util._record_target
-- checks the rest). Its dimensions are the column's declared ones unless
-- given, and must match them. Returns the target id. Used by
-- util._store_register, guide-style triggers (util._target_for_trigger) and
-- the shadow column of a model change.
create or replace function util._register_target(
  target_table regclass,            -- the user's table
  content_function text,            -- function taking the table's row and returning text
  embedding_column name,            -- vector/halfvec column to fill
  model text default null,          -- null: the target's model, else util.settings default_model
  dimensions int default null       -- null: the column's declared dimensions
)
returns int
language plpgsql
set search_path = ''
as $$
declare
  col record;
  declared int;
begin
  perform util._check_source_table(target_table);
  select a.attname, a.atttypmod, t.typname
    into col
    from pg_catalog.pg_attribute a join pg_catalog.pg_type t on t.oid = a.atttypid
   where a.attrelid = target_table and a.attname = embedding_column and a.attnum > 0 and not a.attisdropped;
  if col.attname is null then
    raise exception 'autoembed: column "%" does not exist on %', embedding_column, target_table
      using errcode = 'AE003',
            hint = format('Add it first, e.g. alter table %s add column %I halfvec(1536);', target_table, embedding_column);
  end if;
  if col.typname not in ('vector', 'halfvec') then
    raise exception 'autoembed: column "%" of % has type %, expected vector or halfvec', embedding_column, target_table, col.typname
      using errcode = 'AE003', hint = 'Use a pgvector halfvec(N) or vector(N) column.';
  end if;
  if dimensions is not null and dimensions < 1 then
    raise exception 'autoembed: dimensions must be a positive number, got %', dimensions
      using errcode = 'AE003',
            hint = 'Pass the model''s vector size, e.g. dimensions => 1536, or leave it to the column''s declaration.';
  end if;
  declared := nullif(col.atttypmod, -1);
  if dimensions is null then
    dimensions := declared;
  elsif declared is not null and declared <> dimensions then
    raise exception 'autoembed: column "%" of % holds % dimensions, not %', embedding_column, target_table, declared, dimensions
      using errcode = 'AE003',
            hint = format('Change the column first: alter table %s alter column %I type %s(%s); or, to move an attached table '
                          'to another model or size, use util.reembed(%L, %L, model => ..., dimensions => %s).',
                          target_table, embedding_column, col.typname, dimensions, target_table::text, embedding_column, dimensions);
  end if;
  if dimensions is null then
    raise exception 'autoembed: column "%" of % has no declared dimensions', embedding_column, target_table
      using errcode = 'AE003', hint = 'Declare them (halfvec(1536)) or pass dimensions.';
  end if;
  return util._record_target(target_table, content_function, embedding_column, model, dimensions);
end
$$;

-- internal: the name of the twin (on the shadow of target `shadow_id`) of
-- the user's index `index_name`; renamed to `index_name` at the switch.
create or replace function util._twin_name(shadow_id int, index_name name)
returns name
language sql
immutable
set search_path = ''
as $$ select ('_autoembed_' || shadow_id || '_' || pg_catalog.md5(index_name))::name $$;

-- internal: util._store_twin_plan of the column store: the indexes of the
-- live column, each with a twin on the shadow column (same access method,
-- operator class and storage options) that waits for the shadow to be full.
-- An index that uses the column otherwise (with other columns, an
-- expression, a predicate) cannot have one: problem says so.
create or replace function util._twin_column_plan(l util.embedding_targets, s util.embedding_targets)
returns table (
  index_name name,
  twin_name name,
  twin_schema name,
  relation regclass,
  deferred boolean,
  unique_index boolean,
  using_sql text,
  twin_valid boolean,
  problem text,
  detail text
)
language sql
stable
set search_path = ''
as $$
  select ic.relname,
         util._twin_name(s.id, ic.relname),
         n.nspname,
         l.table_oid,
         true,
         false,
         pg_catalog.format('using %I (%I %s) %s', am.amname, s.embedding_column,
           pg_catalog.format('%I.%I', ocn.nspname, oc.opcname),
           case when ic.reloptions is null then ''
                else 'with (' || pg_catalog.array_to_string(ic.reloptions, ', ') || ')' end),
         (select ti.indisvalid from pg_catalog.pg_class tc join pg_catalog.pg_index ti on ti.indexrelid = tc.oid
           where tc.relname = util._twin_name(s.id, ic.relname) and tc.relnamespace = n.oid
             and ti.indrelid = l.table_oid),
         case when x.uncopyable
              then pg_catalog.format('autoembed: index %s uses column "%s" in a way a model change cannot carry over',
                                     ic.relname, l.embedding_column) end,
         case when x.uncopyable
              then 'Only indexes on the embedding column alone (no expression, no WHERE) get a twin on the new vectors.' end
    from pg_catalog.pg_attribute a
    join pg_catalog.pg_class c on c.oid = a.attrelid
    join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    join pg_catalog.pg_index i on i.indrelid = a.attrelid
    join pg_catalog.pg_class ic on ic.oid = i.indexrelid
    join pg_catalog.pg_am am on am.oid = ic.relam
    left join pg_catalog.pg_opclass oc on oc.oid = i.indclass[0]
    left join pg_catalog.pg_namespace ocn on ocn.oid = oc.opcnamespace
    cross join lateral (select i.indnatts <> 1 or i.indkey[0] <> a.attnum or i.indexprs is not null
                               or i.indpred is not null as uncopyable) x
   where a.attrelid = l.table_oid and a.attname = l.embedding_column
     and exists (select from pg_catalog.pg_depend d
                  where d.classid = 'pg_catalog.pg_class'::regclass and d.objid = i.indexrelid
                    and d.refclassid = 'pg_catalog.pg_class'::regclass and d.refobjid = l.table_oid
                    and d.refobjsubid = a.attnum)
   order by ic.relname
$$;

-------------------------------------------------------------------------------
-- The chunks store: a side table the pipeline creates and owns, (source_id,
-- chunk_seq, chunk, embedding, chunk_hash), primary key (source_id,
-- chunk_seq), the source row's chunks kept by the source's triggers (no
-- foreign key: see util._create_chunk_table), an HNSW index on embedding,
-- RLS following the source, and for app roles SELECT alone
-- (util._grant_chunk_reads). Its target's
-- embedding_column is the side table's name, which names it in jobs,
-- triggers (embed_<destination>_insert ...), util.disable_embeddings,
-- util.reembed and util.embedding_status.
-------------------------------------------------------------------------------

-- internal: creates a chunk table `dest_schema`.`dest_name` for source
-- `target_table`: (source_id, chunk_seq, chunk, embedding halfvec(dimensions),
-- chunk_hash), its primary key and its RLS policy; the caller adds indexes
-- and grants (util._grant_chunk_reads, in the same transaction). Used for a
-- chunked target's destination and for the shadow destination of its model
-- change. No foreign key to the source: Postgres refuses a plain truncate of
-- a referenced table, before any trigger runs. The source's triggers keep
-- the chunks of its rows instead: a delete deletes theirs
-- (util._store_forget_sql), a truncate truncates them (util._store_truncate),
-- and a chunk set is written only under a lock on its source row
-- (sql/chunks.ts). A detached destination that stays gets the foreign key
-- (util._store_detach).
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
       source_id %3$s not null,
       chunk_seq int not null,
       chunk text not null,
       embedding extensions.halfvec(%4$s),
       chunk_hash bytea not null,
       primary key (source_id, chunk_seq)
     )', dest_schema, dest_name, pk.type_sql, dimensions);
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

-- internal: gives the side table of chunks `chunks` exactly what search
-- needs (I16): SELECT, under its RLS policy, for the roles that may select
-- `readers_of`, and nothing for anyone else but its owner. What the
-- default privileges of its schema gave it at creation (on Supabase ALL to
-- anon, authenticated and service_role: TRUNCATE, TRIGGER and REFERENCES
-- too, which RLS does not cover, and a trigger on the table would run as
-- the pipeline's writer) is taken back. `readers_of`: the source table for
-- a new destination, the live destination for the shadow of a model
-- change (so it keeps the user's choices), the table itself to tighten one.
create or replace function util._grant_chunk_reads(chunks regclass, readers_of regclass)
returns void
language plpgsql
set search_path = ''
as $$
declare
  readers text[];
  reader text;
begin
  -- Read before the revoke: readers_of may be the table itself.
  select coalesce(pg_catalog.array_agg(distinct case when a.grantee = 0 then 'public'
                                                     else pg_catalog.quote_ident(r.rolname) end),
                  '{}'::text[])
    into readers
    from pg_catalog.pg_class c
    cross join lateral pg_catalog.aclexplode(c.relacl) a
    left join pg_catalog.pg_roles r on r.oid = a.grantee
   where c.oid = readers_of and a.privilege_type = 'SELECT' and a.grantee <> c.relowner;
  perform util._revoke_inherited('table', chunks);
  foreach reader in array readers loop
    execute pg_catalog.format('grant select on %s to %s', chunks, reader);
  end loop;
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
  source_schema name;
  dest_schema name;
  dest_name name;
  dest regclass;
  existing util.embedding_targets;
  target_id int;
begin
  perform util._check_chunk_settings(chunk_size, chunk_overlap, splitter);
  -- Checked before the side table is made for them (util._record_target checks all again).
  perform util._check_source_table(target_table);
  perform util._primary_key(target_table);
  select n.nspname into source_schema
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
   where c.oid = target_table;
  -- The destination's name as given: schema.name, or a name in the source's schema.
  if pg_catalog.strpos(destination, '.') > 0 then
    select x[1], x[2] into dest_schema, dest_name from pg_catalog.parse_ident(destination) x;
  else
    select source_schema, x[1] into dest_schema, dest_name from pg_catalog.parse_ident(destination) x;
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
  perform util._check_model_name(model);
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
    perform util._record_target(target_table, content_function, dest_name, model, dimensions);
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
  perform util._grant_chunk_reads(dest, target_table);

  target_id := util._record_target(target_table, content_function, dest_name, model, dimensions);
  update util.embedding_targets t
     set store = 'chunks', destination = dest, chunk_size = _register_chunked_target.chunk_size,
         chunk_overlap = _register_chunked_target.chunk_overlap, splitter = _register_chunked_target.splitter
   where t.id = target_id;
  return target_id;
end
$$;

-- internal: the name of chunked target `live_id`'s shadow destination table
-- (in the destination's schema), and the prefix of its constraints' names.
create or replace function util._shadow_chunk_name(live_id int)
returns name
language sql
immutable
set search_path = ''
as $$ select ('_autoembed_chunks_' || live_id)::name $$;

-- internal: starts a model change of chunked target `live_id`: creates its
-- shadow destination table beside the live one (same columns, vectors of
-- `dimensions`, the same RLS policy, SELECT grants and owner; its index twins come
-- from util._store_twin_plan), and registers it as the shadow target,
-- named by the shadow table's name. Its chunks reuse vectors only of its own
-- chunks (another model's vectors are no use). Returns the shadow target's id.
create or replace function util._shadow_chunk_table(live_id int, model text, dimensions int)
returns int
language plpgsql
set search_path = ''
as $$
declare
  l util.embedding_targets;
  live record;
  shadow_name name := util._shadow_chunk_name(live_id);
  shadow regclass;
  shadow_id int;
begin
  select * into l from util.embedding_targets where id = live_id;
  select n.nspname, c.relname, c.relowner::regrole::text as owner_sql into live
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
   where c.oid = l.destination;
  shadow := util._create_chunk_table(l.table_oid, live.nspname, shadow_name, dimensions);
  execute pg_catalog.format('alter table %s owner to %s', shadow, live.owner_sql);
  perform util._grant_chunk_reads(shadow, l.destination);
  shadow_id := util._record_target(l.table_oid, l.content_function, shadow_name, model, dimensions);
  update util.embedding_targets t
     set shadow_of = l.id, store = 'chunks', destination = shadow, chunk_size = l.chunk_size, chunk_overlap = l.chunk_overlap,
         splitter = l.splitter, content_definition = l.content_definition
   where t.id = shadow_id;
  return shadow_id;
end
$$;

-- internal: util._store_twin_plan of the chunks store: every index of the
-- live destination but its primary key, each with a twin of the same
-- definition on the shadow table. Twins of the indexes of the `embedding`
-- column (the HNSW index the pipeline made, and any the user added) wait
-- for the shadow to be full; the others (the chunk_hash index, which the
-- shadow's writes read to reuse vectors) are made with the shadow. An index
-- whose definition cannot be carried over has a problem.
create or replace function util._twin_chunk_plan(l util.embedding_targets, s util.embedding_targets)
returns table (
  index_name name,
  twin_name name,
  twin_schema name,
  relation regclass,
  deferred boolean,
  unique_index boolean,
  using_sql text,
  twin_valid boolean,
  problem text,
  detail text
)
language sql
stable
set search_path = ''
as $$
  select x.index_name,
         util._twin_name(s.id, x.index_name),
         sn.nspname,
         s.destination,
         exists (select from pg_catalog.pg_depend d
                  join pg_catalog.pg_attribute a on a.attrelid = l.destination and a.attnum = d.refobjsubid
                 where d.classid = 'pg_catalog.pg_class'::regclass and d.objid = x.indexrelid
                   and d.refclassid = 'pg_catalog.pg_class'::regclass and d.refobjid = l.destination
                   and a.attname = 'embedding'),
         x.indisunique,
         'using ' || pg_catalog.substr(x.def, pg_catalog.strpos(x.def, ' USING ') + 7),
         (select ti.indisvalid from pg_catalog.pg_class tc join pg_catalog.pg_index ti on ti.indexrelid = tc.oid
           where tc.relname = util._twin_name(s.id, x.index_name) and tc.relnamespace = sc.relnamespace
             and ti.indrelid = s.destination),
         -- pg_get_indexdef quotes like format's %I, except for plain lower-case names.
         case when pg_catalog.strpos(x.def, ' USING ') = 0
                or pg_catalog.replace(pg_catalog.left(x.def, pg_catalog.strpos(x.def, ' USING ') + 6), '"', '')
                   <> pg_catalog.replace(x.head, '"', '')
              then pg_catalog.format('autoembed: index %s of %s cannot be carried over to the new model''s chunks',
                                     x.index_name, l.destination) end,
         null::text
    from (select ic.relname as index_name, i.indexrelid, i.indisunique,
                 pg_catalog.pg_get_indexdef(i.indexrelid) as def,
                 pg_catalog.format('CREATE %sINDEX %I ON %I.%I USING ',
                                   case when i.indisunique then 'UNIQUE ' else '' end, ic.relname, n.nspname, c.relname)
                   as head
            from pg_catalog.pg_index i
            join pg_catalog.pg_class ic on ic.oid = i.indexrelid
            join pg_catalog.pg_class c on c.oid = i.indrelid
            join pg_catalog.pg_namespace n on n.oid = c.relnamespace
           where i.indrelid = l.destination and not i.indisprimary) x
    join pg_catalog.pg_class sc on sc.oid = s.destination
    join pg_catalog.pg_namespace sn on sn.oid = sc.relnamespace
   order by x.index_name
$$;

-------------------------------------------------------------------------------
-- Search: the one ranking of every store (its public wrappers are in
-- 80_search). It runs as the caller, so it is security invoker.
-------------------------------------------------------------------------------

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
