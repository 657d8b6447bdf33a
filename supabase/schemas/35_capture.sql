-- autoembed schema 35: capture. The second detector: a target attached with
-- capture => 'logical' has no trigger on its table; the table is in the
-- publication `autoembed`, and the pull worker follows the write-ahead log
-- through one logical replication slot (setting capture_slot, pgoutput;
-- cli/capture.ts). The worker turns each committed transaction's inserts,
-- updates, deletes and truncates into the same work the triggers do, through
-- util._capture_changes: jobs in the queue (16_jobs' util._enqueue_sql), the
-- vectors of deleted rows forgotten, a truncate emptying the store. It
-- confirms a position to the slot only once the jobs of every change up to
-- it are committed in the queue, from where the job owner's attempts and
-- recovery take them (at least once; a repeat costs nothing, I3). The user's
-- write path pays nothing beyond the WAL it writes anyway.
--
-- The pipeline's own writes of a row's embedding are updates of that table
-- too: the write statement emits a transactional logical message (prefix
-- autoembed.applying, sql/write.ts), and the worker drops the changes of a
-- transaction that carries it, as the triggers return at once on
-- autoembed.applying.
--
-- Switching a target between triggers and logical happens in one
-- transaction (util.enable_embeddings): the table joins the publication as
-- its triggers go, or the other way round, so every change is seen by
-- exactly one of them (or both). Changes made while no slot exists are seen
-- by neither: the worker that creates the slot sweeps every logical target
-- (util._capture_begun), which enqueues the rows whose vectors are not of
-- their current text.

-------------------------------------------------------------------------------
-- Where the worker stands, per slot: the position it last confirmed and
-- when (util.embedding_status reads the lag from it and pg_replication_slots).
-------------------------------------------------------------------------------

create table if not exists util.capture_position (
  slot_name name primary key,
  -- the end of the last transaction whose jobs are committed (the worker
  -- confirms it to the slot right after)
  confirmed_lsn pg_lsn not null,
  -- when that transaction committed, and when its jobs were
  committed_at timestamptz,
  confirmed_at timestamptz not null default now()
);

-- internal: the name of the publication logical targets' tables are in.
create or replace function util._capture_publication()
returns name
language sql
immutable
set search_path = ''
as $$ select 'autoembed'::name $$;

-- internal: raises (AE003) unless `target_table` can be captured from the
-- write-ahead log: wal_level logical, and a replica identity whose key has
-- the primary key column `pk_column` (the worker re-reads rows by it, and a
-- delete carries only the identity's columns).
create or replace function util._check_capture(target_table regclass, pk_column name)
returns void
language plpgsql
stable
set search_path = ''
as $$
declare
  identity "char";
  in_key boolean;
begin
  if pg_catalog.current_setting('wal_level') <> 'logical' then
    raise exception 'autoembed: capture => ''logical'' needs wal_level = logical (this server has %)',
      pg_catalog.current_setting('wal_level')
      using errcode = 'AE003',
            detail = 'Logical capture follows the write-ahead log through a replication slot.',
            hint = 'alter system set wal_level = logical; then restart the server (Supabase projects have it already), or attach with capture => ''triggers''.';
  end if;
  select c.relreplident into identity from pg_catalog.pg_class c where c.oid = target_table;
  in_key := case identity
    when 'f' then true
    when 'd' then exists (select from pg_catalog.pg_index i
                            join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = any (i.indkey)
                           where i.indrelid = target_table and i.indisprimary and a.attname = pk_column)
    when 'i' then exists (select from pg_catalog.pg_index i
                            join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = any (i.indkey)
                           where i.indrelid = target_table and i.indisreplident and a.attname = pk_column)
    else false end;
  if not in_key then
    raise exception 'autoembed: % has no replica identity the worker can read its key % from', target_table, pk_column
      using errcode = 'AE003',
            detail = pg_catalog.format('Its replica identity is %s: a delete would not say which row went.',
                                       case identity when 'n' then 'nothing' when 'i' then 'an index without that column'
                                                     else 'the default, with no primary key' end),
            hint = pg_catalog.format('alter table %s replica identity default; (with a primary key on %I), or attach with capture => ''triggers''.',
                                     target_table, pk_column);
  end if;
end
$$;

-- internal: puts `target_table` in the publication (created at the first
-- logical target: inserts, updates, deletes and truncates, a partitioned
-- table's changes published as its own). Needs CREATE on the database the
-- first time, and ownership of the table, as enable_embeddings does anyway.
create or replace function util._capture_publish(target_table regclass)
returns void
language plpgsql
set search_path = ''
as $$
begin
  if not exists (select from pg_catalog.pg_publication p where p.pubname = util._capture_publication()) then
    execute pg_catalog.format(
      'create publication %I with (publish = ''insert, update, delete, truncate'', publish_via_partition_root = true)',
      util._capture_publication());
  end if;
  if not exists (select from pg_catalog.pg_publication_rel r
                   join pg_catalog.pg_publication p on p.oid = r.prpubid
                  where p.pubname = util._capture_publication() and r.prrelid = target_table) then
    execute pg_catalog.format('alter publication %I add table %s', util._capture_publication(), target_table);
  end if;
end
$$;

-- internal: takes `target_table` out of the publication when no live
-- logical target of it is left.
create or replace function util._capture_unpublish(target_table regclass)
returns void
language plpgsql
set search_path = ''
as $$
begin
  if exists (select from util.embedding_targets t
              where t.table_oid = target_table and t.capture = 'logical' and t.shadow_of is null) then
    return;
  end if;
  if exists (select from pg_catalog.pg_publication_rel r
               join pg_catalog.pg_publication p on p.oid = r.prpubid
              where p.pubname = util._capture_publication() and r.prrelid = target_table) then
    execute pg_catalog.format('alter publication %I drop table %s', util._capture_publication(), target_table);
  end if;
end
$$;

-- internal: whether the slot exists (in this database); a notice for
-- util.enable_embeddings when it does not yet.
create or replace function util._capture_slot_exists()
returns boolean
language sql
stable
set search_path = ''
as $$
  select exists (select from pg_catalog.pg_replication_slots s
                  where s.slot_name = util._setting('capture_slot') and s.database = pg_catalog.current_database())
$$;

-- internal: the work a truncate of target `t`'s table leaves: every row is
-- gone, so are their vectors elsewhere (a chunked target's chunks), their
-- fingerprints, and the target's jobs and dead letters, which could only
-- name rows that are gone. The truncate trigger (30_detect) and logical
-- capture both run it.
create or replace function util._truncated(t util.embedding_targets)
returns void
language plpgsql
set search_path = ''
as $$
declare
  store_target util.embedding_targets;
begin
  for store_target in select * from util.embedding_targets x where x.id = t.id or x.shadow_of = t.id loop
    perform util._store_truncate(store_target);
  end loop;
  delete from util.embedding_fingerprints f
   where f.target_id in (select x.id from util.embedding_targets x where x.id = t.id or x.shadow_of = t.id);
  perform util._forget_jobs(n.nspname, c.relname, t.embedding_column)
     from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    where c.oid = t.table_oid;
end
$$;

-- internal: the tables the worker maps changes to, with the key column it
-- reads: those of live logical targets (logical: whether the worker should
-- follow the slot), and those of the other live targets (a change made
-- while a table was logical may come after it was switched back).
create or replace function util._capture_targets()
returns table (table_oid oid, pk_column name, logical boolean)
language sql
stable
set search_path = ''
as $$
  select t.table_oid::oid, min(t.pk_column::text)::name, bool_or(t.capture = 'logical')
    from util.embedding_targets t
   where t.shadow_of is null and t.retired_at is null
   group by t.table_oid
$$;

-- internal: the worker created the slot: rows changed while none existed
-- were seen by nobody, so every logical target is swept (only rows whose
-- vectors are not of their current text are enqueued). Returns the targets.
create or replace function util._capture_begun()
returns int
language plpgsql
set search_path = ''
as $$
declare
  n int := 0;
  t util.embedding_targets;
begin
  for t in select * from util.embedding_targets x
            where x.capture = 'logical' and x.shadow_of is null and x.retired_at is null loop
    perform util._begin_sweep(t.id);
    n := n + 1;
  end loop;
  return n;
end
$$;

-- internal: applies what the worker decoded from the slot, in log order,
-- in one transaction, and records the position it then confirms. `changes`
-- is an array of {"t": table oid, "op": "upsert" | "forget" | "truncate",
-- "ids": [key as text, ...]}: upsert enqueues a job per row for every live
-- target of the table (the core re-reads the row by its key: a row gone
-- meanwhile finishes quietly, one whose text did not change costs nothing),
-- forget drops the vectors a store keeps elsewhere and the fingerprints of
-- deleted rows (those still gone), truncate is util._truncated. Jobs are
-- those the triggers write (util._enqueue_sql), and listening workers are
-- woken.
-- Returns the rows enqueued.
create or replace function util._capture_changes(changes jsonb, slot_name name, confirmed_lsn pg_lsn,
                                                 committed_at timestamptz)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  change jsonb;
  t util.embedding_targets;
  store_target util.embedding_targets;
  forget_sql text;
  key_type text;
  ids text[];
  gone text[];
  header jsonb;
  enqueued bigint := 0;
  n bigint;
begin
  for change in select * from pg_catalog.jsonb_array_elements(changes) loop
    ids := array(select pg_catalog.jsonb_array_elements_text(coalesce(change -> 'ids', '[]')));
    -- Every live target of the table, whatever its capture now: a change
    -- committed while the table was logical may be flushed after a switch
    -- back to triggers, which never saw it. Only what is safe however late
    -- it comes is done for all of them: a job (the row is read again), and
    -- forgetting rows that are gone now. A truncate is a logical target's
    -- alone; for the others it forgets the rows that are gone.
    for t in select * from util.embedding_targets x
              where x.table_oid = (change ->> 't')::oid and x.shadow_of is null and x.retired_at is null loop
      select pg_catalog.format_type(a.atttypid, a.atttypmod) into key_type
        from pg_catalog.pg_attribute a where a.attrelid = t.table_oid and a.attname = t.pk_column;
      if change ->> 'op' = 'truncate' and t.capture = 'logical' then
        perform util._truncated(t);
        continue;
      end if;
      if change ->> 'op' in ('forget', 'truncate') then
        -- The rows among them that are gone now (deleted and inserted again
        -- is a row to embed, not to forget).
        if change ->> 'op' = 'truncate' then
          ids := array(select f.row_id from util.embedding_fingerprints f
                        where f.target_id in (select x.id from util.embedding_targets x
                                               where x.id = t.id or x.shadow_of = t.id));
        end if;
        execute pg_catalog.format(
          'select array(select x from pg_catalog.unnest($1::text[]) x
                         where not exists (select from %s r where r.%I = x::%s))',
          t.table_oid::regclass, t.pk_column, key_type)
          into gone using ids;
        for store_target in select * from util.embedding_targets x where x.id = t.id or x.shadow_of = t.id loop
          forget_sql := util._store_forget_sql(store_target,
            pg_catalog.format('select x::%s from pg_catalog.unnest($1::text[]) x', key_type));
          if forget_sql is not null then
            execute forget_sql using gone;
          end if;
        end loop;
        delete from util.embedding_fingerprints f
         where f.target_id in (select x.id from util.embedding_targets x where x.id = t.id or x.shadow_of = t.id)
           and f.row_id = any (gone);
      else
        -- The job names the table as it is called now, as a trigger's would.
        select pg_catalog.jsonb_build_object('schema', ns.nspname, 'table', c.relname,
                                             'contentFunction', t.content_function,
                                             'embeddingColumn', t.embedding_column)
          into header
          from pg_catalog.pg_class c join pg_catalog.pg_namespace ns on ns.oid = c.relnamespace
         where c.oid = t.table_oid;
        execute util._enqueue_sql(
          pg_catalog.format('select x::%s as id from pg_catalog.unnest($2::text[]) x', key_type), '$1')
          using header, ids;
        get diagnostics n = row_count;
        enqueued := enqueued + n;
      end if;
    end loop;
  end loop;
  insert into util.capture_position as p (slot_name, confirmed_lsn, committed_at, confirmed_at)
  values (_capture_changes.slot_name, _capture_changes.confirmed_lsn, _capture_changes.committed_at, now())
  on conflict on constraint capture_position_pkey do update
    set confirmed_lsn = excluded.confirmed_lsn, committed_at = excluded.committed_at, confirmed_at = now();
  if enqueued > 0 then
    perform util._notify_jobs();
  end if;
  return enqueued;
end
$$;

-- internal: the slot per live logical target, for util.embedding_status:
-- capture_lag_bytes, the write-ahead log the slot holds beyond its
-- confirmed position; capture_lag_seconds, 0 when it holds none, else how
-- long ago the worker last confirmed (while a slot nobody follows holds
-- WAL, it grows); capture_attached, whether a worker follows it now. Nulls
-- while the slot does not exist. Security definer: the view's readers read
-- pg_replication_slots through it.
create or replace function util._capture_figures()
returns table (schema_name text, table_name text, embedding_column text, capture_slot text,
               capture_lag_bytes bigint, capture_lag_seconds numeric, capture_attached boolean)
language sql
stable
security definer
set search_path = ''
as $$
  with slot as (
    select s.slot_name, s.active,
           pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint as lag_bytes,
           p.confirmed_at
      from pg_catalog.pg_replication_slots s
      left join util.capture_position p on p.slot_name = s.slot_name
     where s.slot_name = util._setting('capture_slot') and s.database = pg_catalog.current_database()
  )
  select n.nspname::text, c.relname::text, t.embedding_column::text, util._setting('capture_slot'),
         s.lag_bytes,
         case when s.slot_name is null then null
              when s.lag_bytes <= 0 then 0
              else pg_catalog.round(extract(epoch from now() - coalesce(s.confirmed_at, t.created_at))::numeric, 1) end,
         s.active
    from util.embedding_targets t
    join pg_catalog.pg_class c on c.oid = t.table_oid
    join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    left join slot s on true
   where t.capture = 'logical' and t.shadow_of is null and t.retired_at is null
$$;

-- public: drops logical capture's replication slot and publication (what
-- `autoembed cdc drop` runs). A slot keeps every byte of write-ahead log
-- its worker has not confirmed, so one nobody follows fills the disk; drop
-- it when logical capture is no longer used. Refuses while logical targets
-- remain (they would miss every change), unless force => true; and while a
-- worker follows the slot, unless force, which ends that worker's
-- replication connection. Returns what it dropped.
create or replace function util.drop_capture(force boolean default false)
returns text[]
language plpgsql
set search_path = ''
as $$
declare
  slot name := util._setting('capture_slot');
  remaining text;
  holder int;
  dropped text[] := array[]::text[];
begin
  select pg_catalog.string_agg(pg_catalog.format('%s (%s)', t.table_oid::regclass, t.embedding_column), ', ')
    into remaining
    from util.embedding_targets t
   where t.capture = 'logical' and t.shadow_of is null and t.retired_at is null;
  if remaining is not null and not force then
    raise exception 'autoembed: logical targets remain: %', remaining
      using errcode = 'AE003',
            detail = 'Without the slot and publication their changes would be seen by nothing.',
            hint = 'Switch them with util.enable_embeddings(..., capture => ''triggers''), or detach them; or pass force => true.';
  end if;
  select s.active_pid into holder from pg_catalog.pg_replication_slots s where s.slot_name = slot;
  if holder is not null then
    if not force then
      raise exception 'autoembed: a worker follows the slot % (pid %)', slot, holder
        using errcode = 'AE003', hint = 'Stop the worker first (or start it with --no-capture), or pass force => true.';
    end if;
    perform pg_catalog.pg_terminate_backend(holder, 5000);
  end if;
  if exists (select from pg_catalog.pg_replication_slots s where s.slot_name = slot) then
    perform pg_catalog.pg_drop_replication_slot(slot);
    dropped := dropped || pg_catalog.format('replication slot %s', slot);
  end if;
  delete from util.capture_position p where p.slot_name = slot;
  if exists (select from pg_catalog.pg_publication p where p.pubname = util._capture_publication()) then
    execute pg_catalog.format('drop publication %I', util._capture_publication());
    dropped := dropped || pg_catalog.format('publication %s', util._capture_publication());
  end if;
  if remaining is not null then
    raise notice 'autoembed: % no longer capture any change', remaining
      using hint = 'Attach them again with capture => ''logical'' (the next worker sweeps them) or ''triggers''.';
  end if;
  return dropped;
end
$$;
