"""What the HTTP app needs to know, resolved from ``[http]``: the token and the Host names."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import LOOPBACK_HOSTS, Config


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """``allowed_hosts`` are Host header names without port (IPv6 without brackets);
    ``"*"`` accepts any (only for an embedding app that checks hosts itself)."""

    token: str
    allowed_hosts: frozenset[str] = frozenset(LOOPBACK_HOSTS)
    max_request_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError("HttpSettings.token must not be empty: HTTP always needs a token")

    @property
    def session_value(self) -> str:
        """The ``wf_session`` cookie: derived from the token, so the cookie never holds the
        token itself and a new token ends every session."""
        return hmac.new(self.token.encode(), b"wf_session", hashlib.sha256).hexdigest()

    @classmethod
    def from_config(cls, cfg: Config) -> HttpSettings:
        http = cfg.http
        hosts = set(http.allowed_hosts)
        if http.host is not None:
            hosts.add(http.host)
            if http.host in LOOPBACK_HOSTS:
                hosts.update(LOOPBACK_HOSTS)
        return cls(
            token=http.token or load_or_create_token(token_path(cfg)),
            allowed_hosts=frozenset(hosts),
            max_request_bytes=cfg.daemon.max_request_bytes,
        )


def token_path(cfg: Config) -> Path:
    """Where the generated token lives: ``http.token_file``, else beside the database."""
    db = cfg.storage.path
    return cfg.http.token_file or db.with_name(db.name + ".http-token")


def load_or_create_token(path: Path) -> str:
    """The token kept in ``path``, made (random, mode 0600) at first use."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = ""
    if token:
        return token
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: two daemons racing on a first start keep one token (the loser re-reads it).
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    return token
