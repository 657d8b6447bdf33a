// The provider side of the batch lane: OpenAI's Batch API (/v1/files and
// /v1/batches, half price, 24 h) through the official SDK. What to put in a
// batch, when to poll and what to do with its results is the caller's.
import OpenAI, { toFile } from "openai";
import { sendsDimensions, vectorsInOrder } from "./openai.ts";
import { tokenCounterFor } from "./tokens.ts";
import { classifyProviderError, httpStatus, ProviderError } from "./types.ts";

const OPENAI_BASE_URL = "https://api.openai.com/v1";

export interface BatchInput {
  customId: string;
  text: string;
}

export type BatchStatus =
  | "validating"
  | "failed"
  | "in_progress"
  | "finalizing"
  | "completed"
  | "expired"
  | "cancelling"
  | "cancelled";

/** Statuses a batch never leaves. */
export const TERMINAL_BATCH_STATUSES: ReadonlySet<BatchStatus> = new Set([
  "failed",
  "completed",
  "expired",
  "cancelled",
]);

export interface ProviderBatch {
  id: string;
  status: BatchStatus;
  inputFileId: string;
  outputFileId: string | null;
  errorFileId: string | null;
  counts: { total: number; completed: number; failed: number };
  /**
   * Validation errors of a failed batch (e.g. code token_limit_exceeded).
   * `message` is written here from the code, line and parameter, never the
   * server's text (which may quote the input or name the organisation).
   */
  errors: { code: string; message: string }[];
  metadata: Record<string, string>;
  /** Unix seconds. */
  createdAt: number;
  /** Unix seconds at which an unfinished batch expires, when the endpoint says. */
  expiresAt: number | null;
}

/** One line of an output or error file. */
export type BatchResultLine =
  | { customId: string; vector: Float32Array; usedTokens?: number }
  | { customId: string; error: string; retryable: boolean; status?: number };

export interface BatchClient {
  readonly model: string;
  readonly dimensions: number;
  /** Whether lines carry `dimensions` (as the online path decides: sendsDimensions). */
  readonly withDimensions: boolean;
  /**
   * Splits `inputs` into files within BATCH_LIMITS (and `maxTokens` per
   * file, by the model's tokenizer, when given: the account's enqueued-token
   * limit), in order.
   */
  planFiles(inputs: BatchInput[], maxTokens?: number): BatchInput[][];
  /**
   * Uploads the JSONL (purpose batch): one line per input, body {model,
   * input, dimensions?, encoding_format: "base64"}. Returns the file id.
   * Throws a RangeError for no inputs, repeated custom ids, or a file over
   * BATCH_LIMITS (planFiles splits within them).
   */
  upload(inputs: BatchInput[], signal?: AbortSignal): Promise<string>;
  /** Creates the batch (endpoint /v1/embeddings, completion_window 24h) with `metadata`. */
  create(
    inputFileId: string,
    metadata: Record<string, string>,
    signal?: AbortSignal,
  ): Promise<ProviderBatch>;
  retrieve(batchId: string, signal?: AbortSignal): Promise<ProviderBatch>;
  cancel(batchId: string, signal?: AbortSignal): Promise<ProviderBatch>;
  /**
   * The most recent batch (list, newest first, stop after ~300) whose
   * metadata[key] === value, or null: finds a batch created by a worker that
   * crashed before recording it.
   */
  findByMetadata(key: string, value: string, signal?: AbortSignal): Promise<ProviderBatch | null>;
  /**
   * Streams an output or error file line by line (never the whole file in
   * memory), each parsed and checked like the online path. A line that is
   * not JSON or has no custom_id ends the stream with a retryable
   * ProviderError; a vector of the wrong size or with non-finite values is
   * that line's error. The first `skip` lines are read past unparsed (an
   * apply that an earlier call began).
   */
  results(fileId: string, signal?: AbortSignal, skip?: number): AsyncIterable<BatchResultLine>;
  /** Deletes a file (input/output/error) after use; a 404 is fine. */
  deleteFile(fileId: string, signal?: AbortSignal): Promise<void>;
}

/**
 * The endpoint has no /v1/files or /v1/batches (404/405/501 on them, or the
 * SDK's NotFoundError): the caller falls back online.
 */
export class BatchApiUnsupported extends Error {
  readonly status?: number;

  constructor(status: number | undefined, cause: unknown) {
    super(
      `the endpoint has no batch API (/v1/files and /v1/batches answered ${
        status ?? "nothing"
      }): ` +
        `bulk work runs online at the online price`,
      { cause },
    );
    this.name = "BatchApiUnsupported";
    if (status !== undefined) this.status = status;
  }
}

/** The per-file limits, as OpenAI documents them (the `input_file_id` of BatchCreateParams). */
export const BATCH_LIMITS = { maxRequests: 50_000, maxBytes: 200 * 1024 * 1024 };

export interface OpenAIBatchClientOptions {
  apiKey: string;
  /** An OpenAI-compatible endpoint; default OpenAI. */
  baseURL?: string;
  model: string;
  dimensions: number;
  /**
   * Per call until the endpoint answers; uploads get one more second per MB,
   * and a download fails when no bytes arrive for this long.
   */
  timeoutMs: number;
  /** Batches per list page in findByMetadata (default 100, the API's most). */
  listPageSize?: number;
  /** Batches findByMetadata looks through before it gives up (default 300). */
  findScanLimit?: number;
}

export function createOpenAIBatchClient(opts: OpenAIBatchClientOptions): BatchClient {
  const { apiKey, model, dimensions, timeoutMs } = opts;
  // As the online provider: retries are the caller's, the base URL explicit.
  const client = new OpenAI({
    apiKey,
    baseURL: opts.baseURL ?? OPENAI_BASE_URL,
    timeout: timeoutMs,
    maxRetries: 0,
  });
  const withDimensions = sendsDimensions(model, opts.baseURL !== undefined);
  const pageSize = opts.listPageSize ?? 100;
  const scanLimit = opts.findScanLimit ?? 300;
  const lineContext = { model, dimensions, apiKey };

  /**
   * Runs one call, turning its failure into BatchApiUnsupported or a
   * ProviderError. A 404 means "no such path" on a collection (files,
   * batches) but "no such object" on an item: an id the caller holds came
   * from an endpoint that had the API.
   */
  const call = async <T>(
    target: { collection: string } | { item: string; id: string },
    signal: AbortSignal | undefined,
    run: () => Promise<T>,
  ): Promise<T> => {
    try {
      return await run();
    } catch (err) {
      // The caller tells its own abort apart by `signal.aborted`.
      if (signal?.aborted) throw err;
      throw callError(err, target);
    }
  };

  const callError = (
    err: unknown,
    target: { collection: string } | { item: string; id: string },
  ): Error => {
    const status = httpStatus(err);
    if (status === 405 || status === 501 || (status === 404 && "collection" in target)) {
      return new BatchApiUnsupported(status, err);
    }
    if (status === 404 && "item" in target) {
      return new ProviderError(
        `batch embedding with ${model} failed: the endpoint has no ${target.item} ` +
          `${safeId(target.id)} (404); it may have been deleted, or belong to another key`,
        { retryable: false, status, cause: err },
      );
    }
    return classifyProviderError(err, { model, timeoutMs, redact: [apiKey] });
  };

  return {
    model,
    dimensions,
    withDimensions,

    planFiles(inputs, maxTokens) {
      return planBatchFiles(inputs, { model, dimensions, withDimensions, maxTokens });
    },

    async upload(inputs, signal) {
      const file = jsonlFile(inputs, model, dimensions, withDimensions);
      const uploaded = await call({ collection: "files" }, signal, async () =>
        client.files.create(
          { file: await toFile(file), purpose: "batch" },
          // The timeout runs until the endpoint answers, the upload included.
          { signal, timeout: timeoutMs + Math.ceil(file.size / 1_000_000) * 1000 },
        ));
      return uploaded.id;
    },

    async create(inputFileId, metadata, signal) {
      const batch = await call({ collection: "batches" }, signal, () =>
        client.batches.create({
          input_file_id: inputFileId,
          endpoint: "/v1/embeddings",
          completion_window: "24h",
          metadata,
        }, { signal }));
      return providerBatch(batch);
    },

    async retrieve(batchId, signal) {
      const target = { item: "batch", id: batchId };
      return providerBatch(
        await call(target, signal, () => client.batches.retrieve(batchId, { signal })),
      );
    },

    async cancel(batchId, signal) {
      const target = { item: "batch", id: batchId };
      return providerBatch(
        await call(target, signal, () => client.batches.cancel(batchId, { signal })),
      );
    },

    findByMetadata(key, value, signal) {
      return call({ collection: "batches" }, signal, async () => {
        let scanned = 0;
        // Newest first, as the API lists batches: the first match is the latest.
        for await (const batch of client.batches.list({ limit: pageSize }, { signal })) {
          if (batch.metadata?.[key] === value) return providerBatch(batch);
          if (++scanned >= scanLimit) break;
        }
        return null;
      });
    },

    async *results(fileId, signal, skip = 0) {
      const target = { item: "file", id: fileId };
      const response = await call(target, signal, () => client.files.content(fileId, { signal }));
      if (!response.body) return;
      const where = `file ${safeId(fileId)}`;
      const chunks = textChunks(response.body, timeoutMs, () =>
        new ProviderError(
          `batch embedding with ${model} failed: the endpoint sent nothing of ${where} for ` +
            `${timeoutMs} ms (EMBEDDING_TIMEOUT_MS); retrying the download later`,
          { retryable: true },
        ));
      try {
        let number = 0;
        for await (const line of splitLines(chunks)) {
          number++;
          // Lines an earlier call applied: split, not parsed (a resumed apply, batch_tick.ts).
          if (number <= skip) continue;
          yield parseResultLine(line, lineContext, `line ${number} of ${where}`);
        }
      } catch (err) {
        if (signal?.aborted || err instanceof ProviderError) throw err;
        throw new ProviderError(
          `batch embedding with ${model} failed: the download of ${where} broke off; retrying ` +
            `it later`,
          { retryable: true, cause: err },
        );
      }
    },

    async deleteFile(fileId, signal) {
      try {
        await call(
          { item: "file", id: fileId },
          signal,
          () => client.files.delete(fileId, { signal }),
        );
      } catch (err) {
        if (err instanceof ProviderError && err.status === 404) return;
        throw err;
      }
    },
  };
}

// --- the input file -------------------------------------------------------

/** One line of the input file, without its newline. */
function jsonlLine(
  input: BatchInput,
  model: string,
  dimensions: number,
  withDimensions: boolean,
): string {
  return JSON.stringify({
    custom_id: input.customId,
    method: "POST",
    url: "/v1/embeddings",
    body: {
      model,
      input: input.text,
      ...(withDimensions ? { dimensions } : {}),
      // As online: a quarter of the JSON of floats, decoded straight into a Float32Array.
      encoding_format: "base64",
    },
  });
}

/** The JSONL text of `inputs` (exported for tests and for byte-size limits). */
export function batchJsonl(
  inputs: BatchInput[],
  model: string,
  dimensions: number,
  withDimensions: boolean,
): string {
  return inputs.map((input) => jsonlLine(input, model, dimensions, withDimensions) + "\n").join(
    "",
  );
}

const encoder = new TextEncoder();

/**
 * The input file, checked against BATCH_LIMITS. Its bytes are gathered in
 * Blobs of about 1 MB (held by the runtime, outside the JS heap), so a
 * 200 MB file never becomes one string.
 */
function jsonlFile(
  inputs: BatchInput[],
  model: string,
  dimensions: number,
  withDimensions: boolean,
): File {
  if (inputs.length === 0) throw new RangeError("a batch file needs at least one input");
  if (inputs.length > BATCH_LIMITS.maxRequests) {
    throw new RangeError(
      `a batch file holds at most ${BATCH_LIMITS.maxRequests} requests, not ${inputs.length}: ` +
        `split the inputs with planFiles`,
    );
  }
  const seen = new Set<string>();
  const parts: Blob[] = [];
  let pending: string[] = [];
  let pendingLength = 0;
  const flush = () => {
    parts.push(new Blob([pending.join("")]));
    pending = [];
    pendingLength = 0;
  };
  for (const input of inputs) {
    if (seen.has(input.customId)) {
      throw new RangeError(`custom id ${safeId(input.customId)} appears twice in one batch file`);
    }
    seen.add(input.customId);
    const line = jsonlLine(input, model, dimensions, withDimensions) + "\n";
    pending.push(line);
    pendingLength += line.length;
    if (pendingLength >= 1 << 20) flush();
  }
  if (pending.length) flush();
  const file = new File(parts, "autoembed-batch.jsonl", { type: "application/jsonl" });
  if (file.size > BATCH_LIMITS.maxBytes) {
    throw new RangeError(
      `a batch file holds at most ${BATCH_LIMITS.maxBytes} bytes, not ${file.size}: split the ` +
        `inputs with planFiles`,
    );
  }
  return file;
}

/**
 * `inputs` in order, cut into files of at most `maxRequests` lines,
 * `maxBytes` bytes of JSONL and (when given) `maxTokens` tokens by the
 * model's tokenizer. An input that alone exceeds `maxTokens` gets a file of
 * its own (the endpoint decides about it).
 */
export function planBatchFiles(
  inputs: BatchInput[],
  opts: {
    model: string;
    dimensions: number;
    withDimensions: boolean;
    maxRequests?: number;
    maxBytes?: number;
    maxTokens?: number;
  },
): BatchInput[][] {
  const maxRequests = opts.maxRequests ?? BATCH_LIMITS.maxRequests;
  const maxBytes = opts.maxBytes ?? BATCH_LIMITS.maxBytes;
  const counter = opts.maxTokens === undefined ? null : tokenCounterFor(opts.model);
  const files: BatchInput[][] = [];
  let file: BatchInput[] = [];
  let bytes = 0;
  let tokens = 0;
  for (const input of inputs) {
    const lineBytes =
      encoder.encode(jsonlLine(input, opts.model, opts.dimensions, opts.withDimensions)).length +
      1;
    if (lineBytes > maxBytes) {
      throw new RangeError(
        `the input ${safeId(input.customId)} alone makes a line of ${lineBytes} bytes, over the ` +
          `${maxBytes} of a batch file`,
      );
    }
    const lineTokens = counter ? counter.count(input.text) : 0;
    if (
      file.length > 0 && (
        file.length + 1 > maxRequests || bytes + lineBytes > maxBytes ||
        (counter && tokens + lineTokens > opts.maxTokens!)
      )
    ) {
      files.push(file);
      file = [];
      bytes = 0;
      tokens = 0;
    }
    file.push(input);
    bytes += lineBytes;
    tokens += lineTokens;
  }
  if (file.length) files.push(file);
  return files;
}

// --- batch objects ----------------------------------------------------------

const STATUSES: ReadonlySet<string> = new Set([
  "validating",
  "failed",
  "in_progress",
  "finalizing",
  "completed",
  "expired",
  "cancelling",
  "cancelled",
]);

/** What the caller needs of the SDK's batch object. */
function providerBatch(batch: OpenAI.Batch): ProviderBatch {
  if (!STATUSES.has(batch.status)) {
    throw new ProviderError(
      `batch embedding failed: the endpoint answered a batch with status ` +
        `${JSON.stringify(identifier(batch.status) ?? "?")}`,
      { retryable: true },
    );
  }
  const counts = batch.request_counts;
  const count = (n: unknown) => (typeof n === "number" && Number.isFinite(n) ? n : 0);
  return {
    id: batch.id,
    status: batch.status,
    inputFileId: batch.input_file_id,
    outputFileId: batch.output_file_id || null,
    errorFileId: batch.error_file_id || null,
    counts: {
      total: count(counts?.total),
      completed: count(counts?.completed),
      failed: count(counts?.failed),
    },
    errors: (batch.errors?.data ?? []).map((e) => {
      const code = identifier(e.code) ?? "unknown";
      return { code, message: validationMessage(code, e.line, e.param) };
    }),
    metadata: { ...(batch.metadata ?? {}) },
    createdAt: batch.created_at,
    expiresAt: typeof batch.expires_at === "number" ? batch.expires_at : null,
  };
}

function validationMessage(code: string, line: unknown, param: unknown): string {
  const where = typeof line === "number" ? ` at line ${line}` : "";
  const field = identifier(param);
  const about = field ? ` (${field})` : "";
  if (code === "token_limit_exceeded") {
    return `the batch failed validation: token_limit_exceeded${where}: the account's ` +
      `enqueued-token limit for the model is reached; submit it again when running batches finish, ` +
      `or in smaller files`;
  }
  return `the batch failed validation: ${code}${where}${about}`;
}

// --- result files -----------------------------------------------------------

interface LineContext {
  model: string;
  dimensions: number;
  apiKey: string;
}

/**
 * One line of an output or error file. A 200 response is a vector (checked
 * as online: one vector of `dimensions` finite values); any other response
 * is classified as an online answer with that status would be (400-class:
 * permanent; 429, 5xx: retryable); a line with only an `error` (batch_expired,
 * batch_cancelled, ...) is retryable. Server-written text is never copied.
 */
export function parseResultLine(
  line: string,
  context: LineContext,
  where = "a line",
): BatchResultLine {
  const { model, dimensions } = context;
  const malformed = (detail: string) =>
    new ProviderError(
      `batch embedding with ${model} failed: ${where} of the results ${detail}; retrying the ` +
        `download later`,
      { retryable: true },
    );
  let parsed: {
    custom_id?: unknown;
    response?: { status_code?: unknown; body?: unknown } | null;
    error?: { code?: unknown } | null;
  };
  try {
    parsed = JSON.parse(line);
  } catch {
    throw malformed("is not JSON");
  }
  if (typeof parsed !== "object" || parsed === null) throw malformed("is not an object");
  const customId = parsed.custom_id;
  if (typeof customId !== "string" || customId === "") throw malformed("has no custom_id");
  const response = parsed.response;
  const status = typeof response?.status_code === "number" ? response.status_code : undefined;
  if (status === 200) {
    const body = response!.body as { data?: unknown; usage?: { prompt_tokens?: unknown } } | null;
    try {
      const [vector] = vectorsInOrder(body?.data, 1, dimensions, model);
      const used = body?.usage?.prompt_tokens;
      return {
        customId,
        vector: vector instanceof Float32Array ? vector : Float32Array.from(vector),
        ...(typeof used === "number" && Number.isFinite(used) ? { usedTokens: used } : {}),
      };
    } catch (err) {
      if (!(err instanceof ProviderError)) throw err;
      return { customId, error: err.message, retryable: err.retryable };
    }
  }
  if (status !== undefined) {
    const error = (response!.body as { error?: { code?: unknown; type?: unknown } } | null)?.error;
    const classified = classifyProviderError(
      { status, code: error?.code, type: error?.type },
      { model, redact: [context.apiKey] },
    );
    return { customId, error: classified.message, retryable: classified.retryable, status };
  }
  const code = identifier(parsed.error?.code);
  return {
    customId,
    error: `batch embedding with ${model} failed: the batch did not run this request` +
      (code ? ` (${code})` : "") + "; it is retried",
    retryable: true,
  };
}

/**
 * Lines of a text arriving in chunks: a line may be split across chunks,
 * end in CRLF or LF, and the last one may have no newline. Empty lines are
 * skipped.
 */
export async function* splitLines(chunks: AsyncIterable<string>): AsyncGenerator<string> {
  let buffer = "";
  for await (const chunk of chunks) {
    // Only the new chunk can hold the next newline: a long line split into
    // many small chunks is not scanned again from its start.
    let from = buffer.length;
    buffer += chunk;
    let start = 0;
    for (let end = buffer.indexOf("\n", from); end !== -1; end = buffer.indexOf("\n", from)) {
      const line = buffer.slice(start, buffer.charCodeAt(end - 1) === 13 ? end - 1 : end);
      if (line !== "") yield line;
      start = from = end + 1;
    }
    buffer = buffer.slice(start);
  }
  const last = buffer.endsWith("\r") ? buffer.slice(0, -1) : buffer;
  if (last !== "") yield last;
}

/**
 * The body's text, decoded across chunk boundaries, failing with `stalled()`
 * when no bytes arrive for `idleMs` (the SDK's timeout ends when the
 * headers arrive). Stopping early cancels the body.
 */
export async function* textChunks(
  body: ReadableStream<Uint8Array>,
  idleMs: number,
  stalled: () => Error,
): AsyncGenerator<string> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    for (;;) {
      const idle = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(stalled()), idleMs);
      });
      const { done, value } = await Promise.race([reader.read(), idle]);
      clearTimeout(timer);
      if (done) break;
      const text = decoder.decode(value, { stream: true });
      if (text) yield text;
    }
    const rest = decoder.decode();
    if (rest) yield rest;
  } finally {
    clearTimeout(timer);
    await reader.cancel().catch(() => {});
  }
}

// --- small helpers ----------------------------------------------------------

/** `value` if it looks like an identifier (a code, a parameter name), else undefined. */
function identifier(value: unknown): string | undefined {
  return typeof value === "string" && /^[A-Za-z0-9_.\[\]-]{1,64}$/.test(value) ? value : undefined;
}

/** An id (a file's, a batch's, a custom id) for a message: quoted, and cut if long. */
function safeId(id: string): string {
  const shown = id.length > 80 ? `${id.slice(0, 80)}...` : id;
  return JSON.stringify(shown);
}
