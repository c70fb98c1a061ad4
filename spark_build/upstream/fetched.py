"""What the sources step fetched: one record per project, and the variables CMake reads.

A record of its own so that both ways of getting a project (git or archive in `sources`, the
nvidia-cutlass package in `cutlass`) return the same thing, and later steps (arch-plan,
compile) read it back from the checkpoint without knowing how it was fetched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def revision_slug(revision: str) -> str:
    """A revision (or package version) as a cache folder name: tags may hold `/`."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", revision)


@dataclass(frozen=True)
class FetchedProject:
    """One project in the cache: where it is, what it is, and the variable that points at it."""

    name: str
    revision: str
    commit: str
    checkout: Path
    env: str | None
    env_value: Path
    origin: str
    reused: bool = False
    missing_submodules: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "revision": self.revision,
            "commit": self.commit,
            "checkout": str(self.checkout),
            "env": self.env,
            "env_value": str(self.env_value),
            "origin": self.origin,
            "reused": self.reused,
            "missing_submodules": list(self.missing_submodules),
        }


@dataclass(frozen=True)
class FetchedSources:
    projects: tuple[FetchedProject, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def env(self) -> dict[str, str]:
        """The variables to put in the configure and compile environment."""
        return {p.env: str(p.env_value) for p in self.projects if p.env}

    def to_dict(self) -> dict[str, Any]:
        return {"projects": [p.to_dict() for p in self.projects], "env": self.env, "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, recorded: Mapping[str, Any]) -> FetchedSources:
        """Back from the checkpoint, so a later step (arch-plan, compile) uses what was fetched."""
        projects = tuple(
            FetchedProject(
                name=str(item["name"]),
                revision=str(item["revision"]),
                commit=str(item["commit"]),
                checkout=Path(str(item["checkout"])),
                env=item.get("env"),
                env_value=Path(str(item["env_value"])),
                origin=str(item["origin"]),
                reused=bool(item.get("reused", False)),
                missing_submodules=tuple(item.get("missing_submodules", ())),
            )
            for item in recorded.get("projects", [])
        )
        return cls(projects, tuple(recorded.get("notes", ())))
