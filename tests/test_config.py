"""The config file: strict, with clear errors, env overrides and env: secrets."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pkrelay import config, logs
from pkrelay.config import removed


def _load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> config.Settings:
    # Raw TOML throughout this file: it tests the loader on the text a user writes (line numbers, syntax, comments).
    path = tmp_path / "pkrelay.toml"
    path.write_text(text)
    return config.load(path, env or {})


def test_no_file_means_every_default(tmp_path: Path) -> None:
    settings = config.load(tmp_path / "absent.toml", {})
    assert settings.server.port == 8080 and settings.server.dispatch_path == "/dispatch"
    assert settings.database_url.startswith("sqlite+aiosqlite:///") and settings.systems == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[server]\nprot = 9000\n', "server.prot: Object contains unknown field `prot` (line 2)"),
        ('data_dir = "x"\n[server]\nport = "9000"\n', "server.port: Expected `int`, got `str` (line 3)"),
        ('[[systems]]\nname = "a"\n[[systems]]\nname = "b"\nmdoe = "poll"\n',
         "systems.1.mdoe: Object contains unknown field `mdoe` (line 5)"),
        ('[[systems]]\nname = "a"\nmode = "sometimes"\n',
         "systems.0.mode: must be one of auto, poll, webhook (line 3)"),
        ('[[sinks]]\ntype = "smtp"\nurl = "x"\n', "sinks.0.type: must be one of webhook, mqtt, discord (line 2)"),
        ('log_level = "loud"\n', "log_level: must be one of debug, info, warning, error (line 1)"),
        ('[server]\nport = 70000\n', "server.port: Expected `int` <= 65535 (line 2)"),
        ('[serverr]\nport = 1\n', "serverr: Object contains unknown field `serverr` (line 1)"),
        ('[server\n', "not valid TOML"),
        # A key no release ever had stays an error, beside one an earlier release had.
        ('[pluralkit]\nmessage_rate = 10\nmesage_rate = 10\n',
         "pluralkit.mesage_rate: Object contains unknown field `mesage_rate` (line 3)"),
    ],
)
def test_mistakes_are_named_with_their_line(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        _load(tmp_path, text)
    assert expected in str(info.value)


def test_env_overrides_and_env_secrets(tmp_path: Path) -> None:
    text = '[[systems]]\nname = "home"\nsigning_token = "env:PK_SIGNING_TOKEN"\n'
    settings = _load(tmp_path, text, {"PK_SIGNING_TOKEN": "s3cr3t+/token", "PKRELAY_SERVER__PORT": "9001",
                                      "PKRELAY_PLURALKIT__GET_RATE": "20", "PKRELAY_DATA_DIR": "/srv/pk"})
    assert settings.server.port == 9001
    assert settings.pluralkit.get_rate == 20
    assert settings.data_dir == "/srv/pk"
    assert settings.systems[0].signing_token.reveal() == "s3cr3t+/token"
    assert "s3cr3t" not in repr(settings) and "s3cr3t" not in str(settings.systems[0])


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"PKRELAY_SERVER__PORTT": "1"}, "PKRELAY_SERVER__PORTT names no setting"),
        ({"PKRELAY_SERVER__PORT": "eighty"}, "PKRELAY_SERVER__PORT"),
        ({}, "systems.0.signing_token refers to environment variable PK_SIGNING_TOKEN, which is not set"),
    ],
)
def test_bad_environment_is_named(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    text = '[[systems]]\nname = "home"\nsigning_token = "env:PK_SIGNING_TOKEN"\n'
    env = {"PK_SIGNING_TOKEN": "x", **env} if "PK_SIGNING_TOKEN" not in expected else env
    with pytest.raises(config.ConfigError, match=expected):
        _load(tmp_path, text, env)


def test_sinks_must_name_known_systems(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="unknown system 'away'"):
        _load(tmp_path, '[[systems]]\nname = "home"\n[[sinks]]\ntype = "webhook"\nurl = "http://x"\n'
                        'systems = ["away"]\n')


def test_a_config_error_never_shows_a_secret(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError) as info:
        _load(tmp_path, '[[systems]]\nname = "home"\nsigning_token = 12345678\n')
    assert "12345678" not in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        '[[systems]]\nname = "home"\nmode = "{secret}"\n',  # a token pasted into the wrong key
        '[[sinks]]\ntype = "{secret}"\nurl = "http://x"\n',
        '[[sinks]]\ntype = "webhook"\nurl = "http://x"\nsecret = "{secret}"\n',  # not whsec_...
        '[[sinks]]\ntype = "webhook"\nurl = "http://x"\nsecret = "whsec_{secret}!"\n',  # not base64
    ],
)
def test_a_misplaced_secret_is_not_echoed(tmp_path: Path, text: str) -> None:
    secret = "pk_sig_9f8e7d6c5b4a"
    with pytest.raises(config.ConfigError) as info:
        _load(tmp_path, text.format(secret=secret))
    assert secret not in str(info.value)


def test_sink_secrets_are_checked_and_named(tmp_path: Path) -> None:
    ok = _load(tmp_path, '[[sinks]]\ntype = "webhook"\nurl = "http://x"\nsecret = "whsec_c2VjcmV0"\n')
    assert ok.sinks[0].secret.reveal() == "whsec_c2VjcmV0"
    for value in ("whsec_", "whsec_***", "c2VjcmV0"):
        with pytest.raises(config.ConfigError, match=r"sinks\.1\.secret \(sink 'ha'\): must be empty or whsec_"):
            _load(tmp_path, '[[sinks]]\ntype = "mqtt"\nurl = "mqtt://x"\n'
                            f'[[sinks]]\nname = "ha"\ntype = "webhook"\nurl = "http://x"\nsecret = "{value}"\n')


def test_sink_names_are_keys_and_unique(tmp_path: Path) -> None:
    settings = _load(tmp_path, '[[sinks]]\nname = "ha-front"\ntype = "webhook"\nurl = "http://x"\n'
                               '[[sinks]]\ntype = "mqtt"\nurl = "mqtt://x"\n')
    assert settings.sinks[0].key == "ha-front"
    assert settings.sinks[1].key.startswith("mqtt-")  # unnamed: the hash earlier databases hold
    with pytest.raises(config.ConfigError, match="sinks: duplicate name 'a'"):
        _load(tmp_path, '[[sinks]]\nname = "a"\ntype = "webhook"\nurl = "http://x"\n'
                        '[[sinks]]\nname = "a"\ntype = "mqtt"\nurl = "mqtt://x"\n')


def test_relative_paths_are_resolved_against_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "signing").write_text("tok-from-file\n")
    path = tmp_path / "etc" / "pkrelay.toml"
    path.write_text('data_dir = "./data"\n[[systems]]\nname = "home"\nsigning_token = "file:signing"\n')
    monkeypatch.chdir(tmp_path)
    settings = config.load(path, {})
    assert settings.data_dir == str(tmp_path / "etc" / "data")
    assert settings.systems[0].signing_token.reveal() == "tok-from-file"
    assert config.load(tmp_path / "absent.toml", {}).data_dir == str(tmp_path / "data")  # no file: the cwd


def test_a_secret_file_that_does_not_exist_yet_is_an_empty_secret_and_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """The README's webhook step: `signing_token = "file:pk-signing-token"` before the bot shows the token."""
    with caplog.at_level(logging.WARNING, "pkrelay.config"):
        settings = _load(tmp_path, '[[systems]]\nname = "home"\nsigning_token = "file:pk-signing-token"\n'
                                   'api_token = "file:secrets/pk-api"\n')
    assert not settings.systems[0].signing_token and not settings.systems[0].api_token
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2
    assert "systems.0.signing_token: its file pk-signing-token" in warned[0] and "does not exist yet" in warned[0]
    assert "systems.0.api_token: its file secrets/pk-api" in warned[1]


@pytest.mark.parametrize(("text", "key"), [
    ('[server]\nmetrics_token = "file:metrics"\n', "server.metrics_token"),
    ('[[sinks]]\ntype = "webhook"\nurl = "http://x"\nsecret = "file:whsec"\n', "sinks.0.secret"),
])
def test_a_secret_whose_emptiness_opens_something_must_exist(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(config.ConfigError, match=f"{key}: its file .* does not exist"):
        _load(tmp_path, text)


def test_a_secret_file_that_cannot_be_read_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "pk-api").mkdir()  # a directory: exists, not readable as a file
    with pytest.raises(config.ConfigError, match="systems.0.api_token: its file cannot be read"):
        _load(tmp_path, '[[systems]]\nname = "home"\napi_token = "file:pk-api"\n')


def test_a_named_config_file_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.CONFIG_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert config.config_path(None) == Path("pkrelay.toml")  # the default may be absent: defaults
    with pytest.raises(config.ConfigError, match="missing.toml: no such config file"):
        config.config_path("missing.toml")
    monkeypatch.setenv(config.CONFIG_ENV, "also-missing.toml")
    with pytest.raises(config.ConfigError, match="also-missing.toml: no such config file"):
        config.config_path(None)


def test_log_lines_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    logs.setup(["hunter2-token"], "test")
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed with %s", ("hunter2-token",), None)
    logs.redactor.filter(record)
    assert record.getMessage() == "failed with " + logs.MASK


def test_reload_rereads_file_secrets(tmp_path: Path) -> None:
    path = tmp_path / "pkrelay.toml"
    path.write_text('[[systems]]\nname = "home"\n')
    live = config.LiveSettings(path, config.load(path, {}))
    path.write_text('[[systems]]\nname = "home"\n[[systems]]\nname = "new"\nsigning_token = "file:new.token"\n')
    live.reload()  # pasted the system before the token: no token yet
    assert not live.current.systems[1].signing_token
    assert not live.changed()
    (tmp_path / "new.token").write_text("first\n")
    assert live.changed()  # the token file is watched too
    live.reload()
    assert live.current.systems[1].signing_token.reveal() == "first"
    (tmp_path / "new.token").write_text("second-and-longer\n")
    assert live.changed()
    live.reload()
    assert live.current.systems[1].signing_token.reveal() == "second-and-longer"


def test_reload_takes_new_systems_and_keeps_the_old_config_on_error(tmp_path: Path) -> None:
    path = tmp_path / "pkrelay.toml"
    path.write_text('[[systems]]\nname = "home"\n')
    live = config.LiveSettings(path, config.load(path, {}))
    path.write_text('[[systems]]\nname = "home"\n[[systems]]\nname = "second"\n# grown\n')
    assert live.changed()
    live.reload()
    assert [s.name for s in live.current.systems] == ["home", "second"]
    path.write_text('[[systems]]\nname = "home"\nbogus = 1\n')
    with pytest.raises(config.ConfigError):
        live.reload()
    assert [s.name for s in live.current.systems] == ["home", "second"]


# A config as the 0.1.0 release's README wrote it: `message_rate` was removed in 0.2.0.
PREVIOUS_RELEASE = """\
data_dir = "./data"

[server]
port = 8080

[pluralkit]
get_rate = 10
update_rate = 3
message_rate = 10

[[systems]]
name = "home"
"""


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_key_an_earlier_release_had_is_one_warning_naming_it_and_its_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    settings = _load(tmp_path, PREVIOUS_RELEASE)
    assert settings.pluralkit.get_rate == 10 and [s.name for s in settings.systems] == ["home"]
    assert _warnings(caplog) == [f"{tmp_path / 'pkrelay.toml'}: `pluralkit.message_rate` (line 9) is no longer used "
                                 "and is ignored (removed in 0.2.0)"]
    assert caplog.records[0].name == "pkrelay.config"


def test_the_children_of_pkrelay_run_do_not_repeat_the_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """`pkrelay run` warned at its start; its receiver and worker load the same file."""
    caplog.set_level(logging.WARNING)
    settings = _load(tmp_path, PREVIOUS_RELEASE, {config.WARNED_ENV: "1"})
    assert [s.name for s in settings.systems] == ["home"]
    assert _warnings(caplog) == []


def test_an_env_override_of_a_removed_key_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    settings = _load(tmp_path, "", {"PKRELAY_PLURALKIT__MESSAGE_RATE": "10", "PKRELAY_PLURALKIT__GET_RATE": "5"})
    assert settings.pluralkit.get_rate == 5
    assert _warnings(caplog) == ["environment variable PKRELAY_PLURALKIT__MESSAGE_RATE: `pluralkit.message_rate` "
                                 "is no longer used and is ignored (removed in 0.2.0)"]


def test_a_removed_key_of_a_system_is_named_with_its_entry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(removed.REMOVED, "systems.*.colour", "0.9.0")
    caplog.set_level(logging.WARNING)
    _load(tmp_path, '[[systems]]\nname = "a"\n[[systems]]\nname = "b"\ncolour = "red"\n')
    assert _warnings(caplog) == [f"{tmp_path / 'pkrelay.toml'}: `systems.1.colour` (line 5) is no longer used "
                                 "and is ignored (removed in 0.9.0)"]


def test_live_reload_does_not_repeat_the_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    path = tmp_path / "pkrelay.toml"
    path.write_text(PREVIOUS_RELEASE)
    live = config.LiveSettings(path, config.load(path, {}))
    assert len(_warnings(caplog)) == 1  # at load; the watcher's own first read says nothing
    path.write_text(PREVIOUS_RELEASE + 'signing_token = "file:home.token"\n')
    live.reload()  # the token file is not there yet: that is new, the removed key is not
    assert len(_warnings(caplog)) == 2 and "systems.0.signing_token: its file home.token" in _warnings(caplog)[1]
    (tmp_path / "home.token").write_text("token\n")
    assert live.changed()
    live.reload()
    assert len(_warnings(caplog)) == 2  # same key, same line: said already
    path.write_text(PREVIOUS_RELEASE.replace("[server]\n", "[server]\nhost = \"0.0.0.0\"\n"))
    live.reload()
    assert _warnings(caplog)[2:] == [f"{path}: `pluralkit.message_rate` (line 10) is no longer used and is ignored "
                                     "(removed in 0.2.0)"]
