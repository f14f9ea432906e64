"""The fsync audit: read an ``strace -f -tt -yy -xx`` log of a daemon and check that nothing was
acknowledged before the WAL holding it was fdatasynced (SPEC §10, power loss).

``kill -9`` keeps the page cache, so crash tests cannot see an ack sent before ``fsync``; the
syscall trace can. Every acknowledged fact carries a *needle* (a fixed-width string, see
``NEEDLE``) that the audit finds in three places:

- in the WAL: each ``pwrite64`` of a frame page is searched for needles. SQLite writes a frame as
  a 24-byte header then the page; a header whose "database size after commit" field is non-zero
  marks the transaction's commit frame. Needles of a transaction become *committed* when its
  commit frame is written, and *durable* when an ``fdatasync``/``fsync`` of the WAL that began
  after that write has returned.
- in replies on the daemon's socket (per connection, matched to their requests by id): a
  ``submit`` acknowledges its ``run_id``, ``send_event`` its ``event_id``, ``signal`` and
  ``complete_token`` the needles of their payload, a ``wait`` that returns a completed run the
  needles of its output. A reply counts from the syscall that carries its first byte.
- in side effects: a write to ``side_effect_path`` names a step that is starting, which
  acknowledges the results of the steps before it (``implies`` says which).

An ack is early unless every needle it acknowledges was durable before the ack's syscall began.
The order is strace's line order: a syscall's exit line is printed before the thread can go on,
and an entry line before the syscall runs, so "durable before" is never a timing guess. The
audit also reports whether every commit was followed by a WAL sync before the next frame write:
that is how a connection at ``synchronous = FULL`` behaves in WAL mode, and ``NORMAL`` does not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

NEEDLE = re.compile(rb"fz[0-9a-f]{8}[A-Z0-9]{2}")
STRACE_SYSCALLS = (
    "pwrite64,write,writev,sendto,sendmsg,read,recvfrom,recvmsg,fsync,fdatasync"
)
WAL_FRAME_HEADER = 24

_LINE = re.compile(r"^(\d+) +[\d:.]+ (.*)$")
_UNFINISHED = re.compile(r"^(\w+)\((.*) <unfinished \.\.\.>$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_FULL = re.compile(r"^(\w+)\((.*)$")
_RET = re.compile(r"\) += (-?\d+)(?: [A-Z]+ .*)?$")
_FD = re.compile(r"^(\d+)<((?:->|<[^<>]*>|[^<>])*)>")  # -yy: "/dev/null<char 1:3>"
_STRING = re.compile(r'"((?:\\x[0-9a-f]{2})*)"(\.\.\.)?')
_HEX = re.compile(r"(?:\\x[0-9a-f]{2})+")
_INODE = re.compile(r"^UNIX-STREAM:\[(\d+)")

_WRITES = frozenset({"write", "sendto", "pwrite64"})
_READS = frozenset({"read", "recvfrom"})
_SYNCS = frozenset({"fsync", "fdatasync"})
_VECTORED = frozenset({"writev", "sendmsg", "recvmsg"})


def _unhex(text: str) -> str:
    return _HEX.sub(lambda m: bytes.fromhex(m.group(0).replace("\\x", "")).decode("latin-1"),
                    text)


def needles_in(value: Any) -> list[str]:
    """The needles in a JSON value (in the order they appear)."""
    raw = json.dumps(value).encode()
    return [m.decode() for m in NEEDLE.findall(raw)]


def acknowledged(method: str, params: dict[str, Any], result: Any) -> list[str] | None:
    """What a successful reply to ``method`` acknowledges as durable; None for reads."""
    if not isinstance(result, dict):
        return None
    if method == "submit":
        return [str(result.get("run_id"))]
    if method == "send_event":
        return [str(result.get("event_id"))]
    if method in ("signal", "complete_token"):
        return needles_in(params.get("payload"))
    if method == "wait" and result.get("status") == "completed":
        return needles_in(result.get("output"))
    return None


@dataclass(frozen=True, slots=True)
class Ack:
    kind: str  # a method name, or "step" for a side effect
    needles: tuple[str, ...]
    line: int  # where the ack left: the entry line of its syscall


@dataclass(frozen=True, slots=True)
class Violation:
    ack: Ack
    needle: str
    reason: str

    def __str__(self) -> str:
        return f"{self.ack.kind} ack at trace line {self.ack.line}: {self.needle} {self.reason}"


@dataclass
class _Call:
    tid: int
    name: str
    args: str
    entry_line: int
    ret: int | None = None


@dataclass
class _Conn:
    inbound: bytearray = field(default_factory=bytearray)
    outbound: bytearray = field(default_factory=bytearray)
    out_start: int | None = None  # entry line of the syscall carrying the pending line's start
    requests: dict[Any, tuple[str, dict[str, Any]]] = field(default_factory=dict)


@dataclass
class AuditReport:
    lines: int = 0
    frames: int = 0
    commits: int = 0
    wal_syncs: int = 0
    unsynced_commits: int = 0  # commits followed by another frame (or the end) without a sync
    replies: int = 0
    acks: list[Ack] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # the trace cannot be audited as is

    def ack_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for ack in self.acks:
            counts[ack.kind] = counts.get(ack.kind, 0) + 1
        return counts

    @property
    def synchronous_full(self) -> bool:
        return self.commits > 0 and self.unsynced_commits == 0

    def summary(self) -> str:
        return (f"{self.lines} trace lines, {self.frames} WAL frames, {self.commits} commits, "
                f"{self.wal_syncs} WAL syncs, {self.unsynced_commits} unsynced commits, "
                f"{self.replies} replies, {len(self.acks)} acks {self.ack_counts()}, "
                f"{len(self.violations)} early, {len(self.problems)} problems")


class Auditor:
    """Feed strace lines in order (``feed``), then ``finish()`` for the report."""

    def __init__(self, wal_path: str, socket_path: str, *, side_effect_path: str = "/dev/null",
                 implies: Callable[[str], list[str]] = lambda needle: []) -> None:
        self.wal_path = wal_path
        self.socket_tag = f',"{socket_path}"]'
        self.side_effect_path = side_effect_path
        self.implies = implies
        self.report = AuditReport()
        self._pending: dict[int, _Call] = {}  # unfinished syscalls by thread
        self._conns: dict[str, _Conn] = {}
        self._txn: set[str] = set()  # needles written since the last commit frame
        self._commit_next_page = False
        self._unsynced_commit = False
        self._committed: set[str] = set()  # committed, not yet covered by a WAL sync
        self._syncing: dict[int, set[str]] = {}  # by thread: what an in-flight sync covers
        self._first_write: dict[str, int] = {}
        self._durable: dict[str, int] = {}  # needle -> exit line of the sync that covered it

    # --- lines -> syscalls -----------------------------------------------------------------------

    def feed(self, raw: str) -> None:
        self.report.lines += 1
        n = self.report.lines
        m = _LINE.match(raw.rstrip("\n"))
        if m is None:
            return
        tid, rest = int(m.group(1)), m.group(2)
        if (u := _UNFINISHED.match(rest)) is not None:
            call = _Call(tid, u.group(1), u.group(2), n)
            self._pending[tid] = call
            self._on_entry(call)
            return
        if (r := _RESUMED.match(rest)) is not None:
            begun = self._pending.pop(tid, None)
            if begun is None or begun.name != r.group(1):
                return  # resumed a syscall begun before the trace started
            begun.args += r.group(2)
            self._exit(begun, n)
            return
        if (f := _FULL.match(rest)) is not None:
            call = _Call(tid, f.group(1), f.group(2), n)
            self._on_entry(call)
            self._exit(call, n)

    def _exit(self, call: _Call, line: int) -> None:
        ret = _RET.search(call.args)
        call.ret = int(ret.group(1)) if ret else None
        self._on_exit(call, line)

    @staticmethod
    def _fd(call: _Call) -> tuple[str, str] | None:
        """(target, remaining args) of a call whose first argument is a decorated fd."""
        m = _FD.match(call.args)
        if m is None:
            return None
        return _unhex(m.group(2)).partition("<")[0], call.args[m.end():]

    def _buffer(self, args: str, call: _Call) -> bytes | None:
        m = _STRING.search(args)
        if m is None:
            return None
        if m.group(2):
            self.report.problems.append(
                f"line {call.entry_line}: {call.name} buffer truncated (raise strace -s)")
        return bytes.fromhex(m.group(1).replace("\\x", ""))

    # --- syscalls -> facts -----------------------------------------------------------------------

    def _on_entry(self, call: _Call) -> None:
        if call.name not in _SYNCS:
            return
        fd = self._fd(call)
        if fd is not None and fd[0] == self.wal_path:
            # A sync covers what was written before it began, not what is written meanwhile.
            self._syncing[call.tid] = set(self._committed)
            self._unsynced_commit = False

    def _on_exit(self, call: _Call, line: int) -> None:
        fd = self._fd(call)
        if fd is None:
            return
        target, args = fd
        if call.name in _SYNCS:
            covered = self._syncing.pop(call.tid, None)
            if covered is None:
                return
            if call.ret != 0:
                self.report.problems.append(f"line {line}: WAL sync failed ({call.ret})")
                return
            self.report.wal_syncs += 1
            for needle in covered:
                self._durable.setdefault(needle, line)
            self._committed -= covered
        elif target == self.wal_path and call.name == "pwrite64":
            self._wal_write(call, args, line)
        elif target == self.side_effect_path and call.name == "write":
            data = self._buffer(args, call) or b""
            for m in NEEDLE.findall(data):
                implied = self.implies(m.decode())
                if implied:
                    self.report.acks.append(Ack("step", tuple(implied), call.entry_line))
        elif self.socket_tag in target:
            if call.name in _VECTORED:
                self.report.problems.append(f"line {line}: {call.name} on a client socket is "
                                            "not audited (extend the parser)")
            elif call.name in _READS or call.name in _WRITES:
                self._socket_io(call, target, args)

    def _wal_write(self, call: _Call, args: str, line: int) -> None:
        data = self._buffer(args, call)
        if data is None or call.ret != len(data):
            self.report.problems.append(f"line {line}: short or unreadable WAL write")
            return
        if len(data) == WAL_FRAME_HEADER:
            if self._unsynced_commit:  # the writer moved on without syncing the last commit
                self.report.unsynced_commits += 1
                self._unsynced_commit = False
            self.report.frames += 1
            self._commit_next_page = int.from_bytes(data[4:8], "big") != 0
            return
        for m in NEEDLE.findall(data):
            needle = m.decode()
            self._first_write.setdefault(needle, line)
            self._txn.add(needle)
        if self._commit_next_page:
            self._commit_next_page = False
            self.report.commits += 1
            self._unsynced_commit = True
            self._committed |= self._txn
            self._txn = set()

    def _socket_io(self, call: _Call, target: str, args: str) -> None:
        if call.ret is None or call.ret <= 0:
            return
        inode = _INODE.match(target)
        conn = self._conns.setdefault(inode.group(1) if inode else target, _Conn())
        data = (self._buffer(args, call) or b"")[: call.ret]
        if call.name in _READS:
            conn.inbound += data
            while (end := conn.inbound.find(b"\n")) >= 0:
                self._request(conn, bytes(conn.inbound[:end]))
                del conn.inbound[: end + 1]
            return
        if not conn.outbound:
            conn.out_start = call.entry_line
        conn.outbound += data
        while (end := conn.outbound.find(b"\n")) >= 0:
            assert conn.out_start is not None
            self._reply(conn, bytes(conn.outbound[:end]), conn.out_start)
            del conn.outbound[: end + 1]
            conn.out_start = call.entry_line  # a following line starts in this syscall

    def _request(self, conn: _Conn, line: bytes) -> None:
        try:
            req = json.loads(line)
        except ValueError:
            return
        if isinstance(req, dict) and isinstance(req.get("params", {}), dict):
            conn.requests[req.get("id")] = (str(req.get("method")), req.get("params") or {})

    def _reply(self, conn: _Conn, line: bytes, start: int) -> None:
        try:
            reply = json.loads(line)
        except ValueError:
            self.report.problems.append(f"line {start}: unparsable reply {line[:80]!r}")
            return
        if not isinstance(reply, dict) or "result" not in reply or "event" in reply:
            return  # errors and stream events acknowledge nothing
        request = conn.requests.pop(reply.get("id"), None)
        if request is None:
            self.report.problems.append(f"line {start}: reply to an unseen request {line[:80]!r}")
            return
        self.report.replies += 1
        needles = acknowledged(request[0], request[1], reply["result"])
        if needles is None:
            return
        if not needles or not all(NEEDLE.fullmatch(n.encode()) for n in needles):
            self.report.problems.append(
                f"line {start}: {request[0]} acknowledges {needles!r}: no needle to audit")
            return
        self.report.acks.append(Ack(request[0], tuple(needles), start))

    # --- verdict ---------------------------------------------------------------------------------

    def finish(self) -> AuditReport:
        if self._unsynced_commit:
            self.report.unsynced_commits += 1
            self._unsynced_commit = False
        for ack in self.report.acks:
            for needle in ack.needles:
                durable = self._durable.get(needle)
                if durable is not None and durable < ack.line:
                    continue
                written = self._first_write.get(needle)
                if written is None or written > ack.line:
                    reason = "was not in any WAL write before the ack"
                else:
                    reason = (f"was written to the WAL at line {written} but not fdatasynced "
                              "before the ack" + (f" (synced at line {durable})" if durable
                                                  else ""))
                self.report.violations.append(Violation(ack, needle, reason))
        return self.report


def audit(lines: Iterable[str], wal_path: str, socket_path: str, *,
          side_effect_path: str = "/dev/null",
          implies: Callable[[str], list[str]] = lambda needle: []) -> AuditReport:
    auditor = Auditor(wal_path, socket_path, side_effect_path=side_effect_path, implies=implies)
    for line in lines:
        auditor.feed(line)
    return auditor.finish()
