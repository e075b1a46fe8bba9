/** The demo's agents (planner, helper) and runDemo, the function behind `npm start`. */
export * from "./agents.js";
export type { DemoOptions, DemoResult } from "./demo.js";
export { DEFAULT_GOAL, runDemo } from "./demo.js";
export { describeEvent, formatLine, transcriptStage } from "./transcript.js";
