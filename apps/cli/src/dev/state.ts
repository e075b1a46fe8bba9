/**
 * The dev cluster's state file (`<dev dir>/state.json`): which `troupe dev` owns the dir and
 * which processes it started. A second `troupe dev` on the same dir refuses to start, and
 * processes left behind by one that was killed outright are stopped before a new start.
 */

import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { isAlive, type Role } from "./child.js";

export interface DevState {
  pid: number;
  natsUrl?: string;
  namespace: string;
  startedAt: string;
  children: { name: string; role: Role; pid: number; program: string }[];
}

export const stateFile = (devDir: string): string => join(devDir, "state.json");

export function readState(devDir: string): DevState | undefined {
  const file = stateFile(devDir);
  if (!existsSync(file)) return undefined;
  try {
    return JSON.parse(readFileSync(file, "utf8")) as DevState;
  } catch {
    return undefined;
  }
}

export function writeState(devDir: string, state: DevState): void {
  writeFileSync(stateFile(devDir), `${JSON.stringify(state, null, 2)}\n`);
}

export function removeState(devDir: string): void {
  rmSync(stateFile(devDir), { force: true });
}

/** The process's command line (Linux /proc), or undefined where that is not available. */
function commandLine(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ");
  } catch {
    return undefined;
  }
}

/** Alive, and (where we can tell) still running what we recorded, not a reused pid. */
export function stillRuns(pid: number, program: string | RegExp): boolean {
  if (!isAlive(pid)) return false;
  const cmd = commandLine(pid);
  if (cmd === undefined) return true;
  return typeof program === "string" ? cmd.includes(program) : program.test(cmd);
}

/** Stops what an earlier, abruptly ended `troupe dev` left running; returns their names. */
export async function stopLeftovers(state: DevState): Promise<string[]> {
  const order: Role[] = ["worker", "coordinator", "nats-server"];
  const stopped: string[] = [];
  for (const role of order) {
    const group = state.children.filter((c) => c.role === role && stillRuns(c.pid, c.program));
    for (const c of group) signal(c.pid, "SIGTERM");
    const deadline = Date.now() + 10_000;
    while (group.some((c) => isAlive(c.pid)) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
    }
    for (const c of group) {
      if (isAlive(c.pid)) signal(c.pid, "SIGKILL");
      stopped.push(`${c.name} (pid ${c.pid})`);
    }
  }
  return stopped;
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // gone already
  }
}
