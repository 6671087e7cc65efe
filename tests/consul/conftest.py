from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

#: The real agent's recordings (one copy, shared with the double's tests).
RECORDINGS = Path(__file__).parents[1] / "fixtures" / "consul"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def recording(prefix: str) -> dict[str, Any]:
    """The recording whose file name starts with ``prefix`` (e.g. ``"09"``)."""
    (path,) = RECORDINGS.glob(f"{prefix}-*.json")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def body(prefix: str) -> Any:
    return recording(prefix)["response"]["body"]
