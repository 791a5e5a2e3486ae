"""Who is asking: the key a request came with, what its limits count, and which objects it sees.

OpenAI scopes files, batches, fine-tuning jobs and fine-tuned models to a *project*; so does the
service once keys are configured (service/limits/keys.py): an object belongs to the project of the
key that created it, another project's object is not found (its existence is not revealed), and an
operator's ``admin`` key sees every project. Without keys every caller sees everything, as a
single-tenant server on loopback should.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.limits import ApiKey

__all__ = ["Caller", "whose"]


@dataclass(frozen=True)
class Caller:
    """One request's caller. ``identity`` is what the rate limits count (the key's name, or the
    client's address without keys)."""

    identity: str
    key: ApiKey | None = None

    @classmethod
    def with_key(cls, key: ApiKey) -> Caller:
        return cls(f"key:{key.name}", key)

    @classmethod
    def from_address(cls, host: str | None) -> Caller:
        return cls(f"addr:{host or 'unknown'}")

    @property
    def project(self) -> str | None:
        """The project what this caller creates belongs to; None without keys."""
        return None if self.key is None else self.key.project

    @property
    def key_name(self) -> str | None:
        return None if self.key is None else self.key.name

    @property
    def scope(self) -> str | None:
        """The project whose objects this caller lists; None: every project's."""
        return None if self.key is None or self.key.admin else self.key.project

    def sees(self, project: str | None) -> bool:
        """Whether an object of ``project`` exists for this caller."""
        return self.scope is None or project == self.scope


def whose(project: str | None) -> str:
    """Whom a per-project limit counts, for a message."""
    if project is None:
        return "this server (no API keys: all callers share it)"
    return f"project {project!r}"
