/**
 * Last-resort cleanup: every server process and data directory the testkit creates is
 * recorded here and killed/removed when the test process exits, so a failing test (one
 * that never reaches its own cleanup) leaves no nats-server running. Best effort only:
 * nothing runs if the test process itself is SIGKILLed.
 */

import { rmSync } from "node:fs";

const pids = new Set<number>();
const dirs = new Set<string>();
let installed = false;

function sweep(): void {
  for (const pid of pids) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  pids.clear();
  for (const dir of dirs) {
    try {
      rmSync(dir, { recursive: true, force: true });
    } catch {
      // best effort
    }
  }
  dirs.clear();
}

function onSignal(signal: NodeJS.Signals): void {
  sweep();
  // Our listener was registered with once(): re-raising gives the default behaviour
  // (or whatever other listeners do) as if we had never been here.
  process.kill(process.pid, signal);
}

function install(): void {
  if (installed) return;
  installed = true;
  process.once("exit", sweep);
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.once(signal, onSignal);
}

export function trackPid(pid: number): void {
  install();
  pids.add(pid);
}

export function untrackPid(pid: number): void {
  pids.delete(pid);
}

export function trackDir(dir: string): void {
  install();
  dirs.add(dir);
}

export function untrackDir(dir: string): void {
  dirs.delete(dir);
}
