-- autoembed schema 00: the extensions the pipeline stands on, placed as a
-- Supabase project has them. pgmq, pg_net and Vault are real extensions on
-- Supabase and API-compatible shims in the local stack (local/shims/).
-- pg_cron is optional: without it, run the pull worker or call
-- util.process_embeddings() from your own scheduler.

create schema if not exists extensions;

create extension if not exists vector with schema extensions;
create extension if not exists hstore with schema extensions;
-- pg_net keeps its objects in schema `net` whatever schema it is created in.
create extension if not exists pg_net with schema extensions;
create extension if not exists pgmq;

-- pg_cron can only be created in the database named by cron.database_name
-- (`postgres` on Supabase). Elsewhere (a test database, a plain Postgres
-- without pg_cron) the pipeline still works.
do $$
begin
  create extension if not exists pg_cron;
exception when others then
  raise notice 'pg_cron not created in database %: %', current_database(), sqlerrm
    using hint = 'The pipeline works without it: run the worker, or call util.process_embeddings() on a schedule.';
end
$$;
