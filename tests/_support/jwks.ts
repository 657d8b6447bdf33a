// A project's signing keys as Supabase Auth publishes them, for tests: an
// ES256 key pair generated here, its public half served as a JSON Web Key Set
// at /auth/v1/.well-known/jwks.json on loopback, tokens signed with the
// private half. The server can be told to fail, to stand for an outage.
import { exportJWK, generateKeyPair, type JWTPayload, SignJWT } from "jose";

export interface JwksServer {
  /** The project URL whose `/auth/v1/.well-known/jwks.json` serves the key set. */
  projectUrl: string;
  /** The key set's own URL. */
  jwksUrl: string;
  /** Requests for the key set so far. */
  requests(): number;
  /** From now on answer 500 (true) or the key set (false). */
  fail(failing: boolean): void;
  /** A token signed with the published key (ES256, its kid), as Supabase Auth issues one. */
  sign(claims: JWTPayload): Promise<string>;
  close(): Promise<void>;
}

export const JWKS_PATH = "/auth/v1/.well-known/jwks.json";

/** An ES256 key pair: `sign` makes tokens with it, `publicJwk` is its published half. */
export async function es256Key(kid: string) {
  const { publicKey, privateKey } = await generateKeyPair("ES256", { extractable: true });
  const publicJwk = { ...(await exportJWK(publicKey)), kid, alg: "ES256", use: "sig" };
  return {
    publicJwk,
    sign: (claims: JWTPayload) =>
      new SignJWT(claims).setProtectedHeader({ alg: "ES256", typ: "JWT", kid }).sign(privateKey),
  };
}

export async function startJwksServer(): Promise<JwksServer> {
  const key = await es256Key("test-signing-key");
  let count = 0;
  let failing = false;
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    (req) => {
      if (new URL(req.url).pathname !== JWKS_PATH) {
        return new Response("not found", { status: 404 });
      }
      count++;
      if (failing) return new Response("upstream down", { status: 500 });
      return Response.json({ keys: [key.publicJwk] });
    },
  );
  const projectUrl = `http://127.0.0.1:${server.addr.port}`;
  return {
    projectUrl,
    jwksUrl: `${projectUrl}${JWKS_PATH}`,
    requests: () => count,
    fail: (value) => failing = value,
    sign: key.sign,
    close: () => server.shutdown(),
  };
}
