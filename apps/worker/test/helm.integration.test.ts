/**
 * helm/troupe: `helm lint`, `helm template` with the defaults and the ci/ values files, every
 * rendered object validated against the Kubernetes JSON schemas (kubernetes-validate, offline),
 * and the chart's configuration booted: the worker and coordinator containers' arguments and
 * environment as rendered, run as local processes against a local 3-node JetStream cluster,
 * with the `helm test` pod's request answered. Tools come from scripts/setup.sh.
 */
import { execFile, execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { connect as natsConnect } from "@nats-io/transport-node";
import { namespaceNames } from "@troupe/nats";
import {
  findNatsServer,
  freePorts,
  type NatsClusterHandle,
  startNatsCluster,
} from "@troupe/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pinnedVersions, readDockerfile } from "./image.js";
import {
  buildApps,
  logTail,
  type Proc,
  repo,
  spawnNode,
  stopAll,
  stopProc,
  waitFor,
  waitForBalanced,
} from "./procs.js";

const HELM = join(repo, ".troupe/tools/bin/helm");
const VENV_BIN = join(repo, ".troupe/tools/venv/bin");
const CHART = join(repo, "helm/troupe");
const CI_VALUES = readdirSync(join(CHART, "ci")).filter((f) => f.endsWith("-values.yaml"));
const RELEASE = "troupe";
const K8S_NS = "troupe-system";
const versions = pinnedVersions(repo);

const missing = [HELM, join(VENV_BIN, "kubernetes-validate")].filter((p) => !existsSync(p));
if (missing.length > 0 && process.env.CI === undefined) {
  console.warn(`helm tests skipped: run scripts/setup.sh (missing ${missing.join(", ")})`);
}
// in CI a missing tool is a failure, not a skip
const skip = missing.length > 0 && process.env.CI === undefined;

// biome-ignore lint/suspicious/noExplicitAny: rendered Kubernetes objects are untyped JSON
type K8sObject = any;

function helm(args: string[]): string {
  return execFileSync(HELM, args, {
    cwd: repo,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
}

function render(
  valuesFiles: string[] = [],
  set: string[] = [],
): { yaml: string; objects: K8sObject[] } {
  const yaml = helm([
    "template",
    RELEASE,
    CHART,
    "--namespace",
    K8S_NS,
    ...valuesFiles.flatMap((f) => ["-f", join(CHART, "ci", f)]),
    ...set.flatMap((s) => ["--set", s]),
  ]);
  const json = execFileSync(
    join(VENV_BIN, "python"),
    [
      "-c",
      "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
    ],
    { input: yaml, encoding: "utf8" },
  );
  return { yaml, objects: JSON.parse(json) as K8sObject[] };
}

function find(objects: K8sObject[], kind: string, name: string): K8sObject {
  const o = objects.find((x) => x.kind === kind && x.metadata.name === name);
  if (o === undefined) throw new Error(`no ${kind} ${name} rendered`);
  return o;
}

function podSpecs(objects: K8sObject[]): { owner: string; spec: K8sObject }[] {
  return objects.flatMap((o) => {
    if (o.kind === "Pod") return [{ owner: `Pod/${o.metadata.name}`, spec: o.spec }];
    if (o.spec?.template?.spec)
      return [{ owner: `${o.kind}/${o.metadata.name}`, spec: o.spec.template.spec }];
    return [];
  });
}

function env(container: K8sObject, name: string): string | undefined {
  return container.env?.find((e: K8sObject) => e.name === name)?.value;
}

describe.skipIf(skip)("helm/troupe", () => {
  const renders = new Map<string, { yaml: string; objects: K8sObject[] }>();
  let work: string;

  beforeAll(() => {
    work = mkdtempSync(join(tmpdir(), "troupe-helm-"));
    renders.set("defaults", render());
    for (const f of CI_VALUES) renders.set(f, render([f]));
  });
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  const defaults = () => renders.get("defaults")?.objects ?? [];

  it("helm reports the pinned version", () => {
    expect(helm(["version", "--template", "{{.Version}}"])).toBe(`v${versions.HELM_VERSION}`);
  });

  it("lints cleanly (strict) with the defaults and every ci/ values file", () => {
    helm(["lint", "--strict", CHART]);
    for (const f of CI_VALUES) helm(["lint", "--strict", CHART, "-f", join(CHART, "ci", f)]);
    expect(CI_VALUES.length).toBeGreaterThanOrEqual(4);
  });

  it("every rendered object is valid against the Kubernetes schemas (strict, 1.30 and current)", async () => {
    const files: string[] = [];
    for (const [name, r] of renders) {
      const f = join(work, `${name}.yaml`);
      writeFileSync(f, r.yaml);
      files.push(f);
    }
    for (const k of ["1.30.0", versions.KUBERNETES_VERSION ?? "1.34.0"]) {
      const out = await promisify(execFile)(
        join(VENV_BIN, "kubernetes-validate"),
        ["--strict", "--kubernetes-version", k, ...files],
        { maxBuffer: 16 * 1024 * 1024 },
      ).catch((e: { stdout?: string; stderr?: string }) => {
        throw new Error(`kubernetes-validate ${k} failed:\n${e.stdout ?? ""}${e.stderr ?? ""}`);
      });
      const passed = out.stdout
        .split("\n")
        .filter((l) => l.startsWith("INFO") && l.includes("passed"));
      const total = [...renders.values()].reduce(
        (n, r) => n + r.objects.filter((o) => o.kind !== "ServiceMonitor").length,
        0,
      );
      expect(passed.length).toBe(total);
      // ServiceMonitor is a CRD the bundled schemas lack: checked by hand below
      expect(out.stdout).not.toMatch(/^ERROR/m);
    }
  });

  it("defaults: 3-node JetStream on PVCs, 2 coordinators, 2 workers, secure pods, three probes", () => {
    const o = defaults();
    const sts = find(o, "StatefulSet", "troupe-nats");
    expect(sts.spec.replicas).toBe(3);
    expect(sts.spec.serviceName).toBe("troupe-nats-headless");
    expect(sts.spec.template.spec.containers[0].image).toBe(
      `nats:${versions.NATS_SERVER_VERSION}-alpine`,
    );
    expect(sts.spec.volumeClaimTemplates[0].spec.resources.requests.storage).toBe("10Gi");
    expect(find(o, "Service", "troupe-nats-headless").spec.clusterIP).toBe("None");
    const conf: string = find(o, "ConfigMap", "troupe-nats-config").data["nats.conf"];
    for (let i = 0; i < 3; i++) {
      expect(conf).toContain(`nats://troupe-nats-${i}.troupe-nats-headless.${K8S_NS}.svc:6222`);
    }
    expect(conf).toMatch(/jetstream \{\s*store_dir: \/data/);

    const coord = find(o, "Deployment", "troupe-coordinator");
    expect(coord.spec.replicas).toBe(2);
    const cc = coord.spec.template.spec.containers[0];
    expect(env(cc, "TROUPE_REPLICAS")).toBe("3");
    expect(env(cc, "TROUPE_HTTP_PORT")).toBe("8081");
    expect(env(cc, "TROUPE_INBOX_MAX_AGE")).toBe("7d");
    const worker = find(o, "Deployment", "troupe-worker");
    expect(worker.spec.replicas).toBe(2);
    const wc = worker.spec.template.spec.containers[0];
    expect(env(wc, "TROUPE_NATS_URL")).toBe("nats://troupe-nats:4222");
    expect(env(wc, "TROUPE_HTTP_PORT")).toBe("8080");
    expect(wc.lifecycle.preStop.exec.command[0]).toBe("sleep");
    expect(worker.spec.template.spec.terminationGracePeriodSeconds).toBeGreaterThanOrEqual(30);
    for (const [c, port] of [
      [cc, 8081],
      [wc, 8080],
    ] as const) {
      expect(c.ports).toEqual([{ name: "http", containerPort: port, protocol: "TCP" }]);
      expect(c.startupProbe.httpGet).toEqual({ path: "/healthz", port: "http" });
      expect(c.livenessProbe.httpGet).toEqual({ path: "/healthz", port: "http" });
      expect(c.readinessProbe.httpGet).toEqual({ path: "/readyz", port: "http" });
      expect(env(c, "OTEL_EXPORTER_OTLP_ENDPOINT")).toBeUndefined();
    }
    // config checksum on the Troupe pods; a Secret and ServiceAccount without a token
    expect(worker.spec.template.metadata.annotations["checksum/config"]).toMatch(/^[0-9a-f]{64}$/);
    expect(coord.spec.template.metadata.annotations["checksum/config"]).toMatch(/^[0-9a-f]{64}$/);
    find(o, "Secret", "troupe-channel-keys");
    // no channel keys given: agent traffic is not sealed, nobody looks for keys
    expect(env(wc, "TROUPE_CHANNEL_KEYS_DIR")).toBeUndefined();
    find(o, "ConfigMap", "troupe-config");
    expect(find(o, "ServiceAccount", "troupe").automountServiceAccountToken).toBe(false);
    for (const n of ["troupe-worker", "troupe-coordinator", "troupe-nats"]) {
      expect(find(o, "PodDisruptionBudget", n).spec.maxUnavailable).toBe(1);
    }
    expect(o.some((x) => x.kind === "HorizontalPodAutoscaler")).toBe(false);
    expect(o.some((x) => x.kind === "NetworkPolicy" || x.kind === "ServiceMonitor")).toBe(false);

    for (const { owner, spec } of podSpecs(o)) {
      expect(spec.securityContext.runAsNonRoot, owner).toBe(true);
      expect(spec.securityContext.seccompProfile.type, owner).toBe("RuntimeDefault");
      for (const c of spec.containers) {
        expect(c.securityContext.readOnlyRootFilesystem, owner).toBe(true);
        expect(c.securityContext.allowPrivilegeEscalation, owner).toBe(false);
        expect(c.securityContext.capabilities.drop, owner).toEqual(["ALL"]);
        expect(c.resources.requests, owner).toBeDefined();
      }
    }
    const test = find(o, "Pod", "troupe-test");
    expect(test.metadata.annotations["helm.sh/hook"]).toBe("test");
    expect(test.spec.containers[0].args.slice(0, 3)).toEqual([
      "request",
      "counter/helm-test",
      '{"type":"get"}',
    ]);
  });

  it("ci values: 5 workers; HPA without replicas; NetworkPolicy + ServiceMonitor; Jaeger", () => {
    const five = renders.get("workers-5-values.yaml")?.objects ?? [];
    expect(find(five, "Deployment", "troupe-worker").spec.replicas).toBe(5);

    const hpa = renders.get("hpa-values.yaml")?.objects ?? [];
    expect(find(hpa, "Deployment", "troupe-worker").spec).not.toHaveProperty("replicas");
    const h = find(hpa, "HorizontalPodAutoscaler", "troupe-worker");
    expect(h.apiVersion).toBe("autoscaling/v2");
    expect([h.spec.minReplicas, h.spec.maxReplicas]).toEqual([3, 12]);
    expect(h.spec.scaleTargetRef).toEqual({
      apiVersion: "apps/v1",
      kind: "Deployment",
      name: "troupe-worker",
    });
    expect(h.spec.metrics.map((m: K8sObject) => m.resource.name)).toEqual(["cpu", "memory"]);

    const np = renders.get("netpol-servicemonitor-values.yaml")?.objects ?? [];
    expect(
      np
        .filter((x) => x.kind === "NetworkPolicy")
        .map((x) => x.metadata.name)
        .sort(),
    ).toEqual(["troupe-nats", "troupe-processes"]);
    const sm = find(np, "ServiceMonitor", "troupe");
    expect(sm.apiVersion).toBe("monitoring.coreos.com/v1");
    expect(sm.metadata.labels.release).toBe("prometheus");
    expect(sm.spec.endpoints).toEqual([
      { port: "http", path: "/metrics", interval: "30s", scrapeTimeout: "10s" },
    ]);
    expect(sm.spec.namespaceSelector.matchNames).toEqual([K8S_NS]);
    // the ServiceMonitor selects the Services that have the port it scrapes
    for (const n of ["troupe-worker", "troupe-coordinator"]) {
      const svc = find(np, "Service", n);
      expect(svc.spec.ports.map((p: K8sObject) => p.name)).toContain("http");
      expect(["worker", "coordinator"]).toContain(
        svc.metadata.labels["app.kubernetes.io/component"],
      );
    }

    const jg = renders.get("jaeger-values.yaml")?.objects ?? [];
    const jd = find(jg, "Deployment", "troupe-jaeger");
    expect(jd.spec.template.spec.containers[0].image).toBe(
      `jaegertracing/jaeger:${versions.JAEGER_VERSION}`,
    );
    expect(find(jg, "Service", "troupe-jaeger").spec.ports.map((p: K8sObject) => p.port)).toEqual([
      4317, 4318, 16686,
    ]);
    for (const d of ["troupe-worker", "troupe-coordinator"]) {
      const c = find(jg, "Deployment", d).spec.template.spec.containers[0];
      expect(env(c, "OTEL_EXPORTER_OTLP_ENDPOINT")).toBe("http://troupe-jaeger:4318");
    }

    // channel keys: workers and the helm test pod seal with them, the coordinators need none
    const sealed = renders.get("sealing-values.yaml")?.objects ?? [];
    const secret = find(sealed, "Secret", "troupe-channel-keys");
    expect(Object.keys(secret.data).sort()).toEqual(["k2024", "k2025"]);
    const sw = find(sealed, "Deployment", "troupe-worker").spec.template.spec;
    const testPod = find(sealed, "Pod", "troupe-test").spec;
    for (const spec of [sw, testPod]) {
      const c = spec.containers[0];
      expect(env(c, "TROUPE_CHANNEL_KEYS_DIR")).toBe("/etc/troupe/keys");
      expect(env(c, "TROUPE_SEAL_WITH")).toBe("k2025");
      const mount = c.volumeMounts.find((m: K8sObject) => m.mountPath === "/etc/troupe/keys");
      expect(mount.readOnly).toBe(true);
      const volume = spec.volumes.find((v: K8sObject) => v.name === mount.name);
      expect(volume.secret.secretName).toBe("troupe-channel-keys");
    }
    const sc = find(sealed, "Deployment", "troupe-coordinator").spec.template.spec.containers[0];
    expect(env(sc, "TROUPE_CHANNEL_KEYS_DIR")).toBeUndefined();

    const ext = renders.get("external-nats-values.yaml")?.objects ?? [];
    expect(ext.some((x) => x.kind === "StatefulSet")).toBe(false);
    const ec = find(ext, "Deployment", "troupe-coordinator").spec.template.spec.containers[0];
    expect(env(ec, "TROUPE_NATS_URL")).toBe("nats://nats.messaging.svc:4222");
    expect(env(ec, "TROUPE_REPLICAS")).toBe("1");
    expect(env(ec, "TROUPE_INBOX_MAX_AGE")).toBe("36h");
    expect(ec.image).toBe("registry.example.com/troupe/troupe/coordinator:0.1.0");
  });

  it("a config change changes the pods' checksum; the schema rejects unknown and bad values", () => {
    const before = find(defaults(), "Deployment", "troupe-worker").spec.template.metadata
      .annotations;
    const after = find(
      render([], ["agentConfig.planner.model=x"]).objects,
      "Deployment",
      "troupe-worker",
    ).spec.template.metadata.annotations;
    expect(after["checksum/config"]).not.toBe(before["checksum/config"]);
    for (const bad of [
      "worker.replica=3",
      "global.namespace=Bad_NS",
      "nats.replicas=2",
      "extra=1",
      "sealWith=.hidden",
      "channelKeys.main=short",
      "coordinator.inboxMaxAge=1w",
      "coordinator.inboxMaxAge=1000",
    ]) {
      expect(() => render([], [bad]), bad).toThrow(/values don't meet the specifications|schema/i);
    }
  });

  it("the rendered nats.conf is accepted by the pinned nats-server", () => {
    const conf: string = find(defaults(), "ConfigMap", "troupe-nats-config").data["nats.conf"];
    const f = join(work, "nats.conf");
    // paths of the pod, moved under the temporary directory
    writeFileSync(
      f,
      conf.replaceAll("/var/run/nats", work).replaceAll("/data", join(work, "data")),
    );
    // -t: parse the configuration and exit; non-zero (a throw here) on an error
    expect(() =>
      execFileSync(findNatsServer(), ["-t", "-c", f], {
        env: { ...process.env, SERVER_NAME: "troupe-nats-0" },
        stdio: ["ignore", "pipe", "pipe"],
      }),
    ).not.toThrow();
  });
});

describe.skipIf(skip)("helm/troupe configuration, booted as local processes", () => {
  let cluster: NatsClusterHandle;
  let nc: NatsConnection;
  let objects: K8sObject[];
  const containers: { stop(): Promise<unknown> }[] = [];

  beforeAll(async () => {
    await buildApps();
    objects = render().objects;
    cluster = await startNatsCluster({ nodes: 3 });
    await cluster.waitForMetaLeader();
    nc = await natsConnect({ servers: cluster.urls });
  }, 300_000);

  /**
   * A container with restartPolicy Always: the kubelet starts it again when it exits (here
   * after 1 s; the kubelet backs off from 10 s). `restarts` counts that.
   */
  interface Container {
    current: Proc;
    restarts: number;
    stop(): Promise<number | string>;
  }
  function supervised(
    name: string,
    p: { script: string; args: string[]; env: Record<string, string> },
  ): Container {
    let stopping = false;
    const c: Container = {
      current: spawnNode(name, p.script, p.args, { env: p.env }),
      restarts: 0,
      async stop() {
        stopping = true;
        return stopProc(c.current);
      },
    };
    const watch = (proc: Proc) => {
      void proc.exited.then((code) => {
        if (stopping) return;
        console.warn(`${name} exited (${code}); restarting it as the kubelet would`);
        setTimeout(() => {
          if (stopping) return;
          c.restarts++;
          c.current = spawnNode(name, p.script, p.args, { env: p.env });
          watch(c.current);
        }, 1000);
      });
    };
    watch(c.current);
    return c;
  }

  afterAll(async () => {
    await Promise.all(containers.map((c) => c.stop().catch(() => undefined)));
    await stopAll();
    await nc?.close();
    await cluster?.cleanup();
  });

  /**
   * A container as the kubelet would start it: the image's ENTRYPOINT (from its Dockerfile,
   * WORKDIR /app = the repository) plus the rendered args, with the rendered env (fieldRefs
   * resolved to the pod name), the NATS URL pointing at the local cluster and the HTTP port
   * moved to a free one.
   */
  function containerProcess(
    app: "worker" | "coordinator" | "cli",
    c: K8sObject,
    pod: string,
    httpPort?: number,
  ) {
    const df = readDockerfile(join(repo, `deploy/${app}.Dockerfile`));
    const runtime = df.stages.at(-1);
    const entry = runtime?.instructions.filter((i) => i.op === "ENTRYPOINT").at(-1);
    const argv = [...(JSON.parse(entry?.rest ?? "[]") as string[]), ...(c.args ?? [])];
    const vars: Record<string, string> = {};
    for (const e of c.env ?? []) {
      if (e.value !== undefined)
        vars[e.name] = String(e.value).replace(/\$\((\w+)\)/g, (_, k: string) => vars[k] ?? "");
      else if (e.valueFrom?.fieldRef?.fieldPath === "metadata.name") vars[e.name] = pod;
      else throw new Error(`unsupported env source for ${e.name}`);
    }
    expect(vars.TROUPE_NATS_URL).toBe("nats://troupe-nats:4222");
    vars.TROUPE_NATS_URL = cluster.urls.join(",");
    if (httpPort !== undefined) vars.TROUPE_HTTP_PORT = String(httpPort);
    expect(argv[0]).toBe("node");
    return { script: join(repo, argv[1] ?? ""), args: argv.slice(2), env: vars };
  }

  it("coordinators and workers start from the chart's settings; the helm test request is answered", async () => {
    const coordDep = find(objects, "Deployment", "troupe-coordinator");
    const workerDep = find(objects, "Deployment", "troupe-worker");
    const ns = "default";
    const nCoord: number = coordDep.spec.replicas;
    const nWorker: number = workerDep.spec.replicas;
    const ports = await freePorts(nCoord + nWorker);
    const started: Container[] = [];
    const workerPorts: number[] = [];
    for (let i = 0; i < nCoord; i++) {
      const p = containerProcess(
        "coordinator",
        coordDep.spec.template.spec.containers[0],
        `troupe-coordinator-${i}`,
        ports[i],
      );
      expect(p.env.TROUPE_REPLICAS).toBe("3");
      started.push(supervised(`coordinator-${i}`, p));
    }
    const workerIds: string[] = [];
    for (let i = 0; i < nWorker; i++) {
      const id = `troupe-worker-abc12-${i}`;
      const port = ports[nCoord + i] ?? 0;
      const p = containerProcess("worker", workerDep.spec.template.spec.containers[0], id, port);
      expect(p.env.TROUPE_WORKER_ID).toBe(id);
      workerIds.push(id);
      workerPorts.push(port);
      started.push(supervised(id, p));
    }
    try {
      const status = await waitForBalanced(
        "every worker owns its share of the shards",
        nc,
        ns,
        workerIds,
        60_000,
      );
      expect(status.shardCount).toBe(
        find(objects, "Deployment", "troupe-coordinator").spec.template.spec.containers[0].env.find(
          (e: K8sObject) => e.name === "TROUPE_SHARDS",
        ).value * 1,
      );

      // the inbox keeps messages as long as the chart says (coordinator.inboxMaxAge, 7d)
      const jsm = await jetstreamManager(nc);
      const inbox = await jsm.streams.info(namespaceNames(ns).inboxStream);
      expect(inbox.config.max_age).toBe(7 * 24 * 3600 * 1e9);

      // the probes the chart points at answer on the HTTP port it sets
      for (const port of workerPorts) {
        await waitFor(`worker :${port} ready`, async () => {
          const r = await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => undefined);
          return r?.status === 200;
        });
        expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
      }

      // the `helm test` pod: the cli image's entrypoint with the rendered args and env
      const testPod = find(objects, "Pod", "troupe-test").spec.containers[0];
      const t = containerProcess("cli", testPod, "troupe-test");
      const { stdout } = await promisify(execFile)(process.execPath, [t.script, ...t.args], {
        cwd: repo,
        env: { ...process.env, ...t.env },
        timeout: 30_000,
      });
      expect(JSON.parse(stdout)).toEqual({ type: "value", value: 0 });
    } catch (e) {
      for (const c of started) console.log(logTail(c.current));
      throw e;
    } finally {
      containers.push(...started);
      console.log(
        `container restarts: ${started.map((c) => `${c.current.name} ${c.restarts}`).join(", ")}`,
      );
    }
    // a fresh R3 cluster answers "no responders" while it elects leaders: the processes wait
    // that out instead of exiting, so no container needed a restart
    expect(started.map((c) => c.restarts)).toEqual(started.map(() => 0));

    // a pod deletion: SIGTERM drains the worker within the grace period; the other takes over
    const grace: number = workerDep.spec.template.spec.terminationGracePeriodSeconds;
    const t0 = Date.now();
    expect(await (started[nCoord] as Container).stop()).toBe(0);
    expect(Date.now() - t0).toBeLessThan(grace * 1000);
    await waitForBalanced(
      "the remaining workers own every shard",
      nc,
      ns,
      workerIds.slice(1),
      30_000,
    );
  }, 180_000);
});
