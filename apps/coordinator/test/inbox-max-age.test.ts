/** `--inbox-max-age`: the durations it takes, in ms, and what it refuses, saying why. */
import { InvalidArgumentError } from "commander";
import { describe, expect, it } from "vitest";
import {
  inboxMaxAge,
  MAX_INBOX_MAX_AGE_MS,
  MIN_INBOX_MAX_AGE_MS,
  parseInboxMaxAge,
} from "../src/inbox-max-age.js";

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

describe("parseInboxMaxAge", () => {
  it("takes a number with a unit s, m, h or d, integer or decimal", () => {
    expect(parseInboxMaxAge("30m")).toBe(30 * MINUTE);
    expect(parseInboxMaxAge("12h")).toBe(12 * HOUR);
    expect(parseInboxMaxAge("7d")).toBe(7 * DAY);
    expect(parseInboxMaxAge("150s")).toBe(150_000);
    expect(parseInboxMaxAge("1.5h")).toBe(90 * MINUTE);
    expect(parseInboxMaxAge("0.5d")).toBe(12 * HOUR);
    expect(parseInboxMaxAge("2.25m")).toBe(135_000);
    expect(parseInboxMaxAge(" 2h ")).toBe(2 * HOUR);
  });

  it("takes plain milliseconds, with or without ms", () => {
    expect(parseInboxMaxAge("7200000")).toBe(2 * HOUR);
    expect(parseInboxMaxAge("7200000ms")).toBe(2 * HOUR);
    expect(parseInboxMaxAge("120000")).toBe(MIN_INBOX_MAX_AGE_MS);
  });

  it("refuses what is not a duration, saying what is wanted", () => {
    for (const bad of ["", "7 d", "7D", "1w", "h", "-1h", "1e6", ".5h", "2h30m", "7days", "0x10"]) {
      expect(() => parseInboxMaxAge(bad), bad).toThrow(
        expect.objectContaining({
          code: "CONFIG_ERROR",
          message:
            "must be a duration: a number with a unit s, m, h or d (30m, 12h, 7d, 1.5h), or milliseconds",
        }),
      );
    }
  });

  it("refuses less than the dedup window (2 minutes) and more than JetStream can hold", () => {
    expect(MIN_INBOX_MAX_AGE_MS).toBe(2 * MINUTE);
    for (const short of ["0", "0m", "30s", "1m", "119999", "1.99m"]) {
      expect(() => parseInboxMaxAge(short), short).toThrow(
        expect.objectContaining({
          code: "CONFIG_ERROR",
          message:
            "must be at least 2m: the inbox keeps messages at least a minute, and at least its 2-minute message-id dedup window",
        }),
      );
    }
    expect(parseInboxMaxAge("106751d")).toBe(106_751 * DAY);
    expect(() => parseInboxMaxAge("106752d")).toThrow(/must be at most 106751d/);
    expect(MAX_INBOX_MAX_AGE_MS * 1e6).toBeLessThanOrEqual(2 ** 63);
  });

  it("is a commander usage error (the process exits 2 on it: main.integration.test.ts)", () => {
    expect(inboxMaxAge("2h")).toBe(2 * HOUR);
    let err: unknown;
    try {
      inboxMaxAge("30s");
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect((err as Error).message).toMatch(/^must be at least 2m/);
  });
});
