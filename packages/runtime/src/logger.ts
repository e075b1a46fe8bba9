/** The logger the runtime takes (pino-compatible shape). Libraries never print by themselves. */

export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

const noop = () => {};

/** Discards everything: the default, so embedding Troupe prints nothing unasked. */
export const silentLogger: Logger = { debug: noop, info: noop, warn: noop, error: noop };
