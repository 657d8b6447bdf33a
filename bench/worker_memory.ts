// `deno run -A --v8-flags=<deno.json's> bench/worker_memory.ts worker <args>`:
// runs the worker CLI in this process (cli/autoembed.ts's main, same flags as
// `deno task autoembed`) and samples Deno.memoryUsage() every 50 ms, then
// prints on stderr where the resident memory was at its peak: V8's heap,
// memory outside it that V8 accounts for (ArrayBuffers: response bodies,
// postgres.js's buffers), and the rest (the runtime, its code, allocator).
import { main } from "../cli/autoembed.ts";

const peak = { rss: 0, heapTotal: 0, heapUsed: 0, external: 0 };
let atPeak = { ...peak };
const timer = setInterval(() => {
  const m = Deno.memoryUsage();
  if (m.rss > peak.rss) atPeak = { ...m };
  peak.rss = Math.max(peak.rss, m.rss);
  peak.heapTotal = Math.max(peak.heapTotal, m.heapTotal);
  peak.heapUsed = Math.max(peak.heapUsed, m.heapUsed);
  peak.external = Math.max(peak.external, m.external);
}, 50);
const code = await main(Deno.args);
clearInterval(timer);
const mb = (b: number) => Math.round(b / 1024 / 1024);
const hwm = Number(
  Deno.readTextFileSync("/proc/self/status").match(/^VmHWM:\s+(\d+) kB/m)?.[1] ?? 0,
);
console.error(JSON.stringify({
  event: "memory",
  vmHwmMb: Math.round(hwm / 1024),
  atPeakRss: {
    rssMb: mb(atPeak.rss),
    v8HeapTotalMb: mb(atPeak.heapTotal),
    v8HeapUsedMb: mb(atPeak.heapUsed),
    externalMb: mb(atPeak.external),
    restMb: mb(atPeak.rss - atPeak.heapTotal - atPeak.external),
  },
  maxima: {
    v8HeapTotalMb: mb(peak.heapTotal),
    v8HeapUsedMb: mb(peak.heapUsed),
    externalMb: mb(peak.external),
  },
}));
Deno.exit(code);
