/**
 * The testcontainers path: nats-server in a container, for machines with a Docker engine
 * that opt in with TROUPE_TEST_CONTAINERS=1. testcontainers is an optional dependency
 * and is loaded only here, on demand.
 */

import type { StartedTestContainer } from "testcontainers";
import { findNatsServer, pinnedNatsServerVersion } from "./binary.js";
import { renderServerConfig } from "./config.js";
import { TestkitError, TestkitErrorCode } from "./errors.js";
import { type Logger, silentLogger } from "./logger.js";

/** Set to "1" to run the fixtures through testcontainers when a Docker engine is reachable. */
export const CONTAINERS_ENV = "TROUPE_TEST_CONTAINERS";

export interface NatsContainerOptions {
  /** Default `nats:<NATS_SERVER_VERSION from scripts/versions.env>`. */
  image?: string;
  jetstream?: boolean;
  maxPayload?: number;
  config?: string;
  monitor?: boolean;
  /** Includes pulling the image. Default 120 s. */
  startTimeoutMs?: number;
  logger?: Logger;
}

export interface NatsContainerHandle {
  readonly kind: "container";
  readonly containerId: string;
  readonly image: string;
  /** The mapped client URL; it can change after restart(). */
  readonly url: string;
  readonly port: number;
  readonly monitorUrl: string | undefined;
  /** Stops and removes the container (a container cannot be started again once stopped). */
  stop(): Promise<void>;
  /** `docker restart` (the JetStream store lives in the container and survives it). */
  restart(): Promise<void>;
  /** Same as stop(). Idempotent. */
  cleanup(): Promise<void>;
}

type Testcontainers = typeof import("testcontainers");

async function loadTestcontainers(): Promise<Testcontainers | undefined> {
  try {
    return await import("testcontainers");
  } catch {
    return undefined;
  }
}

function binaryDescription(): string {
  try {
    return `the nats-server binary at ${findNatsServer()}`;
  } catch {
    return "the nats-server binary, which is not installed (run `bash scripts/setup.sh`)";
  }
}

let reasonMemo: Promise<string | undefined> | undefined;

/**
 * Why the container path cannot be used (no reachable engine, testcontainers missing), as
 * a sentence for a test's skip message; undefined when an engine answers. Asks
 * testcontainers' own runtime detection (DOCKER_HOST, ~/.testcontainers.properties,
 * /var/run/docker.sock, rootless sockets). Memoized.
 */
export function dockerUnavailableReason(): Promise<string | undefined> {
  reasonMemo ??= (async () => {
    const tc = await loadTestcontainers();
    if (tc === undefined) {
      return `testcontainers (an optional dependency) is not installed; using ${binaryDescription()}`;
    }
    try {
      await tc.getContainerRuntimeClient();
      return undefined;
    } catch {
      const where = process.env.DOCKER_HOST || "/var/run/docker.sock";
      return `no Docker engine reachable at ${where}; using ${binaryDescription()}`;
    }
  })();
  return reasonMemo;
}

/** Whether the caller opted into containers (TROUPE_TEST_CONTAINERS=1). */
export function containersRequested(): boolean {
  return process.env[CONTAINERS_ENV] === "1";
}

/**
 * Why fixtures will not use containers: not opted in, or no engine. undefined means the
 * container path is on. Use it as `it.skipIf(reason !== undefined)` and print the reason.
 */
export async function containerSkipReason(): Promise<string | undefined> {
  if (!containersRequested()) {
    return `${CONTAINERS_ENV} is not set to 1; using ${binaryDescription()}`;
  }
  return dockerUnavailableReason();
}

const CLIENT_PORT = 4222;
const MONITOR_PORT = 8222;
const CONFIG_PATH = "/etc/nats/troupe.conf";

class ContainerServer implements NatsContainerHandle {
  readonly kind = "container";
  private cleaning: Promise<void> | undefined;

  constructor(
    private readonly container: StartedTestContainer,
    readonly image: string,
    private readonly monitor: boolean,
  ) {}

  get containerId(): string {
    return this.container.getId();
  }
  get port(): number {
    return this.container.getMappedPort(CLIENT_PORT);
  }
  get url(): string {
    return `nats://${this.container.getHost()}:${this.port}`;
  }
  get monitorUrl(): string | undefined {
    if (!this.monitor) return undefined;
    return `http://${this.container.getHost()}:${this.container.getMappedPort(MONITOR_PORT)}`;
  }

  async restart(): Promise<void> {
    if (this.cleaning !== undefined) {
      throw new TestkitError(
        TestkitErrorCode.HANDLE_CLOSED,
        `container ${this.containerId} was removed`,
      );
    }
    await this.container.restart();
  }

  stop(): Promise<void> {
    this.cleaning ??= this.container.stop({ remove: true }).then(() => undefined);
    return this.cleaning;
  }

  cleanup(): Promise<void> {
    return this.stop();
  }
}

/**
 * Starts nats-server in a container (JetStream on by default). Containers left behind by
 * a crashed test process are removed by testcontainers' reaper (Ryuk).
 */
export async function startNatsContainer(
  options: NatsContainerOptions = {},
): Promise<NatsContainerHandle> {
  const reason = await dockerUnavailableReason();
  const tc = await loadTestcontainers();
  if (reason !== undefined || tc === undefined) {
    throw new TestkitError(
      TestkitErrorCode.DOCKER_UNAVAILABLE,
      reason ?? "testcontainers is not installed",
    );
  }
  const version = pinnedNatsServerVersion();
  const image = options.image ?? `nats:${version ?? "latest"}`;
  const monitor = options.monitor ?? true;
  const logger = options.logger ?? silentLogger;
  const config = renderServerConfig({
    serverName: "troupe-container",
    host: "0.0.0.0",
    port: CLIENT_PORT,
    monitorPort: monitor ? MONITOR_PORT : undefined,
    storeDir: (options.jetstream ?? true) ? "/data" : undefined,
    maxPayload: options.maxPayload,
    cluster: undefined,
    extra: options.config,
  });
  const ports = monitor ? [CLIENT_PORT, MONITOR_PORT] : [CLIENT_PORT];
  const container = await new tc.GenericContainer(image)
    .withCopyContentToContainer([{ content: config, target: CONFIG_PATH }])
    .withCommand(["-c", CONFIG_PATH])
    .withExposedPorts(...ports)
    .withWaitStrategy(
      monitor
        ? tc.Wait.forHttp("/healthz", MONITOR_PORT).forStatusCode(200)
        : tc.Wait.forLogMessage(/Server is ready/),
    )
    .withStartupTimeout(options.startTimeoutMs ?? 120_000)
    .start();
  logger.debug({ image, containerId: container.getId() }, "nats-server container started");
  return new ContainerServer(container, image, monitor);
}
