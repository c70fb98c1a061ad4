"""Make the folder `SPARK_BUILD_TEST_MIRROR` names, for a lab whose test machines reach neither
GitHub nor the package index: run it where both are reachable, carry the folder over.

    python -m tests.make_mirror DIR [--only FILE]... [--upstream NAME=URL]...

It writes, at the pins `tests/artifacts.py` holds: one git bundle per repository (a branch per
pinned commit), the CUTLASS header archives (`git archive` of the folders vLLM compiles
against, at the pinned commit), the vLLM source distributions (checked by sha256), and
`SHA256SUMS`. `--upstream qutlass=file:///srv/qutlass.git` takes a repository from elsewhere
than GitHub (an internal copy of it); `--only vllm-0.13.0.tar.gz` makes just the files named.
The tests' fixtures call the same two functions to make a bundle or an archive from GitHub.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from spark_build.durable import sha256_of
from tests.artifacts import (
    CUTLASS_ARCHIVES,
    GIT_BUNDLES,
    VLLM_SDIST_SHA256,
    GitBundle,
    HeadersArchive,
    Unavailable,
    find_vllm_sdist,
)

# Never a credential prompt: an unreachable upstream must fail, not wait for a terminal.
_GIT_ENV = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}


def _git(repo: Path, *args: str) -> str:
    command = ["git", "-C", str(repo), *args]
    return subprocess.run(command, check=True, capture_output=True, text=True, env=_GIT_ENV).stdout.strip()


def make_bundle(bundle: GitBundle, upstream: str, dest: Path) -> Path:
    """A bundle of `upstream` with one branch per pinned commit (fetched by commit id, as GitHub
    serves them), written whole to `dest` or not at all."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{bundle.name}.") as scratch:
        repo = Path(scratch) / "repo.git"
        _git(Path(scratch), "init", "-q", "--bare", str(repo))
        for branch, commit in bundle.pins.items():
            _git(repo, "fetch", "-q", "--no-tags", upstream, commit)
            _git(repo, "update-ref", f"refs/heads/{branch}", commit)
        made = Path(scratch) / bundle.filename
        _git(repo, "bundle", "create", "-q", str(made), "--branches")
        _git(repo, "bundle", "verify", "-q", str(made))
        os.replace(made, dest)
    return dest


def make_headers_archive(archive: HeadersArchive, upstream: str, dest: Path) -> Path:
    """`git archive` of `archive.paths` at the pinned commit (the archive records that commit in
    its pax header, which the fixtures check), written whole to `dest` or not at all."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{archive.repository}.") as scratch:
        repo = Path(scratch) / "repo.git"
        _git(Path(scratch), "init", "-q", "--bare", str(repo))
        _git(repo, "fetch", "-q", "--no-tags", "--depth=1", upstream, archive.revision)
        commit = _git(repo, "rev-parse", "FETCH_HEAD^{commit}")
        if commit != archive.commit:
            raise subprocess.CalledProcessError(
                1,
                ["git", "fetch", upstream, archive.revision],
                stderr=f"{archive.revision} is {commit} at {upstream}, not the pinned {archive.commit}",
            )
        made = Path(scratch) / archive.filename
        _git(repo, "archive", "--format=tar.gz", "-o", str(made), commit, "--", *archive.paths)
        os.replace(made, dest)
    return dest


def _parse_upstreams(parser: argparse.ArgumentParser, pairs: Sequence[str]) -> dict[str, str]:
    known = sorted(set(GIT_BUNDLES) | {a.repository for a in CUTLASS_ARCHIVES.values()})
    upstreams = {}
    for pair in pairs:
        name, sep, url = pair.partition("=")
        if not sep or not url or name not in known:
            parser.error(f"--upstream {pair!r}: expected NAME=URL with NAME one of {', '.join(known)}")
        upstreams[name] = url
    return upstreams


def _make(filename: str, folder: Path, upstreams: dict[str, str]) -> Path:
    """Make the artifact named `filename` in `folder`, from GitHub, `upstreams` or the index."""
    dest = folder / filename
    for bundle in GIT_BUNDLES.values():
        if bundle.filename == filename:
            return make_bundle(bundle, upstreams.get(bundle.name, bundle.upstream), dest)
    for archive in CUTLASS_ARCHIVES.values():
        if archive.filename == filename:
            return make_headers_archive(archive, upstreams.get(archive.repository, archive.upstream), dest)
    found = find_vllm_sdist(filename.removeprefix("vllm-").removesuffix(".tar.gz"))
    if isinstance(found, Unavailable):
        raise SystemExit(found.reason)
    shutil.copyfile(found, dest)
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.make_mirror", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where to write the mirror (created if missing)")
    parser.add_argument("--upstream", action="append", default=[], metavar="NAME=URL", help="take NAME from URL")
    parser.add_argument("--only", action="append", default=[], metavar="FILE", help="make only these files")
    options = parser.parse_args(argv)
    upstreams = _parse_upstreams(parser, options.upstream)
    names = [
        *(bundle.filename for bundle in GIT_BUNDLES.values()),
        *(archive.filename for archive in CUTLASS_ARCHIVES.values()),
        *(f"vllm-{version}.tar.gz" for version in VLLM_SDIST_SHA256),
    ]
    unknown = sorted(set(options.only) - set(names))
    if unknown:
        parser.error(f"--only {', '.join(unknown)}: not an artifact the tests use; one of {', '.join(names)}")
    folder: Path = options.folder
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for filename in options.only or names:
            print(f"{_make(filename, folder, upstreams)}: made", flush=True)
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"{' '.join(map(str, exc.cmd))}: {str(exc.stderr).strip()}") from exc
    made = sorted(path for path in folder.iterdir() if path.is_file() and path.name != "SHA256SUMS")
    (folder / "SHA256SUMS").write_text("".join(f"{sha256_of(path)}  {path.name}\n" for path in made))
    return 0


if __name__ == "__main__":
    sys.exit(main())
