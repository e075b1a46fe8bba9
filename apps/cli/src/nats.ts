/** A short-lived NATS connection for one command: fails fast instead of retrying for ever. */

import { connect, errors, type NatsConnection } from "@nats-io/transport-node";
import { messageOf } from "./format.js";
import { failure, type Io } from "./io.js";
import { type GlobalOptions, resolveSettings, type Settings } from "./settings.js";

export async function openNats(settings: Settings, timeoutMs = 3000): Promise<NatsConnection> {
  try {
    return await connect({
      servers: settings.servers,
      name: "troupe-cli",
      timeout: timeoutMs,
      reconnect: false,
    });
  } catch (e) {
    throw failure(`cannot connect to NATS at ${settings.natsUrl}: ${messageOf(e)}`, { cause: e });
  }
}

/** Runs `fn` on a connection opened for it (settings from flags and env), then closes it. */
export async function withNats<T>(
  options: GlobalOptions,
  io: Io,
  fn: (nc: NatsConnection, settings: Settings) => Promise<T>,
): Promise<T> {
  const settings = resolveSettings(options, io);
  const nc = await openNats(settings);
  try {
    return await fn(nc, settings);
  } finally {
    await nc.close();
  }
}

/** A request nobody serves: no coordinator (or worker) listens on the subject. */
export function isNoResponders(e: unknown): boolean {
  return (
    e instanceof errors.NoRespondersError ||
    (e instanceof errors.RequestError && e.isNoResponders()) ||
    (e instanceof Error && e.cause instanceof errors.NoRespondersError)
  );
}

/** A request that got no reply in time. */
export function isTimeout(e: unknown): boolean {
  return (
    e instanceof errors.TimeoutError ||
    (e instanceof Error && e.cause instanceof errors.TimeoutError)
  );
}
