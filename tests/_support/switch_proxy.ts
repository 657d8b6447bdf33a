// A TCP forwarder on loopback that can be switched off: while it is down its
// port refuses connections (nothing listens there) and the connections it
// carried are cut, as when a provider's host goes away; up() listens on the
// same port again. For outage tests that need "connection refused", which no
// HTTP answer of the fake provider can give.

export interface SwitchProxy {
  /** `http://127.0.0.1:PORT/v1`, for the SDK's baseURL. */
  baseURL: string;
  /** Where to forward to (host:port of the real server). */
  forwardTo(port: number): void;
  down(): void;
  up(): void;
  close(): Promise<void>;
}

export function startSwitchProxy(): SwitchProxy {
  let target = 0;
  let listener: Deno.Listener | null = null;
  const open = new Set<Deno.Conn>();
  let port = 0;

  const pipe = async (from: Deno.Conn, to: Deno.Conn) => {
    try {
      await from.readable.pipeTo(to.writable);
    } catch {
      // a side closed: the other goes too
    } finally {
      for (const c of [from, to]) {
        try {
          c.close();
        } catch { /* already closed */ }
        open.delete(c);
      }
    }
  };

  const serve = async (l: Deno.Listener) => {
    for await (const client of l) {
      open.add(client);
      Deno.connect({ hostname: "127.0.0.1", port: target }).then((server) => {
        open.add(server);
        pipe(client, server);
        pipe(server, client);
      }, () => {
        client.close();
        open.delete(client);
      });
    }
  };

  const listen = () => {
    listener = Deno.listen({ hostname: "127.0.0.1", port });
    port = (listener.addr as Deno.NetAddr).port;
    serve(listener).catch(() => {});
  };
  listen();

  const cut = () => {
    listener?.close();
    listener = null;
    for (const c of open) {
      try {
        c.close();
      } catch { /* already closed */ }
    }
    open.clear();
  };

  return {
    baseURL: `http://127.0.0.1:${port}/v1`,
    forwardTo(p) {
      target = p;
    },
    down: cut,
    up() {
      if (!listener) listen();
    },
    close() {
      cut();
      return Promise.resolve();
    },
  };
}
