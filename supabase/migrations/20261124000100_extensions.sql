-- autoembed 1/3: the extensions the pipeline stands on, placed as a Supabase
-- project has them. Applies unchanged to a hosted project and to the local
-- stack (where pgmq, pg_net and Vault are API-compatible shims).

create schema if not exists extensions;

create extension if not exists vector with schema extensions;
create extension if not exists hstore with schema extensions;
-- pg_net keeps its objects in schema `net` whatever schema it is created in.
create extension if not exists pg_net with schema extensions;
create extension if not exists pgmq;

-- pg_cron can only be created in the database named by cron.database_name
-- (`postgres` on Supabase). Elsewhere (a test database, a plain Postgres
-- without pg_cron) the pipeline still works: schedule util.process_embeddings
-- yourself or run the pull worker.
do $$
begin
  create extension if not exists pg_cron;
exception when others then
  raise notice 'pg_cron not created in database %: %', current_database(), sqlerrm
    using hint = 'The pipeline works without it: run the worker, or call util.process_embeddings() on a schedule.';
end
$$;
