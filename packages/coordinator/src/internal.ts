/** Internals for the apps and tests. Not a stable API. */

export { type ClusterBuckets, openClusterBuckets } from "./buckets.js";
export { readClusterStatus } from "./coordinator.js";
export * from "./index.js";
export { isCasConflict } from "./kv.js";
export { movedShards } from "./placement.js";
export * from "./protocol.js";
