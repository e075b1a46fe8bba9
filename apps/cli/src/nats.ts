/** A short-lived NATS connection for one command: fails fast instead of retrying for ever. */

import { connect, type NatsConnection } from "@nats-io/transport-node";
import { messageOf } from "./format.js";
import { failure } from "./io.js";
import type { Settings } from "./settings.js";

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
