/** Internals shared with sibling packages and tests. Not a stable API. */
export * from "./index.js";
