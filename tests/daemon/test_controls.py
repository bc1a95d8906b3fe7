"""The owner's rules: [limits] / [schedule] validation, admission (pause, apps, prompt
length, budgets, the max_tokens clamp), budgets across a restart, live patches.

Time and the battery are injected (a settable clock, a sensor function, the test hooks
file for the local time); nothing here waits for time to pass."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from lattice_daemon.config import (
    AppLimits,
    ConfigError,
    DaemonConfig,
    LimitsConfig,
    ScheduleConfig,
    load_config,
    parse_serve_hours,
    save_config,
    validate,
)
from lattice_daemon.controls import (
    TEST_HOOKS_ENV,
    Controls,
    PatchError,
    PauseState,
    apply_patch,
    clamp_max_tokens,
    in_window,
    next_start,
)
from lattice_daemon.paths import Paths
from lattice_daemon.runner import JobRecord, JobRefused
from lattice_protocol import ErrorCode, JobSpec, Requester


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def paths_in(tmp_path: Path) -> Paths:
    return Paths(tmp_path / "config", tmp_path / "data", tmp_path / "run", tmp_path / "logs")


def spec(app: str | None = "Notes app", content: str = "hi", **request: Any) -> JobSpec:
    requester = None if app is None else Requester(
        account_id="acct_1", credential_kind="apiKey", credential_id="key_1",
        credential_name=app)
    return JobSpec(job_id="job_1", lattice_id="lat_1", deadline=2e9, stream=False,
                   request={"messages": [{"role": "user", "content": content}], **request},
                   model=None, first_token_timeout=10, idle_timeout=10, requester=requester)


def ended(app: str, prompt: int, completion: int) -> JobRecord:
    return JobRecord(job_id="job_1", requester=spec(app).requester, stream=False,
                     started_at=0, prompt_tokens=prompt, completion_tokens=completion)


def refusal(controls: Controls, job: JobSpec) -> JobRefused:
    with pytest.raises(JobRefused) as caught:
        controls.admit(job)
    return caught.value


@pytest.fixture
def local_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``set(iso)``: the local time the schedule and the budget day see."""
    hooks = tmp_path / "hooks.json"
    monkeypatch.setenv(TEST_HOOKS_ENV, str(hooks))

    def set_time(iso: str, **extra: Any) -> None:
        hooks.write_text(json.dumps({"now": iso, **extra}))

    return set_time


# -- config -------------------------------------------------------------------------------


def write_toml(tmp_path: Path, text: str) -> Paths:
    paths = paths_in(tmp_path)
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    paths.config_file.write_text(text)
    return paths


def test_limits_and_schedule_load_and_round_trip(tmp_path: Path) -> None:
    paths = write_toml(tmp_path, """
[limits]
block = ["Bad app"]
max_tokens = 512
tokens_per_day = 1000
[limits.apps."Notes app"]
tokens_per_day = 50
[schedule]
pause_on_battery = true
serve_hours = ["Mon-Fri 09:00-18:00"]
""")
    config = load_config(paths)
    validate(config)
    assert config.limits.block == ["Bad app"] and config.limits.max_tokens == 512
    assert config.limits.apps == {"Notes app": AppLimits(tokens_per_day=50)}
    assert config.schedule == ScheduleConfig(True, ["Mon-Fri 09:00-18:00"])
    save_config(paths, config)
    assert load_config(paths) == config
    assert os.stat(paths.config_file).st_mode & 0o777 == 0o600


def test_allowed_models_and_max_concurrency_work_in_either_place(tmp_path: Path) -> None:
    old = load_config(write_toml(tmp_path / "a", "[provider]\nallowed_models = ['m1']\n"
                                                 "[daemon]\nmax_concurrency = 2\n"))
    assert old.provider.allowed_models == ["m1"] and old.daemon.max_concurrency == 2
    new = load_config(write_toml(tmp_path / "b", "[limits]\nallowed_models = ['m2']\n"
                                                 "max_concurrency = 3\n"))
    assert new.provider.allowed_models == ["m2"] and new.daemon.max_concurrency == 3
    with pytest.raises(ConfigError, match="allowed_models is set in both"):
        load_config(write_toml(tmp_path / "c", "[provider]\nallowed_models = ['m1']\n"
                                               "[limits]\nallowed_models = ['m2']\n"))


@pytest.mark.parametrize(("toml", "message"), [
    ("[limits]\nmax_tokens = 0", "max_tokens must be at least 1"),
    ("[limits]\nmax_tokens = '5'", "max_tokens must be an integer"),
    ("[limits]\nblock = 'Notes app'", "block must be a list of strings"),
    ("[limits]\nblock = ['']", "app names of 1 to"),
    ("[limits]\nfavourite = 1", "unknown keys: favourite"),
    ("[limits]\nmax_concurrency = 0", "max_concurrency must be an integer from 1"),
    ('[limits.apps."Notes app"]\ntokens_per_day = -1', 'apps."Notes app"] tokens_per_day'),
    ('[limits.apps."Notes app"]\nbudget = 1', "unknown keys: budget"),
    ("[limits]\napps = 3", "[limits.apps] must hold tables"),
    ("[schedule]\npause_on_battery = 'yes'", "pause_on_battery must be true or false"),
    ("[schedule]\nserve_hours = ['weekdays 9-5']", "serve_hours 'weekdays 9-5'"),
    ("[schedule]\nserve_hours = ['Mon-Fri 09:00']", "must look like"),
])
def test_bad_limits_are_clear_config_errors(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(load_config(write_toml(tmp_path, toml)))


# -- schedule -----------------------------------------------------------------------------


def test_serve_windows() -> None:
    weekdays = parse_serve_hours("Mon-Fri 09:00-18:00")
    monday_10 = datetime(2026, 12, 7, 10, 0)
    assert in_window(weekdays, monday_10)
    assert not in_window(weekdays, datetime(2026, 12, 7, 18, 0))  # the end is exclusive
    assert not in_window(weekdays, datetime(2026, 12, 6, 10, 0))  # Sunday
    night = parse_serve_hours("Fri 22:00-06:00")
    assert in_window(night, datetime(2026, 12, 4, 23, 0))  # Friday evening
    assert in_window(night, datetime(2026, 12, 5, 5, 59))  # Saturday early hours
    assert not in_window(night, datetime(2026, 12, 6, 5, 0))  # Sunday early: no
    assert next_start([weekdays], datetime(2026, 12, 5, 12, 0)) == datetime(2026, 12, 7, 9, 0)
    assert parse_serve_hours("Sat,Sun 10:00-14:00").days == frozenset({5, 6})
    assert parse_serve_hours("daily 00:00-24:00").days == frozenset(range(7))


def test_outside_serve_hours_is_paused_until_the_next_window(tmp_path: Path,
                                                             local_time: Any) -> None:
    clock = Clock()
    config = DaemonConfig(schedule=ScheduleConfig(serve_hours=["Mon-Fri 09:00-18:00"]))
    controls = Controls(paths_in(tmp_path), config, clock=clock, battery=lambda: False)
    local_time("2026-12-06T03:00:00")  # Sunday 03:00
    pause = controls.current_pause()
    assert pause == PauseState("schedule", clock.now + 30 * 3600)
    refused = refusal(controls, spec())
    assert refused.code == ErrorCode.RUNTIME_PAUSED and refused.retry_after == 30 * 3600
    local_time("2026-12-07T09:00:00")
    assert controls.current_pause() is None
    controls.admit(spec())


def test_battery_pauses_only_when_asked_to(tmp_path: Path) -> None:
    on_battery = [True]
    controls = Controls(paths_in(tmp_path), DaemonConfig(), clock=Clock(),
                        battery=lambda: on_battery[0])
    assert controls.current_pause() is None  # pause_on_battery is off
    controls.update_config(DaemonConfig(schedule=ScheduleConfig(pause_on_battery=True)))
    assert controls.current_pause() == PauseState("battery")
    on_battery[0] = False
    assert controls.current_pause() is None


def test_the_battery_sensor_reads_the_test_hooks(tmp_path: Path, local_time: Any) -> None:
    from lattice_daemon.controls import on_battery

    local_time("2026-12-07T10:00:00", battery={"powerPlugged": False, "percent": 10})
    assert on_battery() is True
    local_time("2026-12-07T10:00:00", battery=None)
    assert on_battery() is None  # no battery: never paused for it


# -- the owner's pause --------------------------------------------------------------------


def test_pause_for_ends_by_itself_and_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    controls = Controls(paths_in(tmp_path), DaemonConfig(), clock=clock)
    controls.pause(1800)
    assert controls.current_pause() == PauseState("owner", clock.now + 1800)
    again = Controls(paths_in(tmp_path), DaemonConfig(), clock=clock)  # a restart
    assert again.current_pause() == PauseState("owner", clock.now + 1800)
    assert os.stat(again.state_file).st_mode & 0o777 == 0o600
    clock.now += 1800
    assert again.current_pause() is None
    assert Controls(paths_in(tmp_path), DaemonConfig(), clock=clock).current_pause() is None


def test_owner_pause_wins_and_resume_ends_it(tmp_path: Path) -> None:
    controls = Controls(paths_in(tmp_path),
                        DaemonConfig(schedule=ScheduleConfig(pause_on_battery=True)),
                        clock=Clock(), battery=lambda: True)
    controls.pause(None)
    assert controls.current_pause() == PauseState("owner")
    message = refusal(controls, spec()).message
    assert "owner paused it" in message
    controls.resume()
    assert controls.current_pause() == PauseState("battery")


# -- apps, prompts, budgets ---------------------------------------------------------------


def test_block_and_allow_by_app_name(tmp_path: Path) -> None:
    config = DaemonConfig(limits=LimitsConfig(block=["Bad app"]))
    controls = Controls(paths_in(tmp_path), config, clock=Clock())
    assert refusal(controls, spec("Bad app")).code == ErrorCode.APP_NOT_ALLOWED
    controls.admit(spec("Notes app"))
    controls.update_config(DaemonConfig(limits=LimitsConfig(allow=["Notes app"])))
    controls.admit(spec("Notes app"))
    refused = refusal(controls, spec("Mail app"))
    assert refused.code == ErrorCode.APP_NOT_ALLOWED
    assert "Notes app" not in refused.message  # the app never learns the owner's lists
    assert refusal(controls, spec(None)).code == ErrorCode.APP_NOT_ALLOWED  # unnamed
    controls.update_config(DaemonConfig(limits=LimitsConfig(allow=["Notes app"],
                                                            block=["Notes app"])))
    assert refusal(controls, spec("Notes app")).code == ErrorCode.APP_NOT_ALLOWED


def test_max_prompt_chars_counts_message_text(tmp_path: Path) -> None:
    controls = Controls(paths_in(tmp_path),
                        DaemonConfig(limits=LimitsConfig(max_prompt_chars=10)), clock=Clock())
    controls.admit(spec(content="x" * 10))
    refused = refusal(controls, spec(content="x" * 11))
    assert refused.code == ErrorCode.PROMPT_TOO_LONG and "at most 10" in refused.message
    parts = spec(content="")
    parts.request["messages"] = [{"role": "user", "content": [
        {"type": "text", "text": "x" * 6}, {"type": "text", "text": "y" * 6}]}]
    assert refusal(controls, parts).code == ErrorCode.PROMPT_TOO_LONG


def test_max_tokens_is_clamped_never_refused() -> None:
    assert clamp_max_tokens({}, 100) == {"max_tokens": 100}
    assert clamp_max_tokens({"max_tokens": 500}, 100) == {"max_tokens": 100}
    assert clamp_max_tokens({"max_tokens": 50}, 100) == {"max_tokens": 50}
    assert clamp_max_tokens({"max_completion_tokens": 500}, 100) == \
        {"max_completion_tokens": 100}


def test_the_admitted_spec_carries_the_clamp(tmp_path: Path) -> None:
    controls = Controls(paths_in(tmp_path), DaemonConfig(limits=LimitsConfig(max_tokens=8)),
                        clock=Clock())
    assert controls.admit(spec(max_tokens=64)).request["max_tokens"] == 8


def test_budgets_per_app_per_local_day_across_a_restart(tmp_path: Path,
                                                        local_time: Any) -> None:
    local_time("2026-12-07T23:00:00")
    limits = LimitsConfig(tokens_per_day=100, apps={"Mail app": AppLimits(10)})
    controls = Controls(paths_in(tmp_path), DaemonConfig(limits=limits), clock=Clock())
    controls.job_ended(ended("Mail app", 4, 6))  # 10: Mail app's own budget spent
    controls.job_ended(ended("Notes app", 40, 50))  # 90 of the default 100
    refused = refusal(controls, spec("Mail app"))
    assert refused.code == ErrorCode.BUDGET_EXCEEDED
    assert refused.retry_after == 3600  # until local midnight
    assert "10" not in refused.message  # not the owner's number
    controls.admit(spec("Notes app"))
    controls.save()  # (behind the jobs otherwise; a graceful stop flushes it)

    restarted = Controls(paths_in(tmp_path), DaemonConfig(limits=limits), clock=Clock())
    assert refusal(restarted, spec("Mail app")).code == ErrorCode.BUDGET_EXCEEDED
    assert restarted.snapshot()["today"]["apps"]["Notes app"]["tokens"] == 90
    local_time("2026-12-08T00:00:01")  # a new local day
    restarted.admit(spec("Mail app"))
    assert restarted.snapshot()["today"]["apps"] == {
        "Mail app": {"tokens": 0, "tokensPerDay": 10, "refused": 0, "allowed": True}}


# -- live patches -------------------------------------------------------------------------


def test_a_patch_changes_only_what_it_names() -> None:
    config = DaemonConfig(limits=LimitsConfig(max_tokens=5, block=["A"]))
    patched = apply_patch(config, {"limits": {"max_tokens": None, "tokens_per_day": 9},
                                   "schedule": {"serve_hours": ["daily 08:00-20:00"]},
                                   "apps": {"Notes app": {"tokens_per_day": 3}}})
    assert patched.limits.max_tokens is None and patched.limits.tokens_per_day == 9
    assert patched.limits.block == ["A"]
    assert patched.limits.apps == {"Notes app": AppLimits(3)}
    assert patched.schedule.serve_hours == ["daily 08:00-20:00"]
    assert config.limits.max_tokens == 5  # the original is untouched
    removed = apply_patch(patched, {"apps": {"Notes app": None}})
    assert removed.limits.apps == {}
    models = apply_patch(config, {"limits": {"allowed_models": ["m1"], "max_concurrency": 2}})
    assert models.provider.allowed_models == ["m1"] and models.daemon.max_concurrency == 2


@pytest.mark.parametrize(("body", "message"), [
    ({}, "must be an object with"),
    ({"limits": {"max_tokens": "5"}}, "max_tokens must be an integer"),
    ({"limits": {"max_tokens": 0}}, "at least 1"),
    ({"limits": {"colour": 1}}, "has no key 'colour'"),
    ({"schedule": {"serve_hours": ["sometimes"]}}, "must look like"),
    ({"apps": {"A": 5}}, "must be an object or null"),
    ({"apps": {"A": {"tokens_per_day": "x"}}}, "tokens_per_day must be an integer"),
    ({"extra": {}}, "must be an object with"),
])
def test_a_bad_patch_is_refused_with_the_key(body: dict[str, Any], message: str) -> None:
    with pytest.raises(PatchError, match=message):
        apply_patch(DaemonConfig(), body)


def test_a_reload_that_changes_only_the_rules_keeps_the_pairing() -> None:
    from lattice_daemon.config import ProviderConfig
    from lattice_daemon.daemon import _only_controls_differ

    base = DaemonConfig(provider=ProviderConfig(allowed_models=["m1"]))
    rules = DaemonConfig(provider=ProviderConfig(allowed_models=["m2"]),
                         limits=LimitsConfig(max_tokens=5, allowed_models=["m2"]))
    assert _only_controls_differ(rules, base)
    assert not _only_controls_differ(DaemonConfig(provider=ProviderConfig(allowed_models=["m1"])),
                                     base)  # nothing changed
    other = DaemonConfig(provider=ProviderConfig(kind="lmstudio", allowed_models=["m1"]),
                         limits=LimitsConfig(max_tokens=5))
    assert not _only_controls_differ(other, base)  # the provider changed too


async def test_the_runner_takes_a_new_max_concurrency_live() -> None:
    from lattice_daemon.config import ProviderConfig
    from lattice_daemon.runner import JobRunner
    from lattice_protocol import KeyPair, Sealer

    keys = KeyPair.generate()
    runner = JobRunner(object(), Sealer(keys, KeyPair.generate().public_text()),  # type: ignore[arg-type]
                       "lat_1", ProviderConfig(), emit=lambda _event: None, max_concurrency=4)
    runner.set_max_concurrency(1)
    assert runner.free_slots == 1
    with pytest.raises(ValueError):
        runner.set_max_concurrency(0)
