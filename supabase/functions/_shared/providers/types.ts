// The one interface every embedding provider implements, and the one place
// that decides whether a provider failure is worth retrying.
import { APIConnectionError, APIConnectionTimeoutError, APIError, APIUserAbortError } from "openai";
import type { Vector } from "../vectors.ts";
import type { TokenCounter } from "./tokens.ts";
import { type RateLimitInfo, rateLimitsOf } from "./rate_limits.ts";

/**
 * Whose rate limits a provider's calls count against: its endpoint, a
 * fingerprint of its key (never the key) and the model. One rate budget
 * per key (rate_budget.ts).
 */
export interface BudgetKey {
  baseURL: string;
  keyFingerprint: string;
  model: string;
}

/** What a successful call's response said besides its vectors. */
export interface CallReport {
  /** Tokens the provider counted (usage.prompt_tokens), when it said. */
  usedTokens?: number;
  limits: RateLimitInfo;
}

/**
 * A provider for one model at one size. Its limits and token counter are
 * the model's facts in the registry (registry.ts), never figures of its own.
 */
export interface EmbeddingProvider {
  /** Model name as configured on the table (util.embedding_targets). */
  readonly model: string;
  /** Length of every vector `embed` returns. */
  readonly dimensions: number;
  /** Most inputs one `embed` call may carry. */
  readonly maxBatchInputs: number;
  /** Most tokens (by `tokens`) one `embed` call may carry. */
  readonly maxBatchTokens: number;
  /** Most tokens (by `tokens`) one input may have. */
  readonly maxInputTokens: number;
  /**
   * Counts tokens as the model does (its real tokenizer where one is known,
   * else an estimate that errs high; see tokens.ts): the unit of the limits
   * above and of chunk sizes.
   */
  readonly tokens: TokenCounter;
  /** The rate budget its calls draw from; none for providers that run here. */
  readonly budgetKey?: BudgetKey;
  /**
   * One vector per text, in the order of `texts`. Fails with a ProviderError,
   * or with whatever aborted the call when `signal` is aborted. `report`
   * hears what a successful response said about usage and rate limits.
   */
  embed(
    texts: string[],
    signal?: AbortSignal,
    report?: (report: CallReport) => void,
  ): Promise<Vector[]>;
}

/**
 * A failed provider call. `retryable` tells the queue whether to try again
 * later (with backoff, or after `retryAfterMs` when the provider said so).
 * The message is stored where users can read it: it never holds input text
 * or credentials.
 */
export class ProviderError extends Error {
  readonly retryable: boolean;
  readonly status?: number;
  readonly retryAfterMs?: number;
  /** What the failed response's headers said about rate limits. */
  readonly rateLimits?: RateLimitInfo;

  constructor(
    message: string,
    opts: {
      retryable: boolean;
      status?: number;
      retryAfterMs?: number;
      rateLimits?: RateLimitInfo;
      cause?: unknown;
    },
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = "ProviderError";
    this.retryable = opts.retryable;
    if (opts.status !== undefined) this.status = opts.status;
    if (opts.retryAfterMs !== undefined) this.retryAfterMs = opts.retryAfterMs;
    if (opts.rateLimits !== undefined) this.rateLimits = opts.rateLimits;
  }
}

export interface ErrorContext {
  /** Names the model in the message. */
  model?: string;
  /** The client timeout, to say how long was waited. */
  timeoutMs?: number;
  /** Strings that must not appear in the message (API key, input texts). */
  redact?: readonly string[];
}

/**
 * Turns any error from an embedding call into a ProviderError:
 * 429, 408, 409 and 5xx, timeouts, connection failures and malformed
 * responses are retryable; other 4xx (bad request, auth, unknown model) are
 * permanent. Server-written error text is not copied into the message, as
 * a provider may echo the input; only its status and error code are.
 */
export function classifyProviderError(err: unknown, context: ErrorContext = {}): ProviderError {
  if (err instanceof ProviderError) return err;
  const prefix = context.model ? `embedding with ${context.model} failed: ` : "embedding failed: ";
  const make: Make = (message, opts) =>
    new ProviderError(prefix + message, { ...opts, cause: err });

  if (err instanceof APIUserAbortError || isDomError(err, "AbortError")) {
    return make("the request was aborted before the endpoint answered", { retryable: true });
  }
  if (err instanceof APIConnectionTimeoutError || isDomError(err, "TimeoutError")) {
    const waited = context.timeoutMs
      ? ` within ${context.timeoutMs} ms (EMBEDDING_TIMEOUT_MS)`
      : "";
    return make(`the endpoint did not answer${waited}`, { retryable: true });
  }
  if (err instanceof APIConnectionError) {
    const cause = describeCause((err as { cause?: unknown }).cause, context.redact);
    return make(`could not reach the endpoint (check OPENAI_BASE_URL)${cause}`, {
      retryable: true,
    });
  }
  const status = httpStatus(err);
  if (status !== undefined) return classifyStatus(err, status, make, context.redact);
  if (err instanceof SyntaxError) {
    return make("the endpoint answered with malformed JSON", { retryable: true });
  }
  return make(`unexpected error${describeCause(err, context.redact)}`, { retryable: true });
}

type Make = (
  message: string,
  opts: { retryable: boolean; status?: number; retryAfterMs?: number; rateLimits?: RateLimitInfo },
) => ProviderError;

function classifyStatus(
  err: unknown,
  status: number,
  make: Make,
  redact: readonly string[] = [],
): ProviderError {
  const code = errorCode(err, redact);
  const label = `${status}${code ? ` ${code}` : ""}`;
  if (status === 429) {
    const headers = headersOf(err);
    const retryAfterMs = retryAfterMsOf(headers);
    const when = retryAfterMs === undefined
      ? "retrying with backoff"
      : `retrying after ${Math.ceil(retryAfterMs / 1000)} s`;
    return make(`rate limited by the endpoint (${label}); ${when}`, {
      retryable: true,
      status,
      retryAfterMs,
      rateLimits: headers instanceof Headers ? rateLimitsOf(headers) : undefined,
    });
  }
  if (status === 408 || status === 409 || status >= 500) {
    // A 503 (or a gateway's 502/504) may say when to come back, as 429 does.
    const retryAfterMs = retryAfterMsOf(headersOf(err));
    const when = retryAfterMs === undefined
      ? "retrying with backoff"
      : `retrying after ${Math.ceil(retryAfterMs / 1000)} s`;
    return make(`the endpoint failed (${label}); ${when}`, {
      retryable: true,
      status,
      retryAfterMs,
    });
  }
  if (status === 401 || status === 403) {
    return make(
      `the endpoint refused the credentials (${label}): check OPENAI_API_KEY ` +
        `(and OPENAI_BASE_URL if you use another endpoint)`,
      { retryable: false, status },
    );
  }
  if (status === 404) {
    return make(
      `the endpoint does not know this model or path (${label}): check the table's model and ` +
        `OPENAI_BASE_URL`,
      { retryable: false, status },
    );
  }
  return make(
    `the endpoint rejected the request (${label}): an input may be too long or invalid for the ` +
      `model, or the model may not accept these dimensions`,
    { retryable: false, status },
  );
}

/**
 * Milliseconds to wait, from `retry-after-ms`, or `retry-after` as seconds
 * or an HTTP date. Undefined when absent or unreadable.
 */
export function retryAfterMsOf(
  headers: Headers | Record<string, string | null | undefined> | undefined,
  now = Date.now(),
): number | undefined {
  if (!headers) return undefined;
  const get = (name: string) =>
    headers instanceof Headers ? headers.get(name) : headers[name] ?? headers[name.toLowerCase()];
  const ms = get("retry-after-ms");
  if (ms && /^\s*\d+(\.\d+)?\s*$/.test(ms)) return Math.round(Number(ms));
  const value = get("retry-after")?.trim();
  if (!value) return undefined;
  if (/^\d+(\.\d+)?$/.test(value)) return Math.round(Number(value) * 1000);
  const date = Date.parse(value);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, date - now);
}

/** The HTTP status of a failed call (an SDK APIError or anything with a `status`), if any. */
export function httpStatus(err: unknown): number | undefined {
  const status = err instanceof APIError
    ? err.status
    : (err as { status?: unknown } | null)?.status;
  return typeof status === "number" && status >= 100 && status <= 599 ? status : undefined;
}

function headersOf(err: unknown): Headers | Record<string, string> | undefined {
  const headers = (err as { headers?: unknown } | null)?.headers;
  if (headers instanceof Headers) return headers;
  if (headers && typeof headers === "object") return headers as Record<string, string>;
  return undefined;
}

/**
 * The API's machine-readable error code or type, if it looks like an
 * identifier and is no piece of an input or the key (an endpoint may echo
 * those in any field).
 */
function errorCode(err: unknown, redact: readonly string[]): string | undefined {
  const e = err as { code?: unknown; type?: unknown } | null;
  for (const value of [e?.code, e?.type]) {
    if (
      typeof value === "string" && /^[A-Za-z0-9_.-]{1,64}$/.test(value) &&
      !redact.some((secret) =>
        secret.includes(value) || (secret.length >= 4 && value.includes(secret))
      )
    ) return value;
  }
  return undefined;
}

function isDomError(err: unknown, name: string): boolean {
  return typeof err === "object" && err !== null && (err as { name?: unknown }).name === name;
}

/**
 * A short description of an underlying error (e.g. "connection refused") for
 * errors that come from our side of the wire, with secrets and inputs cut out.
 */
function describeCause(cause: unknown, redact: readonly string[] = []): string {
  if (!(cause instanceof Error)) return "";
  let text = `${cause.name}: ${cause.message}`;
  for (const secret of redact) {
    if (secret.length >= 4) text = text.split(secret).join("[redacted]");
  }
  text = text.replace(/\b(sk|pk|rk)-[A-Za-z0-9_-]{8,}/g, "[redacted]")
    .replace(/\/\/[^/@\s]+@/g, "//[redacted]@");
  return ` (${text.length > 200 ? `${text.slice(0, 200)}...` : text})`;
}

/**
 * The provider for a target's model, or the ProviderError that setting it
 * up raised (a missing key, an unknown model): the caller fails that
 * target's rows with it instead of the whole batch.
 */
export function providerOrError(
  providerFor: (model: string, dimensions: number) => EmbeddingProvider,
  target: { model: string; dimensions: number },
): EmbeddingProvider | ProviderError {
  try {
    return providerFor(target.model, target.dimensions);
  } catch (err) {
    if (err instanceof ProviderError) return err;
    return new ProviderError(
      `cannot set up the provider for ${target.model}: ${(err as Error).message}`,
      { retryable: false },
    );
  }
}
