-- Seed for local development, written by `autoembed init`: `supabase start`
-- and `supabase db reset` run it after supabase/migrations. Every example
-- below is inside a /* ... */ comment: delete the two comment lines around the
-- ones you want. On a hosted project, run the same statements in the SQL
-- editor (or put the secrets in [db.vault] of config.toml, as the autoembed
-- README shows).

-- 1. Where pg_net reaches the functions, and the bearer secret the embed
--    function checks, both kept in Vault. The address below is the local
--    stack's gateway as the database sees it; on a hosted project it is
--    https://<project-ref>.supabase.co. The secret is any long random string:
--    give the function the same value as EMBED_SECRET (locally in
--    supabase/functions/.env, hosted with `supabase secrets set`), beside
--    OPENAI_API_KEY.
/*
select vault.create_secret('http://api.supabase.internal:8000', 'project_url');
select vault.create_secret('replace-me-with-a-long-random-string', 'embed_secret');
*/

-- 2. Attach a table: a halfvec column of the model's dimensions, an HNSW
--    index for search, a content function (the text that represents a row),
--    and one call that creates the triggers and enqueues the existing rows.
--    The model is util.settings default_model (text-embedding-3-small, 1536
--    dimensions); without a key, model => 'local-hash-v1' embeds offline
--    (lexical, not semantic).
/*
create table public.documents (
  id bigint primary key generated always as identity,
  title text not null,
  body text not null,
  embedding halfvec(1536)
);

create index on public.documents using hnsw (embedding halfvec_cosine_ops);

create function public.document_text(doc public.documents)
returns text
language sql
immutable
set search_path = ''
as $$
  select '# ' || doc.title || E'\n\n' || doc.body;
$$;

select util.enable_embeddings('public.documents', 'document_text');

insert into public.documents (title, body) values
  ('Postgres triggers', 'A trigger runs a function when rows are inserted, updated or deleted.'),
  ('Vector search', 'pgvector stores embeddings and finds nearest neighbours with HNSW indexes.');
*/
