// Vector text as Postgres reads it, made as short as it can be and cheap to
// make: the text of every batch's vectors is built here and parsed by the
// write statement, so its length is write cost and its making is most of the
// worker's CPU (see bench/RESULTS.md, "Drain, round two").

/** A provider's vector: float32 values as the API sent them, or plain numbers. */
export type Vector = Float32Array | number[];

/**
 * A vector as Postgres reads it. For a halfvec column each value is rounded
 * to float16 here, as halfvec_in would, and written with the fewest digits
 * that read back as the same float16 (a table of all 65,536): less than half
 * the text of the full doubles. The text is assembled as ASCII bytes from
 * that table and decoded once, not concatenated value by value. Other
 * columns get the values as they are.
 */
export function vectorLiteral(values: Vector, columnType: string): string {
  if (columnType.startsWith("halfvec") && typeof Float16Array === "function") {
    const { bytes, offsets } = float16Bytes ??= float16ByteTable();
    // Through float32 first, as halfvec_in reads the text (strtof), then to float16.
    const floats = values instanceof Float32Array ? values : Float32Array.from(values);
    const bits = new Uint16Array(new Float16Array(floats).buffer);
    let size = bits.length + 1; // brackets and commas
    for (let i = 0; i < bits.length; i++) size += offsets[bits[i] + 1] - offsets[bits[i]];
    const out = new Uint8Array(size);
    out[0] = 0x5b; // [
    let at = 1;
    for (let i = 0; i < bits.length; i++) {
      if (i) out[at++] = 0x2c; // ,
      const from = offsets[bits[i]], to = offsets[bits[i] + 1];
      for (let j = from; j < to; j++) out[at++] = bytes[j];
    }
    out[at] = 0x5d; // ]
    return ascii.decode(out);
  }
  return `[${Array.prototype.join.call(values, ",")}]`;
}

const ascii = new TextDecoder();
let float16Bytes: { bytes: Uint8Array; offsets: Uint32Array } | undefined;

/** float16TextTable as one ASCII buffer: value b's text is bytes[offsets[b] .. offsets[b + 1]). */
function float16ByteTable(): { bytes: Uint8Array; offsets: Uint32Array } {
  const table = float16TextTable();
  const offsets = new Uint32Array(table.length + 1);
  for (let b = 0; b < table.length; b++) offsets[b + 1] = offsets[b] + table[b].length;
  const bytes = new Uint8Array(offsets[table.length]);
  for (let b = 0; b < table.length; b++) {
    for (let k = 0; k < table[b].length; k++) bytes[offsets[b] + k] = table[b].charCodeAt(k);
  }
  return { bytes, offsets };
}

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
