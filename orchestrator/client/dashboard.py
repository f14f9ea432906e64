"""``wf dashboard``: print the dashboard's login URL (it carries the token) and open it."""

from __future__ import annotations

import contextlib
import sys
import webbrowser
from pathlib import Path
from urllib.parse import quote

from orchestrator import config
from orchestrator.http.settings import token_path

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


def login_url(cfg: config.Config, token: str) -> str:
    host = cfg.http.host or "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):  # listening everywhere: loopback reaches it from here
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{cfg.http.port}/login?token={quote(token, safe='')}"


def run_dashboard(config_path: str | None, *, open_browser: bool) -> int:
    path = config_path or ("config.toml" if Path("config.toml").is_file() else None)
    try:
        cfg = config.load_config(path) if path else config.Config.default(Path.cwd())
    except config.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not cfg.http.enabled:
        print("error: HTTP is off (http.listen is empty in the config)", file=sys.stderr)
        return EXIT_USAGE
    token = cfg.http.token
    if not token:
        file = token_path(cfg)
        try:
            token = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            print(f"error: cannot read the HTTP token from {file} ({exc.strerror}); the "
                  "daemon writes it at its first start: is `wf daemon` running?",
                  file=sys.stderr)
            return EXIT_UNREACHABLE
    url = login_url(cfg, token)
    print(url, flush=True)
    if open_browser:
        # No browser here (a server): the printed URL is the way in.
        with contextlib.suppress(webbrowser.Error):
            webbrowser.get().open(url)
    return EXIT_OK
