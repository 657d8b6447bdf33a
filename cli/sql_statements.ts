// Reads SQL files as a list of statements, each with the comment lines right
// above it and the object it declares, so a definition can be lifted out of
// supabase/schemas/ without hand-copying. Pure: no I/O, no database.

export interface Statement {
  /** The comment lines directly above the statement (no blank line between), verbatim. */
  comment: string;
  /** The statement itself, from its first keyword to its closing semicolon. */
  text: string;
  /** 1-based line of the statement's first keyword. */
  line: number;
}

/** Characters that end the current token's context: quotes, comments, dollar quotes. */
const DOLLAR_TAG = /^\$([A-Za-z_][A-Za-z0-9_]*)?\$/;

/**
 * Splits `sql` into statements at semicolons that are outside string
 * literals, quoted identifiers, comments and dollar-quoted bodies. Comment
 * lines directly above a statement belong to it; a comment separated by a
 * blank line, or a banner line of dashes, does not. Text after the last
 * semicolon that is not only comments and blanks is a statement too.
 */
export function splitStatements(sql: string): Statement[] {
  const statements: Statement[] = [];
  let start = -1; // index of the current statement's first character
  let i = 0;
  const flush = (end: number) => {
    if (start < 0) return;
    const text = sql.slice(start, end).trim();
    statements.push({ comment: commentAbove(sql, start), text, line: lineAt(sql, start) });
    start = -1;
  };
  while (i < sql.length) {
    const c = sql[i];
    if (c === "-" && sql[i + 1] === "-") {
      const nl = sql.indexOf("\n", i);
      i = nl < 0 ? sql.length : nl + 1;
      continue;
    }
    if (c === "/" && sql[i + 1] === "*") {
      i = skipBlockComment(sql, i);
      continue;
    }
    if (/\s/.test(c)) {
      i++;
      continue;
    }
    if (start < 0) start = i;
    if (c === ";") {
      flush(i + 1);
      i++;
    } else if (c === "'") {
      i = skipQuoted(sql, i, "'", isEscapeString(sql, i));
    } else if (c === '"') {
      i = skipQuoted(sql, i, '"', false);
    } else if (c === "$" && !/[A-Za-z0-9_]/.test(sql[i - 1] ?? "")) {
      const m = sql.slice(i).match(DOLLAR_TAG);
      if (m) {
        const close = sql.indexOf(m[0], i + m[0].length);
        i = close < 0 ? sql.length : close + m[0].length;
      } else {
        i++;
      }
    } else {
      i++;
    }
  }
  flush(sql.length);
  return statements;
}

function skipBlockComment(sql: string, from: number): number {
  let depth = 0;
  let i = from;
  while (i < sql.length) {
    if (sql.startsWith("/*", i)) {
      depth++;
      i += 2;
    } else if (sql.startsWith("*/", i)) {
      depth--;
      i += 2;
      if (depth === 0) return i;
    } else {
      i++;
    }
  }
  return i;
}

/** E'...' strings take backslash escapes; standard strings only doubled quotes. */
function isEscapeString(sql: string, quoteAt: number): boolean {
  const before = sql[quoteAt - 1] ?? "";
  return /[eE]/.test(before) && !/[A-Za-z0-9_]/.test(sql[quoteAt - 2] ?? "");
}

function skipQuoted(sql: string, from: number, quote: string, backslash: boolean): number {
  let i = from + 1;
  while (i < sql.length) {
    if (backslash && sql[i] === "\\") {
      i += 2;
    } else if (sql[i] === quote) {
      if (sql[i + 1] === quote) i += 2;
      else return i + 1;
    } else {
      i++;
    }
  }
  return i;
}

function lineAt(sql: string, index: number): number {
  return sql.slice(0, index).split("\n").length;
}

/** The `--` comment lines directly above `index`, stopping at a blank or a banner line. */
function commentAbove(sql: string, index: number): string {
  const lineStart = sql.lastIndexOf("\n", index - 1) + 1;
  if (sql.slice(lineStart, index).trim() !== "") return ""; // something else on that line
  const lines = sql.slice(0, lineStart).split("\n");
  lines.pop(); // the empty remainder after the last newline
  const taken: string[] = [];
  for (let k = lines.length - 1; k >= 0; k--) {
    const line = lines[k];
    if (!/^\s*--/.test(line) || /^\s*-{4,}\s*$/.test(line)) break;
    taken.unshift(line);
  }
  return taken.join("\n");
}

export type ObjectKind = "function" | "view" | "table" | "index" | "trigger";

export interface DeclaredObject {
  kind: ObjectKind;
  /** Schema-qualified, lower case, unquoted: `util.process_embeddings`. */
  name: string;
}

const IDENT = String.raw`(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)`;
const QUALIFIED = String.raw`(${IDENT}(?:\s*\.\s*${IDENT})?)`;
const DECLARATIONS: [ObjectKind, RegExp][] = [
  [
    "function",
    new RegExp(
      String.raw`^create\s+(?:or\s+replace\s+)?(?:function|procedure)\s+${QUALIFIED}\s*\(`,
      "i",
    ),
  ],
  [
    "view",
    new RegExp(
      String
        .raw`^create\s+(?:or\s+replace\s+)?(?:materialized\s+)?view\s+(?:if\s+not\s+exists\s+)?${QUALIFIED}`,
      "i",
    ),
  ],
  [
    "table",
    new RegExp(
      String.raw`^create\s+(?:unlogged\s+)?table\s+(?:if\s+not\s+exists\s+)?${QUALIFIED}`,
      "i",
    ),
  ],
  [
    "index",
    new RegExp(
      String
        .raw`^create\s+(?:unique\s+)?index\s+(?:concurrently\s+)?(?:if\s+not\s+exists\s+)?${QUALIFIED}\s+on\s+(?:only\s+)?${QUALIFIED}`,
      "i",
    ),
  ],
  [
    "trigger",
    new RegExp(
      String
        .raw`^create\s+(?:or\s+replace\s+)?(?:constraint\s+)?trigger\s+${QUALIFIED}\s[\s\S]*?\bon\s+${QUALIFIED}`,
      "i",
    ),
  ],
];

/** `"Foo".bar` -> `Foo.bar`, `Util.X` -> `util.x`; unqualified names get `defaultSchema`. */
export function normalizeName(name: string, defaultSchema = "util"): string {
  const parts = [...name.matchAll(new RegExp(IDENT, "g"))].map((m) =>
    m[0].startsWith('"') ? m[0].slice(1, -1).replaceAll('""', '"') : m[0].toLowerCase()
  );
  return (parts.length === 1 ? [defaultSchema, ...parts] : parts).join(".");
}

/** What a statement declares, or null (grants, inserts, do blocks, ...). */
export function declaredObject(statement: string): DeclaredObject | null {
  for (const [kind, pattern] of DECLARATIONS) {
    const m = statement.match(pattern);
    if (!m) continue;
    if (kind === "index" || kind === "trigger") {
      // An index or trigger lives in its table's schema.
      const schema = normalizeName(m[2]).split(".")[0];
      return { kind, name: `${schema}.${normalizeName(m[1]).split(".").pop()}` };
    }
    return { kind, name: normalizeName(m[1]) };
  }
  return null;
}

/** Whether `statement` is a GRANT or REVOKE. */
export function isPrivilegeStatement(statement: string): boolean {
  return /^(grant|revoke)\s/i.test(statement);
}

/** Whether a statement's text names `name` (schema-qualified) as a whole identifier. */
export function mentions(statement: string, name: string): boolean {
  const [schema, object] = name.split(".");
  const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  return new RegExp(
    String.raw`(?<![\w$."])${escape(schema)}\s*\.\s*${escape(object)}(?![\w$])`,
    "i",
  )
    .test(statement);
}
