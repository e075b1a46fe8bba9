import { describe, expect, it } from "vitest";
import { QuickPubAck } from "../src/puback.js";

const bytes = (s: string) => new TextEncoder().encode(s);

/** What JSON.parse makes of a PubAck, in the shape QuickPubAck gives. */
function parsed(s: string) {
  const r = JSON.parse(s) as { stream: string; seq: number; duplicate?: boolean };
  return { stream: r.stream, seq: r.seq, duplicate: r.duplicate === true };
}

describe("QuickPubAck", () => {
  it("reads what nats-server sends, as JSON.parse does", () => {
    const quick = new QuickPubAck();
    for (const s of [
      '{"stream":"TROUPE_NS_INBOX","seq":1}',
      '{"stream":"TROUPE_NS_INBOX","seq":9007199254740}',
      '{"stream":"TROUPE_NS_INBOX","seq":42,"duplicate":true}',
      '{"stream":"KV_troupe-ns-snapshots","seq":0}',
      '{"stream":"TROUPE_NS_INBOX","seq":7}', // back to the first name
    ]) {
      expect(quick.read(bytes(s)), s).toEqual(parsed(s));
    }
  });

  it("leaves anything else to JSON.parse", () => {
    const quick = new QuickPubAck();
    for (const s of [
      '{"stream":"S","seq":1,"domain":"hub"}',
      '{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}',
      '{"stream":"S","seq":1,"duplicate":false}',
      '{ "stream":"S","seq":1}',
      '{"stream":"S", "seq":1}',
      '{"stream":"S","seq":01}',
      '{"stream":"S","seq":1234567890123456}',
      '{"stream":"S","seq":-1}',
      '{"stream":"S","seq":1.5}',
      '{"stream":"S","seq":1e3}',
      '{"stream":"S\\"x","seq":1}',
      '{"stream":"Säge","seq":1}',
      '{"stream":"","seq":1}',
      '{"stream":"S","seq":}',
      '{"stream":"S","seq":1}x',
      '{"stream":"S","seq":1',
      '{"seq":1,"stream":"S"}',
      "",
    ]) {
      expect(quick.read(bytes(s)), s).toBeUndefined();
    }
  });

  it("whatever it reads from mutated acks, JSON.parse reads the same", () => {
    const quick = new QuickPubAck();
    const base = bytes('{"stream":"TROUPE_NS_INBOX","seq":123456,"duplicate":true}');
    let seed = 0x9e3779b9;
    const random = (n: number) => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed % n;
    };
    const alphabet = bytes('{}",:0123456789abcdeS\\ -');
    let read = 0;
    for (let i = 0; i < 20_000; i++) {
      let m = base.slice();
      const edits = 1 + random(3);
      for (let e = 0; e < edits; e++) {
        const at = random(m.length);
        const op = random(3);
        if (op === 0) m[at] = alphabet[random(alphabet.length)]!;
        else if (op === 1) m = Uint8Array.from([...m.subarray(0, at), ...m.subarray(at + 1)]);
        else
          m = Uint8Array.from([
            ...m.subarray(0, at),
            alphabet[random(alphabet.length)]!,
            ...m.subarray(at),
          ]);
      }
      const got = quick.read(m);
      if (got === undefined) continue;
      read++;
      const text = new TextDecoder().decode(m);
      const json = JSON.parse(text) as Record<string, unknown>;
      expect(
        Object.keys(json).filter((k) => k !== "duplicate"),
        text,
      ).toEqual(["stream", "seq"]);
      expect(got, text).toEqual(parsed(text));
    }
    expect(read).toBeGreaterThan(100);
  });
});
