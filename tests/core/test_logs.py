"""Logs: JSON lines by default, text on request, never a secret."""

from __future__ import annotations

import io
import json
import logging

from consul_sync import logs


def emit(fmt: str, secret: str) -> str:
    stream = io.StringIO()
    redactor = logs.setup("info", fmt, stream)
    redactor.add(secret)
    log = logging.getLogger("consul_sync.test")
    log.info("talking to consul with token %s", secret, extra={"source": "dc1"})
    try:
        raise RuntimeError(f"403 for token {secret}")
    except RuntimeError:
        log.exception("request failed")
    return stream.getvalue()


def test_json_lines_with_fields_and_no_secret() -> None:
    text = emit("json", "b1946ac9-2f3e-4d0b-9b5d-secret")
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert lines[0]["level"] == "info" and lines[0]["source"] == "dc1"
    assert lines[0]["msg"] == "talking to consul with token ********"
    assert "RuntimeError" in lines[1]["error"]
    assert "b1946ac9" not in text


def test_text_format_has_no_secret_either() -> None:
    text = emit("text", "another-secret-value")
    assert "talking to consul with token ********" in text
    assert "another-secret-value" not in text


def test_log_level_is_honoured() -> None:
    stream = io.StringIO()
    logs.setup("warning", "json", stream)
    logging.getLogger("consul_sync.test").info("hidden")
    logging.getLogger("consul_sync.test").warning("shown")
    assert "hidden" not in stream.getvalue() and "shown" in stream.getvalue()
