-- autoembed 3/3: the pg_cron job that starts draining the queue. Every 10
-- seconds where pg_cron accepts second schedules (1.5+, as on Supabase),
-- every minute otherwise (Debian's 1.4). The tick only starts a drain: while
-- there is a backlog, finishing calls start the next ones (see
-- util.process_embeddings), so the tick does not cap the drain rate.
-- Skipped where pg_cron is not installed in this database.
do $$
begin
  if pg_catalog.to_regnamespace('cron') is null then
    raise notice 'pg_cron is not installed in database %: no schedule created', current_database()
      using hint = 'Run the pull worker, or call util.process_embeddings() from your own scheduler.';
    return;
  end if;
  begin
    perform cron.schedule('process-embeddings', '10 seconds', 'select util.process_embeddings()');
  exception when others then
    perform cron.schedule('process-embeddings', '* * * * *', 'select util.process_embeddings()');
  end;
  perform cron.schedule('prune-embedding-cache', '17 3 * * *', 'select util.prune_embedding_cache()');
end
$$;
