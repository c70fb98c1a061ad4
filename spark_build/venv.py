"""uv environments: the one way spark-build makes venvs and installs into them.

uv's progress bars would fill a 30-minute log; our cache folder keeps downloads between runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from uv import find_uv_bin


def uv_bin() -> str:
    return find_uv_bin()


def uv_env(cache_dir: Path | None) -> dict[str, str]:
    """uv's environment: our cache when one is configured, and no progress bars in logs."""
    env = dict(os.environ)
    if cache_dir is not None:
        env["UV_CACHE_DIR"] = str(cache_dir)
    env.setdefault("UV_NO_PROGRESS", "1")
    return env


def index_args(index: str) -> list[str]:
    """A local folder of wheels is a find-links source; anything else an extra index, so
    torch's own dependencies still come from the default index."""
    if "://" not in index:
        return ["--find-links", index]
    return ["--extra-index-url", index]


def installed_packages(venv: Path) -> list[str]:
    """What a venv holds, read from its dist-info folders (name-version), no process needed."""
    return sorted(p.name.removesuffix(".dist-info") for p in venv.glob("lib/python*/site-packages/*.dist-info"))
