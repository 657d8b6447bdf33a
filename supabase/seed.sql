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

-- Long documents are attached as a chunked target: each article's markdown
-- is split at its headings into chunks of at most 128 tokens, kept with their
-- embeddings in public.article_sections, which enable_embeddings creates
-- (RLS on, a policy showing the chunks of the articles a role can see).
create table public.articles (
  id bigint primary key generated always as identity,
  title text not null,
  body text not null
);

create function public.article_text(a public.articles)
returns text
language sql
immutable
set search_path = ''
as $$
  select '# ' || a.title || E'\n\n' || a.body;
$$;

select util.enable_embeddings('public.articles', 'article_text',
  destination => 'public.article_sections', splitter => 'markdown',
  chunk_size => 128, chunk_overlap => 16);

-- Search over the sections for supabase.rpc: the best section of each
-- matching article. Security invoker, so RLS decides what a caller finds.
create function public.match_article_sections(
  query_embedding halfvec(1536),
  match_threshold float,
  match_count int
)
returns table (article_id bigint, title text, section text, similarity float)
language sql
stable
security invoker
set search_path = public, extensions
as $$
  select a.id, a.title, best.chunk, best.similarity
    from (select distinct on (n.source_id) n.source_id, n.chunk, n.similarity
            from (select s.source_id, s.chunk, 1 - (s.embedding <=> query_embedding) as similarity
                    from public.article_sections s
                   order by s.embedding <=> query_embedding
                   limit least(match_count, 200) * 8) n
           order by n.source_id, n.similarity desc) best
    join public.articles a on a.id = best.source_id
   where best.similarity >= match_threshold
   order by best.similarity desc
   limit least(match_count, 200);
$$;

insert into public.articles (title, body) values
  ('Operating the pipeline', $md$
## Installing

Apply the migrations with supabase db push, deploy the embed function and set the OPENAI_API_KEY secret. The pipeline lives in the util schema and keeps its queue in pgmq.

## Attaching a table

Call util.enable_embeddings with the table and a content function returning the text to embed. Triggers enqueue a job for every insert and for every update that changes that text; a backfill enqueues the existing rows.

## Watching it work

Query util.embedding_status for queue depth, missing and stale rows, and the last error of every attached table. Failed attempts are rows of util.embedding_errors; dead-lettered jobs stay in pgmq.a_embedding_jobs until util.retry_failed puts them back.

## Rotating secrets

To rotate the bearer secret of the embed function, create the new Vault secret embed_secret, set EMBED_SECRET on the function to the same value and redeploy; calls in flight with the old secret fail once and are retried.
$md$),
  ('Search and ranking', $md$
## Vector indexes

HNSW indexes with halfvec_cosine_ops answer nearest-neighbour queries in milliseconds; raise hnsw.ef_search when recall matters more than latency.

## Hybrid search

Combine full-text search (tsvector, websearch_to_tsquery) with vector similarity through reciprocal rank fusion, so exact keywords and meaning both count.

## Chunking long documents

Long articles are split into sections so that a question matches the paragraph that answers it, not the average of a whole document. Each section keeps its heading path.
$md$),
  ('Costs and limits', $md$
## Provider costs

Embedding calls are paid per input token. The pipeline skips text it has embedded before, batches inputs, and re-embeds only the sections of an article whose text changed.

## Rate limits

A 429 response with Retry-After delays the job by at least that long; other jobs keep flowing. After max_attempts a job is dead-lettered with its last error.

## Storage

A halfvec of 1536 dimensions takes about 3 kB. The pipeline's own bookkeeping stays under a tenth of the embeddings it tracks.
$md$);
