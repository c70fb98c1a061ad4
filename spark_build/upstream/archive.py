"""A source archive standing in for a git repository at one pinned revision.

Where nothing can mirror a repository (CUTLASS is gigabytes of history, an offline Spark has
no GitHub), a `git archive` of the pin does — provided it is that pin: the sha256 is required
and checked before anything is unpacked.
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from spark_build.durable import sha256_of
from spark_build.errors import StepFailed, UsageError

_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".tar")


@dataclass(frozen=True)
class ArchiveMirror:
    """`PATH#sha256=HEX` in source_mirrors, or `PATH#sha256=HEX&strip=1` for a GitHub-style
    archive whose files sit under one `name-revision/` folder."""

    path: Path
    sha256: str
    strip: bool = False

    @staticmethod
    def is_archive(spec: str) -> bool:
        return spec.split("#", 1)[0].endswith(_ARCHIVE_SUFFIXES)

    @classmethod
    def parse(cls, spec: str) -> ArchiveMirror:
        location, _, fragment = spec.partition("#")
        fields = dict(part.partition("=")[::2] for part in fragment.split("&") if part)
        digest = fields.get("sha256", "")
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise UsageError(
                f"source mirror {location} is an archive without its sha256",
                hint=f"write it as {location}#sha256=<the sha256 of the archive you trust>",
            )
        return cls(Path(location), digest, strip=fields.get("strip") == "1")

    def extract(self, dest: Path) -> None:
        """Check the sha256, then unpack into `dest` (with `strip`, out of its one top folder)."""
        if not self.path.is_file():
            raise UsageError(f"source mirror {self.path} does not exist", hint="fix the path in source_mirrors")
        actual = sha256_of(self.path)
        if actual != self.sha256:
            raise StepFailed(
                f"{self.path.name} has sha256 {actual}, not the {self.sha256} the mirror names",
                hint="the archive is not the one you pinned: replace it, or correct the sha256",
            )
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(self.path) as archive:
            if hasattr(tarfile, "data_filter"):
                archive.extractall(dest, filter="data")
            else:  # Python < 3.10.12: no filters; the sha256 above already vouches for it
                archive.extractall(dest)  # noqa: S202
        entries = list(dest.iterdir())
        if self.strip and len(entries) == 1 and entries[0].is_dir():
            inner = entries[0]
            for child in list(inner.iterdir()):
                child.rename(dest / child.name)
            inner.rmdir()
