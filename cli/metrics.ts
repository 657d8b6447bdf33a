// The worker's Prometheus metrics (`autoembed worker --metrics-port N`),
// through prom-client (npm, runs as it is under Deno's npm support). Two
// kinds of series: this process's counters, from the batches it ran (rows,
// provider calls and tokens, 429s, waits for the provider's rate budget);
// and the database's figures, read at each scrape from what
// util.embedding_status reads (queue depth, oldest job age, dead letters,
// and the time-to-fresh histogram kept per target). The latter are the
// same on every worker of a database: aggregate them with max, not sum.
import type postgres from "postgres";
import { Counter, Gauge, Registry } from "prom-client";
import type { BatchResult } from "../supabase/functions/_shared/core.ts";

const TARGET_LABELS = ["schema", "table", "column"] as const;
type TargetLabels = Record<(typeof TARGET_LABELS)[number], string>;

interface HistogramValue {
  metricName: string;
  labels: Record<string, string | number>;
  value: number;
}

/**
 * A histogram whose buckets the database counts (util.embedding_freshness_totals,
 * by util._freshness_bounds): prom-client's Histogram only observes values
 * one at a time, so this is a metric of the registry's own shape, set whole
 * at each scrape.
 */
class DatabaseHistogram {
  readonly type = "histogram";
  readonly aggregator = "max";
  values: HistogramValue[] = [];

  constructor(readonly name: string, readonly help: string) {}

  get() {
    return Promise.resolve({
      name: this.name,
      help: this.help,
      type: this.type,
      aggregator: this.aggregator,
      values: this.values,
    });
  }

  reset() {
    this.values = [];
  }
}

export class WorkerMetrics {
  readonly registry = new Registry();
  readonly #batches = this.#counter("autoembed_batches_total", "Batches this worker processed");
  readonly #rowsEmbedded = this.#counter(
    "autoembed_rows_embedded_total",
    "Rows whose embeddings this worker wrote",
  );
  readonly #rowsDone = this.#counter(
    "autoembed_rows_done_total",
    "Rows whose jobs this worker finished (written, already fresh, or gone)",
  );
  readonly #rowsFailed = this.#counter(
    "autoembed_rows_failed_total",
    "Jobs that failed or were handed back by this worker",
  );
  readonly #providerCalls = this.#counter(
    "autoembed_provider_calls_total",
    "Embedding requests sent to the provider",
  );
  readonly #providerInputs = this.#counter(
    "autoembed_provider_inputs_total",
    "Texts sent to the provider",
  );
  readonly #tokens = new Counter({
    name: "autoembed_provider_tokens_total",
    help: "Tokens by the model's tokenizer: sent online, or saved because a vector was reused",
    labelNames: ["kind"],
    registers: [this.registry],
  });
  readonly #rateLimited = this.#counter(
    "autoembed_provider_rate_limited_total",
    "Provider answers 429 (rate limited)",
  );
  readonly #budgetWaits = this.#counter(
    "autoembed_budget_waits_total",
    "Waits for the provider's shared rate budget",
  );
  readonly #budgetWaitSeconds = this.#counter(
    "autoembed_budget_wait_seconds_total",
    "Seconds spent waiting for the provider's shared rate budget",
  );
  readonly #queued = this.#gauge("autoembed_queue_rows", "Rows queued, per target (database)");
  readonly #inFlight = this.#gauge(
    "autoembed_queue_in_flight_rows",
    "Rows claimed and not yet settled, per target (database)",
  );
  readonly #oldest = this.#gauge(
    "autoembed_queue_oldest_job_age_seconds",
    "Age of the oldest queued job, per target (database; 0 when none)",
  );
  readonly #dead = this.#gauge(
    "autoembed_dead_lettered_rows",
    "Dead-lettered rows, per target (database)",
  );
  readonly #embedded = this.#gauge(
    "autoembed_embedded_rows",
    "Rows holding vectors the pipeline wrote, per target (database)",
  );
  readonly #scrapeErrors = this.#counter(
    "autoembed_metrics_database_errors_total",
    "Scrapes whose database figures could not be read",
  );
  readonly #freshness = new DatabaseHistogram(
    "autoembed_time_to_fresh_seconds",
    "Seconds from a row's change (its job's enqueue) to done, per target (database)",
  );

  constructor() {
    this.registry.registerMetric(this.#freshness as never);
  }

  #counter(name: string, help: string): Counter {
    return new Counter({ name, help, registers: [this.registry] });
  }

  #gauge(name: string, help: string): Gauge<(typeof TARGET_LABELS)[number]> {
    return new Gauge({ name, help, labelNames: TARGET_LABELS, registers: [this.registry] });
  }

  /** Counts a batch the worker ran. */
  batch(result: BatchResult): void {
    const s = result.stats;
    this.#batches.inc();
    this.#rowsEmbedded.inc(s.written);
    this.#rowsDone.inc(result.completedRows);
    this.#rowsFailed.inc(result.failedJobs.length);
    this.#providerCalls.inc(s.providerCalls);
    this.#providerInputs.inc(s.providerInputs);
    this.#tokens.inc({ kind: "online" }, s.tokens);
    this.#tokens.inc({ kind: "reused" }, s.tokensReused);
    this.#rateLimited.inc(s.rateLimited);
    if (s.budgetWaits) this.budgetWait(s.budgetWaitMs, s.budgetWaits);
  }

  /**
   * The hook of the shared rate budget (issue 23's other half): a wait of
   * `ms` before a provider call (or `waits` of them, `ms` in all).
   */
  budgetWait(ms: number, waits = 1): void {
    this.#budgetWaits.inc(waits);
    this.#budgetWaitSeconds.inc(ms / 1000);
  }

  /** Reads the database's figures into the gauges and the histogram. */
  async refresh(sql: postgres.Sql): Promise<void> {
    try {
      const [status, buckets] = await Promise.all([
        sql<
          (TargetLabels & {
            queued: string;
            in_flight: string;
            oldest: number;
            dead: string;
            embedded: string;
          })[]
        >`
          select schema_name as schema, table_name as table, embedding_column as column,
                 queued, in_flight, coalesce(extract(epoch from oldest_queued_age), 0)::float8 as oldest,
                 dead_lettered as dead, embedded
            from util.embedding_status`,
        sql<
          (TargetLabels & {
            bounds: number[];
            buckets: number[];
            rows: string[];
            seconds: number;
          })[]
        >`
          select n.nspname as schema, c.relname as table, t.embedding_column as column,
                 util._freshness_bounds() as bounds,
                 array_agg(f.bucket order by f.bucket) as buckets,
                 array_agg(f.rows order by f.bucket) as rows,
                 sum(f.seconds)::float8 as seconds
            from util.embedding_freshness_totals f
            join util.embedding_targets t on t.id = f.target_id and t.shadow_of is null
            join pg_catalog.pg_class c on c.oid = t.table_oid
            join pg_catalog.pg_namespace n on n.oid = c.relnamespace
           group by 1, 2, 3`,
      ]);
      for (const g of [this.#queued, this.#inFlight, this.#oldest, this.#dead, this.#embedded]) {
        g.reset();
      }
      for (const r of status) {
        const labels = { schema: r.schema, table: r.table, column: r.column };
        this.#queued.set(labels, Number(r.queued));
        this.#inFlight.set(labels, Number(r.in_flight));
        this.#oldest.set(labels, r.oldest);
        this.#dead.set(labels, Number(r.dead));
        this.#embedded.set(labels, Number(r.embedded));
      }
      this.#freshness.values = buckets.flatMap((r) => histogramValues(this.#freshness.name, r));
    } catch {
      this.#scrapeErrors.inc();
    }
  }

  /** The exposition of every metric (text format 0.0.4), the database's read first. */
  async render(sql: postgres.Sql): Promise<string> {
    await this.refresh(sql);
    return await this.registry.metrics();
  }

  /** Serves GET /metrics on `hostname`:`port` until `signal` aborts. */
  serve(
    sql: () => postgres.Sql,
    options: { port: number; hostname: string; signal?: AbortSignal },
  ): Deno.HttpServer<Deno.NetAddr> {
    return Deno.serve({
      port: options.port,
      hostname: options.hostname,
      signal: options.signal,
      onListen: () => {},
    }, async (req) => {
      const path = new URL(req.url).pathname;
      if (path !== "/metrics" && path !== "/") return new Response("not found\n", { status: 404 });
      return new Response(await this.render(sql()), {
        headers: { "content-type": this.registry.contentType },
      });
    });
  }
}

/** One target's histogram series: cumulative buckets (le), +Inf, sum and count. */
function histogramValues(
  name: string,
  r: TargetLabels & { bounds: number[]; buckets: number[]; rows: string[]; seconds: number },
): HistogramValue[] {
  const labels = { schema: r.schema, table: r.table, column: r.column };
  const perBucket = new Map(r.buckets.map((b, i) => [b, Number(r.rows[i])]));
  const values: HistogramValue[] = [];
  let cumulative = 0;
  // Bucket b of util._freshness_bounds() holds times below bounds[b] (0-based here).
  r.bounds.forEach((bound, b) => {
    cumulative += perBucket.get(b) ?? 0;
    values.push({
      metricName: `${name}_bucket`,
      labels: { ...labels, le: bound },
      value: cumulative,
    });
  });
  cumulative += perBucket.get(r.bounds.length) ?? 0;
  values.push({
    metricName: `${name}_bucket`,
    labels: { ...labels, le: "+Inf" },
    value: cumulative,
  });
  values.push({ metricName: `${name}_sum`, labels, value: r.seconds });
  values.push({ metricName: `${name}_count`, labels, value: cumulative });
  return values;
}
