/**
 * The settings every command shares: which NATS servers, which namespace, which channel keys
 * (flags, then env).
 */

import { isAbsolute, resolve } from "node:path";
import { type Io, usageError } from "./io.js";

export const DEFAULT_NATS_URL = "nats://127.0.0.1:4222";
export const DEFAULT_NAMESPACE = "default";
export const NATS_URL_ENV = "TROUPE_NATS_URL";
export const NAMESPACE_ENV = "TROUPE_NAMESPACE";
export const CHANNEL_KEYS_DIR_ENV = "TROUPE_CHANNEL_KEYS_DIR";
export const SEAL_WITH_ENV = "TROUPE_SEAL_WITH";

const NAMESPACE_PATTERN = /^[a-z][a-z0-9-]{0,31}$/;

export interface GlobalOptions {
  nats?: string;
  namespace?: string;
  channelKeysDir?: string;
  sealWith?: string;
}

export interface Settings {
  /** Server URLs, in the order given. */
  servers: string[];
  /** The servers as the user wrote them (for messages). */
  natsUrl: string;
  namespace: string;
  /** The channel keys directory (absolute) when agent traffic is sealed. */
  channelKeysDir?: string;
  /** The key to seal with, when the directory holds several. */
  sealWith?: string;
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
  const settings: Settings = { servers, natsUrl: servers.join(","), namespace };
  const keysDir = pick(options.channelKeysDir, io.env[CHANNEL_KEYS_DIR_ENV]);
  const sealWith = pick(options.sealWith, io.env[SEAL_WITH_ENV]);
  if (keysDir !== undefined) {
    settings.channelKeysDir = isAbsolute(keysDir) ? keysDir : resolve(io.cwd, keysDir);
    if (sealWith !== undefined) settings.sealWith = sealWith;
  } else if (sealWith !== undefined) {
    throw usageError(
      `--seal-with (${SEAL_WITH_ENV}) names a key, but no --channel-keys-dir (${CHANNEL_KEYS_DIR_ENV}) gives the keys`,
    );
  }
  return settings;
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
