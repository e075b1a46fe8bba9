/** Internals for sibling packages (the NATS backend, the worker) and tests. Not a stable API. */

export { Channel } from "./channels-table.js";
export { AgentHost, Host } from "./host.js";
export * from "./index.js";
export type { Kernel, ResolvedConfig } from "./kernel.js";
export { Pipeline } from "./pipeline.js";
export { recordCodec } from "./records.js";
export { RuntimeCore } from "./runtime.js";
