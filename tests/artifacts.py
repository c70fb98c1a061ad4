"""Every artifact from outside this repository that the tests use: where upstream keeps it, its
pin, and how a test gets it — so that a fresh clone runs the tests with nothing beside it.

- vLLM source distributions come from the package index (`PIP_INDEX_URL`, else PyPI) into a
  per-user cache (`$XDG_CACHE_HOME`, else ~/.cache, then `spark-build-tests/`), downloaded once
  and checked by sha256: the one pinned here, or, for a release not pinned here, the one the
  index publishes. Without the index, a mirror folder's copy is taken when it has the pinned hash.
- Git repositories at the commits vLLM pins (flash-attention, FlashMLA, qutlass) and CUTLASS
  header archives exist only on GitHub: the package index has no git history, and its
  `nvidia-cutlass` wheel stops at 4.2.0, not the v4.2.1 vLLM 0.13.0 pins. They are made from
  GitHub into the cache by `tests/make_mirror.py` when the network reaches GitHub, else taken
  from the folder `SPARK_BUILD_TEST_MIRROR` names (`.ci/run` names the one beside the CI checkout; an
  air-gapped lab makes one with `python -m tests.make_mirror DIR`).
- Neither: the test is skipped with a reason naming the artifact and both ways to provide it.

A bundle is not pinned by its sha256 — one made next month holds newer branches — but by the
commits it must hold, which are hashes themselves (the fetch under test checks them). A header
archive made by `git archive` carries the commit it was made from, and is taken only when that
commit is the pin. Each artifact is resolved once per test session: the path, or why not.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from spark_build.durable import sha256_of
from spark_build.errors import SparkBuildError
from spark_build.nightly.transport import RETRY_POLICY, HTTPStatusError, open_url, with_retry

MIRROR_VARIABLE = "SPARK_BUILD_TEST_MIRROR"
MAKE_MIRROR = "python -m tests.make_mirror DIR"
PYPI = "https://pypi.org/simple"
# PEP 691: the index's JSON page lists every file of a project with its sha256.
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
_CHUNK = 1 << 20
_PROBE_SECONDS = 30

# What the index published for the releases the tests read (0.13.0 and 0.33.0 equal to the mirror's
# SHA256SUMS; 0.34.0 as PyPI's JSON page gave it on 2026-12-07).
VLLM_SDIST_SHA256 = {
    "0.13.0": "4ad43db45fef37114b550d03a4f423fb3fa3a31d8bc09ee810ef8b9cdcd4b5fe",
    "0.33.0": "f4c33c2503d52bb411146afa9618a4f48bed68912f617e6803ac8d76e4c74112",
    "0.34.0": "fcad848b246a9d8652b47e6425af92334dc02492f9802720f54e27b823cf0113",
}


@dataclass(frozen=True)
class GitBundle:
    """A GitHub repository carried as a git bundle: one branch per commit a vLLM release pins
    (named for that release), so a fetch by commit finds it offline."""

    name: str  # the bundle's file stem, and the key `make_mirror --upstream` takes
    project: str  # the name vLLM's CMake gives it (FetchContent), the key of `source_mirrors`
    upstream: str
    pins: dict[str, str] = field(hash=False)  # branch in the bundle → commit; where vLLM pins it

    @property
    def filename(self) -> str:
        return f"{self.name}.bundle"


@dataclass(frozen=True)
class HeadersArchive:
    """CUTLASS's headers at a pin, as `git archive` of the folders vLLM compiles against."""

    filename: str
    repository: str  # the key `make_mirror --upstream` takes
    upstream: str
    revision: str  # the pin as vLLM's CMake names it
    commit: str  # what `revision` is; `git archive` writes it into the tar's pax header
    paths: tuple[str, ...]


GIT_BUNDLES = {
    bundle.name: bundle
    for bundle in (
        GitBundle(
            "flash-attention",
            "vllm-flash-attn",
            "https://github.com/vllm-project/flash-attention.git",
            # cmake/external_projects/vllm_flash_attn.cmake of vLLM 0.13.0
            {"vllm-0.13.0": "86f8f157cf82aa2342743752b97788922dd7de43"},
        ),
        GitBundle(
            "FlashMLA",
            "flashmla",
            "https://github.com/vllm-project/FlashMLA.git",
            # cmake/external_projects/flashmla.cmake of vLLM 0.13.0
            {"vllm-0.13.0": "46d64a8ebef03fa50b4ae74937276a5c940e3f95"},
        ),
        GitBundle(
            "qutlass",
            "qutlass",
            "https://github.com/IST-DASLab/qutlass.git",
            # cmake/external_projects/qutlass.cmake of vLLM 0.13.0 and of 0.33.0
            {
                "vllm-0.13.0": "830d2c4537c7396e14a02a46fbddd18b5d107c65",
                "vllm-0.33.0": "e74319e3405ce6d71965732880f5dc1f52371f64",
            },
        ),
    )
}

_CUTLASS = "https://github.com/NVIDIA/cutlass.git"
_CUTLASS_FOR_VLLM = (
    "include",
    "tools/util/include",
    "examples/common",
    "examples/77_blackwell_fmha",
    "python/cutlass_library",
)
CUTLASS_ARCHIVES = {
    archive.revision: archive
    for archive in (
        # CUTLASS_REVISION in vLLM 0.13.0's CMakeLists.txt; its MLA kernel includes examples/77_blackwell_fmha.
        HeadersArchive(
            "cutlass-v4.2.1-headers.tar.gz", "cutlass", _CUTLASS, "v4.2.1",
            "f3fde58372d33e9a5650ba7b80fc48b3b49d40c8", _CUTLASS_FOR_VLLM,
        ),
        # The csrc/cutlass submodule of flash-attention at the commit vLLM 0.13.0 pins.
        HeadersArchive(
            "cutlass-62750a2b-headers.tar.gz", "cutlass", _CUTLASS, "62750a2b75c802660e4894434dc55e839f322277",
            "62750a2b75c802660e4894434dc55e839f322277", ("include", "tools/util/include"),
        ),
        # CUTLASS_REVISION of vLLM 0.20.0–0.29.0.
        HeadersArchive(
            "cutlass-v4.4.2-headers.tar.gz", "cutlass", _CUTLASS, "v4.4.2",
            "da5e086dab31d63815acafdac9a9c5893b1c69e2", _CUTLASS_FOR_VLLM,
        ),
    )
}  # fmt: skip


@dataclass(frozen=True)
class Unavailable:
    """Why an artifact cannot be had: absent (the test is skipped) or not the pinned one (the
    test fails — a file that is not what it claims must never pass for missing)."""

    reason: str
    wrong: bool = False


def _take(found: Path | Unavailable) -> Path:
    if isinstance(found, Unavailable):
        if found.wrong:
            pytest.fail(found.reason)
        pytest.skip(found.reason)
    return found


def cache_root() -> Path:
    """The per-user cache the tests download into, kept between runs and between checkouts."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spark-build-tests"


def mirror_folder() -> Path | None:
    value = os.environ.get(MIRROR_VARIABLE)
    return Path(value).expanduser().resolve() if value else None


def _mirror_hint() -> str:
    folder = mirror_folder()
    named = f"{MIRROR_VARIABLE}={folder} does not hold it" if folder else f"{MIRROR_VARIABLE} is not set"
    return f"{named} — set {MIRROR_VARIABLE} to a folder made by `{MAKE_MIRROR}`"


# --------------------------------------------------------------------------- vLLM sdists


def vllm_sdist(version: str) -> Path:
    """vLLM `version`'s source distribution, checked by sha256; skips the test when neither the
    package index nor the mirror folder has it."""
    return _take(find_vllm_sdist(version))


def fetch_ahead(version: str) -> None:
    """Resolve the sdist now (the unit tier does it before its no-network guard is on); the
    test's own `vllm_sdist` call then gets the same answer without touching the network."""
    find_vllm_sdist(version)


@functools.cache
def find_vllm_sdist(version: str) -> Path | Unavailable:
    """The checked sdist, or why it cannot be had."""
    filename = f"vllm-{version}.tar.gz"
    cached = cache_root() / "sdists" / filename
    pinned = VLLM_SDIST_SHA256.get(version)
    if cached.is_file() and sha256_of(cached) == (pinned or _recorded_sha256(cached)):
        return cached
    index = os.environ.get("PIP_INDEX_URL") or PYPI
    try:
        url, published = _index_file(index, "vllm", filename)
        if pinned and published != pinned:
            return Unavailable(f"{index} publishes sha256 {published} for {filename}, not the pinned {pinned}", True)
        return _download(url, cached, published)
    except NotPublished as exc:
        return Unavailable(str(exc), True)
    except SparkBuildError as exc:  # the transport's bounded retries are spent, or a final answer
        unreachable = f"{filename} could not be had from the package index {index} ({exc.message})"
    except (OSError, HTTPStatusError, LookupError, ValueError) as exc:  # ValueError: not PEP 691 JSON
        unreachable = f"{filename} could not be had from the package index {index} ({exc})"
    folder = mirror_folder()
    if pinned and folder and (folder / filename).is_file():
        if sha256_of(folder / filename) == pinned:
            return folder / filename
        return Unavailable(f"{folder / filename} is not the pinned {filename} (sha256 {pinned})", True)
    return Unavailable(f"{unreachable}; {_mirror_hint()}, or let pip reach the package index")


def _index_file(index: str, project: str, filename: str) -> tuple[str, str]:
    """(URL, sha256) of `filename` on the index's PEP 691 page for `project`."""
    page = f"{index.rstrip('/')}/{project}/"

    def read() -> bytes:
        with open_url(page, headers={"Accept": SIMPLE_JSON}, timeout=30) as answer:
            return bytes(answer.read())

    files = json.loads(with_retry(RETRY_POLICY, None, "reading", page, read)).get("files", [])
    for entry in files:
        if entry.get("filename") == filename and (entry.get("hashes") or {}).get("sha256"):
            return urllib.parse.urljoin(page, entry["url"]), entry["hashes"]["sha256"].lower()
    raise LookupError(f"{page} lists no {filename} with a sha256")


class NotPublished(Exception):
    """A download whose sha256 is not the one its index publishes."""


def _download(url: str, dest: Path, sha256: str) -> Path:
    """Stream `url` into `dest` through a temporary file: only a whole file with the expected
    sha256 is ever at `dest` (another checkout on this machine may be reading the cache)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest.parent, prefix=f".{dest.name}.", delete=False) as part:

        def fetch() -> None:
            part.seek(0)
            part.truncate()
            with open_url(url, timeout=60) as answer:
                shutil.copyfileobj(answer, part, _CHUNK)

        try:
            with_retry(RETRY_POLICY, None, "downloading", url, fetch)
        except BaseException:
            Path(part.name).unlink(missing_ok=True)
            raise
    got = sha256_of(Path(part.name))
    if got != sha256:
        Path(part.name).unlink(missing_ok=True)
        raise NotPublished(f"{url} has sha256 {got}, not the published {sha256}")
    dest.with_name(f"{dest.name}.sha256").write_text(f"{sha256}  {dest.name}\n")
    os.chmod(part.name, 0o644)  # a temporary file is private; a cached download need not be
    os.replace(part.name, dest)
    return dest


def _recorded_sha256(cached: Path) -> str | None:
    """The index's sha256, written beside a download of a release not pinned here."""
    sidecar = cached.with_name(f"{cached.name}.sha256")
    return sidecar.read_text().split()[0] if sidecar.is_file() else None


# --------------------------------------------------------------------------- GitHub's artifacts


def git_bundle(name: str) -> Path:
    """The git bundle of `GIT_BUNDLES[name]`: made from GitHub into the cache, else the mirror
    folder's; skips the test when neither can be had."""
    return _take(find_git_bundle(name))


@functools.cache
def find_git_bundle(name: str) -> Path | Unavailable:
    """The bundle, or why it cannot be had."""
    from tests import make_mirror

    bundle = GIT_BUNDLES[name]
    cached = cache_root() / "github" / bundle.filename
    if cached.is_file() and bundle_heads(cached) == {f"refs/heads/{b}": c for b, c in bundle.pins.items()}:
        return cached  # made here before, with every pin the catalogue now holds
    unreachable = _unreachable(bundle.upstream)
    if unreachable is None:
        try:
            return make_mirror.make_bundle(bundle, bundle.upstream, cached)
        except subprocess.CalledProcessError as exc:
            unreachable = _git_failure(exc)
    folder = mirror_folder()
    if folder and (folder / bundle.filename).is_file():
        return folder / bundle.filename
    pins = ", ".join(f"{commit[:8]} ({branch})" for branch, commit in bundle.pins.items())
    return Unavailable(
        f"{bundle.filename} (git bundle of {bundle.upstream} holding {pins}) is not available: "
        f"GitHub could not be reached ({unreachable}) and {_mirror_hint()}, or let git reach github.com"
    )


def cutlass_headers(revision: str) -> Path:
    """CUTLASS's headers at `revision` (a key of `CUTLASS_ARCHIVES`): made from GitHub into the
    cache, else the mirror folder's, taken only when made from the pinned commit."""
    return _take(find_cutlass_headers(revision))


@functools.cache
def find_cutlass_headers(revision: str) -> Path | Unavailable:
    """The archive, or why it cannot be had."""
    from tests import make_mirror

    archive = CUTLASS_ARCHIVES[revision]
    cached = cache_root() / "github" / archive.filename
    if cached.is_file() and archive_commit(cached) == archive.commit:
        return cached
    unreachable = _unreachable(archive.upstream)
    if unreachable is None:
        try:
            return make_mirror.make_headers_archive(archive, archive.upstream, cached)
        except subprocess.CalledProcessError as exc:
            unreachable = _git_failure(exc)
    mirrored = (mirror_folder() or Path("/nonexistent")) / archive.filename
    if mirrored.is_file():
        made_from = archive_commit(mirrored)
        if made_from == archive.commit:
            return mirrored
        return Unavailable(f"{mirrored} was made from {made_from}, not {archive.revision} ({archive.commit})", True)
    return Unavailable(
        f"{archive.filename} (CUTLASS {archive.revision} headers from {archive.upstream}) is not available: "
        f"GitHub could not be reached ({unreachable}) and {_mirror_hint()}, or let git reach github.com"
    )


def bundle_heads(path: Path) -> dict[str, str]:
    """{ref: commit} of a git bundle."""
    listed = subprocess.run(["git", "bundle", "list-heads", str(path)], capture_output=True, text=True)
    return {ref: commit for commit, ref in (line.split() for line in listed.stdout.splitlines() if " " in line)}


def archive_commit(path: Path) -> str | None:
    """The commit `git archive` wrote into the archive's pax global header, if any."""
    try:
        with tarfile.open(path) as tar:
            tar.next()
            return tar.pax_headers.get("comment")
    except (OSError, tarfile.TarError):
        return None


_probed: dict[str, str | None] = {}


def _unreachable(upstream: str) -> str | None:
    """Why git cannot reach `upstream`'s host, asked once per host and session with a bound: a
    firewall that drops packets would otherwise hold every fetch for minutes."""
    host = urllib.parse.urlsplit(upstream).netloc
    if host not in _probed:
        command = ["git", "ls-remote", "--exit-code", upstream, "HEAD"]
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
        try:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=_PROBE_SECONDS, env=env)
            _probed[host] = None
        except subprocess.TimeoutExpired:
            _probed[host] = f"no answer from {host} in {_PROBE_SECONDS} s"
        except subprocess.CalledProcessError as exc:
            _probed[host] = _git_failure(exc)
    return _probed[host]


def _git_failure(exc: subprocess.CalledProcessError) -> str:
    """The last line git printed, without the URL it names (one probe answers for its host):
    `Could not resolve host: github.com` and the like."""
    lines = [line for line in str(exc.stderr or "").splitlines() if line.strip()]
    return re.sub(r"^fatal: unable to access '[^']*': ", "", lines[-1].strip()) if lines else f"exit {exc.returncode}"
