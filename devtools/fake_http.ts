// What the fake provider's endpoints share: JSON answers, OpenAI's error
// shape, and the embeddings API's base64 vectors.
import { Buffer } from "node:buffer";

export function json(
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

/** An error as the OpenAI API writes it: `{error: {message, type, param, code}}`. */
export function apiError(
  status: number,
  message: string,
  type: string,
  code: string | null = null,
  headers: Record<string, string> = {},
): Response {
  return json(status, { error: { message, type, param: null, code } }, headers);
}

/** The API's base64 form: little-endian float32s. */
export function base64Float32(vector: ArrayLike<number>): string {
  const view = new DataView(new ArrayBuffer(vector.length * 4));
  for (let i = 0; i < vector.length; i++) view.setFloat32(i * 4, vector[i], true);
  return Buffer.from(view.buffer).toString("base64");
}
