// Who is searching: the role and claims of the caller's JWT, which the search
// runs with (set local role, request.jwt.claims), as PostgREST does. Only the
// three API roles are accepted.
import { bearerToken, type JwtClaims, JwtError, readVerifiedJwt, verifyJwt } from "../jwt.ts";
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
 * The caller of `authorization` (the request's header). With `jwtSecret`
 * the token is verified here too (defense in depth: the function stays safe
 * if it is ever deployed with verify_jwt = false); without one, the gateway's
 * verification (verify_jwt = true) is relied on and the claims are only read.
 * Missing or invalid tokens get 401; a role other than anon, authenticated or
 * service_role gets 403.
 */
export async function callerOf(
  authorization: string | null,
  jwtSecret: string | undefined,
): Promise<Caller> {
  const token = bearerToken(authorization);
  let claims: JwtClaims;
  try {
    claims = jwtSecret ? await verifyJwt(token, jwtSecret) : readVerifiedJwt(token);
  } catch (err) {
    if (err instanceof JwtError) throw new SearchError(401, `invalid JWT: ${err.message}`);
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
