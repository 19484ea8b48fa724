"""TLS end to end, every part a real process: `stratum tls init` makes a CA; the control
plane, its gateway and its replicas serve HTTPS with those certificates, and the replicas
ask for a client certificate (mutual TLS), which the gateway and the control plane present.

One deployment lives through the module. The refusals are checked at the socket: a plain
HTTP client, a client that does not trust the CA, and a client without the client
certificate each get no answer from a Stratum server, and the server keeps serving.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from stratum.cli.main import app
from stratum.config import Settings, load_settings
from stratum.control.client import ControlClient
from stratum.control.discovery import read_record
from stratum.errors import ConfigError, ConflictError
from stratum.security.certs import TlsFiles, make_tls
from stratum.store import Store
from tests.integration.gateway_fixtures import (
    SAMPLE,
    load_loop,
    register_tiny,
    stop_control_plane,
)
from tests.services import free_port

pytestmark = pytest.mark.integration

TUNING = {"control": {"reconcile_interval_s": 0.3, "restart_backoff_s": 0.2},
          "gateway": {"health_interval_s": 0.5}, "log_level": "WARNING"}


class TlsCluster:
    def __init__(self, settings: Settings, files: TlsFiles, port: int) -> None:
        self.settings, self.files, self.port = settings, files, port
        self.url = f"https://127.0.0.1:{port}"
        self.client = ControlClient(settings)
        self.trust = ssl.create_default_context(cafile=str(files.ca_cert))
        self.replicas: list[dict[str, Any]] = []
        self.secret = ""

    def mutual(self) -> ssl.SSLContext:
        """What the gateway presents to replicas: the CA and the client certificate."""
        ctx = ssl.create_default_context(cafile=str(self.files.ca_cert))
        ctx.load_cert_chain(self.files.client_cert, self.files.client_key)
        return ctx


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsCluster]:
    root = tmp_path_factory.mktemp("tls")
    home = root / "home"
    runner = CliRunner()
    result = runner.invoke(app, ["--home", str(home), "tls", "init", "--mutual"])
    assert result.exit_code == 0, result.output
    files = _files(home / "tls")
    printed = yaml.safe_load(result.stdout[result.stdout.index("gateway:"):
                                           result.stdout.index("\nClients:")])
    assert printed == files.settings(mutual=True)  # what init prints is what it wrote
    config = root / "stratum.yaml"
    config.write_text(yaml.safe_dump(_merge(printed, TUNING)))
    settings = load_settings(config, home=home)
    store = Store.open(settings)
    assert register_tiny(store, seed=1) == 1
    store.close()
    c = TlsCluster(settings, files, free_port())
    try:
        dep = c.client.deploy(model="tiny@1", replicas=1, port=c.port)
        dep = c.client.wait_ready("tiny", dep["generation"], timeout=180)
        c.replicas = dep["observed"]["replicas"]
        c.secret = _secret_of(c.replicas[0]["pid"])
        yield c
    finally:
        stop_control_plane(settings)


def _files(folder: Path) -> TlsFiles:
    return TlsFiles(folder, folder / "ca.pem", folder / "ca.key", folder / "server.pem",
                    folder / "server.key", folder / "client.pem", folder / "client.key")


def _secret_of(pid: int) -> str:
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(v.split(b"=", 1)[1].decode() for v in env
                if v.startswith(b"STRATUM_REPLICA_SECRET="))


def test_every_part_speaks_https(tls_cluster: TlsCluster) -> None:
    c = tls_cluster
    rec = read_record(c.settings)
    assert rec is not None and rec["url"].startswith("https://127.0.0.1:")
    dep = c.client.call("GET", "/deployments/tiny")  # the CLI's client verifies the CA
    assert dep["observed"]["gateway"]["url"] == c.url
    assert [r["url"].split(":")[0] for r in c.replicas] == ["https"]
    r = httpx.post(f"{c.url}/v1/models/tiny:predict", json=SAMPLE, timeout=10, verify=c.trust)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["class"] in (0, 1, 2)


def test_gateway_serves_under_load_over_tls(tls_cluster: TlsCluster) -> None:
    import asyncio

    res = asyncio.run(load_loop(tls_cluster.url, "tiny", seconds=2.0, concurrency=8,
                                verify=tls_cluster.trust))
    assert res.ok > 50 and res.failed == [], res.failed[:5]


@pytest.mark.parametrize("server", ["gateway", "control", "replica"])
def test_plain_http_and_untrusted_clients_get_nothing(tls_cluster: TlsCluster,
                                                      server: str) -> None:
    c = tls_cluster
    rec = read_record(c.settings)
    assert rec is not None
    url = {"gateway": c.url, "control": rec["url"], "replica": c.replicas[0]["url"]}[server]
    plain = url.replace("https://", "http://")
    with pytest.raises(httpx.TransportError):  # a TLS server hangs up on plain HTTP
        httpx.get(plain + "/v2/health/live", timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(url + "/v2/health/live", timeout=5)  # the system CAs do not know ours
    # The server took no harm: a good client still gets through.
    verify = c.mutual() if server == "replica" else c.trust
    assert httpx.get(url + ("/health" if server == "control" else "/v2/health/live"),
                     timeout=5, verify=verify).status_code == 200


def test_replicas_require_the_client_certificate(tls_cluster: TlsCluster) -> None:
    c = tls_cluster
    url = c.replicas[0]["url"] + "/v1/models/tiny:predict"
    headers = {"x-stratum-replica-secret": c.secret}
    # Trusts the server but has no client certificate: refused in the handshake (TLS 1.3
    # reports it on the first read).
    with pytest.raises(httpx.TransportError):
        httpx.post(url, json=SAMPLE, headers=headers, timeout=5, verify=c.trust)
    # A certificate of another CA is refused the same way.
    other = make_tls(c.files.folder.parent / "other-ca")
    stranger = ssl.create_default_context(cafile=str(c.files.ca_cert))
    stranger.load_cert_chain(other.client_cert, other.client_key)
    with pytest.raises(httpx.TransportError):
        httpx.post(url, json=SAMPLE, headers=headers, timeout=5, verify=stranger)
    # The certificate alone is not enough either: the deployment secret is still checked.
    r = httpx.post(url, json=SAMPLE, timeout=5, verify=c.mutual())
    assert r.status_code == 401, r.text
    r = httpx.post(url, json=SAMPLE, headers=headers, timeout=5, verify=c.mutual())
    assert r.status_code == 200, r.text


def test_a_bad_certificate_is_a_clear_error_at_start(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home")
    env = {**settings.child_env(),
           "STRATUM_SETTINGS_JSON": settings.model_copy(update={"gateway": settings.gateway.
                                                                 model_copy(update={"tls": _tls(
                                                                     tmp_path)})}).
           model_dump_json()}
    proc = subprocess.run([sys.executable, "-m", "stratum.gateway", "--port", str(free_port()),
                           "--replica", "http://127.0.0.1:9"], env=env, capture_output=True,
                          timeout=60, text=True)
    assert proc.returncode != 0
    assert "gateway.tls: cannot load certificate" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def _tls(tmp_path: Path) -> Any:
    from stratum.config import TlsSettings

    bogus = tmp_path / "not-a-cert.pem"
    bogus.write_text("not a certificate")
    return TlsSettings(cert_file=bogus, key_file=bogus)


def test_half_a_tls_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="set both cert_file and key_file"):
        load_settings(home=tmp_path, gateway={"tls": {"cert_file": "x.pem"}})
    with pytest.raises(ConfigError, match="client_ca_file"):
        load_settings(home=tmp_path, serve={"tls": {"client_ca_file": "ca.pem"}})


def test_tls_init_refuses_to_replace_a_ca(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["--home", str(tmp_path / "home"), "tls", "init"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    ca = (tmp_path / "home" / "tls" / "ca.pem").read_bytes()
    again = runner.invoke(app, args)
    # main() turns it into one red line and exit 1; here the runner holds the error.
    assert isinstance(again.exception, ConflictError), again.output
    assert "exists" in str(again.exception) and "--force" in str(again.exception)
    assert (tmp_path / "home" / "tls" / "ca.pem").read_bytes() == ca
    forced = runner.invoke(app, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert (tmp_path / "home" / "tls" / "ca.pem").read_bytes() != ca
    key = tmp_path / "home" / "tls" / "server.key"
    assert key.stat().st_mode & 0o077 == 0
