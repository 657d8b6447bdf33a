-- Supabase Vault 0.3.1 as plain SQL: the local stack's stand-in for the
-- supabase_vault extension, which has no Debian package. The table, the
-- view and the two public functions have upstream's names, columns,
-- argument names, types and defaults, so migrations and seeds run unchanged
-- on Supabase.
--
-- A development tool only: the secret is stored base64-encoded, NOT
-- encrypted (upstream encrypts it with libsodium). Never put a production
-- secret into a local database.

\echo Use "CREATE EXTENSION supabase_vault" to load this file. \quit

-- public: the stored secrets (upstream keeps `secret` as ciphertext in base64).
create table vault.secrets (
  id uuid primary key default gen_random_uuid(),
  name text,
  description text not null default '',
  secret text not null,
  key_id uuid,
  nonce bytea,
  created_at timestamptz not null default current_timestamp,
  updated_at timestamptz not null default current_timestamp
);
create unique index secrets_name_idx on vault.secrets using btree (name) where name is not null;
comment on table vault.secrets is 'Secrets of the local development Vault shim (base64, not encrypted).';

-- internal: the shim's stand-ins for upstream's encrypt and decrypt steps.
create function vault._encode_secret(plain text)
returns text
language sql
immutable
set search_path = ''
as $$ select pg_catalog.encode(pg_catalog.convert_to(plain, 'utf8'), 'base64') $$;

create function vault._decode_secret(stored text)
returns text
language sql
immutable
set search_path = ''
as $$ select pg_catalog.convert_from(pg_catalog.decode(stored, 'base64'), 'utf8') $$;

-- public: the secrets with their plain value in decrypted_secret, as upstream.
create view vault.decrypted_secrets as
select s.id,
       s.name,
       s.description,
       s.secret,
       vault._decode_secret(s.secret) as decrypted_secret,
       s.key_id,
       s.nonce,
       s.created_at,
       s.updated_at
  from vault.secrets s;

-- public: stores a secret and returns its id; a second secret with the same
-- name fails on the unique index, as upstream.
create function vault.create_secret(
  new_secret text,               -- the value to keep
  new_name text = null,          -- optional unique name to look it up by
  new_description text = '',
  new_key_id uuid = null         -- unused, as upstream
)
returns uuid
language plpgsql
security definer
set search_path = ''
as $$
declare
  new_id uuid;
begin
  insert into vault.secrets (secret, name, description)
  values (vault._encode_secret(new_secret), new_name, coalesce(new_description, ''))
  returning id into new_id;
  return new_id;
end
$$;

-- public: changes a secret's value, name or description (null keeps it).
create function vault.update_secret(
  secret_id uuid,
  new_secret text = null,
  new_name text = null,
  new_description text = null,
  new_key_id uuid = null         -- unused, as upstream
)
returns void
language plpgsql
security definer
set search_path = ''
as $$
begin
  update vault.secrets s
     set secret = coalesce(vault._encode_secret(new_secret), s.secret),
         name = coalesce(new_name, s.name),
         description = coalesce(new_description, s.description),
         updated_at = now()
   where s.id = secret_id;
end
$$;

-- As upstream: only the owner (postgres) reaches secrets; nobody else by default.
revoke all on vault.secrets, vault.decrypted_secrets from public;
revoke all on function vault.create_secret(text, text, text, uuid),
  vault.update_secret(uuid, text, text, text, uuid),
  vault._encode_secret(text), vault._decode_secret(text) from public;
