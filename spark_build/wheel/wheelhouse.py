"""The local wheelhouse: a PEP 503 "simple" folder that pip and uv install from directly.

Layout: `<wheelhouse>/<project>/<wheel>` with an `index.html` per project whose links carry
`#sha256=…` (so installers verify what they fetch), a root `index.html`, and a `.sha256` file
beside each wheel for people and scripts. Every file lands by atomic rename: an interrupted
publish never leaves a half-copied wheel where an installer would find it.
"""

from __future__ import annotations

import html
import shlex
from collections.abc import Sequence
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

from spark_build.durable import atomic_copy, atomic_write_text, sha256_of


def publish(wheel: Path, wheelhouse: Path) -> tuple[Path, str]:
    """Copy `wheel` into the wheelhouse and refresh the indexes; returns (path, sha256)."""
    name, _version, _build, _tags = parse_wheel_filename(wheel.name)
    project = wheelhouse / canonicalize_name(name)
    project.mkdir(parents=True, exist_ok=True)
    target = project / wheel.name
    atomic_copy(wheel, target)
    sha = sha256_of(target)
    atomic_write_text(target.with_name(target.name + ".sha256"), f"{sha}  {target.name}\n")
    write_indexes(wheelhouse)
    return target, sha


def write_indexes(wheelhouse: Path) -> None:
    wheelhouse.mkdir(parents=True, exist_ok=True)  # the nightly refreshes a wheelhouse it may never have filled
    projects = sorted(p for p in wheelhouse.iterdir() if p.is_dir() and not p.name.startswith("."))
    for project in projects:
        links = []
        for wheel in sorted(project.glob("*.whl")):
            sha_file = wheel.with_name(wheel.name + ".sha256")
            sha = sha_file.read_text().split()[0] if sha_file.is_file() else sha256_of(wheel)
            links.append(f'<a href="{html.escape(wheel.name)}#sha256={sha}">{html.escape(wheel.name)}</a><br/>')
        atomic_write_text(project / "index.html", _page(f"Links for {project.name}", links))
    root = [f'<a href="{p.name}/">{p.name}</a><br/>' for p in projects]
    atomic_write_text(wheelhouse / "index.html", _page("Simple index", root))


def _page(title: str, lines: list[str]) -> str:
    body = "\n".join(lines)
    return (
        f"<!DOCTYPE html>\n<html><head><title>{title}</title></head><body>\n<h1>{title}</h1>\n{body}\n</body></html>\n"
    )


def install_line(
    wheel_in_house: Path,
    wheelhouse: Path,
    *,
    python: str,
    venv: Path | None = None,
    index: str | None = None,
    pins: Sequence[str] = (),
) -> str:
    """What the user types next, in a new shell: no venv active, maybe no uv on PATH (`uv pip
    install` failed there twice: "command not found", then "No virtual environment found"). So
    the line names its interpreter: `python`'s pip (the interpreter whose torch was proven, with
    --torch existing), or a `venv` made from `python` first. The wheel comes from the wheelhouse,
    other packages from the index; `index` and `pins` name the torch index and the torch the wheel
    was validated with, so the install does not quietly resolve another torch."""
    name, version, _build, _tags = parse_wheel_filename(wheel_in_house.name)
    sources = ["--extra-index-url", f"{wheelhouse.as_uri()}/"]
    if index:
        sources += ["--extra-index-url", index] if "://" in index else ["--find-links", index]
    pip = [str(venv / "bin" / "python") if venv else python, "-m", "pip", "install", *sources]
    install = shlex.join([*pip, f"{name}=={version}", *pins])
    return f"{shlex.join([python, '-m', 'venv', str(venv)])} && {install}" if venv else install
