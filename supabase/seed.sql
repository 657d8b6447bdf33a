-- Local development seed (applied by `npm start` on a fresh local database,
-- like `supabase db reset`). Development values only: never use these
-- secrets on a hosted project.

-- Where pg_net reaches the functions, and the bearer secret the embed
-- function expects (the local stack passes the same value as EMBED_SECRET).
select vault.create_secret('http://127.0.0.1:54321', 'project_url');
select vault.create_secret('autoembed-local-dev-secret', 'embed_secret');

-- No model is chosen here: the local stack sets util.settings default_model
-- before this seed runs, from the configuration it was given (a key in the
-- environment or in supabase/functions/.env: text-embedding-3-small; none:
-- the offline, lexical local-hash-v1), and the demo table below takes it.

create table public.documents (
  id bigint primary key generated always as identity,
  title text not null,
  content text not null,
  embedding halfvec(1536)
);

create index documents_embedding_idx on public.documents using hnsw (embedding halfvec_cosine_ops);

-- The text that represents a document for embedding.
create function public.embedding_input(doc public.documents)
returns text
language sql
immutable
set search_path = ''
as $$
  select '# ' || doc.title || E'\n\n' || doc.content;
$$;

-- Attach the pipeline: triggers, configuration and a backfill in one call.
select util.enable_embeddings('public.documents', 'embedding_input');

-- Search, as in the Supabase guide.
create function public.match_documents(
  query_embedding halfvec(1536),
  match_threshold float,
  match_count int
)
returns setof public.documents
language sql
stable
set search_path = public, extensions
as $$
  select *
    from public.documents d
   where d.embedding <=> query_embedding < 1 - match_threshold
   order by d.embedding <=> query_embedding asc
   limit least(match_count, 200);
$$;

insert into public.documents (title, content) values
  ('Postgres triggers', 'A trigger runs a function when rows are inserted, updated or deleted.'),
  ('Message queues', 'pgmq keeps durable queues inside Postgres with visibility timeouts.'),
  ('Vector search', 'pgvector stores embeddings and finds nearest neighbours with HNSW indexes.'),
  ('Edge functions', 'Supabase edge functions run TypeScript close to users on Deno.'),
  ('Scheduling jobs', 'pg_cron runs SQL on a schedule inside the database.'),
  ('HTTP from SQL', 'pg_net sends asynchronous HTTP requests from SQL and records the responses.'),
  ('Secrets', 'Vault keeps secrets encrypted in the database and decrypts them on read.'),
  ('Embeddings', 'An embedding maps text to a vector so that similar texts lie close together.');
