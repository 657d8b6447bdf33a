-- The naive reference pipeline, as the straightforward guide-style design
-- builds it: a row-level trigger that enqueues one pgmq message per inserted
-- or updated row (whether or not its text changed), a trigger that clears the
-- embedding on every update of the text columns, and its own queue. It is
-- installed on the same bench_docs table as autoembed, in a database where
-- autoembed is not attached. bench/naive/pipeline.ts is its scheduler and
-- embed function.

select pgmq.create('naive_jobs');

create schema naive;

-- One message per row, as the guide's util.queue_embeddings does.
create function naive.queue_embeddings()
returns trigger
language plpgsql
as $$
declare
  content_function text = tg_argv[0];
  embedding_column text = tg_argv[1];
begin
  perform pgmq.send(
    queue_name => 'naive_jobs',
    msg => jsonb_build_object(
      'id', new.id,
      'schema', tg_table_schema,
      'table', tg_table_name,
      'contentFunction', content_function,
      'embeddingColumn', embedding_column
    )
  );
  return null;
end
$$;

-- Clears the embedding on any update of the text columns, as the guide's util.clear_column does.
create function naive.clear_column()
returns trigger
language plpgsql
as $$
declare
  clear_column text := tg_argv[0];
begin
  new := new #= extensions.hstore(clear_column, null);
  return new;
end
$$;

create trigger naive_embed_on_insert
  after insert on public.bench_docs
  for each row execute function naive.queue_embeddings('bench_docs_input', 'embedding');

create trigger naive_embed_on_update
  after update of title, body on public.bench_docs
  for each row execute function naive.queue_embeddings('bench_docs_input', 'embedding');

create trigger naive_clear_on_update
  before update of title, body on public.bench_docs
  for each row execute function naive.clear_column('embedding');
