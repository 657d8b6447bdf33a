// One edge function (`embed` or `search`) alone in a Deno process, as the
// hosted runtime gives each instance its own isolate, for
// bench/scenarios/hosted_limits.ts to measure from outside (/proc). It serves
// the real handler, with the environment a deployed function gets, and adds
// to each answer the V8 heap figures sampled while the request ran
// (x-bench-heap): the isolate's own memory, which /proc cannot separate from
// the runtime's.
//
//   deno run -A bench/function_instance.ts embed|search
import v8 from "node:v8";
import { createEmbedHandler } from "../supabase/functions/embed/handler.ts";
import { createSearchHandler } from "../supabase/functions/search/handler.ts";

/** Peak V8 heap of one request, bytes: committed heap, of it in use, and memory held outside it. */
export interface HeapPeak {
  heapTotal: number;
  heapUsed: number;
  external: number;
}

/** The response header the peak travels in (JSON). */
export const HEAP_HEADER = "x-bench-heap";

/**
 * How often the heap is sampled while a request runs (only between its
 * synchronous stretches, and at its end). Each sample wakes the process:
 * often enough to see the heap grow, rarely enough to cost the request
 * little CPU while it waits on Postgres for seconds.
 */
const SAMPLE_MS = 50;

function serve(name: string) {
  const env = (key: string) => Deno.env.get(key);
  const handler = name === "embed"
    ? createEmbedHandler({ env })
    : name === "search"
    ? createSearchHandler({ env })
    : null;
  if (!handler) {
    console.error("usage: deno run -A bench/function_instance.ts embed|search");
    Deno.exit(2);
  }
  Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen: ({ port }) => console.log(JSON.stringify({ event: "listening", port })),
  }, async (req) => {
    const peak: HeapPeak = { heapTotal: 0, heapUsed: 0, external: 0 };
    // V8's own figures (what Deno.memoryUsage() reports, without its read of the RSS).
    const sample = () => {
      const h = v8.getHeapStatistics();
      peak.heapTotal = Math.max(peak.heapTotal, h.total_heap_size);
      peak.heapUsed = Math.max(peak.heapUsed, h.used_heap_size);
      peak.external = Math.max(peak.external, h.external_memory);
    };
    sample();
    const timer = setInterval(sample, SAMPLE_MS);
    try {
      const res = await handler.fetch(req);
      const body = await res.arrayBuffer();
      sample();
      const headers = new Headers(res.headers);
      headers.set(HEAP_HEADER, JSON.stringify(peak));
      return new Response(body, { status: res.status, headers });
    } finally {
      clearInterval(timer);
    }
  });
}

if (import.meta.main) serve(Deno.args[0]);
