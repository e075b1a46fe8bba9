/**
 * @troupe/probes — the HTTP endpoints orchestrators and Prometheus read from a Troupe process:
 * `/healthz`, `/readyz` and `/metrics`. What "ready" means and how metrics are rendered is the
 * process's business (it passes functions); this package has no metrics library of its own.
 * Also what the processes share around them: common options, logger, exit codes, signals.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { ErrorCode, TroupeError } from "@troupe/wire";

export {
  configErrorsExit,
  EXIT_CONFIG,
  httpPort,
  intAtLeast,
  type ProcessOptionValues,
  parseHttpPort,
  processOptions,
  splitList,
  startProcess,
  type TroupeProcess,
} from "./process.js";

/** The logger shape the process passes (pino's, the runtime's). */
export interface ProbeLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/**
 * The answer of a readiness check. When not ready, `reason` is a short stable token
 * (e.g. `draining`) for tooling and `message` says it for people.
 */
export type Readiness =
  | { ready: true; details?: Record<string, unknown> }
  | { ready: false; reason: string; message?: string; details?: Record<string, unknown> };

/** A rendered scrape: Prometheus text (or OpenMetrics) and its content type. */
export interface RenderedMetrics {
  contentType: string;
  body: string;
}

export interface ProbeServerOptions {
  /** TCP port; 0 = any free port (read it back from `port`). */
  port: number;
  /** Interface to bind. Default: every interface (probes come from outside the pod). */
  host?: string;
  /** Called on every `/readyz`: must be cheap and synchronous (no I/O). */
  readiness(): Readiness;
  /** Called on every `/metrics`; absent: 404. */
  metrics?(): Promise<RenderedMetrics>;
  logger: ProbeLogger;
}

export interface ProbeServer {
  /** The port the server listens on (the one the OS picked, for port 0). */
  readonly port: number;
  /** Stops taking connections, ends the open ones. Idempotent. */
  close(): Promise<void>;
}

const JSON_TYPE = "application/json; charset=utf-8";

/**
 * The probe server a process runs, or none when `port` is undefined (off); logs which.
 * `port` is undefined when off.
 */
export async function serveProbes(
  options: Omit<ProbeServerOptions, "port"> & { port: number | undefined },
): Promise<{ port: number | undefined; close(): Promise<void> }> {
  if (options.port === undefined) {
    options.logger.info({}, "HTTP probes and metrics are off");
    return { port: undefined, close: async () => {} };
  }
  const server = await startProbeServer({ ...options, port: options.port });
  options.logger.info(
    { httpPort: server.port },
    `serving /healthz, /readyz and /metrics on port ${server.port}`,
  );
  return server;
}

/** Starts the probe server; rejects with CONFIG_ERROR when the port cannot be bound. */
export async function startProbeServer(options: ProbeServerOptions): Promise<ProbeServer> {
  const { logger } = options;
  if (!Number.isSafeInteger(options.port) || options.port < 0 || options.port > 65_535) {
    throw new TroupeError(ErrorCode.CONFIG_ERROR, `invalid HTTP port ${options.port}`);
  }
  const server = createServer((req, res) => {
    void handle(options, req, res).catch((err: unknown) => {
      logger.error({ err, url: req.url }, "probe request failed");
      if (!res.headersSent) send(res, 500, JSON_TYPE, JSON.stringify({ error: String(err) }));
      else res.destroy();
    });
  });
  // a probe is one short request: do not let a stuck client hold a socket for long
  server.requestTimeout = 10_000;
  server.headersTimeout = 5_000;
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      reject(
        new TroupeError(
          ErrorCode.CONFIG_ERROR,
          `cannot serve HTTP on port ${options.port}: ${err.code ?? err.message}`,
          { cause: err },
        ),
      );
    };
    server.once("error", onError);
    server.listen({ port: options.port, host: options.host }, () => {
      server.off("error", onError);
      resolve();
    });
  });
  server.on("error", (err) => logger.warn({ err }, "probe server error"));
  const port = (server.address() as AddressInfo).port;
  let closing: Promise<void> | undefined;
  return {
    port,
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        // keep-alive sockets would hold close() open until they time out
        server.closeAllConnections();
      });
      return closing;
    },
  };
}

async function handle(
  options: ProbeServerOptions,
  req: IncomingMessage,
  res: ServerResponse,
): Promise<void> {
  if (req.method !== "GET" && req.method !== "HEAD") {
    res.setHeader("Allow", "GET, HEAD");
    send(res, 405, JSON_TYPE, JSON.stringify({ error: "method not allowed" }));
    return;
  }
  const path = (req.url ?? "/").split("?", 1)[0];
  switch (path) {
    case "/healthz":
      // the event loop answered: the process is alive
      send(res, 200, JSON_TYPE, JSON.stringify({ status: "ok" }));
      return;
    case "/readyz": {
      const r = options.readiness();
      const { ready, ...rest } = r;
      const body = { status: ready ? "ready" : "not ready", ...rest };
      send(res, r.ready ? 200 : 503, JSON_TYPE, JSON.stringify(body));
      return;
    }
    case "/metrics": {
      if (options.metrics === undefined) break;
      const m = await options.metrics();
      send(res, 200, m.contentType, m.body);
      return;
    }
    default:
      break;
  }
  send(res, 404, JSON_TYPE, JSON.stringify({ error: "not found", paths: PATHS }));
}

const PATHS = ["/healthz", "/readyz", "/metrics"];

function send(res: ServerResponse, status: number, contentType: string, body: string): void {
  res.statusCode = status;
  res.setHeader("Content-Type", contentType);
  res.setHeader("Cache-Control", "no-store");
  res.setHeader("Content-Length", Buffer.byteLength(body));
  res.end(res.req.method === "HEAD" ? undefined : body);
}

/** What `watchConnection` needs of a NATS connection (nats.js's NatsConnection has it). */
export interface WatchedConnection {
  status(): AsyncIterable<{ type: string }>;
  isClosed(): boolean;
}

export interface ConnectionState {
  /** False from a disconnect until the reconnect, and once the connection is closed. */
  connected(): boolean;
}

/**
 * Follows a NATS connection's status events, so readiness can say "NATS unreachable"
 * without a round trip. Starts as connected (call it right after connecting); the
 * iterator ends with the connection.
 */
export function watchConnection(nc: WatchedConnection): ConnectionState {
  let up = !nc.isClosed();
  void (async () => {
    try {
      for await (const s of nc.status()) {
        if (s.type === "disconnect" || s.type === "close") up = false;
        else if (s.type === "reconnect") up = true;
      }
    } catch {
      // the status iterator ends with the connection
    }
    up = false;
  })();
  return { connected: () => up && !nc.isClosed() };
}
