// A CPU burner for tests that need a loaded machine: spins for
// AUTOEMBED_BUSY_MS (default 60 s) and exits, so it stops by itself even
// when the test that started it dies.
const until = Date.now() + Number(Deno.env.get("AUTOEMBED_BUSY_MS") ?? 60_000);
let x = 0;
while (Date.now() < until) {
  for (let i = 0; i < 1e6; i++) x = (x + i) % 1_000_003;
}
console.log(`busy done ${x > -1}`);
