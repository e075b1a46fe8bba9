/** Locating the nats-server binary and the version the project pins (scripts/versions.env). */

import { execFile } from "node:child_process";
import { accessSync, constants, existsSync, readFileSync, statSync } from "node:fs";
import { delimiter, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { TestkitError, TestkitErrorCode } from "./errors.js";

const execFileAsync = promisify(execFile);

/** The environment variable that names a nats-server binary explicitly. */
export const NATS_SERVER_ENV = "TROUPE_NATS_SERVER";

let repoRootMemo: string | null | undefined;

/** The monorepo root (the directory holding scripts/versions.env), if the testkit runs inside it. */
export function repoRoot(): string | undefined {
  if (repoRootMemo !== undefined) return repoRootMemo ?? undefined;
  const starts = [dirname(fileURLToPath(import.meta.url)), process.cwd()];
  for (const start of starts) {
    let dir = resolve(start);
    for (;;) {
      if (existsSync(join(dir, "scripts", "versions.env"))) {
        repoRootMemo = dir;
        return dir;
      }
      const parent = dirname(dir);
      if (parent === dir) break;
      dir = parent;
    }
  }
  repoRootMemo = null;
  return undefined;
}

function isExecutableFile(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

function onPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    if (dir === "") continue;
    const candidate = join(dir, name);
    if (isExecutableFile(candidate)) return candidate;
  }
  return undefined;
}

/**
 * The nats-server binary to run: `$TROUPE_NATS_SERVER`, else the project-local
 * `.troupe/tools/bin/nats-server` that scripts/setup.sh installs, else `nats-server` on PATH.
 */
export function findNatsServer(): string {
  const fromEnv = process.env[NATS_SERVER_ENV];
  if (fromEnv !== undefined && fromEnv !== "") {
    if (isExecutableFile(fromEnv)) return fromEnv;
    throw new TestkitError(
      TestkitErrorCode.NATS_SERVER_NOT_FOUND,
      `${NATS_SERVER_ENV}=${fromEnv} is not an executable file`,
    );
  }
  const root = repoRoot();
  if (root !== undefined) {
    const local = join(root, ".troupe", "tools", "bin", "nats-server");
    if (isExecutableFile(local)) return local;
  }
  const found = onPath("nats-server");
  if (found !== undefined) return found;
  throw new TestkitError(
    TestkitErrorCode.NATS_SERVER_NOT_FOUND,
    `nats-server not found (looked at $${NATS_SERVER_ENV}, ` +
      `${root === undefined ? "<repo>" : root}/.troupe/tools/bin/nats-server and PATH); ` +
      "run `bash scripts/setup.sh` from the repository root to install the pinned version",
  );
}

/** The version a nats-server binary reports, without the leading "v" (e.g. "2.15.2"). */
export async function natsServerVersion(binary: string = findNatsServer()): Promise<string> {
  let stdout: string;
  try {
    ({ stdout } = await execFileAsync(binary, ["--version"], { timeout: 10_000 }));
  } catch (e) {
    throw new TestkitError(
      TestkitErrorCode.NATS_SERVER_NOT_FOUND,
      `could not run ${binary} --version`,
      { cause: e },
    );
  }
  const match = /v?(\d+\.\d+\.\d+\S*)/.exec(stdout);
  if (match?.[1] === undefined) {
    throw new TestkitError(
      TestkitErrorCode.NATS_SERVER_NOT_FOUND,
      `unexpected output from ${binary} --version: ${stdout.trim()}`,
    );
  }
  return match[1];
}

/** NATS_SERVER_VERSION from scripts/versions.env (the one place the version is pinned). */
export function pinnedNatsServerVersion(): string | undefined {
  const root = repoRoot();
  if (root === undefined) return undefined;
  const text = readFileSync(join(root, "scripts", "versions.env"), "utf8");
  const match = /^\s*NATS_SERVER_VERSION\s*=\s*"?([^"\s#]+)"?/m.exec(text);
  return match?.[1];
}

/**
 * Why tests that need a nats-server binary cannot run here, or undefined when one is found:
 * for `describe.skipIf(natsServerMissing() !== undefined)`.
 */
export function natsServerMissing(): string | undefined {
  try {
    findNatsServer();
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
}
