/** `troupe send` and `troupe request`: talk to one agent through a client runtime. */

import { isCryptoError, isTimeout, isTroupeError } from "@troupe/runtime";
import { openClient } from "../client.js";
import { messageOf } from "../format.js";
import { failure, type Io, usageError, writeLine } from "../io.js";
import { parseAddress, parseEvent, toJson } from "../message.js";
import {
  CHANNEL_KEYS_DIR_ENV,
  type GlobalOptions,
  resolveSettings,
  type Settings,
} from "../settings.js";

export interface SendOptions extends GlobalOptions {
  json?: boolean;
  /** Idempotency key (the message id). */
  id?: string;
}

export interface RequestCommandOptions extends GlobalOptions {
  timeout?: number;
  id?: string;
}

export async function send(
  address: string,
  eventText: string,
  options: SendOptions,
  io: Io,
): Promise<number> {
  const { type, key } = parseAddress(address);
  const event = parseEvent(eventText);
  const settings = resolveSettings(options, io);
  const client = await openClient(settings);
  try {
    const receipt = await client
      .ref(type, key)
      .send(event, options.id === undefined ? undefined : { messageId: options.id });
    if (options.json) {
      writeLine(io.stdout, toJson({ to: `${type}/${key}`, ...receipt }));
    } else {
      writeLine(
        io.stdout,
        `sent to ${type}/${key}: messageId ${receipt.messageId}, sequence ${receipt.sequence}`,
      );
    }
    return 0;
  } catch (e) {
    throw failure(`could not send to ${type}/${key}: ${describe(e)}`, { cause: e });
  } finally {
    await client.close();
  }
}

export async function request(
  address: string,
  eventText: string,
  options: RequestCommandOptions,
  io: Io,
): Promise<number> {
  const { type, key } = parseAddress(address);
  const event = parseEvent(eventText);
  const timeoutMs = options.timeout ?? 2000;
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) {
    throw usageError(`--timeout must be a positive number of milliseconds`);
  }
  const settings = resolveSettings(options, io);
  const client = await openClient(settings);
  try {
    const reply = await client.ref(type, key).request(event, {
      timeoutMs,
      ...(options.id === undefined ? {} : { messageId: options.id }),
    });
    writeLine(io.stdout, toJson(reply, 2));
    return 0;
  } catch (e) {
    if (isTimeout(e)) {
      const refused = e.details?.refused;
      if (typeof refused === "string") {
        throw failure(
          `TIMEOUT: no reply from ${type}/${key} within ${timeoutMs} ms: a reply came and was refused (${refused}). ${keysHint(settings)}`,
        );
      }
      throw failure(
        `TIMEOUT: no reply from ${type}/${key} within ${timeoutMs} ms ` +
          `(is a worker hosting "${type}" running in namespace ${settings.namespace}? ` +
          "a longer --timeout may help)",
      );
    }
    if (isCryptoError(e)) {
      const channel = e.details?.channel;
      const what =
        settings.channelKeysDir === undefined && typeof channel === "string"
          ? `CRYPTO_ERROR: the answer came sealed (${channel}) and this command has no channel keys to open it`
          : describe(e);
      throw failure(`${type}/${key}: ${what}. ${keysHint(settings)}`);
    }
    if (isTroupeError(e)) throw failure(`${type}/${key} answered with an error: ${describe(e)}`);
    throw failure(`request to ${type}/${key} failed: ${describe(e)}`, { cause: e });
  } finally {
    await client.close();
  }
}

/** What to do when sealed traffic could not be opened: the CLI needs the workers' keys. */
function keysHint(settings: Settings): string {
  return settings.channelKeysDir === undefined
    ? `The cluster seals agent traffic with channel keys: give this command the workers' keys with --channel-keys-dir <dir> (or ${CHANNEL_KEYS_DIR_ENV}).`
    : `Do the keys in ${settings.channelKeysDir} match the workers' (and --seal-with name one the workers have)?`;
}

function describe(e: unknown): string {
  return isTroupeError(e) ? `${e.code}: ${e.message}` : messageOf(e);
}
