"""``stratum tls init``: a private CA and the certificates to turn TLS on, in one step."""

from __future__ import annotations

import ssl
from pathlib import Path

import typer
import yaml
from cryptography import x509

from stratum.cli.context import console, get_ctx
from stratum.security.certs import make_tls
from stratum.security.home import private_home

app = typer.Typer(no_args_is_help=True, help="TLS for gateways, the control plane and replicas.")


@app.command("init")
def init(
    ctx: typer.Context,
    host: list[str] = typer.Option(
        [], "--host", help="Another name or IP the server certificate is valid for "
                           "(127.0.0.1, ::1 and localhost always are); repeat for several."),
    mutual: bool = typer.Option(False, "--mutual",
                                help="Replicas accept only clients with the client "
                                     "certificate (mutual TLS between gateway and replicas)."),
    folder: Path | None = typer.Option(None, "--folder", help="Where to write [<home>/tls]."),
    force: bool = typer.Option(False, "--force", help="Replace an existing CA."),
) -> None:
    """Make a CA, a server certificate and a client certificate, and print the settings
    that use them. Nothing is switched on until those settings are in your YAML file."""
    c = get_ctx(ctx)
    home = private_home(c.settings.home)
    files = make_tls(folder or home / "tls", host, force=force)
    # Read back: the chain verifies and names what it should.
    ctx_check = ssl.create_default_context(cafile=str(files.ca_cert))
    ctx_check.load_cert_chain(files.server_cert, files.server_key)
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = [str(n.value) for n in sans]
    console.print(f"[green]wrote[/] a CA and certificates to {files.folder} (keys 0600)\n"
                  f"  server certificate valid for {', '.join(names)} until "
                  f"{cert.not_valid_after_utc:%Y-%m-%d}\n"
                  "Add to your settings file (then restart the control plane: "
                  "`stratum stop` and deploy again):\n")
    console.print(yaml.safe_dump(files.settings(mutual=mutual), sort_keys=False), end="",
                  markup=False, highlight=False)
    console.print(f"\nClients: curl --cacert {files.ca_cert} https://127.0.0.1:8000/...",
                  markup=False, highlight=False)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="tls", help="TLS: a private CA and certificates.")
