// The one registry of embedding models: what each model is (provider,
// dimensions, input and batch limits, tokenizer, prices). Providers, token
// counting, chunking and settings read it; the SQL table util.embedding_models
// is generated from it (`deno task registry:sql`), so SQL and TypeScript
// never disagree about a model.

export type ProviderName = "openai" | "local";

/** Token encodings shipped with the project ("estimate": see tokens.ts). */
export type TokenizerName = "cl100k_base" | "estimate";

/** The facts of one model, or of a family of models named by a prefix. */
export interface ModelEntry {
  /** The model's exact name, or for a family (`match: "prefix"`) what its names start with. */
  readonly name: string;
  readonly match: "exact" | "prefix";
  readonly provider: ProviderName;
  /** Length of the vectors the model makes when no `dimensions` is asked for. */
  readonly nativeDimensions: number;
  /** The allowed dimensions: from `minDimensions` to `maxDimensions` (null: no upper bound). */
  readonly minDimensions: number;
  readonly maxDimensions: number | null;
  /**
   * Whether the model takes the request's `dimensions` parameter (shortening
   * its vectors); models that do not accept it only make nativeDimensions.
   */
  readonly dimensionsParameter: boolean;
  /** Most tokens one input may have. */
  readonly maxInputTokens: number;
  /** Most inputs one request may carry. */
  readonly maxBatchInputs: number;
  /** Most tokens, summed over its inputs, one request may carry. */
  readonly maxBatchTokens: number;
  readonly tokenizer: TokenizerName;
  /** US dollars per million input tokens, online; 0 for what runs here. */
  readonly pricePerMTok: number;
  /** The same through the provider's batch API (OpenAI's /v1/batches). */
  readonly batchPricePerMTok: number;
}

// Where the OpenAI figures come from:
// - dimensions: OpenAI's embeddings guide and model pages
//   (developers.openai.com/api/docs/models/text-embedding-3-*): 1536 for
//   text-embedding-3-small and text-embedding-ada-002, 3072 for
//   text-embedding-3-large; the `dimensions` parameter is "only supported in
//   text-embedding-3 and later models" (the `dimensions` field of
//   EmbeddingCreateParams in the openai SDK, resources/embeddings.d.ts), which
//   shortens the vector, so any size from 1 up to the native one.
// - per-input and per-request limits: the `input` field of
//   EmbeddingCreateParams in the openai SDK (7.57.0): an array of at most 2048
//   inputs, "a maximum of 300,000 tokens summed across all inputs in a single
//   request". The SDK states the per-input limit as 8192 tokens; the
//   embeddings guide's model table lists 8191 for all three models, and
//   OpenAI's cookbook on long inputs uses 8191: the registry keeps the lower.
// - tokenizer: cl100k_base for all three (OpenAI's cookbook "How to count
//   tokens with tiktoken", and js-tiktoken's model-to-encoding table).
// - prices: OpenAI's model pages and pricing page, per 1M tokens:
//   text-embedding-3-small $0.02, text-embedding-3-large $0.13,
//   text-embedding-ada-002 $0.10; the Batch API guide: batch requests cost
//   50% less, so $0.01, $0.065 and $0.05.
/** Models whose name starts with this are served by the offline lexical embedder. */
export const LOCAL_MODEL_PREFIX = "local-";

const OPENAI_LIMITS = {
  provider: "openai",
  match: "exact",
  maxInputTokens: 8191,
  maxBatchInputs: 2048,
  maxBatchTokens: 300_000,
  tokenizer: "cl100k_base",
} as const;

/**
 * Every model the registry knows, in the order the SQL table lists them.
 * Adding a model: add it here, run `deno task registry:sql`, and carry the
 * regenerated rows into a new migration.
 */
export const MODELS: readonly ModelEntry[] = [
  {
    ...OPENAI_LIMITS,
    name: "text-embedding-3-small",
    nativeDimensions: 1536,
    minDimensions: 1,
    maxDimensions: 1536,
    dimensionsParameter: true,
    pricePerMTok: 0.02,
    batchPricePerMTok: 0.01,
  },
  {
    ...OPENAI_LIMITS,
    name: "text-embedding-3-large",
    nativeDimensions: 3072,
    minDimensions: 1,
    maxDimensions: 3072,
    dimensionsParameter: true,
    pricePerMTok: 0.13,
    batchPricePerMTok: 0.065,
  },
  {
    ...OPENAI_LIMITS,
    name: "text-embedding-ada-002",
    nativeDimensions: 1536,
    minDimensions: 1536,
    maxDimensions: 1536,
    dimensionsParameter: false,
    pricePerMTok: 0.10,
    batchPricePerMTok: 0.05,
  },
  // The offline lexical embedder (local.ts): any `local-*` name, any
  // positive size (1536 when none is given, as OpenAI's default size, so a
  // table can switch between the two without a new column). Its limits are
  // ours: inputs as an OpenAI request takes, a token budget no batch
  // reaches (it calls no one), the estimating token counter.
  {
    name: LOCAL_MODEL_PREFIX,
    match: "prefix",
    provider: "local",
    nativeDimensions: 1536,
    minDimensions: 1,
    maxDimensions: null,
    dimensionsParameter: true,
    maxInputTokens: 8191,
    maxBatchInputs: 2048,
    maxBatchTokens: 10_000_000,
    tokenizer: "estimate",
    pricePerMTok: 0,
    batchPricePerMTok: 0,
  },
];

/**
 * What a model the registry does not know gets: an OpenAI-compatible
 * endpoint's model (Ollama, vLLM, TEI, ...) with OpenAI's request limits,
 * the estimating token counter (its tokenizer is not shipped) and any
 * positive size, which must be given. `dimensions` is sent only to a custom
 * endpoint (see openai.ts), so null here.
 */
export const UNKNOWN_MODEL = {
  provider: "openai",
  minDimensions: 1,
  maxDimensions: null,
  dimensionsParameter: null,
  maxInputTokens: 8191,
  maxBatchInputs: 2048,
  maxBatchTokens: 300_000,
  tokenizer: "estimate",
} as const;

/** The request limits and tokenizer of a model, known or not. */
export interface ModelLimits {
  readonly provider: ProviderName;
  readonly maxInputTokens: number;
  readonly maxBatchInputs: number;
  readonly maxBatchTokens: number;
  readonly tokenizer: TokenizerName;
  /** Null when unknown (a model the registry does not know). */
  readonly dimensionsParameter: boolean | null;
}

/** Everything known of a model used at a given size. */
export interface ModelFacts extends ModelLimits {
  readonly model: string;
  /** False for a model the registry does not know (its limits are the conservative defaults). */
  readonly known: boolean;
  /** The size in use: the one asked for, else the native one. */
  readonly dimensions: number;
  /** Null when unknown. */
  readonly nativeDimensions: number | null;
  readonly minDimensions: number;
  readonly maxDimensions: number | null;
  /** Null when unknown. */
  readonly pricePerMTok: number | null;
  readonly batchPricePerMTok: number | null;
}

/** A model name or size the registry refuses; the message says what to do. */
export class ModelFactsError extends RangeError {
  constructor(message: string) {
    super(message);
    this.name = "ModelFactsError";
  }
}

const EXACT = new Map(MODELS.filter((m) => m.match === "exact").map((m) => [m.name, m]));
const FAMILIES = MODELS.filter((m) => m.match === "prefix");

/** The registry entry that covers `model` (its own, or its family's), if any. */
export function findModel(model: string): ModelEntry | undefined {
  return EXACT.get(model) ?? FAMILIES.find((f) => model.startsWith(f.name));
}

/** Request limits and tokenizer of `model`: the registry's, else the unknown model's defaults. */
export function modelLimits(model: string): ModelLimits {
  return findModel(model) ?? UNKNOWN_MODEL;
}

/**
 * The facts of `model` at `dimensions` (default: its native size). Throws a
 * ModelFactsError when the size is not a positive whole number, is outside
 * what the model makes, or is missing for a model the registry does not know.
 */
export function modelFacts(model: string, dimensions?: number): ModelFacts {
  const entry = findModel(model);
  const rule = entry ?? UNKNOWN_MODEL;
  if (dimensions === undefined) {
    if (!entry) {
      throw new ModelFactsError(
        `model ${model} is not in the registry, so its dimensions must be given ` +
          `(the size of the vectors its endpoint returns)`,
      );
    }
    dimensions = entry.nativeDimensions;
  }
  if (!Number.isInteger(dimensions) || dimensions < 1) {
    throw new ModelFactsError(
      `dimensions must be a positive whole number, got ${dimensions} (model ${model})`,
    );
  }
  if (
    dimensions < rule.minDimensions ||
    (rule.maxDimensions !== null && dimensions > rule.maxDimensions)
  ) {
    const allowed = rule.minDimensions === rule.maxDimensions
      ? `only ${rule.minDimensions}-dimension vectors`
      : `vectors of ${rule.minDimensions} to ${rule.maxDimensions} dimensions`;
    throw new ModelFactsError(
      `model ${model} makes ${allowed}, not ${dimensions}: give the table a size the model ` +
        `makes, or move it to another model (util.reembed)`,
    );
  }
  return {
    model,
    known: entry !== undefined,
    provider: rule.provider,
    dimensions,
    nativeDimensions: entry?.nativeDimensions ?? null,
    minDimensions: rule.minDimensions,
    maxDimensions: rule.maxDimensions,
    dimensionsParameter: rule.dimensionsParameter,
    maxInputTokens: rule.maxInputTokens,
    maxBatchInputs: rule.maxBatchInputs,
    maxBatchTokens: rule.maxBatchTokens,
    tokenizer: rule.tokenizer,
    pricePerMTok: entry?.pricePerMTok ?? null,
    batchPricePerMTok: entry?.batchPricePerMTok ?? null,
  };
}

/**
 * The longest input any model takes, in tokens: the upper bound of a chunk
 * size (a chunk is one input; SQL's util._largest_input_tokens() says the same).
 */
export const LARGEST_INPUT_TOKENS = Math.max(...MODELS.map((m) => m.maxInputTokens));
