// Vector text as Postgres reads it, made as short as it can be: the text of
// every batch's vectors is parsed by the write statement, so its length is
// write cost (see bench/RESULTS.md).

/**
 * A vector as Postgres reads it. For a halfvec column each value is rounded
 * to float16 here, as halfvec_in would, and written with the fewest digits
 * that read back as the same float16 (a table of all 65,536): less than half
 * the text of the full doubles. Other columns get the doubles as they are.
 */
export function vectorLiteral(values: number[], columnType: string): string {
  if (columnType.startsWith("halfvec") && typeof Float16Array === "function") {
    const table = float16Texts ??= float16TextTable();
    // Through float32 first, as halfvec_in reads the text (strtof), then to float16.
    const bits = new Uint16Array(Float16Array.from(Float32Array.from(values)).buffer);
    let text = "[";
    for (let i = 0; i < bits.length; i++) text += (i ? "," : "") + table[bits[i]];
    return `${text}]`;
  }
  return `[${values.join(",")}]`;
}

let float16Texts: string[] | undefined;

/** The shortest decimal text of every float16 value that reads back as that value. */
export function float16TextTable(): string[] {
  const value = new Float16Array(1);
  const bits = new Uint16Array(value.buffer);
  const table = new Array<string>(65536);
  for (let b = 0; b < 65536; b++) {
    bits[0] = b;
    const h = value[0];
    table[b] = Object.is(h, -0) ? "-0" : String(h); // NaN, ±Infinity: refused by Postgres
    if (!Number.isFinite(h) || h === 0) continue;
    for (let digits = 1; digits <= 6; digits++) {
      const text = String(Number(h.toPrecision(digits)));
      if (Math.f16round(Number(text)) === h && Math.f16round(Math.fround(Number(text))) === h) {
        table[b] = text;
        break;
      }
    }
  }
  return table;
}
