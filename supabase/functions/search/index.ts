// The `search` edge function: search an attached table by text, as the
// caller (their JWT's role and claims, so RLS applies), with the query
// embedded by the table's own model. Runs under the Supabase edge runtime,
// the local stack, or `deno run -A`.
import { surviveDatabaseDisconnects } from "../_shared/postgres_guard.ts";
import { createSearchHandler } from "./handler.ts";

// A database restart must not take the instance down with it.
surviveDatabaseDisconnects((line) => console.log(line));

const handler = createSearchHandler({ env: (name) => Deno.env.get(name) });

Deno.serve((req) => handler.fetch(req));
