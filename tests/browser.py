"""A real headless browser for the status page tests: Debian's ``chromium``.

Not installed: the test fails (``.ci/run`` installs it with ``apt-get install
-y chromium``); a status page test is never skipped.
"""

from __future__ import annotations

import html
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

#: A phone's viewport (the page must read on one).
PHONE = "390,844"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise AssertionError(
            "chromium is not installed; the status page tests need a real headless browser: "
            "apt-get update && apt-get install -y chromium (.ci/run does this)"
        )
    return found


def _args(profile: Path) -> list[str]:
    return [
        chromium(),
        "--headless",
        "--no-sandbox",  # as root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        f"--window-size={PHONE}",
    ]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=False, capture_output=True, text=True, timeout=60)


def dom(url: str, profile: Path) -> str:
    """The DOM chromium built for ``url`` (``--dump-dom`` needs scripts on;
    the tests check that the page has none)."""
    done = _run([*_args(profile), "--dump-dom", url])
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def screenshot(url: str, profile: Path, path: Path) -> Path:
    done = _run([*_args(profile), f"--screenshot={path}", url])
    assert done.returncode == 0 and path.exists(), done.stderr[-2000:]
    return path


def visible_text(document: str) -> str:
    """What a person reads: the body's text without tags, styles or scripts."""
    body = document.split("<body", 1)[-1]
    body = re.sub(r"<(style|script)[^>]*>.*?</\1>", " ", body, flags=re.S)
    text = html.unescape(re.sub(r"<[^>]+>", " ", body))
    return re.sub(r"\s+", " ", text)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return str(reply.read().decode())


def wait_ready(process: subprocess.Popen[Any], addr: str, timeout: float = 20.0) -> None:
    """Wait until the consul-sync ``process`` serving probes on ``addr`` answers ``/readyz``
    with "ready" (it must not exit meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if fetch(f"http://{addr}/readyz").startswith("ready"):
                return
        except OSError:
            pass
        assert process.poll() is None, process.stderr.read() if process.stderr else "exited"
        assert time.monotonic() < deadline, "consul-sync did not become ready"
        time.sleep(0.1)
