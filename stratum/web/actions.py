"""The actions of the Deployments page: scale, rollback, canary weight, alias move.

Each is two POSTs from the same session: the first shows what will change and asks to
confirm (a page, so it works without scripts), the second (``confirm=yes``) does it.
Deployment changes go through the control plane's own admin API, called in process with
the session's key, so they are validated, audited (with the browser's address) and
reconciled exactly as ``stratum scale`` / ``rollback`` / ``deploy`` are. The alias move
is a store write as ``stratum models alias`` makes it, audited here.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import quote

import httpx
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from stratum.control.audit import peer
from stratum.control.spec import DeploymentSpec, load_spec
from stratum.errors import BadRequestError, ConflictError
from stratum.security.names import validate_name
from stratum.web.site import PREFIX, Site, site_of


def _form(request: Request) -> dict[str, str]:
    form: dict[str, str] = request.state.form
    return form


def _int(form: dict[str, str], key: str) -> int:
    try:
        return int(form.get(key, ""))
    except ValueError:
        raise BadRequestError(f"{key} must be a whole number") from None


def _float(form: dict[str, str], key: str) -> float:
    try:
        value = float(form.get(key, ""))
    except ValueError:
        raise BadRequestError(f"{key} must be a number") from None
    if not math.isfinite(value):
        raise BadRequestError(f"{key} must be a finite number")
    return value


async def _spec(site: Site, name: str) -> DeploymentSpec:
    spec = load_spec((await site.run(site.meta.deployment, name)).spec)
    if spec is None:
        raise ConflictError(f"deployment {name!r} has no wanted state")
    return spec


async def _api(request: Request, method: str, path: str,
               body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    """Call the admin API of this very process as the session's key."""
    site = site_of(request)
    client = request.scope.get("client") or ("127.0.0.1", 0)
    transport = httpx.ASGITransport(app=site.parts.app, client=(str(client[0]), int(client[1])))
    async with httpx.AsyncClient(transport=transport, base_url="http://control") as http:
        r = await http.request(method, path, json=body, timeout=30.0,
                               headers={"authorization": f"Bearer {request.state.token}"})
    try:
        doc = r.json()
    except ValueError:
        doc = {"message": r.text[:500]}
    return r.status_code, doc if isinstance(doc, dict) else {"message": str(doc)}


def _back(form: dict[str, str]) -> str:
    """The deployment page a form came from (a checked name), else the overview."""
    name = form.get("deployment", "")
    return f"{PREFIX}/deployments/{validate_name(name, 'deployment name')}" if name \
        else f"{PREFIX}/"


def _confirm(request: Request, title: str, what: list[str], action: str) -> Response:
    fields = {k: v for k, v in _form(request).items() if k not in ("csrf", "confirm")}
    return site_of(request).render(request, "confirm.html", title=title, what=what,
                                   action=action, fields=fields, back=_back(fields))


def _answer(request: Request, name: str, done: str, status: int,
            doc: dict[str, Any]) -> Response:
    if status >= 400:
        return site_of(request).render(request, "error.html", status=status,
                                       title=f"The control plane refused ({status})",
                                       message=str(doc.get("message", doc)),
                                       hint=str(doc.get("hint") or ""))
    return RedirectResponse(f"{PREFIX}/deployments/{quote(name)}?done={done}", 303)


async def rollback(request: Request) -> Response:
    site, name = site_of(request), request.path_params["name"]
    spec = await _spec(site, name)
    if _form(request).get("confirm") != "yes":
        back = f"v{spec.previous.version}" if spec.previous else "nothing (no previous version)"
        return _confirm(request, f"Roll back {name}?",
                        [f"from {spec.model} v{spec.version} to {back}",
                         "pins the deployment: it stops following an alias"],
                        f"{PREFIX}/deployments/{quote(name)}/rollback")
    status, doc = await _api(request, "POST", f"/deployments/{quote(name)}/rollback")
    return _answer(request, name, "rollback", status, doc)


async def scale(request: Request) -> Response:
    site, name = site_of(request), request.path_params["name"]
    spec = await _spec(site, name)
    replicas = _int(_form(request), "replicas")
    if _form(request).get("confirm") != "yes":
        return _confirm(request, f"Scale {name}?",
                        [f"from {spec.replicas} to {replicas} replica(s)"]
                        + (["turns autoscaling off"] if spec.autoscale else []),
                        f"{PREFIX}/deployments/{quote(name)}/scale")
    status, doc = await _api(request, "POST", f"/deployments/{quote(name)}/scale",
                             {"replicas": replicas})
    return _answer(request, name, "scale", status, doc)


async def canary(request: Request) -> Response:
    """Set the canary's version and weight; weight 0 removes the canary."""
    site, name = site_of(request), request.path_params["name"]
    spec = await _spec(site, name)
    form = _form(request)
    percent = _float(form, "percent")
    version = _int(form, "version") if percent > 0 else None
    if _form(request).get("confirm") != "yes":
        now = (f"v{spec.canary.version} at {spec.canary.percent:g}%" if spec.canary
               else "no canary")
        then = f"v{version} at {percent:g}%" if version is not None else "no canary"
        return _confirm(request, f"Change the canary of {name}?", [f"from {now} to {then}"],
                        f"{PREFIX}/deployments/{quote(name)}/canary")
    body: dict[str, Any] = {"name": name, "model": f"{spec.model}@{spec.follow or spec.version}",
                            "canary": f"{spec.model}@{version}:{percent:g}"
                            if version is not None else None,
                            "shadow": f"{spec.model}@{spec.shadow.version}"
                            if spec.shadow else None}
    status, doc = await _api(request, "POST", "/deployments", body)
    return _answer(request, name, "canary", status, doc)


async def move_alias(request: Request) -> Response:
    site, model = site_of(request), request.path_params["name"]
    form = _form(request)
    alias, version = form.get("alias", "").strip(), _int(form, "version")
    back = _back(form)
    if form.get("confirm") != "yes":
        before = (await site.run(site.meta.aliases, model)).get(alias)
        return _confirm(request, f"Move {model}@{alias}?",
                        [f"from {f'v{before}' if before is not None else 'nowhere'} to "
                         f"v{version}", "deployments that follow it roll onto the new version"],
                        f"{PREFIX}/models/{quote(model)}/alias")

    def move() -> int | None:
        before = site.meta.aliases(model).get(alias)
        site.meta.set_alias(model, alias, version, reason=f"dashboard: {request.state.actor}")
        return before

    status, detail = 200, {"alias": alias, "after": version}
    try:
        detail["before"] = await site.run(move)
    except Exception as exc:
        status = getattr(exc, "http_status", 500)
        raise
    finally:
        await site.auditor.record(request.state.actor, peer(request.scope), "alias.set", model,
                                  status, detail)
    site.sup.wake.set()  # a deployment that follows the alias rolls at once
    if form.get("deployment"):
        return RedirectResponse(f"{back}?done=alias", 303)
    return RedirectResponse(f"{PREFIX}/models/{quote(model)}", 303)


__all__ = ["canary", "move_alias", "rollback", "scale"]
