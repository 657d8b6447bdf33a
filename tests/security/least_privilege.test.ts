// Least privilege (I16): every object the pipeline creates, in util, in pgmq
// for its queue and in users' schemas (side tables of chunks, their twins
// during a model change, shadow columns, generated trigger functions), holds
// for each role exactly what an explicit decision below says. An object with
// no decision fails the test: that is how a new function, table or sequence
// gets its grants decided, here and in supabase/schemas/90_privileges.sql.
import assert from "node:assert/strict";
import { type Sql, withTestDb } from "../../devtools/db.ts";
import { createDocuments } from "../../devtools/pipeline.ts";
import { createArticles, createArticlesTable } from "../_support/chunks.ts";

/** The roles whose privileges are decided: PUBLIC, Supabase's API roles, the login role behind them, pgmq's reader. */
const ROLES = ["public", "anon", "authenticated", "service_role", "authenticator", "pg_monitor"];
/** The owner of every object: the role that applies the migrations and attaches tables. */
const OWNER = "postgres";

type Role = (typeof ROLES)[number];

interface Decision {
  /** Why these roles hold these privileges. */
  why: string;
  /** What each role may do (privileges as Postgres names them, sorted); a role not named may do nothing. */
  grants: Partial<Record<Role, string>>;
}

const OWNER_ONLY: Decision = {
  why:
    "internal: the pipeline runs as the owner; app roles reach it only through the security definer triggers",
  grants: {},
};
const SERVICE_READS: Decision = {
  why: "diagnosis: service_role reads status, errors, settings and the model registry",
  grants: { service_role: "SELECT" },
};
const SERVICE_RUNS: Decision = {
  why: "operator commands service_role may run (attaching tables stays with the owner)",
  grants: { service_role: "EXECUTE" },
};
const SEARCH: Decision = {
  why: "search runs as the caller (security invoker, RLS applies): every API role may call it",
  grants: { anon: "EXECUTE", authenticated: "EXECUTE", service_role: "EXECUTE" },
};
const APP_READS: Decision = {
  why:
    "search reads it as the caller, under its RLS policy: SELECT for the roles that may select " +
    "the source, nothing else (no TRUNCATE, TRIGGER, REFERENCES or writes)",
  grants: { anon: "SELECT", authenticated: "SELECT", service_role: "SELECT" },
};
const QUEUE_TABLE: Decision = {
  why:
    "pgmq's own grants (as Supabase Queues): service_role works the queue, pg_monitor reads it; " +
    "app roles lose theirs (16_jobs.sql)",
  grants: { pg_monitor: "SELECT", service_role: "DELETE,INSERT,SELECT,UPDATE" },
};
const QUEUE_SEQUENCE: Decision = {
  why: "pgmq's own grants on the message ids; app roles lose theirs (16_jobs.sql)",
  grants: { pg_monitor: "SELECT", service_role: "SELECT,USAGE" },
};

/** Functions of util only the owner may run (internal, the triggers, and what attaches tables). */
const OWNER_FUNCTIONS = [
  "util._forget_jobs(text,text,text)",
  "util._rename_jobs(text,text,text,text)",
  "util._trigger_names(name)",
  "util._drop_triggers(regclass,name)",
  "util._store_forget_sql(util.embedding_targets,text)",
  "util._store_truncate(util.embedding_targets)",
  "util._store_missing(util.embedding_targets)",
  "util._target_broken_reason(util.embedding_targets)",
  "util._begin_sweep(integer,text)",
  "util._maintain_sweep(integer,integer)",
  "util._retire_target(integer,text,text)",
  "util._follow_renames(text)",
  "util._check_targets(text)",
  "util._check_target_at_commit()",
  "util._former_targets(jsonb)",
  "util._on_sql_drop()",
  "util._on_alter()",
  "util._backoff_seconds(integer,integer,integer,integer)",
  "util._blank_text_pattern()",
  "util._resolve_content_function(regclass,text)",
  "util._check_chunk_settings(integer,integer,text)",
  "util._check_model_name(text)",
  "util._check_source_table(regclass)",
  "util._chunked_hash(text,text)",
  "util._chunking_key(util.embedding_targets)",
  "util._budget_limits(util.provider_budgets)",
  "util._budget_reserve(text,text,text,integer,integer,text,integer)",
  "util._budget_settle(text,text,text,text,integer,integer,boolean,integer,jsonb)",
  "util._budget_slot(double precision,double precision,double precision,double precision,double precision,double precision)",
  "util._circuit_gate(integer)",
  "util._content_definition(regprocedure)",
  "util._content_function_of(util.embedding_targets)",
  "util._content_hash(text)",
  "util._create_chunk_table(regclass,name,name,integer)",
  "util._create_queue_function(integer)",
  "util._default_dimensions(text)",
  "util._drop_jobs(text,text,text)",
  "util._drop_queue_function(regclass,name)",
  "util._drop_trigger(regclass,name)",
  "util._embedding_request_done(bigint)",
  "util._enqueue_sql(text,text)",
  "util._fingerprint_key(util.embedding_targets)",
  "util._grant_chunk_reads(regclass,regclass)",
  "util._invalid_keys(integer,jsonb)",
  "util._job_base(integer)",
  "util._job_rows(jsonb)",
  "util._kick_embeddings()",
  "util._largest_input_tokens()",
  "util._live_target(regclass,name)",
  "util._lock_model_change(regclass,name)",
  "util._model_known(text)",
  "util._model_registry_key(text)",
  "util._notify_jobs()",
  "util._primary_key(regclass)",
  "util._provider_of(text)",
  "util._queue_counts(text,text,text)",
  "util._queue_function_name(regclass,name)",
  "util._queued_rows(integer)",
  "util._read_jobs(integer,integer,jsonb)",
  "util._record_target(regclass,text,name,text,integer)",
  "util._register_chunked_target(regclass,text,text,integer,integer,text,text,integer)",
  "util._register_target(regclass,text,name,text,integer)",
  "util._release_ended_leases()",
  "util._requeue_jobs(bigint[],integer,boolean)",
  "util._revoke_inherited(text,oid)",
  "util._set_chunking(integer,integer,integer,text)",
  "util._setting(text)",
  "util._settle_jobs(bigint[],jsonb,jsonb)",
  "util._shadow_chunk_name(integer)",
  "util._shadow_chunk_table(integer,text,integer)",
  "util._start_sweep(integer,text)",
  "util._store_chunks(util.embedding_targets)",
  "util._store_create_shadow(util.embedding_targets,text,integer)",
  "util._store_detach(util.embedding_targets,boolean)",
  "util._store_drop_shadow(util.embedding_targets,util.embedding_targets)",
  "util._store_has_vector(util.embedding_targets,text,text)",
  "util._store_label(util.embedding_targets)",
  "util._store_register(regclass,text,name,text,integer,boolean,text,integer,integer,text)",
  "util._store_relations(util.embedding_targets,util.embedding_targets)",
  "util._store_shadow_behind(util.embedding_targets,util.embedding_targets)",
  "util._store_swap(util.embedding_targets,util.embedding_targets)",
  "util._store_twin_plan(util.embedding_targets,util.embedding_targets)",
  "util._store_sweep_order(util.embedding_targets)",
  "util._store_vectors(util.embedding_targets)",
  "util._sweep_step(integer,integer)",
  "util._switch_model(integer)",
  "util._target_for_trigger(regclass,text,name)",
  "util._try_content(text,anyelement)",
  "util._twin_chunk_plan(util.embedding_targets,util.embedding_targets)",
  "util._twin_column_plan(util.embedding_targets,util.embedding_targets)",
  "util._twin_create_sql(boolean,name,regclass,text,boolean)",
  "util._twin_name(integer,name)",
  "util._twin_build_lock()",
  "util._twin_builds_running()",
  "util._twin_index_builds()",
  "util._twin_indexes_due()",
  "util._begin_twin_index_builds()",
  "util._end_twin_index_builds()",
  "util._twin_index_failed(integer,text,text)",
  "util._request_maintenance(text)",
  "util._twin_request_failed(util.embedding_targets,util.embedding_targets)",
  "util.clear_column()",
  "util.disable_embeddings(regclass,name,boolean)",
  "util.enable_embeddings(regclass,text,name,text,integer,boolean,boolean,text,integer,integer,text,text,text)",
  "util.invoke_edge_function(text,jsonb,integer,jsonb)",
  "util.project_url()",
  "util.queue_embeddings()",
  "util._count_fingerprints()",
  "util._embedded_counts()",
  "util._fold_counts()",
  "util._freshness_bounds()",
  "util._freshness_figures()",
  "util._freshness_quantile(bigint[],double precision)",
  "util._job_ages(bigint[])",
  "util._lock_counts()",
  "util._prune_service_levels()",
  "util._queue_figures()",
  "util._record_freshness(bigint[])",
  "util._record_usage(jsonb)",
  "util._settle_batch(bigint[],jsonb,jsonb,jsonb)",
  "util._table_rows(regclass)",
  "util._budget_tokens_per_minute(text)",
  "util._resolve_lane(util.embedding_targets,text)",
  "util._check_lane(text)",
  "util._stage_batch_inputs(integer,jsonb)",
  "util._release_parked(integer)",
  "util._claim_due_batches(integer,integer,boolean)",
  "util._batches_due()",
  "util._take_batch_inputs(bigint,integer,bigint,bigint)",
  "util._restage(bigint,text[],integer,integer)",
  "util._staging_batch(integer,integer,integer)",
  "util._batch_enqueued_tokens(text,text,text)",
  "util._finish_batch(bigint,text,text,integer,integer,text,text)",
  "util._batch_unsupported(bigint,text)",
  "util._prune_batches()",
  "util._capture_publication()",
  "util._check_capture(regclass,name)",
  "util._capture_publish(regclass)",
  "util._capture_unpublish(regclass)",
  "util._capture_slot_exists()",
  "util._truncated(util.embedding_targets)",
  "util._capture_targets()",
  "util._capture_begun()",
  "util._capture_changes(jsonb,name,pg_lsn,timestamp with time zone)",
  // Drops a replication slot: its owner's (and a replication role's) decision alone.
  "util.drop_capture(boolean)",
];

/** Every object and its decision; labels as pipelineObjects() names them. */
const EXPECTED = new Map<string, Decision>([
  ["schema util", {
    why: "app roles need USAGE to call the search functions; nothing in util is theirs otherwise",
    grants: { anon: "USAGE", authenticated: "USAGE", service_role: "USAGE" },
  }],
  ...[
    "table util.embedding_targets",
    "table util.embedding_fingerprints",
    "table util.embedding_requests",
    "table util.provider_circuits",
    "table util._pending_target_checks",
    "table util.chunk_set_drafts",
    "table util.chunk_set_draft_chunks",
    "table util.embedding_counts",
    "table util.embedding_count_deltas",
    "table util.embedding_freshness",
    "table util.embedding_freshness_totals",
    "table util.embedding_usage_daily",
    "table util.embedding_batch_inputs",
    "table util.maintenance_requests",
    "table util.capture_position",
    "view util._target_config",
    "sequence util.embedding_targets_id_seq",
    "sequence util.embedding_errors_id_seq",
    "sequence util.embedding_requests_id_seq",
    "sequence util.embedding_kick_clock",
    "sequence util.embedding_batches_id_seq",
    "sequence util.embedding_target_events_id_seq",
  ].map((label) => [label, OWNER_ONLY] as const),
  ...[
    "table util.settings",
    "table util.embedding_errors",
    "table util.embedding_models",
    "table util.embedding_target_events",
    "table util.provider_budgets",
    "table util.provider_rate_limits",
    "table util.embedding_batches",
    "view util.embedding_status",
    "view util.embedding_usage",
  ].map((label) => [label, SERVICE_READS] as const),
  ...OWNER_FUNCTIONS.map((fn) => [`function ${fn}`, OWNER_ONLY] as const),
  ...[
    "util._embedding_status()",
    "util._batch_figures()",
    "util._capture_figures()",
    "util.cancel_reembed(regclass,name)",
    "util.embedding_status_exact()",
    "util.maintain_embeddings()",
    "util.match_chunks(regclass,halfvec,integer,double precision)",
    "util.process_embeddings(integer,integer,integer)",
    "util.reembed(regclass,name,text,integer,text)",
    "util.cancel_batches(regclass,name)",
    "util.refresh_embeddings(regclass,name)",
    "util.retry_failed(regclass)",
    "util.set_chunking(regclass,integer,integer,text,regclass)",
    "util.set_provider_limits(text,integer,bigint,text)",
  ].map((fn) => [`function ${fn}`, SERVICE_RUNS] as const),
  ...[
    "util._match(regclass,regclass,name,regprocedure,vector,text,integer,double precision,jsonb,regconfig,double precision,double precision,integer)",
    "util._match_filter_conditions(regclass,jsonb,name[])",
    "util.match(regclass,vector,integer,double precision,jsonb,name)",
    "util.match_chunked(regclass,regclass,vector,text,integer,double precision,jsonb,regconfig,double precision,double precision,integer)",
    "util.match_hybrid(regclass,vector,text,regprocedure,integer,double precision,jsonb,name,regconfig,double precision,double precision,integer)",
  ].map((fn) => [`function ${fn}`, SEARCH] as const),
  ["table pgmq.q_embedding_jobs", QUEUE_TABLE],
  ["table pgmq.a_embedding_jobs", QUEUE_TABLE],
  ["sequence pgmq.q_embedding_jobs_msg_id_seq", QUEUE_SEQUENCE],
  // What the scenario below makes the pipeline create in users' schemas.
  ...[
    "generated trigger function of public.documents (embedding)",
    "generated trigger function of public.articles (article_chunks)",
    "generated trigger function of notebook.notes (note_chunks)",
  ].map((label) => [label, OWNER_ONLY] as const),
  ["chunk table public.article_chunks", APP_READS],
  ["twin of public.article_chunks", APP_READS],
  ["chunk table notebook.note_chunks", {
    why: "SELECT for the roles that may select notebook.notes (authenticated alone), and the " +
      "user's own grant to service_role made after attaching",
    grants: { authenticated: "SELECT", service_role: "SELECT" },
  }],
  ["twin of notebook.note_chunks", {
    why: "the live destination's SELECT grants, the user's own included",
    grants: { authenticated: "SELECT", service_role: "SELECT" },
  }],
  ["shadow column of public.documents (embedding)", {
    why: "no grant of its own: a column of the user's table has what the user grants on the table",
    grants: {},
  }],
]);

/** Schemas that are not users': the system's, the platform's and the pipeline's own. */
const NOT_USERS = [
  "util",
  "pgmq",
  "net",
  "vault",
  "extensions",
  "auth",
  "cron",
  "information_schema",
  "supabase_migrations",
];

/**
 * Runs `fn` where names print schema-qualified (public's too), but for the
 * types of extensions (vector, halfvec), as the labels of EXPECTED have them.
 */
function qualified<T>(sql: Sql, fn: (tx: Sql) => Promise<T>): Promise<T> {
  return sql.begin(async (tx) => {
    await tx`set local search_path = extensions`;
    return await fn(tx as unknown as Sql);
  }) as Promise<T>;
}

/**
 * What users' schemas hold that the privileges concern: relations (not
 * indexes), functions, standalone types, and every column (a column of its
 * own may carry grants).
 */
async function userObjects(sql: Sql): Promise<Map<string, { kind: string; oid: number }>> {
  const rows = await sql<{ key: string; kind: string; oid: number }[]>`
    with user_schemas as (
      select n.oid from pg_catalog.pg_namespace n
       where n.nspname <> all (${NOT_USERS}::text[]) and n.nspname not like 'pg\\_%'
    )
    select 'relation ' || c.oid::regclass::text as key,
           case c.relkind when 'S' then 'sequence' else 'table' end as kind, c.oid::int as oid
      from pg_catalog.pg_class c
     where c.relnamespace in (select oid from user_schemas) and c.relkind not in ('i', 'I', 't', 'c')
    union all
    select 'function ' || p.oid::regprocedure::text, 'function', p.oid::int
      from pg_catalog.pg_proc p where p.pronamespace in (select oid from user_schemas)
    union all
    select 'type ' || t.oid::regtype::text, 'type', t.oid::int
      from pg_catalog.pg_type t
     where t.typnamespace in (select oid from user_schemas) and t.typelem = 0 and t.typrelid = 0
    union all
    select 'column ' || c.oid::regclass::text || '.' || pg_catalog.quote_ident(a.attname), 'column', c.oid::int
      from pg_catalog.pg_class c
      join pg_catalog.pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
     where c.relnamespace in (select oid from user_schemas) and c.relkind in ('r', 'p', 'v', 'm', 'f')`;
  return new Map(rows.map((r) => [r.key, { kind: r.kind, oid: r.oid }]));
}

interface PipelineObject {
  label: string;
  kind: "schema" | "table" | "sequence" | "function" | "type" | "column";
  oid: number;
  /** A column: its name. */
  column?: string;
}

/**
 * Every object of util and of the queue in pgmq, and what appeared in
 * users' schemas since `before`, each labelled for EXPECTED: generated
 * trigger functions, side tables of chunks and their twins, and shadow
 * columns by what they are to the pipeline; anything else as "unclassified".
 */
async function pipelineObjects(
  sql: Sql,
  before: Map<string, unknown>,
): Promise<PipelineObject[]> {
  const generated = new Map(
    (await sql<{ fn: string; label: string }[]>`
      select pg_catalog.format('util.%I()', util._queue_function_name(t.table_oid, t.embedding_column)) as fn,
             pg_catalog.format('generated trigger function of %s (%s)', t.table_oid, t.embedding_column) as label
        from util.embedding_targets t`).map((r) => [`function ${r.fn}`, r.label]),
  );
  const objects: PipelineObject[] = (await sql<PipelineObject[]>`
    select 'schema ' || n.nspname as label, 'schema' as kind, n.oid::int as oid
      from pg_catalog.pg_namespace n where n.nspname = 'util'
    union all
    select case c.relkind when 'S' then 'sequence ' when 'v' then 'view ' when 'm' then 'materialized view '
                          else 'table ' end || c.oid::regclass::text,
           case c.relkind when 'S' then 'sequence' else 'table' end, c.oid::int
      from pg_catalog.pg_class c
     where c.relkind not in ('i', 'I', 't', 'c')
       and (c.relnamespace = 'util'::regnamespace
            or c.relnamespace = 'pgmq'::regnamespace and c.relname like '%embedding\\_jobs%')
    union all
    select 'function ' || p.oid::regprocedure::text, 'function', p.oid::int
      from pg_catalog.pg_proc p where p.pronamespace = 'util'::regnamespace`)
    .map((o) => ({ ...o, label: generated.get(o.label) ?? o.label }));

  const stores = await sql<{ key: string; label: string }[]>`
    select 'relation ' || t.destination::text as key,
           case when t.shadow_of is null then 'chunk table ' || t.destination::text
                else 'twin of ' || l.destination::text end as label
      from util.embedding_targets t
      left join util.embedding_targets l on l.id = t.shadow_of
     where t.store = 'chunks'
    union all
    select 'column ' || t.table_oid::text || '.' || pg_catalog.quote_ident(t.embedding_column),
           pg_catalog.format('shadow column of %s (%s)', t.table_oid, l.embedding_column)
      from util.embedding_targets t
      join util.embedding_targets l on l.id = t.shadow_of
     where t.store = 'column'`;
  const labels = new Map(stores.map((s) => [s.key, s.label]));
  for (const [key, object] of await userObjects(sql)) {
    if (before.has(key)) continue;
    // The columns of a new table come with it; a new column of a user's table is an object of its own.
    if (object.kind === "column" && !before.has(`relation ${key.slice(7, key.lastIndexOf("."))}`)) {
      continue;
    }
    objects.push({
      label: labels.get(key) ?? `unclassified ${key}`,
      kind: object.kind as PipelineObject["kind"],
      oid: object.oid,
      column: object.kind === "column" ? key.slice(key.lastIndexOf(".") + 1) : undefined,
    });
  }
  return objects;
}

/**
 * One line per object: its owner, then each role's privileges (roles with
 * none left out). A column's privileges are its own grants only (what the
 * table grants is the table's decision).
 */
async function privilegeLines(sql: Sql, objects: PipelineObject[]): Promise<Map<string, string>> {
  const rows = await sql<{ label: string; owner: string; role: string; privileges: string }[]>`
    with objects as (
      select * from unnest(${objects.map((o) => o.label)}::text[], ${
    objects.map((o) => o.kind)
  }::text[],
                           ${objects.map((o) => o.oid)}::oid[], ${
    objects.map((o) => o.column ?? "")
  }::text[])
               as o(label, kind, oid, column_name)
    ),
    owners as (
      select o.label, pg_catalog.pg_get_userbyid(coalesce(n.nspowner, c.relowner, p.proowner, t.typowner)) as owner
        from objects o
        left join pg_catalog.pg_namespace n on o.kind = 'schema' and n.oid = o.oid
        left join pg_catalog.pg_class c on o.kind in ('table', 'sequence', 'column') and c.oid = o.oid
        left join pg_catalog.pg_proc p on o.kind = 'function' and p.oid = o.oid
        left join pg_catalog.pg_type t on o.kind = 'type' and t.oid = o.oid
    ),
    wanted (kind, privilege) as (
      values ('schema', 'USAGE'), ('schema', 'CREATE'),
             ('sequence', 'USAGE'), ('sequence', 'SELECT'), ('sequence', 'UPDATE'),
             ('function', 'EXECUTE'), ('type', 'USAGE'),
             ('table', 'SELECT'), ('table', 'INSERT'), ('table', 'UPDATE'), ('table', 'DELETE'),
             ('table', 'TRUNCATE'), ('table', 'REFERENCES'), ('table', 'TRIGGER')
    ),
    column_grants as (
      select o.label, coalesce(r.rolname, 'public') as role, a.privilege_type
        from objects o
        join pg_catalog.pg_attribute x on o.kind = 'column' and x.attrelid = o.oid and x.attname = o.column_name
        cross join lateral pg_catalog.aclexplode(x.attacl) a
        left join pg_catalog.pg_roles r on r.oid = a.grantee
    )
    select o.label, w.owner, r.role,
           coalesce((select pg_catalog.string_agg(g.privilege_type, ',' order by g.privilege_type)
                       from column_grants g where g.label = o.label and g.role = r.role),
                    (select pg_catalog.string_agg(v.privilege, ',' order by v.privilege)
                       from wanted v
                      where v.kind = o.kind
                        and case o.kind
                              when 'schema' then pg_catalog.has_schema_privilege(r.role, o.oid, v.privilege)
                              when 'sequence' then pg_catalog.has_sequence_privilege(r.role, o.oid, v.privilege)
                              when 'function' then pg_catalog.has_function_privilege(r.role, o.oid, v.privilege)
                              when 'type' then pg_catalog.has_type_privilege(r.role, o.oid, v.privilege)
                              when 'table' then pg_catalog.has_table_privilege(r.role, o.oid, v.privilege)
                              else false
                            end)) as privileges
      from objects o
      join owners w on w.label = o.label
      cross join unnest(${ROLES}::text[]) r(role)`;
  const lines = new Map<string, string>();
  for (const label of new Set(rows.map((r) => r.label))) {
    const mine = rows.filter((r) => r.label === label);
    const held = ROLES.flatMap((role) => {
      const privileges = mine.find((r) => r.role === role)?.privileges;
      return privileges ? [`${role} ${privileges}`] : [];
    });
    lines.set(label, [`owner ${mine[0].owner}`, ...held].join("; "));
  }
  return lines;
}

function expectedLine(decision: Decision): string {
  const held = ROLES.flatMap((role) => {
    const privileges = decision.grants[role];
    return privileges ? [`${role} ${privileges}`] : [];
  });
  return [`owner ${OWNER}`, ...held].join("; ");
}

/**
 * The scenario: a whole-row target, a chunked one in public (default
 * privileges as on Supabase) and one in a schema of its own whose source
 * only authenticated may read, each in the middle of a model change.
 * Returns what users' schemas held before the pipeline touched them.
 */
async function attachEverything(sql: Sql): Promise<Map<string, unknown>> {
  await createDocuments(sql, { attach: false });
  await createArticlesTable(sql, true);
  await sql.unsafe(`
    create schema notebook;
    grant usage on schema notebook to authenticated, service_role;
    create table notebook.notes (id uuid primary key default gen_random_uuid(), owner uuid, body text not null);
    create function notebook.note_text(n notebook.notes) returns text language sql immutable as $$ select n.body $$;
    alter table notebook.notes enable row level security;
    create policy own_notes on notebook.notes for select to authenticated using (owner = auth.uid());
    grant select on notebook.notes to authenticated;
  `).simple();
  const before = await qualified(sql, userObjects);
  await sql`select util.enable_embeddings('public.documents', 'documents_input')`;
  await createArticles(sql, undefined, { createTable: false });
  await sql`
    select util.enable_embeddings('notebook.notes', 'notebook.note_text',
      destination => 'notebook.note_chunks', dimensions => 16)`;
  // The user's own choice on a side table: the twin of a model change keeps it.
  await sql`grant select on notebook.note_chunks to service_role`;
  await sql`select util.reembed('public.documents', model => 'text-embedding-3-large', dimensions => 32)`;
  await sql`select util.reembed('public.articles', 'article_chunks', 'text-embedding-3-large', 32)`;
  await sql`select util.reembed('notebook.notes', 'note_chunks', 'text-embedding-3-large', 32)`;
  return before;
}

Deno.test("every object the pipeline creates grants each role exactly what its decision says", async () => {
  await withTestDb(async (sql) => {
    // The premise: the local stack's default privileges are Supabase's, so a
    // table created in public gives the app roles everything, RLS or not.
    await sql`create table public.premise (id int primary key)`;
    const [premise] = await sql`
      select pg_catalog.has_table_privilege('anon', 'public.premise', 'TRUNCATE, TRIGGER, REFERENCES') as anon`;
    assert.equal(
      premise.anon,
      true,
      "public's default privileges give anon TRUNCATE, TRIGGER, REFERENCES",
    );
    await sql`drop table public.premise`;

    const before = await attachEverything(sql);
    const objects = await qualified(sql, (tx) => pipelineObjects(tx, before));
    const labels = objects.map((o) => o.label);
    for (
      const label of [
        "twin of public.article_chunks",
        "twin of notebook.note_chunks",
        "shadow column of public.documents (embedding)",
        "generated trigger function of public.documents (embedding)",
      ]
    ) assert.ok(labels.includes(label), `the scenario made ${label}: ${labels.join(", ")}`);

    const undecided = labels.filter((label) => !EXPECTED.has(label));
    assert.deepEqual(
      undecided,
      [],
      "objects with no decision: add each to EXPECTED in tests/security/least_privilege.test.ts, " +
        "and its grants to supabase/schemas/90_privileges.sql (or, for what the pipeline creates " +
        "in users' schemas, where it creates it)",
    );
    const missing = [...EXPECTED.keys()].filter((label) => !labels.includes(label));
    assert.deepEqual(missing, [], "decisions for objects that no longer exist: remove them");

    const actual = await privilegeLines(sql, objects);
    const wrong = objects.flatMap((o) => {
      const decision = EXPECTED.get(o.label)!;
      const want = expectedLine(decision);
      const got = actual.get(o.label);
      return got === want
        ? []
        : [`${o.label}:\n    has  ${got}\n    want ${want} (${decision.why})`];
    });
    assert.deepEqual(wrong, [], "privileges that differ from their decision");

    // No role beyond those decided holds anything on these objects (a role
    // of the pipeline's own, say, would need its decisions first).
    const grantees = await sql<{ grantee: string }[]>`
      select distinct r.rolname as grantee
        from unnest(${objects.map((o) => o.oid)}::oid[], ${
      objects.map((o) => o.kind)
    }::text[]) o(oid, kind)
        left join pg_catalog.pg_namespace n on o.kind = 'schema' and n.oid = o.oid
        left join pg_catalog.pg_class c on o.kind in ('table', 'sequence') and c.oid = o.oid
        left join pg_catalog.pg_proc p on o.kind = 'function' and p.oid = o.oid
        cross join lateral pg_catalog.aclexplode(coalesce(n.nspacl, c.relacl, p.proacl)) a
        join pg_catalog.pg_roles r on r.oid = a.grantee
       where r.rolname <> all (${[...ROLES, OWNER]}::text[])
       order by 1`;
    assert.deepEqual(grantees.map((g) => g.grantee), [], "roles with no decisions hold privileges");
  });
});

/** Runs `statement` as `role` in a transaction that is rolled back; returns the SQLSTATE, or "ok". */
async function as(sql: Sql, role: string, statement: string): Promise<string> {
  const rollback = new Error("rollback");
  try {
    await sql.begin(async (tx) => {
      await tx.unsafe(`set local role ${role}`);
      await tx.unsafe(statement).simple();
      throw rollback;
    });
  } catch (err) {
    if (err === rollback) return "ok";
    return (err as { code?: string }).code ?? String(err);
  }
  return "ok";
}

/** What an app role must not do to a side table of chunks, RLS or not. */
function abuses(table: string): string[] {
  return [
    `truncate ${table}`,
    `create function public.sneak() returns trigger language plpgsql as $$ begin return null; end $$;
     create trigger sneak after insert on ${table} for each statement execute function public.sneak()`,
    `create table public.pinned (a bigint, b int, foreign key (a, b) references ${table})`,
    `insert into ${table} (source_id, chunk_seq, chunk, chunk_hash) values (1, 99, 'x', '\\x00')`,
    `update ${table} set chunk = 'x'`,
    `delete from ${table}`,
  ];
}

Deno.test("app roles may only read chunks and twins, under RLS: no truncate, trigger, reference or write", async () => {
  await withTestDb(async (sql) => {
    await createArticles(sql, undefined, { rls: true });
    await sql`insert into articles (id, title, body, public) values (1, 'open', 'open text', true),
                                                                  (2, 'closed', 'closed text', false)`;
    await sql`select util.reembed('public.articles', 'article_chunks', 'text-embedding-3-large', 32)`;
    const [{ twin }] = await sql`
      select destination::text as twin from util.embedding_targets where shadow_of is not null`;
    // Chunks of both articles in both tables, written as the pipeline would (the owner).
    for (const table of ["article_chunks", twin]) {
      await sql.unsafe(`
        insert into ${table} (source_id, chunk_seq, chunk, chunk_hash)
        select id, 0, body, util._content_hash(body) from articles`);
    }
    // The premise: the same statements are refused for the role, not broken
    // (the owner may run each), and anon may truncate and trigger a table of
    // public made with the default privileges alone.
    await sql`create table public.premise (source_id bigint, chunk_seq int, chunk text, chunk_hash bytea,
                                           primary key (source_id, chunk_seq))`;
    for (const statement of abuses("public.premise")) {
      assert.equal(await as(sql, "anon", statement), "ok", `the premise: anon may ${statement}`);
    }
    for (const table of ["article_chunks", twin]) {
      for (const statement of abuses(table)) {
        assert.equal(await as(sql, "postgres", statement), "ok", `the owner may ${statement}`);
        for (const role of ["anon", "authenticated", "authenticator"]) {
          assert.equal(await as(sql, role, statement), "42501", `${role}: ${statement}`);
        }
      }
      const seen = await sql.begin(async (tx) => {
        await tx`set local role anon`;
        return await tx.unsafe(`select source_id::int as id from ${table} order by 1`);
      });
      assert.deepEqual(
        seen.map((r) => r.id),
        [1],
        `anon reads ${table}, the public article's chunks only`,
      );
    }
  });
});
