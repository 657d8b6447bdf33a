// The fake provider's Batch API: /v1/files and /v1/batches as OpenAI answers
// them for embeddings batches (validation, the enqueued-token limit, output
// and error files, expiry, cancellation), on a clock the test sets.
// fake_openai.ts routes these paths here.
import { tokenCounterFor } from "../supabase/functions/_shared/providers/tokens.ts";
import { apiError, base64Float32, json } from "./fake_http.ts";

/** How batches behave; read when a batch moves on, so a test may change it midway. */
export interface BatchBehaviour {
  /**
   * Time from a batch's creation to its end (default 0). A batch moves on
   * only when it is looked at (retrieved or listed): with 0 it is
   * `validating` when created and done at the first look.
   */
  completionDelayMs?: number;
  /** Lines whose text this accepts go to the error file (status 400, code invalid_request). */
  failLine?: (text: string) => boolean;
  /** The status of those lines instead of 400 (e.g. 500, code server_error: a passing failure). */
  failStatus?: number;
  /**
   * The batch ends `expired` after the delay, with output for only the first
   * `fraction` of its lines; the others go to the error file (batch_expired).
   */
  expire?: { fraction: number };
  /**
   * Tokens (by the model's tokenizer) of batches of one model not yet ended
   * (validating, in_progress, finalizing) the account may hold; a batch that
   * would go over fails with token_limit_exceeded.
   */
  enqueuedTokenLimit?: number;
  /** 404 on /v1/files and /v1/batches, as servers without the API answer. */
  unsupported?: boolean;
}

export interface FakeBatchStats {
  /** Batches created (POST /v1/batches answered 200). */
  batches: number;
  /** Lines of created batches. */
  batchInputs: number;
  /** Tokens of created batches' lines, by the model's tokenizer. */
  batchTokens: number;
  /** Texts given a vector in an output file, in order: repeats are paid-for duplicate work. */
  batchEmbeddedTexts: string[];
  filesUploaded: number;
  /** Every HTTP call to /v1/files and /v1/batches, failed or not. */
  batchRequests: number;
}

export function emptyBatchStats(): FakeBatchStats {
  return {
    batches: 0,
    batchInputs: 0,
    batchTokens: 0,
    batchEmbeddedTexts: [],
    filesUploaded: 0,
    batchRequests: 0,
  };
}

export function resetBatchStats(stats: FakeBatchStats) {
  stats.batches = stats.batchInputs = stats.batchTokens = 0;
  stats.filesUploaded = stats.batchRequests = 0;
  stats.batchEmbeddedTexts.length = 0;
}

export interface FakeBatchApi {
  /** The answer to a request on /v1/files or /v1/batches, or null for other paths. */
  handle(request: Request, url: URL): Promise<Response> | null;
  setBehaviour(behaviour: BatchBehaviour): void;
  /** Files stored now (uploaded or made, not deleted). */
  readonly storedFiles: number;
}

/** The per-file limits OpenAI applies when it validates a batch. */
const MAX_REQUESTS = 50_000;
const MAX_BYTES = 200 * 1024 * 1024;
const DEFAULT_DIMENSIONS = 1536;
const DAY_SECONDS = 24 * 60 * 60;
/** Most validation errors one batch reports. */
const MAX_ERRORS = 10;

type Status =
  | "validating"
  | "failed"
  | "in_progress"
  | "finalizing"
  | "completed"
  | "expired"
  | "cancelling"
  | "cancelled";

const ENQUEUED: ReadonlySet<Status> = new Set(["validating", "in_progress", "finalizing"]);

interface StoredFile {
  id: string;
  filename: string;
  purpose: string;
  createdAt: number;
  /** Uploaded bytes, or the lines of a file the fake makes (generated when read). */
  content: Uint8Array<ArrayBuffer> | (() => Iterable<string>);
}

interface BatchError {
  code: string;
  message: string;
  param: string | null;
  line: number | null;
}

interface BatchLine {
  customId: string;
  body: { model?: unknown; input?: unknown; dimensions?: unknown; encoding_format?: unknown };
}

interface Batch {
  id: string;
  seq: number;
  createdMs: number;
  object: Record<string, unknown>;
  status: Status;
  model: string | null;
  requests: BatchLine[];
  tokens: number;
  /** Found when created, told at the first look (as OpenAI validates asynchronously). */
  invalid: BatchError[] | null;
}

/** What happened to one line. */
type Outcome =
  | { kind: "vector" }
  | { kind: "rejected"; status: number; code: string; message: string }
  | { kind: "not-run"; code: "batch_expired" };

export function createFakeBatchApi(deps: {
  stats: FakeBatchStats;
  vectorOf: (text: string, dimensions: number) => ArrayLike<number>;
  /** The fault (status or outage) injected for batch endpoints, if any, as an answer. */
  faultAnswer: () => Response | null;
}): FakeBatchApi {
  const { stats, vectorOf } = deps;
  const files = new Map<string, StoredFile>();
  const batches = new Map<string, Batch>();
  let behaviour: BatchBehaviour = {};
  let seq = 0;

  const newId = (prefix: string) => `${prefix}${crypto.randomUUID().replaceAll("-", "")}`;
  const seconds = (ms = Date.now()) => Math.floor(ms / 1000);

  const fileObject = (file: StoredFile) => ({
    id: file.id,
    object: "file",
    bytes: fileBytes(file),
    created_at: file.createdAt,
    filename: file.filename,
    purpose: file.purpose,
    status: "processed",
    expires_at: null,
    status_details: null,
  });

  // --- /v1/files --------------------------------------------------------------

  const uploadFile = async (request: Request): Promise<Response> => {
    let form: FormData;
    try {
      form = await request.formData();
    } catch {
      return apiError(400, "expected a multipart form", "invalid_request_error");
    }
    const file = form.get("file");
    const purpose = form.get("purpose");
    if (!(file instanceof File) || typeof purpose !== "string" || purpose === "") {
      return apiError(400, "a file and a purpose are required", "invalid_request_error");
    }
    const stored: StoredFile = {
      id: newId("file-"),
      filename: file.name,
      purpose,
      createdAt: seconds(),
      content: new Uint8Array(await file.arrayBuffer()),
    };
    files.set(stored.id, stored);
    stats.filesUploaded++;
    return json(200, fileObject(stored));
  };

  const fileRoute = (request: Request, id: string, content: boolean): Response => {
    const file = files.get(id);
    if (!file) return apiError(404, `No such File object: ${id}`, "invalid_request_error");
    if (content) {
      if (request.method !== "GET") return apiError(405, "use GET", "invalid_request_error");
      const body = file.content instanceof Uint8Array
        ? file.content
        : ReadableStream.from(encodedChunks(file.content()));
      return new Response(body, { headers: { "content-type": "application/octet-stream" } });
    }
    if (request.method === "DELETE") {
      files.delete(id);
      return json(200, { id, object: "file", deleted: true });
    }
    if (request.method === "GET") return json(200, fileObject(file));
    return apiError(405, "use GET or DELETE", "invalid_request_error");
  };

  // --- /v1/batches ------------------------------------------------------------

  const createBatch = async (request: Request): Promise<Response> => {
    let body: {
      input_file_id?: unknown;
      endpoint?: unknown;
      completion_window?: unknown;
      metadata?: unknown;
    };
    try {
      body = await request.json();
    } catch {
      return apiError(400, "body is not JSON", "invalid_request_error");
    }
    if (body.completion_window !== "24h") {
      return apiError(400, "completion_window must be 24h", "invalid_request_error");
    }
    if (typeof body.endpoint !== "string") {
      return apiError(400, "endpoint is required", "invalid_request_error");
    }
    const metadata = body.metadata ?? {};
    if (!validMetadata(metadata)) {
      return apiError(
        400,
        "metadata: at most 16 keys of up to 64 characters, string values of up to 512",
        "invalid_request_error",
      );
    }
    const input = typeof body.input_file_id === "string" ? files.get(body.input_file_id) : null;
    if (!input || !(input.content instanceof Uint8Array)) {
      return apiError(400, "input_file_id names no uploaded file", "invalid_request_error");
    }
    if (input.purpose !== "batch") {
      return apiError(
        400,
        "the input file must be uploaded with purpose batch",
        "invalid_request_error",
      );
    }
    const { requests, errors } = validate(input.content, body.endpoint);
    const model = typeof requests[0]?.body.model === "string" ? requests[0].body.model : null;
    const counter = tokenCounterFor(model ?? "");
    const tokens = requests.reduce((sum, r) =>
      sum + inputTexts(r.body.input).reduce(
        (s, text) => s + counter.count(text),
        0,
      ), 0);
    if (errors.length === 0 && behaviour.enqueuedTokenLimit !== undefined) {
      const enqueued = [...batches.values()]
        .filter((b) => b.model === model && b.invalid === null && ENQUEUED.has(b.status))
        .reduce((sum, b) => sum + b.tokens, 0);
      if (enqueued + tokens > behaviour.enqueuedTokenLimit) {
        errors.push({
          code: "token_limit_exceeded",
          message: `Enqueued token limit reached for ${model}. Limit: ` +
            `${behaviour.enqueuedTokenLimit} enqueued tokens. Please try again once some ` +
            `in_progress batches have been completed.`,
          param: null,
          line: null,
        });
      }
    }
    const now = Date.now();
    const id = newId("batch_");
    const batch: Batch = {
      id,
      seq: ++seq,
      createdMs: now,
      status: "validating",
      model,
      requests,
      tokens,
      invalid: errors.length ? errors : null,
      object: {
        id,
        object: "batch",
        endpoint: body.endpoint,
        model,
        errors: null,
        input_file_id: input.id,
        completion_window: "24h",
        status: "validating",
        output_file_id: null,
        error_file_id: null,
        created_at: seconds(now),
        in_progress_at: null,
        expires_at: seconds(now) + DAY_SECONDS,
        finalizing_at: null,
        completed_at: null,
        failed_at: null,
        expired_at: null,
        cancelling_at: null,
        cancelled_at: null,
        request_counts: { total: 0, completed: 0, failed: 0 },
        metadata,
      },
    };
    batches.set(id, batch);
    stats.batches++;
    stats.batchInputs += requests.length;
    stats.batchTokens += tokens;
    return json(200, batch.object);
  };

  /**
   * Parses and checks the input file as OpenAI does before it runs a batch.
   * The lines' bodies are checked when they run (a bad one is that line's
   * error), their shape here (a bad one fails the batch).
   */
  const validate = (content: Uint8Array, endpoint: string) => {
    const errors: BatchError[] = [];
    const fail = (code: string, message: string, line: number | null = null) => {
      if (errors.length < MAX_ERRORS) errors.push({ code, message, param: null, line });
    };
    const requests: BatchLine[] = [];
    if (endpoint !== "/v1/embeddings") {
      fail("invalid_endpoint", `this fake runs /v1/embeddings batches only, not ${endpoint}`);
    }
    if (content.length > MAX_BYTES) {
      fail("file_too_large", `the input file is over ${MAX_BYTES} bytes`);
      return { requests, errors };
    }
    const lines = new TextDecoder().decode(content).split("\n");
    if (lines.at(-1) === "") lines.pop();
    if (lines.length > MAX_REQUESTS) {
      fail("too_many_requests", `the input file has more than ${MAX_REQUESTS} requests`);
      return { requests, errors };
    }
    const customIds = new Set<string>();
    let model: unknown;
    lines.forEach((text, index) => {
      const line = index + 1;
      let parsed: { custom_id?: unknown; method?: unknown; url?: unknown; body?: unknown };
      try {
        parsed = JSON.parse(text);
      } catch {
        return fail("invalid_json_line", "This line is not parseable as valid JSON.", line);
      }
      const { custom_id: customId, method, url, body } = parsed ?? {};
      if (typeof customId !== "string" || typeof body !== "object" || body === null) {
        return fail("missing_required_parameter", "custom_id and body are required", line);
      }
      if (method !== "POST") return fail("invalid_method", "method must be POST", line);
      if (url !== endpoint) {
        return fail(
          "mismatched_endpoint",
          `the url must be the batch's endpoint ${endpoint}`,
          line,
        );
      }
      if (customIds.has(customId)) {
        return fail("duplicate_custom_id", "custom_id values must be unique in a batch", line);
      }
      customIds.add(customId);
      const lineModel = (body as { model?: unknown }).model;
      if (index === 0) model = lineModel;
      else if (lineModel !== model) {
        return fail("mismatched_model", "every line of a batch must use the same model", line);
      }
      requests.push({ customId, body: body as BatchLine["body"] });
    });
    if (lines.length === 0) fail("empty_file", "the input file has no requests");
    return { requests, errors };
  };

  /** Moves a batch on as time has passed, when it is looked at. */
  const advance = (batch: Batch, now = Date.now()) => {
    const o = batch.object;
    if (batch.status === "validating") {
      if (batch.invalid) {
        batch.status = "failed";
        o.failed_at = seconds(now);
        o.errors = { object: "list", data: batch.invalid };
      } else {
        batch.status = "in_progress";
        o.in_progress_at = seconds(now);
        o.request_counts = { total: batch.requests.length, completed: 0, failed: 0 };
      }
    }
    if (
      batch.status === "in_progress" &&
      now - batch.createdMs >= (behaviour.completionDelayMs ?? 0)
    ) {
      finish(batch, now);
    }
    if (batch.status === "cancelling") {
      // Cancelled before it completed: nothing was done, so no output.
      batch.status = "cancelled";
      o.cancelled_at = seconds(now);
    }
    o.status = batch.status;
  };

  /** Completes a batch (or expires it), making its output and error files. */
  const finish = (batch: Batch, now: number) => {
    const o = batch.object;
    const expire = behaviour.expire;
    const failLine = behaviour.failLine;
    const runs = expire
      ? Math.floor(Math.min(1, Math.max(0, expire.fraction)) * batch.requests.length)
      : batch.requests.length;
    const outcomes = batch.requests.map((request, index): Outcome => {
      if (index >= runs) return { kind: "not-run", code: "batch_expired" };
      const problem = bodyProblem(request.body);
      if (problem) {
        return { kind: "rejected", status: 400, code: "invalid_request", message: problem };
      }
      if (failLine && inputTexts(request.body.input).some(failLine)) {
        const status = behaviour.failStatus ?? 400;
        return {
          kind: "rejected",
          status,
          code: status >= 500 ? "server_error" : "invalid_request",
          message: "an input was rejected (injected)",
        };
      }
      return { kind: "vector" };
    });
    const done: number[] = [];
    const failed: number[] = [];
    outcomes.forEach((outcome, index) => (outcome.kind === "vector" ? done : failed).push(index));
    for (const index of done) {
      stats.batchEmbeddedTexts.push(...inputTexts(batch.requests[index].body.input));
    }
    const store = (purpose: string, lines: () => Iterable<string>) => {
      const file: StoredFile = {
        id: newId("file-"),
        filename: `${batch.id}_${purpose}.jsonl`,
        purpose,
        createdAt: seconds(now),
        content: lines,
      };
      files.set(file.id, file);
      return file.id;
    };
    if (done.length) {
      o.output_file_id = store("batch_output", function* () {
        for (const index of done) yield outputLine(batch.requests[index]);
      });
    }
    if (failed.length) {
      o.error_file_id = store("batch_output", function* () {
        for (const index of failed) yield errorLine(batch.requests[index], outcomes[index]);
      });
    }
    o.request_counts = {
      total: batch.requests.length,
      completed: done.length,
      failed: failed.length,
    };
    o.finalizing_at = seconds(now);
    if (expire) {
      batch.status = "expired";
      o.expired_at = seconds(now);
    } else {
      batch.status = "completed";
      o.completed_at = seconds(now);
    }
  };

  const outputLine = (request: BatchLine): string => {
    const body = request.body;
    const texts = inputTexts(body.input);
    const model = body.model as string;
    const dimensions = (body.dimensions ?? DEFAULT_DIMENSIONS) as number;
    const counter = tokenCounterFor(model);
    const tokens = texts.reduce((sum, text) => sum + counter.count(text), 0);
    const data = texts.map((text, index) => {
      const vector = vectorOf(text, dimensions);
      return {
        object: "embedding",
        index,
        embedding: body.encoding_format === "base64" ? base64Float32(vector) : Array.from(vector),
      };
    });
    return JSON.stringify({
      id: newId("batch_req_"),
      custom_id: request.customId,
      response: {
        status_code: 200,
        request_id: newId("req_"),
        body: {
          object: "list",
          data,
          model,
          usage: { prompt_tokens: tokens, total_tokens: tokens },
        },
      },
      error: null,
    }) + "\n";
  };

  const errorLine = (request: BatchLine, outcome: Outcome): string => {
    const line = outcome.kind === "rejected"
      ? {
        response: {
          status_code: outcome.status,
          request_id: newId("req_"),
          body: {
            error: {
              message: outcome.message,
              type: "invalid_request_error",
              param: null,
              code: outcome.code,
            },
          },
        },
        error: null,
      }
      : {
        response: null,
        error: {
          code: "batch_expired",
          message: "This request could not be executed before the completion window expired.",
        },
      };
    return JSON.stringify({ id: newId("batch_req_"), custom_id: request.customId, ...line }) +
      "\n";
  };

  const batchRoute = (request: Request, id: string, cancel: boolean): Response => {
    const batch = batches.get(id);
    if (!batch) return apiError(404, `No batch found with id '${id}'.`, "invalid_request_error");
    if (cancel) {
      if (request.method !== "POST") return apiError(405, "use POST", "invalid_request_error");
      if (ENQUEUED.has(batch.status)) {
        batch.status = "cancelling";
        batch.object.status = "cancelling";
        batch.object.cancelling_at = seconds();
      } else if (batch.status !== "cancelling") {
        return apiError(
          400,
          `Cannot cancel a batch with status '${batch.status}'.`,
          "invalid_request_error",
        );
      }
      return json(200, batch.object);
    }
    if (request.method !== "GET") return apiError(405, "use GET", "invalid_request_error");
    advance(batch);
    return json(200, batch.object);
  };

  const listBatches = (url: URL): Response => {
    const limit = Math.min(100, Math.max(1, Number(url.searchParams.get("limit") ?? 20) || 20));
    const after = url.searchParams.get("after");
    const newestFirst = [...batches.values()].sort((a, b) => b.seq - a.seq);
    const start = after === null ? 0 : newestFirst.findIndex((b) => b.id === after) + 1;
    if (after !== null && start === 0) {
      return apiError(400, `after: no batch ${after}`, "invalid_request_error");
    }
    const page = newestFirst.slice(start, start + limit);
    const now = Date.now();
    for (const batch of page) advance(batch, now);
    return json(200, {
      object: "list",
      data: page.map((b) => b.object),
      first_id: page[0]?.id ?? null,
      last_id: page.at(-1)?.id ?? null,
      has_more: start + limit < newestFirst.length,
    });
  };

  const route = async (request: Request, url: URL): Promise<Response> => {
    stats.batchRequests++;
    if (behaviour.unsupported) return apiError(404, "not found", "invalid_request_error");
    if (!/^Bearer \S+/.test(request.headers.get("authorization") ?? "")) {
      return apiError(401, "missing bearer token", "invalid_request_error", "invalid_api_key");
    }
    const fault = deps.faultAnswer();
    if (fault) return fault;
    const parts = url.pathname.split("/").slice(2); // after "/v1"
    const [collection, id, action, ...rest] = parts.map(decodeURIComponent);
    if (rest.length) return apiError(404, "not found", "invalid_request_error");
    if (collection === "files") {
      if (id === undefined) {
        return request.method === "POST"
          ? await uploadFile(request)
          : apiError(405, "use POST", "invalid_request_error");
      }
      if (action === undefined || action === "content") {
        return fileRoute(request, id, action === "content");
      }
    } else {
      if (id === undefined) {
        if (request.method === "POST") return await createBatch(request);
        if (request.method === "GET") return listBatches(url);
        return apiError(405, "use GET or POST", "invalid_request_error");
      }
      if (action === undefined || action === "cancel") {
        return batchRoute(request, id, action === "cancel");
      }
    }
    return apiError(404, "not found", "invalid_request_error");
  };

  return {
    handle(request, url) {
      return /^\/v1\/(files|batches)(\/|$)/.test(url.pathname) ? route(request, url) : null;
    },
    setBehaviour(next) {
      behaviour = { ...next };
    },
    get storedFiles() {
      return files.size;
    },
  };
}

/** The texts of an embeddings request's `input` (a string or a list of them). */
function inputTexts(input: unknown): string[] {
  if (typeof input === "string") return [input];
  return Array.isArray(input) ? input.filter((t): t is string => typeof t === "string") : [];
}

/** Why an embeddings request body would be refused with 400, or null. */
function bodyProblem(body: BatchLine["body"]): string | null {
  const input = body.input;
  const texts = inputTexts(input);
  if (typeof body.model !== "string" || body.model === "") return "model is required";
  if (texts.length === 0 || texts.length !== (Array.isArray(input) ? input.length : 1)) {
    return "input must be a string or a list of strings";
  }
  if (texts.some((t) => t === "")) return "input must not be empty";
  const dimensions = body.dimensions;
  if (
    dimensions !== undefined &&
    (typeof dimensions !== "number" || !Number.isInteger(dimensions) || dimensions < 1)
  ) {
    return "dimensions must be a positive integer";
  }
  const format = body.encoding_format;
  if (format !== undefined && format !== "float" && format !== "base64") {
    return "encoding_format must be float or base64";
  }
  return null;
}

function validMetadata(metadata: unknown): metadata is Record<string, string> {
  if (typeof metadata !== "object" || metadata === null || Array.isArray(metadata)) return false;
  const entries = Object.entries(metadata);
  return entries.length <= 16 &&
    entries.every(([k, v]) => k.length <= 64 && typeof v === "string" && v.length <= 512);
}

/** The size of a stored file; a made one is generated once to count it. */
function fileBytes(file: StoredFile): number {
  if (file.content instanceof Uint8Array) return file.content.length;
  const encoder = new TextEncoder();
  let bytes = 0;
  for (const line of file.content()) bytes += encoder.encode(line).length;
  return bytes;
}

/** Lines as UTF-8 chunks of about 64 KB, so a download arrives in many pieces. */
function* encodedChunks(lines: Iterable<string>): Generator<Uint8Array<ArrayBuffer>> {
  const encoder = new TextEncoder();
  let pending = "";
  for (const line of lines) {
    pending += line;
    if (pending.length >= 64 * 1024) {
      yield encoder.encode(pending);
      pending = "";
    }
  }
  if (pending) yield encoder.encode(pending);
}
