"""Build options: defaults ← invoke.yaml ← SPARK_BUILD_* environment ← command line, resolved once.

Everything downstream reads the frozen `BuildConfig`; nothing re-reads the environment. An
unknown key or a bad value is rejected here, with the nearest valid name suggested, before
anything is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from spark_build.compile.cache_mode import DEFAULT_SIZE_LIMIT, CacheMode, parse_cache_mode, parse_size_limit
from spark_build.compile.cache_plan import tool_for
from spark_build.compile.distcache import parse_scheduler_url
from spark_build.errors import UsageError
from spark_build.layout import Workdir, shared_compiler_cache
from spark_build.upstream.facts import TORCH_CU130_INDEX
from spark_build.upstream.versions import NEWEST_TORCH
from spark_build.venv import Installer

VLLM_UPSTREAM = "https://github.com/vllm-project/vllm.git"
# The default --ref, pinned here and nowhere else. Policy: the newest vLLM release that
# spark-build has built end to end and validated on a DGX Spark (benchmarks/RESULTS.md); it moves
# only with such a build, never by itself. `--ref latest` follows upstream's newest release tag,
# `--ref main` its development branch; docs/recipes.md says what each release needs.
VLLM_DEFAULT_REF = "v0.13.0"
ENV_PREFIX = "SPARK_BUILD_"
# The test suite's own variables (SPARK_BUILD_TEST_MIRROR, README "Tests"): a developer who
# exports one to run the tests is not giving the build an option with a typo.
TEST_ENV_PREFIX = "SPARK_BUILD_TEST_"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
TorchSource = Literal["install", "existing"]
TORCH_SOURCES: tuple[TorchSource, ...] = ("install", "existing")
NinjaChoice = Literal["scheduling", "stock"]
NINJA_CHOICES: tuple[NinjaChoice, ...] = ("scheduling", "stock")
# The example upstream is built at this tag unless --ref says otherwise.
EXAMPLE_DEFAULT_REF = "v0.2.0"


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """One build's inputs. Paths are absolute once resolved."""

    workdir: Path
    repo: str
    ref: str
    arch: str | None
    jobs: int | None
    nvcc_threads: int | None
    mem_budget: int | None
    mem_reserve: int
    python: str
    torch_index: str
    torch_packages: tuple[str, ...]
    torch_cuda: str
    torch: TorchSource  # "install": torch_packages from torch_index; "existing": --python's own torch
    ninja: NinjaChoice  # "scheduling": ours, longest objects first (vLLM releases); "stock": the venv's
    wheels: Path | None  # a local folder every install reads instead of an index
    cuda_home: Path
    wheelhouse: Path
    logs_dir: Path
    patches_dir: Path
    uv_cache_dir: Path | None
    build_type: str
    serve_model: str | None
    cache: CacheMode
    cache_size: int
    cache_dir: Path | None
    dist: str | None
    dist_token_file: Path | None
    source_mirrors: Mapping[str, str]
    offline: bool
    cutlass_from_package: bool
    example: bool
    no_patches: bool
    no_serve: bool
    resume: bool
    dry_run: bool
    debug: bool
    prs: tuple[PullRequest, ...] = ()  # --pr: upstream pull requests applied on top of the ref
    patch_files: tuple[Path, ...] = ()  # --patch: local changes applied on top of the ref
    # Options the user left unset that the build reads from the source at --ref instead
    # ("torch_packages", "torch_index": its requirements/cuda.txt pin and the index serving it).
    from_source: tuple[str, ...] = dataclasses.field(default=(), metadata={"derived": True})

    @property
    def layout(self) -> Workdir:
        return Workdir(self.workdir)

    @property
    def state_file(self) -> Path:
        return self.layout.state_file

    @property
    def installer(self) -> Installer:
        return Installer(inherit_site=self.torch == "existing", wheels=self.wheels, uv_cache_dir=self.uv_cache_dir)

    @property
    def torch_choice(self) -> str:
        """Which torch the build compiles against, and why — for `--dry-run` and the log."""
        if self.torch == "existing":
            return f"the torch already installed for {self.python} (--torch existing)"
        source = f"the wheel folder {self.wheels}" if self.wheels else self.torch_index
        return f"{' '.join(self.torch_packages)} from {source}"


# Keys a user may set in invoke.yaml (`spark_build:` section) or as SPARK_BUILD_<KEY>.
SETTABLE = tuple(f.name for f in dataclasses.fields(BuildConfig) if not f.metadata.get("derived"))
_BOOLEANS = {"example", "no_patches", "no_serve", "resume", "dry_run", "debug", "offline", "cutlass_from_package"}
_PATHS = {
    "workdir",
    "cuda_home",
    "wheelhouse",
    "logs_dir",
    "patches_dir",
    "uv_cache_dir",
    "cache_dir",
    "dist_token_file",
    "wheels",
}
_BUILD_TYPES = ("Release", "RelWithDebInfo", "Debug", "MinSizeRel")


def defaults(env: Mapping[str, str]) -> dict[str, Any]:
    """Sane defaults for a DGX Spark: CUDA 13 torch, vLLM's release tag, the GPU's own arch."""
    return {
        "workdir": "work",
        "repo": VLLM_UPSTREAM,
        "ref": VLLM_DEFAULT_REF,
        "arch": None,
        "jobs": None,
        "nvcc_threads": None,
        "mem_budget": None,
        # Kept free for the OS, the desktop and the GPU driver's own use of unified memory.
        "mem_reserve": "4G",
        "python": sys.executable,
        "torch_index": None,  # the index with CUDA 13 wheels of the source's torch pin (steps.sourceplan)
        "torch_packages": None,  # the pins of the --ref source's requirements/cuda.txt (steps.sourceplan)
        "torch_cuda": "13",
        "torch": "install",
        "ninja": "scheduling",
        "wheels": None,
        "cuda_home": env.get("CUDA_HOME") or "/usr/local/cuda",
        "wheelhouse": None,
        "logs_dir": None,  # WORKDIR/logs
        "patches_dir": str(PROJECT_ROOT / "patches"),
        "uv_cache_dir": None,
        "build_type": "Release",
        "serve_model": None,
        "cache": "auto",
        "cache_size": DEFAULT_SIZE_LIMIT,
        "cache_dir": None,
        "dist": None,
        "dist_token_file": None,
        # name or URL of an external project → a local git repo, bundle or URL to fetch it from
        "source_mirrors": {},
        "offline": False,
        "cutlass_from_package": False,
        "example": False,
        "no_patches": False,
        "no_serve": False,
        "resume": False,
        "dry_run": False,
        "debug": False,
        "prs": None,
        "patch_files": None,
    }


def _suggest(name: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(choices)}"


def _reject_unknown(source: str, keys: Mapping[str, Any]) -> None:
    for key in keys:
        if key not in SETTABLE:
            raise UsageError(f"unknown option '{key}' in {source}", hint=_suggest(key, SETTABLE))


def from_env(env: Mapping[str, str]) -> dict[str, str]:
    """SPARK_BUILD_<KEY> variables; an unknown one is a typo worth stopping for."""
    ours = (k for k in env if k.startswith(ENV_PREFIX) and not k.startswith(TEST_ENV_PREFIX))
    found = {k[len(ENV_PREFIX) :].lower(): env[k] for k in ours}
    _reject_unknown(f"the environment ({ENV_PREFIX}*)", found)
    return found


def _positive_int(option: str, value: Any, *, allow_auto: bool) -> int | None:
    if value is None or (allow_auto and str(value).strip().lower() == "auto"):
        return None
    text = str(value).strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    auto = " or 'auto'" if allow_auto else ""
    raise UsageError(
        f"--{option.replace('_', '-')} must be a positive whole number{auto}, got '{value}'",
        hint=f"for example --{option.replace('_', '-')} 8",
    )


def _boolean(option: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise UsageError(f"{option} must be true or false, got '{value}'", hint=f"set {option}=true")


def _torch_cuda(value: Any) -> str:
    text = str(value).strip().lower()
    if text == "cpu" or (text.isdigit() and int(text) >= 11):
        return text
    raise UsageError(
        f"--torch-cuda must be a CUDA major version (e.g. 13) or 'cpu', got '{value}'",
        hint="the DGX Spark needs --torch-cuda 13",
    )


_Choice = TypeVar("_Choice", bound=str)


def _one_of(option: str, value: Any, choices: tuple[_Choice, ...], hint: str) -> _Choice:
    """An option whose value is one word of `choices`, case-insensitive; else bad input naming them."""
    text = str(value).strip().lower()
    for choice in choices:
        if text == choice:
            return choice
    named = " or ".join(f"'{c}'" for c in choices)
    raise UsageError(f"--{option} must be {named}, got '{value}'", hint=hint)


def _torch_source(value: Any) -> TorchSource:
    hint = "--torch existing --python /opt/torch/.venv/bin/python builds against that interpreter's torch"
    return _one_of("torch", value, TORCH_SOURCES, hint)


def _ninja_choice(value: Any) -> NinjaChoice:
    hint = "--ninja stock compiles with the build venv's Ninja, objects in manifest order"
    return _one_of("ninja", value, NINJA_CHOICES, hint)


def _wheel_folder(path: Path | None) -> Path | None:
    if path is not None and not path.is_dir():
        raise UsageError(f"--wheels {path} is not a folder", hint="name a folder of .whl files (pip download -d DIR …)")
    return path


_MaybePath = TypeVar("_MaybePath", Path, Path | None)


def _folder(option: str, path: _MaybePath) -> _MaybePath:
    """A folder spark-build will create or write into: refused when it, or a parent of it, is a
    file — found here, not as a NotADirectoryError at publish after an hour's build."""
    if path is not None:
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            where = "" if blocker == path else f": {blocker}"
            raise UsageError(
                f"--{option.replace('_', '-')} {path}{where} is a file, not a folder", hint="name a folder"
            )
    return path


def _serve_model(value: Any, base: Path) -> str | None:
    """`--serve-model` written as a path (`/`, `./`, `~`) must be a model folder that exists,
    made absolute for the server; a Hugging Face name (`org/model`) is left to the serve check."""
    if not value:
        return None
    model = str(value)
    if not model.startswith(("/", ".", "~")):
        return model
    folder = (base / Path(model).expanduser()).resolve()
    if not (folder / "config.json").is_file():
        raise UsageError(
            f"--serve-model {model} is not a model folder (no config.json there)",
            hint="name a local model folder or a cached Hugging Face model, e.g. Qwen/Qwen2.5-0.5B-Instruct",
        )
    return str(folder)


def _compiler_cache_dir(given: Path | None, mode: CacheMode, dist: str | None) -> Path | None:
    """`--cache-dir`, else ccache's cache shared by all of this user's workdirs, so a new workdir
    starts warm. sccache (only with --dist) keeps its per-workdir default: its server's socket
    lives in the cache folder, and two builds must not share one server."""
    if given is not None:
        return given
    return shared_compiler_cache() if tool_for(mode, dist) == "ccache" else None


def _interpreter(python: str) -> str:
    """`--python` as an absolute path: a typo stops here, not after the venv step wiped the
    finished build's venv."""
    found = shutil.which(python)
    if found is None:
        raise UsageError(
            f"--python {python} is not an executable", hint="name a Python 3 interpreter, e.g. /usr/bin/python3"
        )
    return str(Path(found).absolute())


def resolve(
    cli: Mapping[str, Any],
    file: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    cwd: Path | None = None,
) -> BuildConfig:
    """Merge the layers, validate every value once, and return the frozen config."""
    merged = _merged(cli, file, os.environ if env is None else env)
    base = cwd or Path.cwd()
    paths = _paths(merged, base)
    workdir = _folder("workdir", paths["workdir"])
    assert workdir is not None
    repo = merged["repo"] or str(Workdir(workdir).example_upstream)
    ref = _ref(merged["ref"])
    build_type = _build_type(merged["build_type"])
    packages = _torch_package_list(merged["torch_packages"])
    dist = _dist(merged["dist"], paths["dist_token_file"])
    cache = parse_cache_mode(str(merged["cache"]))
    arch = _arch(merged["arch"])

    return BuildConfig(
        workdir=workdir,
        repo=_repo(repo, base, given=merged["repo"] is not None),
        ref=ref,
        arch=arch,
        jobs=_positive_int("jobs", merged["jobs"], allow_auto=True),
        nvcc_threads=_positive_int("nvcc_threads", merged["nvcc_threads"], allow_auto=True),
        mem_budget=_mem_budget(merged["mem_budget"]),
        mem_reserve=_mem_reserve(merged["mem_reserve"]),
        python=_interpreter(str(merged["python"])),
        torch_index=_torch_index(str(merged["torch_index"] or TORCH_CU130_INDEX), base),
        torch_packages=packages,
        torch_cuda=_torch_cuda(merged["torch_cuda"]),
        torch=_torch_source(merged["torch"]),
        ninja=_ninja_choice(merged["ninja"]),
        wheels=_wheel_folder(paths["wheels"]),
        cuda_home=paths["cuda_home"] or Path("/usr/local/cuda"),
        wheelhouse=_folder("wheelhouse", paths["wheelhouse"] or Workdir(workdir).wheelhouse),
        logs_dir=_folder("logs_dir", paths["logs_dir"] or Workdir(workdir).logs),
        patches_dir=paths["patches_dir"] or PROJECT_ROOT / "patches",
        uv_cache_dir=_folder("uv_cache_dir", paths["uv_cache_dir"]),
        build_type=build_type,
        serve_model=_serve_model(merged["serve_model"], base),
        cache=cache,
        cache_size=parse_size_limit(str(merged["cache_size"])),
        cache_dir=_folder("cache_dir", _compiler_cache_dir(paths["cache_dir"], cache, dist)),
        dist=dist,
        dist_token_file=paths["dist_token_file"],
        source_mirrors=_mirrors(merged["source_mirrors"], base),
        offline=merged["offline"],
        cutlass_from_package=merged["cutlass_from_package"],
        example=merged["example"],
        no_patches=merged["no_patches"],
        no_serve=merged["no_serve"],
        resume=merged["resume"],
        dry_run=merged["dry_run"],
        debug=merged["debug"],
        prs=tuple(parse_pr(text) for text in _words(merged["prs"])),
        patch_files=tuple(_patch_file(text, base) for text in _words(merged["patch_files"])),
        from_source=tuple(k for k in ("torch_packages", "torch_index") if merged[k] is None),
    )


def _merged(cli: Mapping[str, Any], file: Mapping[str, Any] | None, env: Mapping[str, str]) -> dict[str, Any]:
    """Defaults ← invoke.yaml ← environment ← command line, an unknown key in a layer rejected,
    booleans read as booleans, and the example's own defaults where vLLM's were left alone."""
    file = _file_layer(file)
    merged: dict[str, Any] = defaults(env)
    merged.update({k: v for k, v in file.items() if v is not None})
    merged.update(from_env(env))
    _reject_unknown("the command line", cli)
    merged.update({k: v for k, v in cli.items() if v is not None and v is not False})
    for key in _BOOLEANS:
        merged[key] = _boolean(key, merged[key])
    if merged["example"]:
        # The built-in example stands in for vLLM where a GB10 is absent: its upstream is
        # generated inside the workdir unless the user points --repo elsewhere.
        if merged["repo"] == VLLM_UPSTREAM:
            merged["repo"] = None
        if merged["ref"] == VLLM_DEFAULT_REF:
            merged["ref"] = EXAMPLE_DEFAULT_REF
    return merged


# What invoke.yaml may give beyond one plain value, and an example of it for the error's fix.
_FILE_SHAPES: Mapping[str, tuple[str, str]] = {
    "torch_packages": ("a requirement or a list of them", "'torch==2.9.0 torchvision==0.24.0'"),
    "source_mirrors": ("a mapping of project names to paths", "{cutlass: /mirror/cutlass.bundle}"),
    "prs": ("a pull request or a list of them", "[12345, 'https://github.com/vllm-project/vllm/pull/23456']"),
    "patch_files": ("a patch file or a list of them", "[fixes/gb10-moe.patch]"),
}


def _fits_file_shape(key: str, value: Any) -> bool:
    if value is None or isinstance(value, str):
        return True
    if key == "torch_packages":
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    if key == "source_mirrors":
        return isinstance(value, Mapping)
    if key in ("prs", "patch_files"):
        return isinstance(value, (int, list)) and all(isinstance(item, (str, int)) for item in _words(value))
    return isinstance(value, (int, float, bool))


def _file_layer(file: Any) -> dict[str, Any]:
    """invoke.yaml's `spark_build:` section with its shape checked: YAML reads `torch_packages: 5`
    as a number and `spark_build: [1, 2]` as a list, which would otherwise surface later as a
    TypeError traceback."""
    if file is None:
        return {}
    if not isinstance(file, Mapping):
        raise UsageError(
            f"invoke.yaml's spark_build section must map option names to values, got {file!r}",
            hint="write `spark_build:` then one indented `option: value` line each (see examples/example-cpu.yaml)",
        )
    _reject_unknown("invoke.yaml (spark_build section)", file)
    for key, value in file.items():
        if not _fits_file_shape(key, value):
            wanted, example = _FILE_SHAPES.get(key, ("one value, not a list or mapping", "VALUE"))
            raise UsageError(f"{key} in invoke.yaml must be {wanted}, got {value!r}", hint=f"{key}: {example}")
    return dict(file)


def _paths(merged: Mapping[str, Any], base: Path) -> dict[str, Path | None]:
    """Every path option absolute (relative to `base`, `~` expanded); empty means unset."""
    paths: dict[str, Path | None] = {}
    for key in _PATHS:
        value = merged[key]
        paths[key] = None if value in (None, "") else (base / Path(str(value)).expanduser()).resolve()
    return paths


def _ref(value: Any) -> str:
    ref = str(value).strip()
    if not ref:
        raise UsageError("--ref must name a tag, branch or commit", hint="for example --ref v0.13.0")
    return ref


def _build_type(value: Any) -> str:
    build_type = str(value)
    if build_type not in _BUILD_TYPES:
        raise UsageError(f"unknown build type '{build_type}'", hint=_suggest(build_type, _BUILD_TYPES))
    return build_type


def _torch_package_list(value: Any) -> tuple[str, ...]:
    """`--torch-packages` as a list (spaces or commas); unset, the newest until the build reads
    the pins of the source at `--ref` (`from_source`, steps.sourceplan)."""
    packages = NEWEST_TORCH if value is None else value
    if isinstance(packages, str):
        packages = packages.replace(",", " ").split()
    if not packages:
        raise UsageError("--torch-packages is empty", hint="for example --torch-packages 'torch torchvision'")
    return tuple(str(p) for p in packages)


def _dist(value: Any, token_file: Path | None) -> str | None:
    dist = parse_scheduler_url(str(value)) if value else None
    if dist and token_file is None:
        raise UsageError(
            "--dist needs the scheduler's client token",
            hint="copy client-token from the scheduler's machine and pass --dist-token-file PATH",
        )
    return dist


def _arch(value: Any) -> str | None:
    """`--arch` stripped; blank is unset (this GPU's arch)."""
    return (str(value).strip() or None) if value is not None else None


def _mem_budget(value: Any) -> int | None:
    if value is None or str(value).strip().lower() == "auto":
        return None
    from spark_build.sizes import parse_mem_size

    return parse_mem_size(str(value))


@dataclasses.dataclass(frozen=True)
class PullRequest:
    """An upstream pull request to apply (`--pr`): its number, and the repository a URL names
    (None: the build's --repo)."""

    number: int
    repo: str | None = None

    @property
    def label(self) -> str:
        return f"PR #{self.number}"

    @property
    def version_label(self) -> str:
        """The local version part a wheel with this change carries: `0.13.0+pr12345…`."""
        return f"pr{self.number}"

    def __str__(self) -> str:
        return f"{self.repo}#{self.number}" if self.repo else str(self.number)


_PR_URL = re.compile(r"^https://github\.com/(?P<owner>[\w.-]+)/(?P<repo>[\w.-]+)/pull/(?P<number>\d+)/?$")


def parse_pr(text: str) -> PullRequest:
    """`12345` or `https://github.com/vllm-project/vllm/pull/12345`; anything else is bad input."""
    value = str(text).strip()
    if value.isdigit() and int(value) > 0:
        return PullRequest(int(value))
    match = _PR_URL.match(value)
    if match:
        return PullRequest(int(match["number"]), f"https://github.com/{match['owner']}/{match['repo']}.git")
    raise UsageError(
        f"--pr {text!r} is neither a pull request number nor a GitHub pull request URL",
        hint="give --pr 12345 or --pr https://github.com/vllm-project/vllm/pull/12345",
    )


def _words(value: Any) -> list[str]:
    """A repeatable option: a list (command line, invoke.yaml) or one string of items separated
    by spaces or commas (the environment)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(item) for item in value]
    return [word for word in re.split(r"[\s,]+", str(value)) if word]


def _patch_file(text: str, base: Path) -> Path:
    path = (base / Path(text).expanduser()).resolve()
    if not path.is_file():
        raise UsageError(f"--patch {text}: no such file", hint="give the path of a unified diff (git diff, .patch)")
    return path


def _mirrors(value: Any, base: Path) -> dict[str, str]:
    """`{name: where}` from invoke.yaml, or `name=where,name=where` from the environment."""
    if isinstance(value, str):
        pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
        if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
            raise UsageError(
                f"source_mirrors must be name=path pairs, got '{value}'",
                hint="e.g. SPARK_BUILD_SOURCE_MIRRORS=qutlass=/mirror/qutlass.bundle,flashmla=/mirror/FlashMLA.bundle",
            )
        value = {k.strip(): v.strip() for k, v in pairs}
    if not isinstance(value, Mapping):
        raise UsageError("source_mirrors must map project names to paths or URLs", hint="see README.md")
    return {str(k): _normalise_repo(str(v), base) for k, v in value.items()}


def _mem_reserve(value: Any) -> int:
    from spark_build.sizes import parse_mem_size

    return parse_mem_size(str(value), option="--mem-reserve", allow_zero=True)


def _normalise_repo(repo: str, base: Path) -> str:
    """A local path becomes absolute so the clone works from any directory; URLs stay as given."""
    if "://" in repo or repo.startswith("git@"):
        return repo
    return str((base / Path(repo).expanduser()).resolve())


def _repo(repo: str, base: Path, *, given: bool) -> str:
    """A local `--repo` must be a git repository or bundle: git's own complaint about anything
    else arrives garbled. The example's generated upstream (not `given`) is made later."""
    resolved = _normalise_repo(repo, base)
    if given and "://" not in resolved and not resolved.startswith("git@") and not _is_git_source(Path(resolved)):
        what = "is not a git repository or bundle" if Path(resolved).exists() else "does not exist"
        raise UsageError(
            f"--repo {resolved} {what}",
            hint="name a git URL, or the path of a local clone or bundle of the source",
        )
    return resolved


def _is_git_source(path: Path) -> bool:
    """What `git ls-remote PATH` reads: a work tree (`.git` folder or file), a bare repository
    (HEAD and objects/), or a bundle (its first line says so)."""
    if path.is_dir():
        return (path / ".git").exists() or ((path / "HEAD").is_file() and (path / "objects").is_dir())
    if path.is_file():
        with path.open("rb") as handle:
            return handle.read(16).startswith((b"# v2 git bundle", b"# v3 git bundle"))
    return False


def _torch_index(index: str, base: Path) -> str:
    """`--torch-index` as uv will read it — an http(s) URL, or a local folder of wheels (a path
    or a file:// URL) — refused here when uv could not read it, before the venv step wipes the
    finished build's venv."""
    scheme, sep, rest = index.partition("://")
    if not sep:
        folder = (base / Path(index).expanduser()).resolve()
    elif scheme.lower() == "file":
        folder = Path(rest)
    elif scheme.lower() in ("http", "https"):
        return index
    else:
        raise UsageError(
            f"--torch-index {index}: uv cannot read a '{scheme}' URL",
            hint="use an http(s) index URL, or a local folder of wheels",
        )
    if not folder.is_dir():
        raise UsageError(
            f"--torch-index {index} is not a folder",
            hint="name a folder of torch wheels, or an index URL such as https://download.pytorch.org/whl/cu130",
        )
    return index if sep else str(folder)
