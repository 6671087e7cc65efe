"""The exchanges recorded from a real kube-apiserver v1.24 (read-only fixtures)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kubernetes"


@cache
def recording(prefix: str) -> dict[str, Any]:
    """The recording whose file name starts with ``prefix`` (e.g. ``"03"``)."""
    (path,) = FIXTURES.glob(f"{prefix}-*.json")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def response_body(prefix: str) -> dict[str, Any]:
    body: dict[str, Any] = recording(prefix)["response"]["body"]
    return body


def request_body(prefix: str) -> dict[str, Any]:
    body = recording(prefix)["request"]["body"]
    return json.loads(body) if isinstance(body, str) else body
