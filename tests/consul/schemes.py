"""Every scheme the consul source speaks, for tests that must hold on each:
``http``, ``https`` (a self-signed CA made here with openssl, a server
certificate for ``consul.test``) and ``unix`` (a socket in a temporary
directory).

The ``double_options`` fixture (keyword arguments for ``ConsulDouble``) is
parametrized over :data:`SCHEMES`; ``make_source(double, ...)`` takes the
double's address and TLS options.  A test module imports the fixtures
under their function names (``double_options_fixture``, ``pki_fixture``)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.consul_double import DoubleTLS

SCHEMES = ["http", "https", "unix"]
SERVER_NAME = "consul.test"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> Path:
    """A CA, a server certificate for consul.test and a client certificate, in ``d``."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=consul-sync test CA", cwd=d)  # fmt: skip
    for name, ext in (("server", f"subjectAltName=DNS:{SERVER_NAME}"), ("client", "")):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        (d / f"{name}.ext").write_text(ext + "\n" if ext else "basicConstraints=CA:FALSE\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=d)  # fmt: skip
    return d


@pytest.fixture(scope="session", name="pki")
def pki_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


def double_tls(pki: Path) -> DoubleTLS:
    return DoubleTLS(
        cert_file=str(pki / "server.pem"),
        key_file=str(pki / "server.key"),
        ca_file=str(pki / "ca.pem"),
        server_name=SERVER_NAME,
    )


@pytest.fixture(params=SCHEMES, name="double_options")
def double_options_fixture(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """``ConsulDouble`` keyword arguments for one scheme (the test is run once per scheme)."""
    scheme = request.param
    if scheme == "https":
        yield {"tls": double_tls(request.getfixturevalue("pki"))}
    elif scheme == "unix":
        # a short path: sun_path holds about 100 bytes
        yield {"unix_path": str(tmp_path_factory.mktemp("sock") / "consul.sock")}
    else:
        yield {}
