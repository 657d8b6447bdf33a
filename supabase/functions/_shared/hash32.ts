// A fast, well-mixed 32-bit hash of a string, for features of the local
// embedder and content-defined chunk boundaries. Not cryptographic; both
// uses depend on its exact values (the local model's vectors, chunk
// boundaries), so it never changes.

/** FNV-1a over UTF-16 code units, then a murmur3 finaliser so every bit depends on every input. */
export function hash32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
