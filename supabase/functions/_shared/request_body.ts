// Reading a request's body under a byte limit, for the HTTP functions: a
// declared Content-Length over the limit is refused before a byte is read;
// otherwise the bytes are counted as they stream in and reading stops at the
// limit, so a body sent without Content-Length, or with a false one, costs at
// most the limit.

/** The body is over the limit; `declared` is its Content-Length when that said so. */
export class BodyTooLarge extends Error {
  constructor(readonly limit: number, readonly declared?: number) {
    super(
      declared === undefined
        ? `request body exceeds ${limit} bytes`
        : `request body is ${declared} bytes; the limit is ${limit}`,
    );
    this.name = "BodyTooLarge";
  }
}

/** The body of `req` as UTF-8 text (invalid bytes replaced); BodyTooLarge past `maxBytes`. */
export async function readBodyText(req: Request, maxBytes: number): Promise<string> {
  const declared = Number(req.headers.get("content-length") ?? "");
  if (Number.isFinite(declared) && declared > maxBytes) {
    await req.body?.cancel();
    throw new BodyTooLarge(maxBytes, declared);
  }
  const reader = req.body?.getReader();
  if (!reader) return "";
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    size += value.length;
    if (size > maxBytes) {
      await reader.cancel();
      throw new BodyTooLarge(maxBytes);
    }
    chunks.push(value);
  }
  const all = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    all.set(chunk, offset);
    offset += chunk.length;
  }
  return new TextDecoder().decode(all);
}
