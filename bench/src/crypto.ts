/** Wire benchmarks at 256 B: XChaCha20-Poly1305 (noble, the node:crypto hybrid, libsodium) and the codec. */
import { randomBytes } from "node:crypto";
import { xchacha20poly1305 } from "@noble/ciphers/chacha.js";
import {
  decodeFrame,
  encodeFrame,
  type Frame,
  FrameKind,
  generateChannelKey,
  openFrame,
  PayloadKind,
  sealFrame,
  WIRE_VERSION,
} from "@troupe/wire";
import {
  defaultXChaCha20Poly1305,
  libsodiumXChaCha20Poly1305,
  nodeXChaCha20Poly1305,
} from "@troupe/wire/internal";

export interface BenchRow {
  name: string;
  opsPerSec: number;
  note?: string;
}

export interface CryptoBenchOptions {
  /** Measured time per case after warm-up. Default 1000 ms. */
  durationMs?: number;
}

const PAYLOAD_BYTES = 256;

/** An event-like payload whose msgpack encoding is close to 256 bytes. */
function eventPayload(): Record<string, unknown> {
  return {
    type: "order.placed",
    orderId: "ord_01HZX3K9QW8R2T6Y4U7I",
    customer: { id: 4711, tier: "gold" },
    items: [
      { sku: "SKU-1001", qty: 2, price: 19.99 },
      { sku: "SKU-2002", qty: 1, price: 5.5 },
    ],
    note: "leave at the door, ring twice",
    total: 45.48,
    tags: ["web", "promo-spring", "first-order"],
  };
}

function sampleFrame(payload: unknown): Frame {
  return {
    envelope: {
      version: WIRE_VERSION,
      kind: FrameKind.EVENT,
      messageId: "Xk2v9Qm3T0aLr8Zp1cYwHg",
      from: "checkout/session-8812",
      to: "fulfilment/eu-1",
      channel: "ch-7f3a",
      sequence: 1024,
      timestampNs: 1_700_000_000_123_456_789n,
      trace: { traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" },
    },
    message: { kind: PayloadKind.DATA, payload },
  };
}

/** Runs `op` in growing batches until `durationMs` has passed; returns operations per second. */
function measure(op: () => void, durationMs: number): number {
  const warmUntil = performance.now() + Math.min(200, durationMs / 4);
  while (performance.now() < warmUntil) for (let i = 0; i < 100; i++) op();
  let ops = 0;
  let batch = 100;
  const start = performance.now();
  let elapsed = 0;
  while (elapsed < durationMs) {
    for (let i = 0; i < batch; i++) op();
    ops += batch;
    elapsed = performance.now() - start;
    if (elapsed < durationMs / 10) batch *= 2;
  }
  return (ops / elapsed) * 1000;
}

// Yield between cases so a caller's timers and logs are not starved.
const breathe = () => new Promise<void>((resolve) => setImmediate(resolve));

export async function runCryptoBench(options: CryptoBenchOptions = {}): Promise<BenchRow[]> {
  const durationMs = options.durationMs ?? 1000;
  const rows: BenchRow[] = [];
  let sink = 0; // keeps results alive so nothing is optimised away

  // Raw AEAD: 256 B plaintext, a real frame header + envelope as associated data.
  const key = generateChannelKey();
  const nonce = new Uint8Array(randomBytes(24));
  const plaintext = new Uint8Array(randomBytes(PAYLOAD_BYTES));
  const plain = encodeFrame(sampleFrame(new Uint8Array(PAYLOAD_BYTES)));
  const envelopeEnd = 7 + new DataView(plain.buffer, plain.byteOffset).getUint32(3);
  const aad = plain.slice(0, envelopeEnd);
  const sealedOut = new Uint8Array(PAYLOAD_BYTES + 16);
  const aeadNote = `${PAYLOAD_BYTES} B plaintext, ${aad.length} B AAD; seal + open`;

  rows.push({
    name: "xchacha20poly1305 seal+open (noble)",
    opsPerSec: measure(() => {
      const sealed = xchacha20poly1305(key, nonce, aad).encrypt(plaintext);
      sink += xchacha20poly1305(key, nonce, aad).decrypt(sealed).length;
    }, durationMs),
    note: aeadNote,
  });
  await breathe();
  const implementations = [
    { impl: nodeXChaCha20Poly1305, label: "node:crypto + noble hchacha" },
    ...(libsodiumXChaCha20Poly1305 === undefined
      ? []
      : [{ impl: libsodiumXChaCha20Poly1305, label: "libsodium, sodium-native" }]),
  ];
  for (const { impl, label } of implementations) {
    rows.push({
      name: `xchacha20poly1305 seal+open (${label})`,
      opsPerSec: measure(() => {
        impl.sealInto(key, nonce, aad, plaintext, sealedOut, 0);
        sink += impl.open(key, nonce, aad, sealedOut).length;
      }, durationMs),
      note: impl === defaultXChaCha20Poly1305 ? `${aeadNote}; the default` : aeadNote,
    });
    await breathe();
  }

  // The codec and whole sealed frames with an event-like payload of about 256 B.
  const frame = sampleFrame(eventPayload());
  const encoded = encodeFrame(frame);
  const sealed = sealFrame(frame, key);
  // payload bytes = frame size minus the same frame carrying null (which encodes as one byte)
  const payloadBytes = encoded.length - encodeFrame(sampleFrame(null)).length + 1;
  const frameNote = `${payloadBytes} B event payload; ${encoded.length} B plain / ${sealed.length} B sealed frame`;
  rows.push({
    name: "encodeFrame",
    opsPerSec: measure(() => {
      sink += encodeFrame(frame).length;
    }, durationMs),
    note: frameNote,
  });
  await breathe();
  rows.push({
    name: "decodeFrame",
    opsPerSec: measure(() => {
      sink += decodeFrame(encoded).envelope.sequence;
    }, durationMs),
    note: `${frameNote}; limits scan + validation included`,
  });
  await breathe();
  rows.push({
    name: "sealFrame",
    opsPerSec: measure(() => {
      sink += sealFrame(frame, key).length;
    }, durationMs),
    note: frameNote,
  });
  await breathe();
  rows.push({
    name: "openFrame",
    opsPerSec: measure(() => {
      sink += openFrame(sealed, key).envelope.sequence;
    }, durationMs),
    note: frameNote,
  });

  if (sink === 0) throw new Error("benchmark produced nothing");
  return rows;
}
