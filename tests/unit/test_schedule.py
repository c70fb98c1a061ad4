"""`invoke schedule`: the files a user gets, read back; installing twice leaves one entry; removing
leaves none; status tells the next run and how the last night went (systemctl and the crontab
faked; the real crontab is in tests/integration/test_schedule.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from crontab import CronTab

from spark_build.errors import SparkBuildError, UsageError
from spark_build.nightly.schedule import (
    CRON_MARKER,
    CommandResult,
    cron_at,
    cron_command,
    install_cron,
    install_systemd,
    next_run,
    parse_at,
    parse_timer_at,
    remove_cron,
    remove_systemd,
    schedule_status,
    systemd_units,
)
from spark_build.nightly.watch import append_history

WORK = Path("/srv/spark work")

LOGS = WORK / "logs"

COMMAND = [
    "/srv/spark work/.venv/bin/invoke",
    "--search-root",
    "/srv/spark work",
    "nightly",
    "--notify",
    "x%y",
]

TZ = timezone(timedelta(hours=1))


# --------------------------------------------------------------------------- --at and next run


@pytest.mark.parametrize(("at", "expected"), [("03:30", (3, 30)), ("3:05", (3, 5)), ("23:59", (23, 59))])
def test_at_accepts_24_hour_times(at: str, expected: tuple[int, int]) -> None:
    assert parse_at(at) == expected


@pytest.mark.parametrize("at", ["24:00", "03:60", "0330", "3.30", "03:30pm", "", "03:30:00"])
def test_at_rejects_anything_else_with_a_one_line_usage_error(at: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_at(at)
    assert caught.value.exit_code == 2
    assert "HH:MM" in (caught.value.hint or "") and "\n" not in caught.value.message


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (datetime(2026, 3, 1, 2, 0, tzinfo=TZ), datetime(2026, 3, 1, 3, 30, tzinfo=TZ)),
        (datetime(2026, 3, 1, 3, 30, tzinfo=TZ), datetime(2026, 3, 2, 3, 30, tzinfo=TZ)),
        (datetime(2026, 12, 31, 23, 0, tzinfo=TZ), datetime(2027, 1, 1, 3, 30, tzinfo=TZ)),
    ],
    ids=["later-today", "exactly-now-means-tomorrow", "over-new-year"],
)
def test_next_run_is_the_next_occurrence_of_the_time(now: datetime, expected: datetime) -> None:
    assert next_run("03:30", now) == expected


# --------------------------------------------------------------------------- systemd


def test_systemd_units_are_a_oneshot_service_and_a_persistent_daily_timer() -> None:
    units = systemd_units("03:30", COMMAND, WORK, LOGS, environment={"PATH": "/usr/local/cuda/bin:/usr/bin"})
    service, timer = units["spark-build-nightly.service"], units["spark-build-nightly.timer"]

    assert "Type=oneshot\n" in service
    assert "WorkingDirectory=/srv/spark work\n" in service
    assert (
        'ExecStart="/srv/spark work/.venv/bin/invoke" --search-root "/srv/spark work" nightly --notify x%%y\n'
        in service
    )
    assert 'Environment="PATH=/usr/local/cuda/bin:/usr/bin"\n' in service
    assert "StandardOutput=append:/srv/spark work/logs/nightly.log\n" in service
    assert "StandardError=append:/srv/spark work/logs/nightly.log\n" in service
    assert "SuccessExitStatus=10 11 75\n" in service
    assert "OnCalendar=*-*-* 03:30:00\n" in timer
    assert "Persistent=true\n" in timer
    assert "Unit=spark-build-nightly.service\n" in timer
    assert "WantedBy=timers.target\n" in timer
    assert parse_timer_at(timer) == "03:30"


def test_a_relative_command_path_is_refused() -> None:
    with pytest.raises(UsageError, match="absolute"):
        systemd_units("03:30", [".venv/bin/invoke", "nightly"], WORK, LOGS)


class FakeSystemctl:
    """Stand-in for `systemctl --user` (no systemd user session in this sandbox): records each call."""

    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, argv: Sequence[str]) -> CommandResult:
        self.calls.append(list(argv))
        if self.fail and self.fail in argv:
            return CommandResult(1, "Failed to connect to bus: No medium found")
        return CommandResult(0, "")


def test_installing_the_timer_twice_leaves_one_timer_and_reloads_systemd(tmp_path: Path) -> None:
    units, logs = tmp_path / "systemd-user", tmp_path / "logs"
    systemctl = FakeSystemctl()
    first = install_systemd("03:30", COMMAND, WORK, logs, unit_dir=units, runner=systemctl, linger=lambda: True)
    second = install_systemd("03:30", COMMAND, WORK, logs, unit_dir=units, runner=systemctl, linger=lambda: True)

    assert sorted(p.name for p in units.iterdir()) == [
        "spark-build-nightly.service",
        "spark-build-nightly.timer",
    ]
    assert (first.changed, second.changed) == (True, False)
    assert (
        systemctl.calls
        == [
            ["systemctl", "--user", "daemon-reload"],
            ["systemctl", "--user", "enable", "--now", "spark-build-nightly.timer"],
        ]
        * 2
    )
    assert logs.is_dir()


def test_installing_at_a_new_time_replaces_the_timer(tmp_path: Path) -> None:
    units = tmp_path / "systemd-user"
    for at in ("03:30", "04:15"):
        install_systemd(at, COMMAND, WORK, tmp_path, unit_dir=units, runner=FakeSystemctl(), linger=lambda: True)
    assert parse_timer_at((units / "spark-build-nightly.timer").read_text()) == "04:15"
    assert len(list(units.glob("*.timer"))) == 1


def test_install_says_to_enable_lingering_so_the_timer_runs_while_logged_out(tmp_path: Path) -> None:
    result = install_systemd(
        "03:30",
        COMMAND,
        WORK,
        tmp_path,
        unit_dir=tmp_path / "u",
        runner=FakeSystemctl(),
        linger=lambda: False,
    )
    assert any("loginctl enable-linger" in line for line in result.lines)


def test_a_systemctl_failure_is_reported_with_a_fix(tmp_path: Path) -> None:
    with pytest.raises(SparkBuildError, match="Failed to connect to bus") as caught:
        install_systemd(
            "03:30",
            COMMAND,
            WORK,
            tmp_path,
            unit_dir=tmp_path / "u",
            runner=FakeSystemctl(fail="daemon-reload"),
        )
    assert "--cron" in (caught.value.hint or "")


def test_removing_the_timer_disables_it_and_deletes_both_units(tmp_path: Path) -> None:
    units = tmp_path / "u"
    install_systemd("03:30", COMMAND, WORK, tmp_path, unit_dir=units, runner=FakeSystemctl(), linger=lambda: True)
    systemctl = FakeSystemctl()
    removed = remove_systemd(unit_dir=units, runner=systemctl)
    again = remove_systemd(unit_dir=units, runner=systemctl)

    assert list(units.iterdir()) == []
    assert ["systemctl", "--user", "disable", "--now", "spark-build-nightly.timer"] in systemctl.calls
    assert (removed.changed, again.changed) == (True, False)


def test_status_shows_the_timers_next_run_and_the_last_outcome(tmp_path: Path) -> None:
    units, history = tmp_path / "u", tmp_path / "history.jsonl"
    install_systemd("03:30", COMMAND, WORK, tmp_path, unit_dir=units, runner=FakeSystemctl(), linger=lambda: True)
    append_history(history, {"outcome": "present", "finished": "2026-02-28T03:30:05+01:00", "message": "ok"})
    append_history(history, {"outcome": "mirrored", "finished": "2026-03-01T03:31:00+01:00", "message": "new"})

    status = schedule_status(
        history_path=history,
        clock=lambda: datetime(2026, 3, 1, 9, 0, tzinfo=TZ),
        unit_dir=units,
        crontab=None,
    )
    assert (status.kind, status.at) == ("systemd", "03:30")
    assert status.next_run == datetime(2026, 3, 2, 3, 30, tzinfo=TZ)
    assert status.last is not None and status.last["outcome"] == "mirrored"
    assert status.lines()[1].startswith("last run: mirrored at 2026-03-01T03:31:00+01:00")


def test_a_failed_night_promises_a_retry_only_when_a_schedule_exists(tmp_path: Path) -> None:
    units = tmp_path / "u"
    nothing = schedule_status(history_path=tmp_path / "h.jsonl", unit_dir=units, crontab=None)
    assert nothing.after_failure().startswith("nothing is scheduled: run invoke nightly again")
    install_systemd("03:30", COMMAND, WORK, tmp_path, unit_dir=units, runner=FakeSystemctl(), linger=lambda: True)
    timer = schedule_status(
        history_path=tmp_path / "h.jsonl",
        clock=lambda: datetime(2026, 3, 1, 9, 0, tzinfo=TZ),
        unit_dir=units,
        crontab=None,
    )
    assert timer.after_failure() == "the next scheduled run (systemd, 2026-03-02 03:30) tries again"


def test_status_with_nothing_installed_says_so(tmp_path: Path) -> None:
    status = schedule_status(history_path=tmp_path / "none.jsonl", unit_dir=tmp_path / "u", crontab=None)
    assert status.lines() == [
        "schedule: not installed (invoke schedule --at 03:30)",
        "last run: none recorded",
    ]


# --------------------------------------------------------------------------- cron


def test_the_cron_command_appends_its_output_to_the_log_instead_of_mailing_it() -> None:
    line = cron_command(COMMAND, WORK, LOGS, environment={"PATH": "/usr/local/cuda/bin:/usr/bin"})
    assert line == (
        "cd '/srv/spark work' && /usr/bin/env PATH=/usr/local/cuda/bin:/usr/bin "
        "'/srv/spark work/.venv/bin/invoke' --search-root '/srv/spark work' nightly --notify x%y "
        ">> '/srv/spark work/logs/nightly.log' 2>&1"
    )


@pytest.fixture
def tabfile(tmp_path: Path) -> Path:
    tab = tmp_path / "crontab"
    tab.write_text("MAILTO=admin@example.org\n0 1 * * * /usr/bin/backup --all # the user's own job\n")
    return tab


def test_cron_install_twice_leaves_one_entry_and_keeps_the_users_other_lines(tabfile: Path, tmp_path: Path) -> None:
    tab = lambda: CronTab(tabfile=str(tabfile))  # noqa: E731
    first = install_cron("03:30", COMMAND, WORK, tmp_path / "logs", crontab=tab)
    second = install_cron("03:30", COMMAND, WORK, tmp_path / "logs", crontab=tab)

    text = tabfile.read_text()
    assert (first.changed, second.changed) == (True, False)
    assert text.count(CRON_MARKER) == 1
    assert "MAILTO=admin@example.org" in text and "/usr/bin/backup --all # the user's own job" in text
    ours = [line for line in text.splitlines() if CRON_MARKER in line]
    assert ours[0].startswith("30 3 * * * cd '/srv/spark work' && ")
    assert "--notify x\\%y" in ours[0]  # % escaped for cron, read back unescaped below
    assert [job.command for job in tab().find_comment(CRON_MARKER)] == [cron_command(COMMAND, WORK, tmp_path / "logs")]
    assert cron_at(tab()) == "03:30"


def test_cron_install_at_a_new_time_replaces_the_entry_and_remove_leaves_none(tabfile: Path, tmp_path: Path) -> None:
    tab = lambda: CronTab(tabfile=str(tabfile))  # noqa: E731
    install_cron("03:30", COMMAND, WORK, tmp_path, crontab=tab)
    install_cron("22:05", COMMAND, WORK, tmp_path, crontab=tab)
    assert cron_at(tab()) == "22:05" and tabfile.read_text().count(CRON_MARKER) == 1

    assert remove_cron(crontab=tab).changed
    assert not remove_cron(crontab=tab).changed
    assert CRON_MARKER not in tabfile.read_text()
    assert "/usr/bin/backup --all" in tabfile.read_text()


def test_status_reads_the_cron_entry_back(tabfile: Path, tmp_path: Path) -> None:
    tab = lambda: CronTab(tabfile=str(tabfile))  # noqa: E731
    install_cron("03:30", COMMAND, WORK, tmp_path, crontab=tab)
    status = schedule_status(
        history_path=tmp_path / "h.jsonl",
        clock=lambda: datetime(2026, 3, 1, 2, 0, tzinfo=TZ),
        unit_dir=tmp_path / "no-units",
        crontab=tab,
    )
    assert (status.kind, status.at, status.next_run) == (
        "cron",
        "03:30",
        datetime(2026, 3, 1, 3, 30, tzinfo=TZ),
    )
