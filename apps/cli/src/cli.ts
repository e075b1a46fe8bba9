/**
 * The `troupe` command line: parses argv with commander and runs one command. `run` never
 * exits the process; it returns the exit code, so tests run it in-process with captured
 * output. Commands are loaded when they run, so `--help` does not load the NATS client.
 */

import { Command, CommanderError, InvalidArgumentError, Option } from "commander";
import { CliError, ExitCode, type Io, writeLine } from "./io.js";
import { CHANNEL_KEYS_DIR_ENV, NAMESPACE_ENV, NATS_URL_ENV, SEAL_WITH_ENV } from "./settings.js";

export type { Io } from "./io.js";

function wholeNumber(name: string, min: number, max = Number.MAX_SAFE_INTEGER) {
  return (value: string): number => {
    const n = Number(value);
    if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`${name} must be a whole number from ${min} to ${max}.`);
    }
    return n;
  };
}

function program(io: Io, setExit: (code: number) => void): Command {
  const cli = new Command("troupe")
    .description("Troupe: run, inspect and talk to a cluster of XState agents over NATS JetStream")
    .exitOverride()
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
    })
    .showSuggestionAfterError()
    .option("--nats <urls>", `NATS server URL(s), comma-separated (env ${NATS_URL_ENV})`)
    .option("--namespace <ns>", `the cluster's namespace (env ${NAMESPACE_ENV})`)
    .addOption(
      new Option(
        "--channel-keys-dir <dir>",
        `seal agent traffic (send, request, dev) with the channel keys in this directory, one file per key, as the workers have them (env ${CHANNEL_KEYS_DIR_ENV})`,
      ),
    )
    .addOption(
      new Option(
        "--seal-with <name>",
        `the key to seal with when the directory holds several (env ${SEAL_WITH_ENV})`,
      ),
    )
    .addHelpText(
      "after",
      [
        "",
        "Defaults: --nats nats://127.0.0.1:4222, --namespace default.",
        "Exit codes: 0 ok, 1 the operation failed, 2 the command line is wrong.",
        "",
        "Examples:",
        "  troupe dev                                  a local cluster and the demo, until Ctrl-C",
        "  troupe status",
        `  troupe send counter/alice '{"type":"inc","by":2}'`,
        `  troupe request counter/alice '{"type":"get"}' --timeout 5000`,
        `  troupe quarantine counter/alice --reason "bad input"; troupe quarantined; troupe release counter/alice`,
        "  troupe replay counter/alice --dry-run",
        "  troupe parked --limit 50",
      ].join("\n"),
    );

  cli
    .command("status")
    .description("show the workers, their shards and the leader (asks the coordinator)")
    .option("--json", "print the coordinator's raw JSON reply")
    .option(
      "--timeout <ms>",
      "how long to wait for the coordinator",
      wholeNumber("--timeout", 1),
      3000,
    )
    .action(async (opts: { json?: boolean; timeout: number }, cmd: Command) => {
      const { status } = await import("./commands/status.js");
      setExit(await status({ ...cmd.optsWithGlobals(), ...opts }, io));
    });

  cli
    .command("send")
    .description("send an event to an agent and print the receipt (messageId, sequence)")
    .argument("<address>", "the agent, as type/key")
    .argument("<event>", `the event as JSON, e.g. '{"type":"inc","by":2}'`)
    .option("--id <messageId>", "idempotency key: resending with the same id stores it once")
    .option("--json", "print the receipt as JSON")
    .action(async (address: string, event: string, opts: object, cmd: Command) => {
      const { send } = await import("./commands/message.js");
      setExit(await send(address, event, { ...cmd.optsWithGlobals(), ...opts }, io));
    });

  cli
    .command("request")
    .description("send an event to an agent, wait for its reply and print it as JSON")
    .argument("<address>", "the agent, as type/key")
    .argument("<event>", `the event as JSON, e.g. '{"type":"get"}'`)
    .option("--timeout <ms>", "how long to wait for the reply", wholeNumber("--timeout", 1), 2000)
    .option("--id <messageId>", "idempotency key for the request message")
    .action(async (address: string, event: string, opts: object, cmd: Command) => {
      const { request } = await import("./commands/message.js");
      setExit(await request(address, event, { ...cmd.optsWithGlobals(), ...opts }, io));
    });

  cli
    .command("replay")
    .description(
      "replay an agent from its inbox history: --dry-run shows each event and the state it led to; without it the agent's state is rebuilt",
    )
    .argument("<address>", "the agent, as type/key")
    .option("--dry-run", "only show the steps: store nothing, send nothing")
    .option(
      "--from-seq <n>",
      "start from the initial state with the message at this inbox sequence (default 1)",
      wholeNumber("--from-seq", 1),
    )
    .option("--limit <n>", "how many of the last steps to show", wholeNumber("--limit", 0), 1000)
    .option("--json", "print the worker's JSON reply")
    .option(
      "--timeout <ms>",
      "how long to wait for the replay",
      wholeNumber("--timeout", 1),
      30_000,
    )
    .action(async (address: string, opts: object, cmd: Command) => {
      const { replay } = await import("./commands/replay.js");
      setExit(await replay(address, { ...cmd.optsWithGlobals(), ...opts }, io));
    });

  cli
    .command("quarantine")
    .description("quarantine an agent: its messages are held, in order, until release")
    .argument("<address>", "the agent, as type/key")
    .requiredOption("--reason <text>", "why (shown by troupe quarantined)")
    .option("--json", "print the coordinator's raw JSON reply")
    .option("--timeout <ms>", "how long to wait", wholeNumber("--timeout", 1), 10_000)
    .action(async (address: string, opts: object, cmd: Command) => {
      const { quarantine } = await import("./commands/quarantine.js");
      setExit(await quarantine(address, { ...cmd.optsWithGlobals(), ...opts }, io));
    });

  cli
    .command("release")
    .description("release a quarantined agent: its held messages first, in order, then new ones")
    .argument(
      "<address>",
      "the agent, as type/key (or a sender quarantined for bad frames: ~client-id, #endpoint)",
    )
    .option("--json", "print the coordinator's raw JSON reply")
    .option("--timeout <ms>", "how long to wait", wholeNumber("--timeout", 1), 10_000)
    .action(async (address: string, opts: object, cmd: Command) => {
      const { release } = await import("./commands/quarantine.js");
      setExit(await release(address, { ...cmd.optsWithGlobals(), ...opts }, io));
    });

  cli
    .command("quarantined")
    .description("list quarantined agents: reason, by whom, since when, messages parked")
    .option("--json", "print the coordinator's raw JSON reply")
    .option("--timeout <ms>", "how long to wait", wholeNumber("--timeout", 1), 10_000)
    .action(async (opts: object, cmd: Command) => {
      const { quarantined } = await import("./commands/quarantine.js");
      setExit(await quarantined({ ...cmd.optsWithGlobals(), ...opts }, io));
    });

  cli
    .command("parked")
    .description(
      "list the last frames workers refused and parked (unknown agent, undecodable, not sealed with the right key, …), newest last",
    )
    .option(
      "--limit <n>",
      "how many of the last to list, at most 1000",
      wholeNumber("--limit", 1, 1000),
      20,
    )
    .option("--json", "print them as one JSON array")
    .option(
      "--timeout <ms>",
      "how long to wait for the parked stream",
      wholeNumber("--timeout", 1),
      10_000,
    )
    .addHelpText(
      "after",
      [
        "",
        "Shows each frame's envelope (when, code, to, from, kind, message id, inbox sequence,",
        "reason), not its payload: it may be sealed or large. The frames themselves are in the",
        "stream TROUPE_<NAMESPACE>_PARKED (kept 30 days): read them with NATS tooling, e.g.",
        "`nats stream view`; `troupe replay <type/key> --dry-run` shows an agent's inbox history.",
      ].join("\n"),
    )
    .action(async (opts: object, cmd: Command) => {
      const { parked } = await import("./commands/parked.js");
      setExit(await parked({ ...cmd.optsWithGlobals(), ...opts }, io));
    });

  cli
    .command("dev")
    .description(
      "run a local cluster (nats-server, coordinator, workers) and the demo, until Ctrl-C",
    )
    .argument("[goal...]", "the goal the demo's planner plans")
    .option("--agents <module...>", "agent modules for the workers (default: the demo's agents)")
    .option("--workers <n>", "how many workers", wholeNumber("--workers", 1, 16), 2)
    .option("--once", "run the demo, then stop everything and exit")
    .option("--no-demo", "start the cluster without running the demo")
    .option(
      "--port <port>",
      "NATS client port (default 4222 if free; 0 = any free port)",
      wholeNumber("--port", 0, 65_535),
    )
    .option("--data-dir <dir>", "NATS data, logs and state (default <repo>/.troupe/dev)")
    .option("--reset", "delete the dev cluster's NATS data first")
    .option("--shards <n>", "shard count of a new namespace", wholeNumber("--shards", 1, 4096))
    .addOption(
      new Option("--ready-timeout <ms>", "how long to wait for the cluster to be ready")
        .argParser(wholeNumber("--ready-timeout", 1))
        .default(60_000),
    )
    .option("--verbose", "also print the processes' logs, each line prefixed with its name")
    .action(async (goal: string[], opts: object, cmd: Command) => {
      const { dev } = await import("./commands/dev.js");
      setExit(await dev(goal, { ...cmd.optsWithGlobals(), ...opts }, io));
    });

  return cli;
}

/** Runs `troupe <argv>` and resolves with the exit code. */
export async function run(argv: readonly string[], io: Io): Promise<number> {
  let exitCode: number = ExitCode.OK;
  const cli = program(io, (code) => {
    exitCode = code;
  });
  try {
    if (argv.length === 0) {
      cli.outputHelp({ error: true });
      return ExitCode.USAGE;
    }
    await cli.parseAsync([...argv], { from: "user" });
    return exitCode;
  } catch (e) {
    if (e instanceof CommanderError) {
      // --help and --version end here too, with exit code 0; commander printed the rest
      return e.exitCode === 0 ? ExitCode.OK : ExitCode.USAGE;
    }
    if (e instanceof CliError) {
      writeLine(io.stderr, `troupe: ${e.message}`);
      return e.exitCode;
    }
    writeLine(
      io.stderr,
      `troupe: unexpected error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`,
    );
    return ExitCode.FAILED;
  }
}
