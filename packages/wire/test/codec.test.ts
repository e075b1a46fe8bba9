import { Packr } from "msgpackr";
import { describe, expect, it } from "vitest";
import {
  DEFAULT_LIMITS,
  type DecodeLimits,
  decodeFrame,
  type Envelope,
  ErrorCode,
  encodeFrame,
  type Frame,
  FrameKind,
  type Message,
  PayloadKind,
  peekEnvelope,
  WIRE_VERSION,
} from "../src/index.js";
import { craftFrame, expectCode, hex, normalizeValue, sampleFrame } from "./helpers.js";

// Raw msgpack for hand-built (including hostile) frames, with the codec's peer-safe settings.
const raw = new Packr({ useRecords: false, structuredClone: false });
const pack = (v: unknown): Uint8Array => new Uint8Array(raw.pack(v));

/** A valid envelope, packed positionally as the codec does (see codec.ts). */
const ENVELOPE = pack([1_700_000_000_000_000_000n, 0, 1, "m-1", "a/1", "b/2"]);
const BODY = pack([0, { type: "ping" }]);

function roundTrip(frame: Frame, limits?: DecodeLimits): Frame {
  const decoded = decodeFrame(encodeFrame(frame, limits), limits);
  expect(decoded.envelope).toStrictEqual(frame.envelope);
  expect(decoded.message.kind).toBe(frame.message.kind);
  expect(normalizeValue(decoded.message.payload)).toEqual(normalizeValue(frame.message.payload));
  expect(decoded.message.meta).toStrictEqual(frame.message.meta);
  return decoded;
}

describe("round trips", () => {
  const payloads: Record<PayloadKind, unknown> = {
    data: { type: "greet", to: "you", n: [1, 2, 3], nested: { ok: true, none: null } },
    bytes: new Uint8Array([0, 1, 2, 253, 254, 255]),
    error: {
      code: ErrorCode.HANDLER_ERROR,
      message: "boom",
      details: { step: 3 },
      retryAfterMs: 50,
    },
  };
  for (const kind of Object.values(FrameKind)) {
    for (const payloadKind of Object.values(PayloadKind)) {
      it(`${kind} frame with a ${payloadKind} payload`, () => {
        roundTrip(
          sampleFrame({
            envelope: { kind },
            message: { kind: payloadKind, payload: payloads[payloadKind] },
          }),
        );
      });
    }
  }

  it("every combination of optional envelope fields and meta", () => {
    const optional: Partial<Envelope>[] = [
      { channel: "ch-1" },
      { correlationId: "req-9" },
      { replyTo: "~client-7" },
      { trace: { traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" } },
      {
        trace: {
          traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
          tracestate: "congo=t61rcWkgMzE",
        },
      },
    ];
    for (let mask = 0; mask < 1 << optional.length; mask++) {
      const extra: Partial<Envelope> = {};
      optional.forEach((o, i) => {
        if (mask & (1 << i)) Object.assign(extra, o);
      });
      const metas: (Record<string, string> | undefined)[] = [
        undefined,
        {},
        { "x-tenant": "acme", ключ: "значение" },
      ];
      for (const meta of metas) {
        const message: Message = { kind: PayloadKind.DATA, payload: { mask } };
        if (meta !== undefined) message.meta = meta;
        const decoded = roundTrip(sampleFrame({ envelope: extra, message }));
        // Absent stays absent: no keys holding undefined.
        for (const key of ["channel", "correlationId", "replyTo", "trace"] as const) {
          expect(key in decoded.envelope).toBe(key in extra);
        }
        expect("meta" in decoded.message).toBe(meta !== undefined);
      }
    }
  });

  it("bigint timestamps over the whole uint64 range, written as uint64", () => {
    for (const ts of [
      0n,
      1n,
      2n ** 32n,
      2n ** 53n + 1n,
      2n ** 63n - 1n,
      2n ** 63n,
      2n ** 64n - 1n,
    ]) {
      const bytes = encodeFrame(sampleFrame({ envelope: { timestampNs: ts } }));
      expect(bytes[8]).toBe(0xcf); // header(7) + fixarray(1): the timestamp's type byte
      expect(decodeFrame(bytes).envelope.timestampNs).toBe(ts);
    }
  });

  it("envelope strings at every msgpack string-header boundary, ASCII and not", () => {
    for (const length of [1, 31, 32, 255, 256, 1023, 1024]) {
      for (const unit of ["a", "é", "€", "😀"]) {
        const s = unit.repeat(Math.floor(length / unit.length)) || unit;
        roundTrip(
          sampleFrame({
            envelope: {
              messageId: s,
              from: s,
              to: s,
              channel: s,
              correlationId: s,
              replyTo: s,
              trace: { traceparent: s, tracestate: s },
            },
          }),
        );
      }
    }
    // Trailing absent fields are left out; absent fields before a present one are nil.
    for (const present of ["channel", "correlationId", "replyTo"] as const) {
      roundTrip(sampleFrame({ envelope: { [present]: "x" } }));
    }
  });

  it("sequence numbers up to 2^53-1", () => {
    for (const sequence of [0, 1, 127, 65_536, 2 ** 32, Number.MAX_SAFE_INTEGER]) {
      roundTrip(sampleFrame({ envelope: { sequence } }));
    }
  });

  it("binary payloads, as the payload and nested, copied out of the input", () => {
    const blob = new Uint8Array(300).map((_, i) => i & 0xff);
    const frame = sampleFrame({
      message: { payload: { blob, empty: new Uint8Array(0), list: [Buffer.from("hi")] } },
    });
    const bytes = encodeFrame(frame);
    const decoded = decodeFrame(bytes).message.payload as { blob: Uint8Array };
    expect(decoded.blob).toBeInstanceOf(Uint8Array);
    expect(Buffer.from(decoded.blob).equals(Buffer.from(blob))).toBe(true);
    bytes.fill(0); // the transport reuses its buffer…
    expect(decoded.blob[299]).toBe(299 & 0xff); // …and the decoded payload is unaffected
  });

  it("unicode keys and strings", () => {
    const payload = {
      "": "empty key",
      "a.b": "dotted",
      "😀": "emoji 👩‍👩‍👧",
      中文: "汉字",
      "e\u0301": "combining",
      long: "é".repeat(5000),
      constructor: "just a key",
    };
    roundTrip(sampleFrame({ message: { payload } }));
    roundTrip(sampleFrame({ envelope: { from: "bot/ключ 🔑", to: "x/✓" } }));
  });

  it("numbers and the payload integer policy", () => {
    const payload = [0, -1, 127, -33, 255, 65_535, 2 ** 32, -(2 ** 31) - 1, 2 ** 53, 0.5, -1e-300];
    roundTrip(
      sampleFrame({ message: { payload: [...payload, Number.NaN, Number.POSITIVE_INFINITY] } }),
    );
    // int64 on the wire: numbers within ±2^53, bigint beyond (no silent precision loss)
    const decoded = decodeFrame(
      encodeFrame(sampleFrame({ message: { payload: [5n, -(2n ** 60n), 2n ** 64n - 1n] } })),
    );
    expect(decoded.message.payload).toEqual([5, -(2n ** 60n), 2n ** 64n - 1n]);
  });

  it("undefined, null and sparse arrays survive", () => {
    // biome-ignore lint/suspicious/noSparseArray: a hole is what is being tested
    const payload = { a: undefined, b: null, c: [1, undefined, , 4] };
    const decoded = decodeFrame(encodeFrame(sampleFrame({ message: { payload } })));
    expect(decoded.message.payload).toStrictEqual({
      a: undefined,
      b: null,
      c: [1, undefined, undefined, 4],
    });
    expect(
      decodeFrame(encodeFrame(sampleFrame({ message: { payload: undefined } }))).message.payload,
    ).toBe(undefined);
  });

  it("decodes a frame inside a larger buffer and from a Buffer", () => {
    const bytes = encodeFrame(sampleFrame());
    const big = new Uint8Array(bytes.length + 20);
    big.set(bytes, 13);
    expect(decodeFrame(big.subarray(13, 13 + bytes.length))).toEqual(decodeFrame(bytes));
    expect(decodeFrame(Buffer.from(bytes))).toEqual(decodeFrame(bytes));
  });

  it("peekEnvelope reads routing fields without decoding the body", () => {
    const frame = sampleFrame({ envelope: { channel: "ch" } });
    const bytes = encodeFrame(frame);
    const envelopeEnd = 7 + new DataView(bytes.buffer, bytes.byteOffset).getUint32(3);
    bytes.fill(0xc1, envelopeEnd); // poison the body
    expect(peekEnvelope(bytes)).toEqual({ envelope: frame.envelope, sealed: false });
    expectCode(() => decodeFrame(bytes), ErrorCode.DECODE_ERROR);
  });

  it("maps keep the ordinary prototype and decode as plain objects", () => {
    const decoded = decodeFrame(
      encodeFrame(sampleFrame({ message: { payload: { a: { b: 1 } } } })),
    );
    const payload = decoded.message.payload as { a: object };
    expect(Object.getPrototypeOf(payload)).toBe(Object.prototype);
    expect(Object.getPrototypeOf(payload.a)).toBe(Object.prototype);
  });
});

describe("encoding refuses invalid frames with typed errors", () => {
  const bad: [string, () => Frame, ErrorCode][] = [
    [
      "unknown frame kind",
      () => sampleFrame({ envelope: { kind: "shout" } }),
      ErrorCode.INVALID_ARGUMENT,
    ],
    ["version 2", () => sampleFrame({ envelope: { version: 2 } }), ErrorCode.INVALID_ARGUMENT],
    [
      "empty messageId",
      () => sampleFrame({ envelope: { messageId: "" } }),
      ErrorCode.INVALID_ARGUMENT,
    ],
    ["numeric from", () => sampleFrame({ envelope: { from: 7 } }), ErrorCode.INVALID_ARGUMENT],
    [
      "null channel",
      () => sampleFrame({ envelope: { channel: null } }),
      ErrorCode.INVALID_ARGUMENT,
    ],
    [
      "long to",
      () => sampleFrame({ envelope: { to: "x".repeat(1025) } }),
      ErrorCode.INVALID_ARGUMENT,
    ],
    [
      "negative sequence",
      () => sampleFrame({ envelope: { sequence: -1 } }),
      ErrorCode.INVALID_ARGUMENT,
    ],
    [
      "fractional sequence",
      () => sampleFrame({ envelope: { sequence: 1.5 } }),
      ErrorCode.INVALID_ARGUMENT,
    ],
    [
      "number timestamp",
      () => sampleFrame({ envelope: { timestampNs: 5 } }),
      ErrorCode.INVALID_ARGUMENT,
    ],
    [
      "negative timestamp",
      () => sampleFrame({ envelope: { timestampNs: -1n } }),
      ErrorCode.INVALID_ARGUMENT,
    ],
    [
      "timestamp 2^64",
      () => sampleFrame({ envelope: { timestampNs: 2n ** 64n } }),
      ErrorCode.INVALID_ARGUMENT,
    ],
    [
      "trace without traceparent",
      () => sampleFrame({ envelope: { trace: {} } }),
      ErrorCode.INVALID_ARGUMENT,
    ],
    [
      "unknown payload kind",
      () => sampleFrame({ message: { kind: "json" } }),
      ErrorCode.INVALID_ARGUMENT,
    ],
    [
      "function payload",
      () => sampleFrame({ message: { payload: () => 1 } }),
      ErrorCode.INVALID_ARGUMENT,
    ],
    [
      "nested function",
      () => sampleFrame({ message: { payload: { a: [{ f() {} }] } } }),
      ErrorCode.INVALID_ARGUMENT,
    ],
    [
      "symbol payload",
      () => sampleFrame({ message: { payload: Symbol("s") } }),
      ErrorCode.INVALID_ARGUMENT,
    ],
    [
      "Map payload",
      () => sampleFrame({ message: { payload: new Map([["a", 1]]) } }),
      ErrorCode.INVALID_ARGUMENT,
    ],
    [
      "Set payload",
      () => sampleFrame({ message: { payload: new Set([1]) } }),
      ErrorCode.INVALID_ARGUMENT,
    ],
    [
      "Date payload",
      () => sampleFrame({ message: { payload: { at: new Date() } } }),
      ErrorCode.INVALID_ARGUMENT,
    ],
    [
      "class instance",
      () =>
        sampleFrame({
          message: {
            payload: new (class Point {
              x = 1;
            })(),
          },
        }),
      ErrorCode.INVALID_ARGUMENT,
    ],
    [
      "Float32Array",
      () => sampleFrame({ message: { payload: new Float32Array(2) } }),
      ErrorCode.INVALID_ARGUMENT,
    ],
    [
      "bigint beyond 64 bits",
      () => sampleFrame({ message: { payload: 2n ** 64n } }),
      ErrorCode.INVALID_ARGUMENT,
    ],
    [
      "own __proto__ key",
      () => sampleFrame({ message: { payload: JSON.parse('{"__proto__":{"x":1}}') } }),
      ErrorCode.INVALID_ARGUMENT,
    ],
    [
      "non-string meta",
      () => sampleFrame({ message: { meta: { a: 1 } } }),
      ErrorCode.INVALID_ARGUMENT,
    ],
    [
      "bytes kind without binary",
      () => sampleFrame({ message: { kind: "bytes", payload: "text" } }),
      ErrorCode.INVALID_ARGUMENT,
    ],
    [
      "error kind without ErrorInfo",
      () => sampleFrame({ message: { kind: "error", payload: { message: "x" } } }),
      ErrorCode.INVALID_ARGUMENT,
    ],
    [
      "throwing getter",
      () =>
        sampleFrame({
          message: {
            payload: {
              get boom() {
                throw new Error("getter");
              },
            },
          },
        }),
      ErrorCode.INVALID_ARGUMENT,
    ],
    [
      "nesting deeper than maxDepth",
      () => sampleFrame({ message: { payload: nest(33) } }),
      ErrorCode.LIMIT_EXCEEDED,
    ],
    [
      "a cycle",
      () => {
        const a: Record<string, unknown> = {};
        a.self = a;
        return sampleFrame({ message: { payload: a } });
      },
      ErrorCode.LIMIT_EXCEEDED,
    ],
    [
      "oversized frame",
      () => sampleFrame({ message: { payload: "x".repeat(1024 * 1024) } }),
      ErrorCode.LIMIT_EXCEEDED,
    ],
  ];
  for (const [name, make, code] of bad) {
    it(name, () => {
      expectCode(() => encodeFrame(make()), code);
    });
  }

  it("non-frames", () => {
    for (const v of [
      null,
      undefined,
      1,
      "frame",
      { envelope: null },
      { envelope: sampleFrame().envelope },
    ]) {
      expectCode(() => encodeFrame(v as unknown as Frame), ErrorCode.INVALID_ARGUMENT);
    }
  });

  it("says where in the payload the bad value is", () => {
    expectCode(
      () => encodeFrame(sampleFrame({ message: { payload: { a: { b: [0, new Map()] } } } })),
      ErrorCode.INVALID_ARGUMENT,
      /Map .* at payload\.a\.b\[1\]$/,
    );
  });

  it("checks the limits the receiver will apply, exactly at the boundary", () => {
    const limits: DecodeLimits = {
      ...DEFAULT_LIMITS,
      maxDepth: 4,
      maxCollectionLength: 3,
      maxTotalItems: 10,
      maxStringBytes: 6,
    };
    roundTrip(sampleFrame({ message: { payload: nest(4) } }), limits);
    expectCode(
      () => encodeFrame(sampleFrame({ message: { payload: nest(5) } }), limits),
      ErrorCode.LIMIT_EXCEEDED,
    );
    roundTrip(sampleFrame({ message: { payload: [1, 2, 3] } }), limits);
    expectCode(
      () => encodeFrame(sampleFrame({ message: { payload: [1, 2, 3, 4] } }), limits),
      ErrorCode.LIMIT_EXCEEDED,
    );
    roundTrip(sampleFrame({ message: { payload: "€€" } }), limits); // 6 UTF-8 bytes
    expectCode(
      () => encodeFrame(sampleFrame({ message: { payload: "€€a" } }), limits),
      ErrorCode.LIMIT_EXCEEDED,
    );
    roundTrip(sampleFrame({ message: { payload: [[1, 2], [3, 4], 5] } }), limits); // 8 values
    expectCode(
      () => encodeFrame(sampleFrame({ message: { payload: [[1, 2, 3], [4, 5, 6], [7]] } }), limits),
      ErrorCode.LIMIT_EXCEEDED,
    );
    const frame = sampleFrame({ message: { payload: "x" } });
    const size = encodeFrame(frame).length;
    expect(
      decodeFrame(encodeFrame(frame, { ...DEFAULT_LIMITS, maxFrameBytes: size })),
    ).toBeTruthy();
    expectCode(
      () => encodeFrame(frame, { ...DEFAULT_LIMITS, maxFrameBytes: size - 1 }),
      ErrorCode.LIMIT_EXCEEDED,
    );
  });

  it("a frame bigger than the packer's usual scratch does not disturb later frames", () => {
    const limits = {
      ...DEFAULT_LIMITS,
      maxFrameBytes: 4 * 1024 * 1024,
      maxStringBytes: 4 * 1024 * 1024,
    };
    const big = new Uint8Array(2 * 1024 * 1024).fill(9);
    const decoded = decodeFrame(
      encodeFrame(sampleFrame({ message: { kind: "bytes", payload: big } }), limits),
      limits,
    );
    expect((decoded.message.payload as Uint8Array).length).toBe(big.length);
    for (let i = 0; i < 100; i++) roundTrip(sampleFrame({ envelope: { sequence: i } }));
  });

  it("refuses nonsensical limits", () => {
    expectCode(
      () => encodeFrame(sampleFrame(), { ...DEFAULT_LIMITS, maxDepth: Number.NaN }),
      ErrorCode.INVALID_ARGUMENT,
    );
  });
});

function nest(depth: number): unknown {
  let v: unknown = 0;
  for (let i = 0; i < depth; i++) v = i % 2 ? [v] : { v };
  return v;
}

describe("decoding hostile input", () => {
  it("refuses non-bytes", () => {
    for (const v of [
      null,
      undefined,
      "T\x01",
      42,
      [0x54, 1],
      new ArrayBuffer(16),
      new DataView(new ArrayBuffer(16)),
      {},
    ]) {
      expectCode(() => decodeFrame(v as Uint8Array), ErrorCode.DECODE_ERROR);
      expectCode(() => peekEnvelope(v as Uint8Array), ErrorCode.DECODE_ERROR);
    }
  });

  it("checks the frame size before anything else", () => {
    const garbage = new Uint8Array(DEFAULT_LIMITS.maxFrameBytes + 1).fill(0xc1);
    expectCode(() => decodeFrame(garbage), ErrorCode.LIMIT_EXCEEDED);
    expectCode(() => peekEnvelope(garbage), ErrorCode.LIMIT_EXCEEDED);
    const frame = encodeFrame(sampleFrame());
    expectCode(
      () => decodeFrame(frame, { ...DEFAULT_LIMITS, maxFrameBytes: frame.length - 1 }),
      ErrorCode.LIMIT_EXCEEDED,
    );
  });

  it("header problems", () => {
    expectCode(() => decodeFrame(new Uint8Array(0)), ErrorCode.DECODE_ERROR);
    expectCode(
      () => decodeFrame(hex("5401000000")),
      ErrorCode.DECODE_ERROR,
      /shorter than its header/,
    );
    expectCode(
      () => decodeFrame(craftFrame(ENVELOPE, BODY).map((b, i) => (i === 0 ? 0x55 : b))),
      ErrorCode.DECODE_ERROR,
      /magic/,
    );
    expectCode(
      () => decodeFrame(craftFrame(ENVELOPE, BODY, { version: 2 })),
      ErrorCode.UNSUPPORTED_VERSION,
    );
    expectCode(
      () => decodeFrame(craftFrame(ENVELOPE, BODY, { version: 0 })),
      ErrorCode.UNSUPPORTED_VERSION,
    );
    expectCode(
      () => peekEnvelope(craftFrame(ENVELOPE, BODY, { version: 255 })),
      ErrorCode.UNSUPPORTED_VERSION,
    );
    expectCode(
      () => decodeFrame(craftFrame(ENVELOPE, BODY, { flags: 0x02 })),
      ErrorCode.DECODE_ERROR,
      /flags/,
    );
    expectCode(
      () => decodeFrame(craftFrame(ENVELOPE, BODY, { envelopeLength: 0 })),
      ErrorCode.DECODE_ERROR,
    );
    expectCode(
      () => decodeFrame(craftFrame(ENVELOPE, BODY, { envelopeLength: 0xffffffff })),
      ErrorCode.DECODE_ERROR,
    );
    expectCode(() => decodeFrame(craftFrame(ENVELOPE, new Uint8Array(0))), ErrorCode.DECODE_ERROR);
    expect(decodeFrame(craftFrame(ENVELOPE, BODY)).message.payload).toEqual({ type: "ping" });
  });

  it("a sealed frame needs openFrame", () => {
    const sealedLooking = craftFrame(ENVELOPE, new Uint8Array(60), { flags: 1 });
    expectCode(() => decodeFrame(sealedLooking), ErrorCode.CRYPTO_ERROR, /openFrame/);
    expect(peekEnvelope(sealedLooking).sealed).toBe(true);
  });

  it("deep nesting", () => {
    const deep = new Uint8Array(200).fill(0x91); // [[[[…
    deep[199] = 0x00;
    expectCode(
      () => decodeFrame(craftFrame(ENVELOPE, concat(hex("9200"), deep))),
      ErrorCode.LIMIT_EXCEEDED,
      /nesting/,
    );
    // exactly maxDepth levels of payload is fine
    const ok = concat(hex("9200"), new Uint8Array(32).fill(0x91), hex("00"));
    expect(decodeFrame(craftFrame(ENVELOPE, ok))).toBeTruthy();
    const over = concat(hex("9200"), new Uint8Array(33).fill(0x91), hex("00"));
    expectCode(() => decodeFrame(craftFrame(ENVELOPE, over)), ErrorCode.LIMIT_EXCEEDED);
    // nesting inside the envelope
    expectCode(
      () => peekEnvelope(craftFrame(hex("91919100"), BODY)),
      ErrorCode.DECODE_ERROR,
      /envelope/,
    );
  });

  it("huge collection headers", () => {
    for (const header of ["ddffffffff", "dfffffffff", "dd00010001", "df00010001"]) {
      expectCode(
        () => decodeFrame(craftFrame(ENVELOPE, concat(hex("9200"), hex(header), hex("00")))),
        ErrorCode.LIMIT_EXCEEDED,
      );
    }
    // within the limit but more elements than bytes left: malformed
    expectCode(
      () => decodeFrame(craftFrame(ENVELOPE, concat(hex("9200"), hex("dd00000400"), hex("00")))),
      ErrorCode.DECODE_ERROR,
      /runs past the end/,
    );
    expectCode(
      () => decodeFrame(craftFrame(ENVELOPE, concat(hex("9200"), hex("dcffff")))),
      ErrorCode.DECODE_ERROR,
    );
    // the envelope's shape is fixed by the format, so there it is simply not an envelope
    expectCode(() => peekEnvelope(craftFrame(hex("ddffffffff"), BODY)), ErrorCode.DECODE_ERROR);
  });

  it("strings and binaries longer than the bytes left", () => {
    for (const header of ["db000003e8", "da03e8", "d9ff", "c6000003e8", "c503e8", "c4ff", "bf"]) {
      expectCode(
        () => decodeFrame(craftFrame(ENVELOPE, concat(hex("9200"), hex(header), hex("6869")))),
        ErrorCode.DECODE_ERROR,
        /runs past the end/,
      );
    }
    expectCode(
      () => decodeFrame(craftFrame(ENVELOPE, concat(hex("9200"), hex("dbffffffff")))),
      ErrorCode.LIMIT_EXCEEDED,
    );
    expectCode(
      () => decodeFrame(craftFrame(ENVELOPE, concat(hex("9200"), hex("c6ffffffff")))),
      ErrorCode.LIMIT_EXCEEDED,
    );
    const limits = { ...DEFAULT_LIMITS, maxStringBytes: 4 };
    expectCode(
      () =>
        decodeFrame(
          craftFrame(ENVELOPE, concat(hex("9200"), hex("a5"), hex("0102030405"))),
          limits,
        ),
      ErrorCode.LIMIT_EXCEEDED,
    );
  });

  it("truncated values", () => {
    for (const tail of ["cb0000", "cf00", "cd01", "d2", "dc00", "c5", "de"]) {
      expectCode(
        () => decodeFrame(craftFrame(ENVELOPE, concat(hex("9200"), hex(tail)))),
        ErrorCode.DECODE_ERROR,
      );
    }
    expectCode(
      () => decodeFrame(craftFrame(ENVELOPE, hex("92"))),
      ErrorCode.DECODE_ERROR,
      /past the end/,
    );
  });

  it("trailing bytes", () => {
    expectCode(
      () => decodeFrame(craftFrame(ENVELOPE, concat(BODY, hex("00")))),
      ErrorCode.DECODE_ERROR,
      /trailing/,
    );
    expectCode(
      () => decodeFrame(craftFrame(concat(ENVELOPE, hex("c0")), BODY)),
      ErrorCode.DECODE_ERROR,
      /trailing/,
    );
  });

  it("too many values in total", () => {
    const limits = { ...DEFAULT_LIMITS, maxTotalItems: 10 };
    const body = (n: number) => pack([0, Array.from({ length: n }, (_, i) => i)]);
    expect(decodeFrame(craftFrame(ENVELOPE, body(9)), limits)).toBeTruthy(); // 9 + the array = 10
    expectCode(() => decodeFrame(craftFrame(ENVELOPE, body(10)), limits), ErrorCode.LIMIT_EXCEEDED);
  });

  it("extensions and reserved bytes", () => {
    const cases = {
      "timestamp (Date)": "d6ff00000000",
      "record definition": "d47240",
      "record definition 2": "d5720000",
      "structured-clone id": "d66900000001c0",
      "structured-clone pointer": "d67000000001",
      "bundled strings": "d66200000000",
      "bigint extension": "c7014200",
      "error extension": "d4650093a14561a0c0",
      "typed array": "c7027401ff",
      "ext 8 undefined form": "c70100",
      "undefined with data": "d40001",
      "reserved 0xc1": "c1",
    };
    for (const [name, bytes] of Object.entries(cases)) {
      const e = expectCode(
        () => decodeFrame(craftFrame(ENVELOPE, concat(hex("9200"), hex(bytes)))),
        ErrorCode.DECODE_ERROR,
      );
      expect(e.message, name).toMatch(/extension|reserved/);
    }
    // msgpackr's undefined (fixext1 type 0, data 0) is the one extension a payload may use
    expect(decodeFrame(craftFrame(ENVELOPE, hex("9200d40000"))).message.payload).toBeUndefined();
    expectCode(
      () => peekEnvelope(craftFrame(pack([0n, 0, 1, "m", "a", "b", undefined]), BODY)),
      ErrorCode.DECODE_ERROR,
    );
  });

  it("map keys must be strings", () => {
    for (const body of ["9200810102", "920081c0c0", "92008191c0c0", "92008180c0"]) {
      expectCode(() => decodeFrame(craftFrame(ENVELOPE, hex(body))), ErrorCode.DECODE_ERROR, /key/);
    }
  });

  it("a __proto__ key cannot pollute prototypes", () => {
    // {"__proto__": {"polluted": true}}, also nested and as str8
    const bodies = [
      "920081a95f5f70726f746f5f5f81a8706f6c6c75746564c3",
      "920081a1618181a95f5f70726f746f5f5f81a8706f6c6c75746564c3".replace("8181", "81"),
      "920081d9095f5f70726f746f5f5f81a8706f6c6c75746564c3",
    ];
    for (const body of bodies) {
      expectCode(() => decodeFrame(craftFrame(ENVELOPE, hex(body))), ErrorCode.DECODE_ERROR);
    }
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(Object.prototype).not.toHaveProperty("polluted");
    // A key that merely resembles it is fine
    expect(
      decodeFrame(craftFrame(ENVELOPE, pack([0, { __proto: 1, _proto__: 2 }]))).message.payload,
    ).toEqual({
      __proto: 1,
      _proto__: 2,
    });
  });

  it("wrong envelope shapes", () => {
    const valid: unknown[] = [1n, 0, 1, "m-1", "a/1", "b/2", "ch", "corr", "reply", ["tp", "ts"]];
    expect(decodeFrame(craftFrame(pack(valid), BODY)).envelope).toMatchObject({
      channel: "ch",
      trace: { tracestate: "ts" },
    });
    const replace = (i: number, v: unknown) => valid.map((x, j) => (i === j ? v : x));
    const cases: [string, unknown][] = [
      ["a map", { timestampNs: 1 }],
      ["a string", "envelope"],
      ["too short", valid.slice(0, 5)],
      ["too long", [...valid, null]],
      ["negative timestamp", replace(0, -5)],
      ["string timestamp", replace(0, "1")],
      ["float timestamp", replace(0, 1.5)],
      ["kind out of range", replace(1, 5)],
      ["kind as string", replace(1, "event")],
      ["negative sequence", replace(2, -1)],
      ["fractional sequence", replace(2, 0.5)],
      ["huge sequence", replace(2, 2 ** 53)],
      ["empty messageId", replace(3, "")],
      ["null from", replace(4, null)],
      ["binary to", replace(5, new Uint8Array(1))],
      ["numeric channel", replace(6, 7)],
      ["long correlationId", replace(7, "x".repeat(1025))],
      ["boolean replyTo", replace(8, true)],
      ["trace as string", replace(9, "tp")],
      ["empty trace", replace(9, [])],
      ["trace too long", replace(9, ["a", "b", "c"])],
      ["numeric traceparent", replace(9, [1])],
    ];
    for (const [name, envelope] of cases) {
      const e = expectCode(
        () => peekEnvelope(craftFrame(pack(envelope), BODY)),
        ErrorCode.DECODE_ERROR,
      );
      expect(e.message, name).toMatch(/envelope/);
    }
  });

  it("wrong message shapes", () => {
    const cases: [string, unknown][] = [
      ["not an array", { kind: 0 }],
      ["one field", [0]],
      ["four fields", [0, 1, {}, 2]],
      ["unknown kind", [7, 1]],
      ["kind as string", ["data", 1]],
      ["bytes without binary", [1, "text"]],
      ["error without ErrorInfo", [2, { code: 5 }]],
      ["error with bad retryAfterMs", [2, { code: "X", message: "m", retryAfterMs: -1 }]],
      ["meta as array", [0, 1, ["a"]]],
      ["meta with a number", [0, 1, { a: 1 }]],
    ];
    for (const [name, message] of cases) {
      const e = expectCode(
        () => decodeFrame(craftFrame(ENVELOPE, pack(message))),
        ErrorCode.DECODE_ERROR,
      );
      expect(e.message, name).toMatch(/message/);
    }
  });

  it("accepts compact integers a different encoder might use", () => {
    // timestamp as a small positive int, sequence as uint64
    const envelope = concat(
      hex("96"),
      hex("05"),
      hex("00"),
      hex("cf0000000000000007"),
      pack("m").subarray(0),
      pack("a/1"),
      pack("b/2"),
    );
    const decoded = decodeFrame(craftFrame(envelope, BODY)).envelope;
    expect(decoded.timestampNs).toBe(5n);
    expect(decoded.sequence).toBe(7);
    expect(decoded.version).toBe(WIRE_VERSION);
  });
});

function concat(...parts: Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat(parts));
}

describe("the default frame limit", () => {
  it("is 1 MiB: a frame of exactly 1 MiB passes, one byte more is refused both ways", () => {
    expect(DEFAULT_LIMITS.maxFrameBytes).toBe(1024 * 1024);
    const withBytes = (n: number) =>
      sampleFrame({ message: { kind: "bytes", payload: new Uint8Array(n).fill(7) } });
    // above 64 KiB a binary has a 5-byte header: the frame grows byte for byte with it
    const overhead = encodeFrame(withBytes(100_000)).length - 100_000;
    const fits = 1024 * 1024 - overhead;
    const exact = encodeFrame(withBytes(fits));
    expect(exact.length).toBe(1024 * 1024);
    expect((decodeFrame(exact).message.payload as Uint8Array).length).toBe(fits);
    expect(peekEnvelope(exact).envelope.messageId).toBe("m-0001");
    expectCode(() => encodeFrame(withBytes(fits + 1)), ErrorCode.LIMIT_EXCEEDED);
    const roomy = { ...DEFAULT_LIMITS, maxFrameBytes: 2 * 1024 * 1024 };
    const over = encodeFrame(withBytes(fits + 1), roomy);
    expect(over.length).toBe(1024 * 1024 + 1);
    expect(decodeFrame(over, roomy)).toBeTruthy();
    expectCode(() => decodeFrame(over), ErrorCode.LIMIT_EXCEEDED, /maxFrameBytes/);
    expectCode(() => peekEnvelope(over), ErrorCode.LIMIT_EXCEEDED, /maxFrameBytes/);
  });
});
