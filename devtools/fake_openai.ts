// A fake OpenAI-compatible embeddings endpoint on loopback for tests: answers
// POST /v1/embeddings with deterministic vectors (float or base64), with
// injectable latency and faults (status codes, outages, slowness, malformed or
// wrong-sized answers), and OpenAI-style rate limits (requests and tokens per
// minute, enforced over sliding one-minute windows, with OpenAI's
// x-ratelimit-* headers, or none). Its Batch API (/v1/files, /v1/batches) is
// in fake_batches.ts.
import { hashEmbed } from "../supabase/functions/_shared/providers/local.ts";
import { tokenCounterFor } from "../supabase/functions/_shared/providers/tokens.ts";
import { sleep } from "../supabase/functions/_shared/sleep.ts";
import {
  type BatchBehaviour,
  createFakeBatchApi,
  emptyBatchStats,
  type FakeBatchStats,
  resetBatchStats,
} from "./fake_batches.ts";
import { apiError, base64Float32, json } from "./fake_http.ts";

export type { BatchBehaviour } from "./fake_batches.ts";

/**
 * Which endpoints a status or outage fault hits: the embeddings path, the
 * Batch API's (/v1/files, /v1/batches), or both (the default).
 */
export type FaultTarget = "embeddings" | "batches" | "all";

export type Fault =
  /** Answer `status` (with `Retry-After` and `body` if given). */
  | {
    kind: "status";
    status: number;
    times?: number;
    retryAfter?: string;
    body?: string;
    on?: FaultTarget;
  }
  /** 503 for every request until epoch ms `untilMs`. */
  | { kind: "outage"; untilMs: number; on?: FaultTarget }
  /**
   * Wait `delayMs` before answering. Meant to exceed the client timeout, so
   * these requests count as failed even if the answer arrives in time.
   */
  | { kind: "slow"; delayMs: number; times?: number }
  /** 200 with a body that is not JSON. */
  | { kind: "malformed"; times?: number }
  /** 200 with vectors one dimension longer than requested. */
  | { kind: "wrong-dimensions"; times?: number }
  /** 400 for any request with an input containing `contains`. */
  | { kind: "reject-text"; contains: string }
  /** Answers lists of floats whatever encoding was asked for, as some compatible servers do. */
  | { kind: "floats" }
  /** 200 with `value` (NaN, ±Infinity) as the first value of every vector (base64 answers). */
  | { kind: "non-finite"; value: number; times?: number };

/** What the fake received; the embeddings path's figures never count batch work. */
export interface FakeOpenAIStats extends FakeBatchStats {
  /** Every request to the embeddings path, failed or not. */
  requests: number;
  /** Inputs of successful requests. */
  inputs: number;
  /** Requests that failed because of a fault. */
  failedRequests: number;
  /** Every input received, in order, including those of failed requests. */
  texts: string[];
  /** Inputs of successful requests, in order: repeats here are paid-for duplicate work. */
  embeddedTexts: string[];
  /** Requests refused with 429 by the rate limits (counted in failedRequests too). */
  rateLimited: number;
  /** Tokens of successful requests, by the model's tokenizer (as usage reports them). */
  tokens: number;
}

/**
 * Rate limits as OpenAI applies them to an account and model: at most
 * `requestsPerMinute` requests and `tokensPerMinute` input tokens in any
 * one-minute window (sliding: the strictest reading). A request over either
 * is answered 429 with `retry-after-ms` and `retry-after`, and is not
 * counted. `headers` (default true): every answer carries OpenAI's
 * x-ratelimit-* headers; false, for a provider that sends none.
 */
export interface FakeRateLimits {
  requestsPerMinute?: number;
  tokensPerMinute?: number;
  headers?: boolean;
  /**
   * The window starts full, its tokens spread evenly over the last minute
   * (in 60 requests), as for an account that has been at its limit: room
   * comes back at the limit's rate, the steady state of a long backlog.
   * Default: the window starts empty (a whole minute's worth at once).
   */
  startFull?: boolean;
}

export interface FakeOpenAI {
  /** e.g. `http://127.0.0.1:PORT/v1`, for the SDK's `baseURL`. */
  baseURL: string;
  stats: FakeOpenAIStats;
  /** Requests to the embeddings path received and not yet answered. */
  readonly inFlight: number;
  /**
   * Holds every request, once its inputs are in `stats.texts`, until
   * release(): a test can see what the provider received while it is still
   * busy with it.
   */
  hold(): void;
  /** Lets held requests go on (and stops holding new ones). */
  release(): void;
  resetStats(): void;
  setLatency(ms: number): void;
  /** Injects a fault; `times` (default unlimited) counts affected requests. */
  setFault(f: Fault | null): void;
  /** Sets the rate limits (null: none), forgetting the window so far. */
  setRateLimits(limits: FakeRateLimits | null): void;
  /** How the Batch API behaves from now on (replacing what was set before). */
  setBatchBehaviour(behaviour: BatchBehaviour): void;
  /** Files the Batch API holds now (uploaded or made, not deleted). */
  readonly storedFiles: number;
  close(): Promise<void>;
}

const DEFAULT_DIMENSIONS = 1536;

/**
 * The fake's vector for `text`: pseudo-random from a hash of the text,
 * L2-normalised. Deterministic, so tests can compare stored embeddings.
 */
export function fakeVector(text: string, dimensions: number): number[] {
  return Array.from(fakeValues(text, dimensions));
}

/**
 * fakeVector's values in a typed array: the bench's provider answers
 * thousands of inputs a second on the same cores as the pipeline it
 * measures, so its own CPU is kept small (no array per step).
 */
function fakeValues(text: string, dimensions: number): Float64Array {
  const next = prng(hash32(text, 0x811c9dc5), hash32(text, 0x01234567), text.length, dimensions);
  const values = new Float64Array(dimensions);
  let sum = 0;
  for (let i = 0; i < dimensions; i++) {
    const v = next() * 2 - 1;
    values[i] = v;
    sum += v * v;
  }
  const norm = Math.sqrt(sum) || 1;
  for (let i = 0; i < dimensions; i++) values[i] /= norm;
  return values;
}

function hash32(text: string, seed: number): number {
  let h = seed;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** sfc32: a small PRNG with 128 bits of state (`d` is its counter); floats in [0, 1). */
function prng(a: number, b: number, c: number, d: number): () => number {
  const step = () => {
    const t = (((a + b) | 0) + d) | 0;
    d = (d + 1) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) | 0;
    return (t >>> 0) / 4294967296;
  };
  for (let i = 0; i < 12; i++) step(); // mix the seed
  return step;
}

/** A duration as OpenAI writes it in x-ratelimit-reset-*: `120ms`, `6.5s`, `1m0s`. */
export function goDuration(ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.ceil(ms))}ms`;
  const minutes = Math.floor(ms / 60_000);
  const seconds = Math.round((ms - minutes * 60_000) / 10) / 100;
  return minutes > 0 ? `${minutes}m${seconds}s` : `${seconds}s`;
}

const WINDOW_MS = 60_000;

/** The sliding windows of FakeRateLimits: what went through in the last minute. */
class RateWindow {
  readonly #calls: { at: number; tokens: number }[] = [];
  #tokens = 0;

  constructor(readonly limits: FakeRateLimits, now = Date.now()) {
    if (limits.startFull && limits.tokensPerMinute !== undefined) {
      const each = limits.tokensPerMinute / 60;
      for (let i = 0; i < 60; i++) {
        this.#calls.push({ at: now - WINDOW_MS + (i + 1) * 1000, tokens: each });
      }
      this.#tokens = limits.tokensPerMinute;
    }
  }

  #prune(now: number) {
    while (this.#calls.length && this.#calls[0].at <= now - WINDOW_MS) {
      this.#tokens -= this.#calls.shift()!.tokens;
    }
  }

  /** Takes the request if both windows have room; else ms until they would (at least 1). */
  take(tokens: number, now = Date.now()): number {
    this.#prune(now);
    const { requestsPerMinute: rpm = Infinity, tokensPerMinute: tpm = Infinity } = this.limits;
    let waitUntil = now;
    if (this.#calls.length + 1 > rpm) {
      waitUntil = Math.max(waitUntil, this.#calls[this.#calls.length - rpm].at + WINDOW_MS);
    }
    if (this.#tokens + tokens > tpm) {
      let freed = 0;
      let until = now + WINDOW_MS;
      for (const call of this.#calls) {
        freed += call.tokens;
        if (this.#tokens - freed + tokens <= tpm) {
          until = call.at + WINDOW_MS;
          break;
        }
      }
      waitUntil = Math.max(waitUntil, until);
    }
    if (waitUntil > now) return Math.max(1, waitUntil - now);
    this.#calls.push({ at: now, tokens });
    this.#tokens += tokens;
    return 0;
  }

  /** OpenAI's headers for the window as it is now. */
  headers(now = Date.now()): Record<string, string> {
    this.#prune(now);
    if (this.limits.headers === false) return {};
    const headers: Record<string, string> = {};
    const whole = this.#calls.length ? this.#calls[this.#calls.length - 1].at + WINDOW_MS - now : 0;
    const { requestsPerMinute: rpm, tokensPerMinute: tpm } = this.limits;
    if (rpm !== undefined) {
      headers["x-ratelimit-limit-requests"] = String(rpm);
      headers["x-ratelimit-remaining-requests"] = String(Math.max(0, rpm - this.#calls.length));
      headers["x-ratelimit-reset-requests"] = goDuration(whole);
    }
    if (tpm !== undefined) {
      headers["x-ratelimit-limit-tokens"] = String(tpm);
      headers["x-ratelimit-remaining-tokens"] = String(Math.max(0, tpm - this.#tokens));
      headers["x-ratelimit-reset-tokens"] = goDuration(whole);
    }
    return headers;
  }
}

/** The answer of an injected status fault. */
function statusFault(fault: Extract<Fault, { kind: "status" }>): Response {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (fault.retryAfter !== undefined) headers["retry-after"] = fault.retryAfter;
  const text = fault.body ??
    JSON.stringify({
      error: { message: `injected ${fault.status}`, type: "fake_fault", param: null, code: null },
    });
  return new Response(text, { status: fault.status, headers });
}

export async function startFakeOpenAI(
  opts: {
    latencyMs?: number;
    perInputMs?: number;
    /**
     * "random" (default): pseudo-random vectors per text (fakeVector);
     * "lexical": the offline embedder's feature hashing (texts sharing words
     * come out close), for tests of search relevance.
     */
    vectors?: "random" | "lexical";
    rateLimits?: FakeRateLimits;
  } = {},
): Promise<FakeOpenAI> {
  const vectorOf: (text: string, dimensions: number) => number[] | Float64Array =
    opts.vectors === "lexical" ? hashEmbed : fakeValues;
  let latencyMs = opts.latencyMs ?? 0;
  const perInputMs = opts.perInputMs ?? 0;
  let fault: Fault | null = null;
  let faultLeft = Infinity;
  let inFlight = 0;
  let window = opts.rateLimits ? new RateWindow(opts.rateLimits) : null;
  let held: PromiseWithResolvers<void> | null = null;
  const closing = new AbortController();
  const stats: FakeOpenAIStats = {
    requests: 0,
    inputs: 0,
    failedRequests: 0,
    texts: [],
    embeddedTexts: [],
    rateLimited: 0,
    tokens: 0,
    ...emptyBatchStats(),
  };

  const closed = new Promise<void>((r) => closing.signal.addEventListener("abort", () => r()));

  /** Resolves after `ms`, or early when the server closes. */
  const pause = (ms: number) => sleep(ms, closing.signal);

  /** The fault for this request to `path`, if any, counting it against `times`. */
  const takeFault = (path: "embeddings" | "batches"): Fault | null => {
    if (!fault) return null;
    const current = fault;
    const on = current.kind === "status" || current.kind === "outage"
      ? current.on ?? "all"
      : "embeddings";
    if (on !== "all" && on !== path) return null;
    if (current.kind === "outage") {
      if (Date.now() < current.untilMs) return current;
      fault = null;
      return null;
    }
    if (--faultLeft <= 0) fault = null;
    return current;
  };

  const batchApi = createFakeBatchApi({
    stats,
    vectorOf,
    faultAnswer() {
      const active = takeFault("batches");
      if (active?.kind === "outage") {
        return apiError(503, "service unavailable (injected outage)", "server_error");
      }
      if (active?.kind === "status") return statusFault(active);
      return null;
    },
  });

  const handle = async (request: Request): Promise<Response> => {
    const url = new URL(request.url);
    const batchAnswer = batchApi.handle(request, url);
    if (batchAnswer) return await batchAnswer;
    if (url.pathname !== "/v1/embeddings") {
      return apiError(404, "not found", "invalid_request_error");
    }
    if (request.method !== "POST") return apiError(405, "use POST", "invalid_request_error");
    inFlight++;
    try {
      return await embeddings(request);
    } finally {
      inFlight--;
    }
  };

  const embeddings = async (request: Request): Promise<Response> => {
    stats.requests++;
    if (!/^Bearer \S+/.test(request.headers.get("authorization") ?? "")) {
      stats.failedRequests++;
      return apiError(401, "missing bearer token", "invalid_request_error", "invalid_api_key");
    }
    let body: { model?: unknown; input?: unknown; dimensions?: unknown; encoding_format?: unknown };
    try {
      body = await request.json();
    } catch {
      stats.failedRequests++;
      return apiError(400, "body is not JSON", "invalid_request_error");
    }
    const inputs = typeof body.input === "string" ? [body.input] : body.input;
    const dimensions = body.dimensions ?? DEFAULT_DIMENSIONS;
    const format = body.encoding_format ?? "float";
    if (
      typeof body.model !== "string" || body.model === "" ||
      !Array.isArray(inputs) || inputs.length === 0 ||
      !inputs.every((t) => typeof t === "string") ||
      typeof dimensions !== "number" || !Number.isInteger(dimensions) || dimensions < 1 ||
      (format !== "float" && format !== "base64")
    ) {
      stats.failedRequests++;
      return apiError(400, "invalid embeddings request", "invalid_request_error");
    }
    const texts = inputs as string[];
    stats.texts.push(...texts);
    const counter = tokenCounterFor(body.model);
    const tokens = texts.reduce((sum, t) => sum + counter.count(t), 0);
    // Counted when it arrives, as a provider's limiter does.
    const limits = window;
    const refusedForMs = limits?.take(tokens) ?? 0;
    if (limits && refusedForMs > 0) {
      stats.failedRequests++;
      stats.rateLimited++;
      return apiError(
        429,
        `Rate limit reached for ${body.model}: try again in ${goDuration(refusedForMs)}`,
        "requests",
        "rate_limit_exceeded",
        {
          ...limits.headers(),
          "retry-after-ms": String(refusedForMs),
          "retry-after": String(Math.ceil(refusedForMs / 1000)),
        },
      );
    }
    const limitHeaders = limits?.headers() ?? {};
    if (held) await Promise.race([held.promise, closed]);
    await pause(latencyMs + perInputMs * texts.length);

    const active = fault?.kind === "reject-text"
      ? (texts.some((t) => t.includes((fault as { contains: string }).contains)) ? fault : null)
      : takeFault("embeddings");
    let wrongDimensions = false;
    let failed = false;
    let floats = false;
    let first: number | undefined;
    if (active) {
      switch (active.kind) {
        case "status":
          stats.failedRequests++;
          return statusFault(active);
        case "outage":
          stats.failedRequests++;
          return apiError(503, "service unavailable (injected outage)", "server_error");
        case "slow":
          await pause(active.delayMs);
          failed = true;
          break;
        case "malformed":
          stats.failedRequests++;
          return new Response('{"object": "list", "data": [{"embedding": [0.1, ', {
            status: 200,
            headers: { "content-type": "application/json" },
          });
        case "wrong-dimensions":
          wrongDimensions = failed = true;
          break;
        case "reject-text":
          stats.failedRequests++;
          return apiError(400, "an input was rejected (injected)", "invalid_request_error");
        case "floats":
          floats = true;
          break;
        case "non-finite":
          first = active.value;
          failed = true;
          break;
      }
    }
    if (failed) stats.failedRequests++;
    else {
      stats.inputs += texts.length;
      stats.embeddedTexts.push(...texts);
      stats.tokens += tokens;
    }
    const size = wrongDimensions ? dimensions + 1 : dimensions;
    // Listed in reverse: the API promises `index`, not order, so clients must sort.
    const data = texts.map((text, index) => {
      const vector = vectorOf(text, size);
      if (first !== undefined) vector[0] = first;
      return {
        object: "embedding",
        index,
        embedding: format === "base64" && !floats ? base64Float32(vector) : Array.from(vector),
      };
    }).reverse();
    return json(200, {
      object: "list",
      data,
      model: body.model,
      usage: { prompt_tokens: tokens, total_tokens: tokens },
    }, limitHeaders);
  };

  const listening = Promise.withResolvers<Deno.NetAddr>();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: (addr) => listening.resolve(addr) },
    handle,
  );
  const { port } = await listening.promise;
  return {
    baseURL: `http://127.0.0.1:${port}/v1`,
    stats,
    get inFlight() {
      return inFlight;
    },
    hold() {
      held ??= Promise.withResolvers<void>();
    },
    release() {
      held?.resolve();
      held = null;
    },
    resetStats() {
      stats.requests = 0;
      stats.inputs = 0;
      stats.failedRequests = 0;
      stats.texts.length = 0;
      stats.embeddedTexts.length = 0;
      stats.rateLimited = 0;
      stats.tokens = 0;
      resetBatchStats(stats);
    },
    setRateLimits(limits: FakeRateLimits | null) {
      window = limits ? new RateWindow(limits) : null;
    },
    setBatchBehaviour(behaviour: BatchBehaviour) {
      batchApi.setBehaviour(behaviour);
    },
    get storedFiles() {
      return batchApi.storedFiles;
    },
    setLatency(ms: number) {
      latencyMs = ms;
    },
    setFault(f: Fault | null) {
      faultLeft = f && "times" in f && f.times !== undefined ? f.times : Infinity;
      fault = faultLeft > 0 ? f : null;
    },
    async close() {
      closing.abort();
      await server.shutdown();
    },
  };
}
