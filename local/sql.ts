// The stack's own short conversations with a database: one connection, a few
// statements, closed again.
import postgres from "postgres";

/** Runs `fn` on a one-connection client of `url` (notices silenced), then ends the client. */
export async function withSql<T>(url: string, fn: (sql: postgres.Sql) => Promise<T>): Promise<T> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    return await fn(sql);
  } finally {
    await sql.end();
  }
}
