// JSON Web Tokens as Supabase's API gateway checks them, with the maintained
// `jose` library: HS256 only (`alg: none` and every other algorithm refused),
// the signature checked against the project's JWT secret, `exp` required and
// checked. Used by the local functions gateway and by functions that check
// the caller's token again themselves.
import { decodeJwt, errors, type JWTPayload, jwtVerify, SignJWT } from "jose";

/** The claims of a token that passed verification. */
export type JwtClaims = JWTPayload & { role?: unknown; sub?: unknown };

export class JwtError extends Error {}

function keyOf(secret: string): Uint8Array {
  return new TextEncoder().encode(secret);
}

/** The bearer token of an `Authorization` header, or "" when there is none. */
export function bearerToken(header: string | null | undefined): string {
  return header?.match(/^Bearer\s+(\S+)\s*$/i)?.[1] ?? "";
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
      algorithms: ["HS256"],
      requiredClaims: ["exp"],
    });
    return payload as JwtClaims;
  } catch (err) {
    if (err instanceof errors.JWTExpired) throw new JwtError("the token has expired");
    if (err instanceof errors.JOSEAlgNotAllowed) {
      throw new JwtError("the token's algorithm is not HS256");
    }
    if (err instanceof errors.JWSSignatureVerificationFailed) {
      throw new JwtError("the token's signature does not match the JWT secret");
    }
    if (err instanceof errors.JOSEError) throw new JwtError(`invalid token (${err.code})`);
    throw new JwtError("invalid token");
  }
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
