"""Where the handoff takes the ESP token from: CAMPAIGNOPS_ESP_TOKEN, else the Prefect Secret
block CAMPAIGNOPS_ESP_TOKEN_BLOCK names (on the session's Prefect test server), else a clear
error; and `campaignops esp-token`. The token never shows in logs, output or the audit."""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from campaignops import audit, runs
from campaignops.cli import main
from campaignops.errors import CampaignOpsError, HandoffError
from campaignops.handoff.batches import count_recipients
from campaignops.secrets import load_esp_token
from tasks.markdown import handoff_markdown
from tests.conftest import TOKEN
from tests.flowkit import approved_run, hand_off, record_history

CAMPAIGN = "winback-lapsed-customers"


def _block_name() -> str:
    """A fresh Secret block name: the Prefect server is shared by the whole session."""
    return f"esp-token-{uuid.uuid4().hex[:10]}"


# -- where the ESP token comes from ----------------------------------------------------

@pytest.mark.unit
def test_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN", "env-token-1234")
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN_BLOCK", "no-such-block")  # never consulted
    token = load_esp_token()
    assert token.get_secret_value() == "env-token-1234"
    assert "env-token-1234" not in repr(token) and "env-token-1234" not in str(token)


@pytest.mark.unit
def test_neither_token_nor_block_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN", "")  # empty, as a deployment passes an unset one
    with pytest.raises(CampaignOpsError) as err:
        load_esp_token()
    message = str(err.value)
    assert "\n" not in message
    assert "CAMPAIGNOPS_ESP_TOKEN is not set" in message and "CAMPAIGNOPS_ESP_TOKEN_BLOCK" in message
    assert "campaignops esp-token save --block" in message


@pytest.mark.unit
def test_a_block_name_prefect_cannot_hold_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN_BLOCK", "ESP Token")
    with pytest.raises(CampaignOpsError, match="'ESP Token' is not valid: use lower-case"):
        load_esp_token()


@pytest.mark.flow
def test_token_from_a_secret_block_and_the_environment_wins(
        prefect_api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.blocks.system import Secret

    block = _block_name()
    Secret(value=SecretStr("12345")).save(block, overwrite=True)  # all digits: must stay a string
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN_BLOCK", block)
    assert load_esp_token().get_secret_value() == "12345"
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN", "from-the-env")
    assert load_esp_token().get_secret_value() == "from-the-env"


@pytest.mark.flow
def test_cli_saves_the_token_in_a_block_without_echoing_it(
        prefect_api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    block, secret = _block_name(), "cli-token-5f3e9a77"
    runner = CliRunner()
    saved = runner.invoke(main, ["esp-token", "save", "--block", block, "--stdin"],
                          input=secret + "\n")
    assert saved.exit_code == 0, saved.output
    assert f"Secret block {block}" in saved.output and secret not in saved.output
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN_BLOCK", block)
    assert load_esp_token().get_secret_value() == secret
    # the hidden prompt asks twice and replaces the block
    again = runner.invoke(main, ["esp-token", "save"], input="rotated-token\nrotated-token\n")
    assert again.exit_code == 0, again.output
    assert "rotated-token" not in again.output
    assert load_esp_token().get_secret_value() == "rotated-token"
    checked = runner.invoke(main, ["esp-token", "check"])
    assert checked.exit_code == 0 and f"Secret block {block}" in checked.output
    assert "rotated-token" not in checked.output
    empty = runner.invoke(main, ["esp-token", "save", "--block", block, "--stdin"], input="\n")
    assert empty.exit_code == 1 and "the ESP token is empty" in empty.output


@pytest.mark.flow
def test_handoff_with_the_token_only_in_a_block_delivers_every_recipient_once(
        prefect_api: str, handoff_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    from prefect.blocks.system import Secret

    engine, sandbox = handoff_env["engine"], handoff_env["sandbox"]
    run_id, qa_digest = approved_run(handoff_env["keys"])
    block = _block_name()
    Secret(value=SecretStr(TOKEN)).save(block, overwrite=True)
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN_BLOCK", block)
    caplog.set_level(logging.DEBUG)
    result = hand_off(run_id)
    record_history(run_id)
    approved = count_recipients(engine, run_id)
    delivered = sandbox.deliveries(CAMPAIGN, run_id)
    assert len(delivered) == approved > 1000 and set(delivered.values()) == {1}
    assert result.mode == "http" and result.reconciled
    assert runs.get_run(engine, run_id).status == runs.SENT
    out, err = capsys.readouterr()
    trail = json.dumps([r.details for r in audit.trail(engine, run_id)])
    for text in (caplog.text, out, err, trail, json.dumps(dataclasses.asdict(result), default=str), handoff_markdown(result)):
        assert TOKEN not in text


@pytest.mark.flow
def test_a_missing_block_fails_the_handoff_before_anything_is_posted(
        prefect_api: str, handoff_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    engine, sandbox = handoff_env["engine"], handoff_env["sandbox"]
    run_id, qa_digest = approved_run(handoff_env["keys"])
    block = _block_name()
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN_BLOCK", block)
    with pytest.raises(HandoffError) as err:
        hand_off(run_id)
    message = str(err.value)
    assert "\n" not in message and "nothing was sent" in message
    assert f"Secret block {block!r}" in message and "does not exist" in message
    assert f"campaignops esp-token save --block {block}" in message
    assert sandbox.deliveries(CAMPAIGN, run_id) == {} and sandbox.stats(run_id).get("requests", 0) == 0
    assert not any(r.step == "handoff" for r in audit.trail(engine, run_id))


@pytest.mark.flow
def test_an_unreachable_prefect_api_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN_BLOCK", "esp-token")
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api", PREFECT_CLIENT_MAX_RETRIES: 0}):
        with pytest.raises(CampaignOpsError) as err:
            load_esp_token()
    message = str(err.value)
    assert "\n" not in message and "could not be loaded from http://127.0.0.1:9/api" in message
    assert "PREFECT_API_URL" in message
