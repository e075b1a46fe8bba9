/**
 * The apps run from production installs (`npm ci --omit=dev`, deploy/*.Dockerfile), so every
 * package their compiled code imports — and the code of the workspace packages they depend
 * on — must be a production dependency of the package that imports it. The monorepo's
 * hoisted node_modules hides the difference; these tests do not rely on it.
 */

import { readdirSync, readFileSync } from "node:fs";
import { isBuiltin } from "node:module";
import { join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";
import { describe, expect, it } from "vitest";

const root = resolve(fileURLToPath(new URL(".", import.meta.url)), "../../..");

interface Manifest {
  name: string;
  workspaces?: string[];
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  devDependencies?: Record<string, string>;
}

function manifest(dir: string): Manifest {
  return JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as Manifest;
}

/** Workspace name → directory, from the root manifest's `workspaces` ("dir/*" or "dir"). */
function workspaces(): Map<string, string> {
  const byName = new Map<string, string>();
  for (const pattern of manifest(root).workspaces ?? []) {
    const dirs = pattern.endsWith("/*")
      ? readdirSync(join(root, pattern.slice(0, -2)), { withFileTypes: true })
          .filter((e) => e.isDirectory())
          .map((e) => join(root, pattern.slice(0, -2), e.name))
      : [join(root, pattern)];
    for (const dir of dirs) {
      try {
        byName.set(manifest(dir).name, dir);
      } catch {
        // a directory without a manifest is not a workspace
      }
    }
  }
  return byName;
}

/** What a production install provides to a package: what it declares outside devDependencies. */
function installed(m: Manifest): Set<string> {
  return new Set([
    m.name,
    ...Object.keys(m.dependencies ?? {}),
    ...Object.keys(m.optionalDependencies ?? {}),
    ...Object.keys(m.peerDependencies ?? {}),
  ]);
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: "utf8" })
    .filter((f) => /\.(c|m)?[jt]sx?$/.test(f) && !/\.d\.(c|m)?ts$/.test(f) && !/\.test\./.test(f))
    .map((f) => join(dir, f));
}

/**
 * The module specifiers the compiled file loads: static imports and re-exports that survive
 * compilation (under verbatimModuleSyntax only `import type`/`export type` are erased) and
 * `import("…")` with a literal argument.
 */
function runtimeSpecifiers(fileName: string, text: string): string[] {
  const source = ts.createSourceFile(fileName, text, ts.ScriptTarget.Latest, true);
  const found: string[] = [];
  const visit = (node: ts.Node): void => {
    if (
      ts.isImportDeclaration(node) &&
      !node.importClause?.isTypeOnly &&
      ts.isStringLiteral(node.moduleSpecifier)
    ) {
      found.push(node.moduleSpecifier.text);
    } else if (
      ts.isExportDeclaration(node) &&
      !node.isTypeOnly &&
      node.moduleSpecifier !== undefined &&
      ts.isStringLiteral(node.moduleSpecifier)
    ) {
      found.push(node.moduleSpecifier.text);
    } else if (
      ts.isCallExpression(node) &&
      node.expression.kind === ts.SyntaxKind.ImportKeyword &&
      node.arguments[0] !== undefined &&
      ts.isStringLiteralLike(node.arguments[0])
    ) {
      found.push(node.arguments[0].text);
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return found;
}

/** The package a bare specifier names ("@scope/name/sub" → "@scope/name"), else undefined. */
function packageOf(specifier: string): string | undefined {
  if (/^(\.|\/|#)|^[a-z][a-z0-9+.-]*:/i.test(specifier) || isBuiltin(specifier)) return undefined;
  const parts = specifier.split("/");
  return specifier.startsWith("@") ? parts.slice(0, 2).join("/") : parts[0];
}

/** Imports of packages the importing package would not have in a production install. */
function missingAtRuntime(
  dir: string,
  read: (file: string) => string = (f) => readFileSync(f, "utf8"),
): string[] {
  const m = manifest(dir);
  const provided = installed(m);
  const problems: string[] = [];
  for (const file of sourceFiles(join(dir, "src"))) {
    for (const specifier of runtimeSpecifiers(file, read(file))) {
      const name = packageOf(specifier);
      if (name === undefined || provided.has(name)) continue;
      const why =
        m.devDependencies?.[name] !== undefined ? "only a devDependency" : "not a dependency";
      problems.push(
        `${relative(root, file)} imports "${specifier}": ${name} is ${why} of ${m.name}`,
      );
    }
  }
  return problems;
}

/** The apps and the workspace packages they reach through production dependencies. */
function runtimeClosure(): string[] {
  const byName = workspaces();
  const apps = ["cli", "worker", "coordinator"].map((app) => join(root, "apps", app));
  const seen = new Set(apps);
  const queue = [...apps];
  for (let dir = queue.shift(); dir !== undefined; dir = queue.shift()) {
    for (const name of Object.keys(manifest(dir).dependencies ?? {})) {
      const sibling = byName.get(name);
      if (sibling !== undefined && !seen.has(sibling)) {
        seen.add(sibling);
        queue.push(sibling);
      }
    }
  }
  return [...seen];
}

describe("the apps' production installs", () => {
  it("finds the specifiers that survive compilation", () => {
    const text = [
      'import { a } from "kept-a";',
      'import type { B } from "erased-b";',
      'import { type C } from "kept-c";', // verbatimModuleSyntax keeps `import {} from`
      'export { d } from "kept-d";',
      'export type { E } from "erased-e";',
      'import "kept-f";',
      'const g = await import("kept-g");',
      'type H = import("erased-h").H;',
    ].join("\n");
    expect(runtimeSpecifiers("x.ts", text)).toEqual([
      "kept-a",
      "kept-c",
      "kept-d",
      "kept-f",
      "kept-g",
    ]);
    expect(
      ["node:fs", "fs", "./a.js", "#internal", "@troupe/nats/internal", "pino", "ora/x"].map(
        packageOf,
      ),
    ).toEqual([undefined, undefined, undefined, undefined, "@troupe/nats", "pino", "ora"]);
  });

  it("an import of a devDependency, or of no dependency, is reported", () => {
    const nats = join(root, "packages", "nats");
    const plantedDev = join(nats, "src", "index.ts");
    expect(
      missingAtRuntime(nats, (file) =>
        file === plantedDev ? 'import { startNatsServer } from "@troupe/testkit";\n' : "",
      ),
    ).toEqual([
      'packages/nats/src/index.ts imports "@troupe/testkit": @troupe/testkit is only a devDependency of @troupe/nats',
    ]);
    const cli = join(root, "apps", "cli");
    const planted = join(cli, "src", "main.ts");
    expect(
      missingAtRuntime(cli, (file) =>
        file === planted ? 'const v = await import("vitest");\n' : "",
      ),
    ).toEqual(['apps/cli/src/main.ts imports "vitest": vitest is not a dependency of @troupe/cli']);
  });

  it.each(runtimeClosure().map((dir) => [relative(root, dir), dir]))(
    "%s imports only its production dependencies",
    (_name, dir) => {
      expect(missingAtRuntime(dir)).toEqual([]);
    },
  );
});
