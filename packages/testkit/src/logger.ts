/** The logger the testkit takes (the pino-compatible shape @troupe/runtime uses). */

export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

const noop = () => {};

/** Discards everything: the default, so fixtures print nothing unasked. */
export const silentLogger: Logger = { debug: noop, info: noop, warn: noop, error: noop };
