/** The frame model: a routing envelope (visible to the transport) and a message (sealable). */

export const WIRE_VERSION = 1;

export const FrameKind = {
  EVENT: "event",
  REQUEST: "request",
  REPLY: "reply",
  ERROR: "error",
  SYSTEM: "system",
} as const;
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];

/** W3C trace context, as carried in NATS headers and in the envelope. */
export interface TraceContext {
  traceparent: string;
  tracestate?: string;
}

/** Routing fields. Authenticated (associated data) when the frame is sealed. */
export interface Envelope {
  version: number;
  kind: FrameKind;
  /** Unique message id; also the JetStream dedup id (`Nats-Msg-Id`). */
  messageId: string;
  /** Sender address: `type/key` for agents, `~<id>` for clients and bound callables. */
  from: string;
  /** Recipient address, same forms as `from`. */
  to: string;
  /** Channel id when the frame travels on an established channel. */
  channel?: string;
  /** Per-channel (or per-sender) sequence number, starting at 1. */
  sequence: number;
  /** Wall-clock time of sending, nanoseconds since the Unix epoch. */
  timestampNs: bigint;
  /** Correlates a reply or error with its request. */
  correlationId?: string;
  /** Where replies go (a client inbox or an agent address). */
  replyTo?: string;
  trace?: TraceContext;
}

export const PayloadKind = {
  /** A msgpack-encodable value, e.g. an XState event object. */
  DATA: "data",
  /** Opaque bytes (the low-level channel API). */
  BYTES: "bytes",
  /** An ErrorInfo. */
  ERROR: "error",
} as const;
export type PayloadKind = (typeof PayloadKind)[keyof typeof PayloadKind];

/** The payload: what the receiving actor sees. */
export interface Message {
  kind: PayloadKind;
  payload: unknown;
  meta?: Record<string, string>;
}

export interface Frame {
  envelope: Envelope;
  message: Message;
}

/** Hard limits applied before and during decoding. */
export interface DecodeLimits {
  /** Whole frame, bytes. Keep below the server's max_payload. Default 1 MiB. */
  maxFrameBytes: number;
  /** Nesting depth of arrays/maps in the payload. Default 32. */
  maxDepth: number;
  /** Elements in any one array or map. Default 65,536. */
  maxCollectionLength: number;
  /** Bytes in any one string or binary. Default = maxFrameBytes. */
  maxStringBytes: number;
  /** Total values (all nodes) in one payload. Default 262,144. */
  maxTotalItems: number;
}

export const DEFAULT_LIMITS: Readonly<DecodeLimits> = Object.freeze({
  maxFrameBytes: 1024 * 1024,
  maxDepth: 32,
  maxCollectionLength: 65_536,
  maxStringBytes: 1024 * 1024,
  maxTotalItems: 262_144,
});
