/**
 * README.md's quick start, run as written: the code block is extracted, each
 * `await x; // → value` line becomes a check of what `x` really gives, and the result runs
 * as a module. A README that drifts from the API fails here.
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { afterAll, describe, expect, it } from "vitest";

const here = dirname(fileURLToPath(import.meta.url));
const readme = readFileSync(resolve(here, "../../../README.md"), "utf8");
// generated beside the tests so that @troupe/runtime and xstate resolve as for any test file
const genDir = join(here, ".generated");

/** The first ```ts block after the "## Quick start" heading. */
function quickStart(): string {
  const section = readme.slice(readme.indexOf("## Quick start"));
  const m = /```ts\n([\s\S]*?)```/.exec(section);
  if (m?.[1] === undefined) throw new Error("README.md has no ts block under ## Quick start");
  return m[1];
}

/** `await expr; // → { a, b }` checks the keys; `// → <literal>` checks equality. */
function withChecks(code: string): { code: string; checks: number } {
  let checks = 0;
  const lines = code.split("\n").map((line) => {
    const m = /^(await .+?);\s*\/\/ → (.+)$/.exec(line);
    if (m === null) return line;
    checks++;
    const [, expr, expected] = m as unknown as [string, string, string];
    const keys = /^\{ (\w+(?:, \w+)*) \}$/.exec(expected);
    return keys !== null
      ? `__checkKeys(${expr}, ${JSON.stringify(keys[1]!.split(", "))});`
      : `__checkEqual(${expr}, ${expected});`;
  });
  return { code: lines.join("\n"), checks };
}

const show = (v: unknown) =>
  JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? `${x}n` : x)) ?? String(v);

afterAll(() => rmSync(genDir, { recursive: true, force: true }));

describe("README quick start", () => {
  it("runs as written and gives what its comments say", async () => {
    const { code, checks } = withChecks(quickStart());
    expect(checks).toBeGreaterThanOrEqual(3);
    const results: Array<{ ok: boolean; what: string }> = [];
    const g = globalThis as Record<string, unknown>;
    g.__checkKeys = (v: unknown, keys: string[]) =>
      results.push({
        ok: typeof v === "object" && v !== null && keys.every((k) => k in v),
        what: `${show(v)} has keys ${keys.join(", ")}`,
      });
    g.__checkEqual = (v: unknown, want: unknown) =>
      results.push({
        ok: show(v) === show(want),
        what: `${show(v)} equals ${show(want)}`,
      });
    mkdirSync(genDir, { recursive: true });
    const file = join(genDir, `quickstart-${process.pid}.ts`);
    writeFileSync(
      file,
      `${code}\ndeclare function __checkKeys(v: unknown, k: string[]): void;\ndeclare function __checkEqual(v: unknown, w: unknown): void;\n`,
    );
    await import(pathToFileURL(file).href);
    expect(results).toHaveLength(checks);
    for (const r of results) expect(r.ok, r.what).toBe(true);
  });
});
