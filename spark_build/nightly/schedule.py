"""Schedule the nightly wheel watch: a systemd user timer (preferred on DGX OS) or a crontab entry.

Rendering is pure (`systemd_units`, `cron_command`), so tests read the exact files a user gets;
installing is idempotent — one marked entry, replaced on every run — and the world (unit folder,
`systemctl`, the crontab, the clock) is injected. The scheduled command is absolute, uses the
project's venv and work dir, and appends its output to the logs folder: an unattended job that
mails its output (cron's default) or prints to nowhere is a job nobody reads.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from spark_build.errors import SparkBuildError, UsageError
from spark_build.nightly.watch import EXIT_CODES, Outcome, last_outcome

UNIT_NAME = "spark-build-nightly"
CRON_MARKER = "spark-build nightly (managed by `invoke schedule`)"
LOG_NAME = "nightly.log"


def default_unit_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user"


def parse_at(at: str) -> tuple[int, int]:
    """`HH:MM` (24 h, local time) → (hour, minute); anything else is a one-line usage error."""
    match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", at.strip())
    if not match:
        raise UsageError(f"--at {at!r} is not a time of day", hint="use 24-hour HH:MM, e.g. --at 03:30")
    return int(match.group(1)), int(match.group(2))


def next_run(at: str, now: datetime) -> datetime:
    """The next HH:MM after `now`, in `now`'s time zone — what both cron and OnCalendar= mean."""
    hour, minute = parse_at(at)
    candidate = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return candidate if candidate > now else candidate + timedelta(days=1)


def _env_word(key: str, value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) or "\n" in value or "\0" in value:
        raise UsageError(f"bad environment entry for the schedule: {key!r}")
    return f"{key}={value}"


def _systemd_environment(key: str, value: str) -> str:
    """`Environment="KEY=value"`: specifiers (`%`) doubled; `$` is literal in Environment=."""
    word = _env_word(key, value).replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"')
    return f'Environment="{word}"\n'


def _check_paths(command: Sequence[str], workdir: Path, log_dir: Path) -> None:
    """Timers and cron start with a bare environment and cwd: relative paths would resolve elsewhere."""
    if not command:
        raise UsageError("the scheduled command is empty")
    for what, path in (("command", Path(command[0])), ("work dir", workdir), ("log dir", log_dir)):
        if not path.is_absolute():
            raise UsageError(f"scheduled {what} must be an absolute path: {path}", hint="pass a resolved path")
    for arg in (*command, str(workdir), str(log_dir)):
        if "\n" in arg or "\0" in arg:
            raise UsageError(f"scheduled command argument holds a newline: {arg!r}")


# --------------------------------------------------------------------------- systemd


def _systemd_quote(arg: str) -> str:
    """One ExecStart= word: `%` is a unit specifier and `$` expands variables, so both are doubled."""
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _success_codes() -> str:
    return " ".join(str(EXIT_CODES[o]) for o in (Outcome.MIRRORED, Outcome.REBUILT, Outcome.SKIPPED_LOCKED))


def systemd_units(
    at: str,
    command: Sequence[str],
    workdir: Path,
    log_dir: Path,
    *,
    environment: Mapping[str, str] | None = None,
    name: str = UNIT_NAME,
) -> dict[str, str]:
    """The `.service` (oneshot) and `.timer` for a nightly at `at`.

    Persistent=true makes systemd run a night missed while the Spark was off at the next boot.

    `environment` (e.g. the installer's PATH) is how a rebuild at 03:30 finds the same nvcc, git
    and uv as an interactive build: user services start with systemd's minimal PATH.
    """
    hour, minute = parse_at(at)
    _check_paths(command, workdir, log_dir)
    env_lines = "".join(_systemd_environment(key, value) for key, value in (environment or {}).items())
    log = str(log_dir / LOG_NAME).replace("%", "%%")
    service = f"""\
[Unit]
Description=spark-build nightly: check the pinned vLLM wheel, mirror it or rebuild

[Service]
Type=oneshot
WorkingDirectory={str(workdir).replace("%", "%%")}
{env_lines}ExecStart={" ".join(_systemd_quote(arg) for arg in command)}
# mirrored, rebuilt and skipped-locked are normal nights, not unit failures
SuccessExitStatus={_success_codes()}
StandardOutput=append:{log}
StandardError=append:{log}
Nice=10
"""
    timer = f"""\
[Unit]
Description=Run spark-build nightly at {hour:02d}:{minute:02d}

[Timer]
OnCalendar=*-*-* {hour:02d}:{minute:02d}:00
Persistent=true
Unit={name}.service

[Install]
WantedBy=timers.target
"""
    return {f"{name}.service": service, f"{name}.timer": timer}


def parse_timer_at(timer_text: str) -> str | None:
    """The HH:MM an installed timer fires at, read back from its OnCalendar= line."""
    match = re.search(r"^OnCalendar=\*-\*-\* (\d\d):(\d\d):00\s*$", timer_text, re.MULTILINE)
    return f"{match.group(1)}:{match.group(2)}" if match else None


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    output: str


SystemctlRunner = Callable[[Sequence[str]], CommandResult]


def run_systemctl(argv: Sequence[str]) -> CommandResult:
    """The real runner; without systemctl the timer cannot exist, so say so and point at cron."""
    if shutil.which(argv[0]) is None:
        raise UsageError(
            f"{argv[0]} not found: this machine has no systemd to run a timer",
            hint="use `invoke schedule --cron` instead",
        )
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    return CommandResult(done.returncode, (done.stdout + done.stderr).strip())


def _systemctl(runner: SystemctlRunner, *args: str, check: bool = True) -> CommandResult:
    result = runner(["systemctl", "--user", *args])
    if check and result.returncode != 0:
        raise SparkBuildError(
            f"systemctl --user {' '.join(args)} failed ({result.returncode}): {result.output}",
            hint="a user systemd needs a login session or `loginctl enable-linger $USER`; or use --cron",
        )
    return result


def linger_enabled(user: str | None = None, linger_dir: Path = Path("/var/lib/systemd/linger")) -> bool:
    """Without lingering, a user timer only runs while the user is logged in — not at 03:30 on a idle box."""
    return (linger_dir / (user or os.environ.get("USER") or "")).is_file()


@dataclass(frozen=True)
class ScheduleResult:
    """What install/remove did, as lines for the user (plan-as-data: the task just prints them)."""

    changed: bool
    lines: tuple[str, ...]


def install_systemd(
    at: str,
    command: Sequence[str],
    workdir: Path,
    log_dir: Path,
    *,
    environment: Mapping[str, str] | None = None,
    unit_dir: Path | None = None,
    runner: SystemctlRunner = run_systemctl,
    name: str = UNIT_NAME,
    linger: Callable[[], bool] = linger_enabled,
) -> ScheduleResult:
    """Write (or rewrite) the two units and enable the timer; running it twice leaves one timer."""
    units = systemd_units(at, command, workdir, log_dir, environment=environment, name=name)
    unit_dir = unit_dir or default_unit_dir()
    if runner is run_systemctl and shutil.which("systemctl") is None:
        run_systemctl(["systemctl"])  # raises the one-line UsageError before any file is written
    unit_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    changed = False
    for filename, text in units.items():
        path = unit_dir / filename
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            tmp = path.with_name(f".{filename}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
            changed = True
    _systemctl(runner, "daemon-reload")
    _systemctl(runner, "enable", "--now", f"{name}.timer")
    lines = [f"systemd timer {name}.timer runs daily at {at} (units in {unit_dir}); output → {log_dir / LOG_NAME}"]
    if not linger():
        lines.append("note: run `loginctl enable-linger $USER` so the timer also fires while you are logged out")
    return ScheduleResult(changed, tuple(lines))


def remove_systemd(
    *, unit_dir: Path | None = None, runner: SystemctlRunner = run_systemctl, name: str = UNIT_NAME
) -> ScheduleResult:
    unit_dir = unit_dir or default_unit_dir()
    paths = [unit_dir / f"{name}.timer", unit_dir / f"{name}.service"]
    if not any(p.exists() for p in paths):
        return ScheduleResult(False, (f"no systemd timer {name}.timer installed",))
    _systemctl(runner, "disable", "--now", f"{name}.timer", check=False)  # may already be unloaded
    for path in paths:
        path.unlink(missing_ok=True)
    _systemctl(runner, "daemon-reload")
    return ScheduleResult(True, (f"removed systemd timer {name}.timer",))


# --------------------------------------------------------------------------- cron


def cron_command(
    command: Sequence[str], workdir: Path, log_dir: Path, *, environment: Mapping[str, str] | None = None
) -> str:
    """The crontab command: cd, run, append all output to the log — so cron has nothing to mail.

    We redirect rather than set MAILTO="": MAILTO applies to every entry below it in the
    user's crontab, and this tool must not change how their other jobs report. `%` means
    newline to cron; python-crontab writes it as `\\%` and reads it back, so it stays raw here.
    """
    _check_paths(command, workdir, log_dir)
    log = log_dir / LOG_NAME
    # cron's PATH is /usr/bin:/bin; `env` carries the installer's tools (nvcc, git, uv) into the run
    env = ["/usr/bin/env", *(_env_word(k, v) for k, v in environment.items())] if environment else []
    run = shlex.join([*env, *command])
    return f"cd {shlex.quote(str(workdir))} && {run} >> {shlex.quote(str(log))} 2>&1"


CrontabFactory = Callable[[], Any]


def user_crontab() -> Any:
    """The invoking user's real crontab (python-crontab drives the `crontab` program)."""
    if shutil.which("crontab") is None:
        raise UsageError("crontab not found: cron is not installed", hint="sudo apt-get install cron, or use --systemd")
    from crontab import CronTab

    return CronTab(user=True)


def _write(tab: Any) -> None:
    try:
        tab.write()
    except OSError as err:
        raise SparkBuildError(f"writing the crontab failed: {err}", hint="run `crontab -l` to see why") from err


def install_cron(
    at: str,
    command: Sequence[str],
    workdir: Path,
    log_dir: Path,
    *,
    environment: Mapping[str, str] | None = None,
    crontab: CrontabFactory = user_crontab,
) -> ScheduleResult:
    """Replace our marked entry (never add a second one); other entries stay exactly as they were."""
    hour, minute = parse_at(at)
    line = cron_command(command, workdir, log_dir, environment=environment)
    log_dir.mkdir(parents=True, exist_ok=True)
    tab = crontab()
    before = [(str(job.slices), job.command) for job in tab.find_comment(CRON_MARKER)]
    tab.remove_all(comment=CRON_MARKER)
    job = tab.new(command=line, comment=CRON_MARKER)
    job.setall(f"{minute} {hour} * * *")
    _write(tab)
    changed = before != [(str(job.slices), job.command)]
    return ScheduleResult(
        changed,
        (
            f"crontab entry runs daily at {hour:02d}:{minute:02d}; output → {log_dir / LOG_NAME}",
            "note: cron does not catch up a missed night (the machine was off); the systemd timer does",
        ),
    )


def remove_cron(*, crontab: CrontabFactory = user_crontab) -> ScheduleResult:
    tab = crontab()
    if not list(tab.find_comment(CRON_MARKER)):
        return ScheduleResult(False, ("no spark-build crontab entry installed",))
    tab.remove_all(comment=CRON_MARKER)
    _write(tab)
    return ScheduleResult(True, ("removed the spark-build crontab entry",))


def cron_at(tab: Any) -> str | None:
    """HH:MM of our installed entry, read back from its minute and hour fields."""
    for job in tab.find_comment(CRON_MARKER):
        minute, hour = str(job.minute), str(job.hour)
        if minute.isdigit() and hour.isdigit():
            return f"{int(hour):02d}:{int(minute):02d}"
    return None


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class ScheduleStatus:
    """Where the nightly stands: which scheduler, when next, how the last night went."""

    kind: str | None  # "systemd", "cron" or None
    at: str | None
    next_run: datetime | None
    last: dict[str, Any] | None

    def after_failure(self) -> str:
        """What happens after a failed night — only a schedule that exists tries again by itself."""
        if self.kind is None:
            return "nothing is scheduled: run invoke nightly again, or invoke schedule --at 03:30"
        when = self.next_run.strftime("%Y-%m-%d %H:%M").strip() if self.next_run else f"daily at {self.at}"
        return f"the next scheduled run ({self.kind}, {when}) tries again"

    def lines(self) -> list[str]:
        if self.kind is None:
            out = ["schedule: not installed (invoke schedule --at 03:30)"]
        else:
            when = self.next_run.strftime("%Y-%m-%d %H:%M %Z").strip() if self.next_run else "unknown"
            out = [f"schedule: {self.kind}, daily at {self.at}; next run {when}"]
        if self.last is None:
            out.append("last run: none recorded")
        else:
            last = self.last
            out.append(f"last run: {last.get('outcome')} at {last.get('finished')} — {last.get('message')}")
        return out


def schedule_status(
    *,
    history_path: Path,
    clock: Callable[[], datetime] = lambda: datetime.now().astimezone(),
    unit_dir: Path | None = None,
    crontab: CrontabFactory | None = user_crontab,
    name: str = UNIT_NAME,
) -> ScheduleStatus:
    """Read back what is installed (timer first, then crontab) and the last history line."""
    last = last_outcome(history_path)
    timer = (unit_dir or default_unit_dir()) / f"{name}.timer"
    kind, at = None, None
    if timer.is_file():
        kind, at = "systemd", parse_timer_at(timer.read_text(encoding="utf-8"))
    elif crontab is not None:
        try:
            at = cron_at(crontab())
        except (UsageError, OSError):
            at = None  # no cron on this machine: then nothing is scheduled there
        kind = "cron" if at else None
    return ScheduleStatus(kind, at, next_run(at, clock()) if at else None, last)
