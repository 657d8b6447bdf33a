// The SQL-only pg_net shim (local/shims/pg_net) and its worker stand-in
// (local/net_dispatcher.ts) against a real Postgres: upstream 0.14.0
// signatures, queueing, delivery to a local server, timeouts, errors,
// concurrency, TTL, restarts.
import assert from "node:assert/strict";
import { ROOT } from "../../local/config.ts";
import { startEphemeralCluster } from "../../local/cluster.ts";
import {
  deleteExpiredResponses,
  type NetDispatcher,
  type NetDispatcherOptions,
  startNetDispatcher,
} from "../../local/net_dispatcher.ts";
import { connect, type Sql, withTestDb } from "../../devtools/db.ts";
import { waitFor } from "../../devtools/wait.ts";

/** A request as the test server saw it. */
interface Received {
  method: string;
  path: string;
  headers: Headers;
  body: string;
}

interface TestServer {
  url: string;
  received: Received[];
  /** Most requests the server was handling at one moment. */
  maxInFlight: number;
  close(): Promise<void>;
}

/**
 * Serves on 127.0.0.1:<free port>. `reply` may wait with `sleep`, which ends
 * early when the server closes, so no handler outlives its test.
 */
function startServer(
  reply: (r: Received, sleep: (ms: number) => Promise<void>) => Response | Promise<Response> = () =>
    new Response("ok"),
): TestServer {
  const closing = new AbortController();
  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        closing.signal.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      closing.signal.addEventListener("abort", done);
    });
  let inFlight = 0;
  const state: TestServer = {
    url: "",
    received: [],
    maxInFlight: 0,
    close: async () => {
      closing.abort();
      await server.shutdown();
    },
  };
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    inFlight++;
    state.maxInFlight = Math.max(state.maxInFlight, inFlight);
    try {
      const url = new URL(req.url);
      const r = {
        method: req.method,
        path: url.pathname + url.search,
        headers: req.headers,
        body: await req.text(),
      };
      state.received.push(r);
      return await reply(r, sleep);
    } finally {
      inFlight--;
    }
  });
  state.url = `http://127.0.0.1:${server.addr.port}`;
  return state;
}

/** A URL on which nothing listens. */
function refusedUrl(): string {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return `http://127.0.0.1:${port}`;
}

/** The net._http_response row of request `id`, once the dispatcher wrote it. */
async function responseOf(sql: Sql, id: number) {
  return await waitFor(async () => {
    const [row] = await sql`
      select status_code, content_type, headers, content, timed_out, error_msg
      from net._http_response where id = ${id}`;
    return row ? { ...row } : undefined;
  }, { what: `the response to request ${id}`, intervalMs: 25 });
}

/** Runs `fn` with a dispatcher on `url`, stopped afterwards; log lines are kept in `lines`. */
async function withDispatcher(
  url: string,
  options: Partial<NetDispatcherOptions>,
  fn: (dispatcher: NetDispatcher, lines: string[]) => Promise<void>,
): Promise<void> {
  const lines: string[] = [];
  const dispatcher = await startNetDispatcher({
    dbUrl: url,
    log: (line) => lines.push(line),
    ...options,
  });
  try {
    await fn(dispatcher, lines);
  } finally {
    await dispatcher.stop();
  }
}

/** A PostgresError matcher for assert.rejects: SQLSTATE and message pattern. */
function pgError(code: string, message: RegExp) {
  return (e: unknown): boolean => {
    const err = e as { code?: string; message?: string };
    assert.equal(err.code, code, `SQLSTATE of ${err.message}`);
    assert.match(err.message ?? "", message);
    return true;
  };
}

Deno.test("pg_net shim: functions match upstream 0.14.0 names, arguments, defaults, results and markings", async () => {
  await withTestDb(async (sql) => {
    const rows = await sql.begin(async (tx) => {
      // Unqualified type names in the output would hide a schema drift.
      await tx`set local search_path = public`;
      return await tx`
        select p.proname || '(' || pg_get_function_arguments(p.oid) || ') -> ' ||
          pg_get_function_result(p.oid) || ' |' ||
          case p.provolatile when 'i' then ' immutable' when 's' then ' stable' else ' volatile' end ||
          case when p.proisstrict then ' strict' else '' end ||
          case p.proparallel when 's' then ' parallel safe' when 'r' then ' parallel restricted'
            else '' end ||
          case when p.prosecdef then ' security definer' else '' end as signature
        from pg_proc p
        where p.pronamespace = 'net'::regnamespace
        order by 1`;
    });
    const ok = "jsonb DEFAULT '{}'::jsonb";
    const expected = [
      "_await_response(request_id bigint) -> boolean | volatile strict parallel safe",
      "_encode_url_with_params_array(url text, params_array text[]) -> text | immutable strict",
      "_http_collect_response(request_id bigint, async boolean DEFAULT true)" +
      " -> net.http_response_result | volatile strict parallel safe",
      "_urlencode_string(string character varying) -> text | immutable strict",
      "check_worker_is_up() -> void | volatile",
      "http_collect_response(request_id bigint, async boolean DEFAULT true)" +
      " -> net.http_response_result | volatile strict parallel safe",
      `http_delete(url text, params ${ok}, headers ${ok}, timeout_milliseconds integer DEFAULT 5000)` +
      " -> bigint | volatile strict parallel safe",
      `http_get(url text, params ${ok}, headers ${ok}, timeout_milliseconds integer DEFAULT 5000)` +
      " -> bigint | volatile strict parallel safe",
      `http_post(url text, body ${ok}, params ${ok}, headers jsonb DEFAULT ` +
      `'{"Content-Type": "application/json"}'::jsonb, timeout_milliseconds integer DEFAULT 5000)` +
      " -> bigint | volatile parallel safe",
      "worker_restart() -> boolean | volatile",
    ];
    assert.deepEqual(rows.map((r) => r.signature), [...expected].sort());
  });
});

Deno.test("pg_net shim: types and tables have upstream's columns; created in schema net", async () => {
  await withTestDb(async (sql) => {
    const [ext] = await sql`
      select extversion, extrelocatable, extnamespace::regnamespace::text as schema
      from pg_extension where extname = 'pg_net'`;
    // The migration says `with schema extensions`; the objects still live in net.
    assert.deepEqual({ ...ext }, {
      extversion: "0.14.0",
      extrelocatable: false,
      schema: "extensions",
    });

    const columns = (rel: string) =>
      sql.begin(async (tx) => {
        await tx`set local search_path = public`;
        return (await tx`
          select a.attname || ' ' || format_type(a.atttypid, a.atttypmod) ||
            case when a.attnotnull then ' not null' else '' end ||
            coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '') as col
          from pg_attribute a
          left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
          where a.attrelid = ${rel}::regclass and a.attnum > 0 and not a.attisdropped
          order by a.attnum`).map((r) => r.col);
      });
    assert.deepEqual(await columns("net.http_request_queue"), [
      "id bigint not null default nextval('net.http_request_queue_id_seq'::regclass)",
      "method net.http_method not null",
      "url text not null",
      "headers jsonb not null",
      "body bytea",
      "timeout_milliseconds integer not null",
    ]);
    assert.deepEqual(await columns("net._http_response"), [
      "id bigint",
      "status_code integer",
      "content_type text",
      "headers jsonb",
      "content text",
      "timed_out boolean",
      "error_msg text",
      "created timestamp with time zone not null default now()",
    ]);
    assert.deepEqual(await columns("net.http_response"), [
      "status_code integer",
      "headers jsonb",
      "body text",
    ]);
    assert.deepEqual(await columns("net.http_response_result"), [
      "status net.request_status",
      "message text",
      "response net.http_response",
    ]);
    const [{ labels }] = await sql`select enum_range(null::net.request_status)::text[] as labels`;
    assert.deepEqual(labels, ["PENDING", "SUCCESS", "ERROR"]);
    const [{ check }] = await sql`
      select pg_get_constraintdef(c.oid) as check from pg_constraint c
      where c.contypid = 'net.http_method'::regtype`;
    assert.match(check, /'get'.*'post'.*'delete'/);
    const persistence = await sql`
      select relname, relpersistence from pg_class
      where relnamespace = 'net'::regnamespace and relkind = 'r' order by 1`;
    assert.deepEqual(persistence.map((r) => [r.relname, r.relpersistence]), [
      ["_http_response", "u"],
      ["http_request_queue", "u"],
    ]);
    const indexes = (await sql`
      select tablename || ': ' || regexp_replace(indexdef, '^.* USING ', '') as ix
      from pg_indexes where schemaname = 'net' order by 1`).map((r) => r.ix);
    assert.deepEqual(indexes, ["_http_response: btree (created)"]);
  });
});

Deno.test("pg_net shim: like upstream, any role may queue requests and read responses", async () => {
  // Without the pipeline's migrations, which revoke this (tests/security/privileges.test.ts).
  await withTestDb(async (sql) => {
    await sql`create extension pg_net with schema extensions`;
    const [p] = await sql`select
      has_schema_privilege('anon', 'net', 'usage') as schema,
      has_table_privilege('anon', 'net.http_request_queue', 'insert, select, delete') as queue,
      has_table_privilege('anon', 'net._http_response', 'select, delete') as responses,
      has_sequence_privilege('anon', 'net.http_request_queue_id_seq', 'usage') as seq,
      has_function_privilege('anon', 'net.http_post(text,jsonb,jsonb,jsonb,integer)', 'execute') as fn`;
    assert.deepEqual({ ...p }, { schema: true, queue: true, responses: true, seq: true, fn: true });
    const id = await sql.begin(async (tx) => {
      await tx`set local role anon`;
      const [{ id }] = await tx`select net.http_get('http://example.com/') as id`;
      return id;
    });
    assert.ok(Number(id) > 0);
  }, { template: "template1" });
});

Deno.test("pg_net shim: http_post, http_get and http_delete queue a request and return its id at once", async () => {
  await withTestDb(async (sql) => {
    const [{ post }] = await sql`select net.http_post(
      'http://example.com/hook',
      '{"a": 1}'::jsonb,
      '{"q": "a b&c", "n": "ü"}'::jsonb,
      '{"Authorization": "Bearer x"}'::jsonb,
      1234)::int as post`;
    const [{ get }] =
      await sql`select net.http_get('https://example.com/x?y=1', '{"k": "v"}')::int as get`;
    const [{ del }] = await sql`select net.http_delete('http://example.com/item/7')::int as del`;
    assert.deepEqual([get - post, del - post], [1, 2], "ids come from one sequence");
    const queued = await sql`
      select id::int - ${post} as n, method, url, headers, convert_from(body, 'UTF8') as body, timeout_milliseconds
      from net.http_request_queue order by id`;
    assert.deepEqual(queued.map((r) => ({ ...r })), [{
      n: 0,
      method: "POST",
      url: "http://example.com/hook?n=%C3%BC&q=a%20b%26c",
      headers: { Authorization: "Bearer x", "Content-Type": "application/json" },
      body: '{"a": 1}',
      timeout_milliseconds: 1234,
    }, {
      n: 1,
      method: "GET",
      url: "https://example.com/x?y=1&k=v",
      headers: {},
      body: null,
      timeout_milliseconds: 5000,
    }, {
      n: 2,
      method: "DELETE",
      url: "http://example.com/item/7",
      headers: {},
      body: null,
      timeout_milliseconds: 5000,
    }]);
    // Nothing was sent: no dispatcher runs for this database.
    const [{ n }] = await sql`select count(*)::int as n from net._http_response`;
    assert.equal(n, 0);
    const [pending] = await sql`select (r).status::text, (r).message, (r).response is null as empty
      from net._http_collect_response(${post}) r`;
    assert.deepEqual({ ...pending }, {
      status: "ERROR",
      message: "request matching request_id not found",
      empty: true,
    });
  });
});

Deno.test("pg_net shim: http_post checks Content-Type; strict functions ignore NULL; bad URLs fail", async () => {
  await withTestDb(async (sql) => {
    // A content-type in any case counts; it is not added twice.
    await sql`select net.http_post('http://example.com/', headers => '{"content-type": "application/json"}')`;
    const [{ headers }] = await sql`select headers from net.http_request_queue`;
    assert.deepEqual(headers, { "content-type": "application/json" });
    await assert.rejects(
      sql`select net.http_post('http://example.com/', headers => '{"Content-Type": "text/plain"}')`,
      pgError("22023", /^Content-Type header must be "application\/json"$/),
    );
    const [{ id }] = await sql`select net.http_get(null) as id`;
    assert.equal(id, null);
    for (const bad of ["not a url", "http://", "/relative/path", "http://exa mple.com/"]) {
      await assert.rejects(
        sql`select net.http_get(${bad})`,
        pgError("22023", /URL using bad\/illegal format or missing URL/),
        bad,
      );
    }
    const [{ n }] = await sql`select count(*)::int as n from net.http_request_queue`;
    assert.equal(n, 1, "only the first request was queued");
  });
});

Deno.test("pg_net shim: url encoding and query strings behave like upstream's curl helpers", async () => {
  await withTestDb(async (sql) => {
    const encode: [string, string][] = [
      ["abcXYZ019-._~", "abcXYZ019-._~"],
      ["a b", "a%20b"],
      ["&=?/#+%", "%26%3D%3F%2F%23%2B%25"],
      ["ü€", "%C3%BC%E2%82%AC"],
      ["", ""],
    ];
    for (const [input, want] of encode) {
      const [{ got }] = await sql`select net._urlencode_string(${input}) as got`;
      assert.equal(got, want, JSON.stringify(input));
    }
    const append: [string, (string | null)[], string][] = [
      ["http://h", ["a=1", "b=2"], "http://h/?a=1&b=2"],
      ["https://h/p?x=1", ["a=1"], "https://h/p?x=1&a=1"],
      ["https://h/p?x=1&", ["a=1"], "https://h/p?x=1&a=1"],
      ["https://h/p#frag", ["a=1"], "https://h/p?a=1#frag"],
      ["http://h:8080/p", [], "http://h:8080/p"],
      ["http://h/p", [null, "a=1"], "http://h/p?a=1"],
    ];
    for (const [url, params, want] of append) {
      const [{ got }] =
        await sql`select net._encode_url_with_params_array(${url}, ${params}::text[]) as got`;
      assert.equal(got, want, `${url} + ${JSON.stringify(params)}`);
    }
  });
});

Deno.test("dispatcher: a NOTIFY wakes it; method, query, headers and body reach the server; the response is stored", async () => {
  const server = startServer((r) =>
    r.path.startsWith("/empty") ? new Response(null, { status: 204 }) : new Response("hello ✓", {
      status: 201,
      headers: { "content-type": "text/plain; charset=utf-8", "x-reply": "yes" },
    })
  );
  try {
    await withTestDb(async (sql, url) => {
      // With a one-minute poll only the NOTIFY can explain a quick delivery.
      await withDispatcher(url, { pollIntervalMs: 60_000 }, async (dispatcher) => {
        const [{ id }] = await sql`select net.http_post(
          ${server.url + "/hook"},
          '{"hello": "world"}'::jsonb,
          '{"q": "a b", "k": "ü&"}'::jsonb,
          '{"Authorization": "Bearer t0ken", "X-Custom": "1"}'::jsonb
        )::int as id`;
        const response = await responseOf(sql, id);
        assert.deepEqual({ ...response, headers: null }, {
          status_code: 201,
          content_type: "text/plain; charset=utf-8",
          headers: null,
          content: "hello ✓",
          timed_out: false,
          error_msg: null,
        });
        assert.equal(response.headers["x-reply"], "yes");
        assert.equal(response.headers["content-type"], "text/plain; charset=utf-8");

        const [sent] = server.received;
        assert.equal(sent.method, "POST");
        assert.equal(sent.path, "/hook?k=%C3%BC%26&q=a%20b");
        const query = new URL(sent.path, server.url).searchParams;
        assert.deepEqual([query.get("q"), query.get("k")], ["a b", "ü&"]);
        assert.equal(sent.headers.get("authorization"), "Bearer t0ken");
        assert.equal(sent.headers.get("x-custom"), "1");
        assert.equal(sent.headers.get("content-type"), "application/json");
        assert.equal(sent.headers.get("user-agent"), "pg_net/0.14.0");
        assert.deepEqual(JSON.parse(sent.body), { hello: "world" });

        const [result] = await sql`select (r).status::text, (r).message,
            ((r).response).status_code, ((r).response).body
          from net.http_collect_response(${id}) r`;
        assert.deepEqual({ ...result }, {
          status: "SUCCESS",
          message: "ok",
          status_code: 201,
          body: "hello ✓",
        });

        const [{ g, d }] = await sql`select
          net.http_get(${server.url + "/empty"}, '{"n": 1}', '{"Accept": "text/plain"}')::int as g,
          net.http_delete(${server.url + "/empty/7"})::int as d`;
        const empty = await responseOf(sql, g);
        assert.deepEqual({ ...empty, headers: null }, {
          status_code: 204,
          content_type: null,
          headers: null,
          content: null,
          timed_out: false,
          error_msg: null,
        });
        assert.equal((await responseOf(sql, d)).status_code, 204);
        const others = server.received.slice(1);
        assert.deepEqual(others.map((r) => [r.method, r.path, r.body]).sort(), [
          ["DELETE", "/empty/7", ""],
          ["GET", "/empty?n=1", ""],
        ]);
        assert.equal(others.find((r) => r.method === "GET")?.headers.get("accept"), "text/plain");
        assert.deepEqual({ ...dispatcher.stats }, { sent: 3, failed: 0 });
        const [{ queued }] = await sql`select count(*)::int as queued from net.http_request_queue`;
        assert.equal(queued, 0, "claimed requests leave the queue");
      });
    });
  } finally {
    await server.close();
  }
});

Deno.test("dispatcher: timeout_milliseconds is honoured: timed_out, error_msg, no status", async () => {
  const server = startServer(async (_r, sleep) => {
    await sleep(5_000);
    return new Response("too late");
  });
  try {
    await withTestDb(async (sql, url) => {
      await withDispatcher(url, {}, async (dispatcher) => {
        const [{ id }] =
          await sql`select net.http_get(${server.url}, timeout_milliseconds => 200)::int as id`;
        const response = await responseOf(sql, id);
        assert.equal(response.status_code, null);
        assert.equal(response.timed_out, true);
        assert.match(response.error_msg, /^Timeout of 200 ms reached\. Total time: [\d.]+ ms$/);
        assert.equal(dispatcher.stats.failed, 1);
        const [result] = await sql`select (r).status::text, (r).message
          from net._http_collect_response(${id}) r`;
        assert.deepEqual({ ...result }, { status: "ERROR", message: response.error_msg });
      });
    });
  } finally {
    await server.close();
  }
});

Deno.test("dispatcher: a refused connection gives error_msg and no status", async () => {
  await withTestDb(async (sql, url) => {
    await withDispatcher(url, {}, async (dispatcher) => {
      const [{ id }] = await sql`select net.http_get(${refusedUrl() + "/x"})::int as id`;
      const response = await responseOf(sql, id);
      assert.equal(response.status_code, null);
      assert.equal(response.timed_out, false);
      assert.match(response.error_msg, /connect|refused/i);
      assert.deepEqual({ ...dispatcher.stats }, { sent: 0, failed: 1 });
    });
  });
});

Deno.test("dispatcher: requests are sent concurrently, at most `concurrency` at a time", async () => {
  for (const concurrency of [16, 4]) {
    const server = startServer(async (_r, sleep) => {
      await sleep(300);
      return new Response("done");
    });
    try {
      await withTestDb(async (sql, url) => {
        await withDispatcher(url, { concurrency }, async () => {
          const ids = (await sql`select net.http_get(${server.url})::int as id
            from generate_series(1, 20)`).map((r) => r.id);
          for (const id of ids) assert.equal((await responseOf(sql, id)).status_code, 200);
        });
      });
      assert.equal(server.received.length, 20);
      assert.ok(server.maxInFlight > 1, `max in flight ${server.maxInFlight}`);
      assert.ok(server.maxInFlight <= concurrency, `max in flight ${server.maxInFlight}`);
    } finally {
      await server.close();
    }
  }
});

Deno.test("dispatcher: bad requests get an error_msg and the next ones are still sent", async () => {
  const server = startServer((r) =>
    r.path === "/fail" ? new Response("boom", { status: 500 }) : new Response("fine")
  );
  try {
    await withTestDb(async (sql, url) => {
      await withDispatcher(url, {}, async (dispatcher) => {
        // Rows http_* would refuse, inserted directly as a careless user could.
        const bad = await sql`insert into net.http_request_queue
          (method, url, headers, body, timeout_milliseconds) values
          ('GET', 'ftp://example.com/file', '{}', null, 1000),
          ('GET', 'file:///etc/passwd', '{}', null, 1000),
          ('GET', ${server.url}, '{"bad header": "x"}', null, 1000),
          ('GET', ${server.url}, '{}', 'a body'::bytea, 1000),
          ('POST', 'http://', '{}', null, 1000)
          returning id::int`;
        const [{ fail, good }] = await sql`select
          net.http_get(${server.url + "/fail"})::int as fail,
          net.http_get(${server.url + "/good"})::int as good`;
        assert.equal((await responseOf(sql, good)).content, "fine");
        const failed = await responseOf(sql, fail);
        assert.deepEqual([failed.status_code, failed.content, failed.error_msg], [
          500,
          "boom",
          null,
        ]);
        const errors = [];
        for (const { id } of bad) {
          const r = await responseOf(sql, id);
          assert.equal(r.status_code, null, `request ${id}`);
          assert.ok(r.error_msg, `request ${id} has an error_msg`);
          errors.push(r.error_msg);
        }
        assert.deepEqual(errors.slice(0, 2), ["Unsupported protocol", "Unsupported protocol"]);
        assert.equal(errors[4], "URL using bad/illegal format or missing URL");
        assert.deepEqual({ ...dispatcher.stats }, { sent: 2, failed: 5 });
        assert.deepEqual(server.received.map((r) => r.path).sort(), ["/fail", "/good"]);
      });
    });
  } finally {
    await server.close();
  }
});

Deno.test("dispatcher: logs carry no request headers, bodies or query strings", async () => {
  await withTestDb(async (sql, url) => {
    await withDispatcher(url, {}, async (_dispatcher, lines) => {
      const [{ id }] = await sql`select net.http_post(
        ${refusedUrl() + "/hook"},
        '{"secret": "s3cr3t-body"}'::jsonb,
        '{"apikey": "s3cr3t-key"}'::jsonb,
        '{"Authorization": "Bearer s3cr3t-token"}'::jsonb
      )::int as id`;
      const response = await responseOf(sql, id);
      assert.ok(response.error_msg);
      assert.ok(lines.some((l) => l.includes(`request ${id}`)), lines.join("\n"));
      assert.deepEqual(lines.filter((l) => l.includes("s3cr3t")), []);
    });
  });
});

Deno.test("dispatcher: responses older than the TTL are deleted, in batches", async () => {
  await withTestDb(async (sql, url) => {
    await sql`insert into net._http_response (id, status_code, created) values
      (1, 200, now() - interval '7 hours'),
      (2, 200, now() - interval '5 hours'),
      (3, 200, now())`;
    // Starting sweeps at once with the default TTL of 6 hours.
    await withDispatcher(url, {}, async () => {
      const left = await sql`select id::int from net._http_response order by id`;
      assert.deepEqual(left.map((r) => r.id), [2, 3]);
    });
    assert.equal(await deleteExpiredResponses(sql, 3600), 1);
    const left = await sql`select id::int from net._http_response order by id`;
    assert.deepEqual(left.map((r) => r.id), [3]);
    await sql`insert into net._http_response (id, created)
      select g, now() - interval '1 day' from generate_series(10, 2509) g`;
    assert.equal(await deleteExpiredResponses(sql, 3600), 2500);
    assert.equal(await deleteExpiredResponses(sql, 3600), 0);
  });
});

Deno.test("dispatcher: check_worker_is_up sees it; worker_restart ends its sessions and it carries on", async () => {
  const server = startServer();
  try {
    await withTestDb(async (sql, url) => {
      await assert.rejects(
        sql`select net.check_worker_is_up()`,
        pgError("P0001", /the pg_net background worker is not up/),
      );
      await withDispatcher(url, {}, async () => {
        await sql`select net.check_worker_is_up()`;
        const [{ restarted }] = await sql`select net.worker_restart() as restarted`;
        assert.equal(restarted, true);
        const [{ id }] = await sql`select net.http_get(${server.url})::int as id`;
        assert.equal((await responseOf(sql, id)).status_code, 200);
        await waitFor(async () => {
          const [{ n }] = await sql`select count(*)::int as n from pg_stat_activity
            where datname = current_database() and application_name = 'autoembed pg_net dispatcher'`;
          return n > 0;
        }, { what: "the dispatcher's sessions to come back" });
      });
    });
  } finally {
    await server.close();
  }
});

Deno.test("dispatcher: stop() lets in-flight requests finish and record their responses", async () => {
  const server = startServer(async (_r, sleep) => {
    await sleep(500);
    return new Response("finished");
  });
  try {
    await withTestDb(async (sql, url) => {
      const dispatcher = await startNetDispatcher({ dbUrl: url, log: () => {} });
      const [{ id }] = await sql`select net.http_get(${server.url})::int as id`;
      await waitFor(() => server.received[0], { what: "the request to reach the server" });
      await dispatcher.stop();
      const [row] = await sql`select status_code, content from net._http_response where id = ${id}`;
      assert.deepEqual({ ...row }, { status_code: 200, content: "finished" });
    });
  } finally {
    await server.close();
  }
});

Deno.test("dispatcher: survives a Postgres restart and delivers what was queued meanwhile", async () => {
  const cluster = await startEphemeralCluster();
  const server = startServer();
  try {
    const url = cluster.url("postgres");
    const setup = connect(url);
    try {
      await setup`create extension pg_net with schema extensions`;
    } finally {
      await setup.end();
    }
    await withDispatcher(url, {}, async (_dispatcher, lines) => {
      const before = connect(url);
      try {
        const [{ id }] = await before`select net.http_get(${server.url + "/before"})::int as id`;
        assert.equal((await responseOf(before, id)).status_code, 200);
      } finally {
        await before.end();
      }
      // Down long enough for the dispatcher to notice, then up again.
      await cluster.stop();
      await waitFor(() => lines.find((l) => /unavailable/.test(l)), {
        what: "the outage to be logged",
      });
      await cluster.restart("fast");
      const after = connect(url);
      try {
        const [{ id }] = await after`select net.http_get(${server.url + "/after"})::int as id`;
        assert.equal((await responseOf(after, id)).status_code, 200);
      } finally {
        await after.end();
      }
      await waitFor(() => lines.find((l) => /reachable again/.test(l)), {
        what: "the reconnect to be logged",
      });
    });
    assert.deepEqual(server.received.map((r) => r.path), ["/before", "/after"]);
  } finally {
    await server.close();
    await cluster.destroy();
  }
});

Deno.test("dispatcher CLI: serves --db-url until SIGTERM; without a database it exits 2", async () => {
  const run = (args: string[], env: Record<string, string>) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "local/net_dispatcher.ts", ...args],
      cwd: ROOT,
      env: { NO_COLOR: "1", ...env },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    });
  const missing = await run([], { DATABASE_URL: "" }).output();
  assert.equal(missing.code, 2);
  assert.match(new TextDecoder().decode(missing.stderr), /no database: pass --db-url/);

  const server = startServer();
  try {
    await withTestDb(async (sql, url) => {
      const child = run(["--db-url", url], {}).spawn();
      const output = child.output();
      try {
        await waitFor(async () => {
          const [{ n }] = await sql`select count(*)::int as n from pg_stat_activity
            where datname = current_database() and application_name = 'autoembed pg_net dispatcher'`;
          return n > 0;
        }, { what: "the dispatcher to connect" });
        const [{ id }] = await sql`select net.http_get(${server.url + "/cli"})::int as id`;
        assert.equal((await responseOf(sql, id)).status_code, 200);
      } finally {
        child.kill("SIGTERM");
      }
      const { code, stdout } = await output;
      assert.equal(code, 0);
      assert.match(new TextDecoder().decode(stdout), /pg_net: stopped/);
    });
  } finally {
    await server.close();
  }
});
