"""API keys: stored hashed, compared in constant time, scoped, rotatable without a restart.

Two sources. ``MARGINFACE_AUTH__API_KEYS`` (plain keys in the environment, every scope: simple
deployments) and a keys file (``MARGINFACE_AUTH__KEYS_FILE``, managed with ``marginface keys``)
that holds only sha256 digests with their scopes and is re-read when it changes, so keys are
added, rotated and revoked while the service runs.

Scopes: ``read`` (verify, identify, detect, embed, list), ``write`` (create, enroll, rename,
delete), ``admin`` (batch jobs, export). They nest: ``admin`` includes ``write``, which includes
``read`` (a key made with ``--scopes admin`` is an operator's key, as users of every peer expect);
``require`` is the one place that says so.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from service.errors import ConfigError, Forbidden, Unauthorized

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "write", "admin")  # each includes the ones before it


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id (never the key) and what it may do."""

    key_id: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class _Entry:
    key_id: str
    digest: bytes
    scopes: frozenset[str]


def digest(key: str) -> bytes:
    """sha256 of a key: keys are long random tokens, so a fast hash is the right one."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class KeyRing:
    """The keys the service accepts; thread-safe; picks up keys-file changes within a second."""

    def __init__(
        self, env_keys: list[str], keys_file: Path | None, *, reload_interval_s: float = 1.0
    ) -> None:
        self._env = [
            _Entry(f"env-{i}", digest(k), frozenset(SCOPES)) for i, k in enumerate(env_keys)
        ]
        self.keys_file = keys_file
        self._file_entries: list[_Entry] = []
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._interval = reload_interval_s
        self._lock = threading.Lock()
        if keys_file is not None:
            self._reload(force=True)

    def __len__(self) -> int:
        self._reload()
        return len(self._env) + len(self._file_entries)

    def _reload(self, *, force: bool = False) -> None:
        """Re-read the keys file when its mtime or size changed (checked at most each interval)."""
        if self.keys_file is None:
            return
        now = time.monotonic()
        if not force and now - self._checked < self._interval:
            return
        with self._lock:
            self._checked = now
            try:
                st = self.keys_file.stat()
            except FileNotFoundError:
                self._file_entries, self._stamp = [], None
                return
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._stamp and not force:
                return
            try:
                self._file_entries = [
                    _Entry(e["id"], bytes.fromhex(e["sha256"]), frozenset(e["scopes"]))
                    for e in read_keys_file(self.keys_file)
                ]
            except (ValueError, KeyError, TypeError) as exc:
                if force:
                    raise ConfigError(f"the keys file {self.keys_file} is invalid: {exc}") from exc
                return  # keep the last good keys rather than lock everybody out
            self._stamp = stamp

    def authenticate(self, key: str | None) -> Principal:
        """The principal for a key; raises Unauthorized. Every entry is compared (no early exit)."""
        if not key:
            raise Unauthorized("missing API key: send it in the X-API-Key header")
        self._reload()
        given = digest(key)
        found: _Entry | None = None
        for entry in (*self._env, *self._file_entries):
            if hmac.compare_digest(given, entry.digest):
                found = entry
        if found is None:
            raise Unauthorized("the API key is not valid")
        return Principal(found.key_id, found.scopes)

    @staticmethod
    def require(principal: Principal, scope: Scope) -> None:
        """Raise Forbidden unless the principal holds the scope or one that includes it."""
        if not any(SCOPES.index(scope) <= SCOPES.index(held) for held in principal.scopes):
            raise Forbidden(
                f"this key lacks the '{scope}' scope",
                required_scope=scope,
                key_id=principal.key_id,
            )


def read_keys_file(path: Path) -> list[dict[str, Any]]:
    """The entries of a keys file ({"keys": [{"id", "sha256", "scopes", "created_at"}]})."""
    data = json.loads(path.read_text())
    entries = data["keys"]
    for e in entries:
        if not set(e["scopes"]) <= set(SCOPES) or len(bytes.fromhex(e["sha256"])) != 32:
            raise ValueError(f"bad entry {e.get('id')!r}")
    return list(entries)


def _write_keys_file(path: Path, entries: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"keys": entries}, fh, indent=2)
    tmp.replace(path)


#: the shortest key accepted from outside (a CompreFace API key is a 36-character UUID)
MIN_EXISTING_KEY_CHARS = 16


def create_key(path: Path, key_id: str, scopes: list[str], *, existing: str | None = None) -> str:
    """Add a key to the file and return it (the only time it is shown). ``existing`` keeps a
    key that clients already hold (a CompreFace API key) instead of making a new one."""
    if not set(scopes) <= set(SCOPES) or not scopes:
        raise ValueError(f"scopes must be some of {', '.join(SCOPES)}")
    entries = read_keys_file(path) if path.exists() else []
    if any(e["id"] == key_id for e in entries):
        raise ValueError(f"a key with id {key_id!r} exists; revoke it first or pick another id")
    if existing is not None:
        existing = existing.strip()
        if len(existing) < MIN_EXISTING_KEY_CHARS or not existing.isprintable():
            raise ValueError(
                f"an existing key must be at least {MIN_EXISTING_KEY_CHARS} printable characters"
            )
        if any(e["sha256"] == digest(existing).hex() for e in entries):
            raise ValueError("that key is already in the file")
    key = existing if existing is not None else "mf_" + secrets.token_urlsafe(32)
    entries.append(
        {
            "id": key_id,
            "sha256": digest(key).hex(),
            "scopes": sorted(scopes),
            "created_at": round(time.time(), 3),
        }
    )
    _write_keys_file(path, entries)
    return key


def revoke_key(path: Path, key_id: str) -> bool:
    """Remove a key from the file; True if it was there."""
    entries = read_keys_file(path) if path.exists() else []
    kept = [e for e in entries if e["id"] != key_id]
    _write_keys_file(path, kept)
    return len(kept) != len(entries)
