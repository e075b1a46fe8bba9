/**
 * Progress lines on stderr: an ora spinner in a terminal; in a pipe or a log, no spinner
 * frames and no colour, just one line when a step ends.
 */

import ora, { type Ora } from "ora";

export interface Progress {
  text: string;
  readonly active: boolean;
  succeed(text: string): void;
  fail(text?: string): void;
  /** Ends without a line (another step takes over). */
  stop(): void;
}

export function progress(
  stream: NodeJS.WritableStream & { isTTY?: boolean },
  text: string,
): Progress {
  // a terminal that reports no width (some ptys) would make ora's redraw misbehave
  const columns = (stream as { columns?: number }).columns ?? 0;
  if (stream.isTTY === true && columns > 0) {
    return spinner(ora({ text, stream, discardStdin: false }).start());
  }
  let current = text;
  let active = true;
  const end = (symbol: string, line: string) => {
    if (!active) return;
    active = false;
    stream.write(`${symbol} ${line}\n`);
  };
  return {
    get text() {
      return current;
    },
    set text(t: string) {
      current = t;
    },
    get active() {
      return active;
    },
    succeed: (line) => end("✔", line),
    fail: (line) => end("✖", line ?? current),
    stop: () => {
      active = false;
    },
  };
}

function spinner(s: Ora): Progress {
  return {
    get text() {
      return s.text;
    },
    set text(t: string) {
      s.text = t;
    },
    get active() {
      return s.isSpinning;
    },
    succeed: (line) => {
      if (s.isSpinning) s.succeed(line);
    },
    fail: (line) => {
      if (s.isSpinning) s.fail(line);
    },
    stop: () => {
      if (s.isSpinning) s.stop();
    },
  };
}
