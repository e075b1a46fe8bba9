/** In-process runs of the CLI with captured output. */

import { Writable } from "node:stream";
import { run } from "../src/cli.js";
import type { Io } from "../src/io.js";

export interface Captured {
  code: number;
  stdout: string;
  stderr: string;
}

function sink(): { stream: Writable; text: () => string } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer | string, _enc, done) {
      chunks.push(chunk.toString());
      done();
    },
  });
  return { stream, text: () => chunks.join("") };
}

/** Runs `troupe <argv>` in this process; env defaults to none of the TROUPE_* settings. */
export async function troupe(
  argv: string[],
  env: Record<string, string | undefined> = {},
): Promise<Captured> {
  const out = sink();
  const err = sink();
  const io: Io = { stdout: out.stream, stderr: err.stream, env, cwd: process.cwd() };
  const code = await run(argv, io);
  return { code, stdout: out.text(), stderr: err.text() };
}
