/** Where a command reads its settings and writes its output; main.ts binds it to the process. */

export interface Io {
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream & { isTTY?: boolean };
  env: Readonly<Record<string, string | undefined>>;
  /** The directory relative paths are resolved against. */
  cwd: string;
  /**
   * Calls `handler` on SIGINT/SIGTERM until the returned function is called. Commands that
   * never register keep the default behaviour (the process ends).
   */
  onInterrupt?(handler: (signal: NodeJS.Signals) => void): () => void;
}

/** Exit codes: 0 success, 1 the operation failed, 2 the command line was wrong. */
export const ExitCode = { OK: 0, FAILED: 1, USAGE: 2 } as const;

export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

/** A failure the user should read as one clear sentence, with the exit code it maps to. */
export class CliError extends Error {
  override name = "CliError";
  readonly exitCode: ExitCode;

  constructor(exitCode: ExitCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.exitCode = exitCode;
  }
}

/** The command line is wrong: exit code 2. */
export function usageError(message: string): CliError {
  return new CliError(ExitCode.USAGE, message);
}

/** The operation failed: exit code 1. */
export function failure(message: string, options?: ErrorOptions): CliError {
  return new CliError(ExitCode.FAILED, message, options);
}

export function writeLine(stream: NodeJS.WritableStream, line = ""): void {
  stream.write(`${line}\n`);
}
