// Who is searching: the role and claims of the caller's JWT, which the search
// runs with (set local role, request.jwt.claims), as PostgREST does. Only the
// three API roles are accepted.
import {
  bearerToken,
  JwksUnavailableError,
  type JwtClaims,
  JwtError,
  type JwtVerifier,
} from "../jwt.ts";
import { SearchError } from "./types.ts";

/** The roles a search may run as, each with the SQL that names it (a fixed text, never input). */
export const SEARCH_ROLES = {
  anon: "anon",
  authenticated: "authenticated",
  service_role: "service_role",
} as const;

export type SearchRole = keyof typeof SEARCH_ROLES;

export interface Caller {
  role: SearchRole;
  claims: JwtClaims;
}

/**
 * The caller of `authorization` (the request's header), its token checked by
 * `verifier` (see createJwtVerifier: verified here with the key for its
 * algorithm, or read on the gateway's word when the function holds none).
 * Missing or invalid tokens get 401; signing keys that cannot be fetched get
 * 503 with Retry-After until the next fetch may go (the token may be valid);
 * a role other than anon, authenticated
 * or service_role gets 403.
 */
export async function callerOf(
  authorization: string | null,
  verifier: JwtVerifier,
): Promise<Caller> {
  const token = bearerToken(authorization);
  let claims: JwtClaims;
  try {
    claims = await verifier.verify(token);
  } catch (err) {
    if (err instanceof JwtError) throw new SearchError(401, `invalid JWT: ${err.message}`);
    if (err instanceof JwksUnavailableError) {
      // Not before the key set may be fetched again.
      const retryAfter = Math.max(1, Math.ceil(err.retryAfterMs / 1000));
      throw new SearchError(503, `${err.message}; try again`, {
        "Retry-After": String(retryAfter),
      });
    }
    throw err;
  }
  const role = claims.role;
  if (typeof role !== "string" || !Object.hasOwn(SEARCH_ROLES, role)) {
    throw new SearchError(
      403,
      "the JWT's role may not search: use the anon key, a user's access token or the service key",
    );
  }
  return { role: role as SearchRole, claims };
}
