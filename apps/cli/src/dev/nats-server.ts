/** The dev cluster's nats-server: JetStream in a project-local data dir, loopback only. */

import { accessSync, constants, mkdirSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { findNatsServer, NATS_SERVER_ENV } from "@troupe/testkit";
import { messageOf } from "../format.js";
import { failure } from "../io.js";
import { type ChildSpec, DevChild } from "./child.js";

const LOOPBACK = "127.0.0.1";
export const DEFAULT_PORT = 4222;

/**
 * The binary to run, or why there is none. `env` is consulted for TROUPE_NATS_SERVER
 * first (so a caller's environment wins over the process's).
 */
export function locateNatsServer(
  env: Readonly<Record<string, string | undefined>>,
): { binary: string } | { missing: string } {
  const fromEnv = env[NATS_SERVER_ENV];
  if (fromEnv !== undefined && fromEnv !== "") {
    return isExecutable(fromEnv)
      ? { binary: fromEnv }
      : { missing: `${NATS_SERVER_ENV}=${fromEnv} is not an executable file` };
  }
  try {
    return { binary: findNatsServer() };
  } catch (e) {
    return { missing: messageOf(e) };
  }
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

/** Resolves with the port if it can be bound on loopback right now. */
function tryPort(port: number): Promise<number | undefined> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(undefined));
    server.listen({ host: LOOPBACK, port, exclusive: true }, () => {
      const address = server.address();
      const bound = typeof address === "object" && address !== null ? address.port : undefined;
      server.close(() => resolve(bound));
    });
  });
}

/** `preferred` if free (0 = any), else a port the kernel picks. */
export async function choosePort(preferred: number): Promise<number> {
  if (preferred !== 0) {
    const p = await tryPort(preferred);
    if (p !== undefined) return p;
  }
  const any = await tryPort(0);
  if (any === undefined) throw failure("could not find a free loopback port");
  return any;
}

export interface DevNatsOptions {
  binary: string;
  /** Preferred client port; 0 = any free port. */
  port: number;
  /** JetStream store and config live here. */
  dataDir: string;
  logDir: string;
  echo?: (line: string) => void;
  env: NodeJS.ProcessEnv;
  startTimeoutMs?: number;
  signal?: AbortSignal;
}

export interface DevNats {
  child: DevChild;
  url: string;
  port: number;
  monitorUrl: string;
}

export async function startDevNats(options: DevNatsOptions): Promise<DevNats> {
  mkdirSync(options.dataDir, { recursive: true });
  for (let attempt = 1; ; attempt++) {
    const port = await choosePort(attempt === 1 ? options.port : 0);
    const monitorPort = await choosePort(0);
    const configFile = join(options.dataDir, "nats-server.conf");
    writeFileSync(
      configFile,
      [
        "# written by troupe dev",
        'server_name: "troupe-dev"',
        `listen: "${LOOPBACK}:${port}"`,
        `http: "${LOOPBACK}:${monitorPort}"`,
        "jetstream {",
        `  store_dir: ${JSON.stringify(options.dataDir)}`,
        "}",
        "",
      ].join("\n"),
    );
    const spec: ChildSpec = {
      name: "nats-server",
      role: "nats-server",
      command: options.binary,
      args: ["-c", configFile],
      cwd: options.dataDir,
      env: options.env,
      logFile: join(options.logDir, "nats-server.log"),
      ...(options.echo === undefined ? {} : { echo: options.echo }),
    };
    const child = new DevChild(spec);
    const monitorUrl = `http://${LOOPBACK}:${monitorPort}`;
    try {
      await waitHealthy(child, monitorUrl, options.startTimeoutMs ?? 15_000, options.signal);
      return { child, url: `nats://${LOOPBACK}:${port}`, port, monitorUrl };
    } catch (e) {
      await child.stop(2000);
      // someone took a port between our check and the server's bind: try other ports
      if (attempt < 3 && /address already in use/i.test(child.tail(40))) continue;
      throw e;
    }
  }
}

/** Polls /healthz (which includes JetStream having recovered its streams). */
async function waitHealthy(
  child: DevChild,
  monitorUrl: string,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = "not checked yet";
  while (Date.now() < deadline) {
    if (signal?.aborted) throw failure("interrupted while nats-server was starting");
    if (!child.running) {
      const exit = child.exit;
      const how = exit?.error
        ? exit.error.message
        : exit?.signal
          ? `signal ${exit.signal}`
          : `code ${exit?.code}`;
      throw failure(
        `nats-server exited while starting (${how}); log ${child.logFile}:\n${child.tail()}`,
      );
    }
    try {
      const res = await fetch(`${monitorUrl}/healthz`, { signal: AbortSignal.timeout(1000) });
      if (res.ok) return;
      last = `healthz ${res.status}: ${(await res.text()).trim()}`;
    } catch (e) {
      last = messageOf(e);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw failure(
    `nats-server was not ready after ${timeoutMs} ms (${last}); log ${child.logFile}:\n${child.tail()}`,
  );
}
