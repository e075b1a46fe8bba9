/** Shared by the integration tests: frames, waiting, a NATS fixture per file. */
import { type NatsConnection, connect as natsConnect } from "@nats-io/transport-node";
import type { Delivery } from "@troupe/runtime";
import type { Frame } from "@troupe/wire";

let seq = 0;

export function frame(
  id: string,
  to = "counter/a",
  payload: unknown = { type: "inc", by: 1 },
): Frame {
  return {
    envelope: {
      version: 1,
      kind: "event",
      messageId: id,
      from: "~c",
      to,
      sequence: ++seq,
      timestampNs: 1n,
    },
    message: { kind: "data", payload },
  };
}

export async function waitFor<T>(
  what: string,
  check: () => T | undefined | false | Promise<T | undefined | false>,
  timeoutMs = 10_000,
  everyMs = 20,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Deliveries collected by a test's handlers. */
export function collector() {
  const got: Delivery[] = [];
  const direct: Frame[] = [];
  /** Sealed direct frames, handed on as bytes. */
  const directSealed: Uint8Array[] = [];
  return {
    got,
    direct,
    directSealed,
    handlers: {
      deliver: (d: Delivery) => got.push(d),
      direct: (m: Frame | Uint8Array) =>
        m instanceof Uint8Array ? directSealed.push(m) : direct.push(m),
    },
  };
}

export function connectTo(url: string | string[]): Promise<NatsConnection> {
  return natsConnect({ servers: url, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
}

let nsCounter = 0;
/** A fresh namespace name per test (each file has its own server, but tests share it). */
export function freshNamespace(prefix = "t"): string {
  nsCounter++;
  return `${prefix}${process.pid % 1000}-${nsCounter}`;
}
