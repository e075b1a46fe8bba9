/**
 * With tracing on, a delivery that arrives as bytes has its envelope read once: the host
 * reads it for the process span and the decode stage takes it from there (sealed or not).
 */
import { trace } from "@opentelemetry/api";
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from "@opentelemetry/sdk-trace-base";
import { encodeFrame, type Frame, peekEnvelope } from "@troupe/wire";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { createRuntime, ErrorCode } from "../src/index.js";
import { counter } from "./fixtures.js";

vi.mock("@troupe/wire", async (importOriginal) => {
  const wire = await importOriginal<typeof import("@troupe/wire")>();
  return { ...wire, peekEnvelope: vi.fn(wire.peekEnvelope) };
});

const peeks = vi.mocked(peekEnvelope);
let provider: BasicTracerProvider;

beforeEach(() => {
  provider = new BasicTracerProvider({
    spanProcessors: [new SimpleSpanProcessor(new InMemorySpanExporter())],
  });
  trace.setGlobalTracerProvider(provider);
});

afterEach(async () => {
  trace.disable();
  await provider.shutdown();
});

function plain(to: string, messageId: string, payload: unknown): Frame {
  return {
    envelope: {
      version: 1,
      kind: "event",
      messageId,
      from: "~test",
      to,
      sequence: 1,
      timestampNs: 1n,
    },
    message: { kind: "data", payload },
  };
}

describe("traced bytes deliveries", () => {
  it("a plain frame's envelope is read once", async () => {
    const runtime = await createRuntime({ agents: [counter] });
    const frame = plain("counter/p", "p1", { type: "inc", by: 2 });
    await runtime.backend.append({ bytes: encodeFrame(frame), envelope: frame.envelope });
    peeks.mockClear();
    await runtime.settled();
    expect(peeks).toHaveBeenCalledTimes(1);
    expect(await runtime.ref("counter", "p").request({ type: "get" })).toEqual({
      type: "value",
      value: 2,
    });
    await runtime.shutdown();
  });

  it("a sealed frame's envelope is read once, and it is opened with its key", async () => {
    const runtime = await createRuntime({
      agents: [counter],
      sealing: { keys: { main: new Uint8Array(32).fill(7) } },
    });
    peeks.mockClear();
    await runtime.ref("counter", "s").send({ type: "inc", by: 3 });
    await runtime.settled();
    expect(peeks).toHaveBeenCalledTimes(1);
    expect(await runtime.ref("counter", "s").request({ type: "get" })).toEqual({
      type: "value",
      value: 3,
    });
    await runtime.shutdown();
  });

  it("bytes whose envelope does not read are still refused by the decode stage", async () => {
    const runtime = await createRuntime({ agents: [counter], senderFailureLimit: 0 });
    const frame = plain("counter/g", "g1", { type: "inc", by: 1 });
    await runtime.backend.append({ bytes: new Uint8Array([1, 2, 3]), envelope: frame.envelope });
    await runtime.settled();
    expect((await runtime.parked()).map((p) => p.code)).toEqual([ErrorCode.DECODE_ERROR]);
    await runtime.shutdown();
  });
});
