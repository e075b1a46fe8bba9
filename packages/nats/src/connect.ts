/**
 * Connecting to a cluster: `connectNats` (a NATS connection that waits for the server and
 * reconnects for ever, saying so through the logger) and `connect` (a client runtime on a
 * namespace, for any Node process that talks to agents hosted by workers).
 */

import {
  type NatsConnection,
  type NodeConnectionOptions,
  connect as natsConnect,
} from "@nats-io/transport-node";
import { createRuntime, type Logger, type Runtime, type RuntimeConfig } from "@troupe/runtime";
import { ErrorCode, TroupeError } from "@troupe/wire";
import { createNatsBackend, type NatsBackend } from "./backend.js";
import { describeNatsError, messageOf } from "./errors.js";
import {
  DEFAULT_NAMESPACE,
  openNamespace,
  pause,
  stoppedWaiting,
  unlessAborted,
} from "./namespace.js";

const noop = () => {};
const silent: Logger = { debug: noop, info: noop, warn: noop, error: noop };

export interface ConnectNatsOptions {
  /** The connection's name (seen in the server's monitoring). */
  name?: string;
  logger?: Logger;
  /** How long one connection attempt may take, ms. Default 5,000. */
  connectTimeoutMs?: number;
  /** Give up (TRANSPORT_ERROR) when no server answered within this many ms. Default: never. */
  waitMs?: number;
  /** Longest pause between attempts, ms. Default 5,000. */
  maxBackoffMs?: number;
  /**
   * Stops waiting (a process stopping while it starts): the call then rejects with SHUTDOWN
   * at once; a connection the attempt under way still makes is closed.
   */
  signal?: AbortSignal;
  /**
   * Further nats.js options (auth, TLS, …); `servers` comes from the first argument.
   * `noAsyncTraces` defaults to true here (nats.js: false).
   */
  nats?: Omit<NodeConnectionOptions, "servers">;
}

function serverList(servers: string | readonly string[]): string[] {
  const list = (typeof servers === "string" ? servers.split(",") : [...servers])
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
  if (list.length === 0) {
    throw new TroupeError(ErrorCode.CONFIG_ERROR, "no NATS server URL given");
  }
  return list;
}

const TERMINAL = new Set([
  "AuthorizationError",
  "UserAuthenticationExpiredError",
  "InvalidArgumentError",
]);

/**
 * Connects to NATS. While no server answers it says "waiting for NATS at …" through the
 * logger and tries again with backoff (for ever, unless `waitMs` or `signal` says
 * otherwise); once connected, the connection reconnects for ever and logs when it drops.
 * (Its own loop rather than nats.js's `waitOnFirstConnect`, so each failed attempt is logged
 * with its reason and waiting can be given up without leaving a dialer running.)
 */
export async function connectNats(
  servers: string | readonly string[],
  options: ConnectNatsOptions = {},
): Promise<NatsConnection> {
  const list = serverList(servers);
  const logger = options.logger ?? silent;
  const where = list.join(",");
  const started = Date.now();
  const maxBackoff = options.maxBackoffMs ?? 5000;
  const signal = options.signal;
  for (let attempt = 1; ; attempt++) {
    if (signal?.aborted) throw stoppedWaiting(`NATS at ${where}`);
    try {
      const connecting = natsConnect({
        ...options.nats,
        servers: list,
        name: options.name ?? options.nats?.name ?? "troupe",
        timeout: options.connectTimeoutMs ?? 5000,
        reconnect: true,
        maxReconnectAttempts: -1,
        reconnectTimeWait: options.nats?.reconnectTimeWait ?? 1000,
        // no Error (and its stack) made per request just in case it fails: under load that
        // was a third of a worker's CPU (docs/benchmarks.md)
        noAsyncTraces: options.nats?.noAsyncTraces ?? true,
        waitOnFirstConnect: false,
      });
      // (an attempt cannot be cancelled: one that connects after the abort is closed)
      const nc = await unlessAborted(connecting, signal, `NATS at ${where}`, (late) => {
        void late.close().catch(() => {});
      });
      logger.info(
        { servers: list, server: nc.getServer(), attempt },
        `connected to NATS at ${nc.getServer()}`,
      );
      void logStatus(nc, logger);
      return nc;
    } catch (e) {
      if (signal?.aborted) throw stoppedWaiting(`NATS at ${where}`);
      const name = (e as Error | null)?.name ?? "";
      if (TERMINAL.has(name)) {
        throw new TroupeError(
          ErrorCode.CONFIG_ERROR,
          `NATS at ${where} refused the connection: ${messageOf(e)}`,
          { cause: e },
        );
      }
      const waited = Date.now() - started;
      if (options.waitMs !== undefined && waited >= options.waitMs) {
        throw new TroupeError(
          ErrorCode.TRANSPORT_ERROR,
          `NATS at ${where} is not reachable (gave up after ${waited} ms, ${attempt} attempts): ${describeNatsError(e)}`,
          { cause: e, retryAfterMs: 1000, details: { servers: list, attempts: attempt } },
        );
      }
      let retryInMs = Math.min(maxBackoff, 250 * 2 ** Math.min(attempt - 1, 10));
      if (options.waitMs !== undefined) retryInMs = Math.min(retryInMs, options.waitMs - waited);
      logger.warn(
        { servers: list, attempt, retryInMs, err: messageOf(e) },
        `waiting for NATS at ${where} (attempt ${attempt}: ${describeNatsError(e)})`,
      );
      await pause(Math.max(0, retryInMs), signal);
    }
  }
}

async function logStatus(nc: NatsConnection, logger: Logger): Promise<void> {
  try {
    for await (const s of nc.status()) {
      switch (s.type) {
        case "disconnect":
          logger.warn(
            { server: s.server },
            `lost the NATS connection to ${s.server}; reconnecting`,
          );
          break;
        case "reconnect":
          logger.info({ server: s.server }, `reconnected to NATS at ${s.server}`);
          break;
        case "ldm":
          logger.warn({ server: s.server }, `NATS server ${s.server} is going away (lame duck)`);
          break;
        case "error":
          logger.warn({ err: s.error }, `NATS connection error: ${messageOf(s.error)}`);
          break;
        default:
          break;
      }
    }
  } catch {
    // the status iterator ends with the connection
  }
}

export interface ConnectOptions extends Omit<RuntimeConfig, "backend" | "agents"> {
  /** NATS URL(s): one string (commas allowed) or a list. */
  servers: string | readonly string[];
  /** Default "default". */
  namespace?: string;
  /** The connection's name. Default "troupe-client". */
  name?: string;
  /** When given, the namespace must have this many shards. */
  shardCount?: number;
  /**
   * How long to wait for NATS (see ConnectNatsOptions.waitMs) and then for a coordinator to
   * have created the namespace, ms. Default: wait for ever.
   */
  waitMs?: number;
  /** How long a send keeps retrying while NATS is unreachable, ms. Default 30,000. */
  appendTimeoutMs?: number;
  /** Further nats.js connection options (auth, TLS, …). */
  nats?: Omit<NodeConnectionOptions, "servers">;
}

/** A client runtime on the cluster: refs, send, request, operator calls; plus close(). */
export interface TroupeClient extends Runtime {
  readonly backend: NatsBackend;
  readonly nc: NatsConnection;
  readonly namespace: string;
  /** Shuts the runtime down and drains the connection. Idempotent. */
  close(): Promise<void>;
}

/**
 * Connects a client to a Troupe cluster:
 * `const client = await connect({ servers: "nats://…" });
 *  await client.ref("counter", "a").send({ type: "inc", by: 1 });`
 * Hosts no agents and pulls no shard: workers do.
 */
export async function connect(options: ConnectOptions): Promise<TroupeClient> {
  const {
    servers,
    namespace = DEFAULT_NAMESPACE,
    name,
    shardCount,
    waitMs,
    appendTimeoutMs,
    nats,
    ...runtimeConfig
  } = options;
  const logger = runtimeConfig.logger ?? silent;
  const nc = await connectNats(servers, {
    name: name ?? "troupe-client",
    logger,
    ...(waitMs === undefined ? {} : { waitMs }),
    ...(nats === undefined ? {} : { nats }),
  });
  let runtime: Runtime;
  let backend: NatsBackend;
  try {
    // a client never creates the namespace: the coordinator's shard count and replicas win
    const info = await openNamespace(nc, {
      namespace,
      logger,
      ...(shardCount === undefined ? {} : { shardCount }),
      ...(waitMs === undefined ? {} : { waitMs }),
    });
    backend = await createNatsBackend({
      nc,
      namespaceInfo: info,
      logger,
      ...(appendTimeoutMs === undefined ? {} : { appendTimeoutMs }),
    });
    runtime = await createRuntime({
      ...runtimeConfig,
      backend,
      limits: {
        ...runtimeConfig.limits,
        maxFrameBytes: Math.min(
          backend.maxFrameBytes,
          runtimeConfig.limits?.maxFrameBytes ?? Number.POSITIVE_INFINITY,
        ),
      },
    });
  } catch (e) {
    await nc.close().catch(() => undefined);
    throw e;
  }
  let closing: Promise<void> | undefined;
  const client: TroupeClient = {
    get clientId() {
      return runtime.clientId;
    },
    backend,
    nc,
    namespace,
    ref: ((agent: never, key: string) => runtime.ref(agent, key)) as Runtime["ref"],
    quarantine: (ref, reason) => runtime.quarantine(ref, reason),
    release: (ref) => runtime.release(ref),
    quarantined: () => runtime.quarantined(),
    replay: (ref, options) => runtime.replay(ref, options),
    parked: (limit) => runtime.parked(limit),
    use: (stage) => runtime.use(stage),
    stages: () => runtime.stages(),
    stats: () => runtime.stats(),
    settled: () => runtime.settled(),
    shutdown: () => runtime.shutdown(),
    close: () => {
      closing ??= (async () => {
        try {
          await runtime.shutdown();
        } finally {
          if (!nc.isClosed()) await nc.drain().catch(() => nc.close());
        }
      })();
      return closing;
    },
  };
  return client;
}
