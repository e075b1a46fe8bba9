/**
 * deploy/: builds the worker, coordinator and cli images the way their Dockerfiles say —
 * without a Docker engine: the COPY steps into a clean temporary root, the RUN steps as plain
 * commands — then starts the images' ENTRYPOINTs against a local nats-server and checks that
 * the workers join and an example agent answers through the cli image. Also checks that the
 * compose file uses the pinned image versions.
 */
import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import type { NatsConnection } from "@nats-io/transport-node";
import { cleanup, freePorts, type NatsServer, setup } from "@troupe/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type BuiltStage,
  buildStage,
  type Dockerfile,
  dockerignore,
  pinnedVersions,
  readDockerfile,
  stageKey,
} from "./image.js";
import {
  logTail,
  type Proc,
  repo,
  spawnNode,
  stopAll,
  stopProc,
  waitForBalanced,
} from "./procs.js";

const APPS = ["worker", "coordinator", "cli"] as const;
type App = (typeof APPS)[number];

/** RUN steps get the host's environment minus npm's own script variables. */
function runEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k)));
}

const dockerfiles = Object.fromEntries(
  APPS.map((a) => [a, readDockerfile(join(repo, `deploy/${a}.Dockerfile`))]),
) as Record<App, Dockerfile>;

describe("deploy/ Dockerfiles (parsed)", () => {
  it("are multi-stage on a Node LTS image, non-root, with one shared build stage", () => {
    const keys = new Set<string>();
    for (const app of APPS) {
      const df = dockerfiles[app];
      expect(df.stages.map((s) => s.name)).toEqual(["build", "runtime"]);
      for (const s of df.stages) expect(s.base).toMatch(/^node:(22|24)-bookworm-slim$/);
      const build = df.stages[0];
      const runtime = df.stages[1];
      if (build === undefined || runtime === undefined) throw new Error("stages");
      keys.add(stageKey(build));
      const runs = build.instructions.filter((i) => i.op === "RUN").map((i) => i.rest);
      expect(runs.some((r) => /^npm ci\b/.test(r))).toBe(true);
      expect(runs.some((r) => /turbo run build/.test(r))).toBe(true);
      const rt = runtime.instructions.map((i) => `${i.op} ${i.rest}`);
      expect(rt.some((r) => /^RUN npm ci --omit=dev .*--workspace=/.test(r))).toBe(true);
      expect(rt.filter((r) => r.startsWith("USER ")).at(-1)).toBe("USER node");
      expect(rt.some((r) => r.startsWith("ENTRYPOINT ["))).toBe(true);
    }
    expect(keys.size).toBe(1);
  });

  it("compose runs pinned NATS (JetStream) and Jaeger v2, a coordinator and two workers", () => {
    const v = pinnedVersions(repo);
    const compose = readFileSync(join(repo, "deploy/compose.yaml"), "utf8");
    const images = [...compose.matchAll(/^\s+image:\s*(\S+)/gm)].map((m) => m[1]);
    expect(images).toContain(`nats:${v.NATS_SERVER_VERSION}-alpine`);
    expect(images).toContain(`jaegertracing/jaeger:${v.JAEGER_VERSION}`);
    expect(compose).toMatch(/--jetstream/);
    for (const s of ["coordinator", "worker-1", "worker-2", "cli"]) {
      expect(compose).toMatch(new RegExp(`^  ${s}:`, "m"));
    }
    for (const app of APPS) expect(compose).toContain(`dockerfile: deploy/${app}.Dockerfile`);
    for (const port of ["4317:4317", "4318:4318", "16686:16686"]) expect(compose).toContain(port);
    expect(compose).toContain("OTEL_EXPORTER_OTLP_ENDPOINT: http://jaeger:4318");
  });
});

describe("deploy/ images, built without Docker and started", () => {
  let work: string;
  const images = new Map<App, BuiltStage>();
  let ns: NatsServer;
  let nc: NatsConnection;
  const started: Proc[] = [];

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), "troupe-images-"));
    const ignore = dockerignore(readFileSync(join(repo, ".dockerignore"), "utf8"));
    const log = (l: string) => console.log(l);
    // the build stage is the same text in every Dockerfile: build it once, as Docker's cache would
    const build = dockerfiles.worker.stages[0];
    if (build === undefined) throw new Error("no build stage");
    const t0 = performance.now();
    const builtBuild = await buildStage(build, {
      context: repo,
      ignore,
      stages: new Map(),
      root: join(work, "build"),
      env: runEnv(),
      log,
    });
    for (const app of APPS) {
      const runtime = dockerfiles[app].stages[1];
      if (runtime === undefined) throw new Error("no runtime stage");
      images.set(
        app,
        await buildStage(runtime, {
          context: repo,
          ignore,
          stages: new Map([["build", builtBuild]]),
          root: join(work, app),
          env: runEnv(),
          log,
        }),
      );
    }
    console.log(`images built in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    ({ ns, nc } = await setup({ backend: "process" }));
  }, 600_000);

  afterAll(async () => {
    await stopAll();
    if (nc !== undefined) await cleanup(ns, nc);
    if (work !== undefined) rmSync(work, { recursive: true, force: true });
  });

  function image(app: App): BuiltStage {
    const b = images.get(app);
    if (b === undefined) throw new Error(`${app} not built`);
    return b;
  }

  /** Starts the image's ENTRYPOINT + CMD (or `args`) as the container would, with `env` on top of the image's ENV. */
  function run(app: App, name: string, env: Record<string, string>, args?: string[]): Proc {
    const img = image(app);
    const argv = [...img.entrypoint, ...(args ?? img.cmd)];
    expect(argv[0]).toBe("node");
    return spawnNode(name, argv[1] ?? "", argv.slice(2), {
      cwd: img.workdir,
      env: { ...img.env, ...env },
    });
  }

  it("each runtime holds compiled code and production dependencies only", () => {
    for (const app of APPS) {
      const img = image(app);
      const main = join(img.workdir, `apps/${app}/dist/main.js`);
      expect(existsSync(main), main).toBe(true);
      for (const dev of ["typescript", "vitest", "turbo", "@biomejs/biome"]) {
        expect(existsSync(join(img.workdir, "node_modules", dev)), `${app}: ${dev}`).toBe(false);
      }
      expect(existsSync(join(img.workdir, "packages/wire/src")), `${app}: sources`).toBe(false);
      expect(img.env.NODE_ENV).toBe("production");
    }
    expect(image("worker").cmd).toEqual([
      "--agents",
      "examples/counter/dist/index.js",
      "examples/ping-pong/dist/index.js",
      "examples/demo/dist/index.js",
    ]);
  });

  it("the coordinator and two workers join and an example agent answers through the cli", async () => {
    const http = await freePorts(3);
    const nats = { TROUPE_NATS_URL: ns.url, TROUPE_NAMESPACE: "images" };
    started.push(
      run("coordinator", "coordinator", {
        ...nats,
        TROUPE_HTTP_PORT: String(http[0]),
        TROUPE_SHARDS: "16",
      }),
    );
    for (const [i, id] of ["image-w1", "image-w2"].entries()) {
      started.push(
        run("worker", id, { ...nats, TROUPE_WORKER_ID: id, TROUPE_HTTP_PORT: String(http[i + 1]) }),
      );
    }
    try {
      await waitForBalanced(
        "both workers own shards",
        nc,
        "images",
        ["image-w1", "image-w2"],
        45_000,
      );
      const cli = image("cli");
      const argv = [
        ...cli.entrypoint,
        "request",
        "counter/image",
        '{"type":"get"}',
        "--timeout",
        "10000",
      ];
      const { stdout } = await promisify(execFile)(process.execPath, argv.slice(1), {
        cwd: cli.workdir,
        env: { ...process.env, ...cli.env, ...nats },
        timeout: 30_000,
      });
      expect(JSON.parse(stdout)).toEqual({ type: "value", value: 0 });
      const status = await promisify(execFile)(
        process.execPath,
        [...argv.slice(1, 2), "status", "--json"],
        {
          cwd: cli.workdir,
          env: { ...process.env, ...cli.env, ...nats },
          timeout: 30_000,
        },
      );
      expect((JSON.parse(status.stdout) as { workers: unknown[] }).workers).toHaveLength(2);
    } catch (e) {
      for (const p of started) console.log(logTail(p));
      throw e;
    }
    // SIGTERM drains: the workers leave cleanly
    for (const p of started.slice(1)) expect(await stopProc(p)).toBe(0);
    expect(await stopProc(started[0] as Proc)).toBe(0);
  }, 120_000);
});
