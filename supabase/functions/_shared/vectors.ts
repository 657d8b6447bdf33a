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
 * the text of the full doubles. Other columns get the values as they are.
 */
export function vectorLiteral(values: Vector, columnType: string): string {
  return vectorList([values], columnType);
}

/**
 * The vectors of one write as one text, `[…];[…];…`, with an empty field for
 * a null (the row's embedding is cleared; no vector's text is empty), as
 * sql/write.ts sends them. The text of a whole batch is assembled as ASCII
 * bytes (halfvec values from the float16 table) and decoded once: no string
 * per vector, no join. Texts (vectors copied from rows that hold them) go in
 * as they are; one with a character no vector text has (';' included) is
 * refused rather than misread.
 */
export function vectorList(vectors: (Vector | string | null)[], columnType: string): string {
  const half = columnType.startsWith("halfvec") && typeof Float16Array === "function";
  const { bytes, offsets, longest } = half ? (float16Bytes ??= float16ByteTable()) : EMPTY_TABLE;
  const parts = vectors.map((v): Uint16Array | string | null => {
    if (v === null) return null;
    if (typeof v === "string") {
      if (!VECTOR_TEXT.test(v)) {
        throw new Error("a vector text holds characters no vector text has");
      }
      return v;
    }
    // Through float32 first, as halfvec_in reads the text (strtof), then to float16.
    if (half) {
      return new Uint16Array(
        new Float16Array(v instanceof Float32Array ? v : Float32Array.from(v)).buffer,
      );
    }
    return `[${Array.prototype.join.call(v, ",")}]`;
  });
  // An upper bound of the text's length (every value at the table's longest),
  // so the values are looked up once.
  let size = parts.length; // separators
  for (const part of parts) {
    if (typeof part === "string") size += part.length;
    else if (part !== null) size += part.length * (longest + 1) + 1;
  }
  const out = new Uint8Array(size);
  let at = 0;
  parts.forEach((part, k) => {
    if (k) out[at++] = 0x3b; // ;
    if (part === null) return;
    if (typeof part === "string") {
      for (let i = 0; i < part.length; i++) out[at++] = part.charCodeAt(i);
      return;
    }
    out[at++] = 0x5b; // [
    for (let i = 0; i < part.length; i++) {
      if (i) out[at++] = 0x2c; // ,
      const from = offsets[part[i]], to = offsets[part[i] + 1];
      for (let j = from; j < to; j++) out[at++] = bytes[j];
    }
    out[at++] = 0x5d; // ]
  });
  return ascii.decode(out.subarray(0, at));
}

/** What a vector's text may hold: numbers, commas, brackets. */
const VECTOR_TEXT = /^\[[-+0-9.,eE ]*\]$/;
const EMPTY_TABLE = { bytes: new Uint8Array(0), offsets: new Uint32Array(0), longest: 0 };
const ascii = new TextDecoder();
let float16Bytes: { bytes: Uint8Array; offsets: Uint32Array; longest: number } | undefined;

/** float16TextTable as one ASCII buffer: value b's text is bytes[offsets[b] .. offsets[b + 1]). */
function float16ByteTable(): { bytes: Uint8Array; offsets: Uint32Array; longest: number } {
  const table = float16TextTable();
  const offsets = new Uint32Array(table.length + 1);
  for (let b = 0; b < table.length; b++) offsets[b + 1] = offsets[b] + table[b].length;
  const bytes = new Uint8Array(offsets[table.length]);
  for (let b = 0; b < table.length; b++) {
    for (let k = 0; k < table[b].length; k++) bytes[offsets[b] + k] = table[b].charCodeAt(k);
  }
  let longest = 0;
  for (const text of table) longest = Math.max(longest, text.length);
  return { bytes, offsets, longest };
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

/** How a column's vectors travel in binary: pgvector's send/recv layout, per type. */
export type BinaryVectorType = "halfvec" | "vector";

/** The type a column's vectors can be sent as in binary, or null (sent as text). */
export function binaryVectorType(columnType: string): BinaryVectorType | null {
  const name = columnType.replace(/\(.*$/, "").replace(/^.*\./, "").replaceAll('"', "");
  return name === "halfvec" && typeof Float16Array === "function"
    ? "halfvec"
    : name === "vector"
    ? "vector"
    : null;
}

/**
 * The vectors of one write as one `halfvec[]` (or `vector[]`) parameter in
 * Postgres's binary array format (array_recv), each element in pgvector's
 * binary layout (halfvec_recv / vector_recv: int16 dim, int16 unused = 0,
 * then dim float16 / float32, all big-endian); a null element clears the
 * row's embedding. No text is made and none parsed: the float32 → float16
 * rounding happens here, through Float16Array, which rounds to nearest even
 * as pgvector's Float4ToHalf does; a value beyond float16's range becomes
 * infinite, which halfvec_recv refuses as halfvec_in refuses its text, and so
 * are NaN and ±Infinity. `elementOid` is the element type's oid in the target
 * database (array_recv checks it). Vector texts (copied from a row that holds
 * them) are read back into numbers first.
 */
export function vectorArrayBinary(
  vectors: (Vector | string | null)[],
  type: BinaryVectorType,
  elementOid: number,
): Uint8Array {
  const width = type === "halfvec" ? 2 : 4;
  const values = vectors.map((v) => (typeof v === "string" ? parseVectorText(v) : v));
  let size = 20;
  let nulls = 0;
  for (const v of values) {
    size += 4;
    if (v === null) nulls = 1;
    else size += 4 + width * v.length;
  }
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  view.setInt32(0, 1); // dimensions
  view.setInt32(4, nulls); // has nulls
  view.setUint32(8, elementOid);
  view.setInt32(12, values.length);
  view.setInt32(16, 1); // lower bound
  let at = 20;
  for (const v of values) {
    if (v === null) {
      view.setInt32(at, -1);
      at += 4;
      continue;
    }
    view.setInt32(at, 4 + width * v.length);
    view.setInt16(at + 4, v.length);
    view.setInt16(at + 6, 0);
    at += 8;
    // Host-order words through a typed array, then written big-endian byte by byte:
    // a DataView call per value costs more.
    // Plain numbers through float32 first, as halfvec_in reads a text (strtof).
    const floats = v instanceof Float32Array ? v : Float32Array.from(v);
    if (type === "halfvec") {
      const bits = float16Bits(floats);
      for (let i = 0; i < bits.length; i++) {
        const b = bits[i];
        out[at++] = b >>> 8;
        out[at++] = b & 0xff;
      }
    } else {
      const bits = new Uint32Array(floats.buffer, floats.byteOffset, floats.length);
      for (let i = 0; i < bits.length; i++) {
        const b = bits[i];
        out[at++] = b >>> 24;
        out[at++] = (b >>> 16) & 0xff;
        out[at++] = (b >>> 8) & 0xff;
        out[at++] = b & 0xff;
      }
    }
  }
  return out;
}

/** `floats` rounded to float16, as bits in a scratch array reused by the next call. */
function float16Bits(floats: Float32Array): Uint16Array {
  if (scratch?.halves.length !== floats.length) {
    const halves = new Float16Array(floats.length);
    scratch = { halves, bits: new Uint16Array(halves.buffer) };
  }
  scratch.halves.set(floats);
  return scratch.bits;
}
let scratch: { halves: Float16Array; bits: Uint16Array } | undefined;

/** A vector's text (`[1,2.5,…]`, as Postgres writes it) as numbers. */
function parseVectorText(text: string): number[] {
  if (!VECTOR_TEXT.test(text)) throw new Error("a vector text holds characters no vector text has");
  return text.slice(1, -1).split(",").map(Number);
}
