// The query-embedding cache of a search function instance: a bounded LRU of
// vectors by (model, dimensions, hash of the query text), so a repeated query
// costs no provider call. It holds promises, so identical queries arriving
// together share one call too; a failed call is not kept.
import type { Vector } from "../vectors.ts";

export interface QueryCacheStats {
  hits: number;
  misses: number;
  size: number;
}

export interface QueryCache {
  /**
   * The vector of `text` for `model`/`dimensions`: from the cache, or from
   * `embed` (called at most once per key while its answer is kept).
   */
  vector(
    model: string,
    dimensions: number,
    text: string,
    embed: () => Promise<Vector>,
  ): Promise<{ vector: Vector; hit: boolean }>;
  stats(): QueryCacheStats;
}

async function sha256Hex(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A cache of at most `maxEntries` vectors (least recently used leave first). */
export function createQueryCache(maxEntries = 1000): QueryCache {
  // A Map iterates in insertion order: re-inserting on use makes the first key the least recent.
  const entries = new Map<string, Promise<Vector>>();
  let hits = 0, misses = 0;
  return {
    async vector(model, dimensions, text, embed) {
      // The key holds a hash, not the text: nothing a heap dump could show.
      const key = `${model}\u0000${dimensions}\u0000${await sha256Hex(text)}`;
      const cached = entries.get(key);
      if (cached) {
        hits++;
        entries.delete(key);
        entries.set(key, cached);
        return { vector: await cached, hit: true };
      }
      misses++;
      const pending = embed().then((v) => (v instanceof Float32Array ? v : Float32Array.from(v)));
      entries.set(key, pending);
      while (entries.size > maxEntries) entries.delete(entries.keys().next().value!);
      try {
        return { vector: await pending, hit: false };
      } catch (err) {
        if (entries.get(key) === pending) entries.delete(key);
        throw err;
      }
    },
    stats: () => ({ hits, misses, size: entries.size }),
  };
}
