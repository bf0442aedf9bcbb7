"""The admin's first day with the configuration: a typo is an error that names the key and the nearest real
one, a bad platform section is one bilingual line per field, and no secret is ever echoed."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

import bot.cli_config  # noqa: F401  (registers the platforms' settings models with core.config)
from bot.cli import main
from core.config import Settings, load_settings
from core.config_check import ConfigError, mask_url
from integrations.dingtalk.settings import DingTalkSettings
from integrations.feishu.settings import FeishuSettings
from integrations.wecom.settings import WeComSettings

AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"  # 43 characters, as WeCom generates them
SECRETS = (
    "S3CRET-wecom-app",
    "AESKEYTAIL-never-echo-xyzzy",
    "feishu-SECRET-42",
    "ding-SECRET-77",
    "YON-SECRET-9",
)


def _leaks(text: str) -> list[str]:
    """The secrets ``text`` shows, whole or in part (pydantic echoes the tail of a long input)."""
    return [secret for secret in SECRETS if secret in text or secret[-6:] in text]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.chdir(tmp_path)
    for k in list(os.environ):
        if k.startswith("PANDIAN_") and not k.startswith("PANDIAN_TEST_"):
            monkeypatch.delenv(k)
    return tmp_path


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pandian.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _problems(**overrides: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(**overrides)
    return caught.value.problems


def test_typos_in_the_file_name_the_key_and_the_nearest_one(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'databse_url = "sqlite:///elsewhere.db"\n[planing]\ndormant_days = 60\n'
                           "[planning.policies.A]\ncounts_per_yer = 26\n"
                           '[[erp.kingdee.movement_sources]]\nsource = "X"\nqty_feild = "FQty"\n')  # fmt: skip
    problems = _problems()
    assert len(problems) == 4
    assert problems[0] == (
        f"{path}：未知配置项 databse_url，是否想写 database_url？ / "
        f"{path}: unknown setting databse_url; did you mean database_url?"
    )
    assert "planing，是否想写 planning？" in problems[1] and "did you mean planning?" in problems[1]
    assert "did you mean planning.policies.A.counts_per_year?" in problems[2]
    assert "did you mean erp.kingdee.movement_sources[0].qty_field?" in problems[3]
    with pytest.raises(ConfigError):  # Settings() itself refuses, not only the CLI's loader
        Settings()


def test_a_typo_in_a_platform_section_is_named(tmp_path: Path) -> None:
    _toml(
        tmp_path,
        f'[wecom]\ncorp_id = "ww1"\nagent_id = 1\nsecret = "s"\ntoken = "t"\nencodng_aes_key = "{AES_KEY}"\n',
    )
    (problem,) = _problems()
    assert "wecom.encodng_aes_key" in problem and "did you mean wecom.encoding_aes_key?" in problem


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PANDIAN_PLANNING__DORMANT_DAY", "60")  # a key of a section: checked like the file
    monkeypatch.setenv("PANDIAN_DATABSE_URL", "sqlite:///x.db")  # a near miss of a setting
    monkeypatch.setenv("PANDIAN_ERP__KINGDEE__APP_SECRT", "x")
    assert _problems() == [
        "环境变量：未知配置项 PANDIAN_DATABSE_URL，是否想写 PANDIAN_DATABASE_URL？ / environment variable: unknown "
        "setting PANDIAN_DATABSE_URL; did you mean PANDIAN_DATABASE_URL?",
        "环境变量：未知配置项 PANDIAN_ERP__KINGDEE__APP_SECRT，是否想写 PANDIAN_ERP__KINGDEE__APP_SECRET？ / "
        "environment variable: unknown setting PANDIAN_ERP__KINGDEE__APP_SECRT; did you mean "
        "PANDIAN_ERP__KINGDEE__APP_SECRET?",
        "环境变量：未知配置项 PANDIAN_PLANNING__DORMANT_DAY，是否想写 PANDIAN_PLANNING__DORMANT_DAYS？ / environment "
        "variable: unknown setting PANDIAN_PLANNING__DORMANT_DAY; did you mean PANDIAN_PLANNING__DORMANT_DAYS?",
    ]
    for k in ("PANDIAN_PLANNING__DORMANT_DAY", "PANDIAN_DATABSE_URL", "PANDIAN_ERP__KINGDEE__APP_SECRT"):
        monkeypatch.delenv(k)
    # names that share the prefix but are no setting (tools, tests) are left alone
    for k in ("PANDIAN_FOO", "PANDIAN_TEST_DATABASE_URL", "PANDIAN_UPDATE_GOLDEN", "PANDIAN_MIGRATE_URL"):
        monkeypatch.setenv(k, "1")
    monkeypatch.setenv("PANDIAN_PLANNING__POLICIES__B__COUNTS_PER_YEAR", "6")  # a free key (the class): fine
    assert load_settings().planning.policies["B"].counts_per_year == 6


def test_a_missing_or_broken_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PANDIAN_CONFIG", str(tmp_path / "etc" / "pandian.toml"))
    (problem,) = _problems()
    assert "PANDIAN_CONFIG" in problem and str(tmp_path / "etc" / "pandian.toml") in problem
    monkeypatch.delenv("PANDIAN_CONFIG")
    _toml(tmp_path, "[planning\ndormant_days = 3\n")
    (problem,) = _problems()
    assert "TOML" in problem and "not valid TOML" in problem


def _bad_platforms(tmp_path: Path) -> None:
    _toml(
        tmp_path,
        f"""
[wecom]
corp_id = "ww1"
agent_id = "abc"
secret = "{SECRETS[0]}"
token = "tok"
encoding_aes_key = "{SECRETS[1]}"

[feishu]
app_id = "cli_1"
app_secret = "{SECRETS[2]}"
mode = "polling"

[dingtalk]
app_key = "ding1"
app_secret = "{SECRETS[3]}"
robot_code = ""
card_template_id = "t.schema"
""",
    )


def test_a_wrong_platform_section_is_one_line_per_field_and_never_a_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _bad_platforms(tmp_path)
    with caplog.at_level(logging.DEBUG):
        problems = _problems()
    assert problems == [
        "wecom.agent_id：应为整数 / wecom.agent_id: Input should be a valid integer, unable to parse string as an "
        "integer",
        "wecom.encoding_aes_key：至少 43 个字符 / wecom.encoding_aes_key: String should have at least 43 characters",
        "feishu.verification_token：缺少必填项 / feishu.verification_token: Field required",
        "feishu.mode：只能是 'webhook' or 'websocket' / feishu.mode: Input should be 'webhook' or 'websocket'",
        "dingtalk.robot_code：至少 1 个字符 / dingtalk.robot_code: String should have at least 1 character",
    ]
    text = "\n".join(problems) + caplog.text
    assert not _leaks(text)


@pytest.mark.parametrize("args", [["config"], ["serve"], ["plan"], ["erp", "check"], ["jobs", "list"]])
def test_the_cli_says_it_in_lines_not_a_traceback(tmp_path: Path, args: list[str]) -> None:
    _bad_platforms(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith("Error: 配置错误 / configuration error:\n")
    assert len(result.output.strip().splitlines()) == 1 + 5
    assert not _leaks(result.output)
    assert not isinstance(result.exception, ValidationError)


def test_the_platform_models_never_echo_or_show_a_secret() -> None:
    for model, data in (
        (WeComSettings, {"corp_id": "ww1", "agent_id": 1, "secret": SECRETS[0], "token": "t" * 40,
                         "encoding_aes_key": "!" * 43}),
        (FeishuSettings, {"app_id": "cli_1", "app_secret": SECRETS[2], "verification_token": 5}),
        (DingTalkSettings, {"app_key": "k", "app_secret": SECRETS[3], "robot_code": "", "card_template_id": "t"}),
    ):  # fmt: skip
        with pytest.raises(ValidationError) as caught:
            model.model_validate(data)
        assert not _leaks(str(caught.value))
        assert "!!!!" not in str(caught.value)
    good = WeComSettings(corp_id="ww1", agent_id=1, secret=SECRETS[0], token="tok", encoding_aes_key=AES_KEY)
    assert SECRETS[0] not in repr(good) and AES_KEY not in repr(good) and good.secret == SECRETS[0]
    fs = FeishuSettings(app_id="cli_1", app_secret=SECRETS[2], verification_token="v", encrypt_key="e" * 20)
    assert SECRETS[2] not in repr(fs) and fs.app_secret == SECRETS[2]


def test_an_erp_section_error_never_echoes_its_secret() -> None:
    erp = {"connector": "yonbip", "yonbip": {"app_key": "k", "app_secret": SECRETS[4], "org": "o"}}
    with pytest.raises(ValidationError) as caught:  # the model check sees the whole section as its input
        Settings(erp=erp)
    assert "gateway_url" in str(caught.value) and not _leaks(str(caught.value))
    (problem,) = _problems(erp=erp)
    assert problem.startswith("erp.yonbip：取值无效 / erp.yonbip: yonbip needs gateway_url") and not _leaks(
        problem
    )


def test_pandian_config_shows_values_sources_and_masks_secrets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = _toml(
        tmp_path,
        f"""
[planning]
dormant_days = 60
[wecom]
corp_id = "ww1"
agent_id = 1000002
secret = "{SECRETS[0]}"
token = "tok"
encoding_aes_key = "{AES_KEY}"
[erp]
connector = "kingdee"
[erp.kingdee]
server_url = "http://erp.example.com/k3cloud/"
acct_id = "1"
username = "u"
app_id = "a"
org = "100"
""",
    )
    monkeypatch.setenv("PANDIAN_PLANNING__ZERO_CONFIRM", "false")
    monkeypatch.setenv("PANDIAN_ERP__KINGDEE__APP_SECRET", SECRETS[4])
    monkeypatch.setenv("PANDIAN_DATABASE_URL", "postgresql://pandian:pg-PASSWORD@db.internal/pandian")
    result = CliRunner().invoke(main, ["config", "--format", "json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    rows = {r["name"]: r for r in shown["settings"]}
    assert rows["planning.dormant_days"] == {"name": "planning.dormant_days", "value": 60, "source": "file",
                                             "origin": str(path)}  # fmt: skip
    assert rows["planning.zero_confirm"] == {"name": "planning.zero_confirm", "value": False, "source": "env",
                                             "origin": "PANDIAN_PLANNING__ZERO_CONFIRM"}  # fmt: skip
    assert (
        rows["planning.inaccurate_days"]["source"] == "default"
        and rows["planning.inaccurate_days"]["origin"] is None
    )
    assert rows["wecom.api_base"] == {"name": "wecom.api_base", "value": "https://qyapi.weixin.qq.com",
                                      "source": "default", "origin": None}  # fmt: skip
    for name in ("wecom.secret", "wecom.token", "wecom.encoding_aes_key", "erp.kingdee.app_secret"):
        assert rows[name]["value"] == "******", name
    assert rows["erp.kingdee.app_secret"]["origin"] == "PANDIAN_ERP__KINGDEE__APP_SECRET"
    assert rows["database_url"]["value"] == "postgresql://pandian:******@db.internal/pandian"
    assert shown["platforms"] == ["wecom"] and shown["config_file"] == {"path": str(path), "exists": True}
    assert shown["database"] == {"url": "postgresql://pandian:******@db.internal/pandian", "sqlite_file": None,
                                 "exists": None}  # fmt: skip
    table = CliRunner().invoke(main, ["config"])
    assert table.exit_code == 0
    assert any(
        line.startswith("planning.dormant_days") and str(path) in line for line in table.output.splitlines()
    )
    changed = CliRunner().invoke(main, ["config", "--changed", "--format", "json"])
    assert "planning.inaccurate_days" not in changed.output and "planning.dormant_days" in changed.output
    for out in (result.output, table.output, changed.output):
        assert not _leaks(out) and AES_KEY[-6:] not in out and "PASSWORD" not in out, out


def test_mask_url() -> None:
    assert mask_url("redis://:pw@localhost:6379/0") == "redis://:******@localhost:6379/0"
    assert mask_url("postgresql://u@h/db") == "postgresql://u@h/db"


def test_a_database_url_error_never_shows_its_password() -> None:
    from core.db import DatabaseURLError, normalise_url

    with pytest.raises(DatabaseURLError) as caught:
        normalise_url("mysql://pandian:db-PASSWORD-1@db.internal/pandian")
    assert "mysql://pandian:******@db.internal/pandian" in str(caught.value) and "PASSWORD" not in str(
        caught.value
    )
