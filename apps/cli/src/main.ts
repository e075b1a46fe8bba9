#!/usr/bin/env node
/** The `troupe` executable: binds the command line to this process. */

import { run } from "./cli.js";
import type { Io } from "./io.js";

const io: Io = {
  stdout: process.stdout,
  stderr: process.stderr,
  env: process.env,
  cwd: process.cwd(),
  onInterrupt(handler) {
    const signals = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
    for (const s of signals) process.on(s, handler);
    return () => {
      for (const s of signals) process.off(s, handler);
    };
  },
};

process.exitCode = await run(process.argv.slice(2), io);
