/** `troupe send` and `troupe request`: talk to one agent through a client runtime. */

import { isTimeout, isTroupeError } from "@troupe/runtime";
import { openClient } from "../client.js";
import { messageOf } from "../format.js";
import { failure, type Io, usageError, writeLine } from "../io.js";
import { parseAddress, parseEvent, toJson } from "../message.js";
import { type GlobalOptions, resolveSettings } from "../settings.js";

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
      throw failure(
        `TIMEOUT: no reply from ${type}/${key} within ${timeoutMs} ms ` +
          `(is a worker hosting "${type}" running in namespace ${settings.namespace}? ` +
          "a longer --timeout may help)",
      );
    }
    if (isTroupeError(e)) throw failure(`${type}/${key} answered with an error: ${describe(e)}`);
    throw failure(`request to ${type}/${key} failed: ${describe(e)}`, { cause: e });
  } finally {
    await client.close();
  }
}

function describe(e: unknown): string {
  return isTroupeError(e) ? `${e.code}: ${e.message}` : messageOf(e);
}
