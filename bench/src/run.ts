/**
 * `npm run bench`: prints figures next to raw baselines measured in the same run, medians of
 * several runs, and writes bench/results/latest.json. `--quick` for a short run.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { defaultXChaCha20Poly1305 } from "@troupe/wire/internal";
import { activationBench, memoryBench } from "./activation.js";
import { clusterBench } from "./cluster.js";
import { runCryptoBench } from "./crypto.js";
import { rawXState, troupeEmbedded } from "./embedded.js";
import { isolationBench } from "./isolation.js";
import { latencyBench, type OpenLoopResult, percentile } from "./latency.js";
import { manyAgentsBench, type WorkerSample } from "./many-agents.js";
import { recoveryBench } from "./recovery.js";
import { tracingBench } from "./tracing.js";

const quick = process.argv.includes("--quick");
const runs = quick ? 3 : 5;
const messages = quick ? 50_000 : 200_000;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

const fmt = (n: number) => Math.round(n).toLocaleString("en-US");
const ms = (n: number) => Number(n.toFixed(3));
const mib = (bytes: number) => Number((bytes / 2 ** 20).toFixed(1));

/** p50/p90/p99/max of a list of ms. */
function spread(xs: readonly number[]) {
  const s = [...xs].sort((a, b) => a - b);
  return {
    n: s.length,
    p50Ms: ms(percentile(s, 50)),
    p90Ms: ms(percentile(s, 90)),
    p99Ms: ms(percentile(s, 99)),
    maxMs: ms(s[s.length - 1] ?? Number.NaN),
  };
}

function openLoopFigures(r: OpenLoopResult) {
  return {
    ...spread(r.samples),
    sent: r.sent,
    errors: r.errors,
    achievedPerSec: Math.round(r.ratePerSec),
    senderLagP99Ms: ms(r.lagP99Ms),
    senderLagMaxMs: ms(r.lagMaxMs),
  };
}

async function main(): Promise<void> {
  const machine = `${cpus().length} × ${cpus()[0]?.model ?? "cpu"}, ${Math.round(totalmem() / 2 ** 30)} GiB, node ${process.version}`;
  console.log(`Troupe benchmarks (${quick ? "quick" : "full"}; medians of ${runs} runs)`);
  console.log(`machine: ${machine}\n`);

  const raw: number[] = [];
  const troupe1: number[] = [];
  const troupe100: number[] = [];
  // one unmeasured round first: JIT warm-up would otherwise land in the first figures
  rawXState(messages / 4);
  await troupeEmbedded(messages / 4, 1);
  await troupeEmbedded(messages / 4, 100);
  for (let r = 0; r < runs; r++) {
    raw.push(rawXState(messages));
    troupe1.push(await troupeEmbedded(messages, 1));
    troupe100.push(await troupeEmbedded(messages, 100));
  }
  const rawM = median(raw);
  const rows = [
    { scenario: "raw XState actor.send loop", perSec: rawM, ratio: 1 },
    {
      scenario: "Troupe embedded, 1 agent",
      perSec: median(troupe1),
      ratio: median(troupe1) / rawM,
    },
    {
      scenario: "Troupe embedded, 100 agents",
      perSec: median(troupe100),
      ratio: median(troupe100) / rawM,
    },
  ];
  console.log(
    "Embedded: messages/s through the whole pipeline (send → pipeline → handler → snapshot → ack)",
  );
  console.table(
    rows.map((r) => ({
      scenario: r.scenario,
      "msgs/s": fmt(r.perSec),
      "vs raw": r.ratio.toFixed(2),
    })),
  );

  let activation: Record<string, unknown> | undefined;
  try {
    const agents = quick ? 1_000 : 5_000;
    const a = await activationBench(agents);
    const warm = spread(a.warm);
    const coldEmpty = spread(a.coldEmpty);
    const coldRestore = spread(a.coldRestore);
    activation = { agents, warm, coldEmpty, coldRestore };
    console.log(
      `Activation (embedded): a request to an agent until its reply, one at a time, ${agents} agents`,
    );
    console.table(
      [
        ["already active (baseline)", warm],
        ["never seen, nothing stored", coldEmpty],
        ["passivated, restored from its snapshot", coldRestore],
      ].map(([c, f]) => {
        const x = f as ReturnType<typeof spread>;
        return {
          case: c,
          "p50 ms": x.p50Ms,
          "p90 ms": x.p90Ms,
          "p99 ms": x.p99Ms,
          "max ms": x.maxMs,
        };
      }),
    );
  } catch (e) {
    console.log(`Activation: not measured — ${e instanceof Error ? e.message : String(e)}\n`);
  }

  let memory: Record<string, unknown> | undefined;
  try {
    const agents = 10_000;
    const distinct = 200_000;
    const idleTimeoutMs = 500;
    const m = await memoryBench(agents, distinct, idleTimeoutMs);
    const storedPerAgent = (m.boundedLive.heapEndBytes - m.boundedLive.heapBaseBytes) / distinct;
    memory = { ...m, storedBytesPerAgent: storedPerAgent };
    console.log(
      `Memory (embedded, node --expose-gc, heapUsed after gc): ${fmt(agents)} active idle agents`,
    );
    console.table([
      {
        case: "bare XState actor (createActor().start())",
        "bytes/agent": fmt(m.xstate.bytesPerAgent),
        "vs XState": "1.00",
      },
      {
        case: "Troupe agent, active and idle (host + its stored snapshot)",
        "bytes/agent": fmt(m.troupe.bytesPerAgent),
        "vs XState": (m.troupe.bytesPerAgent / m.xstate.bytesPerAgent).toFixed(2),
      },
      {
        case: "… of which the stored snapshot (embedded store, after passivation)",
        "bytes/agent": fmt(storedPerAgent),
        "vs XState": "",
      },
    ]);
    const b = m.bounded;
    const l = m.boundedLive;
    console.log(
      `Bounded memory: ${fmt(distinct)} distinct agents, one message each, as fast as they go, passivation after ${idleTimeoutMs} ms idle`,
    );
    console.table([
      {
        run: "as V8 runs it",
        seconds: b.seconds.toFixed(1),
        "peak active": fmt(b.peakActive),
        "peak heapUsed MiB": mib(b.peakHeapBytes),
        "peak live MiB": "",
        "peak RSS MiB": mib(b.peakRssBytes),
        "end, after gc MiB": mib(b.heapEndBytes),
      },
      {
        run: "full gc forced every 500 ms",
        seconds: l.seconds.toFixed(1),
        "peak active": fmt(l.peakActive),
        "peak heapUsed MiB": mib(l.peakHeapBytes),
        "peak live MiB": mib(l.peakLiveBytes ?? Number.NaN),
        "peak RSS MiB": mib(l.peakRssBytes),
        "end, after gc MiB": mib(l.heapEndBytes),
      },
    ]);
    console.log("  over time (forced-gc run):");
    console.table(
      l.series.map((p) => ({
        s: p.s,
        touched: fmt(p.touched),
        active: fmt(p.active),
        "heapUsed MiB": mib(p.heapBytes),
        "live MiB": mib(p.liveBytes ?? Number.NaN),
      })),
    );
  } catch (e) {
    console.log(`Memory: not measured — ${e instanceof Error ? e.message : String(e)}\n`);
  }

  let cluster: Record<string, unknown> | undefined;
  if (process.argv.includes("--no-cluster")) {
    console.log("Cluster: skipped (--no-cluster)\n");
  } else {
    const clusterMessages = quick ? 10_000 : 50_000;
    try {
      const c = await clusterBench(clusterMessages, runs);
      const raw = median(c.rawPerSec);
      const rawCore = median(c.rawCorePerSec);
      const troupe = median(c.troupePerSec);
      const plain = median(c.troupePlainPerSec);
      cluster = {
        messages: clusterMessages,
        rawPerSec: raw,
        rawCorePerSec: rawCore,
        troupePerSec: troupe,
        troupePlainPerSec: plain,
        ratio: troupe / raw,
        ratioVsCore: troupe / rawCore,
        plainRatio: plain / raw,
        plainRatioVsCore: plain / rawCore,
        aead: defaultXChaCha20Poly1305.name,
        rounds: c,
      };
      console.log(
        "Cluster (one local nats-server, file storage): durable messages/s, 256 B payloads, 100 agents",
      );
      console.table([
        {
          scenario: "raw nats.js: js.publish → consume → ack",
          "msgs/s": fmt(raw),
          "vs raw": "1.00",
          "vs raw core": (raw / rawCore).toFixed(2),
        },
        {
          scenario: "raw nats.js: core publish + PubAck inbox → consume → ack",
          "msgs/s": fmt(rawCore),
          "vs raw": (rawCore / raw).toFixed(2),
          "vs raw core": "1.00",
        },
        {
          scenario: `Troupe agents on NATS, sealed (send → seal → open → handle → snapshot → ack; AEAD: ${defaultXChaCha20Poly1305.name})`,
          "msgs/s": fmt(troupe),
          "vs raw": (troupe / raw).toFixed(2),
          "vs raw core": (troupe / rawCore).toFixed(2),
        },
        {
          scenario: "Troupe agents on NATS, not sealed",
          "msgs/s": fmt(plain),
          "vs raw": (plain / raw).toFixed(2),
          "vs raw core": (plain / rawCore).toFixed(2),
        },
      ]);
    } catch (e) {
      console.log(`Cluster: not measured — ${e instanceof Error ? e.message : String(e)}\n`);
    }
  }

  let tracing: Record<string, unknown> | undefined;
  if (process.argv.includes("--no-cluster")) {
    console.log("Tracing: skipped (--no-cluster)\n");
  } else {
    const tracingMessages = quick ? 10_000 : 50_000;
    try {
      const t = await tracingBench(tracingMessages, runs);
      const off = median(t.offPerSec);
      const on = median(t.onPerSec);
      tracing = {
        messages: tracingMessages,
        offPerSec: off,
        onPerSec: on,
        ratio: on / off,
        spansPerMessage: median(t.spansPerMessage),
        rounds: t,
      };
      console.log(
        "Tracing: the cluster scenario with an OpenTelemetry SDK (batch processor, counting exporter) vs none, rounds alternated",
      );
      console.table([
        {
          case: "tracing off (no SDK registered)",
          "msgs/s": fmt(off),
          "vs off": "1.00",
          "spans/msg": 0,
        },
        {
          case: "tracing on (NodeTracerProvider + BatchSpanProcessor)",
          "msgs/s": fmt(on),
          "vs off": (on / off).toFixed(2),
          "spans/msg": median(t.spansPerMessage).toFixed(2),
        },
      ]);
    } catch (e) {
      console.log(`Tracing: not measured — ${e instanceof Error ? e.message : String(e)}\n`);
    }
  }

  let recovery: Record<string, unknown> | undefined;
  if (process.argv.includes("--no-cluster")) {
    console.log("Recovery: skipped (--no-cluster)\n");
  } else {
    try {
      const r = await recoveryBench(quick ? 2 : 6);
      const sorted = [...r.samples].sort((a, b) => a - b);
      const pct = (p: number) =>
        sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
      recovery = {
        kills: r.kills,
        agents: r.samples.length,
        leaseMs: r.leaseMs,
        p50Ms: pct(50),
        p99Ms: pct(99),
        maxMs: sorted[sorted.length - 1],
      };
      console.log(
        `Recovery: worker SIGKILLed under load (coordinator + 3 workers as processes, lease ${r.leaseMs} ms): kill → first processed message of each of its agents`,
      );
      console.table([
        {
          kills: r.kills,
          "agents measured": r.samples.length,
          "p50 ms": pct(50),
          "p99 ms": pct(99),
          "max ms": sorted[sorted.length - 1],
        },
      ]);
    } catch (e) {
      console.log(`Recovery: not measured — ${e instanceof Error ? e.message : String(e)}\n`);
    }
  }

  let isolation: Record<string, unknown> | undefined;
  if (process.argv.includes("--no-cluster")) {
    console.log("Isolation: skipped (--no-cluster)\n");
  } else {
    try {
      const isoMessages = quick ? 10_000 : 20_000;
      const f = await isolationBench(isoMessages, runs);
      const alone = median(f.alone);
      const share = median(f.share);
      const flood = median(f.flood);
      isolation = { messages: isoMessages, alone, share, flood };
      console.log(
        `Isolation: healthy agents' msgs/s on NATS next to a quarantined agent (${isoMessages} healthy messages a round, one process, rounds alternated)`,
      );
      console.table([
        { case: "100 healthy agents alone", "msgs/s": fmt(alone), "vs alone": "1.00" },
        {
          case: `… while a quarantined agent gets its share (${Math.round(isoMessages / 100)})`,
          "msgs/s": fmt(share),
          "vs alone": (share / alone).toFixed(2),
        },
        {
          case: `… while it gets a flood (${isoMessages / 2}), held by the same process`,
          "msgs/s": fmt(flood),
          "vs alone": (flood / alone).toFixed(2),
        },
      ]);
    } catch (e) {
      console.log(`Isolation: not measured — ${e instanceof Error ? e.message : String(e)}\n`);
    }
  }

  let manyAgents: Record<string, unknown> | undefined;
  if (process.argv.includes("--no-cluster")) {
    console.log("Many agents: skipped (--no-cluster)\n");
  } else {
    try {
      const agents = quick ? 100_000 : 1_000_000;
      const idleMs = 2_000;
      const r = await manyAgentsBench(agents, idleMs);
      const peak = (pick: (w: WorkerSample) => number) =>
        Math.max(...r.samples.flatMap((x) => x.workers.map(pick)).filter(Number.isFinite));
      const last = r.samples[r.samples.length - 1];
      // about ten rows: the samples with a live-set reading, evenly spaced, and the last
      const withGc = r.samples.filter((x) => x.workers[0]?.liveBytes !== undefined);
      const step = Math.max(1, Math.ceil(withGc.length / 10));
      const series = withGc.filter((_, i) => i % step === 0 || i === withGc.length - 1);
      manyAgents = {
        agents,
        idleMs,
        seconds: r.seconds,
        peakActivePerWorker: peak((w) => w.active),
        peakRssBytesPerWorker: peak((w) => w.rssBytes),
        peakHeapUsedBytesPerWorker: peak((w) => w.heapUsedBytes),
        peakLiveBytesPerWorker: peak((w) => w.liveBytes ?? Number.NaN),
        end: last,
        series,
      };
      console.log(
        `Many agents: ${fmt(agents)} distinct agents, one message each, on 2 worker processes (passivation after ${idleMs} ms idle), ${r.seconds.toFixed(0)} s`,
      );
      console.table(
        series.map((x) => ({
          s: x.at.toFixed(0),
          sent: fmt(x.sent),
          processed: fmt(x.processed),
          "active per worker": x.workers.map((w) => fmt(w.active)).join(" / "),
          "RSS MiB per worker": x.workers.map((w) => mib(w.rssBytes)).join(" / "),
          "heap used MiB per worker": x.workers.map((w) => mib(w.heapUsedBytes)).join(" / "),
          "live MiB per worker (after gc)": x.workers
            .map((w) => (w.liveBytes === undefined ? "" : mib(w.liveBytes)))
            .join(" / "),
          "nats-server MiB": mib(x.natsServerMemBytes),
        })),
      );
    } catch (e) {
      console.log(`Many agents: not measured — ${e instanceof Error ? e.message : String(e)}\n`);
    }
  }

  let latency: Record<string, unknown> | undefined;
  if (process.argv.includes("--no-cluster")) {
    console.log("Latency: skipped (--no-cluster)\n");
  } else {
    try {
      const rate = 1_000;
      const seconds = quick ? 5 : 20;
      const l = await latencyBench(rate, seconds);
      const raw = openLoopFigures(l.raw);
      const troupe = openLoopFigures(l.troupe);
      const hops = {
        clientToRelay: spread(l.hops.clientToRelay),
        relayToEcho: spread(l.hops.relayToEcho),
        echoToRelay: spread(l.hops.echoToRelay),
        agentRoundTrip: spread(l.hops.agentRoundTrip),
        relayToClient: spread(l.hops.relayToClient),
      };
      latency = { rate, seconds, relay: l.relay, echo: l.echo, raw, troupe, hops };
      console.log(
        `Latency: client → ${l.relay} → ${l.echo} → back, coordinator + 2 workers as processes, open loop at ${fmt(rate)} requests/s for ${seconds} s`,
      );
      console.table(
        [
          ["raw nats.js request → responder → reply", raw],
          ["Troupe: client → agent → agent on the other worker → reply", troupe],
        ].map(([c, f]) => {
          const x = f as ReturnType<typeof openLoopFigures>;
          return {
            case: c,
            answered: x.n,
            errors: x.errors,
            "p50 ms": x.p50Ms,
            "p90 ms": x.p90Ms,
            "p99 ms": x.p99Ms,
            "max ms": x.maxMs,
            "sender lag p99 ms": x.senderLagP99Ms,
          };
        }),
      );
      console.log("… the same round trips split by the agents' own stamps (ms):");
      console.table(
        (
          [
            ["client → relay handles ping (worker 1)", hops.clientToRelay],
            ["relay → echo handles it (worker 2)", hops.relayToEcho],
            ["echo → relay handles the reply (worker 1)", hops.echoToRelay],
            ["agent → agent request/reply (relay → echo → relay)", hops.agentRoundTrip],
            ["relay → client has the pong", hops.relayToClient],
          ] as const
        ).map(([hop, x]) => ({
          hop,
          "p50 ms": x.p50Ms,
          "p90 ms": x.p90Ms,
          "p99 ms": x.p99Ms,
          "max ms": x.maxMs,
        })),
      );
    } catch (e) {
      console.log(`Latency: not measured — ${e instanceof Error ? e.message : String(e)}\n`);
    }
  }

  const crypto = await runCryptoBench();
  console.log("Wire: frames at 256 B payloads");
  console.table(
    crypto.map((c) => ({ case: c.name, "ops/s": fmt(c.opsPerSec), note: c.note ?? "" })),
  );

  const out = join(dirname(fileURLToPath(import.meta.url)), "..", "results");
  mkdirSync(out, { recursive: true });
  writeFileSync(
    join(out, "latest.json"),
    `${JSON.stringify({ at: new Date().toISOString(), machine, quick, runs, messages, embedded: rows, activation, memory, cluster, tracing, recovery, isolation, latency, manyAgents, wire: crypto }, null, 2)}\n`,
  );
  console.log(`\nwritten: bench/results/latest.json`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
