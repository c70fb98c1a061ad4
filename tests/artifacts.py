"""Real upstream artifacts the tests read, downloaded once per user into a cache.

`vllm_sdist(version)` gives vLLM's source distribution from the package index, kept in
`~/.cache/spark-build-tests/sdists/` and reused while its sha256 matches the one the index
publishes (checked once per download). `pip download --no-binary :all:` cannot be used for it:
pip prepares the sdist's metadata first, which installs vLLM's build requirements (torch 2.14,
built from source under `:all:`) — an hour of CPU for a 50 MB file.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from pathlib import Path

PACKAGE_INDEX = "https://pypi.org/simple"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spark-build-tests" / "sdists"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def vllm_sdist(version: str) -> Path:
    """`vllm-{version}.tar.gz` from the package index, downloaded once into the per-user cache."""
    name = f"vllm-{version}.tar.gz"
    target = CACHE / name
    if target.is_file():
        return target
    request = urllib.request.Request(
        f"{PACKAGE_INDEX}/vllm/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        files = json.load(resp)["files"]
    entry = next((f for f in files if f["filename"] == name), None)
    if entry is None:
        raise FileNotFoundError(f"{PACKAGE_INDEX}/vllm/ has no {name}")
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{name}.{os.getpid()}.partial")
    try:
        with urllib.request.urlopen(entry["url"], timeout=300) as resp, partial.open("wb") as out:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        if _sha256(partial) != entry["hashes"]["sha256"]:
            raise OSError(f"{name}: sha256 differs from the one {PACKAGE_INDEX} publishes")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target
