/** Free loopback ports: bind port 0, note what the kernel chose, release. */

import { createServer, type Server } from "node:net";

export const LOOPBACK = "127.0.0.1";

function listen(server: Server): Promise<number> {
  return new Promise((resolvePort, reject) => {
    server.once("error", reject);
    server.listen({ host: LOOPBACK, port: 0, exclusive: true }, () => {
      const address = server.address();
      if (address === null || typeof address === "string") {
        reject(new Error("listening socket has no port"));
        return;
      }
      resolvePort(address.port);
    });
  });
}

function close(server: Server): Promise<void> {
  return new Promise((done) => server.close(() => done()));
}

/**
 * `count` distinct ports that were free a moment ago. All are held open together so the
 * kernel cannot hand out the same port twice; another process may still take one before
 * the server binds it, which callers detect (PORT_IN_USE) and retry.
 */
export async function freePorts(count: number): Promise<number[]> {
  const servers = Array.from({ length: count }, () => createServer());
  try {
    const ports: number[] = [];
    for (const server of servers) ports.push(await listen(server));
    return ports;
  } finally {
    await Promise.all(servers.map((s) => (s.listening ? close(s) : Promise.resolve())));
  }
}
