/**
 * The nats.js `nst/` idiom: `const { ns, nc } = await setup(); … await cleanup(ns, nc)`.
 * Runs a local nats-server process, or a container when TROUPE_TEST_CONTAINERS=1 and a
 * Docker engine is reachable.
 */

import { connect, type NatsConnection, type NodeConnectionOptions } from "@nats-io/transport-node";
import {
  containersRequested,
  dockerUnavailableReason,
  type NatsContainerHandle,
  startNatsContainer,
} from "./container.js";
import { silentLogger } from "./logger.js";
import { type NatsServerHandle, type NatsServerOptions, startNatsServer } from "./server.js";

/** A started server, either kind; narrow on `kind` for process-only members (pid, kill). */
export type NatsServer = NatsServerHandle | NatsContainerHandle;

export interface SetupOptions extends NatsServerOptions {
  /** Options for the client connection; `servers` is filled in. */
  connect?: Omit<NodeConnectionOptions, "servers">;
  /** "auto" (default): a container when opted in and an engine answers, else a process. */
  backend?: "auto" | "process" | "container";
}

export interface SetupResult {
  ns: NatsServer;
  nc: NatsConnection;
}

async function startServer(conf: SetupOptions): Promise<NatsServer> {
  const backend = conf.backend ?? "auto";
  if (backend === "process") return startNatsServer(conf);
  if (backend === "container") return startNatsContainer(conf);
  if (containersRequested()) {
    const reason = await dockerUnavailableReason();
    if (reason === undefined) return startNatsContainer(conf);
    (conf.logger ?? silentLogger).warn({ reason }, "TROUPE_TEST_CONTAINERS=1 ignored");
  }
  return startNatsServer(conf);
}

/** Starts a server (JetStream on) and connects a client to it. */
export async function setup(conf: SetupOptions = {}): Promise<SetupResult> {
  const ns = await startServer(conf);
  try {
    const nc = await connect({ ...conf.connect, servers: ns.url });
    return { ns, nc };
  } catch (e) {
    await ns.cleanup();
    throw e;
  }
}

/** Closes the connections, then stops the server and removes its data. */
export async function cleanup(ns: NatsServer, ...nc: NatsConnection[]): Promise<void> {
  await Promise.allSettled(nc.map((c) => (c.isClosed() ? Promise.resolve() : c.close())));
  await ns.cleanup();
}
