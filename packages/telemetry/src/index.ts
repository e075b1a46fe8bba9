/**
 * @troupe/telemetry — the OpenTelemetry SDK set-up the Troupe apps share. Libraries depend
 * only on `@opentelemetry/api`; this package is for processes (worker, coordinator, CLI).
 * Traces go out as OTLP/HTTP (JSON) only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
 * `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; otherwise nothing is installed and the API's
 * no-op tracer stays in place, so an unconfigured process pays nothing.
 */
import { type Attributes, DiagLogLevel, diag } from "@opentelemetry/api";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { detectResources, envDetector, resourceFromAttributes } from "@opentelemetry/resources";
import { BatchSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { NodeTracerProvider } from "@opentelemetry/sdk-trace-node";

/** The logger shape the apps use (pino-compatible). */
export interface TelemetryLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
}

export interface TelemetryOptions {
  /** `service.name` unless `OTEL_SERVICE_NAME` (or `service.name` in OTEL_RESOURCE_ATTRIBUTES) says otherwise. */
  serviceName: string;
  /** More resource attributes (e.g. `service.instance.id`). */
  attributes?: Attributes;
  /** Where to read OTEL_* from. Default: `process.env`. */
  env?: NodeJS.ProcessEnv;
  logger: TelemetryLogger;
}

export interface Telemetry {
  /** True when an SDK is installed and exporting. */
  readonly enabled: boolean;
  /** Exports what is buffered now (the SDK keeps running). */
  flush(): Promise<void>;
  /** Exports what is buffered and stops the SDK; idempotent, never throws. */
  shutdown(): Promise<void>;
}

const disabled: Telemetry = { enabled: false, flush: async () => {}, shutdown: async () => {} };

/**
 * Installs a global tracer provider (AsyncLocalStorage context, W3C trace context propagator)
 * exporting to the OTLP endpoint, when one is configured. Call once, before the runtime starts.
 */
export function startTelemetry(options: TelemetryOptions): Telemetry {
  const env = options.env ?? process.env;
  const log = options.logger;
  const endpoint = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || env.OTEL_EXPORTER_OTLP_ENDPOINT;
  if (!endpoint || env.OTEL_SDK_DISABLED === "true" || env.OTEL_TRACES_EXPORTER === "none") {
    return disabled;
  }
  const protocol = env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL || env.OTEL_EXPORTER_OTLP_PROTOCOL;
  if (protocol !== undefined && protocol !== "" && protocol !== "http/json") {
    // one exporter keeps the dependency tree small; OTLP/HTTP receivers (Jaeger, the
    // Collector) take JSON on the same port as protobuf, but a gRPC port does not
    log.warn(
      { protocol, endpoint },
      "only OTLP over HTTP with JSON is supported: exporting http/json (point the endpoint at an OTLP/HTTP port, usually 4318)",
    );
  }
  // the SDK's own troubles (an unreachable collector) go to our log, not to the console
  diag.setLogger(
    {
      error: (message, ...args) => log.warn({ args }, `opentelemetry: ${message}`),
      warn: (message, ...args) => log.warn({ args }, `opentelemetry: ${message}`),
      info: () => {},
      debug: () => {},
      verbose: () => {},
    },
    DiagLogLevel.WARN,
  );
  // ours first, then what the environment says (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES) wins
  const resource = resourceFromAttributes({
    "service.name": options.serviceName,
    ...options.attributes,
  }).merge(detectResources({ detectors: [envDetector] }));
  const exporter = new OTLPTraceExporter(
    // the exporter reads OTEL_EXPORTER_OTLP_* from process.env itself; an explicit env wins
    options.env === undefined ? {} : { url: tracesUrl(env) },
  );
  const provider = new NodeTracerProvider({
    resource,
    // (the 2.x SDK takes its processors here; BatchSpanProcessor reads OTEL_BSP_*)
    spanProcessors: [new BatchSpanProcessor(exporter)],
  });
  provider.register();
  log.info(
    { endpoint, service: resource.attributes["service.name"] },
    "exporting traces over OTLP/HTTP",
  );
  let stopping: Promise<void> | undefined;
  return {
    enabled: true,
    flush: () =>
      provider.forceFlush().catch((err: unknown) => {
        log.warn({ err }, "could not flush traces");
      }),
    shutdown() {
      stopping ??= provider.shutdown().catch((err: unknown) => {
        log.warn({ err }, "could not flush traces at shutdown");
      });
      return stopping;
    },
  };
}

/** The traces URL as the OTLP exporter spec derives it from the environment. */
function tracesUrl(env: NodeJS.ProcessEnv): string {
  const specific = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT;
  if (specific) return specific;
  const base = env.OTEL_EXPORTER_OTLP_ENDPOINT ?? "";
  return `${base.replace(/\/+$/, "")}/v1/traces`;
}
