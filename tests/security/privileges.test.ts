// Who may do what. anon and authenticated (the roles of app users) reach no
// secret, queue, pipeline table or pipeline function, and cannot make the
// database send HTTP requests; their ordinary writes still enqueue through
// the security definer triggers. service_role can use what it is granted.
// Catalog-wide checks cover functions and tables added later automatically.
import assert from "node:assert/strict";
import { type Sql, withTestDb } from "../../devtools/db.ts";
import { createDocuments } from "../../devtools/pipeline.ts";

/** Runs `statement` as `role` in a transaction that is rolled back; returns the SQLSTATE, or "ok". */
async function as(sql: Sql, role: string, statement: string): Promise<string> {
  const rollback = new Error("rollback");
  try {
    await sql.begin(async (tx) => {
      await tx.unsafe(`set local role ${role}`);
      await tx.unsafe(statement);
      throw rollback;
    });
  } catch (err) {
    if (err === rollback) return "ok";
    return (err as { code?: string }).code ?? String(err);
  }
  return "ok";
}

/** Something to steal or break behind each statement: a secret, a queued and a dead job, an error. */
async function populate(sql: Sql): Promise<void> {
  await createDocuments(sql);
  // Two statements, two messages (one statement's rows share a packed message).
  await sql`insert into documents (title, content) values ('a', 'b')`;
  await sql`insert into documents (title, content) values ('c', 'd')`;
  await sql`select vault.create_secret('http://127.0.0.1:1', 'project_url')`;
  await sql`select vault.create_secret('privileges-test-secret', 'embed_secret')`;
  await sql`select pgmq.archive('embedding_jobs', 1::bigint)`;
  await sql`insert into util.embedding_errors (job_id, retryable, error) values (1, false, 'x')`;
  await sql`select net.http_get('http://127.0.0.1:1/')`;
}

const FORBIDDEN = [
  // secrets
  "select * from vault.decrypted_secrets",
  "select * from vault.secrets",
  "select vault.create_secret('x', 'stolen')",
  "select util.project_url()",
  // the queue
  "select * from pgmq.q_embedding_jobs",
  "select * from pgmq.a_embedding_jobs",
  "delete from pgmq.q_embedding_jobs",
  "select pgmq.send('embedding_jobs', '{}')",
  "select * from pgmq.read('embedding_jobs', 30, 10)",
  "select pgmq.delete('embedding_jobs', 2::bigint)",
  "select pgmq.archive('embedding_jobs', 2::bigint)",
  "select pgmq.purge_queue('embedding_jobs')",
  // the pipeline's tables and views
  "select * from util.embedding_errors",
  "select * from util.embedding_fingerprints",
  "select * from util.settings",
  "update util.settings set value = '1'",
  "select * from util.embedding_targets",
  "select * from util.embedding_requests",
  "select * from util.embedding_status",
  "select * from util._target_config",
  // the pipeline's functions
  "select util.process_embeddings()",
  "select * from util._settle_jobs('{}', '[]')",
  "select util.invoke_edge_function('embed', '[]')",
  "select util.enable_embeddings('documents', 'documents_input')",
  "select util.disable_embeddings('documents')",
  "select util.reembed('documents')",
  "select util.retry_failed()",
  "select util.maintain_embeddings()",
  "select util.refresh_embeddings('documents')",
  "select util.cancel_reembed('documents')",
  "select util._switch_model(1)",
  "select * from util._try_content('pg_catalog.version', 1)",
  "select util._embedding_request_done(1)",
  // HTTP from the database, and what pg_net holds (its queue carries the bearer secret)
  "select net.http_post('http://127.0.0.1:1/', '{}'::jsonb)",
  "select net.http_get('http://127.0.0.1:1/')",
  "select * from net.http_request_queue",
  "select * from net._http_response",
  "delete from net.http_request_queue",
];

Deno.test("anon and authenticated reach no secret, queue, pipeline table or function, nor pg_net", async () => {
  await withTestDb(async (sql) => {
    await populate(sql);
    const allowed: string[] = [];
    for (const role of ["anon", "authenticated"]) {
      for (const statement of FORBIDDEN) {
        const outcome = await as(sql, role, statement);
        if (outcome !== "42501") allowed.push(`${role}: ${statement} -> ${outcome}`);
      }
    }
    assert.deepEqual(allowed, [], "each fails with insufficient_privilege");
    // The same statements work for the owner (so they are refused for the role, not broken).
    assert.equal(await as(sql, "postgres", "select * from vault.decrypted_secrets"), "ok");
    assert.equal(await as(sql, "postgres", "select * from net.http_request_queue"), "ok");
  });
});

Deno.test("service_role can run, diagnose and re-queue the pipeline, but not attach tables or call its internals", async () => {
  await withTestDb(async (sql) => {
    await populate(sql);
    const granted = [
      "select util.process_embeddings()",
      "select util.reembed('documents')",
      "select util.retry_failed()",
      "select util.retry_failed('documents')",
      "select util.maintain_embeddings()",
      "select util.refresh_embeddings('documents')",
      "select util.cancel_reembed('documents')",
      "select * from util.embedding_status",
      "select * from util.embedding_errors",
      "select * from util.settings",
      "select * from pgmq.read('embedding_jobs', 0, 10)",
    ];
    const failing: string[] = [];
    for (const statement of granted) {
      const outcome = await as(sql, "service_role", statement);
      if (outcome !== "ok") failing.push(`${statement} -> ${outcome}`);
    }
    assert.deepEqual(failing, [], "service_role uses what it is granted");
    for (
      const statement of [
        "select util.enable_embeddings('documents', 'documents_input')",
        "select util.disable_embeddings('documents')",
        "select * from util._settle_jobs('{}', '[]')",
        "select util.invoke_edge_function('embed', '[]')",
        "select * from util._try_content('pg_catalog.version', 1)",
        "select util._sweep_step(1, 10)",
        "select util._switch_model(1)",
        "update util.settings set value = '1'",
      ]
    ) {
      assert.equal(await as(sql, "service_role", statement), "42501", statement);
    }
    // And it really ran: process_embeddings as service_role queued a request to the function.
    await sql.begin(async (tx) => {
      await tx`set local role service_role`;
      const [{ requests }] = await tx`select util.process_embeddings() as requests`;
      assert.equal(requests, 1);
    });
    const [{ n }] = await sql`
      select count(*)::int as n from net.http_request_queue where url like '%/functions/v1/embed%'`;
    assert.equal(n, 1);
  });
});

Deno.test("app roles' writes through RLS still enqueue: guide-style row triggers (first use registers) and clear_column", async () => {
  await withTestDb(async (sql) => {
    await createDocuments(sql, { attach: false });
    await sql.unsafe(`
      create trigger embed_on_insert after insert on documents
        for each row execute function util.queue_embeddings('documents_input', 'embedding');
      create trigger embed_on_update after update of title, content on documents
        for each row execute function util.queue_embeddings('documents_input', 'embedding');
      create trigger clear_on_update before update of title, content on documents
        for each row execute function util.clear_column('embedding');
      alter table documents enable row level security;
      create policy app_inserts on documents for insert to anon, authenticated with check (true);
      create policy app_reads on documents for select to anon, authenticated using (true);
      create policy app_updates on documents for update to authenticated using (true);
      grant select, insert, update on documents to anon, authenticated;
    `).simple();
    await sql.begin(async (tx) => {
      await tx`set local role anon`;
      await tx`insert into documents (title, content) values ('by anon', 'text')`;
    });
    const [target] = await sql`select count(*)::int as n from util.embedding_targets`;
    assert.equal(target.n, 1, "anon's insert registered the trigger's target");
    await sql`update documents set embedding = array_fill(0.25, array[16])::halfvec(16)`;
    await sql.begin(async (tx) => {
      await tx`set local role authenticated`;
      await tx`insert into documents (title, content) values ('by authenticated', 'text')`;
      await tx`update documents set content = 'edited' where title = 'by anon'`;
    });
    const jobs = await sql`
      select message ->> 'id' as id, message ->> 'table' as t from pgmq.q_embedding_jobs order by msg_id`;
    const ids = (await sql`select id::text from documents order by id`).map((r) => r.id);
    assert.deepEqual(jobs.map((j) => j.id), [ids[0], ids[1], ids[0]]);
    const [{ cleared }] =
      await sql`select embedding is null as cleared from documents where title = 'by anon'`;
    assert.equal(cleared, true, "clear_column ran for authenticated's update");
    // The roles still cannot see what their writes enqueued.
    assert.equal(await as(sql, "authenticated", "select * from pgmq.q_embedding_jobs"), "42501");
  });
});

const SEARCH_FUNCTIONS = [
  "util.match(regclass,vector,integer,double precision,jsonb,name)",
  "util.match_hybrid(regclass,vector,text,regprocedure,integer,double precision,jsonb,name,regconfig,double precision,double precision,integer)",
  "util.match_chunked(regclass,regclass,vector,text,integer,double precision,jsonb,regconfig,double precision,double precision,integer)",
  // The one search under them, and its filter check (it reads only the catalog).
  "util._match(regclass,regclass,name,regprocedure,vector,text,integer,double precision,jsonb,regconfig,double precision,double precision,integer)",
  "util._match_filter_conditions(regclass,jsonb,name[])",
];

Deno.test("catalog: every util function pins search_path; none but the search functions (security invoker) is executable by PUBLIC, anon or authenticated", async () => {
  await withTestDb(async (sql) => {
    const functions = await sql`
      select p.oid::regprocedure::text as fn, p.prosecdef as definer,
             coalesce(exists (select from unnest(p.proconfig) c where c like 'search_path=%'), false) as pinned,
             has_function_privilege('anon', p.oid, 'execute') as anon,
             has_function_privilege('authenticated', p.oid, 'execute') as authenticated,
             coalesce(p.proacl::text like '%{=X%' or p.proacl::text like '%,=X%', p.proacl is null) as public
        from pg_proc p
       where p.pronamespace = 'util'::regnamespace
       order by 1`;
    assert.ok(functions.length >= 20, `found ${functions.length} util functions`);
    assert.ok(functions.some((f) => f.definer), "the triggers are security definer");
    const unpinnedDefiners = functions.filter((f) => f.definer && !f.pinned).map((f) => f.fn);
    assert.deepEqual(unpinnedDefiners, [], "security definer functions without set search_path");
    const unpinned = functions.filter((f) => !f.pinned).map((f) => f.fn);
    assert.deepEqual(
      unpinned,
      [],
      "functions without set search_path (STYLE: pinned on every one)",
    );
    // The search functions are the one exception: security invoker, reading
    // only the catalog and the caller's own table, so RLS applies (80_search).
    const search = functions.filter((f) => SEARCH_FUNCTIONS.includes(f.fn));
    assert.deepEqual(
      search.map((f) =>
        `${f.fn}: ${f.definer ? "definer" : "invoker"} ${f.anon && f.authenticated}`
      ).sort(),
      SEARCH_FUNCTIONS.map((fn) => `${fn}: invoker true`).sort(),
      "the search functions run as the caller, and app roles may call them",
    );
    const open = functions.filter((f) =>
      !SEARCH_FUNCTIONS.includes(f.fn) && (f.anon || f.authenticated || f.public)
    ).map((f) =>
      `${f.fn}${f.definer ? " (security definer)" : ""}: ${
        ["anon", "authenticated", "public"].filter((r) => f[r]).join(", ")
      }`
    );
    assert.deepEqual(open, [], "functions app roles may execute");

    const relations = await sql`
      select c.oid::regclass::text as rel
        from pg_class c
       where c.relnamespace in ('util'::regnamespace, 'pgmq'::regnamespace, 'vault'::regnamespace)
         and c.relkind in ('r', 'v', 'm', 'p')
         and (c.relnamespace <> 'pgmq'::regnamespace or c.relname like '%embedding_jobs')
         and (has_table_privilege('anon', c.oid, 'select, insert, update, delete, truncate')
              or has_table_privilege('authenticated', c.oid, 'select, insert, update, delete, truncate'))
       order by 1`;
    assert.deepEqual(relations.map((r) => r.rel), [], "tables and views app roles may use");
    const [schema] = await sql`
      select has_schema_privilege('anon', 'util', 'usage') as anon,
             has_schema_privilege('authenticated', 'util', 'usage') as authenticated`;
    // Usage on util lets app roles reach the search functions; nothing else in it is theirs.
    assert.deepEqual({ ...schema }, { anon: true, authenticated: true });
  });
});
