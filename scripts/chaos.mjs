#!/usr/bin/env node
/**
 * `npm run chaos [-- --duration 120s --agents 500 --rate 250]`: the chaos suite at full
 * length (apps/worker/test/chaos.integration.test.ts, which `npm test` runs short). Prints
 * the result table; exits non-zero when an invariant is broken.
 */
import { spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const repo = join(dirname(fileURLToPath(import.meta.url)), "..");
const { values } = parseArgs({
  options: {
    duration: { type: "string", default: "120s" },
    agents: { type: "string", default: "500" },
    rate: { type: "string", default: "250" },
    logs: { type: "boolean", default: false },
  },
});

/** "120s", "2m", "90" (seconds). */
function seconds(v) {
  const m = /^(\d+(?:\.\d+)?)(s|m)?$/.exec(v.trim());
  if (m === null) throw new Error(`--duration: expected e.g. 120s or 2m, got ${v}`);
  return Number(m[1]) * (m[2] === "m" ? 60 : 1);
}

let duration;
try {
  duration = seconds(values.duration);
  for (const k of ["agents", "rate"]) {
    if (!(Number(values[k]) > 0)) throw new Error(`--${k} must be a positive number`);
  }
} catch (e) {
  console.error(e instanceof Error ? e.message : String(e));
  process.exit(2);
}

const child = spawn("npx", ["vitest", "run", "apps/worker/test/chaos.integration.test.ts"], {
  cwd: repo,
  stdio: "inherit",
  env: {
    ...process.env,
    TROUPE_CHAOS_DURATION_S: String(duration),
    TROUPE_CHAOS_AGENTS: values.agents,
    TROUPE_CHAOS_RATE: values.rate,
    ...(values.logs ? { TROUPE_TEST_LOGS: "1" } : {}),
  },
});
child.on("exit", (code) => process.exit(code ?? 1));
