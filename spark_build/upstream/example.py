"""The example upstream: a tiny git repository with vLLM's build interface.

spark-build's tests and demo need an upstream they can clone, patch, build,
interrupt, resume and validate in seconds rather than the hours vLLM takes.
`spark_build/example_upstream/` is that project as a template tree (shipped as
package data); `make_example_upstream` turns it into a real git repository with
two tagged releases, so the clone step runs the same code on it as on vLLM.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import git

from spark_build.errors import UsageError

TEMPLATE_DIR = Path(__file__).resolve().parent / "example_upstream"

FIRST_TAG = "v0.1.0"
SECOND_TAG = "v0.2.0"
BRANCH = "main"

# Commits need an identity, and a machine that runs the tests may have no git
# config at all; fixed dates also keep the commit ids stable from run to run.
_ACTOR = git.Actor("spark-build example", "example@spark-build.invalid")
# git's internal date format (epoch seconds, offset), which gitpython also parses.
_FIRST_DATE = "1736942400 +0000"  # 2025-01-15 12:00 UTC
_SECOND_DATE = "1739620800 +0000"  # 2025-02-15 12:00 UTC

# Package-data globs skip dotfiles, so the template stores its .gitignore as
# `gitignore` and the copy restores the name.
_RENAMED_ON_COPY = {"gitignore": ".gitignore"}
# Left behind if someone built inside the template itself; never part of the repo.
_NOT_COPIED = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__")

_VERSION_LINE = 'VERSION = "{}"'


def make_example_upstream(dest: Path) -> Path:
    """Create the example upstream at `dest`: tags v0.1.0 and v0.2.0, `main` at v0.2.0.

    The repository is non-bare (its files are checked out) and has had
    `git update-server-info` run, so it can be cloned over dumb HTTP from
    `<url of dest>/.git` as well as from the path.
    """
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UsageError(
            f"cannot create the example upstream in {dest}: it exists and is not an empty directory",
            hint="pass a new or empty directory, or remove this one",
        )
    _copy_template(dest)

    with git.Repo.init(dest, initial_branch=BRANCH) as repo:
        with repo.git.custom_environment(**_identity_env(_FIRST_DATE)):
            _commit_all(repo, "spark-example 0.1.0", _FIRST_DATE)
            repo.create_tag(FIRST_TAG, message="spark-example 0.1.0")

        _bump_version(dest / "setup.py", "0.1.0", "0.2.0")
        with repo.git.custom_environment(**_identity_env(_SECOND_DATE)):
            _commit_all(repo, "spark-example 0.2.0", _SECOND_DATE)
            repo.create_tag(SECOND_TAG, message="spark-example 0.2.0")

        repo.git.update_server_info()
    return dest


def _copy_template(dest: Path) -> None:
    shutil.copytree(TEMPLATE_DIR, dest, ignore=_NOT_COPIED, dirs_exist_ok=True)
    for stored, real in _RENAMED_ON_COPY.items():
        (dest / stored).rename(dest / real)


def _identity_env(date: str) -> dict[str, str]:
    """Who and when for the git commands that record an identity (annotated tags)."""
    return {
        "GIT_AUTHOR_NAME": _ACTOR.name or "",
        "GIT_AUTHOR_EMAIL": _ACTOR.email or "",
        "GIT_AUTHOR_DATE": date,
        "GIT_COMMITTER_NAME": _ACTOR.name or "",
        "GIT_COMMITTER_EMAIL": _ACTOR.email or "",
        "GIT_COMMITTER_DATE": date,
    }


def _commit_all(repo: git.Repo, message: str, date: str) -> None:
    # `git add --all` honours the template's .gitignore, unlike index.add().
    repo.git.add("--all")
    repo.index.commit(
        message,
        author=_ACTOR,
        committer=_ACTOR,
        author_date=date,
        commit_date=date,
    )


def _bump_version(setup_py: Path, old: str, new: str) -> None:
    text = setup_py.read_text(encoding="utf-8")
    old_line, new_line = _VERSION_LINE.format(old), _VERSION_LINE.format(new)
    if text.count(old_line) != 1:
        raise RuntimeError(f"{setup_py} must contain exactly one line {old_line!r}")
    setup_py.write_text(text.replace(old_line, new_line), encoding="utf-8")
