/**
 * The low-level channel API for plain callables (MFP parity): bind a function as an
 * endpoint with a 32-byte agent id, establish encrypted channels to other endpoints, send
 * bytes. Same runtime underneath: the inbox, the checkpoint pipeline, retries, quarantine.
 */
import { randomBytes } from "node:crypto";
import {
  deriveChannelKey,
  ErrorCode,
  type ErrorInfo,
  type Frame,
  fromErrorInfo,
  generateKeyPair,
  newMessageId,
  sealFrame,
  TroupeError,
  toHex,
} from "@troupe/wire";
import type { MessageInfo } from "./actions.js";
import type { Channel } from "./channels-table.js";
import { Host, type HostStatus, LifecycleState } from "./host.js";
import type { Receipt, Runtime } from "./runtime.js";
import { RuntimeCore } from "./runtime.js";

/** What a bound callable receives: bytes from a peer on a channel, already opened and checked. */
export interface ChannelMessage {
  channelId: string;
  /** The sender's 32-byte agent id. */
  from: Uint8Array;
  bytes: Uint8Array;
  /** The sender's sequence number on this channel (1, 2, …; each accepted once). */
  sequence: number;
  messageId: string;
}

/** A plain function as a message endpoint. A throw (or rejection) is a handler failure. */
export type Callable = (message: ChannelMessage) => void | Promise<void>;

/**
 * A failure reported back to an endpoint about a message it sent: the peer refused it
 * (`REPLAY_DETECTED`, `CRYPTO_ERROR`, …), or its handler failed on it after all retries and the
 * peer is now quarantined (`QUARANTINE_TRIGGERED`).
 */
export interface ChannelError {
  error: TroupeError;
  /** The id of the message that failed: the `messageId` of its Receipt. */
  messageId: string | undefined;
  /** Who reported it: the peer's agent id (empty when the runtime itself reported it). */
  from: Uint8Array;
}

export interface BindOptions {
  /**
   * Called with failures of messages this endpoint sent. Without it they are logged. A throw
   * (or rejection) is a handler failure of this endpoint, as for the callable.
   */
  onError?: (failure: ChannelError) => void | Promise<void>;
}

export interface ChannelInfo {
  channelId: string;
  /** The other endpoint's agent id. */
  peerId: Uint8Array;
  establishedAt: number;
}

export interface BoundHandle {
  /** 32 bytes, random, unique to this binding. */
  readonly agentId: Uint8Array;
  /** `#<hex agent id>`: the endpoint's address in envelopes. */
  readonly address: string;
  /** X25519 public key, for channels whose key is derived. */
  readonly publicKey: Uint8Array;
  /**
   * Opens an encrypted channel to another bound endpoint of this runtime. With `key` (32 bytes)
   * the channel uses it; without, the key is derived (X25519 + HKDF-SHA-256). Returns its id.
   */
  establishChannel(peerId: Uint8Array, key?: Uint8Array): Promise<string>;
}

const ADDRESS_PREFIX = "#";
const KDF_INFO = "troupe/channel/v1";

class CallableHost extends Host {
  readonly handle: BoundHandleImpl;

  constructor(handle: BoundHandleImpl, runtime: RuntimeCore) {
    super(handle.address, runtime);
    this.handle = handle;
  }

  get channelCount(): number {
    return this.handle.channels().length;
  }

  protected async activate(): Promise<boolean> {
    await this.restoreQuarantine(await this.kernel.backend.quarantine.get(this.address));
    return true;
  }

  protected apply(event: unknown, info: MessageInfo): unknown {
    if (info.kind === "error") {
      // a notice about a message this endpoint sent: not a failure of its own
      const error = fromErrorInfo(event as ErrorInfo);
      const onError = this.handle.options.onError;
      if (onError === undefined) {
        this.kernel.logger.warn(
          { agent: this.address, from: info.from, code: error.code },
          `a message sent from here failed: ${error.message}`,
        );
        return undefined;
      }
      try {
        const r = onError({
          error,
          messageId: info.correlationId,
          from: this.handle.runtime.peerIdOf(info.from),
        });
        return r instanceof Promise ? r : undefined;
      } catch (e) {
        return e ?? new Error("onError failed");
      }
    }
    if (!(event instanceof Uint8Array) || info.channel === undefined) {
      return new TroupeError(ErrorCode.INVALID_STATE, "a bound callable takes bytes on a channel");
    }
    try {
      const r = this.handle.callable({
        channelId: info.channel,
        from: this.handle.runtime.peerIdOf(info.from),
        bytes: event,
        sequence: info.senderSequence,
        messageId: info.messageId,
      });
      return r instanceof Promise ? r : undefined;
    } catch (e) {
      return e ?? new Error("callable failed");
    }
  }

  protected async recover(): Promise<void> {}
  protected async rollback(): Promise<void> {}
  protected async persist(): Promise<void> {}
  protected stopActor(): void {}

  async close(): Promise<void> {
    this.closed = true;
    await this.idle();
    this.state = LifecycleState.UNBOUND;
  }
}

class BoundHandleImpl implements BoundHandle {
  readonly agentId: Uint8Array;
  readonly address: string;
  readonly publicKey: Uint8Array;
  readonly privateKey: Uint8Array;
  readonly runtime: ChannelRuntime;
  readonly callable: Callable;
  readonly options: BindOptions;
  readonly host: CallableHost;

  constructor(runtime: ChannelRuntime, callable: Callable, options: BindOptions) {
    this.runtime = runtime;
    this.callable = callable;
    this.options = options;
    this.agentId = new Uint8Array(randomBytes(32));
    this.address = ADDRESS_PREFIX + toHex(this.agentId);
    const kp = generateKeyPair();
    this.publicKey = kp.publicKey;
    this.privateKey = kp.privateKey;
    this.host = new CallableHost(this, runtime.core);
  }

  get state(): LifecycleState {
    return this.host.state;
  }

  assertUsable(): void {
    if (this.host.state === LifecycleState.UNBOUND) {
      throw new TroupeError(ErrorCode.INVALID_STATE, `${this.address} is unbound`);
    }
    if (!this.runtime.core.running) {
      throw new TroupeError(ErrorCode.INVALID_STATE, "the runtime is shut down");
    }
  }

  async establishChannel(peerId: Uint8Array, key?: Uint8Array): Promise<string> {
    this.assertUsable();
    const peer = this.runtime.handleOf(peerId);
    if (peer === undefined || peer.state === LifecycleState.UNBOUND) {
      throw new TroupeError(
        ErrorCode.INVALID_ARGUMENT,
        "no bound endpoint has that agent id here",
        {
          details: { peerId: peerId instanceof Uint8Array ? toHex(peerId) : String(peerId) },
        },
      );
    }
    if (peer === this)
      throw new TroupeError(ErrorCode.INVALID_ARGUMENT, "a channel needs two endpoints");
    const channelId = newMessageId();
    let channelKey: Uint8Array;
    if (key !== undefined) {
      if (!(key instanceof Uint8Array) || key.length !== 32) {
        throw new TroupeError(ErrorCode.CRYPTO_ERROR, "a channel key is exactly 32 bytes");
      }
      channelKey = new Uint8Array(key);
    } else {
      // salt = the channel id, info names both ends: every channel gets a key of its own
      channelKey = deriveChannelKey({
        privateKey: this.privateKey,
        peerPublicKey: peer.publicKey,
        salt: new TextEncoder().encode(channelId),
        info: `${KDF_INFO}\u0000${[this.address, peer.address].sort().join("\u0000")}`,
      });
    }
    const channel = this.runtime.core.openChannel(
      this.address,
      peer.address,
      channelKey,
      channelId,
    );
    for (const h of [this, peer]) {
      if (h.host.state === LifecycleState.BOUND) h.host.state = LifecycleState.ACTIVE;
    }
    return channel.id;
  }

  channels(): Channel[] {
    return [...this.runtime.core.channels.values()].filter(
      (c) => c.a === this.address || c.b === this.address,
    );
  }
}

/** Per-runtime registry of bound handles. */
class ChannelRuntime {
  readonly core: RuntimeCore;
  readonly #handles = new Map<string, BoundHandleImpl>();

  constructor(core: RuntimeCore) {
    this.core = core;
  }

  add(h: BoundHandleImpl): void {
    this.#handles.set(h.address, h);
  }

  remove(h: BoundHandleImpl): void {
    this.#handles.delete(h.address);
  }

  handleOf(peerId: Uint8Array): BoundHandleImpl | undefined {
    if (!(peerId instanceof Uint8Array) || peerId.length !== 32) return undefined;
    return this.#handles.get(ADDRESS_PREFIX + toHex(peerId));
  }

  peerIdOf(address: string): Uint8Array {
    return this.#handles.get(address)?.agentId ?? new Uint8Array(0);
  }
}

const registries = new WeakMap<RuntimeCore, ChannelRuntime>();

function core(runtime: Runtime): RuntimeCore {
  if (!(runtime instanceof RuntimeCore)) {
    throw new TroupeError(
      ErrorCode.INVALID_ARGUMENT,
      "bind() needs a runtime made by createRuntime()",
    );
  }
  return runtime;
}

function impl(handle: BoundHandle): BoundHandleImpl {
  if (!(handle instanceof BoundHandleImpl)) {
    throw new TroupeError(ErrorCode.INVALID_ARGUMENT, "not a handle made by bind()");
  }
  return handle;
}

/** Binds a plain function as an endpoint. Its state starts BOUND; ACTIVE once on a channel. */
export function bind(runtime: Runtime, callable: Callable, options: BindOptions = {}): BoundHandle {
  const c = core(runtime);
  if (typeof callable !== "function") {
    throw new TroupeError(ErrorCode.INVALID_ARGUMENT, "bind() needs a function");
  }
  if (options?.onError !== undefined && typeof options.onError !== "function") {
    throw new TroupeError(ErrorCode.INVALID_ARGUMENT, "bind(): onError must be a function");
  }
  if (!c.running) throw new TroupeError(ErrorCode.INVALID_STATE, "the runtime is shut down");
  let reg = registries.get(c);
  if (reg === undefined) {
    reg = new ChannelRuntime(c);
    registries.set(c, reg);
  }
  const handle = new BoundHandleImpl(reg, callable, { ...options });
  reg.add(handle);
  c.registerHost(handle.host);
  return handle;
}

/** Seals `bytes` with the channel's key and appends it to the peer's inbox. */
export async function send(
  handle: BoundHandle,
  channelId: string,
  bytes: Uint8Array,
): Promise<Receipt> {
  const h = impl(handle);
  h.assertUsable();
  if (h.state === LifecycleState.QUARANTINED) {
    throw new TroupeError(ErrorCode.QUARANTINED, `${h.address} is quarantined`);
  }
  if (!(bytes instanceof Uint8Array)) {
    throw new TroupeError(ErrorCode.INVALID_ARGUMENT, "send() takes a Uint8Array");
  }
  const channel = h.runtime.core.channels.get(channelId);
  if (channel === undefined || (channel.a !== h.address && channel.b !== h.address)) {
    throw new TroupeError(
      ErrorCode.CHANNEL_NOT_FOUND,
      `no channel ${String(channelId)} on ${h.address}`,
    );
  }
  const core = h.runtime.core;
  const frame: Frame = {
    envelope: {
      version: 1,
      kind: "event",
      messageId: newMessageId(),
      from: h.address,
      to: channel.peerOf(h.address),
      channel: channel.id,
      sequence: channel.nextSequence(h.address),
      timestampNs: core.clock.nowNs(),
    },
    message: { kind: "bytes", payload: bytes },
  };
  const sealed = sealFrame(frame, channel.key, core.config.limits);
  return core.appendBytes(sealed, frame.envelope);
}

export function channels(handle: BoundHandle): ChannelInfo[] {
  const h = impl(handle);
  return h.channels().map((c) => ({
    channelId: c.id,
    peerId: h.runtime.peerIdOf(c.peerOf(h.address)),
    establishedAt: c.establishedAt,
  }));
}

export async function status(handle: BoundHandle): Promise<HostStatus> {
  return impl(handle).host.status();
}

/** Closes the endpoint's channels after flushing what is in its mailbox; the handle is UNBOUND after. */
export async function unbind(handle: BoundHandle): Promise<void> {
  const h = impl(handle);
  if (h.state === LifecycleState.UNBOUND) {
    throw new TroupeError(ErrorCode.INVALID_STATE, `${h.address} is unbound already`);
  }
  await h.host.kick();
  await h.host.close();
  for (const c of h.channels()) h.runtime.core.channels.delete(c.id);
  h.runtime.remove(h);
  h.runtime.core.forget(h.host);
}
