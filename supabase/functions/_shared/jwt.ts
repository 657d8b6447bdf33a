// JSON Web Tokens as Supabase signs them, checked with the maintained `jose`
// library: HS256 with the project's JWT secret (legacy keys, the local stack)
// and ES256/RS256 with the project's signing keys, published as a JSON Web Key
// Set at `<SUPABASE_URL>/auth/v1/.well-known/jwks.json`. `alg: none` and every
// other algorithm are refused; `exp` is required and checked. Used by the
// local functions gateway and by functions that check the caller's token
// themselves. The key set is fetched at most once per cool-down
// (signing_keys.ts), so forged tokens cannot make a flood of fetches.
import {
  decodeJwt,
  decodeProtectedHeader,
  errors,
  type FlattenedJWSInput,
  type JWTHeaderParameters,
  type JWTPayload,
  jwtVerify,
  type JWTVerifyGetKey,
  SignJWT,
} from "jose";
import { JwksUnavailableError, remoteSigningKeys } from "./signing_keys.ts";

export { JwksUnavailableError } from "./signing_keys.ts";

/** The claims of a token that passed verification. */
export type JwtClaims = JWTPayload & { role?: unknown; sub?: unknown };

/** The token is refused (401): says why, never quotes the token. */
export class JwtError extends Error {}

/** The algorithms Supabase signs with: HS256 (JWT secret), ES256 and RS256 (signing keys). */
export const SYMMETRIC_ALGORITHMS = ["HS256"] as const;
export const ASYMMETRIC_ALGORITHMS = ["ES256", "RS256"] as const;

/** Where a project publishes its signing keys. */
export function jwksUrlOf(supabaseUrl: string): URL {
  return new URL("/auth/v1/.well-known/jwks.json", supabaseUrl);
}

function keyOf(secret: string): Uint8Array {
  return new TextEncoder().encode(secret);
}

/** The bearer token of an `Authorization` header, or "" when there is none. */
export function bearerToken(header: string | null | undefined): string {
  return header?.match(/^Bearer\s+(\S+)\s*$/i)?.[1] ?? "";
}

/** jose's refusal as a JwtError that says why; anything else passes through. */
function refusal(err: unknown): unknown {
  if (err instanceof JwtError || err instanceof JwksUnavailableError) return err;
  if (err instanceof errors.JWTExpired) return new JwtError("the token has expired");
  if (err instanceof errors.JOSEAlgNotAllowed) {
    return new JwtError("the token's algorithm is not allowed");
  }
  if (err instanceof errors.JWSSignatureVerificationFailed) {
    return new JwtError("the token's signature does not match the key");
  }
  if (err instanceof errors.JWKSNoMatchingKey) {
    return new JwtError("no signing key of the project matches the token");
  }
  if (err instanceof errors.JOSEError) return new JwtError(`invalid token (${err.code})`);
  return new JwtError("invalid token");
}

/**
 * The claims of `token` when it is an HS256 JWT signed with `secret` whose
 * `exp` has not passed; throws JwtError (saying why, never echoing the token)
 * otherwise.
 */
export async function verifyJwt(token: string, secret: string): Promise<JwtClaims> {
  if (!token) throw new JwtError("no bearer token");
  try {
    const { payload } = await jwtVerify(token, keyOf(secret), {
      algorithms: [...SYMMETRIC_ALGORITHMS],
      requiredClaims: ["exp"],
    });
    return payload as JwtClaims;
  } catch (err) {
    throw refusal(err);
  }
}

export interface JwtVerifierOptions {
  /** The project's JWT secret: HS256 tokens are verified with it. */
  secret?: string;
  /** The project's JWKS: ES256/RS256 tokens are verified against it (fetched, cached by jose). */
  jwksUrl?: URL;
  /** A JWKS request that takes longer fails (503); default 5000 ms. */
  jwksTimeoutMs?: number;
  /**
   * Fewest ms between two fetches of the JWKS, successful or not (default
   * 30 s): tokens the known keys refuse cost no fetch, and a key set that
   * cannot be fetched is asked once per cool-down, however many tokens come.
   */
  jwksCooldownMs?: number;
  /** Keys fetched longer ago are fetched again before they admit a token; default 10 min. */
  jwksMaxAgeMs?: number;
  /**
   * A token of a platform algorithm this verifier holds no key for: "gateway"
   * (default) reads its claims, for a function behind a gateway that verified
   * it; "refuse" makes it a JwtError, for the gateway itself.
   */
  keyless?: "gateway" | "refuse";
}

/**
 * What a function that runs behind the gateway (verify_jwt = true) does with
 * the caller's token: `verify(token)` checks it itself whenever it holds the
 * key for the token's algorithm (HS256: `secret`; ES256/RS256: `jwksUrl`), and
 * only reads the claims of an HS256/ES256/RS256 token it holds no key for,
 * relying on the gateway's check. Any other algorithm (`none` included), a
 * bearer that is not a JWT, a bad signature, a missing or passed `exp`:
 * JwtError. The JWKS not answering: JwksUnavailableError, never unverified
 * claims; but a token the keys last fetched refuse is refused (JwtError) even
 * then, so forged tokens get 401 whether the key set answers or not.
 */
export interface JwtVerifier {
  verify(token: string): Promise<JwtClaims>;
}

/** jose's JWT check with `keys`: the algorithms given, `exp` required. */
async function verifyWith(
  token: string,
  keys: JWTVerifyGetKey,
  algorithms: string[],
): Promise<JwtClaims> {
  const { payload } = await jwtVerify(token, keys, { algorithms, requiredClaims: ["exp"] });
  return payload as JwtClaims;
}

export function createJwtVerifier(options: JwtVerifierOptions): JwtVerifier {
  const secret = options.secret ? keyOf(options.secret) : undefined;
  const signingKeys = options.jwksUrl
    ? remoteSigningKeys(options.jwksUrl, {
      timeoutMs: options.jwksTimeoutMs ?? 5000,
      cooldownMs: options.jwksCooldownMs ?? 30_000,
      maxAgeMs: options.jwksMaxAgeMs ?? 600_000,
    })
    : undefined;
  const keyed: string[] = [
    ...(secret ? SYMMETRIC_ALGORITHMS : []),
    ...(signingKeys ? ASYMMETRIC_ALGORITHMS : []),
  ];
  const platform: string[] = [...SYMMETRIC_ALGORITHMS, ...ASYMMETRIC_ALGORITHMS];

  // The key for a token's header: the secret for HS256, else the signing keys'.
  function keyFor(header: JWTHeaderParameters, token: FlattenedJWSInput) {
    return header.alg === "HS256" ? secret! : signingKeys!.keyFor(header, token);
  }

  /**
   * The answer to a token whose keys could not be fetched: 401 when the keys
   * last fetched refuse it (a forged token stays a 401 through an outage),
   * else the 503 (they would admit it, or there are none: only a fetch can tell).
   */
  async function unavailable(token: string, err: JwksUnavailableError): Promise<unknown> {
    const lastKnown = signingKeys!.lastKnown();
    if (!lastKnown) return err;
    try {
      await verifyWith(token, lastKnown, [...ASYMMETRIC_ALGORITHMS]);
      return err;
    } catch (refused) {
      return refusal(refused);
    }
  }

  async function verify(token: string): Promise<JwtClaims> {
    if (!token) throw new JwtError("no bearer token");
    let alg: unknown;
    try {
      alg = decodeProtectedHeader(token).alg;
    } catch {
      throw new JwtError("the bearer token is not a JWT");
    }
    if (typeof alg !== "string" || !platform.includes(alg)) {
      throw new JwtError("the token's algorithm is not allowed");
    }
    if (!keyed.includes(alg)) {
      if (options.keyless === "refuse") throw new JwtError(`no key here verifies ${alg} tokens`);
      return readVerifiedJwt(token);
    }
    try {
      return await verifyWith(token, keyFor, keyed);
    } catch (err) {
      if (err instanceof JwksUnavailableError) throw await unavailable(token, err);
      throw refusal(err);
    }
  }

  return { verify };
}

/**
 * The claims of a token without checking its signature: only for a function
 * behind a gateway that verified it (verify_jwt = true). Throws JwtError when
 * the token cannot be read.
 */
export function readVerifiedJwt(token: string): JwtClaims {
  if (!token) throw new JwtError("no bearer token");
  try {
    return decodeJwt(token) as JwtClaims;
  } catch {
    throw new JwtError("invalid token");
  }
}

/** Signs `claims` with `secret` (HS256, `typ: JWT`), e.g. a local stack's keys or a test user's token. */
export async function signJwt(claims: JWTPayload, secret: string): Promise<string> {
  return await new SignJWT(claims).setProtectedHeader({ alg: "HS256", typ: "JWT" }).sign(
    keyOf(secret),
  );
}
