/**
 * Container images without a Docker engine: parses deploy/*.Dockerfile and "builds" a stage by
 * doing what it says — COPY (honouring .dockerignore) into a temporary root, RUN as plain
 * shell commands in its WORKDIR with its ENV — so tests can start what the image would run.
 */
import { execFile } from "node:child_process";
import { cpSync, existsSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { promisify } from "node:util";

export interface Instruction {
  op: string;
  /** The instruction's text after the keyword, continuation lines joined. */
  args: string;
  /** `--name=value` flags in front of the arguments (COPY --from, RUN --mount). */
  flags: Record<string, string>;
  /** The arguments without the flags. */
  rest: string;
}

export interface Stage {
  name: string;
  base: string;
  instructions: Instruction[];
}

export interface Dockerfile {
  args: Record<string, string>;
  stages: Stage[];
}

export function parseDockerfile(text: string): Dockerfile {
  const lines: string[] = [];
  let current = "";
  for (const raw of text.split("\n")) {
    const line = raw.trimEnd();
    if (current === "" && (line.trim() === "" || line.trim().startsWith("#"))) continue;
    if (current !== "" && line.trim().startsWith("#")) continue;
    if (line.endsWith("\\")) {
      current += `${line.slice(0, -1)} `;
      continue;
    }
    lines.push((current + line).trim());
    current = "";
  }
  const args: Record<string, string> = {};
  const stages: Stage[] = [];
  for (const line of lines) {
    const m = /^(\S+)\s*(.*)$/s.exec(line);
    if (m === null) continue;
    const op = (m[1] ?? "").toUpperCase();
    const rest0 = m[2] ?? "";
    const flags: Record<string, string> = {};
    let rest = rest0;
    for (;;) {
      const f = /^--([a-z-]+)=(\S+)\s+/.exec(rest);
      if (f === null) break;
      flags[f[1] ?? ""] = f[2] ?? "";
      rest = rest.slice(f[0].length);
    }
    const instruction: Instruction = { op, args: rest0, flags, rest };
    if (op === "ARG" && stages.length === 0) {
      const [k, v] = splitOnce(rest, "=");
      args[k] = v ?? "";
    } else if (op === "FROM") {
      const f = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(rest);
      const base = (f?.[1] ?? "").replace(/\$\{(\w+)\}/g, (_, k: string) => args[k] ?? "");
      stages.push({ name: f?.[2] ?? String(stages.length), base, instructions: [] });
    } else {
      const stage = stages.at(-1);
      if (stage === undefined) throw new Error(`${op} before FROM`);
      stage.instructions.push(instruction);
    }
  }
  return { args, stages };
}

function splitOnce(s: string, sep: string): [string, string | undefined] {
  const i = s.indexOf(sep);
  return i < 0 ? [s, undefined] : [s.slice(0, i), s.slice(i + sep.length)];
}

/** ENV in both forms: `ENV A=1 B="two words"` and `ENV A 1`. */
export function parseEnv(rest: string): Record<string, string> {
  const env: Record<string, string> = {};
  if (!/^\w+=/.test(rest)) {
    const [k, v] = splitOnce(rest.trim(), " ");
    env[k] = (v ?? "").trim();
    return env;
  }
  for (const m of rest.matchAll(/(\w+)=("(?:[^"\\]|\\.)*"|\S+)/g)) {
    const v = m[2] ?? "";
    env[m[1] ?? ""] = v.startsWith('"') ? (JSON.parse(v) as string) : v;
  }
  return env;
}

/** The exec form `["a", "b"]`; the shell form becomes `sh -c`. */
export function parseExecForm(rest: string): string[] {
  const t = rest.trim();
  return t.startsWith("[") ? (JSON.parse(t) as string[]) : ["sh", "-c", t];
}

/** .dockerignore patterns as a predicate on context-relative paths (no `!` exceptions). */
export function dockerignore(text: string): (path: string) => boolean {
  const regexes = text
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"))
    .map((p) => {
      const body = p
        .replace(/^\/+|\/+$/g, "")
        .split(/(\*\*\/|\*\*|\*|\?|[.+^${}()|[\]\\])/)
        .map((t) => {
          if (t === "**/") return "(?:.*/)?";
          if (t === "**") return ".*";
          if (t === "*") return "[^/]*";
          if (t === "?") return "[^/]";
          if (/^[.+^${}()|[\]\\]$/.test(t)) return `\\${t}`;
          return t;
        })
        .join("");
      // a pattern excludes the path and everything below it
      return new RegExp(`^${body}(?:/.*)?$`);
    });
  return (path) => regexes.some((r) => r.test(path));
}

export interface BuiltStage {
  stage: Stage;
  /** The stage's filesystem root (a temporary directory). */
  root: string;
  workdir: string;
  env: Record<string, string>;
  entrypoint: string[];
  cmd: string[];
  exposed: number[];
  user: string | undefined;
}

/** Maps an absolute path inside a stage to the host. */
export function hostPath(root: string, workdir: string, p: string): string {
  return p.startsWith("/") ? join(root, p) : join(workdir, p);
}

export interface BuildOptions {
  context: string;
  ignore: (path: string) => boolean;
  /** Stages built already, by name (for COPY --from). */
  stages: Map<string, BuiltStage>;
  root: string;
  /** Extra env for RUN steps (PATH, HOME: the host's npm cache stands in for the cache mount). */
  env: NodeJS.ProcessEnv;
  log?: (line: string) => void;
}

export async function buildStage(stage: Stage, o: BuildOptions): Promise<BuiltStage> {
  mkdirSync(o.root, { recursive: true });
  const built: BuiltStage = {
    stage,
    root: o.root,
    workdir: o.root,
    env: {},
    entrypoint: [],
    cmd: [],
    exposed: [],
    user: undefined,
  };
  let inStage = "/";
  for (const ins of stage.instructions) {
    const t0 = performance.now();
    switch (ins.op) {
      case "WORKDIR":
        inStage = ins.rest.startsWith("/") ? ins.rest : join(inStage, ins.rest);
        built.workdir = join(o.root, inStage);
        mkdirSync(built.workdir, { recursive: true });
        break;
      case "ENV":
        Object.assign(built.env, parseEnv(ins.rest));
        break;
      case "COPY": {
        const parts = ins.rest.trim().startsWith("[")
          ? (JSON.parse(ins.rest) as string[])
          : ins.rest.trim().split(/\s+/);
        const dest = parts.pop() ?? ".";
        const destHost = hostPath(o.root, built.workdir, dest);
        const from = ins.flags.from;
        for (const src of parts) {
          let srcHost: string;
          let filter: ((s: string) => boolean) | undefined;
          if (from !== undefined) {
            const other = o.stages.get(from);
            if (other === undefined) throw new Error(`COPY --from=${from}: no such stage built`);
            srcHost = hostPath(other.root, other.workdir, src);
          } else {
            srcHost = resolve(o.context, src);
            const ctx = o.context;
            filter = (s) => !o.ignore(relative(ctx, s));
          }
          if (!existsSync(srcHost)) throw new Error(`COPY ${src}: not found`);
          const isDir = statSync(srcHost).isDirectory();
          // a directory's contents go into dest; a file into dest/ (or as dest)
          const target =
            isDir || !dest.endsWith("/") ? destHost : join(destHost, src.split("/").pop() ?? src);
          mkdirSync(isDir ? target : dirname(target), { recursive: true });
          cpSync(srcHost, target, { recursive: true, ...(filter ? { filter } : {}) });
        }
        break;
      }
      case "RUN": {
        const cmd = parseExecForm(ins.rest);
        await promisify(execFile)(cmd[0] ?? "sh", cmd.slice(1), {
          cwd: built.workdir,
          env: { ...o.env, ...built.env },
          maxBuffer: 64 * 1024 * 1024,
          timeout: 480_000,
        }).catch((e: { stdout?: string; stderr?: string; message: string }) => {
          throw new Error(
            `RUN ${ins.rest} failed: ${e.message}\n${(e.stdout ?? "").slice(-3000)}\n${(e.stderr ?? "").slice(-3000)}`,
          );
        });
        break;
      }
      case "ENTRYPOINT":
        built.entrypoint = parseExecForm(ins.rest);
        built.cmd = [];
        break;
      case "CMD":
        built.cmd = parseExecForm(ins.rest);
        break;
      case "EXPOSE":
        built.exposed.push(...ins.rest.split(/\s+/).map((p) => Number.parseInt(p, 10)));
        break;
      case "USER":
        built.user = ins.rest.trim();
        break;
      case "STOPSIGNAL":
      case "LABEL":
      case "ARG":
        break;
      default:
        throw new Error(`unsupported instruction ${ins.op}`);
    }
    o.log?.(
      `[${stage.name}] ${ins.op} ${ins.args.slice(0, 80)} (${(performance.now() - t0).toFixed(0)} ms)`,
    );
  }
  return built;
}

export function readDockerfile(path: string): Dockerfile {
  return parseDockerfile(readFileSync(path, "utf8"));
}

/** A stage's instructions as text, to tell whether two Dockerfiles share a stage. */
export function stageKey(stage: Stage): string {
  return `${stage.base}\n${stage.instructions.map((i) => `${i.op} ${i.args}`).join("\n")}`;
}

/** scripts/versions.env as a map (NATS_SERVER_VERSION, HELM_VERSION, …). */
export function pinnedVersions(repoRoot: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of readFileSync(join(repoRoot, "scripts/versions.env"), "utf8").split("\n")) {
    const m = /^([A-Z_]+)=(\S+)$/.exec(line.trim());
    if (m) out[m[1] ?? ""] = m[2] ?? "";
  }
  return out;
}
