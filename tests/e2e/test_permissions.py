"""Who may talk to the daemon: the socket's mode and the SO_PEERCRED uid check (SPEC §6).

A client runs as ``nobody`` in a subprocess (``setuid`` needs root, so these tests skip
otherwise). The daemon lives in its own directory under /tmp made traversable for ``nobody``
(pytest's own base directory is private to root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.e2e.conftest import Daemon

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="running a client as another uid needs root"),
]

# Connects, sends one `stats` request, prints {"outcome": ...} as JSON: the errno name when
# connect fails, the reply's error code, or "ok".
CLIENT = r"""
import errno, json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(json.dumps({"outcome": errno.errorcode.get(exc.errno, str(exc))}))
    sys.exit(0)
try:
    s.sendall(b'{"id": 1, "method": "stats", "params": {}}\n')
except OSError:  # the daemon may refuse (write and close) before our request goes out
    pass
f = s.makefile("rb")
line = f.readline()
reply = json.loads(line) if line else {}
if "error" in reply:
    try:
        closed = f.readline() == b""
    except ConnectionResetError:  # closed with our request unread: a reset, also a close
        closed = True
    print(json.dumps({"outcome": reply["error"]["code"], "error": reply["error"],
                      "closed": closed}))
else:
    print(json.dumps({"outcome": "ok" if "result" in reply else "closed"}))
"""


@pytest.fixture
def nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user")


@pytest.fixture
def system_python() -> str:
    """An interpreter ``nobody`` may execute (the venv's may live under /root)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("no system python3 for the unprivileged client")


@pytest.fixture
def open_root() -> Iterator[Path]:
    """Requested before ``make_daemon`` so it is removed after the daemon stopped."""
    root = Path(tempfile.mkdtemp(prefix="wf-e2e-"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def run_as(python: str, user: pwd.struct_passwd, socket_path: Path) -> dict[str, Any]:
    def drop() -> None:
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    proc = subprocess.run(
        [python, "-I", "-S", "-c", CLIENT, str(socket_path)],
        capture_output=True, text=True, timeout=30, preexec_fn=drop, cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = orjson.loads(proc.stdout)
    return result


def test_socket_mode_keeps_other_users_out(
    open_root: Path, nobody: pwd.struct_passwd,
    system_python: str,
    make_daemon: Callable[..., Daemon]
) -> None:
    d = make_daemon(root=open_root)
    assert run_as(system_python, nobody, d.socket)["outcome"] in ("EACCES", "PERMISSION_DENIED")


def test_peer_uid_not_allowed_is_refused(
    open_root: Path, nobody: pwd.struct_passwd,
    system_python: str,
    make_daemon: Callable[..., Daemon]
) -> None:
    d = make_daemon(root=open_root, daemon={"allowed_uids": []})
    os.chmod(d.socket, 0o666)  # get past the file mode to reach the SO_PEERCRED check
    result = run_as(system_python, nobody, d.socket)
    assert result["outcome"] == "PERMISSION_DENIED"
    assert result["error"]["data"] == {"uid": nobody.pw_uid}
    assert result["closed"] is True
    assert any(r["event"] == "socket.peer_refused" for r in d.log_records())


def test_allowed_uid_is_served(
    open_root: Path, nobody: pwd.struct_passwd,
    system_python: str,
    make_daemon: Callable[..., Daemon]
) -> None:
    d = make_daemon(root=open_root, daemon={"allowed_uids": [nobody.pw_uid]})
    os.chmod(d.socket, 0o666)
    assert run_as(system_python, nobody, d.socket)["outcome"] == "ok"
