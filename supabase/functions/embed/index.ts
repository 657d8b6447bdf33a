// The `embed` edge function: receives batches of embedding jobs from
// util.process_embeddings (via pg_net) and applies them with the shared core.
// Runs under the Supabase edge runtime, the local stack, or `deno run -A`.
import { surviveDatabaseDisconnects } from "../_shared/postgres_guard.ts";
import { createEmbedHandler } from "./handler.ts";

const shutdown = new AbortController();
// The edge runtime signals shutdown with `beforeunload`: pending jobs are
// handed back to the queue instead of being lost.
globalThis.addEventListener("beforeunload", () => shutdown.abort());
// A database restart must not take the instance down with it.
surviveDatabaseDisconnects((line) => console.log(line));

const handler = createEmbedHandler({
  env: (name) => Deno.env.get(name),
  shutdown: shutdown.signal,
});

Deno.serve((req) => handler.fetch(req));
