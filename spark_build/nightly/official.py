"""Where vLLM publishes its official CUDA wheel for a release, and reading it from there.

vLLM has moved its CUDA 13 wheels twice, so the name and the place are decided here, once:

- 0.13.0 up to 0.19.1: GitHub release assets only, with a local version,
  `vllm-0.15.0+cu130-cp38-abi3-manylinux_2_35_aarch64.whl` (the package index holds CUDA 12).
- from 0.20.0: the package index's unsuffixed wheel is the CUDA 13 one (`+cu129` is the alternate).
- the manylinux tag moved 2_35 (up to 0.20) → 2_24 (0.21) → 2_28 (0.22 on).

`expected_wheel` is the pure decision; `index_files` (PEP 691 JSON or PEP 503 HTML) and
`release_assets` (GitHub's release API, whose assets carry a `sha256:` digest) read the two places.
A wheel is only taken with a published sha256: the download is checked against it. Offline
(`--wheels DIR`), `folder_files` reads DIR instead: a wheel named as the official one, taken only
with the sha256 its release published beside it in `NAME.sha256` (as `sha256sum NAME` writes it,
the file our own wheelhouse keeps) — one rule, the same one the wheelhouse follows.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from html.parser import HTMLParser
from pathlib import Path

from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from spark_build.errors import UsageError
from spark_build.nightly.fetch import GONE_CODES, read_sidecar, sidecar_path, split_sha256_fragment
from spark_build.nightly.transport import (
    RETRY_POLICY,
    HTTPStatusError,
    RetryPolicy,
    Say,
    open_url,
    status_failure,
    with_retry,
)

PACKAGE_INDEX = "https://pypi.org/simple"
GITHUB_RELEASES = "https://api.github.com/repos/vllm-project/vllm/releases"
FIRST_CUDA13 = Version("0.13.0")  # the first release with CUDA 13 (cu130) wheels
INDEX_CUDA13 = Version("0.20.0")  # from here the package index's plain wheel is the CUDA 13 one
_SIMPLE_ACCEPT = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"


class Place(Enum):
    INDEX = "package index"
    RELEASE = "GitHub release assets"
    FOLDER = "wheel folder"


@dataclass(frozen=True)
class Wanted:
    """The official wheel to look for: which release, for which CUDA major and CPU."""

    version: Version
    cuda_major: int
    machine: str  # platform.machine(): aarch64 on a DGX Spark


@dataclass(frozen=True)
class Expected:
    """Where the wheel should be and what its name should say."""

    place: Place
    filename: str  # with the manylinux tag the release used
    local: str  # "+cu130" up to 0.19, "" from 0.20


@dataclass(frozen=True)
class OfficialWheel:
    """A wheel found where it was expected, with the sha256 its host publishes."""

    filename: str
    url: str  # the file's path for the wheel folder
    sha256: str
    place: Place


def release_version(ref: str) -> Version | None:
    """`v0.13.0` → 0.13.0; a branch, a commit or a pre-release has no official wheel (None)."""
    try:
        version = Version(ref.removeprefix("v"))
    except InvalidVersion:
        return None
    return None if version.is_prerelease or version.is_devrelease or version.local else version


def manylinux_tag(version: Version) -> str:
    """The tag the release's Linux wheels carry (it moved twice, see the module docstring)."""
    if version < Version("0.21.0"):
        return "manylinux_2_35"
    if version < Version("0.22.0"):
        return "manylinux_2_24"
    return "manylinux_2_28"


def expected_wheel(wanted: Wanted) -> Expected | str:
    """Where the official wheel for `wanted` is published, or why there is none (a str)."""
    if wanted.cuda_major != 13:
        return f"spark-build looks up CUDA 13 wheels only (asked for CUDA {wanted.cuda_major})"
    if wanted.version < FIRST_CUDA13:
        return f"vLLM publishes CUDA 13 wheels from {FIRST_CUDA13} on; {wanted.version} has none"
    tag = f"{manylinux_tag(wanted.version)}_{wanted.machine}"
    if wanted.version < INDEX_CUDA13:
        local = f"+cu{wanted.cuda_major}0"
        return Expected(Place.RELEASE, f"vllm-{wanted.version}{local}-cp38-abi3-{tag}.whl", local)
    return Expected(Place.INDEX, f"vllm-{wanted.version}-cp38-abi3-{tag}.whl", "")


def pick(expected: Expected, wanted: Wanted, offered: Sequence[OfficialWheel]) -> OfficialWheel | None:
    """The offered wheel to take: the expected name, else the same release, CUDA build and CPU
    under another manylinux tag (a tag the table does not know yet must not cost a 40-minute build)."""
    for wheel in offered:
        if wheel.filename == expected.filename:
            return wheel
    for wheel in offered:
        try:
            _name, version, _build, tags = parse_wheel_filename(wheel.filename)
        except InvalidWheelFilename:
            continue
        local = f"+{version.local}" if version.local else ""
        same_cpu = any(t.platform.startswith("manylinux") and t.platform.endswith(wanted.machine) for t in tags)
        if version.public == str(wanted.version) and local == expected.local and same_cpu:
            return wheel
    return None


# --------------------------------------------------------------------------- reading the two places


class _Anchors(HTMLParser):
    """`<a href>` and `data-yanked` of a PEP 503 page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, bool]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "a" and found.get("href"):
            self.links.append((str(found["href"]), "data-yanked" in found))


def _get(url: str, accept: str, timeout: float, policy: RetryPolicy, on_retry: Say | None) -> tuple[str, str] | None:
    """(content type, body) of `url`; None when it is not there (404/410). Any other answer is an
    error, not "no wheel": a 403 or 500 says nothing about the wheel, so it must not cost a rebuild."""

    def fetch() -> tuple[str, str]:
        with open_url(url, headers={"Accept": accept}, timeout=timeout) as resp:
            return str(resp.headers.get("Content-Type", "")), resp.read().decode("utf-8", "replace")

    try:
        return with_retry(policy, on_retry, "reading", url, fetch)
    except HTTPStatusError as err:
        if err.code in GONE_CODES:
            return None
        raise status_failure(
            "reading", url, err, policy, "check --wheel-index / --wheel-releases and the network"
        ) from err


def parse_index_page(page_url: str, content_type: str, body: str) -> list[OfficialWheel]:
    """The wheels and source distributions with a sha256 on one project page, JSON (PEP 691) or
    HTML (PEP 503); yanked files are left out, as installers leave them out."""
    found = []
    if "json" in content_type:
        for entry in json.loads(body).get("files", []):
            sha = (entry.get("hashes") or {}).get("sha256")
            if sha and not entry.get("yanked"):
                url = urllib.parse.urljoin(page_url, entry["url"])
                found.append(OfficialWheel(entry["filename"], url, sha.lower(), Place.INDEX))
        return found
    parser = _Anchors()
    parser.feed(body)
    for href, yanked in parser.links:
        url, sha = split_sha256_fragment(urllib.parse.urljoin(page_url, href))
        name = urllib.parse.unquote(url.rsplit("/", 1)[-1])
        if sha and not yanked and name.endswith((".whl", ".tar.gz")):
            found.append(OfficialWheel(name, url, sha, Place.INDEX))
    return found


def index_files(
    index: str,
    project: str = "vllm",
    *,
    timeout: float = 30.0,
    policy: RetryPolicy = RETRY_POLICY,
    on_retry: Say | None = None,
) -> list[OfficialWheel]:
    page = f"{index.rstrip('/')}/{project}/"
    answer = _get(page, _SIMPLE_ACCEPT, timeout, policy, on_retry)
    return parse_index_page(page, *answer) if answer else []


_DIGEST = re.compile(r"sha256:([0-9a-fA-F]{64})")


def parse_release(body: str) -> list[OfficialWheel]:
    """The `.whl` assets of one GitHub release (API JSON) that carry a `sha256:` digest."""
    found = []
    for asset in json.loads(body).get("assets", []):
        match = _DIGEST.fullmatch(str(asset.get("digest") or ""))
        name = str(asset.get("name", ""))
        if match and name.endswith(".whl"):
            found.append(OfficialWheel(name, str(asset["browser_download_url"]), match[1].lower(), Place.RELEASE))
    return found


def release_assets(
    releases: str, tag: str, *, timeout: float = 30.0, policy: RetryPolicy = RETRY_POLICY, on_retry: Say | None = None
) -> list[OfficialWheel]:
    answer = _get(f"{releases.rstrip('/')}/tags/{tag}", "application/vnd.github+json", timeout, policy, on_retry)
    return parse_release(answer[1]) if answer else []


def folder_files(folder: Path) -> list[OfficialWheel]:
    """The wheels of a local folder (`--wheels`) that have their sha256 beside them (`NAME.sha256`)."""
    found = []
    for wheel in sorted(folder.glob("*.whl")):
        sha = read_sidecar(wheel)
        if sha:
            found.append(OfficialWheel(wheel.name, str(wheel), sha, Place.FOLDER))
    return found


def find_in_folder(wanted: Wanted, folder: Path) -> OfficialWheel | str:
    """The official wheel for `wanted` in a local folder with its sha256, or why it is not taken."""
    expected = expected_wheel(wanted)
    if isinstance(expected, str):
        return expected
    found = pick(expected, wanted, folder_files(folder))
    if found is not None:
        return found
    unhashed = folder / expected.filename
    if unhashed.is_file():
        return (
            f"{unhashed} has no {sidecar_path(unhashed).name} beside it: write into it the sha256 "
            f"published with the wheel ({expected.place.value}), as `sha256sum` formats it"
        )
    return f"no {expected.filename} in {folder} (offline, the official wheel is looked up only there)"


def check_lookup_urls(index: str, releases: str) -> None:
    """An index or release API that is not an http(s) URL is bad input: a folder belongs in `--wheels`."""
    for option, url in (("--wheel-index", index), ("--wheel-releases", releases)):
        if not url.startswith(("https://", "http://")):
            raise UsageError(f"{option} {url}: not an http(s) URL", hint=f"give {option} https://…, or leave it out")


def find_official(
    wanted: Wanted,
    *,
    index: str = PACKAGE_INDEX,
    releases: str = GITHUB_RELEASES,
    timeout: float = 30.0,
    policy: RetryPolicy = RETRY_POLICY,
    on_retry: Say | None = None,
) -> OfficialWheel | str:
    """The official wheel for `wanted` with its sha256, or why there is none (a str); a host that
    answers neither the page nor 404/410 is an error (`SparkBuildError`)."""
    expected = expected_wheel(wanted)
    if isinstance(expected, str):
        return expected
    if expected.place is Place.INDEX:
        where = f"{index.rstrip('/')}/vllm/"
        offered = index_files(index, timeout=timeout, policy=policy, on_retry=on_retry)
    else:
        where = f"the v{wanted.version} release ({releases.rstrip('/')}/tags/v{wanted.version})"
        tag = f"v{wanted.version}"
        offered = release_assets(releases, tag, timeout=timeout, policy=policy, on_retry=on_retry)
    found = pick(expected, wanted, offered)
    if found is None:
        return f"no {expected.filename} with a sha256 in {where}"
    return found
