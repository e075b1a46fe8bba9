/**
 * What Troupe needs from the nats-server it is connected to, checked once at connect: a
 * version that knows every option we send (older servers silently ignore unknown stream and
 * consumer fields) and JetStream switched on.
 */
import type { ServerInfo } from "@nats-io/transport-node";
import { ErrorCode, TroupeError } from "@troupe/wire";

/** The oldest nats-server Troupe runs on. */
export const MIN_SERVER_VERSION = "2.10.0";

/** The largest frame Troupe sends, whatever the server allows. */
export const MAX_FRAME_BYTES = 1024 * 1024;

/**
 * Server features by the version that introduced them. What Troupe uses, all available in
 * 2.10.0 (the minimum):
 * - streams: limits retention, file storage, replicas, `max_age`, `duplicate_window`
 *   (Nats-Msg-Id dedup), `max_msg_size`, discard old, `allow_direct`, `metadata` (2.10);
 * - durable pull consumers with a single `filter_subject`, explicit ack, `ack_wait`,
 *   `max_ack_pending`, `nak` with a delay, `+WPI` (in progress), idle heartbeats;
 * - KV buckets (compare-and-set through `Nats-Expected-Last-Subject-Sequence`).
 * Newer than 2.10, used only where the server has it (`serverHas`), with a fallback:
 * - consumer reset to the ack floor (ADR-60, 2.14): otherwise the consumer is recreated.
 * Anything else newer (per-message TTL 2.11, priority groups 2.11, atomic batches 2.12,
 * schedules 2.12/2.14) is not used; code that adds one must call `requireServerFeature`.
 */
export const ServerFeature = {
  JETSTREAM_BASELINE: "2.10.0",
  STREAM_METADATA: "2.10.0",
  MESSAGE_TTL: "2.11.0",
  PRIORITY_GROUPS: "2.11.0",
  ATOMIC_BATCH: "2.12.0",
  CONSUMER_RESET: "2.14.0",
} as const;

export interface ServerVersion {
  major: number;
  minor: number;
  patch: number;
}

/** Parses `2.10.22`, `v2.11.0-beta.1`, … ; undefined when it is not a version. */
export function parseServerVersion(version: unknown): ServerVersion | undefined {
  if (typeof version !== "string") return undefined;
  const m = /^v?(\d+)\.(\d+)\.(\d+)/.exec(version.trim());
  if (m === null) return undefined;
  return { major: Number(m[1]), minor: Number(m[2]), patch: Number(m[3]) };
}

function compareVersions(a: ServerVersion, b: ServerVersion): number {
  return a.major - b.major || a.minor - b.minor || a.patch - b.patch;
}

function versionOf(info: Pick<ServerInfo, "version">): ServerVersion {
  const v = parseServerVersion(info.version);
  if (v === undefined) {
    throw new TroupeError(
      ErrorCode.CONFIG_ERROR,
      `cannot tell the nats-server version from ${JSON.stringify(info.version)}`,
      { details: { version: info.version } },
    );
  }
  return v;
}

/** True when the server is at least `minVersion`. */
export function serverHas(info: Pick<ServerInfo, "version">, minVersion: string): boolean {
  const min = parseServerVersion(minVersion);
  if (min === undefined) throw new TypeError(`not a version: ${minVersion}`);
  const have = parseServerVersion(info.version);
  return have !== undefined && compareVersions(have, min) >= 0;
}

/**
 * Refuses to go on when the server is older than `minVersion`: an older server would accept
 * the request and silently ignore the option, which is worse than an error.
 */
export function requireServerFeature(
  info: Pick<ServerInfo, "version">,
  feature: string,
  minVersion: string,
): void {
  const have = versionOf(info);
  const min = parseServerVersion(minVersion);
  if (min === undefined) throw new TypeError(`not a version: ${minVersion}`);
  if (compareVersions(have, min) < 0) {
    throw new TroupeError(
      ErrorCode.CONFIG_ERROR,
      `${feature} needs nats-server ${minVersion} or newer; the server is ${info.version}`,
      { details: { feature, minVersion, version: info.version } },
    );
  }
}

export interface ServerLimits {
  /** The server's version string. */
  version: string;
  /** The server's max_payload: headers plus data of one message, bytes. */
  maxPayload: number;
  /** The largest frame Troupe sends or accepts: min(1 MiB, max_payload). */
  maxFrameBytes: number;
}

type CheckedInfo = Pick<ServerInfo, "version" | "max_payload"> &
  Partial<Pick<ServerInfo, "jetstream" | "headers" | "host" | "port" | "server_name">>;

/** Checks the server a connection is on (`nc.info`): version, JetStream, headers. */
export function checkServer(info: CheckedInfo | undefined): ServerLimits {
  if (info === undefined) {
    throw new TroupeError(
      ErrorCode.TRANSPORT_ERROR,
      "not connected to a nats-server (no server info yet)",
      { retryAfterMs: 1000 },
    );
  }
  const where = info.server_name ? ` (${info.server_name})` : "";
  const have = versionOf(info);
  if (compareVersions(have, parseServerVersion(MIN_SERVER_VERSION)!) < 0) {
    throw new TroupeError(
      ErrorCode.CONFIG_ERROR,
      `nats-server ${info.version}${where} is too old: Troupe needs ${MIN_SERVER_VERSION} or newer`,
      { details: { version: info.version, minVersion: MIN_SERVER_VERSION } },
    );
  }
  if (info.jetstream !== true) {
    throw new TroupeError(
      ErrorCode.CONFIG_ERROR,
      `JetStream is not enabled on nats-server ${info.version}${where}: start it with -js ` +
        "(or a jetstream {} block in its config)",
      { details: { version: info.version } },
    );
  }
  if (info.headers === false) {
    throw new TroupeError(
      ErrorCode.CONFIG_ERROR,
      `nats-server ${info.version}${where} does not support message headers`,
      { details: { version: info.version } },
    );
  }
  const maxPayload = info.max_payload;
  if (!Number.isInteger(maxPayload) || maxPayload < 1024) {
    throw new TroupeError(
      ErrorCode.CONFIG_ERROR,
      `nats-server ${info.version}${where} reports an unusable max_payload ${String(maxPayload)}`,
      { details: { maxPayload } },
    );
  }
  return {
    version: info.version,
    maxPayload,
    maxFrameBytes: Math.min(MAX_FRAME_BYTES, maxPayload),
  };
}
