-- autoembed schema 50: helpers the processing core
-- (supabase/functions/_shared/) calls while it applies a batch, one round
-- trip each: the targets' configuration, the text hash, and fallbacks for
-- rows and ids that fail a set-based read. Settling the batch's jobs is the
-- jobs module's (16_jobs.sql).

-- internal: the configuration the core needs for the targets a batch names,
-- identifiers already quoted for dynamic SQL. Retired targets are gone;
-- shadow targets are listed with the live target they belong to.
create or replace view util._target_config as
select t.id,
       n.nspname::text as schema_name,
       c.relname::text as table_name,
       t.embedding_column::text as embedding_column,
       t.content_function,
       t.model,
       t.dimensions,
       t.table_oid::text as table_sql,
       pg_catalog.quote_ident(t.pk_column) as pk_sql,
       pg_catalog.format_type(pk.atttypid, pk.atttypmod) as pk_type_sql,
       pg_catalog.quote_ident(emb.attname) as embedding_sql,
       pg_catalog.format_type(emb.atttypid, emb.atttypmod) as embedding_type_sql,
       pg_catalog.format('%I.%I', t.content_function_schema, t.content_function_name) as content_function_sql,
       t.shadow_of,
       -- chunked targets (null for whole-row ones): the side table, its
       -- settings, and what the row fingerprints hash besides the text
       t.destination::text as destination_sql,
       t.chunk_size,
       t.chunk_overlap,
       t.splitter,
       nullif(util._fingerprint_key(t), '') as chunking_key,
       -- where the vectors live (22_stores): 'column' or 'chunks'
       t.store,
       -- how its table's changes are detected (35_capture): its writes to
       -- a logically captured table mark their transaction (sql/write.ts)
       t.capture
  from util.embedding_targets t
  join pg_catalog.pg_class c on c.oid = t.table_oid
  join pg_catalog.pg_namespace n on n.oid = c.relnamespace
  join pg_catalog.pg_attribute pk on pk.attrelid = t.table_oid and pk.attname = t.pk_column
  -- the vectors, wherever the target's store keeps them
  cross join lateral util._store_vectors(t) v
  join pg_catalog.pg_attribute emb on emb.attrelid = v.relation and emb.attname = v.vector_column
 where t.retired_at is null;

-- internal: the hash the fingerprints and the compare-and-set use.
create or replace function util._content_hash(content text)
returns bytea
language sql
immutable
parallel safe
set search_path = ''
as $$ select pg_catalog.sha256(pg_catalog.convert_to(coalesce(content, ''), 'UTF8')) $$;

-- internal: the text of `source_row` by `content_function` (a name quoted by
-- util._target_config, never taken from a job), or the error it raised.
create or replace function util._try_content(content_function text, source_row anyelement, out content text, out error text)
language plpgsql
stable
set search_path = ''
as $$
begin
  execute pg_catalog.format('select %s($1)', content_function) into content using source_row;
exception when others then
  error := sqlerrm;
end
$$;

-- internal: which of `ids` (a JSON array of strings) are not values of the
-- primary key type of target `target_id` (AE002 for an unknown target).
create or replace function util._invalid_keys(target_id int, ids jsonb)
returns text[]
language plpgsql
stable
set search_path = ''
as $$
declare
  key_type text;
  id text;
  invalid text[] := array[]::text[];
begin
  select pg_catalog.format_type(a.atttypid, a.atttypmod) into key_type
    from util.embedding_targets t
    join pg_catalog.pg_attribute a on a.attrelid = t.table_oid and a.attname = t.pk_column
   where t.id = target_id;
  if key_type is null then
    raise exception 'autoembed: no target with id %', target_id
      using errcode = 'AE002';
  end if;
  for id in select pg_catalog.jsonb_array_elements_text(ids) loop
    begin
      -- the id is bound as a literal; the type comes from the catalog
      execute pg_catalog.format('select %L::%s', id, key_type);
    exception when others then
      invalid := invalid || id;
    end;
  end loop;
  return invalid;
end
$$;
