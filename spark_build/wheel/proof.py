"""Prove the wheel outside the build: a fresh venv holding the wheel and the torch the build
used, every compiled extension imported, every ELF file's libraries resolved (no CUDA 12
library in a CUDA 13 build), and the GPU code judged against the target GPU.

A fresh venv matters: the build venv holds the source tree's build requirements and could
hide a dependency the wheel forgot to declare.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import signal
import sys
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from packaging.version import Version
from rich.console import Console

from spark_build.arch.compat import ComputeCapability
from spark_build.durable import atomic_write_text, sha256_of
from spark_build.errors import HostProblem, StepFailed, UsageError
from spark_build.proc import Runner
from spark_build.venv import Argv, Installer, installed_packages, make_venv, missing_offline
from spark_build.wheel.archaudit import arch_audit, find_cuobjdump
from spark_build.wheel.audit import AuditReport
from spark_build.wheel.dispatch import VLLM_DISPATCH
from spark_build.wheel.installfail import read_install_failure
from spark_build.wheel.jitbill import wheel_jit_bill
from spark_build.wheel.linkage import SEARCH_PROBE, LibrarySearch, linkage_audit
from spark_build.wheel.serve import ServeOptions, ServeReport, find_cached_instruct_model, hf_hub_cache, serve_check
from spark_build.wheel.tinymodel import script_argv

# Imports the modules it is given in the fresh venv, each import caught on its own: first all of
# them in one process (one torch import, 25-30 s on a loaded machine, not one per extension); when
# that process dies, each in a process of its own, so an extension that kills the interpreter
# (SIGSEGV, abort) costs only its own result and is named. When a package's own __init__
# needs a third-party module that is not installed (offline: its runtime requirements were not
# all at hand), a compiled extension inside it is still loaded straight from its file (after
# torch, whose libraries it links), so the compile is proven even where `import vllm` cannot be.
# Any other failed extension is loaded from its file too, for the error it gives on its own:
# vLLM's `vllm_flash_attn/__init__.py` turns "libcuda.so.1: cannot open" into its own message.
# Without a module name it imports torch alone: the baseline that tells a crash of this host's
# interpreter from one of the wheel's modules.
_IMPORT_PROBE = """
import importlib, importlib.machinery, importlib.util, json, os, sys
out, own, names = sys.argv[1], set(sys.argv[2].split(",")), sys.argv[3:]
try:
    import torch  # noqa: F401  the extensions link against libtorch
except Exception:
    pass
def load_file(name):
    top, *rest = name.split(".")
    spec = importlib.util.find_spec(top)
    folder = os.path.join(list(spec.submodule_search_locations)[0], *rest[:-1])
    ext = importlib.machinery.PathFinder.find_spec(rest[-1], [folder])
    module = importlib.util.module_from_spec(ext)
    ext.loader.exec_module(module)
    return module
found = {}
for name in names:
    print("import probe: importing", name, flush=True)
    try:
        found[name] = {"ok": True, "file": getattr(importlib.import_module(name), "__file__", None)}
        continue
    except Exception as exc:
        entry = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
        if missing and missing.split(".")[0] not in own:
            entry["missing_module"] = missing
    if "." in name:
        print("import probe: loading", name, "from its file", flush=True)
        try:
            loaded = load_file(name).__file__
            if "missing_module" in entry:
                entry = {"ok": True, "file": loaded, "direct": True, "package_error": entry["error"]}
        except Exception as exc:
            entry["direct_error"] = f"{type(exc).__name__}: {exc}"
    found[name] = entry
with open(out, "w") as handle:
    json.dump(found, handle)
"""
_LAST_LINES = 5  # of a dead probe's output, in its result: where it died, in its own words


@dataclass(frozen=True)
class WheelProof:
    """What `prove_wheel` needs: the wheel, where to install it, and what to judge it by."""

    wheel: Path
    venv: Path
    python: str  # interpreter the fresh venv is made from
    requirements: tuple[str, ...]  # e.g. torch==2.9.0+cu130 — a source-built wheel no longer pins it
    index: str | None  # the extra index torch comes from; None: the package index alone (`validate_index`)
    installer: Installer  # the build's: same venv inheritance and package source
    modules: tuple[str, ...]  # the package and its compiled extensions
    cuda_home: Path
    cuda_major: int
    targets: tuple[str, ...]  # compute capabilities, e.g. ("12.1",)
    driver: bool = True  # an NVIDIA driver on this host: without one no CUDA extension can load
    serve: bool = False  # also start the server and ask it for completions (vLLM only)
    serve_model: str | None = None  # None: a small instruct model from the HF cache, else a tiny Llama
    unmet_list: Path | None = None  # with --wheels: where the requirements the folder lacks are written


@dataclass
class Proof(AuditReport):
    """The outcome of `prove_wheel`: results for summary.json, the audit reports to render, and
    the problems found (empty when the wheel checks out). Its problems are verdicts on the wheel
    alone: a failure of this host (a tool, the network) raises `HostProblem` instead."""

    results: dict[str, Any]
    reports: list[AuditReport]
    problems: list[str]

    def fix(self) -> str:
        """The failing audit's own fix (an official wheel built for other GPUs: compile for this
        one); for an install that found no requirement, where it could come from; for a failed
        import, where to look."""
        failed = [report for report in self.reports if report.problems]
        if failed and all(p.startswith(("linkage: ", "GPU code for ")) for p in self.problems):
            return failed[0].fix()
        if self.problems and self.problems[0].startswith(NOT_INSTALLABLE):
            return (
                "the index lacks a requirement of this wheel: wait until it is published there, or put it in a "
                "folder of wheels and pass --wheels DIR; the GPU-code table above still holds"
            )
        return "the linkage and GPU-code tables in the log show what is missing, from which CUDA, or for which GPU"

    def render(self, console: Console) -> None:
        for report in self.reports:
            report.render(console)


NOT_INSTALLABLE = "not installable from "


def prove_wheel(proof: WheelProof, runner: Runner, log: Path, *, step: str = "validate") -> Proof:
    """Audit the wheel's own files first — its GPU code, and what its ELF files link — then
    install it into a fresh venv, resolve that linkage where the venv's interpreter looks, and
    import every module. Every check runs even when an earlier one fails: a failed import is
    best explained by the linkage table, and an install that cannot finish leaves the GPU-code
    verdict standing. Raises `HostProblem` when this host cannot make a check."""
    python = proof.venv / "bin" / "python"
    installer = proof.installer

    def probe(interpreter: Path, code: str) -> dict[str, Any]:
        """Ask an interpreter (where it imports from, what it has); one that cannot answer is
        this host's problem, named by how it ended, never by the script it was given."""
        out = log.with_suffix(".probe.json")
        status, output = _run_reading(runner, [interpreter, "-c", code, out], log, step)
        if status != 0:
            raise HostProblem(
                f"the interpreter {interpreter} {died(status)} when asked about its packages: {tail(output)}",
                step=step,
                log=log,
                hint="run that interpreter by hand (`python -c 'import site'`): it cannot start on this host",
            )
        return dict(json.loads(out.read_text()))

    def run(argv: Argv) -> None:
        runner.run(argv, log=log, step=step, env=installer.env())

    # From the wheel's files alone, before the install, which can fail for reasons of its own.
    cuobjdump = find_cuobjdump(proof.cuda_home, os.environ, venv=Path(sys.executable))
    arch_reports = [
        arch_audit(proof.wheel, ComputeCapability.parse(cc), cuobjdump, dispatch=VLLM_DISPATCH, keep_ptx=True)
        for cc in proof.targets
    ]
    jit_bills = [wheel_jit_bill(report) for report in arch_reports]
    try:
        make_venv(installer, proof.python, proof.venv, seed=False, run=run, probe=probe)
    except StepFailed as err:  # before the wheel is touched: nothing here is the wheel's doing
        raise HostProblem(
            f"cannot make the validate venv {proof.venv} from {proof.python}: {err.message}",
            step=step,
            log=log,
            hint="check that --python runs and that the venv's folder is writable; this says nothing about the wheel",
        ) from err
    # Offline (`--wheels`): the runtime requirements neither the venv nor the folder has. Then the
    # wheel goes in without its dependencies and the import check says which could not be
    # proven, instead of failing the install on the first missing one.
    unmet = missing_offline(installer, [*wheel_requirements(proof.wheel), *proof.requirements], python, probe)
    if unmet and proof.unmet_list is not None:
        atomic_write_text(proof.unmet_list, "".join(f"{requirement}\n" for requirement in unmet))
    no_deps = ["--no-deps"] if unmet else []
    install = installer.install_argv(python, *no_deps, proof.wheel, *proof.requirements, index=proof.index)
    code, output = _run_reading(runner, install, log, step, env=installer.env())
    not_installed = None if code == 0 else _install_finding(output, proof, installer, log, step)
    if not_installed is not None:
        linkage = linkage_audit(proof.wheel, LibrarySearch(), proof.cuda_major, installed=False)
        found: dict[str, dict[str, Any]] = {}
    else:
        sys_path = probe(python, SEARCH_PROBE)["path"]
        linkage = linkage_audit(proof.wheel, LibrarySearch.for_interpreter(sys_path, os.environ), proof.cuda_major)
        found = _import_each(proof, python, runner, log, step)
    import_problems, import_notes, import_unproven = judge_imports(found, unmet=unmet, driver=proof.driver)
    if unmet:
        import_notes.insert(0, unmet_note(unmet, installer.wheels, proof.unmet_list))
    if linkage.needs_driver and not_installed is None:
        import_notes.append(
            f"{len(linkage.needs_driver)} ELF files link libcuda.so.1, the NVIDIA driver's, which this host lacks: "
            "their import check needs the driver and is inconclusive here, not failed (validate on the Spark)"
        )
    problems = [*([not_installed] if not_installed else []), *import_problems]
    problems += [f"linkage: {p}" for p in linkage.problems]
    problems += [f"GPU code for {r.target}: {p}" for r in arch_reports for p in r.problems]
    reports: list[AuditReport] = [linkage, *arch_reports, *jit_bills]
    _append_tables(log, reports)
    serve_report = None
    if proof.serve and not problems:
        serve_report = _serve(proof, runner, log, step)
        if not serve_report.passed:
            problems.append(f"serve: {serve_report.failure}")
    results = {
        "wheel_sha256": sha256_of(proof.wheel),
        "installed_ok": not_installed is None,
        "imports": {m: r["ok"] for m, r in found.items()},
        "imports_unproven": import_unproven,
        "installed": installed_packages(proof.venv),  # the torch it was proven with, for the install line
        "imports_direct": sorted(m for m, r in found.items() if r.get("direct")),
        "import_notes": import_notes,
        "unmet_requirements": unmet,
        "unmet_list": str(proof.unmet_list) if unmet and proof.unmet_list else None,
        "linkage": linkage.to_dict(),
        "arch": [r.to_dict() for r in arch_reports],
        "verdicts": {str(r.target): r.verdict.value for r in arch_reports},
        "jit_bill": {str(b.target): b.bill.to_dict() for b in jit_bills},
        "problems": problems,
        "serve": serve_report.to_dict() if serve_report is not None else None,
    }
    return Proof(results, reports, problems)


def _run_reading(
    runner: Runner, argv: Argv, log: Path, step: str, *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, str]:
    """Run through the runner (logged as every command is) without raising; the exit code and
    what the command printed, read back from the log (header and exit line left out)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = log.stat().st_size if log.exists() else 0
    code = runner.run(argv, log=log, step=step, env=env, cwd=cwd, check=False)
    with log.open("rb") as handle:
        handle.seek(start)
        lines = handle.read().decode("utf-8", "replace").splitlines()
    # The header's `+ argv` line spans as many lines as the arguments hold (a `-c` script).
    command = next((i for i, line in enumerate(lines) if line.startswith("+ ")), -1)
    body = lines[command + 1 + shlex.join(os.fspath(a) for a in argv).count("\n") :]
    if body and body[-1].startswith("# exit "):
        body = body[:-1]
    return code, "\n".join(body)


def _install_finding(output: str, proof: WheelProof, installer: Installer, log: Path, step: str) -> str:
    """An install that failed: a requirement nowhere to be had is the wheel's finding (returned);
    an index out of reach is this host's problem (`HostProblem`); a cause we cannot read is
    raised as the step's failure, with the install's last lines."""
    failure = read_install_failure(output)
    where = f"the wheel folder {installer.wheels}" if installer.wheels else proof.index or "the package index"
    if failure.unreachable is not None:
        raise HostProblem(
            f"cannot reach {where} to install {proof.wheel.name}: {failure.unreachable}",
            step=step,
            log=log,
            hint="check the network or the index (a proxy, PIP_INDEX_URL/UV_INDEX_URL), then run again; "
            "this says nothing about the wheel",
        )
    if failure.missing:
        return f"{NOT_INSTALLABLE}{where}: {'; '.join(failure.missing)}, which it does not have"
    last = [line for line in output.splitlines() if line.strip()][-3:]
    raise StepFailed(
        f"installing {proof.wheel.name} failed: {' / '.join(last) or 'no output'}",
        step=step,
        log=log,
        hint="the install's own message is at the end of the log",
    )


def _import_each(proof: WheelProof, python: Path, runner: Runner, log: Path, step: str) -> dict[str, dict[str, Any]]:
    """Import every module in one process; when that process dies or exits without an answer,
    import each in a process of its own, after the baseline (torch alone) proves the interpreter
    itself can start, so the module that kills it is named with how it died. An import that
    raises is caught and named within the shared process: it needs no second round."""
    script = log.with_suffix(".import_probe.py")
    atomic_write_text(script, _IMPORT_PROBE)
    own = ",".join(sorted({m.split(".")[0] for m in proof.modules}))
    answer = log.with_suffix(".imports.json")

    def one(*names: str) -> tuple[int, str, dict[str, Any] | None]:
        answer.unlink(missing_ok=True)
        code, output = _run_reading(runner, [python, script, answer, own, *names], log, step, cwd=proof.venv)
        return code, output, json.loads(answer.read_text()) if code == 0 and answer.is_file() else None

    _, _, shared = one(*proof.modules)
    if shared is not None:
        return shared
    code, output, _ = one()
    if code != 0:
        raise HostProblem(
            f"the probe interpreter {python} {died(code)} before importing any module of the wheel: {tail(output)}",
            step=step,
            log=log,
            hint="the interpreter (or its torch) cannot start on this host; this says nothing about the wheel",
        )
    found: dict[str, dict[str, Any]] = {}
    for module in proof.modules:
        code, output, answered = one(module)
        if answered is not None:
            found.update(answered)
        else:
            found[module] = {"ok": False, "error": f"the interpreter {died(code)}: {tail(output)}", "died": True}
    return found


def died(code: int) -> str:
    """How a process ended, in words: `died with SIGSEGV`, `exited with status 3`."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"died with {signal.Signals(-code).name}"
    return f"exited with status {code}"


def tail(output: str, count: int = _LAST_LINES) -> str:
    """The last lines a process printed, joined for one message: where it stopped."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return " / ".join(lines[-count:]) or "no output"


def unmet_note(unmet: Sequence[str], folder: Path | None, listed: Path | None) -> str:
    """What `import vllm` still needs offline, and how to fetch it into the folder at once."""
    first = ", ".join(unmet[:3]) + (" …" if len(unmet) > 3 else "")
    line = f"{len(unmet)} runtime requirements are not in the wheel folder {folder} ({first})"
    if listed is None:
        return f"{line}; all of them in validate.json (unmet_requirements)"
    where = shlex.quote(str(folder)) if folder else "DIR"
    return (
        f"{line}; the full list: {listed} (and validate.json); fetch them into the folder where an index "
        f"is reachable: pip download -d {where} -r {shlex.quote(str(listed))}"
    )


def wheel_requirements(wheel: Path) -> list[str]:
    """The `Requires-Dist` lines of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next((n for n in archive.namelist() if n.endswith(".dist-info/METADATA")), None)
        text = archive.read(metadata).decode("utf-8", "replace") if metadata else ""
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


_NO_DRIVER = re.compile(r"libcuda\.so(\.1)?: cannot open shared object file")


class ImportVerdict(NamedTuple):
    problems: list[str]  # the wheel's fault
    notes: list[str]
    unproven: list[str]  # modules this host cannot prove (no driver, or offline): inconclusive, not failed


def judge_imports(found: Mapping[str, Mapping[str, Any]], *, unmet: Sequence[str], driver: bool) -> ImportVerdict:
    """The import check's verdict. A module that fails only because a runtime requirement was
    knowingly left out (offline), or because this host has no NVIDIA driver (the error, or the
    error of its file loaded alone, is libcuda.so.1's), is not the wheel's fault: it is reported
    as unproven, with what it needs."""
    problems, notes, unproven = [], [], []
    for module, result in found.items():
        if result.get("ok"):
            if result.get("direct"):
                notes.append(f"{module} loaded from its file (its package needs: {result.get('package_error')})")
            continue
        error = str(result.get("error", ""))
        if unmet and result.get("missing_module"):
            needs = result["missing_module"]
            notes.append(f"import {module} not proven: needs {needs} (not at hand offline: {', '.join(unmet)})")
            unproven.append(module)
        elif not driver and _NO_DRIVER.search(error + str(result.get("direct_error", ""))):
            notes.append(
                f"import {module} not proven: it needs the NVIDIA driver (libcuda.so.1), which this host lacks"
            )
            unproven.append(module)
        else:
            problems.append(f"the installed wheel fails to import {module}: {error}")
    return ImportVerdict(problems, notes, unproven)


def _serve(proof: WheelProof, runner: Runner, log: Path, step: str) -> ServeReport:
    """Serve a small model from the fresh venv: a 200 from /health is not enough, so the check
    sends a real completion and chat completion (a server can die at its first request)."""
    python = proof.venv / "bin" / "python"
    model = proof.serve_model
    if model is None:
        cached = find_cached_instruct_model(hf_hub_cache(os.environ, Path.home()))
        if cached is not None:
            model = str(cached)
        else:
            # No Hugging Face cache (offline box): a tiny random-weight Llama proves the serving
            # path; it says nothing about output quality.
            tiny = proof.venv.parent / "tiny-llama"
            runner.run(script_argv(python, tiny), log=log, step=step)
            model = str(tiny)
    options = ServeOptions(model=model, python=python, workdir=proof.venv.parent / "serve")
    return serve_check(options, log=log.with_suffix(".serve.log"), on_group=runner.on_group, say=runner.sink.line)


def _append_tables(log: Path, reports: Sequence[AuditReport]) -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=160, force_terminal=False, color_system=None, markup=False)
    for report in reports:
        report.render(console)
    with log.open("a", encoding="utf-8") as handle:
        handle.write(buffer.getvalue())


def render_proof(results: Mapping[str, Any]) -> list[str]:
    """One line per check, for the run's notes."""
    linkage = results["linkage"]
    proven = sorted(m for m, ok in results["imports"].items() if ok)
    lines = [
        f"validate: imports ok: {', '.join(proven) or 'none proven on this host'}",
        f"validate: linkage ok: {len(linkage['libraries'])} libraries resolved, none from another CUDA major",
    ]
    lines += [f"validate: GPU code for compute capability {cc}: {v}" for cc, v in results["verdicts"].items()]
    for cc, bill in results.get("jit_bill", {}).items():
        if bill["lines"]:
            families = ", ".join(line["family"] for line in bill["lines"])
            lines.append(
                f"validate: PTX JIT at first load on {cc}: {bill['ptx_mb']} MB of PTX, ~{bill['jit_s']} s if every "
                f"module loads ({families})"
            )
    for arch in results["arch"]:
        unused = sorted({f["extension"] for f in arch["families"] if not f.get("used", True)})
        if unused:
            lines.append(f"validate: not used on {arch['target']} (vLLM never dispatches there): {', '.join(unused)}")
    lines += [f"validate: {note}" for note in results.get("import_notes", [])]
    serve = results.get("serve")
    if serve:
        eager = " (needed --enforce-eager)" if serve["enforce_eager_needed"] else ""
        lines.append(f"validate: served {serve['model']}: ready in {serve['time_to_ready_s']:.1f}s{eager}")
    return lines


def serve_decision(dist: str, gpu_caps: Sequence[str], target_caps: Sequence[str], wanted: bool) -> tuple[bool, str]:
    """Serve only where it can mean something: vLLM itself, on a machine with a GPU it is for."""
    if not wanted:
        return False, "serve check off (--no-serve)"
    if dist != "vllm":
        return False, f"serve check not applicable to {dist} (not vLLM)"
    if not gpu_caps:
        return False, "serve check skipped: no GPU on this machine (run invoke validate on the Spark)"
    if not set(gpu_caps) & set(target_caps):
        here = ", ".join(sorted(set(gpu_caps)))
        return False, f"serve check skipped: this GPU ({here}) cannot run a wheel built for {', '.join(target_caps)}"
    return True, "serve check on"


_EXTENSION_SUFFIX = re.compile(r"\.(abi3|cpython-[^./]+)\.so$")


def wheel_modules(names: Sequence[str]) -> tuple[str, ...]:
    """What a working install must import, read from the wheel's own file list: each top-level
    package, then every compiled extension module inside one (`vllm/_C.abi3.so` → `vllm._C`).
    Vendored libraries (`vllm.libs/libfoo.so`) are loaded by the extensions, not imported."""
    packages = sorted({n.split("/")[0] for n in names if n.count("/") == 1 and n.endswith("/__init__.py")})
    extensions = []
    for name in sorted(names):
        match = _EXTENSION_SUFFIX.search(name)
        if match and name.split("/")[0] in packages:
            extensions.append(name[: match.start()].replace("/", "."))
    return (*packages, *extensions)


def modules_of(wheel: Path) -> tuple[str, ...]:
    with zipfile.ZipFile(wheel) as archive:
        return wheel_modules(archive.namelist())


def cuda_major(torch_cuda: str, nvcc_version: Version | None) -> int:
    """The CUDA major the linkage audit holds a wheel to: `--torch-cuda` when it names one, else
    nvcc's (a CPU-torch example build still links against the toolkit it compiled with)."""
    if torch_cuda.isdigit():
        return int(torch_cuda)
    if nvcc_version is None:
        raise UsageError("cannot tell the CUDA major to audit against", hint="pass --torch-cuda 13")
    return nvcc_version.major
