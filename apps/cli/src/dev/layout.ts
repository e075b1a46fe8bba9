/** Where `troupe dev` finds the programs it starts, and where it keeps its files. */

import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export interface Layout {
  /** The monorepo root (the package.json with workspaces). */
  root: string;
  coordinatorMain: string;
  workerMain: string;
  cliMain: string;
  /** The demo's agents (planner, helper), built. */
  demoAgents: string;
  /** The embedded demo (what `npm start` ran before the cluster existed). */
  demoMain: string;
  /** Default state dir: nats data, logs, the state file. */
  devDir: string;
}

let memo: Layout | undefined;

export function layout(): Layout {
  if (memo !== undefined) return memo;
  const root = findRoot(dirname(fileURLToPath(import.meta.url)));
  memo = {
    root,
    coordinatorMain: join(root, "apps", "coordinator", "dist", "main.js"),
    workerMain: join(root, "apps", "worker", "dist", "main.js"),
    cliMain: join(root, "apps", "cli", "dist", "main.js"),
    demoAgents: join(root, "examples", "demo", "dist", "index.js"),
    demoMain: join(root, "examples", "demo", "dist", "main.js"),
    devDir: join(root, ".troupe", "dev"),
  };
  return memo;
}

function findRoot(start: string): string {
  let dir = resolve(start);
  for (;;) {
    const pkg = join(dir, "package.json");
    if (existsSync(pkg)) {
      try {
        if ((JSON.parse(readFileSync(pkg, "utf8")) as { workspaces?: unknown }).workspaces) {
          return dir;
        }
      } catch {
        // not ours; keep looking
      }
    }
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  // installed outside the monorepo: the package's grandparent is the best guess
  return resolve(start, "..", "..", "..");
}
