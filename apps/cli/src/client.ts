/** A client runtime on the cluster (`@troupe/nats` connect), opened for one command. */

import { connect, type TroupeClient } from "@troupe/nats";
import { isTroupeError, readSealing, type SealingConfig } from "@troupe/runtime";
import { messageOf } from "./format.js";
import { failure, usageError } from "./io.js";
import { openNats } from "./nats.js";
import type { Settings } from "./settings.js";

/** The part of the client runtime the CLI uses. */
export type Client = Pick<TroupeClient, "ref" | "close">;

/** How long a command waits for NATS before it says it is not there. */
const WAIT_FOR_NATS_MS = 3000;

export async function openClient(settings: Settings): Promise<Client> {
  const sealing = await sealingOf(settings);
  // connect() waits for NATS with backoff, as a long-running process should; a command should
  // say at once when nothing listens there, so probe first (refused = immediate failure)
  const probe = await openNats(settings, WAIT_FOR_NATS_MS);
  await probe.close();
  try {
    return await connect({
      servers: settings.servers,
      namespace: settings.namespace,
      name: "troupe-cli",
      waitMs: WAIT_FOR_NATS_MS,
      ...(sealing === undefined ? {} : { sealing }),
    });
  } catch (e) {
    const why = isTroupeError(e) ? `${e.code}: ${e.message}` : messageOf(e);
    throw failure(
      `cannot open a client in namespace ${settings.namespace} at ${settings.natsUrl}: ${why}`,
      { cause: e },
    );
  }
}

/** The channel keys of --channel-keys-dir, read before anything connects (bad keys: exit 2). */
export async function sealingOf(settings: Settings): Promise<SealingConfig | undefined> {
  if (settings.channelKeysDir === undefined) return undefined;
  try {
    return await readSealing(settings.channelKeysDir, settings.sealWith);
  } catch (e) {
    throw usageError(messageOf(e));
  }
}
