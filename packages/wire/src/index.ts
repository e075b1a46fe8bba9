/** @troupe/wire — frames, msgpack codec with limits, channel crypto, ids and error codes. */
export * from "./errors.js";
export * from "./frame.js";
export * from "./ids.js";
