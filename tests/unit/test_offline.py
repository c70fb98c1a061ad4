"""Building without a package index: how installs are spelled, what a wheel folder lacks, and
which source archives stand in for git repositories."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_build import config as options
from spark_build.errors import UsageError
from spark_build.upstream.archive import ArchiveMirror
from spark_build.upstream.cutlass import cutlass_matches_pin
from spark_build.venv import Installer, missing_from_wheels, read_requirements, wheel_folder_index

PY = Path("/w/venv/bin/python")


def test_a_default_install_goes_through_uv_and_the_index() -> None:
    argv = Installer().install_argv(PY, "-r", "build.txt", index="https://download.pytorch.org/whl/cu130")
    assert argv[1:] == [
        "pip",
        "install",
        "--python",
        PY,
        "--extra-index-url",
        "https://download.pytorch.org/whl/cu130",
        "-r",
        "build.txt",
    ]


def test_an_inheriting_venv_installs_with_its_own_pip_which_sees_the_inherited_packages() -> None:
    argv = Installer(inherit_site=True, wheels=Path("/wheels")).install_argv(PY, "setuptools<81", index="/torch")
    assert argv == [
        PY,
        "-m",
        "pip",
        "install",
        "--no-input",
        "--no-index",
        "--find-links",
        "/wheels",
        "--find-links",
        "/torch",
        "setuptools<81",
    ]


def test_with_a_wheel_folder_no_index_is_asked_even_for_a_remote_torch_index() -> None:
    args = Installer(wheels=Path("/wheels")).source_args("https://download.pytorch.org/whl/cu130")
    assert args == ["--no-index", "--find-links", "/wheels"]


def test_an_inheriting_venv_is_made_by_the_interpreter_itself_with_its_site_packages() -> None:
    argv = Installer(inherit_site=True).venv_argv("/opt/torch/.venv/bin/python", Path("/w/venv"), seed=False)
    assert argv == ["/opt/torch/.venv/bin/python", "-m", "venv", "--clear", "--system-site-packages", Path("/w/venv")]


def test_an_offline_uv_venv_seeds_pip_from_the_wheel_folder() -> None:
    argv = Installer(wheels=Path("/wheels")).venv_argv("python3", Path("/w/venv"), seed=True)
    assert argv[1:] == [
        "venv",
        "--clear",
        "--seed",
        "--no-index",
        "--find-links",
        "/wheels",
        "--python",
        "python3",
        Path("/w/venv"),
    ]


def test_every_missing_requirement_is_named_at_once_and_satisfied_ones_are_not() -> None:
    offered = {"setuptools": ["80.10.2"], "setuptools-scm": ["10.3.4"]}
    installed = {"cmake": "4.4.3", "setuptools": "81.0.0", "ninja": "1.13.0"}
    wanted = ["cmake>=3.26.1", "ninja", "setuptools>=77.0.3,<81.0.0", "setuptools-scm>=8", "jinja2>=3.1.6", "regex"]
    assert missing_from_wheels(wanted, offered, installed) == ["jinja2>=3.1.6", "regex"]


def test_requirements_for_another_platform_or_an_extra_are_not_asked_for() -> None:
    wanted = ["pywin32; sys_platform == 'win32'", "pytest; extra == 'test'", "packaging"]
    assert missing_from_wheels(wanted, {}, {}) == ["packaging"]


def test_a_requirements_file_is_read_with_its_includes_and_without_options(tmp_path: Path) -> None:
    (tmp_path / "common.txt").write_text("regex  # tokenizer\n--extra-index-url https://x\n")
    (tmp_path / "build.txt").write_text("-r common.txt\n# comment\ncmake>=3.26.1\n\nninja\n")
    assert read_requirements(tmp_path / "build.txt") == ["regex", "cmake>=3.26.1", "ninja"]


def test_a_wheel_folder_is_indexed_by_canonical_name(tmp_path: Path) -> None:
    for name in ("setuptools_scm-10.3.4-py3-none-any.whl", "Jinja2-3.1.6-py3-none-any.whl", "notes.txt"):
        (tmp_path / name).write_text("")
    assert wheel_folder_index(tmp_path) == {"jinja2": ["3.1.6"], "setuptools-scm": ["10.3.4"]}


def test_an_archive_mirror_must_name_its_sha256() -> None:
    with pytest.raises(UsageError) as caught:
        ArchiveMirror.parse("/mirror/cutlass-v4.2.1-headers.tar.gz")
    assert "#sha256=" in (caught.value.hint or "")
    digest = "3" * 64
    parsed = ArchiveMirror.parse(f"/mirror/cutlass-4.2.1.tar.gz#sha256={digest}&strip=1")
    assert parsed == ArchiveMirror(Path("/mirror/cutlass-4.2.1.tar.gz"), digest, strip=True)
    assert ArchiveMirror.is_archive(f"/m/x.tar.gz#sha256={digest}") and not ArchiveMirror.is_archive("/m/x.bundle")


@pytest.mark.parametrize(
    ("headers", "pin", "matches"),
    [("4.2.1", "v4.2.1", True), ("4.2.0", "v4.2.1", False), (None, "v4.2.1", False)],
    ids=["the-pin", "the-package-4.2.0", "unknown"],
)
def test_cutlass_headers_match_the_pin_only_when_they_are_that_release(headers, pin, matches) -> None:
    assert cutlass_matches_pin(headers, pin) is matches


def test_torch_and_wheels_options_are_checked_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--torch must be 'install' or 'existing'"):
        options.resolve({"torch": "system"}, env={}, cwd=tmp_path)
    with pytest.raises(UsageError, match="is not a folder"):
        options.resolve({"wheels": "no-such-folder"}, env={}, cwd=tmp_path)
    with pytest.raises(UsageError, match="is not an executable"):
        options.resolve({"python": "/no/such/python3"}, env={}, cwd=tmp_path)
    (tmp_path / "wheels").mkdir()
    cfg = options.resolve({"torch": "existing", "wheels": "wheels"}, env={}, cwd=tmp_path)
    assert cfg.installer == Installer(inherit_site=True, wheels=tmp_path / "wheels", uv_cache_dir=None)
    assert cfg.torch_choice == f"the torch already installed for {cfg.python} (--torch existing)"
