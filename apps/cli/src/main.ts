#!/usr/bin/env node
/** The `troupe` executable: binds the command line to this process. */

import { startTelemetry } from "@troupe/telemetry";
import { run } from "./cli.js";
import type { Io } from "./io.js";

// OTLP trace export of `troupe send/request`, only when OTEL_EXPORTER_OTLP_ENDPOINT is set;
// the CLI's output is for people: only the SDK's warnings reach stderr
const telemetry = startTelemetry({
  serviceName: "troupe-cli",
  logger: {
    info: () => {},
    warn: (_obj, msg) => process.stderr.write(`troupe: ${msg ?? "telemetry warning"}\n`),
  },
});

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
await telemetry.shutdown();
