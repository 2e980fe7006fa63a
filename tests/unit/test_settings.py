"""Settings (portwatch/settings.py): every field names its environment variable and a
reason; values come from flags, then the environment, then defaults; bad values are a
one-line SettingsError naming the variable or the flag."""

from __future__ import annotations

from dataclasses import fields

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from portwatch.settings import BOUNDS, Settings, SettingsError

ENV_VARS = [Settings.env_name(f.name) for f in fields(Settings)]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from the defaults, whatever the calling shell exported."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_valid_and_documented() -> None:
    # Given no environment, when settings are read, then the declared defaults apply
    settings = Settings.from_env()
    assert settings == Settings()
    assert (settings.ports, settings.concurrency, settings.timeout, settings.retries) == (
        "1-65535", 2000, 1.0, 1)
    # And every field has its own PORTWATCH_ variable and a reason
    described = Settings.describe()
    assert [d[0] for d in described] == [f.name for f in fields(Settings)]
    assert len(set(ENV_VARS)) == len(ENV_VARS)
    for name, env, _default, why in described:
        assert env == f"PORTWATCH_{name.upper()}"
        assert why.strip()


@pytest.mark.parametrize(
    ("env", "raw", "field", "value"),
    [
        ("PORTWATCH_CONCURRENCY", "500", "concurrency", 500),
        ("PORTWATCH_TIMEOUT", "0.25", "timeout", 0.25),
        ("PORTWATCH_TIMEOUT", " 2 ", "timeout", 2.0),
        ("PORTWATCH_RETRIES", "0", "retries", 0),
        ("PORTWATCH_PORTS", "22,80", "ports", "22,80"),
        ("PORTWATCH_STORE", "chdb:///tmp/x", "store", "chdb:///tmp/x"),
        ("PORTWATCH_BATCH_SECONDS", "3600", "batch_seconds", 3600.0),
        ("PORTWATCH_TARPIT_THRESHOLD", "1", "tarpit_threshold", 1),
        ("PORTWATCH_CHANGE_SETTLE", "30", "change_settle", 30.0),
    ],
)
def test_environment_values_are_parsed_to_the_field_type(
        monkeypatch: pytest.MonkeyPatch, env: str, raw: str, field: str,
        value: object) -> None:
    monkeypatch.setenv(env, raw)
    got = getattr(Settings.from_env(), field)
    assert got == value
    assert type(got) is type(value)


def test_empty_environment_value_means_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTWATCH_CONCURRENCY", "")
    assert Settings.from_env().concurrency == 2000


def test_flags_override_the_environment_and_none_means_unset(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an environment value and a flag for the same setting
    monkeypatch.setenv("PORTWATCH_CONCURRENCY", "100")
    monkeypatch.setenv("PORTWATCH_TIMEOUT", "3")
    # When the flag is given for one and left unset (None) for the other
    settings = Settings.from_env(concurrency=50, timeout=None)
    # Then the flag wins where given, the environment elsewhere
    assert (settings.concurrency, settings.timeout) == (50, 3.0)


@pytest.mark.parametrize(
    ("env", "raw", "message"),
    [
        ("PORTWATCH_CONCURRENCY", "lots", "PORTWATCH_CONCURRENCY='lots' is not a valid int"),
        ("PORTWATCH_CONCURRENCY", "1.5", "PORTWATCH_CONCURRENCY='1.5' is not a valid int"),
        ("PORTWATCH_TIMEOUT", "fast", "PORTWATCH_TIMEOUT='fast' is not a valid float"),
        ("PORTWATCH_CONCURRENCY", "0",
         "PORTWATCH_CONCURRENCY='0' must be between 1 and 100,000"),
        ("PORTWATCH_CONCURRENCY", "1000000000000",
         "PORTWATCH_CONCURRENCY='1000000000000' must be between 1 and 100,000"),
        ("PORTWATCH_CONCURRENCY", "\u0663", "PORTWATCH_CONCURRENCY='\u0663' is not a valid int"),
        ("PORTWATCH_IDENTIFY_CONCURRENCY", "-3",
         "PORTWATCH_IDENTIFY_CONCURRENCY='-3' must be between 1 and 10,000"),
        ("PORTWATCH_PER_HOST_CONNECTIONS", "0",
         "PORTWATCH_PER_HOST_CONNECTIONS='0' must be between 1 and 1,000"),
        ("PORTWATCH_BATCH_SIZE", "0", "PORTWATCH_BATCH_SIZE='0' must be between 1 and 100,000"),
        ("PORTWATCH_SHARD_HOSTS", "1000000000000",
         "PORTWATCH_SHARD_HOSTS='1000000000000' must be between 1 and 65,536"),
        ("PORTWATCH_SHARD_PORTS", "70000",
         "PORTWATCH_SHARD_PORTS='70000' must be between 1 and 65,535"),
        ("PORTWATCH_UDP_DEADLINE", "0",
         "PORTWATCH_UDP_DEADLINE='0' must be above 0, at most 86,400 s"),
        ("PORTWATCH_RATE", "0", "PORTWATCH_RATE='0' must be between 1 and 10,000,000 packets/s"),
        ("PORTWATCH_RATE", "\u0663", "PORTWATCH_RATE='\u0663' is not a valid int"),
        ("PORTWATCH_CONCURRENCY", "1_000", "PORTWATCH_CONCURRENCY='1_000' is not a valid int"),
        ("PORTWATCH_CONCURRENCY", "+5", "PORTWATCH_CONCURRENCY='+5' is not a valid int"),
        ("PORTWATCH_TIMEOUT", "1_0.5", "PORTWATCH_TIMEOUT='1_0.5' is not a valid float"),
        ("PORTWATCH_ENGINE", "zmap",
         "PORTWATCH_ENGINE='zmap' must be auto, masscan or connect, not 'zmap'"),
        ("PORTWATCH_TARPIT_THRESHOLD", "0",
         "PORTWATCH_TARPIT_THRESHOLD='0' must be between 1 and 65,535"),
        ("PORTWATCH_TIMEOUT", "0", "PORTWATCH_TIMEOUT='0' must be above 0, at most 3,600 s"),
        ("PORTWATCH_TIMEOUT", "-1", "PORTWATCH_TIMEOUT='-1' must be above 0, at most 3,600 s"),
        ("PORTWATCH_TIMEOUT", "3600.5",
         "PORTWATCH_TIMEOUT='3600.5' must be above 0, at most 3,600 s"),
        ("PORTWATCH_TIMEOUT", "nan", "PORTWATCH_TIMEOUT='nan' must be above 0, at most 3,600 s"),
        ("PORTWATCH_TIMEOUT", "inf", "PORTWATCH_TIMEOUT='inf' must be above 0, at most 3,600 s"),
        ("PORTWATCH_BANNER_WAIT", "0",
         "PORTWATCH_BANNER_WAIT='0' must be above 0, at most 3,600 s"),
        ("PORTWATCH_IDENTIFY_BUDGET", "1e9",
         "PORTWATCH_IDENTIFY_BUDGET='1e9' must be above 0, at most 3,600 s"),
        ("PORTWATCH_BATCH_SECONDS", "0",
         "PORTWATCH_BATCH_SECONDS='0' must be above 0, at most 3,600 s"),
        ("PORTWATCH_RETRIES", "-1", "PORTWATCH_RETRIES='-1' must be between 0 and 10"),
        ("PORTWATCH_RETRIES", "11", "PORTWATCH_RETRIES='11' must be between 0 and 10"),
        ("PORTWATCH_CHANGE_SETTLE", "601",
         "PORTWATCH_CHANGE_SETTLE='601' must be above 0, at most 600 s"),
        ("PORTWATCH_MASSCAN_PASSES", "9", "PORTWATCH_MASSCAN_PASSES='9' must be between 1 and 5"),
    ],
)
def test_bad_environment_values_are_one_line_errors(monkeypatch: pytest.MonkeyPatch, env: str,
                                                    raw: str, message: str) -> None:
    monkeypatch.setenv(env, raw)
    with pytest.raises(SettingsError) as err:
        Settings.from_env()
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"concurrency": 0}, "--concurrency must be between 1 and 100,000"),
        ({"timeout": 0.0}, "--timeout must be above 0, at most 3,600 s"),
        ({"retries": 99}, "--retries must be between 0 and 10"),
    ],
)
def test_bad_flags_are_one_line_errors(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=f"^{message}$"):
        Settings.from_env(**overrides)


@pytest.mark.parametrize(("env", "raw", "message"), [
    # masscan sends from this address: answers to 0.0.0.0 or a group never come back
    ("PORTWATCH_MASSCAN_ADAPTER_IP", "0.0.0.0", "PORTWATCH_MASSCAN_ADAPTER_IP='0.0.0.0': not "
     "one host's address (the source address masscan sends from; answers come back to it)"),
    ("PORTWATCH_MASSCAN_ADAPTER_IP", "255.255.255.255", "PORTWATCH_MASSCAN_ADAPTER_IP="
     "'255.255.255.255': not one host's address (the source address masscan sends from; "
     "answers come back to it)"),
    ("PORTWATCH_MASSCAN_ADAPTER_IP", "224.0.0.1", "PORTWATCH_MASSCAN_ADAPTER_IP='224.0.0.1': "
     "not one host's address (the source address masscan sends from; answers come back to "
     "it)"),
    # masscan sends every probe to this MAC: a group address floods the segment
    *[("PORTWATCH_MASSCAN_ROUTER_MAC", mac, f"PORTWATCH_MASSCAN_ROUTER_MAC='{mac}': not one "
       "device's MAC address (a broadcast, multicast or all-zero address; the next hop's own "
       "MAC, e.g. 02:00:00:00:00:01)")
      for mac in ("ff:ff:ff:ff:ff:ff", "01:00:5E:00:00:01", "33-33-00-00-00-01",
                  "00:00:00:00:00:00")],
])
def test_masscan_refuses_addresses_that_are_not_one_device(
        monkeypatch: pytest.MonkeyPatch, env: str, raw: str, message: str) -> None:
    monkeypatch.setenv(env, raw)
    with pytest.raises(SettingsError) as err:
        Settings.from_env().validate()
    assert str(err.value) == message


@pytest.mark.parametrize(("env", "raw"), [
    ("PORTWATCH_MASSCAN_ADAPTER_IP", "198.18.0.1"),
    ("PORTWATCH_MASSCAN_ROUTER_MAC", "02:00:00:00:00:01"),
    ("PORTWATCH_MASSCAN_ROUTER_MAC", "00-1A-2b-3c-4d-5e"),
])
def test_masscan_takes_one_devices_addresses(monkeypatch: pytest.MonkeyPatch, env: str,
                                             raw: str) -> None:
    monkeypatch.setenv(env, raw)
    settings = Settings.from_env()
    settings.validate()
    assert getattr(settings, env.removeprefix("PORTWATCH_").lower()) == raw


def test_settings_are_immutable() -> None:
    settings = Settings.from_env()
    with pytest.raises(AttributeError):
        settings.concurrency = 1  # type: ignore[misc]


@pytest.mark.parametrize(("name", "words"), [
    ("concurrency", "1 to 100,000"),
    ("timeout", "above 0, at most 3,600 s"),
    ("retries", "0 to 10"),
    ("commit_interval", "0.1 to 60 s"),
    ("ports", ""),  # a port spec: checked by its parser, not by a range
])
def test_range_of_says_the_range_validate_holds(name: str, words: str) -> None:
    assert Settings.range_of(name) == words


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_every_bounded_setting_is_held_to_the_range_it_shows(name: str) -> None:
    # Given the range `portwatch settings` shows for the setting
    low, high, _unit = BOUNDS[name]
    kind = type(getattr(Settings(), name))
    shown = Settings.range_of(name)
    # Then its ends are what validate accepts, and just outside them is refused
    Settings(**{name: kind(high)}).validate()
    if shown.startswith("above 0"):
        with pytest.raises(SettingsError):
            Settings(**{name: kind(0)}).validate()
    else:
        assert shown.startswith(f"{low:,g} to ")
        Settings(**{name: kind(low)}).validate()
        with pytest.raises(SettingsError):
            Settings(**{name: kind(low) - (1 if kind is int else 0.01)}).validate()
    with pytest.raises(SettingsError):
        Settings(**{name: kind(high) + 1}).validate()


def test_portwatch_settings_prints_each_range() -> None:
    from click.testing import CliRunner

    from portwatch.cli import cli

    result = CliRunner().invoke(cli, ["settings"])
    assert result.exit_code == 0
    line = next(ln for ln in result.output.splitlines() if "PORTWATCH_CONCURRENCY" in ln)
    assert "default 2000 (1 to 100,000): connect engine" in line


def test_portwatch_settings_lists_the_options_read_from_the_environment() -> None:
    from click.testing import CliRunner

    from portwatch.cli import cli

    # When `portwatch settings` runs
    result = CliRunner().invoke(cli, ["settings"], terminal_width=400)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    # Then the web options that read PORTWATCH_* variables follow the settings, each with
    # the commands that take it, and no setting's variable is listed twice
    tail = lines[lines.index("[command options]") + 1:
                 lines.index("[secrets: read from the environment only, never shown]")]
    assert [ln.split()[:2] for ln in tail] == [
        ["--cookie-secure", "PORTWATCH_WEB_COOKIE_SECURE"],
        ["--token", "PORTWATCH_WEB_TOKEN"],
        ["--trusted-proxy", "PORTWATCH_WEB_TRUSTED_PROXIES"],
    ]
    # (watch --serve takes them all, as serve does)
    assert all(" of process, serve, watch: " in line for line in tail)
    assert "Mark the token cookie Secure" in tail[0]
    assert sum("PORTWATCH_STORE " in ln for ln in lines) == 1


def test_option_envvars_walks_nested_groups() -> None:
    import click

    from portwatch.report_cli import EnvOption, option_envvars

    # Given a group whose subcommands share an environment-read option
    @click.group()
    def root() -> None: ...

    @root.group("inner")
    def inner() -> None: ...

    @inner.command("a")
    @click.option("--key", envvar="PW_KEY", help="--serve's key (as b).")
    @click.option("--plain")
    def a(key: str, plain: str) -> None: ...

    @root.command("b")
    @click.option("-k", "--key", envvar=["PW_KEY"], help="The key. More words.")
    def b(key: str) -> None: ...

    # Then it is listed once, with both commands and the help that explains it
    assert option_envvars(root) == [
        EnvOption("--key", "PW_KEY", ("b", "inner a"), "The key")]


def test_portwatch_settings_shows_the_environment_in_effect(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from portwatch.cli import cli

    # Given one setting changed by the environment
    monkeypatch.setenv("PORTWATCH_TIMEOUT", "2.5")
    result = CliRunner().invoke(cli, ["settings"], terminal_width=400)
    assert result.exit_code == 0
    lines = {ln.split()[0]: ln for ln in result.output.splitlines() if ln.startswith("  ")}
    # Then its line says the value in effect and where it comes from; the others do not
    assert "default 1.0 (above 0, at most 3,600 s), now 2.5 from PORTWATCH_TIMEOUT:" in \
        lines["timeout"]
    assert sum(", now " in ln for ln in lines.values()) == 1


def test_portwatch_settings_refuses_a_bad_environment(monkeypatch: pytest.MonkeyPatch,
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    from portwatch.cli import main

    monkeypatch.setenv("PORTWATCH_RATE", "0")
    assert main(["settings"]) == 2
    captured = capfd.readouterr()
    assert captured.out == ""
    assert "PORTWATCH_RATE='0' must be between 1 and 10,000,000 packets/s" in captured.err


@settings(max_examples=300)
@given(env=st.sampled_from(["PORTWATCH_CONCURRENCY", "PORTWATCH_TIMEOUT", "PORTWATCH_TLS",
                            "PORTWATCH_RATE", "PORTWATCH_ENGINE", "PORTWATCH_PORTS",
                            "PORTWATCH_UDP"]),
       # no NUL in an environment; no lone surrogate but an undecodable byte's (below):
       # os.environ holds no other (it cannot even be set to one)
       raw=st.text(st.characters(blacklist_characters="\x00",
                                 blacklist_categories=("Cs",)), max_size=30)
       | st.from_regex(r"-?[0-9_+.e]{1,12}", fullmatch=True))
@example(env="PORTWATCH_CONCURRENCY", raw="\u0663").via("an Arabic-Indic digit")
@example(env="PORTWATCH_TIMEOUT", raw="1\udcff").via("an undecodable byte (surrogateescape)")
@example(env="PORTWATCH_ENGINE", raw="\udc80").via("an undecodable byte alone")
def test_any_environment_text_is_a_setting_in_range_or_one_line(env: str, raw: str) -> None:
    # Given any text in a PORTWATCH_* variable (hostile: it comes from the environment)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(env, raw)
        try:
            loaded = Settings.from_env()
        except SettingsError as exc:
            # Then a refusal is one line naming the variable
            assert "\n" not in str(exc) and env in str(exc)
            return
    # Or the value read is one the settings' own validation accepts, written in ASCII
    loaded.validate()
    if raw.strip() and env in ("PORTWATCH_CONCURRENCY", "PORTWATCH_RATE"):
        assert raw.strip().lstrip("-").isascii() and "_" not in raw
