// A project's signing keys (its JSON Web Key Set) as a verifier holds them:
// fetched and cached by jose's remote key set, and never fetched more than
// once per cool-down, whatever the outcome. jose already waits a cool-down
// after a successful fetch; a failed one (5xx, 404, a timeout, a body that is
// no key set) would be fetched again by the next token, so a flood of forged
// tokens would be a flood of fetches. Here a failure starts the cool-down too.
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  errors,
  type FlattenedJWSInput,
  type JWTHeaderParameters,
} from "jose";

/** The signing keys could not be fetched, so an asymmetric token could not be checked (503). */
export class JwksUnavailableError extends Error {
  /** `retryAfterMs`: until the next fetch may go. */
  constructor(message: string, readonly retryAfterMs: number) {
    super(message);
    this.name = "JwksUnavailableError";
  }
}

/** jose's key-set function: the key for a token's header, or a JOSEError saying why none. */
export type KeySetFunction = (
  header: JWTHeaderParameters,
  token: FlattenedJWSInput,
) => Promise<CryptoKey>;

export interface SigningKeys {
  /**
   * The key for a token's header, from keys fetched within the last max age
   * (JWKSNoMatchingKey when none of them fits); JwksUnavailableError when no
   * such keys are held and none can be fetched now.
   */
  keyFor: KeySetFunction;
  /**
   * The keys last fetched, however old (undefined before any fetch
   * succeeded): they may refuse a token while the key set cannot be fetched,
   * never admit one (a key may have been withdrawn since).
   */
  lastKnown(): KeySetFunction | undefined;
}

export interface SigningKeysOptions {
  /** A fetch that takes longer fails, ms. */
  timeoutMs: number;
  /** Fewest ms between two fetches, successful or not. */
  cooldownMs: number;
  /** Keys fetched longer ago are fetched again before they admit a token, ms. */
  maxAgeMs: number;
}

/** Errors that say the keys were read and none fits the token: no reason to fetch again. */
function isKeyMismatch(err: unknown): boolean {
  return err instanceof errors.JWKSNoMatchingKey ||
    err instanceof errors.JWKSMultipleMatchingKeys || err instanceof errors.JOSENotSupported;
}

export function remoteSigningKeys(url: URL, options: SigningKeysOptions): SigningKeys {
  const remote = createRemoteJWKSet(url, {
    timeoutDuration: options.timeoutMs,
    cooldownDuration: options.cooldownMs,
    cacheMaxAge: options.maxAgeMs,
  });
  let failedAt = -Infinity;
  // jose hands out a copy of its keys: re-imported only when they change.
  let known: { text: string; keys: KeySetFunction } | undefined;

  function lastKnown(): KeySetFunction | undefined {
    const jwks = remote.jwks();
    if (!jwks) return undefined;
    const text = JSON.stringify(jwks);
    if (known?.text !== text) known = { text, keys: createLocalJWKSet(jwks) };
    return known.keys;
  }

  // Keys still within their max age answer alone; without them there is no answer now.
  function withoutFetching(header: JWTHeaderParameters, token: FlattenedJWSInput) {
    const keys = remote.fresh ? lastKnown() : undefined;
    if (keys) return keys(header, token);
    throw new JwksUnavailableError(
      "the project's signing keys could not be fetched",
      Math.max(0, failedAt + options.cooldownMs - Date.now()),
    );
  }

  async function keyFor(header: JWTHeaderParameters, token: FlattenedJWSInput) {
    if (Date.now() < failedAt + options.cooldownMs) return await withoutFetching(header, token);
    try {
      return await remote(header, token);
    } catch (err) {
      if (isKeyMismatch(err)) throw err;
      // Concurrent tokens share jose's one pending fetch, and so its failure.
      failedAt = Date.now();
      return await withoutFetching(header, token);
    }
  }

  return { keyFor, lastKnown };
}
