/**
 * JetStream publishes without a request per message. nats.js's `js.publish` is a
 * `request()`: per message it makes a request object with a random token, a timer, a map
 * entry and (with or without async traces) an `Error`, whose stack capture alone was 11 % of a
 * worker's CPU under load. Here every publish carries a reply subject under one wildcard
 * subscription; the server's PubAck (or error, or no-responders status) comes back on it and
 * settles the publish's promise, and one sweep a tenth of a second times out what was not
 * answered. Same errors as `js.publish` gives, so callers tell transient from terminal the
 * same way.
 */
import {
  JetStreamApiError,
  JetStreamError,
  type JetStreamPublishOptions,
  type PubAck,
} from "@nats-io/jetstream";
import {
  createInbox,
  errors,
  type Msg,
  type MsgHdrs,
  type NatsConnection,
  headers as natsHeaders,
  type Subscription,
} from "@nats-io/transport-node";

export type PublishOptions = Partial<Pick<JetStreamPublishOptions, "msgID" | "headers">> & {
  /** Compare-and-set: the subject's last stored sequence must be this (0: no message yet). */
  lastSubjectSequence?: number;
};

interface Waiting {
  resolve(ack: PubAck): void;
  reject(e: unknown): void;
  deadline: number;
  subject: string;
}

const SWEEP_MS = 100;
const decoder = new TextDecoder();

const STREAM_KEY = new TextEncoder().encode('{"stream":"');
const SEQ_KEY = new TextEncoder().encode('","seq":');
const DUPLICATE_TAIL = new TextEncoder().encode(',"duplicate":true}');
const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const CLOSE = 0x7d;

function matches(data: Uint8Array, at: number, part: Uint8Array): boolean {
  if (at + part.length > data.length) return false;
  for (let i = 0; i < part.length; i++) if (data[at + i] !== part[i]) return false;
  return true;
}

/**
 * Reads the PubAcks nats-server nearly always sends — exactly `{"stream":"<name>","seq":<n>}`,
 * or with `,"duplicate":true` before the brace — without JSON.parse and a string per field;
 * anything else (a domain, an error, other fields, other spacing) is left to JSON.parse. The
 * stream name is decoded once and reused while it stays the same (one stream per window).
 */
export class QuickPubAck {
  #name: Uint8Array = new Uint8Array(0);
  #stream = "";

  read(data: Uint8Array): { stream: string; seq: number; duplicate: boolean } | undefined {
    if (!matches(data, 0, STREAM_KEY)) return undefined;
    const nameStart = STREAM_KEY.length;
    let at = nameStart;
    while (at < data.length && data[at] !== QUOTE) {
      const c = data[at]!;
      if (c === BACKSLASH || c < 0x20 || c > 0x7e) return undefined; // escapes, non-ASCII
      at++;
    }
    if (at === nameStart || !matches(data, at, SEQ_KEY)) return undefined;
    const nameEnd = at;
    at += SEQ_KEY.length;
    let seq = 0;
    const digitsStart = at;
    while (at < data.length && data[at]! >= 0x30 && data[at]! <= 0x39) {
      seq = seq * 10 + (data[at]! - 0x30);
      at++;
    }
    // a number JSON.parse would read the same: no leading zero, at most 15 digits
    const digits = at - digitsStart;
    if (digits === 0 || digits > 15 || (digits > 1 && data[digitsStart] === 0x30)) return undefined;
    let duplicate: boolean;
    if (at === data.length - 1 && data[at] === CLOSE) duplicate = false;
    else if (at + DUPLICATE_TAIL.length === data.length && matches(data, at, DUPLICATE_TAIL)) {
      duplicate = true;
    } else return undefined;
    return { stream: this.#streamName(data, nameStart, nameEnd), seq, duplicate };
  }

  #streamName(data: Uint8Array, start: number, end: number): string {
    const cached = this.#name;
    let same = cached.length === end - start;
    for (let i = 0; same && i < cached.length; i++) same = cached[i] === data[start + i];
    if (!same) {
      this.#name = data.slice(start, end);
      this.#stream = decoder.decode(this.#name);
    }
    return this.#stream;
  }
}

export class PubAckWindow {
  readonly #nc: NatsConnection;
  readonly #prefix: string;
  readonly #sub: Subscription;
  readonly #waiting = new Map<string, Waiting>();
  #next = 0;
  #sweep: ReturnType<typeof setInterval> | undefined;
  #closed = false;
  #retiring = false;
  readonly #quick = new QuickPubAck();

  constructor(nc: NatsConnection) {
    this.#nc = nc;
    const inboxPrefix = (nc as { options?: { inboxPrefix?: string } }).options?.inboxPrefix;
    this.#prefix = `${createInbox(inboxPrefix)}.`;
    this.#sub = nc.subscribe(`${this.#prefix}*`, {
      callback: (err, m) => {
        if (err === null) this.#answer(m);
      },
    });
  }

  /** Publishes to a stream subject; resolves with the PubAck, rejects as `js.publish` would. */
  publish(
    subject: string,
    data: Uint8Array,
    opts: PublishOptions,
    timeoutMs: number,
  ): Promise<PubAck> {
    if (this.#closed) return Promise.reject(new errors.ClosedConnectionError());
    let h: MsgHdrs | undefined = opts.headers;
    if (opts.msgID !== undefined || opts.lastSubjectSequence !== undefined) {
      h ??= natsHeaders();
      if (opts.msgID !== undefined) h.set("Nats-Msg-Id", opts.msgID);
      if (opts.lastSubjectSequence !== undefined) {
        h.set("Nats-Expected-Last-Subject-Sequence", String(opts.lastSubjectSequence));
      }
    }
    const token = (this.#next++).toString(36);
    return new Promise<PubAck>((resolve, reject) => {
      const reply = this.#prefix + token;
      try {
        if (h === undefined) this.#nc.publish(subject, data, { reply });
        else this.#nc.publish(subject, data, { reply, headers: h });
      } catch (e) {
        reject(e);
        return;
      }
      this.#waiting.set(token, { resolve, reject, deadline: Date.now() + timeoutMs, subject });
      if (this.#sweep === undefined) {
        this.#sweep = setInterval(() => this.#timeouts(), SWEEP_MS);
        this.#sweep.unref();
      }
    });
  }

  /** Publishes waiting for an answer. */
  get pending(): number {
    return this.#waiting.size;
  }

  /** Stops listening once nothing is waiting any more (now, when nothing is). */
  retire(): void {
    this.#retiring = true;
    if (this.#waiting.size === 0) this.close();
  }

  /** Fails what is waiting (with ClosedConnectionError) and stops listening. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#sweep !== undefined) clearInterval(this.#sweep);
    this.#sweep = undefined;
    try {
      this.#sub.unsubscribe();
    } catch {
      // the connection is closed already
    }
    const waiting = [...this.#waiting.values()];
    this.#waiting.clear();
    for (const w of waiting) w.reject(new errors.ClosedConnectionError());
  }

  #answer(m: Msg): void {
    const token = m.subject.slice(this.#prefix.length);
    const w = this.#waiting.get(token);
    if (w === undefined) return; // timed out before, or not ours
    this.#waiting.delete(token);
    if (this.#retiring && this.#waiting.size === 0) this.close();
    if (m.data.length === 0) {
      // a status: 503 when no stream listens on the subject (or JetStream is down)
      const code = m.headers?.code ?? 0;
      w.reject(
        code === 503
          ? new errors.RequestError(`no responders: '${w.subject}'`, {
              cause: new errors.NoRespondersError(w.subject),
            })
          : new JetStreamError(
              `publish to ${w.subject}: status ${code} ${m.headers?.description ?? ""}`,
            ),
      );
      return;
    }
    let r: {
      stream?: string;
      seq?: number;
      duplicate?: boolean;
      domain?: string;
      error?: { code: number; err_code: number; description: string };
    };
    try {
      r = this.#quick.read(m.data) ?? JSON.parse(decoder.decode(m.data));
    } catch (e) {
      w.reject(e);
      return;
    }
    if (r.error !== undefined) {
      w.reject(new JetStreamApiError(r.error));
      return;
    }
    if (typeof r.stream !== "string" || r.stream === "" || typeof r.seq !== "number") {
      w.reject(new errors.RequestError("invalid ack response"));
      return;
    }
    const ack = { stream: r.stream, seq: r.seq, duplicate: r.duplicate === true } as PubAck;
    if (r.domain !== undefined) ack.domain = r.domain;
    w.resolve(ack);
  }

  #timeouts(): void {
    if (this.#waiting.size === 0) {
      clearInterval(this.#sweep);
      this.#sweep = undefined;
      return;
    }
    const now = Date.now();
    for (const [token, w] of this.#waiting) {
      if (w.deadline > now) continue;
      this.#waiting.delete(token);
      w.reject(new errors.TimeoutError());
    }
    if (this.#retiring && this.#waiting.size === 0) this.close();
  }
}
