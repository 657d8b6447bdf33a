// What a database holds of autoembed, read from the catalogs as one entry per
// object ("function util.reembed(regclass, name, text, integer)" -> its
// definition, settings, owner and grants), so two databases built different
// ways can be compared object by object and any difference named.
import type { Sql } from "../../devtools/db.ts";

export type Catalog = Map<string, Record<string, unknown>>;

/** Reads every object of schema `util` and what the pipeline sets elsewhere (queue, pg_net grants, cron). */
export async function readCatalog(sql: Sql): Promise<Catalog> {
  const catalog: Catalog = new Map();
  const put = (key: string, value: Record<string, unknown>) => {
    if (catalog.has(key)) throw new Error(`catalog: ${key} read twice`);
    catalog.set(key, value);
  };

  for (
    const r of await sql`
    select n.nspname, pg_catalog.pg_get_userbyid(n.nspowner) as owner, n.nspacl::text[] as acl
      from pg_catalog.pg_namespace n where n.nspname = 'util'`
  ) put(`schema ${r.nspname}`, { owner: r.owner, acl: r.acl });

  for (
    const r of await sql`
    select e.extname, e.extnamespace::regnamespace::text as schema, e.extversion
      from pg_catalog.pg_extension e`
  ) put(`extension ${r.extname}`, { schema: r.schema, version: r.extversion });

  // Functions of util: the whole definition as Postgres prints it (header,
  // volatility, security, SET search_path, body), plus what it leaves out.
  for (
    const r of await sql`
    select p.oid::regprocedure::text as signature,
           pg_catalog.pg_get_functiondef(p.oid) as definition,
           pg_catalog.pg_get_function_arguments(p.oid) as arguments,
           pg_catalog.pg_get_function_result(p.oid) as result,
           p.prokind, p.prosecdef as security_definer, p.provolatile as volatility,
           p.proparallel as parallel, p.proisstrict as strict, p.proleakproof as leakproof,
           p.procost::float8 as cost, p.prorows::float8 as rows, p.proconfig as config,
           pg_catalog.pg_get_userbyid(p.proowner) as owner, p.proacl::text[] as acl,
           pg_catalog.obj_description(p.oid, 'pg_proc') as comment
      from pg_catalog.pg_proc p
     where p.pronamespace = 'util'::regnamespace`
  ) {
    const { signature, ...rest } = r;
    put(`function ${signature}`, rest);
  }

  // Relations of util (tables, views, sequences, indexes), with columns,
  // constraints, indexes, triggers and policies of each table.
  for (
    const r of await sql`
    select c.oid, c.relname, c.relkind, c.relpersistence, c.relrowsecurity, c.relforcerowsecurity,
           c.reloptions, pg_catalog.pg_get_userbyid(c.relowner) as owner, c.relacl::text[] as acl,
           pg_catalog.obj_description(c.oid, 'pg_class') as comment,
           case when c.relkind in ('v', 'm') then pg_catalog.pg_get_viewdef(c.oid) end as view_definition,
           case when c.relkind = 'i' then pg_catalog.pg_get_indexdef(c.oid) end as index_definition
      from pg_catalog.pg_class c
     where c.relnamespace = 'util'::regnamespace`
  ) {
    const { oid, relname, relkind, ...rest } = r;
    const details: Record<string, unknown> = { relkind, ...rest };
    // One line per column, in table order: `name type not null default ... identity ...`.
    details.columns = (await sql`
      select concat_ws(' ', a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
               case when a.attnotnull then 'not null' end,
               'default ' || pg_catalog.pg_get_expr(d.adbin, d.adrelid),
               case a.attidentity when 'a' then 'identity always' when 'd' then 'identity by default' end,
               case a.attgenerated when 's' then 'generated stored' end,
               'acl ' || a.attacl::text,
               'comment ' || pg_catalog.quote_literal(pg_catalog.col_description(a.attrelid, a.attnum)))
               as column
        from pg_catalog.pg_attribute a
        left join pg_catalog.pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
       where a.attrelid = ${oid} and a.attnum > 0 and not a.attisdropped
       order by a.attnum`).map((c) => c.column);
    if (relkind === "r" || relkind === "p") {
      details.constraints = Object.fromEntries(
        (await sql`
          select k.conname, pg_catalog.pg_get_constraintdef(k.oid) as def
            from pg_catalog.pg_constraint k where k.conrelid = ${oid} order by k.conname`).map((
          k,
        ) => [k.conname, k.def]),
      );
      details.triggers = Object.fromEntries(
        (await sql`
          select t.tgname, pg_catalog.pg_get_triggerdef(t.oid) as def
            from pg_catalog.pg_trigger t where t.tgrelid = ${oid} and not t.tgisinternal
           order by t.tgname`)
          .map((t) => [t.tgname, t.def]),
      );
      details.policies = Object.fromEntries(
        (await sql`
          select p.polname, p.polcmd, p.polpermissive, p.polroles::regrole[]::text[] as roles,
                 pg_catalog.pg_get_expr(p.polqual, p.polrelid) as using_expr,
                 pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) as check_expr
            from pg_catalog.pg_policy p where p.polrelid = ${oid} order by p.polname`)
          .map(({ polname, ...p }) => [polname, { ...p }]),
      );
    }
    if (relkind === "S") {
      const [s] = await sql`
        select pg_catalog.format_type(s.seqtypid, null) as type, s.seqstart::text as start,
               s.seqincrement::text as increment, s.seqmax::text as max, s.seqcycle as cycle,
               (select d.refobjid::regclass::text || '.' || a.attname
                  from pg_catalog.pg_depend d
                  join pg_catalog.pg_attribute a on a.attrelid = d.refobjid and a.attnum = d.refobjsubid
                 where d.classid = 'pg_class'::regclass and d.objid = s.seqrelid
                   and d.refclassid = 'pg_class'::regclass and d.deptype in ('a', 'i')) as owned_by
          from pg_catalog.pg_sequence s where s.seqrelid = ${oid}`;
      details.sequence = { ...s };
    }
    const kind =
      ({ r: "table", p: "table", v: "view", m: "materialized view", S: "sequence" } as Record<
        string,
        string
      >)[relkind] ?? (relkind === "i" ? "index" : `relation(${relkind})`);
    put(`${kind} util.${relname}`, details);
  }

  // Rows the pipeline ships: the settings (values and descriptions).
  for (const r of await sql`select s.name, s.value, s.description from util.settings s`) {
    put(`setting ${r.name}`, { value: r.value, description: r.description });
  }

  // The model registry's rows (generated from providers/registry.ts).
  for (const r of await sql`select m.* from util.embedding_models m`) {
    put(`model ${r.model}`, { ...r });
  }

  // Outside util: the queue's tables and their grants, the grants the
  // pipeline takes from pg_net, and the cron schedule where pg_cron lives.
  for (
    const r of await sql`
    select n.nspname || '.' || c.relname as name, c.relkind, c.relacl::text[] as acl
      from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where (n.nspname = 'pgmq' and c.relname like '%embedding_jobs%')
        or (n.nspname = 'net' and c.relkind in ('r', 'v', 'S'))`
  ) put(`relation ${r.name}`, { relkind: r.relkind, acl: r.acl });
  for (
    const r of await sql`
    select p.oid::regprocedure::text as signature, p.proacl::text[] as acl
      from pg_catalog.pg_proc p where p.pronamespace = 'net'::regnamespace`
  ) put(`function ${r.signature}`, { acl: r.acl });
  // The event triggers whose function is the pipeline's.
  for (
    const r of await sql`
    select e.evtname, e.evtevent, e.evttags, e.evtenabled, e.evtfoid::regproc::text as function,
           pg_catalog.pg_get_userbyid(e.evtowner) as owner
      from pg_catalog.pg_event_trigger e
      join pg_catalog.pg_proc p on p.oid = e.evtfoid
     where p.pronamespace = 'util'::regnamespace`
  ) {
    const { evtname, ...rest } = r;
    put(`event trigger ${evtname}`, rest);
  }
  const [cron] = await sql`select pg_catalog.to_regclass('cron.job') is not null as present`;
  if (cron.present) {
    for (const r of await sql.unsafe(`select jobname, schedule, command from cron.job`)) {
      put(`cron job ${r.jobname}`, { schedule: r.schedule, command: r.command });
    }
  }
  return catalog;
}

/** One line per difference between two catalogs, naming the object and what differs. */
export function compareCatalogs(
  expected: Catalog,
  actual: Catalog,
  names: { expected: string; actual: string },
): string[] {
  const drift: string[] = [];
  const keys = [...new Set([...expected.keys(), ...actual.keys()])].sort();
  for (const key of keys) {
    const a = expected.get(key);
    const b = actual.get(key);
    if (!b) drift.push(`${key}: only in ${names.expected}`);
    else if (!a) drift.push(`${key}: only in ${names.actual}`);
    else {
      for (const field of [...new Set([...Object.keys(a), ...Object.keys(b)])].sort()) {
        const x = asText(a[field]);
        const y = asText(b[field]);
        if (x !== y) drift.push(`${key}: ${field} differs\n${firstDifference(x, y, names)}`);
      }
    }
  }
  return drift;
}

/** Strings as they are (definitions compare line by line), anything else as JSON, short on one line. */
function asText(value: unknown): string {
  if (typeof value === "string") return value;
  const compact = JSON.stringify(value ?? null);
  return compact.length <= 160 ? compact : JSON.stringify(value ?? null, null, 1);
}

/** The first line where two texts part, with its line number, for a readable failure. */
export function firstDifference(
  x: string,
  y: string,
  names: { expected: string; actual: string },
): string {
  const xs = x.split("\n");
  const ys = y.split("\n");
  let i = 0;
  while (i < xs.length && i < ys.length && xs[i] === ys[i]) i++;
  return `    line ${i + 1}:\n    ${names.expected}: ${xs[i] ?? "(end)"}\n    ${names.actual}: ${
    ys[i] ?? "(end)"
  }`;
}
