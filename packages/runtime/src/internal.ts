/** Internals for sibling packages (the NATS backend, the worker) and tests. Not a stable API. */
export * from "./index.js";
export { RuntimeCore } from "./runtime.js";
export { AgentHost, Host } from "./host.js";
export { Pipeline } from "./pipeline.js";
export type { Kernel, ResolvedConfig } from "./kernel.js";
export { Channel } from "./channels-table.js";
