/**
 * What tracing costs: the cluster durable-throughput scenario (cluster.ts: 100 counter agents
 * on one local nats-server, one process that is client and worker) with an OpenTelemetry SDK
 * registered — NodeTracerProvider (AsyncLocalStorage context, W3C propagator) with a batch
 * span processor exporting to an exporter that only counts — next to the same with no SDK,
 * in the same run, rounds alternated.
 */
import { context, propagation, trace } from "@opentelemetry/api";
import {
  BatchSpanProcessor,
  type ReadableSpan,
  type SpanExporter,
} from "@opentelemetry/sdk-trace-base";
import { NodeTracerProvider } from "@opentelemetry/sdk-trace-node";
import { startNatsServer } from "@troupe/testkit";
import { troupeOnNats } from "./cluster.js";

/** Drops what it is given, counting spans: the SDK's whole cost, no network or encoding. */
class CountingExporter implements SpanExporter {
  spans = 0;
  export(spans: ReadableSpan[], done: (result: { code: number }) => void): void {
    this.spans += spans.length;
    done({ code: 0 }); // ExportResultCode.SUCCESS
  }
  async shutdown(): Promise<void> {}
  async forceFlush(): Promise<void> {}
}

export interface TracingFigures {
  offPerSec: number[];
  onPerSec: number[];
  /** spans exported per message sent, per traced round */
  spansPerMessage: number[];
}

async function traced(url: string, messages: number, run: number) {
  const exporter = new CountingExporter();
  const provider = new NodeTracerProvider({
    spanProcessors: [
      // a queue large enough that no span is dropped at these rates (the default 2,048
      // would drop most of them and flatter the figure)
      new BatchSpanProcessor(exporter, {
        maxQueueSize: 262_144,
        maxExportBatchSize: 2_048,
        scheduledDelayMillis: 1_000,
      }),
    ],
  });
  provider.register();
  try {
    const perSec = await troupeOnNats(url, messages, 100, run, true);
    await provider.forceFlush();
    return { perSec, spansPerMessage: exporter.spans / messages };
  } finally {
    await provider.shutdown();
    trace.disable();
    context.disable();
    propagation.disable();
  }
}

export async function tracingBench(messages: number, runs: number): Promise<TracingFigures> {
  const server = await startNatsServer();
  try {
    const offPerSec: number[] = [];
    const onPerSec: number[] = [];
    const spansPerMessage: number[] = [];
    // warm-up, not measured
    await troupeOnNats(server.url, messages / 4, 100, 1000, true);
    await traced(server.url, messages / 4, 1001);
    for (let r = 0; r < runs; r++) {
      // alternate which goes first, so drift in the machine falls on both alike
      const on = async () => {
        const t = await traced(server.url, messages, 2000 + r);
        onPerSec.push(t.perSec);
        spansPerMessage.push(t.spansPerMessage);
      };
      const off = async () => {
        offPerSec.push(await troupeOnNats(server.url, messages, 100, 3000 + r, true));
      };
      if (r % 2 === 0) {
        await off();
        await on();
      } else {
        await on();
        await off();
      }
    }
    return { offPerSec, onPerSec, spansPerMessage };
  } finally {
    await server.cleanup();
  }
}
