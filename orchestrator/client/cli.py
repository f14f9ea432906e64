"""The ``wf`` command line (SPEC §6): a thin layer over :class:`orchestrator.client.Client`.

Each command calls one client method and either prints the result as JSON (``--json``) or formats
it with :mod:`orchestrator.tables`. Exit codes: 0 ok; 1 the run did not end ``completed``
(``--wait``, ``wait``) or the daemon answered an error; 2 usage error; 3 daemon unreachable.

The socket is ``--socket``, else ``$WF_SOCKET``, else ``daemon.socket`` of ``--config`` (or of
``./config.toml`` when it exists), else ``./wf.sock``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final, NoReturn

import orjson

from orchestrator import config
from orchestrator.client import tables
from orchestrator.client.client import Client, DaemonUnreachable, RemoteError
from runtime import durations

__all__ = ["build_parser", "main", "run"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3

JSONDict = dict[str, Any]
Handler = Callable[[Client, argparse.Namespace], Awaitable[int]]


class UsageError(Exception):
    """A bad flag value found after argparse (exit 2)."""


# --- argument types ------------------------------------------------------------------------------


def _duration(text: str) -> float:
    try:
        return durations.to_seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _json_arg(flag: str, text: str | None) -> Any:
    """Parse ``JSON`` or ``@file`` (``@-`` reads stdin) given to ``flag``."""
    if text is None:
        return None
    source = text
    if text.startswith("@"):
        name = text[1:]
        try:
            source = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"{flag}: cannot read {name!r}: {exc.strerror or exc}") from exc
    try:
        return orjson.loads(source)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"{flag}: invalid JSON ({exc})") from exc


# --- output --------------------------------------------------------------------------------------


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, default=repr).decode() + "\n")
    sys.stdout.flush()


def _emit(args: argparse.Namespace, value: Any, human: Callable[[Any], str]) -> None:
    if args.json:
        _print_json(value)
    else:
        print(human(value), flush=True)


def _run_exit(run: JSONDict) -> int:
    return EXIT_OK if run.get("status") == "completed" else EXIT_FAILED


# --- command handlers ----------------------------------------------------------------------------


async def _submit(c: Client, args: argparse.Namespace) -> int:
    run = await c.submit(
        args.workflow,
        args.input_value,
        run_id=args.run_id,
        idempotency_key=args.idempotency_key,
        tags=args.tag or (),
        delay=args.delay,
        priority=args.priority,
    )
    if not args.wait:
        _emit(args, run, tables.format_run)
        return EXIT_OK
    if not args.json:
        print(f"submitted {run.get('run_id')}, waiting...", file=sys.stderr, flush=True)
    run = await c.wait(run["run_id"])
    _emit(args, run, tables.format_run)
    return _run_exit(run)


async def _runs(c: Client, args: argparse.Namespace) -> int:
    result = await c.list(
        status=args.status, workflow_id=args.workflow, tag=args.tag, limit=args.limit
    )
    _emit(args, result, lambda r: tables.format_runs(r.get("runs", [])))
    return EXIT_OK


async def _show(c: Client, args: argparse.Namespace) -> int:
    _emit(args, await c.get(args.run), tables.format_run_detail)
    return EXIT_OK


async def _wait(c: Client, args: argparse.Namespace) -> int:
    run = await c.wait(args.run, timeout=args.timeout)
    _emit(args, run, tables.format_run)
    return _run_exit(run)


async def _cancel(c: Client, args: argparse.Namespace) -> int:
    run = await c.cancel(args.run, compensate=args.compensate, reason=args.reason)
    _emit(args, run, tables.format_run)
    return EXIT_OK


async def _pause(c: Client, args: argparse.Namespace) -> int:
    _emit(args, await c.pause(args.run), tables.format_run)
    return EXIT_OK


async def _resume(c: Client, args: argparse.Namespace) -> int:
    _emit(args, await c.resume(args.run), tables.format_run)
    return EXIT_OK


async def _retry(c: Client, args: argparse.Namespace) -> int:
    _emit(args, await c.retry(args.run, mode=args.mode), tables.format_run)
    return EXIT_OK


async def _replay(c: Client, args: argparse.Namespace) -> int:
    _emit(args, await c.replay(args.run), tables.format_result)
    return EXIT_OK


async def _event_send(c: Client, args: argparse.Namespace) -> int:
    result = await c.send_event(args.type, args.payload_value, event_id=args.id)
    _emit(args, result, tables.format_result)
    return EXIT_OK


async def _signal(c: Client, args: argparse.Namespace) -> int:
    _emit(args, await c.signal(args.run, args.name, args.payload_value), tables.format_result)
    return EXIT_OK


async def _token_complete(c: Client, args: argparse.Namespace) -> int:
    _emit(args, await c.complete_token(args.token, args.payload_value), tables.format_result)
    return EXIT_OK


async def _workflows(c: Client, args: argparse.Namespace) -> int:
    result = await c.workflows()
    _emit(args, result, lambda r: tables.format_list(r.get("workflows", []), "no workflows"))
    return EXIT_OK


async def _schedules(c: Client, args: argparse.Namespace) -> int:
    result = await c.schedules()
    _emit(args, result, lambda r: tables.format_list(r.get("schedules", []), "no schedules"))
    return EXIT_OK


async def _stats(c: Client, args: argparse.Namespace) -> int:
    _emit(args, await c.stats(), tables.format_result)
    return EXIT_OK


async def _tail(c: Client, args: argparse.Namespace) -> int:
    async for record in c.tail(run_id=args.run, workflow_id=args.workflow, level=args.level):
        if args.json:
            _print_json(record)
        elif record.get("type") == "lagged":
            print(tables.format_log_record(record), file=sys.stderr, flush=True)
        else:
            print(tables.format_log_record(record), flush=True)
    return EXIT_OK


async def _watch(c: Client, args: argparse.Namespace) -> int:
    async for change in c.watch(args.run):
        if args.json:
            _print_json(change)
        else:
            print(tables.format_log_record(change), flush=True)
    return EXIT_OK


async def _stream(c: Client, args: argparse.Namespace) -> int:
    ends_with_newline = True
    async for chunk in c.stream(args.run, args.stream, follow=args.follow):
        if args.json:
            _print_json(chunk)
            continue
        text = _chunk_text(chunk)
        if text is None:
            continue
        sys.stdout.write(text)
        sys.stdout.flush()
        if text:
            ends_with_newline = text.endswith("\n")
    if not args.json and not ends_with_newline:
        sys.stdout.write("\n")
    return EXIT_OK


def _chunk_text(chunk: JSONDict) -> str | None:
    value = chunk.get("chunk")
    encoding = chunk.get("encoding")
    if value is None:
        return None
    if encoding == "text" and isinstance(value, str):
        return value
    if encoding in ("bytes", "base64") and isinstance(value, str):
        sys.stdout.flush()
        sys.stdout.buffer.write(base64.b64decode(value))
        sys.stdout.buffer.flush()
        return ""
    return orjson.dumps(value).decode() + "\n"


# --- parser --------------------------------------------------------------------------------------


def _common_flags(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--socket", default=default, help="daemon socket (default: $WF_SOCKET, then config)"
    )
    parser.add_argument("--config", default=default, help="config file (default: ./config.toml)")
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="print the method's result as JSON",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wf", description="Durable workflow engine CLI.")
    _common_flags(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Handler | None, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _common_flags(p, suppress=True)
        p.set_defaults(handler=handler)
        return p

    command("daemon", None, "run the daemon in the foreground")

    p = command("submit", _submit, "start a run")
    p.add_argument("workflow", metavar="WF")
    p.add_argument("--input", default="{}", help="JSON input or @file (default: {})")
    p.add_argument("--wait", action="store_true", help="wait for the run to end")
    p.add_argument("--idempotency-key", metavar="K")
    p.add_argument("--tag", action="append", metavar="T", help="tag (repeatable)")
    p.add_argument("--delay", type=_duration, metavar="D", help="start after D, e.g. 10s")
    p.add_argument("--priority", type=int, default=0, metavar="P")
    p.add_argument("--run-id", metavar="R")

    p = command("runs", _runs, "list runs")
    p.add_argument("--status", metavar="S")
    p.add_argument("--workflow", metavar="W")
    p.add_argument("--tag", metavar="T")
    p.add_argument("--limit", type=int, default=100, metavar="N")

    command("show", _show, "show a run with steps, waitpoints, metadata").add_argument(
        "run", metavar="RUN"
    )
    p = command("wait", _wait, "wait for a run to end")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--timeout", type=_duration, metavar="D")

    p = command("cancel", _cancel, "cancel a run")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--no-compensate", dest="compensate", action="store_false")
    p.add_argument("--reason", metavar="R")

    command("pause", _pause, "pause a run").add_argument("run", metavar="RUN")
    command("resume", _resume, "resume a paused run").add_argument("run", metavar="RUN")
    p = command("retry", _retry, "retry a failed run")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--mode", choices=("resume", "retrigger"), default="resume")
    p = command("replay", _replay, "replay a run against its journal")
    p.add_argument("run", metavar="RUN")

    event = command("event", None, "events")
    event_sub = event.add_subparsers(dest="event_command", required=True, metavar="COMMAND")
    p = event_sub.add_parser("send", help="send an event")
    _common_flags(p, suppress=True)
    p.set_defaults(handler=_event_send)
    p.add_argument("type", metavar="TYPE")
    p.add_argument("--payload", required=True, help="JSON payload or @file")
    p.add_argument("--id", metavar="ID", help="event id (re-sending it is a no-op)")

    p = command("signal", _signal, "signal a run")
    p.add_argument("run", metavar="RUN")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--payload", required=True, help="JSON payload or @file")

    token = command("token", None, "tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    p = token_sub.add_parser("complete", help="complete a token")
    _common_flags(p, suppress=True)
    p.set_defaults(handler=_token_complete)
    p.add_argument("token", metavar="TOKEN")
    p.add_argument("--payload", required=True, help="JSON payload or @file")

    p = command("tail", _tail, "follow the daemon's log")
    p.add_argument("--run", metavar="R")
    p.add_argument("--workflow", metavar="W")
    p.add_argument("--level", choices=("debug", "info", "warning", "error"))

    command("watch", _watch, "follow a run's state changes").add_argument("run", metavar="RUN")

    p = command("stream", _stream, "print a run's stream")
    p.add_argument("run", metavar="RUN")
    p.add_argument("stream", metavar="STREAM")
    p.add_argument("--follow", action="store_true", help="keep printing live chunks")

    command("workflows", _workflows, "list registered workflows")
    command("schedules", _schedules, "list schedules")
    command("stats", _stats, "daemon counters")
    return parser


# --- entry point ---------------------------------------------------------------------------------


def resolve_socket(args: argparse.Namespace) -> Path:
    """``--socket``, ``$WF_SOCKET``, the config's ``daemon.socket``, or ``./wf.sock``."""
    if args.socket:
        return Path(args.socket)
    env = os.environ.get("WF_SOCKET")
    if env:
        return Path(env)
    config_path = args.config
    if config_path is None and Path("config.toml").is_file():
        config_path = "config.toml"
    if config_path is not None:
        try:
            return config.load_config(config_path).daemon.socket
        except config.ConfigError as exc:
            raise UsageError(str(exc)) from exc
    return Path("wf.sock")


def _run_daemon(args: argparse.Namespace) -> int:
    # Imported here: the daemon pulls in storage and the runtime, which the client commands
    # never need.
    daemon = importlib.import_module("orchestrator.daemon.daemon")
    run_daemon: Callable[[str | None], int] = daemon.run_daemon
    return run_daemon(args.config)


async def _call(path: Path, handler: Handler, args: argparse.Namespace) -> int:
    async with Client.connect(path) as client:
        return await handler(client, args)


def _fail(code: int, message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    for name, default in (("socket", None), ("config", None), ("json", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    if args.command == "daemon":
        return _run_daemon(args)
    try:
        if hasattr(args, "input"):
            args.input_value = _json_arg("--input", args.input)
        if hasattr(args, "payload"):
            args.payload_value = _json_arg("--payload", args.payload)
        path = resolve_socket(args)
    except UsageError as exc:
        return _fail(EXIT_USAGE, str(exc))
    try:
        return asyncio.run(_call(path, args.handler, args))
    except DaemonUnreachable as exc:
        return _fail(EXIT_UNREACHABLE, str(exc))
    except RemoteError as exc:
        return _fail(EXIT_FAILED, f"{exc.code}: {exc.message}")
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout closed early (`wf tail | head`): not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point: run and exit with the command's code."""
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
