// What text is blank (its row has nothing to embed) is decided twice: by the
// processing core (core.ts: `content.trim() === ""`) when it skips a row, and
// by util.embedding_status (util._blank_text_pattern) when it counts the row as
// empty rather than missing. They must agree on every character, whatever
// the database's locale, or a row the core skips shows as missing forever.
import assert from "node:assert/strict";
import { withTestDb } from "../../devtools/db.ts";

Deno.test("blank text: status and the core agree on every character of the Basic Multilingual Plane", async () => {
  await withTestDb(async (sql) => {
    const texts: string[] = [];
    // U+0000 cannot be stored in text; surrogates are not characters on their own.
    for (let code = 1; code <= 0xffff; code++) {
      if (code < 0xd800 || code > 0xdfff) texts.push(String.fromCharCode(code));
    }
    // And a few mixtures: blank ones, and ones with a single visible character.
    texts.push(" \t\n", "\u00a0\u3000\ufeff\u2028", " x ", "\u200b", "\u0085 ", "");
    const blankInSql = await sql<{ blank: boolean }[]>`
      select t ~ util._blank_text_pattern() as blank
        from unnest(${texts}::text[]) with ordinality u(t, n) order by n`;
    assert.equal(blankInSql.length, texts.length);
    const disagreements = texts.filter((t, i) => blankInSql[i].blank !== (t.trim() === ""))
      .map((t) => [...t].map((c) => `U+${c.codePointAt(0)!.toString(16).padStart(4, "0")}`));
    assert.deepEqual(disagreements, []);
    // Premise: the set is not empty, and not everything.
    const blanks = blankInSql.filter((r) => r.blank).length;
    assert.ok(blanks > 20 && blanks < 40, `${blanks} blank texts`);
  });
});
