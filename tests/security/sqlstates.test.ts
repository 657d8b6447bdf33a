// Every error the pipeline's SQL raises carries its own SQLSTATE (class AE),
// so callers branch on codes, never on message text (STYLE.md habit 12).
import assert from "node:assert/strict";
import { PIPELINE_SQLSTATES } from "../../supabase/functions/_shared/db_errors.ts";
import { withTestDb } from "../../devtools/db.ts";
import { createDocuments } from "../../devtools/pipeline.ts";

Deno.test("every raise in a util function names an AE SQLSTATE", async () => {
  await withTestDb(async (sql) => {
    const functions = await sql`
      select p.proname::text as name, p.prosrc as source from pg_proc p
       where p.pronamespace = 'util'::regnamespace and p.prosrc ~* 'raise\\s+exception'`;
    assert.ok(functions.length >= 10, "the premise: util functions that raise");
    const known = new Set<string>(Object.values(PIPELINE_SQLSTATES));
    const without: string[] = [];
    for (const f of functions) {
      // Each raise statement, up to its semicolon.
      for (const raise of f.source.match(/raise\s+exception[^;]*;/gi) ?? []) {
        const code = raise.match(/errcode\s*=\s*'([0-9A-Z]{5})'/)?.[1];
        if (!code || !known.has(code)) without.push(`${f.name}: ${raise.slice(0, 80)}`);
      }
    }
    assert.deepEqual(without, [], "raises without a known AE code");
  });
});

Deno.test("callers can branch on the codes: not attached, a mistake, configuration missing", async () => {
  await withTestDb(async (sql) => {
    await createDocuments(sql, { attach: false });
    const codeOf = async (statement: string) => {
      try {
        await sql.unsafe(statement);
        return "ok";
      } catch (err) {
        return (err as { code?: string }).code;
      }
    };
    assert.equal(await codeOf("select util.reembed('documents')"), PIPELINE_SQLSTATES.notAttached);
    assert.equal(
      await codeOf("select util.enable_embeddings('documents', 'no_such_function')"),
      PIPELINE_SQLSTATES.invalidArgument,
    );
    assert.equal(
      await codeOf("select util.project_url()"),
      PIPELINE_SQLSTATES.configurationMissing,
    );
  });
});
