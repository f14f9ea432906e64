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
import dataclasses
import importlib
import os
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Final, NoReturn

import orjson

from orchestrator import config
from orchestrator.api import protocol, service
from orchestrator.client import tables
from orchestrator.client.client import Client, DaemonUnreachable, RemoteError
from orchestrator.client.dashboard import run_dashboard
from runtime import durations

__all__ = ["build_parser", "main", "run"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3

JSONDict = dict[str, Any]


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


# --- commands ------------------------------------------------------------------------------------
#
# Every command is a request type of orchestrator.api.service (its ``cli`` words name it); its
# arguments come from the request's fields: required fields are positional unless they name a
# ``flag``, optional ones are flags. Only how a result is printed, and the few commands that do
# more than one call (``submit --wait``) or print streams, are written here.

_HUMAN: Final[dict[str, Callable[[Any], str]]] = {
    "submit": tables.format_run,
    "get": tables.format_run_detail,
    "list": lambda r: tables.format_runs(r.get("runs", [])),
    "wait": tables.format_run,
    "cancel": tables.format_run,
    "pause": lambda r: tables.format_run(r) if "run_id" in r else tables.format_result(r),
    "resume": lambda r: tables.format_run(r) if "run_id" in r else tables.format_result(r),
    "retry": tables.format_run,
    "fork": tables.format_run,
    "amend": tables.format_run,
    "export": lambda r: orjson.dumps(r, option=orjson.OPT_INDENT_2).decode(),
    "workflows": lambda r: tables.format_list(r.get("workflows", []), "no workflows"),
    "schedules": lambda r: tables.format_schedules(r.get("schedules", [])),
    "daemons": lambda r: tables.format_daemons(r.get("daemons", [])),
    "events": lambda r: tables.format_events(r.get("events", [])),
    "schedule_trigger": lambda r: tables.format_runs(r.get("runs", [])),
    "schedule_backfill": lambda r: tables.format_runs(r.get("runs", [])),
}
_JSON_DEFAULTS: Final = {("submit", "input"): "{}"}
_EXIT_BY_RUN: Final = frozenset({"wait"})  # exit 1 unless the run ended completed
_FILTERABLE: Final = frozenset(service.BULK_ACTIONS)  # RUN, or filters (a bulk request)
_FILTER_FLAGS: Final = ("status", "tag", "since", "until", "search")


def _request_of(cls: type[service.Request[Any]], args: argparse.Namespace) -> Any:
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]  # request types are dataclasses
        value = getattr(args, f.name)
        if _wire_type(cls, f) == "json":
            value = _json_arg(_flag_of(f), value)
        elif isinstance(value, list):
            value = tuple(value)
        values[f.name] = value
    return cls(**values)


def _bulk_or_none(cls: type[service.Request[Any]], args: argparse.Namespace) -> Any:
    """``wf cancel|pause|resume|retry`` with filters instead of a run id: the bulk request
    (a dry run first, unless ``--yes``). None when the command names a run (or, for pause and
    resume, only ``--workflow``: the workflow itself). Usage errors for neither."""
    if cls.method not in _FILTERABLE or getattr(args, "run_id", None) is not None:
        return None
    flags = {name: getattr(args, f"filter_{name}", None) for name in _FILTER_FLAGS}
    workflow = getattr(args, "filter_workflow", None) or getattr(args, "workflow_id", None)
    if not any(flags.values()) and not args.dry_run:
        if cls.method in ("pause", "resume") and workflow is not None:
            return None  # pause --workflow W: the workflow
        raise UsageError(f"{cls.method}: give a RUN, or filters "
                         "(--status --workflow --tag --since --until)")
    found = {k: v for k, v in {**flags, "workflow_id": workflow}.items() if v is not None}
    return service.Bulk(
        cls.method, found, dry_run=args.dry_run,
        mode=getattr(args, "mode", None) or "resume",
        compensate=getattr(args, "compensate", True),
        reason=getattr(args, "reason", None),
    )


async def _run_bulk(c: Client, request: service.Bulk, args: argparse.Namespace) -> int:
    if not request.dry_run and not args.yes:
        preview = await c.call(dataclasses.replace(request, dry_run=True))
        if not preview.get("eligible"):
            _emit(args, preview, lambda r: tables.format_bulk(r, request.action))
            return EXIT_OK
        question = (f"{request.action} {preview['eligible']} runs "
                    f"({preview['matched']} match {orjson.dumps(request.filter).decode()})? "
                    "[y/N] ")
        print(question, end="", file=sys.stderr, flush=True)
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            print("aborted: nothing was done", file=sys.stderr, flush=True)
            return EXIT_FAILED
    result = await c.call(request)
    _emit(args, result, lambda r: tables.format_bulk(r, request.action))
    return EXIT_OK


async def _run_request(c: Client, request: Any, args: argparse.Namespace) -> int:
    if isinstance(request, service.Bulk):
        return await _run_bulk(c, request, args)
    if isinstance(request, service.StreamRequest):
        return await _print_stream(c, request, args)
    result = await c.call(request)
    if request.method == "export" and args.out:
        Path(args.out).write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
        print(f"exported {len(result['runs'])} run(s) to {args.out}", file=sys.stderr,
              flush=True)
        return EXIT_OK
    if request.method == "submit" and args.wait:
        if not args.json:
            print(f"submitted {result.get('run_id')}, waiting...", file=sys.stderr, flush=True)
        result = await c.wait(result["run_id"])
        _emit(args, result, tables.format_run)
        return _run_exit(result)
    _emit(args, result, _HUMAN.get(request.method, tables.format_result))
    return _run_exit(result) if request.method in _EXIT_BY_RUN else EXIT_OK


async def _print_stream(c: Client, request: service.StreamRequest, args: argparse.Namespace) -> int:
    if request.method == "stream":
        return await _print_chunks(c.open_stream(request), args)
    async for record in c.open_stream(request):
        if args.json:
            _print_json(record)
        elif request.method == "changes":
            print(tables.format_change(record), flush=True)
        elif record.get("type") == "lagged":
            print(tables.format_log_record(record), file=sys.stderr, flush=True)
        else:
            print(tables.format_log_record(record), flush=True)
    return EXIT_OK


async def _print_chunks(chunks: AsyncIterator[JSONDict], args: argparse.Namespace) -> int:
    ends_with_newline = True
    async for chunk in chunks:
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


def _wire_type(cls: type[service.Request[Any]], f: dataclasses.Field[Any]) -> str:
    """The field's JSON type, as the wire schema derived it."""
    return next(p.type for p in protocol.METHODS[cls.method].params if p.name == f.name)


def _flag_of(f: dataclasses.Field[Any]) -> str:
    flag: str | None = f.metadata.get("flag")
    return flag or "--" + f.name.replace("_", "-")


def _add_field(p: argparse.ArgumentParser, cls: type[service.Request[Any]],
               f: dataclasses.Field[Any]) -> None:
    kind = _wire_type(cls, f)
    required = f.default is dataclasses.MISSING
    help_ = f.metadata.get("help") or None
    if f.metadata.get("positional") or (
        required and not f.metadata.get("flag") and cls.method in _FILTERABLE
    ):
        # Optional in the CLI: these commands take filters instead of a run id.
        p.add_argument(f.name, nargs="?", metavar=f.metadata.get("metavar") or f.name.upper(),
                       help=help_)
        return
    if cls is service.Replay and f.name == "run_id":
        # RUN, or with --check the export files to check (see _replay_check).
        p.add_argument(f.name, nargs="*", metavar="RUN|FILE", help=help_)
        return
    if required and not f.metadata.get("flag"):
        p.add_argument(f.name, metavar=f.metadata.get("metavar") or f.name.upper(), help=help_,
                       nargs="+" if kind == "str_list" else None)
        return
    flag = _flag_of(f)
    if kind == "bool":
        if f.default is True:
            p.add_argument("--no-" + flag[2:], dest=f.name, action="store_false", help=help_)
        else:
            p.add_argument(flag, dest=f.name, action="store_true", help=help_)
        return
    options: dict[str, Any] = {"dest": f.name, "help": help_}
    if kind == "str_list":
        options.update(action="append", metavar=flag[2:].upper()[:1], default=None)
    else:
        options["metavar"] = f.metadata.get("metavar") or flag[2:2 + 1].upper()
    if kind == "int":
        options["type"] = int
    elif kind == "duration":
        options["type"] = _duration
    if f.metadata.get("choices"):
        options["choices"] = f.metadata["choices"]
    if required:
        default = _JSON_DEFAULTS.get((cls.method, f.name))
        options.update(required=default is None, default=default)
    elif kind != "str_list":
        options["default"] = f.default
    p.add_argument(flag, **options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wf", description="Durable workflow engine CLI.")
    _common_flags(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, Any] = {}

    def command(words: tuple[str, ...], help: str) -> argparse.ArgumentParser:
        if len(words) == 1:
            p = sub.add_parser(words[0], help=help, description=help)
        else:
            group = groups.get(words[0])
            if group is None:
                top = sub.add_parser(words[0], help=f"{words[0]} commands")
                _common_flags(top, suppress=True)
                group = groups[words[0]] = top.add_subparsers(
                    dest=f"{words[0]}_command", required=True, metavar="COMMAND"
                )
            p = group.add_parser(words[1], help=help, description=help)
        _common_flags(p, suppress=True)
        return p

    command(("daemon",), "run the daemon in the foreground").set_defaults(request=None)
    migrate = command(("migrate",), "copy a stopped daemon's SQLite database to PostgreSQL")
    migrate.set_defaults(request=None)
    migrate.add_argument("--to", required=True, metavar="URL",
                         help="the PostgreSQL database (postgresql://...), migrated and empty")
    migrate.add_argument("--from", dest="source", metavar="PATH",
                         help="the SQLite file (default: the config's storage.path)")
    dash = command(("dashboard",), "print the dashboard's login URL and open it in a browser")
    dash.set_defaults(request=None)
    dash.add_argument("--no-open", action="store_true", help="only print the URL")
    for cls in service.REQUESTS:
        if not cls.cli:
            continue
        summary = (cls.__doc__ or cls.method).split(". ")[0].strip().rstrip(".")
        p = command(cls.cli, summary)
        p.set_defaults(request=cls)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]  # request types are dataclasses
            _add_field(p, cls, f)
        if cls is service.Submit:
            p.add_argument("--wait", action="store_true", help="wait for the run to end")
        if cls.method in _FILTERABLE:
            _add_filters(p, cls)
        if cls is service.Export:
            p.add_argument("--out", metavar="FILE", help="write the document to FILE")
        if cls is service.Replay:
            _add_replay_check(p)
    return parser


def _add_replay_check(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("offline check against the code the config imports")
    group.add_argument("--check", action="store_true",
                       help="replay export FILEs (or --db) with no daemon; exit 1 on divergence")
    group.add_argument("--db", metavar="FILE", help="check the runs of this database, read-only")
    group.add_argument("--status", dest="check_status", action="append",
                       choices=service.RUN_STATUSES, metavar="S",
                       help="with --db: runs in status S (repeatable; default running, "
                            "waiting, paused)")
    group.add_argument("--fail-fast", action="store_true", help="stop at the first failure")


def _replay_check(args: argparse.Namespace) -> int:
    """``wf replay --check``: offline, so no socket. Imported here: it loads the executor,
    SQLite and the workflow code, which the client commands never need."""
    module = importlib.import_module("orchestrator.replay_check")
    try:
        report = asyncio.run(module.check(
            list(args.run_id), db=args.db, statuses=tuple(args.check_status or ()),
            fail_fast=args.fail_fast, config_path=args.config))
    except module.CheckError as exc:
        return _fail(EXIT_USAGE, str(exc))
    _emit(args, report, module.format_report)
    return EXIT_OK if report["ok"] == report["checked"] else EXIT_FAILED


def _add_filters(p: argparse.ArgumentParser, cls: type[service.Request[Any]]) -> None:
    """``--status --workflow --tag --since --until --search`` instead of a run id, ``--dry-run``,
    ``--yes``."""
    group = p.add_argument_group("instead of RUN, every run matching")
    group.add_argument("--status", dest="filter_status", choices=service.RUN_STATUSES)
    if not any(f.name == "workflow_id" for f in dataclasses.fields(cls)):  # type: ignore[arg-type]
        group.add_argument("--workflow", dest="filter_workflow", metavar="W")
    group.add_argument("--tag", dest="filter_tag", metavar="T")
    group.add_argument("--since", dest="filter_since", metavar="TIME",
                       help="created at or after TIME (ISO-8601, epoch seconds, or D ago: 1h)")
    group.add_argument("--until", dest="filter_until", metavar="TIME",
                       help="created before TIME")
    group.add_argument("--search", dest="filter_search", metavar="TEXT",
                       help="text in the run id, input, output, error, tags or metadata")
    group.add_argument("--dry-run", action="store_true",
                       help="print how many runs match; change nothing")
    group.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")


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


def _run_migrate(args: argparse.Namespace) -> int:
    migrate = importlib.import_module("orchestrator.daemon.migrate")
    run_migrate: Callable[[str | None, str | None, str], int] = migrate.run_migrate
    return run_migrate(args.config, args.source, args.to)


async def _call(path: Path, request: Any, args: argparse.Namespace) -> int:
    async with Client.connect(path) as client:
        return await _run_request(client, request, args)


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
    if args.command == "migrate":
        return _run_migrate(args)
    if args.command == "dashboard":
        return run_dashboard(args.config, open_browser=not args.no_open)
    if args.command == "replay":
        if args.check:
            return _replay_check(args)
        if args.db or args.check_status or args.fail_fast or len(args.run_id) != 1:
            return _fail(EXIT_USAGE, "replay: give one RUN (or --check with files or --db)")
        args.run_id = args.run_id[0]
    try:
        path = resolve_socket(args)
        request = _bulk_or_none(args.request, args) or _request_of(args.request, args)
    except UsageError as exc:  # bad JSON arguments, a command with neither RUN nor filters
        return _fail(EXIT_USAGE, str(exc))
    try:
        return asyncio.run(_call(path, request, args))
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
