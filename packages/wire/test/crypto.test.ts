import { hkdfSync } from "node:crypto";
import { Packr } from "msgpackr";
import { describe, expect, it } from "vitest";
import {
  AEAD_ENV,
  chooseAead,
  DEFAULT_LIMITS,
  decodeFrame,
  defaultXChaCha20Poly1305,
  deriveChannelKey,
  ErrorCode,
  encodeFrame,
  generateChannelKey,
  generateKeyPair,
  isKeyName,
  keyChannel,
  keyNameOf,
  libsodiumXChaCha20Poly1305,
  newMessageId,
  nobleXChaCha20Poly1305,
  nodeXChaCha20Poly1305,
  openFrame,
  peekEnvelope,
  sealFrame,
  type XChaCha20Poly1305,
} from "../src/internal.js";
import { createRandom, expectCode, hex, sampleFrame, toHexString } from "./helpers.js";

/** sodium-native ships prebuilt addons for these; elsewhere libsodium may not load. */
const LIBSODIUM_PREBUILT =
  ["linux", "darwin", "win32"].includes(process.platform) &&
  ["x64", "arm64"].includes(process.arch);

const IMPLEMENTATIONS: XChaCha20Poly1305[] = [
  nobleXChaCha20Poly1305,
  nodeXChaCha20Poly1305,
  ...(libsodiumXChaCha20Poly1305 === undefined ? [] : [libsodiumXChaCha20Poly1305]),
];

function seal(
  impl: XChaCha20Poly1305,
  key: Uint8Array,
  nonce: Uint8Array,
  aad: Uint8Array,
  pt: Uint8Array,
) {
  const out = new Uint8Array(pt.length + 16);
  impl.sealInto(key, nonce, aad, pt, out, 0);
  return out;
}

// draft-irtf-cfrg-xchacha-03, Appendix A.3.1 (AEAD_XChaCha20_Poly1305). The same vector is
// Wycheproof xchacha20_poly1305_test.json tcId 1 and noble's stablelib_xchacha20poly1305.json.
const DRAFT_A31 = {
  key: "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f",
  nonce: "404142434445464748494a4b4c4d4e4f5051525354555657",
  aad: "50515253c0c1c2c3c4c5c6c7",
  plaintext:
    "4c616469657320616e642047656e746c656d656e206f662074686520636c617373206f66202739393a20" +
    "4966204920636f756c64206f6666657220796f75206f6e6c79206f6e652074697020666f722074686520" +
    "6675747572652c2073756e73637265656e20776f756c642062652069742e",
  ciphertext:
    "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb731c7f1b0b4aa6440bf3a8" +
    "2f4eda7e39ae64c6708c54c216cb96b72e1213b4522f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc3" +
    "69488f76b2383565d3fff921f9664c97637da9768812f615c68b13b52e",
  tag: "c0875924c1c7987947deafd8780acf49",
};

// A few more from Wycheproof (C2SP/wycheproof testvectors/xchacha20_poly1305_test.json):
// empty plaintext with and without AAD, one- and two-byte messages.
const WYCHEPROOF = [
  {
    tcId: 2,
    key: "ab1562faea9f47af3ae1c3d6d030e3af230255dff3df583ced6fbbcbf9d606a9",
    iv: "6a5e0c4617e07091b605a4de2c02dde117de2ebd53b23497",
    aad: "",
    msg: "",
    ct: "",
    tag: "e2697ea6877aba39d9555a00e14db041",
  },
  {
    tcId: 3,
    key: "d821dce9b890ea37ae1c89e7cb6aeae9371b8179add0d08f5494718322ae0071",
    iv: "3ec3f7c45e687d75a895bf5e71809e7cdac32158bb48ec0d",
    aad: "8780fb400f94c55d",
    msg: "",
    ct: "",
    tag: "966c22d655b9e56326024f028cf887ad",
  },
  {
    tcId: 4,
    key: "303ccb2e1567c3d9f629a5c632dbc62a9a82c525674f67988b31bd1dee990538",
    iv: "05188738844ab90a8b11beef38eaec3e100d8f4f85ae7a41",
    aad: "",
    msg: "62",
    ct: "45",
    tag: "d15734f984d749fa3f0550a70c43dddf",
  },
  {
    tcId: 5,
    key: "697c197c9e0023c8eee42ddf08c12c46718a436561b0c66d998c81879f7cb74c",
    iv: "cd78f4533c94648feacd5aef0291b00b454ee3dcdb76dcc8",
    aad: "6384f4714ff18c18",
    msg: "e1",
    ct: "b0",
    tag: "e5e35f5332f91bdd2d28e59d68a0b141",
  },
  {
    tcId: 7,
    key: "b0f51b8227013464943370e926b6ed1c9fb45b5994af829ff3a9f998b77d822c",
    iv: "4fd76cbf27cb387502a706461564e5a5c14e027d40bc6eef",
    aad: "322f82a87ee82997",
    msg: "ab8c",
    ct: "b56a",
    tag: "edcafa2c9032aff695e427fc2a344767",
  },
  {
    tcId: 22,
    key: "e421bb3269130c731d1947e7b5d233c11d195ceed1d08634743db9c252bfefa5",
    iv: "21b40036745f64b2aab3e89665cf4dab2b690d88721fe9a3",
    aad: "",
    msg: "1155c7f0ee3e1faa641e",
    ct: "8bd51b64fcd244f0b3aa",
    tag: "dbdd1558934b83ae4393ade73e9edadb",
  },
];

describe("XChaCha20-Poly1305 implementations", () => {
  it("libsodium loads where sodium-native has prebuilt addons, and is the default", () => {
    if (!LIBSODIUM_PREBUILT) return;
    expect(libsodiumXChaCha20Poly1305?.name).toBe("libsodium");
    expect(chooseAead(undefined)).toBe(libsodiumXChaCha20Poly1305);
    expect(chooseAead("")).toBe(libsodiumXChaCha20Poly1305);
    // the default of this process, unless its environment picked one
    if (!process.env[AEAD_ENV]) expect(defaultXChaCha20Poly1305).toBe(libsodiumXChaCha20Poly1305);
  });

  it(`${AEAD_ENV} picks one; an unknown or unusable choice is a CONFIG_ERROR`, () => {
    expect(chooseAead("node")).toBe(nodeXChaCha20Poly1305);
    expect(chooseAead("noble")).toBe(nobleXChaCha20Poly1305);
    if (libsodiumXChaCha20Poly1305 !== undefined) {
      expect(chooseAead("libsodium")).toBe(libsodiumXChaCha20Poly1305);
    } else {
      expectCode(() => chooseAead("libsodium"), ErrorCode.CONFIG_ERROR, /does not load here/);
    }
    expectCode(
      () => chooseAead("openssl"),
      ErrorCode.CONFIG_ERROR,
      /TROUPE_AEAD must be libsodium, node or noble \(or unset\), got "openssl"/,
    );
  });

  for (const impl of IMPLEMENTATIONS) {
    it(`${impl.name}: draft-irtf-cfrg-xchacha-03 A.3.1`, () => {
      const v = DRAFT_A31;
      const sealed = seal(impl, hex(v.key), hex(v.nonce), hex(v.aad), hex(v.plaintext));
      expect(toHexString(sealed)).toBe(v.ciphertext + v.tag);
      expect(toHexString(impl.open(hex(v.key), hex(v.nonce), hex(v.aad), sealed))).toBe(
        v.plaintext,
      );
      const forged = sealed.slice();
      forged[forged.length - 1]! ^= 1;
      expect(() => impl.open(hex(v.key), hex(v.nonce), hex(v.aad), forged)).toThrow();
    });

    it(`${impl.name}: Wycheproof vectors`, () => {
      for (const v of WYCHEPROOF) {
        const sealed = seal(impl, hex(v.key), hex(v.iv), hex(v.aad), hex(v.msg));
        expect(toHexString(sealed), `tcId ${v.tcId}`).toBe(v.ct + v.tag);
        expect(toHexString(impl.open(hex(v.key), hex(v.iv), hex(v.aad), sealed))).toBe(v.msg);
      }
    });
  }

  it("all give byte-identical output on random inputs, and open each other's", () => {
    const random = createRandom(0x5eed);
    for (let i = 0; i < 400; i++) {
      const key = random.bytes(32);
      const nonce = random.bytes(24);
      const aad = random.bytes(random.int(100));
      const pt = random.bytes(random.pick([0, 1, 15, 16, 17, 63, 64, 65, 255, 256, 1000, 5000]));
      const reference = toHexString(seal(nobleXChaCha20Poly1305, key, nonce, aad, pt));
      for (const impl of IMPLEMENTATIONS) {
        const sealed = seal(impl, key, nonce, aad, pt);
        expect(toHexString(sealed), impl.name).toBe(reference);
        for (const opener of IMPLEMENTATIONS) {
          expect(toHexString(opener.open(key, nonce, aad, sealed)), opener.name).toBe(
            toHexString(pt),
          );
        }
      }
    }
  });

  it("inputs at odd offsets in shared buffers", () => {
    const v = DRAFT_A31;
    const at = (h: string, pad: number) => {
      const bytes = hex(h);
      const big = new Uint8Array(bytes.length + pad + 3);
      big.set(bytes, pad);
      return big.subarray(pad, pad + bytes.length);
    };
    for (const impl of IMPLEMENTATIONS) {
      const out = new Uint8Array(hex(v.plaintext).length + 16 + 5);
      impl.sealInto(at(v.key, 1), at(v.nonce, 3), at(v.aad, 5), at(v.plaintext, 7), out, 5);
      expect(toHexString(out.subarray(5))).toBe(v.ciphertext + v.tag);
    }
  });
});

describe("sealed frames", () => {
  const key = generateChannelKey();

  it("seal → open round trip, with the routing envelope readable", () => {
    const frame = sampleFrame({
      envelope: { channel: "ch-9", trace: { traceparent: "00-ab-cd-01" } },
    });
    const sealed = sealFrame(frame, key);
    expect(sealed[0]).toBe(0x54);
    expect(sealed[2]).toBe(0x01);
    expect(openFrame(sealed, key)).toEqual(frame);
    expect(peekEnvelope(sealed)).toEqual({ envelope: frame.envelope, sealed: true });
    // the same header and envelope as the plain encoding, then nonce ‖ ciphertext ‖ tag
    const plain = encodeFrame(frame);
    const envelopeEnd = 7 + new DataView(plain.buffer, plain.byteOffset).getUint32(3);
    expect(toHexString(sealed.subarray(3, envelopeEnd))).toBe(
      toHexString(plain.subarray(3, envelopeEnd)),
    );
    expect(sealed.length).toBe(plain.length + 24 + 16);
  });

  it("binary payloads and every payload kind", () => {
    for (const message of [
      { kind: "bytes", payload: new Uint8Array([1, 2, 3]) },
      { kind: "error", payload: { code: "TIMEOUT", message: "late" } },
      { kind: "data", payload: { blob: new Uint8Array(1000).fill(7) }, meta: { a: "b" } },
    ]) {
      const frame = sampleFrame({ message });
      expect(openFrame(sealFrame(frame, key), key)).toEqual(frame);
    }
  });

  it("opened binaries are memory of their own, not views of a shared plaintext buffer", () => {
    const frame = sampleFrame({
      message: { kind: "data", payload: { a: new Uint8Array(16).fill(1), b: new Uint8Array(8) } },
    });
    const opened = openFrame(sealFrame(frame, key), key).message.payload as Record<
      string,
      Uint8Array
    >;
    expect(opened.a!.buffer.byteLength).toBe(16);
    expect(opened.b!.buffer.byteLength).toBe(8);
    const bytes = openFrame(
      sealFrame(sampleFrame({ message: { kind: "bytes", payload: new Uint8Array(5) } }), key),
      key,
    );
    expect((bytes.message.payload as Uint8Array).buffer.byteLength).toBe(5);
  });

  it("uses a fresh nonce for every frame", () => {
    const nonces = new Set<string>();
    const frame = sampleFrame();
    const plain = encodeFrame(frame);
    const envelopeEnd = 7 + new DataView(plain.buffer, plain.byteOffset).getUint32(3);
    for (let i = 0; i < 600; i++) {
      const sealed = sealFrame(frame, key);
      nonces.add(toHexString(sealed.subarray(envelopeEnd, envelopeEnd + 24)));
    }
    expect(nonces.size).toBe(600);
  });

  it("a flipped bit at every position gives CRYPTO_ERROR", () => {
    const sealed = sealFrame(sampleFrame({ envelope: { channel: "c", correlationId: "r" } }), key);
    let checked = 0;
    for (let i = 0; i < sealed.length * 8; i++) {
      const altered = sealed.slice();
      altered[i >> 3]! ^= 1 << (i & 7);
      expectCode(() => openFrame(altered, key), ErrorCode.CRYPTO_ERROR);
      checked++;
    }
    expect(checked).toBe(sealed.length * 8);
    expect(openFrame(sealed, key)).toBeTruthy();
  });

  it("truncated or extended sealed frames give CRYPTO_ERROR", () => {
    const sealed = sealFrame(sampleFrame(), key);
    for (let n = 0; n < sealed.length; n++) {
      expectCode(() => openFrame(sealed.subarray(0, n), key), ErrorCode.CRYPTO_ERROR);
    }
    const longer = new Uint8Array(sealed.length + 1);
    longer.set(sealed);
    expectCode(() => openFrame(longer, key), ErrorCode.CRYPTO_ERROR);
  });

  it("the wrong key gives CRYPTO_ERROR", () => {
    const sealed = sealFrame(sampleFrame(), key);
    expectCode(
      () => openFrame(sealed, generateChannelKey()),
      ErrorCode.CRYPTO_ERROR,
      /authentication/,
    );
  });

  it("a tampered routing field fails, even when the length is fixed up", () => {
    const frame = sampleFrame({ envelope: { to: "billing/acme" } });
    const sealed = sealFrame(frame, key);
    const plainOld = encodeFrame(frame);
    const oldEnd = 7 + new DataView(plainOld.buffer, plainOld.byteOffset).getUint32(3);
    for (const to of ["billing/acmf", "billing/evil-corp"]) {
      const plainNew = encodeFrame(sampleFrame({ envelope: { to } }));
      const newEnd = 7 + new DataView(plainNew.buffer, plainNew.byteOffset).getUint32(3);
      const forged = new Uint8Array(newEnd + sealed.length - oldEnd);
      forged.set(plainNew.subarray(0, newEnd));
      forged[2] = 0x01;
      forged.set(sealed.subarray(oldEnd), newEnd);
      expect(peekEnvelope(forged).envelope.to).toBe(to); // routing sees the lie…
      expectCode(() => openFrame(forged, key), ErrorCode.CRYPTO_ERROR); // …opening does not accept it
    }
  });

  it("plain and sealed frames are not confused", () => {
    const plain = encodeFrame(sampleFrame());
    expectCode(() => openFrame(plain, key), ErrorCode.CRYPTO_ERROR, /not sealed/);
    expectCode(
      () => decodeFrame(sealFrame(sampleFrame(), key)),
      ErrorCode.CRYPTO_ERROR,
      /openFrame/,
    );
  });

  it("keys must be 32 bytes", () => {
    for (const bad of [
      new Uint8Array(16),
      new Uint8Array(33),
      "k".repeat(32),
      null,
      Array(32).fill(0),
    ]) {
      expectCode(() => sealFrame(sampleFrame(), bad as Uint8Array), ErrorCode.INVALID_ARGUMENT);
      expectCode(
        () => openFrame(sealFrame(sampleFrame(), key), bad as Uint8Array),
        ErrorCode.INVALID_ARGUMENT,
      );
    }
  });

  it("limits: the sealed size counts, and oversized input is refused before any crypto", () => {
    const frame = sampleFrame();
    const size = sealFrame(frame, key).length;
    expect(sealFrame(frame, key, { ...DEFAULT_LIMITS, maxFrameBytes: size })).toHaveLength(size);
    expectCode(
      () => sealFrame(frame, key, { ...DEFAULT_LIMITS, maxFrameBytes: size - 1 }),
      ErrorCode.LIMIT_EXCEEDED,
    );
    const sealed = sealFrame(frame, key);
    expectCode(
      () => openFrame(sealed, key, { ...DEFAULT_LIMITS, maxFrameBytes: size - 1 }),
      ErrorCode.LIMIT_EXCEEDED,
    );
    expectCode(
      () => openFrame(new Uint8Array(DEFAULT_LIMITS.maxFrameBytes + 1), key),
      ErrorCode.LIMIT_EXCEEDED,
    );
    expectCode(() => openFrame("frame" as unknown as Uint8Array, key), ErrorCode.DECODE_ERROR);
  });

  it("after authentication: unknown version → UNSUPPORTED_VERSION, bad shape → DECODE_ERROR", () => {
    const raw = new Packr({ useRecords: false });
    const envelope = raw.pack([1n, 0, 1, "m", "a/1", "b/2"]);
    const sealedBy = (version: number, plaintext: Uint8Array) => {
      const head = new Uint8Array(7 + envelope.length);
      head.set([0x54, version, 0x01]);
      new DataView(head.buffer).setUint32(3, envelope.length);
      head.set(envelope, 7);
      const nonce = generateChannelKey().subarray(0, 24);
      const body = seal(nodeXChaCha20Poly1305, key, nonce, head, plaintext);
      return new Uint8Array(Buffer.concat([head, nonce, body]));
    };
    expect(openFrame(sealedBy(1, raw.pack([0, "hi"])), key).message.payload).toBe("hi");
    expectCode(
      () => openFrame(sealedBy(2, raw.pack([0, "hi"])), key),
      ErrorCode.UNSUPPORTED_VERSION,
    );
    expectCode(
      () => openFrame(sealedBy(1, raw.pack({ not: "a message" })), key),
      ErrorCode.DECODE_ERROR,
    );
    expectCode(() => openFrame(sealedBy(1, hex("92 00 c1")), key), ErrorCode.DECODE_ERROR);
    expectCode(() => openFrame(sealedBy(1, new Uint8Array(0)), key), ErrorCode.DECODE_ERROR);
  });
});

describe("key channels (agent frames sealed with a named key)", () => {
  it("names the key as key:<name>, a form no channel-API id (base64url) can take", () => {
    expect(keyChannel("main")).toBe("key:main");
    expect(keyNameOf("key:2024-06.b_1")).toBe("2024-06.b_1");
    expect(keyNameOf(undefined)).toBeUndefined();
    for (let i = 0; i < 100; i++) expect(keyNameOf(newMessageId())).toBeUndefined();
  });

  it("takes 1-64 characters of A-Z a-z 0-9 . _ -, not starting with a dot", () => {
    for (const ok of ["a", "A-1", "_x", "k.2024", "x".repeat(64)]) expect(isKeyName(ok)).toBe(true);
    for (const bad of ["", ".hidden", "..data", "a/b", "a:b", "é", "x".repeat(65), 7, undefined]) {
      expect(isKeyName(bad)).toBe(false);
    }
    expectCode(() => keyChannel("..data"), ErrorCode.INVALID_ARGUMENT);
  });
});

describe("channel keys", () => {
  it("generates distinct 32-byte keys and X25519 key pairs", () => {
    const a = generateChannelKey();
    expect(a).toHaveLength(32);
    expect(toHexString(a)).not.toBe(toHexString(generateChannelKey()));
    const pair = generateKeyPair();
    expect(pair.privateKey).toHaveLength(32);
    expect(pair.publicKey).toHaveLength(32);
  });

  it("both sides derive the same key; salt and info separate keys", () => {
    const alice = generateKeyPair();
    const bob = generateKeyPair();
    const ab = deriveChannelKey({
      privateKey: alice.privateKey,
      peerPublicKey: bob.publicKey,
      info: "troupe/channel/c1",
    });
    const ba = deriveChannelKey({
      privateKey: bob.privateKey,
      peerPublicKey: alice.publicKey,
      info: "troupe/channel/c1",
    });
    expect(ab).toHaveLength(32);
    expect(toHexString(ab)).toBe(toHexString(ba));
    const other = deriveChannelKey({
      privateKey: alice.privateKey,
      peerPublicKey: bob.publicKey,
      info: "troupe/channel/c2",
    });
    expect(toHexString(other)).not.toBe(toHexString(ab));
    const salted = deriveChannelKey({
      privateKey: alice.privateKey,
      peerPublicKey: bob.publicKey,
      info: "troupe/channel/c1",
      salt: new Uint8Array([1]),
    });
    expect(toHexString(salted)).not.toBe(toHexString(ab));
    // and the derived key works for sealing between the two
    const sealed = sealFrame(sampleFrame(), ab);
    expect(openFrame(sealed, ba)).toEqual(sampleFrame());
  });

  it("matches RFC 7748 §6.1 X25519 and RFC 5869 HKDF (node:crypto as the reference)", () => {
    const alicePrivate = hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
    const bobPublic = hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
    const shared = hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
    const salt = hex("000102030405060708090a0b0c");
    const info = "troupe/channel/test";
    const expected = new Uint8Array(hkdfSync("sha256", shared, salt, info, 32));
    const derived = deriveChannelKey({
      privateKey: alicePrivate,
      peerPublicKey: bobPublic,
      salt,
      info,
    });
    expect(toHexString(derived)).toBe(toHexString(expected));
    const noSalt = new Uint8Array(
      hkdfSync("sha256", shared, new Uint8Array(0), new TextEncoder().encode(info), 32),
    );
    expect(
      toHexString(
        deriveChannelKey({
          privateKey: alicePrivate,
          peerPublicKey: bobPublic,
          info: new TextEncoder().encode(info),
        }),
      ),
    ).toBe(toHexString(noSalt));
  });

  it("low-order peer keys give CRYPTO_ERROR", () => {
    const { privateKey } = generateKeyPair();
    const lowOrder = [
      "0000000000000000000000000000000000000000000000000000000000000000",
      "0100000000000000000000000000000000000000000000000000000000000000",
      "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
      "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
      "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ];
    for (const peer of lowOrder) {
      expectCode(
        () => deriveChannelKey({ privateKey, peerPublicKey: hex(peer), info: "x" }),
        ErrorCode.CRYPTO_ERROR,
      );
    }
  });

  it("refuses malformed arguments", () => {
    const { privateKey, publicKey } = generateKeyPair();
    const bad = [
      { privateKey: privateKey.subarray(1), peerPublicKey: publicKey, info: "x" },
      { privateKey, peerPublicKey: new Uint8Array(31), info: "x" },
      { privateKey, peerPublicKey: publicKey, info: 5 },
      { privateKey, peerPublicKey: publicKey, info: "x", salt: "s" },
      null,
    ];
    for (const b of bad) {
      expectCode(() => deriveChannelKey(b as never), ErrorCode.INVALID_ARGUMENT);
    }
  });
});
