/** The settings every command shares: which NATS servers, which namespace (flags, then env). */

import { type Io, usageError } from "./io.js";

export const DEFAULT_NATS_URL = "nats://127.0.0.1:4222";
export const DEFAULT_NAMESPACE = "default";
export const NATS_URL_ENV = "TROUPE_NATS_URL";
export const NAMESPACE_ENV = "TROUPE_NAMESPACE";

const NAMESPACE_PATTERN = /^[a-z][a-z0-9-]{0,31}$/;

export interface GlobalOptions {
  nats?: string;
  namespace?: string;
}

export interface Settings {
  /** Server URLs, in the order given. */
  servers: string[];
  /** The servers as the user wrote them (for messages). */
  natsUrl: string;
  namespace: string;
}

export function resolveSettings(options: GlobalOptions, io: Io): Settings {
  const natsUrl = pick(options.nats, io.env[NATS_URL_ENV]) ?? DEFAULT_NATS_URL;
  const servers = natsUrl
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
  if (servers.length === 0) throw usageError(`--nats (${NATS_URL_ENV}) names no server`);
  for (const server of servers) {
    if (!/^(nats|tls|wss?):\/\/[^\s/]+\/?$/.test(server) && !/^[^\s:/]+(:\d+)?$/.test(server)) {
      throw usageError(
        `invalid NATS URL ${JSON.stringify(server)}: expected nats://host:port (comma-separated for several)`,
      );
    }
  }
  const namespace = pick(options.namespace, io.env[NAMESPACE_ENV]) ?? DEFAULT_NAMESPACE;
  validateNamespace(namespace);
  return { servers, natsUrl: servers.join(","), namespace };
}

export function validateNamespace(namespace: string): void {
  if (!NAMESPACE_PATTERN.test(namespace)) {
    throw usageError(
      `invalid namespace ${JSON.stringify(namespace)}: use 1-32 characters of a-z, 0-9 and '-', starting with a letter`,
    );
  }
}

function pick(...values: (string | undefined)[]): string | undefined {
  for (const v of values) if (v !== undefined && v.trim() !== "") return v.trim();
  return undefined;
}
