-- autoembed schema 90: who may use what. The pipeline runs as the owner of
-- these objects (the migration role); application roles reach it only
-- through the security-definer triggers. service_role (the Supabase
-- dashboard, server code, the worker's role when it is not the owner) may
-- run the operator commands and read status, errors and settings. Run last:
-- the revokes cover every object the files before created.

-- internal: takes back every privilege on `object` from PUBLIC and from
-- every role but its owner, for an object the pipeline has just created:
-- what the default privileges of its schema gave it (on Supabase, ALL on
-- the tables, sequences and functions of public to anon, authenticated and
-- service_role: TRUNCATE, TRIGGER and REFERENCES too, which row-level
-- security does not cover), and PUBLIC's EXECUTE on a new function. The
-- caller then grants exactly what the object is for (I16).
create or replace function util._revoke_inherited(
  kind text,  -- 'table' (any relation: table, view, sequence) or 'function'
  object oid  -- its regclass or regprocedure
)
returns void
language plpgsql
set search_path = ''
as $$
declare
  object_sql text;
  grantee text;
begin
  object_sql := case kind when 'table' then 'table ' || object::regclass::text
                          when 'function' then 'function ' || object::regprocedure::text end;
  if object_sql is null then
    raise exception 'autoembed: cannot revoke the privileges of a "%"', kind
      using errcode = 'AE003', hint = 'kind is table or function.';
  end if;
  for grantee in
    select distinct case when a.grantee = 0 then 'public' else pg_catalog.quote_ident(r.rolname) end
      from (select c.relacl as acl, c.relowner as owner, 'r'::"char" as acl_kind
              from pg_catalog.pg_class c where kind = 'table' and c.oid = object
            union all
            select p.proacl, p.proowner, 'f'::"char"
              from pg_catalog.pg_proc p where kind = 'function' and p.oid = object) o
      -- No ACL yet means the built-in defaults: PUBLIC may execute a function.
      cross join lateral pg_catalog.aclexplode(coalesce(o.acl, pg_catalog.acldefault(o.acl_kind, o.owner))) a
      left join pg_catalog.pg_roles r on r.oid = a.grantee
     where a.grantee <> o.owner
  loop
    execute pg_catalog.format('revoke all on %s from %s', object_sql, grantee);
  end loop;
end
$$;

revoke all on schema util from public;
grant usage on schema util to service_role;

revoke all on all tables in schema util from public, anon, authenticated;
revoke all on all functions in schema util from public, anon, authenticated;
revoke all on all sequences in schema util from public, anon, authenticated;

grant select on util.embedding_status, util.embedding_errors, util.settings, util.embedding_models,
  util.embedding_target_events, util.embedding_usage
  to service_role;
grant select on util.provider_budgets, util.provider_rate_limits to service_role;
grant select on util.embedding_batches to service_role;
grant execute on function
  util.process_embeddings(int, int, int),
  util.maintain_embeddings(),
  util.reembed(regclass, name, text, int, text),
  util.cancel_batches(regclass, name),
  util.refresh_embeddings(regclass, name),
  util.cancel_reembed(regclass, name),
  util.retry_failed(regclass),
  util._embedding_status(),
  util._batch_figures(),
  util._capture_figures(),
  util.embedding_status_exact(),
  util.set_chunking(regclass, int, int, text, regclass),
  util.match_chunks(regclass, extensions.halfvec, int, float)
  to service_role;
grant execute on function util.set_provider_limits(text, int, bigint, text) to service_role;

-- The queue's own privileges are the jobs module's (16_jobs.sql).

-- pg_net grants its tables and functions to PUBLIC upstream; its request
-- queue holds the embed function's bearer secret (in the Authorization
-- header) until the request is sent, and its responses the function's
-- answers. So PUBLIC, anon and authenticated lose them where this role may
-- revoke them (it owns pg_net locally). On hosted Supabase the platform owns
-- pg_net and decides; there this step changes nothing and says so.
do $$
begin
  if not exists (select from pg_catalog.pg_namespace n
                  where n.nspname = 'net' and pg_catalog.pg_has_role(n.nspowner, 'USAGE')) then
    raise notice 'autoembed: pg_net privileges left as its owner set them'
      using hint = 'Who may read net.http_request_queue (it holds the embed bearer secret) is the platform''s decision here.';
    return;
  end if;
  revoke all on all tables in schema net from public, anon, authenticated;
  revoke all on all sequences in schema net from public, anon, authenticated;
  revoke all on all functions in schema net from public, anon, authenticated;
exception when insufficient_privilege then
  raise notice 'autoembed: pg_net privileges left as they are (%)', sqlerrm
    using hint = 'The platform owns pg_net here; its grants decide who may read net.http_request_queue.';
end
$$;

-- Search (80_search): util.match, util.match_hybrid, util.match_chunked, the
-- one search under them (util._match) and its filter check
-- util._match_filter_conditions are security invoker and
-- read only the system catalog and the tables they are given, so they
-- run with the caller's privileges and row-level security. App roles may
-- call them (the search function calls them as the caller's role); the rest
-- of util stays closed to them.
grant usage on schema util to anon, authenticated;
-- service_role first, in a statement of its own: the revoke above keeps its
-- grant, so a second run lists the roles in the same order as the first.
grant execute on function
  util.match(regclass, extensions.vector, int, float8, jsonb, name),
  util.match_hybrid(regclass, extensions.vector, text, regprocedure, int, float8, jsonb, name,
                    regconfig, float8, float8, int),
  util.match_chunked(regclass, regclass, extensions.vector, text, int, float8, jsonb, regconfig,
                     float8, float8, int),
  util._match(regclass, regclass, name, regprocedure, extensions.vector, text, int, float8, jsonb,
              regconfig, float8, float8, int),
  util._match_filter_conditions(regclass, jsonb, name[])
  to service_role;
grant execute on function
  util.match(regclass, extensions.vector, int, float8, jsonb, name),
  util.match_hybrid(regclass, extensions.vector, text, regprocedure, int, float8, jsonb, name,
                    regconfig, float8, float8, int),
  util.match_chunked(regclass, regclass, extensions.vector, text, int, float8, jsonb, regconfig,
                     float8, float8, int),
  util._match(regclass, regclass, name, regprocedure, extensions.vector, text, int, float8, jsonb,
              regconfig, float8, float8, int),
  util._match_filter_conditions(regclass, jsonb, name[])
  to anon, authenticated;
