// waitOutDisconnect: what the embed function does when Postgres goes away
// mid-call — run the (repeatable) operation again once the database answers,
// within a deadline, and never for errors that waiting does not cure.
import assert from "node:assert/strict";
import { waitOutDisconnect } from "../../supabase/functions/_shared/db_errors.ts";

const code = (c: string) => Object.assign(new Error(`write ${c}`), { code: c });

Deno.test("waitOutDisconnect runs the operation again after connection errors, then returns", async () => {
  const failures = [code("CONNECTION_CLOSED"), code("57P01"), code("ECONNREFUSED")];
  const retries: number[] = [];
  let calls = 0;
  const result = await waitOutDisconnect(() => {
    calls++;
    const failure = failures.shift();
    return failure ? Promise.reject(failure) : Promise.resolve("done");
  }, { deadline: Date.now() + 30_000, onRetry: (n) => retries.push(n) });
  assert.equal(result, "done");
  assert.equal(calls, 4);
  assert.deepEqual(retries, [1, 2, 3]);
});

Deno.test("waitOutDisconnect throws at once what waiting cannot cure", async () => {
  for (const err of [code("23505"), code("CONNECTION_ENDED"), new TypeError("bug")]) {
    let calls = 0;
    await assert.rejects(
      waitOutDisconnect(() => {
        calls++;
        return Promise.reject(err);
      }, { deadline: Date.now() + 30_000 }),
      (e) => e === err,
    );
    assert.equal(calls, 1, String(err));
  }
});

Deno.test("waitOutDisconnect gives up at its deadline and on abort, with the last error", async () => {
  let calls = 0;
  const down = () => {
    calls++;
    return Promise.reject(code("ECONNREFUSED"));
  };
  // A deadline closer than the first pause: one attempt, no wait.
  await assert.rejects(waitOutDisconnect(down, { deadline: Date.now() + 50 }), /ECONNREFUSED/);
  assert.equal(calls, 1);

  calls = 0;
  const shutdown = new AbortController();
  const waiting = waitOutDisconnect(down, {
    deadline: Date.now() + 60_000,
    signal: shutdown.signal,
    onRetry: () => shutdown.abort(), // the runtime shuts down while it waits
  });
  await assert.rejects(waiting, /ECONNREFUSED/);
  assert.equal(calls, 1);
});
