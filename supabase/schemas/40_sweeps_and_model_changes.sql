-- autoembed schema 40: work that visits a whole table. A *sweep* visits a
-- target's rows in primary-key slices of sweep_slice_rows, only while the
-- queue is short, and enqueues the rows whose embedding is missing or whose
-- text no longer hashes to its fingerprint: backfills (enable_embeddings),
-- rechecks (refresh_embeddings, reembed without a model, a changed content
-- function, I10) and model changes. A model change builds the new model's
-- vectors in a shadow column with twins of the live column's indexes (for a
-- chunked target: a shadow destination table) and switches in one
-- transaction when complete (I7). util.maintain_embeddings,
-- run on every push tick and worker poll, drives all of it.

-- internal: the job message (without its row id) that names live target
-- `live_id` as its triggers would.
create or replace function util._job_base(live_id int)
returns jsonb
language sql
stable
set search_path = ''
as $$
  select jsonb_build_object('schema', n.nspname, 'table', c.relname,
                            'contentFunction', t.content_function, 'embeddingColumn', t.embedding_column)
    from util.embedding_targets t
    join pg_catalog.pg_class c on c.oid = t.table_oid
    join pg_catalog.pg_namespace n on n.oid = c.relnamespace
   where t.id = live_id
$$;

-- internal: one step of target `target_id`'s sweep: visits up to `max_rows`
-- rows after the cursor in primary-key order and enqueues a job (naming the
-- live target, as the triggers do; up to 100 rows a message) for each row whose embedding is missing
-- or whose text no longer hashes to its fingerprint. The content function
-- runs only for rows that have a fingerprint to compare. Ends the sweep when
-- the table is exhausted. Returns the jobs enqueued.
create or replace function util._sweep_step(target_id int, max_rows int)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  t util.embedding_targets;
  c record;
  job jsonb;
  visited bigint;
  last_key text;
  enqueued bigint;
  scan text;
begin
  select * into t from util.embedding_targets x where x.id = target_id;
  select * into c from util._target_config x where x.id = target_id;
  if c.id is null or t.sweep_started_at is null then
    return 0;
  end if;
  job := util._job_base(coalesce(t.shadow_of, t.id));
  -- A chunked target's vectors are in its destination: a row without a
  -- fingerprint has no chunks, and its fingerprint hashes the chunk settings too.
  scan := pg_catalog.format(
    'with slice as (
       select r.%1$s as key, %2$s as unembedded, r as source
         from %3$s r
        where $1::text is null or r.%1$s > $1::%4$s
        order by r.%1$s
        limit $2
     ), picked as (
       select s.key from slice s
         left join util.embedding_fingerprints f on f.target_id = $3 and f.row_id = s.key::text
        where case when s.unembedded or f.row_id is null then true
                   else f.content_hash is distinct from %5$s end
     ), queued as (
       insert into pgmq.q_embedding_jobs (vt, message)
       select pg_catalog.clock_timestamp(), $4 || case when pg_catalog.jsonb_array_length(k.ids) = 1
                      then pg_catalog.jsonb_build_object(''id'', k.ids -> 0)
                      else pg_catalog.jsonb_build_object(''ids'', k.ids) end
         from (select pg_catalog.jsonb_agg(c.key) as ids
                 from (select p.key, (pg_catalog.row_number() over () - 1) / 100 as pack from picked p) c
                group by c.pack) k
       returning 1
     )
     select (select count(*) from slice),
            (select s.key::text from slice s order by s.key desc limit 1),
            (select count(*) from picked)',
    c.pk_sql,
    case when c.destination_sql is null then pg_catalog.format('r.%s is null', c.embedding_sql) else 'false' end,
    c.table_sql, c.pk_type_sql,
    case when c.destination_sql is null then pg_catalog.format('util._content_hash(%s(s.source))', c.content_function_sql)
         else pg_catalog.format('util._chunked_hash(%L, %s(s.source))', c.chunking_key, c.content_function_sql) end);
  begin
    execute scan into visited, last_key, enqueued using t.sweep_after, max_rows, t.id, job;
  exception when others then
    -- The content function raises for some row of the slice: enqueue the
    -- whole slice instead; the core isolates that row and records its error.
    execute pg_catalog.replace(scan, 'else f.content_hash is distinct from', 'else true or f.content_hash is distinct from')
      into visited, last_key, enqueued using t.sweep_after, max_rows, t.id, job;
  end;
  update util.embedding_targets x
     set sweep_after = case when visited < max_rows then null else last_key end,
         sweep_started_at = case when visited < max_rows then null else x.sweep_started_at end,
         sweep_checked = x.sweep_checked + visited,
         sweep_enqueued = x.sweep_enqueued + enqueued
   where x.id = target_id;
  if enqueued > 0 then
    perform pg_catalog.pg_notify('embedding_jobs', '');
  end if;
  return enqueued;
end
$$;

-- internal: starts (or restarts) a sweep of target `target_id` and runs its
-- first step now, so small tables are enqueued at once. Returns the jobs
-- enqueued by that first step.
create or replace function util._start_sweep(target_id int)
returns bigint
language plpgsql
set search_path = ''
as $$
begin
  update util.embedding_targets x
     set sweep_started_at = now(), sweep_after = null, sweep_checked = 0, sweep_enqueued = 0
   where x.id = target_id;
  return util._sweep_step(target_id, util._setting('sweep_slice_rows')::int);
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

-- internal: creates on the shadow column of `shadow_id` a twin of every
-- index on the live column that has none yet (same access method, operator
-- class and storage options). Raises for an index the twin cannot copy
-- (several columns, an expression, a predicate), before anything changed.
create or replace function util._twin_indexes(shadow_id int)
returns int
language plpgsql
set search_path = ''
as $$
declare
  s util.embedding_targets;
  l util.embedding_targets;
  live_attnum int2;
  ix record;
  made int := 0;
begin
  select * into s from util.embedding_targets where id = shadow_id;
  select * into l from util.embedding_targets where id = s.shadow_of;
  select a.attnum into live_attnum from pg_catalog.pg_attribute a
   where a.attrelid = l.table_oid and a.attname = l.embedding_column;
  for ix in
    select ic.relname as index_name, i.indnatts, i.indkey[0] as key_attnum,
           i.indexprs is not null as has_expressions, i.indpred is not null as has_predicate,
           am.amname, oc.opcname, ocn.nspname as opc_schema, ic.reloptions
      from pg_catalog.pg_index i
      join pg_catalog.pg_class ic on ic.oid = i.indexrelid
      join pg_catalog.pg_am am on am.oid = ic.relam
      left join pg_catalog.pg_opclass oc on oc.oid = i.indclass[0]
      left join pg_catalog.pg_namespace ocn on ocn.oid = oc.opcnamespace
     where i.indrelid = l.table_oid
       and exists (select from pg_catalog.pg_depend d
                    where d.classid = 'pg_catalog.pg_class'::regclass and d.objid = i.indexrelid
                      and d.refclassid = 'pg_catalog.pg_class'::regclass and d.refobjid = l.table_oid
                      and d.refobjsubid = live_attnum)
     order by ic.relname
  loop
    if ix.indnatts <> 1 or ix.key_attnum <> live_attnum or ix.has_expressions or ix.has_predicate then
      raise exception 'autoembed: index % uses column "%" in a way a model change cannot carry over', ix.index_name, l.embedding_column
        using errcode = 'AE001',
              detail = 'Only indexes on the embedding column alone (no expression, no WHERE) get a twin on the new vectors.',
              hint = format('Drop %I for the change and create it again afterwards.', ix.index_name);
    end if;
    if not exists (select from pg_catalog.pg_class x
                    where x.relname = util._twin_name(shadow_id, ix.index_name)
                      and x.relnamespace = (select relnamespace from pg_catalog.pg_class where oid = l.table_oid)) then
      execute pg_catalog.format('create index %I on %s using %I (%I %s) %s',
        util._twin_name(shadow_id, ix.index_name), l.table_oid, ix.amname, s.embedding_column,
        pg_catalog.format('%I.%I', ix.opc_schema, ix.opcname),
        case when ix.reloptions is null then ''
             else 'with (' || pg_catalog.array_to_string(ix.reloptions, ', ') || ')' end);
      made := made + 1;
    end if;
  end loop;
  return made;
end
$$;

-- internal: switches live target `live_id` to its shadow when the shadow is
-- complete: its sweep is done and no row has a live vector without a shadow
-- one. One transaction, under an ACCESS EXCLUSIVE lock taken with a short
-- lock_timeout (a busy table is tried again at the next tick): the live
-- column is dropped (with its indexes), the shadow column takes its name and
-- the index twins their names, and the shadow target becomes the live one.
-- Readers see the old model before and the new one after, never a mix.
-- Returns whether it switched; when the drop is refused (a view depends on
-- the column), the reason goes to util.embedding_errors, once an hour.
create or replace function util._switch_model(live_id int)
returns boolean
language plpgsql
set search_path = ''
as $$
declare
  l util.embedding_targets;
  s util.embedding_targets;
  unmatched boolean;
  saved_timeout text := pg_catalog.current_setting('lock_timeout');
  index_names name[];
  index_name name;
  problem text;
begin
  select * into l from util.embedding_targets where id = live_id;
  select * into s from util.embedding_targets where shadow_of = live_id;
  if s.id is null or s.sweep_started_at is not null then
    return false;
  end if;
  -- Checked before the lock too, so an unfinished change costs no lock.
  execute pg_catalog.format('select exists (select from %s r where r.%I is not null and r.%I is null)',
                            l.table_oid, l.embedding_column, s.embedding_column)
    into unmatched;
  if unmatched then
    return false;
  end if;
  -- Indexes made on the live column since the change began get their twin now.
  perform util._twin_indexes(s.id);
  begin
    perform pg_catalog.set_config('lock_timeout', '500ms', true);
    execute pg_catalog.format('lock table %s in access exclusive mode', l.table_oid);
    perform pg_catalog.set_config('lock_timeout', saved_timeout, true);
    execute pg_catalog.format('select exists (select from %s r where r.%I is not null and r.%I is null)',
                              l.table_oid, l.embedding_column, s.embedding_column)
      into unmatched;
    if unmatched then
      return false;
    end if;
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
    update util.embedding_targets t
       set embedding_column = ('_autoembed_retired_' || t.id)::name, retired_at = now(),
           sweep_started_at = null
     where t.id = l.id;
    update util.embedding_targets t
       set embedding_column = l.embedding_column, shadow_of = null,
           content_changed_at = coalesce(l.content_changed_at, t.content_changed_at)
     where t.id = s.id;
    return true;
  exception
    when lock_not_available then
      perform pg_catalog.set_config('lock_timeout', saved_timeout, true);
      return false;
    when others then
      perform pg_catalog.set_config('lock_timeout', saved_timeout, true);
      problem := pg_catalog.format('the switch to model %s is waiting: %s', s.model, sqlerrm);
      if not exists (select from util.embedding_errors e
                      where e.target_id = l.id and e.error = problem and e.created_at > now() - interval '1 hour') then
        insert into util.embedding_errors (target_id, table_name, retryable, error)
        values (l.id, l.table_oid::text, true,
                problem || case when sqlstate = '2BP01'
                                then ' (drop or change what depends on the column; the switch retries every tick)'
                                else '' end);
      end if;
      return false;
  end;
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
-- `dimensions`, the same RLS policy, grants and owner, and a twin of every
-- index of the live destination but its primary key), and registers it as
-- the shadow target, named by the shadow table's name. Its chunks reuse
-- vectors only of its own chunks (another model's vectors are no use).
-- Raises AE001 for an index the twin cannot copy, before anything changed.
-- Returns the shadow target's id.
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
  privilege record;
begin
  select * into l from util.embedding_targets where id = live_id;
  select n.nspname, c.relname, c.relowner::regrole::text as owner_sql into live
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
   where c.oid = l.destination;
  shadow := util._create_chunk_table(l.table_oid, live.nspname, shadow_name, dimensions);
  execute pg_catalog.format('alter table %s owner to %s', shadow, live.owner_sql);
  for privilege in
    select a.privilege_type, case when a.grantee = 0 then 'public' else pg_catalog.quote_ident(r.rolname) end as grantee
      from pg_catalog.pg_class c
      cross join lateral pg_catalog.aclexplode(c.relacl) a
      left join pg_catalog.pg_roles r on r.oid = a.grantee
     where c.oid = l.destination and a.grantee is distinct from c.relowner
  loop
    execute pg_catalog.format('grant %s on %s to %s', privilege.privilege_type, shadow, privilege.grantee);
  end loop;
  shadow_id := util._register_target_function(null, l.content_function, l.table_oid, shadow_name, model, dimensions);
  update util.embedding_targets t
     set shadow_of = l.id, destination = shadow, chunk_size = l.chunk_size, chunk_overlap = l.chunk_overlap,
         splitter = l.splitter, content_definition = l.content_definition
   where t.id = shadow_id;
  perform util._twin_chunk_indexes(shadow_id);
  return shadow_id;
end
$$;

-- internal: creates on the shadow destination of `shadow_id` a twin of every
-- index of the live destination (but its primary key) that has none yet:
-- the same definition on the shadow table, named util._twin_name. Raises
-- AE001 for one whose definition cannot be carried over.
create or replace function util._twin_chunk_indexes(shadow_id int)
returns int
language plpgsql
set search_path = ''
as $$
declare
  s util.embedding_targets;
  l util.embedding_targets;
  ix record;
  head text;
  made int := 0;
begin
  select * into s from util.embedding_targets where id = shadow_id;
  select * into l from util.embedding_targets where id = s.shadow_of;
  for ix in
    select ic.relname as index_name, n.nspname, c.relname as table_name, i.indisunique,
           pg_catalog.pg_get_indexdef(i.indexrelid) as def
      from pg_catalog.pg_index i
      join pg_catalog.pg_class ic on ic.oid = i.indexrelid
      join pg_catalog.pg_class c on c.oid = i.indrelid
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where i.indrelid = l.destination and not i.indisprimary
     order by ic.relname
  loop
    continue when exists (select from pg_catalog.pg_class x
                           where x.relname = util._twin_name(shadow_id, ix.index_name)
                             and x.relnamespace = (select relnamespace from pg_catalog.pg_class where oid = s.destination));
    head := pg_catalog.format('CREATE %sINDEX %I ON %I.%I USING ',
                              case when ix.indisunique then 'UNIQUE ' else '' end, ix.index_name, ix.nspname, ix.table_name);
    -- pg_get_indexdef quotes like format's %I, except for plain lower-case names.
    if pg_catalog.strpos(ix.def, ' USING ') = 0
       or pg_catalog.replace(pg_catalog.left(ix.def, pg_catalog.strpos(ix.def, ' USING ') + 6), '"', '')
          <> pg_catalog.replace(head, '"', '') then
      raise exception 'autoembed: index % of % cannot be carried over to the new model''s chunks', ix.index_name, l.destination
        using errcode = 'AE001',
              hint = pg_catalog.format('Drop %I for the change and create it again afterwards.', ix.index_name);
    end if;
    execute pg_catalog.format('CREATE %sINDEX %I ON %s USING %s',
                              case when ix.indisunique then 'UNIQUE ' else '' end,
                              util._twin_name(shadow_id, ix.index_name), s.destination,
                              pg_catalog.substr(ix.def, pg_catalog.strpos(ix.def, ' USING ') + 7));
    made := made + 1;
  end loop;
  return made;
end
$$;

-- internal: switches chunked target `live_id` to its shadow destination when
-- it is complete: its sweep is done and every source row with a live chunk
-- set has a shadow one. One transaction, under ACCESS EXCLUSIVE locks on
-- the source and both destinations taken with a short lock_timeout (a busy
-- table is tried again at the next tick): the live destination is dropped,
-- the shadow table takes its name (its primary key, reference and index
-- twins theirs; the destination's other policies and forced RLS are made
-- again on it), and the shadow target becomes the live one. Readers see the
-- old model's chunks before and the new one's after, never a mix (I7).
-- Returns whether it switched; when the drop is refused (a view depends on
-- the destination), the reason goes to util.embedding_errors, once an hour.
create or replace function util._switch_chunks(live_id int)
returns boolean
language plpgsql
set search_path = ''
as $$
declare
  l util.embedding_targets;
  s util.embedding_targets;
  live record;
  unmatched boolean;
  saved_timeout text := pg_catalog.current_setting('lock_timeout');
  index_names name[];
  index_name name;
  pkey_name name;
  fkey_name name;
  policies text[];
  policy text;
  problem text;
  detail text;
  check_sql text;
begin
  select * into l from util.embedding_targets where id = live_id;
  select * into s from util.embedding_targets where shadow_of = live_id;
  if s.id is null or s.sweep_started_at is not null or s.destination is null then
    return false;
  end if;
  check_sql := pg_catalog.format(
    'select exists (select from %s d where not exists (select from %s x where x.source_id = d.source_id))',
    l.destination, s.destination);
  -- Checked before the locks too, so an unfinished change costs no lock.
  execute check_sql into unmatched;
  if unmatched then
    return false;
  end if;
  -- Indexes made on the live destination since the change began get their twin now.
  perform util._twin_chunk_indexes(s.id);
  select n.nspname, c.relname, c.relforcerowsecurity into live
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
   where c.oid = l.destination;
  begin
    perform pg_catalog.set_config('lock_timeout', '500ms', true);
    execute pg_catalog.format('lock table %s, %s, %s in access exclusive mode', l.table_oid, l.destination, s.destination);
    perform pg_catalog.set_config('lock_timeout', saved_timeout, true);
    execute check_sql into unmatched;
    if unmatched then
      return false;
    end if;
    select pg_catalog.array_agg(ic.relname order by ic.relname) filter (where not i.indisprimary),
           pg_catalog.min(ic.relname) filter (where i.indisprimary)
      into index_names, pkey_name
      from pg_catalog.pg_index i join pg_catalog.pg_class ic on ic.oid = i.indexrelid
     where i.indrelid = l.destination;
    select pg_catalog.min(k.conname) into fkey_name
      from pg_catalog.pg_constraint k where k.conrelid = l.destination and k.contype = 'f';
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
    if fkey_name is not null then
      execute pg_catalog.format('alter table %s rename constraint %I to %I', s.destination,
        (select pg_catalog.min(k.conname) from pg_catalog.pg_constraint k where k.conrelid = s.destination and k.contype = 'f'),
        fkey_name);
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
    update util.embedding_targets t
       set embedding_column = ('_autoembed_retired_' || t.id)::name, retired_at = now(),
           sweep_started_at = null, destination = null
     where t.id = l.id;
    update util.embedding_targets t
       set embedding_column = l.embedding_column, shadow_of = null,
           content_changed_at = coalesce(l.content_changed_at, t.content_changed_at)
     where t.id = s.id;
    return true;
  exception
    when lock_not_available then
      perform pg_catalog.set_config('lock_timeout', saved_timeout, true);
      return false;
    when others then
      perform pg_catalog.set_config('lock_timeout', saved_timeout, true);
      get stacked diagnostics detail = pg_exception_detail;
      problem := pg_catalog.format('the switch to model %s is waiting: %s', s.model, sqlerrm)
                 || case when coalesce(detail, '') <> '' then ': ' || pg_catalog.replace(detail, pg_catalog.chr(10), '; ') else '' end;
      if not exists (select from util.embedding_errors e
                      where e.target_id = l.id and e.error = problem and e.created_at > now() - interval '1 hour') then
        insert into util.embedding_errors (target_id, table_name, retryable, error)
        values (l.id, l.table_oid::text, true,
                problem || case when sqlstate = '2BP01'
                                then ' (drop or change what depends on the destination table; the switch retries every tick)'
                                else '' end);
      end if;
      return false;
  end;
end
$$;

-- public: cancels a model change of (table, column) started by
-- util.reembed: drops the shadow column (and its index twins), or a chunked
-- target's shadow destination table, and its bookkeeping. The live column is untouched. Returns whether there was one.
create or replace function util.cancel_reembed(
  target_table regclass,
  embedding_column name default 'embedding'
)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
declare
  l util.embedding_targets := util._live_target(target_table, embedding_column);
  s util.embedding_targets;
begin
  -- The bookkeeping rows first, then the table: the order util.maintain_embeddings
  -- takes them in, so a cancel and a tick never deadlock. NO KEY UPDATE, not
  -- UPDATE: a writer of this table checks its fingerprints' foreign key with
  -- KEY SHARE on these rows while it holds the table, which FOR UPDATE would
  -- block while this waits for the table: a deadlock.
  perform from util.embedding_targets x where x.id = l.id or x.shadow_of = l.id for no key update;
  select * into s from util.embedding_targets where shadow_of = l.id;
  if s.id is null then
    return false;
  end if;
  if s.destination is not null then
    execute pg_catalog.format('drop table if exists %s', s.destination);
  elsif exists (select from pg_catalog.pg_attribute a
                 where a.attrelid = l.table_oid and a.attname = s.embedding_column and not a.attisdropped) then
    execute pg_catalog.format('alter table %s drop column %I', l.table_oid, s.embedding_column);
  end if;
  delete from util.embedding_targets where id = s.id;
  return true;
end
$$;

-- public: re-embeds a table in the background.
--   * With a model or dimensions other than the table's: builds the new
--     model's embeddings beside the live column (a shadow column with twins
--     of its indexes), keeps the live column on the old model and fresh, and
--     switches atomically when the new model covers every row (see
--     util.embedding_status: next_model, next_embedded). For a chunked
--     target the new model's chunks go to a shadow destination table (see
--     util._shadow_chunk_table), which takes the destination's place at the
--     switch. Calling it again with
--     the same model is a no-op; with another, it replaces the change in
--     progress; with the table's own model, it cancels it.
--   * Without: rechecks every row, enqueueing those whose embedding is
--     missing or whose text changed (as after a content function change).
-- Returns the jobs enqueued now; the rest follow in slices.
create or replace function util.reembed(
  target_table regclass,
  embedding_column name default 'embedding',
  model text default null,
  dimensions int default null
)
returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
  l util.embedding_targets := util._live_target(target_table, embedding_column);
  s util.embedding_targets;
  col record;
  shadow_column name := ('_autoembed_next_' || l.id)::name;
  shadow_id int;
begin
  -- The bookkeeping rows first, then the table (see util.cancel_reembed).
  perform from util.embedding_targets x where x.id = l.id or x.shadow_of = l.id for no key update;
  if model is not null and (pg_catalog.btrim(model) = '' or pg_catalog.length(model) > 200) then
    raise exception 'autoembed: "%" is not a model name', pg_catalog.left(model, 200)
      using errcode = 'AE003', hint = 'Name the provider''s model, e.g. text-embedding-3-small, or a local-* model.';
  end if;
  if dimensions is not null and (dimensions < 1 or dimensions > 16000) then
    raise exception 'autoembed: dimensions must be between 1 and 16000, got %', dimensions
      using errcode = 'AE003', hint = 'Pass the model''s vector size, e.g. dimensions => 1536.';
  end if;
  select * into s from util.embedding_targets x where x.shadow_of = l.id;
  if model is not null or dimensions is not null then
    model := coalesce(model, l.model);
    dimensions := coalesce(dimensions, l.dimensions);
  end if;
  if l.destination is not null and dimensions > 4000 then
    raise exception 'autoembed: dimensions must be between 1 and 4000 for a chunked target, got %', dimensions
      using errcode = 'AE003', hint = 'halfvec HNSW indexes take up to 4000 dimensions.';
  end if;
  if model is null or (model = l.model and dimensions = l.dimensions) then
    if model is not null then
      perform util.cancel_reembed(target_table, embedding_column);
    end if;
    if s.id is not null and model is null then
      perform util._start_sweep(s.id);
    end if;
    return util._start_sweep(l.id);
  end if;
  if s.id is not null then
    if s.model = model and s.dimensions = dimensions then
      return 0;
    end if;
    perform util.cancel_reembed(target_table, embedding_column);
  end if;

  if l.destination is not null then
    shadow_id := util._shadow_chunk_table(l.id, model, dimensions);
    return util._start_sweep(shadow_id);
  end if;
  select t.typname, tn.nspname into col
    from pg_catalog.pg_attribute a
    join pg_catalog.pg_type t on t.oid = a.atttypid
    join pg_catalog.pg_namespace tn on tn.oid = t.typnamespace
   where a.attrelid = l.table_oid and a.attname = l.embedding_column;
  execute pg_catalog.format('alter table %s add column %I %I.%I(%s)',
                            l.table_oid, shadow_column, col.nspname, col.typname, dimensions);
  shadow_id := util._register_target(target_table, l.content_function, shadow_column, model, dimensions);
  update util.embedding_targets x set shadow_of = l.id where x.id = shadow_id;
  perform util._twin_indexes(shadow_id);
  return util._start_sweep(shadow_id);
end
$$;

-- public: rechecks every row of (table, column) and re-embeds those whose
-- text changed, e.g. after changing a function that the content function
-- calls (changes of the content function itself are noticed without it).
-- Returns the jobs enqueued now; the rest follow in slices.
create or replace function util.refresh_embeddings(
  target_table regclass,
  embedding_column name default 'embedding'
)
returns bigint
language sql
security definer
set search_path = ''
as $$ select util.reembed(target_table, embedding_column) $$;

-- public: the pipeline's background work, cheap when there is none:
--   1. notices content functions whose definition changed and starts a
--      sweep of their targets (I10);
--   2. advances every sweep by one slice while the queue holds fewer than
--      sweep_slice_rows jobs;
--   3. switches finished model changes (I7);
--   4. deletes fingerprints of retired targets in slices.
-- util.process_embeddings calls it on every tick; the worker on every poll.
-- Concurrent callers skip the targets another one is working on. Returns
-- the jobs it enqueued.
create or replace function util.maintain_embeddings()
returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
  slice int := util._setting('sweep_slice_rows')::int;
  t record;
  enqueued bigint := 0;
  queued bigint;
  retired int;
begin
  -- 1. Definitions: one catalog lookup per target.
  for t in
    select x.id, x.shadow_of from util.embedding_targets x
     where x.retired_at is null
       and x.content_definition is distinct from util._content_definition(util._content_function_of(x))
     for update skip locked
  loop
    update util.embedding_targets x
       set content_definition = util._content_definition(util._content_function_of(x)),
           content_changed_at = now()
     where x.id = t.id;
    enqueued := enqueued + util._start_sweep(t.id);
  end loop;

  -- 2. Sweeps, while the queue is short (rows, counted over the first slice-size messages only).
  for t in
    select x.id from util.embedding_targets x
     where x.sweep_started_at is not null and x.retired_at is null
     order by x.sweep_started_at
     for update skip locked
  loop
    select coalesce(sum(util._job_rows(q.message)), 0) into queued
      from (select x.message from pgmq.q_embedding_jobs x limit slice) q;
    exit when queued >= slice;
    enqueued := enqueued + util._sweep_step(t.id, slice);
  end loop;

  -- 3. Finished model changes (NO KEY UPDATE: see util.cancel_reembed).
  for t in
    select x.shadow_of as live_id from util.embedding_targets x
     where x.shadow_of is not null and x.sweep_started_at is null
     for no key update skip locked
  loop
    if exists (select from util.embedding_targets x where x.id = t.live_id and x.destination is not null) then
      perform util._switch_chunks(t.live_id);
    else
      perform util._switch_model(t.live_id);
    end if;
  end loop;

  -- 4. Retired targets' fingerprints, then the targets.
  for t in select x.id from util.embedding_targets x where x.retired_at is not null for update skip locked loop
    delete from util.embedding_fingerprints f
     where f.ctid = any (array(select g.ctid from util.embedding_fingerprints g
                                where g.target_id = t.id limit 50000));
    get diagnostics retired = row_count;
    if retired < 50000 then
      delete from util.embedding_targets x where x.id = t.id;
    end if;
  end loop;
  return enqueued;
end
$$;
