"""The labeling web app: a FastAPI application over a `Store`, served by uvicorn.

Pages (plain HTML and JS from static/, no build step):
    GET  /                  log in with an access token
    POST /login             form field `token` -> session cookie, then 303 to /label
    GET  /label             the labeling page
    GET  /admin             the admin page: annotators, their progress, tokens (admins only)
    POST /logout

JSON API (an annotator's session cookie, or `Authorization: Bearer <token>` for scripts):
    GET  /api/me                              who am I, my projects and progress
    GET  /api/projects/{p}/next               the next item, responses in display order
    POST /api/projects/{p}/labels             {assignment, choice, ranks, rationale};
                                              choice good|bad|cant_tell for a rating
    POST /api/projects/{p}/labels/undo        take back my latest label: its item comes
                                              next, with the label as "previous"
    GET  /api/projects/{p}/labels             my own labels (never anyone else's), newest
                                              first, responses in the order I saw them
Admin tokens only:
    GET  /api/admin/projects                  every project with its progress
    GET  /api/admin/projects/{p}/stats        agreement, gold accuracy, position bias
    GET  /api/admin/projects/{p}/export       ?aggregate=majority|all&min_gold_accuracy=0.8
                                              &format=preferences|kto
    POST /api/admin/projects/{p}/import       {"items": [...], "gold": [...], "overlap": 2,
                                               "mode": "rate", "ratings": [...],
                                               "guidelines": "..."}: a new project
    POST /api/admin/projects/{p}/items        {"items", "gold", "mode", "ratings",
                                               "guidelines"}: the next round, added
    GET  /api/admin/annotators                every annotator, revoked or not, with progress
    POST /api/admin/annotators                {"name", "admin": false}: a new annotator and
                                              their token (shown once)
    POST /api/admin/annotators/{a}/revoke     their token stops working, held items go back
    POST /api/admin/annotators/{a}/token      a new token (shown once), the old one dead

Security: tokens are compared by hash; the session cookie is HttpOnly and SameSite=Strict. A
POST authenticated by the cookie must also carry X-CSRF-Token, an HMAC of the session under the
database's secret that the page reads from a second cookie (a cross-site page can neither read
it nor set the header), and any request with an Origin header from another site is refused. A
strict Content-Security-Policy forbids inline scripts, so an injected `<script>` could not run
even if the page's own code (which only ever sets textContent) let one through. Only the named
static files are served, never the database.
"""

from __future__ import annotations

import hashlib
import hmac
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

from tether.labeling.store import Annotator, NextItem, Project, Store

SESSION_COOKIE = "tether_session"
CSRF_COOKIE = "tether_csrf"
CSRF_HEADER = "x-csrf-token"
STATIC_FILES = ("index.html", "label.html", "admin.html", "app.js", "markdown.js", "style.css")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: under no-referrer a form post says "Origin: null"
    "Referrer-Policy": "same-origin",
}
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


async def json_object(request: Request, key: str, kind: type, expected: str) -> dict:
    """The request's JSON object, which must have `key` of type `kind`; else 400/422."""
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(400, "the body must be JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get(key), kind):
        raise HTTPException(422, f"expected {expected}")
    return body


def static_dir():
    return resources.files("tether.labeling") / "static"


def create_app(store: Store) -> FastAPI:
    app = FastAPI(title="tether labeling", docs_url=None, redoc_url=None, openapi_url=None)
    secret = store.secret()

    def csrf_token(token: str) -> str:
        return hmac.new(secret, hashlib.sha256(token.encode()).digest(),
                        hashlib.sha256).hexdigest()

    @app.middleware("http")
    async def guard(request: Request, call_next):
        # Cross-site requests are refused outright; same-origin pages send their own Origin.
        origin = request.headers.get("origin")
        if (origin and request.method in UNSAFE_METHODS
                and urlsplit(origin).netloc != request.headers.get("host")):
            return JSONResponse({"detail": "cross-site request refused"}, 403)
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if request.url.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    def authenticate(request: Request) -> Annotator:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            token = header[7:].strip()
            cookie = False
        else:
            token = request.cookies.get(SESSION_COOKIE, "")
            cookie = True
        who = store.annotator_for_token(token) if token else None
        if who is None:
            raise HTTPException(401, "log in with your access token")
        if cookie and request.method in UNSAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent, csrf_token(token)):
                raise HTTPException(403, "missing or wrong X-CSRF-Token: reload the page")
        return who

    def admin(request: Request) -> Annotator:
        who = authenticate(request)
        if not who.admin:
            raise HTTPException(403, "this needs an admin token")
        return who

    def project_named(name: str) -> Project:
        project = store.project(name)
        if project is None:
            raise HTTPException(404, f"no project '{name}'")
        return project

    # -- pages --------------------------------------------------------------------------------

    def page(name: str) -> FileResponse:
        # no-store: after logging out, the back button must ask the server again
        return FileResponse(str(static_dir() / name), media_type="text/html",
                            headers={"Cache-Control": "no-store"})

    @app.get("/")
    def index() -> Response:
        return page("index.html")

    @app.get("/label")
    def label_page(request: Request) -> Response:
        token = request.cookies.get(SESSION_COOKIE, "")
        if not token or store.annotator_for_token(token) is None:
            return RedirectResponse("/", 303)
        return page("label.html")

    @app.get("/admin")
    def admin_page(request: Request) -> Response:
        token = request.cookies.get(SESSION_COOKIE, "")
        who = store.annotator_for_token(token) if token else None
        if who is None:
            return RedirectResponse("/", 303)
        if not who.admin:
            return RedirectResponse("/label", 303)
        return page("admin.html")

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC_FILES:
            raise HTTPException(404, "not found")
        media = {"js": "text/javascript", "css": "text/css", "html": "text/html"}
        return FileResponse(str(static_dir() / name), media_type=media[name.rsplit(".", 1)[1]],
                            headers={"Cache-Control": "no-cache"})

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0].strip()
        if not token or store.annotator_for_token(token) is None:
            return RedirectResponse("/?error=1", 303)
        response = RedirectResponse("/label", 303)
        secure = request.url.scheme == "https"
        response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict",
                            secure=secure)
        response.set_cookie(CSRF_COOKIE, csrf_token(token), samesite="strict", secure=secure)
        return response

    @app.post("/logout")
    def logout(request: Request) -> Response:
        authenticate(request)
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE)
        response.delete_cookie(CSRF_COOKIE)
        return response

    # -- annotators ---------------------------------------------------------------------------

    @app.get("/api/me")
    def me(request: Request) -> dict:
        who = authenticate(request)
        projects = []
        for p in store.projects():
            mine = store.progress(p, who)
            projects.append({"name": p.name, "k": p.k, "done": mine["done"],
                             "assigned_total": mine["total"],
                             "held_by_others": mine["held_by_others"],
                             "lease_minutes": p.lease_minutes, "guidelines": p.guidelines})
        return {"annotator": who.name, "admin": who.admin, "projects": projects}

    @app.get("/api/projects/{name}/next")
    def next_item(name: str, request: Request) -> dict:
        who = authenticate(request)
        project = project_named(name)
        item = store.next_item(project, who)
        mine = store.progress(project, who)
        return {"done": mine["done"], "assigned_total": mine["total"],
                "held_by_others": mine["held_by_others"], "item": shown(item)}

    def shown(item: NextItem | None) -> dict | None:
        return None if item is None else {
            "assignment": item.assignment, "prompt": item.prompt, "responses": item.responses,
            "previous": item.previous}

    @app.post("/api/projects/{name}/labels/undo")
    def undo(name: str, request: Request) -> dict:
        who = authenticate(request)
        project = project_named(name)
        item = store.undo_last(project, who)
        if item is None:
            raise HTTPException(404, "you have no label in this project to undo")
        mine = store.progress(project, who)
        return {"done": mine["done"], "assigned_total": mine["total"],
                "held_by_others": mine["held_by_others"], "item": shown(item)}

    @app.post("/api/projects/{name}/labels")
    async def submit(name: str, request: Request) -> Response:
        who = authenticate(request)
        project = project_named(name)
        body = await json_object(request, "assignment", str, '{"assignment": ..., "choice": '
                                 '..., "ranks": [...], "rationale": ...}')
        rationale = body.get("rationale") or ""
        if not isinstance(rationale, str):
            raise HTTPException(422, "rationale must be text")
        try:
            label, duplicate = store.submit(project, who, body["assignment"],
                                            body.get("choice", "rank"), body.get("ranks"),
                                            rationale)
        except PermissionError as e:
            raise HTTPException(403, str(e)) from None
        except LookupError as e:
            raise HTTPException(404, str(e)) from None
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        return JSONResponse({"label": label, "duplicate": duplicate},
                            status_code=200 if duplicate else 201)

    @app.get("/api/projects/{name}/labels")
    def my_labels(name: str, request: Request) -> dict:
        who = authenticate(request)
        project_named(name)
        def as_seen(values: list | None, order: list[int]) -> list | None:
            return None if values is None else [values[i] for i in order]

        # responses and ranks in the order this annotator saw them, as they remember them
        return {"labels": [
            {"label": lab["label"], "prompt": lab["prompt"], "choice": lab["choice"],
             "responses": as_seen(lab["responses"], lab["order"]),
             "ranks": as_seen(lab["ranks"], lab["order"]), "rationale": lab["rationale"],
             "created": lab["created"]}
            for lab in reversed(store.labels(name, annotator=who))]}

    # -- admin --------------------------------------------------------------------------------

    @app.get("/api/admin/projects")
    def all_projects(request: Request) -> dict:
        admin(request)
        return {"projects": [{"name": p.name, "overlap": p.overlap, "gold_rate": p.gold_rate,
                              **store.progress(p)} for p in store.projects()]}

    @app.get("/api/admin/projects/{name}/stats")
    def stats(name: str, request: Request) -> dict:
        from tether.labeling.projects import project_stats

        admin(request)
        return project_stats(store, project_named(name))

    @app.get("/api/admin/projects/{name}/export")
    def export(name: str, request: Request, aggregate: str = "majority",
               min_gold_accuracy: float = 0.0, format: str = "preferences") -> dict:
        from tether.errors import UserError
        from tether.labeling.export import export_rows

        admin(request)
        project_named(name)
        try:
            rows, counts = export_rows(store.labels(name), aggregate, min_gold_accuracy,
                                       format)
        except (ValueError, UserError) as e:
            raise HTTPException(422, str(e)) from None
        return {"rows": rows, "counts": counts}

    def rows(body: dict, key: str) -> list[tuple[str, Any]]:
        value = body.get(key) or []
        if not isinstance(value, list):
            raise HTTPException(422, f"{key} must be a list of rows")
        return [(f"{key}[{i}]", r) for i, r in enumerate(value)]

    def guidelines_in(body: dict) -> str | None:
        text = body.get("guidelines")
        if text is not None and not isinstance(text, str):
            raise HTTPException(422, "guidelines must be Markdown text")
        return text

    @app.post("/api/admin/projects/{name}/import")
    async def import_items(name: str, request: Request) -> Response:
        from tether.errors import UserError
        from tether.labeling.projects import create_project

        admin(request)
        body = await json_object(request, "items", list, '{"items": [candidate rows], "gold": '
                                 '[...], "overlap": N, "gold_rate": x, "mode": "compare", '
                                 '"ratings": [...], "guidelines": "..."}')
        try:
            project = create_project(
                store, name, rows(body, "items"), rows(body, "gold"),
                overlap=body.get("overlap", 1), gold_rate=body.get("gold_rate", 0.0),
                mode=body.get("mode", "compare"), ratings=rows(body, "ratings"),
                guidelines=guidelines_in(body) or "")
        except UserError as e:
            raise HTTPException(422, str(e)) from None
        return JSONResponse({"project": project.name, **store.progress(project)}, 201)

    @app.post("/api/admin/projects/{name}/items")
    async def add_round(name: str, request: Request) -> Response:
        from tether.errors import UserError
        from tether.labeling.projects import add_items

        admin(request)
        project_named(name)
        body = await json_object(request, "items", list, '{"items": [candidate rows], "gold": '
                                 '[...], "mode": "compare", "ratings": [...]}')
        try:
            project = add_items(store, name, rows(body, "items"), rows(body, "gold"),
                                mode=body.get("mode", "compare"),
                                ratings=rows(body, "ratings"), guidelines=guidelines_in(body))
        except UserError as e:
            raise HTTPException(422, str(e)) from None
        return JSONResponse({"project": project.name, **store.progress(project)}, 201)

    @app.get("/api/admin/annotators")
    def annotators(request: Request) -> dict:
        from tether.labeling.agreement import agreement_stats

        admin(request)
        projects = store.projects()
        per_project = {p.name: agreement_stats(store.labels(p.name))["annotators"]
                       for p in projects}
        out = []
        for a in store.annotators():
            progress = []
            for p in projects:
                mine, stats = store.progress(p, a), per_project[p.name].get(a.name, {})
                progress.append({"project": p.name, "done": mine["done"],
                                 "assigned_total": mine["total"],
                                 "gold_accuracy": stats.get("gold_accuracy")})
            out.append({"name": a.name, "admin": a.admin, "revoked": a.revoked,
                        "created": a.created.isoformat() + "Z", "projects": progress})
        return {"annotators": out}

    @app.post("/api/admin/annotators")
    async def add_annotator(request: Request) -> Response:
        from tether.errors import UserError

        admin(request)
        body = await json_object(request, "name", str, '{"name": "...", "admin": false}')
        if not isinstance(body.get("admin", False), bool):
            raise HTTPException(422, "admin must be true or false")
        try:
            token = store.add_annotator(body["name"], admin=body.get("admin", False))
        except UserError as e:
            raise HTTPException(422, str(e)) from None
        return JSONResponse({"annotator": body["name"], "token": token}, 201)

    def annotator_action(request: Request, name: str, action):
        who = admin(request)
        if name == who.name:
            raise HTTPException(409, "you cannot revoke or replace your own token here (use "
                                     "`tether label add-annotator` for a new admin)")
        try:
            return action(name)
        except LookupError as e:
            raise HTTPException(404, str(e)) from None

    @app.post("/api/admin/annotators/{name}/revoke")
    def revoke(name: str, request: Request) -> dict:
        annotator_action(request, name, store.revoke)
        return {"annotator": name, "revoked": True}

    @app.post("/api/admin/annotators/{name}/token")
    def reissue(name: str, request: Request) -> dict:
        return {"annotator": name, "token": annotator_action(request, name, store.reissue)}

    return app

