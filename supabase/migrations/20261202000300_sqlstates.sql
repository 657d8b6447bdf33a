-- autoembed: every error the pipeline's SQL raises carries a SQLSTATE of its
-- own (class AE), so callers branch on codes, never on message text:
--   AE001  an index on the embedding column a model change cannot carry over
--   AE002  not attached: no such target (table and embedding column)
--   AE003  a registration or argument mistake (message, detail and hint say which)
--   AE004  configuration missing (a Vault secret)
-- 20261202000100 gave them to the functions it declared; this migration
-- re-declares the remaining ones, unchanged but for their codes.

-- internal: a setting's value; raises (AE003) when the name is unknown.
create or replace function util._setting(setting_name text)
returns text
language plpgsql
stable
set search_path = ''
as $$
declare
  result text;
begin
  select s.value into result from util.settings s where s.name = setting_name;
  if result is null then
    raise exception 'unknown autoembed setting "%"', setting_name
      using errcode = 'AE003', hint = 'See select * from util.settings.';
  end if;
  return result;
end
$$;

-- public: the project's URL, from Vault (secret `project_url`); raises AE004 without it.
create or replace function util.project_url()
returns text
language plpgsql
security definer
set search_path = ''
as $$
declare
  secret_value text;
begin
  select s.decrypted_secret into secret_value from vault.decrypted_secrets s where s.name = 'project_url';
  if secret_value is null then
    raise exception 'autoembed: Vault has no secret named project_url'
      using errcode = 'AE004', hint = 'select vault.create_secret(''https://<project-ref>.supabase.co'', ''project_url'');';
  end if;
  return secret_value;
end
$$;

-- public: POSTs `body` to edge function `name` through pg_net, with the
-- bearer secret `embed_secret` from Vault (AE004 without it). Returns pg_net's request id.
create or replace function util.invoke_edge_function(
  name text,
  body jsonb,
  timeout_milliseconds int default 5 * 60 * 1000,
  params jsonb default '{}'            -- query string parameters
)
returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
  secret_value text;
begin
  select s.decrypted_secret into secret_value from vault.decrypted_secrets s where s.name = 'embed_secret';
  if secret_value is null then
    raise exception 'autoembed: Vault has no secret named embed_secret'
      using errcode = 'AE004', hint = 'Create one equal to the function''s EMBED_SECRET: select vault.create_secret(''<secret>'', ''embed_secret'');';
  end if;
  return net.http_post(
    url => util.project_url() || '/functions/v1/' || name,
    body => body,
    params => params,
    headers => jsonb_build_object(
      'Content-Type', 'application/json',
      'Authorization', 'Bearer ' || secret_value),
    timeout_milliseconds => timeout_milliseconds);
end
$$;

-- public trigger (BEFORE UPDATE, row level): sets the embedding column to
-- NULL when, and only when, the text to embed changed. Arguments: embedding
-- column name, and optionally the content function. Misuse raises AE003.
create or replace function util.clear_column()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  clear_column name = tg_argv[0];
  content_function text = case when tg_nargs > 1 then tg_argv[1] end;
  call_fn text;
  changed boolean;
begin
  if tg_level <> 'ROW' or tg_when <> 'BEFORE' or tg_op <> 'UPDATE' then
    raise exception 'autoembed: util.clear_column must be a BEFORE UPDATE ... FOR EACH ROW trigger'
      using errcode = 'AE003';
  end if;
  if tg_nargs < 1 or clear_column = '' then
    raise exception 'autoembed: util.clear_column needs the embedding column as its argument'
      using errcode = 'AE003', hint = 'execute function util.clear_column(''embedding'')';
  end if;
  if content_function is not null then
    select format('%I.%I', t.content_function_schema, t.content_function_name) into call_fn
      from util._target_for_trigger(tg_relid, content_function, clear_column) t;
  else
    select format('%I.%I', t.content_function_schema, t.content_function_name) into call_fn
      from util.embedding_targets t
     where t.table_oid = tg_relid and t.embedding_column = clear_column;
  end if;
  if call_fn is not null then
    begin
      execute format('select %1$s($1) is distinct from %1$s($2)', call_fn) into changed using old, new;
    exception when others then
      -- No text can be built for the row: its embedding cannot be current,
      -- and the user's update must not fail because of it.
      changed := true;
    end;
  else
    if not pg_catalog.to_jsonb(new) ? clear_column::text then
      raise exception 'autoembed: util.clear_column(%): % has no such column', clear_column, tg_relid::regclass
        using errcode = 'AE003', hint = 'Name the embedding column, e.g. util.clear_column(''embedding'').';
    end if;
    changed := (pg_catalog.to_jsonb(new) - clear_column::text) is distinct from (pg_catalog.to_jsonb(old) - clear_column::text);
  end if;
  if changed then
    new := pg_catalog.jsonb_populate_record(new, jsonb_build_object(clear_column, null));
  end if;
  return new;
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
  invalid text[] := '{}';
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

revoke all on all functions in schema util from public, anon, authenticated;
