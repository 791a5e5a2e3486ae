"""API keys: who may call /v1, and each key's own limits.

Keys come from two places, both optional:

- ``POWERSERVE_API_KEYS="alice=sk-a...,bob=sk-b..."``: name=key pairs (development, tests);
- ``POWERSERVE_API_KEYS_FILE``: a TOML (or ``.json``) file that holds only SHA-256 hashes::

      [keys.alice]
      sha256 = "3f1c..."        # powerserve hash-key < key.txt
      rpm = 600                 # optional: overrides POWERSERVE_RATE_LIMIT_RPM; 0 = unlimited
      tpm = 2000000             # optional: overrides POWERSERVE_RATE_LIMIT_TPM; 0 = unlimited
      project = "search-team"   # optional: keys of one project share their files, batches, jobs
                                # and fine-tuned models; without it a key is a project of its own
      admin = true              # optional: an operator's key, which sees every project's objects
      power_budget = 4          # optional: the power_budget of this key's power requests that
                                # set none (tokens generated per token returned)
      power_latency_target = 10 # optional: likewise their power_latency_target (seconds)

A presented key is hashed and compared with every stored hash by ``hmac.compare_digest``, so the time
taken says nothing about how much of a key was right, nor which key it was close to.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ApiKey", "KeyRing", "hash_key"]


def hash_key(key: str) -> str:
    """The hex SHA-256 of a key, as the keys file stores it."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """A key's name (what logs and limits see, never the key), its own limits (None follows the
    settings, 0 is unlimited), the project that owns what it creates, and whether it is an
    operator's key that sees every project, and the ``power_budget`` and ``power_latency_target``
    its power requests get when they set none."""

    name: str
    rpm: int | None = None
    tpm: int | None = None
    project_name: str | None = None
    admin: bool = False
    power_budget: float | None = None
    power_latency_target: float | None = None

    @property
    def project(self) -> str:
        """The project this key's objects belong to: its own name unless it names one."""
        return self.project_name or self.name


class KeyRing:
    """The configured keys, by hash. Empty: the API is open."""

    def __init__(self, keys: dict[str, ApiKey]):
        # hex sha256 -> key; digests as bytes, compared in constant time
        self._keys = [(bytes.fromhex(digest), key) for digest, key in keys.items()]

    @classmethod
    def from_settings(cls, api_keys: str | None, api_keys_file: Path | None) -> KeyRing:
        keys: dict[str, ApiKey] = {}
        for pair in (api_keys or "").split(","):
            if not pair.strip():
                continue
            name, sep, key = pair.strip().partition("=")
            if not sep or not name or not key:
                raise ValueError("POWERSERVE_API_KEYS takes name=key pairs separated by commas")
            keys[hash_key(key)] = ApiKey(name)
        if api_keys_file is not None:
            keys |= _read_keys_file(api_keys_file)
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def has_limits(self) -> bool:
        """Whether a key sets a limit of its own."""
        return any(key.rpm or key.tpm for _, key in self._keys)

    def named(self, name: str) -> ApiKey | None:
        """The key called ``name`` (the owner of offline work, charged when it runs)."""
        return next((key for _, key in self._keys if key.name == name), None)

    def authenticate(self, presented: str) -> ApiKey | None:
        """The key whose hash matches ``presented``'s, or None; every stored hash is compared."""
        digest = hashlib.sha256(presented.encode()).digest()
        found: ApiKey | None = None
        for stored, key in self._keys:
            if hmac.compare_digest(stored, digest):
                found = key
        return found


def _read_keys_file(path: Path) -> dict[str, ApiKey]:
    text = path.read_text()
    data: dict[str, Any] = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    entries = data.get("keys")
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: expected a [keys.<name>] table per key")
    keys: dict[str, ApiKey] = {}
    for name, entry in entries.items():
        digest = str(entry.get("sha256", "")).lower() if isinstance(entry, dict) else ""
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{path}: key {name!r} needs sha256 = the key's hex SHA-256")
        limits = {}
        for field in ("rpm", "tpm"):
            value = entry.get(field)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{path}: key {name!r}: {field} must be an integer >= 0")
            limits[field] = value
        project = entry.get("project")
        if project is not None and (not isinstance(project, str) or not project.strip()):
            raise ValueError(f"{path}: key {name!r}: project must be a non-empty string")
        admin = entry.get("admin", False)
        if not isinstance(admin, bool):
            raise ValueError(f"{path}: key {name!r}: admin must be true or false")
        budget = entry.get("power_budget")
        if budget is not None and not (_is_number(budget) and 1 <= budget < math.inf):
            raise ValueError(f"{path}: key {name!r}: power_budget must be a number >= 1")
        target = entry.get("power_latency_target")
        if target is not None and not (_is_number(target) and 0 < target <= 3600):
            raise ValueError(
                f"{path}: key {name!r}: power_latency_target must be a number of seconds in (0, 3600]"
            )
        keys[digest] = ApiKey(
            str(name),
            **limits,
            project_name=project,
            admin=admin,
            power_budget=budget,
            power_latency_target=target,
        )
    return keys


def _is_number(value: Any) -> bool:
    """An int or float, not a bool (TOML's true is not 1 here)."""
    return isinstance(value, int | float) and not isinstance(value, bool)
