"""The labeling web app (Starlette, server-rendered Jinja2 templates, a little plain JavaScript).

Pages: ``/login/<token>`` (a labeler's or the admin's link: opens a session cookie and
redirects), ``/instructions``, ``/task`` (the labeler's next task), ``/task/<id>`` (rank, skip,
submit; a submission is committed before the redirect that acknowledges it), ``/progress``,
``/admin`` (counts per labeler and the agreement table of `rlhf_jax.feedback`), and
``/static/...`` (only the package's own assets).

Security: sessions live in the database (hashed id, HttpOnly SameSite=Lax cookie); every POST
must carry the session's CSRF token (compared in constant time); a labeler reaches only their
own tasks (another labeler's task id answers 404, like a missing one); Jinja2 autoescapes
everything, so prompts and completions show as text; a Content-Security-Policy allows only the
app's own scripts and styles; request bodies are capped.
"""

from __future__ import annotations

import hmac
import os
import time
import urllib.parse

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from rlhf_jax.label.ranking import LabelError, TaskNotFound
from rlhf_jax.label.store import LabelStore

COOKIE = "rlhf_label_session"
MAX_BODY = 64 * 1024
HERE = os.path.dirname(os.path.abspath(__file__))
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; form-action 'self'; base-uri 'none'; "
                               "frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


class _SecurityHeaders:
    """ASGI middleware adding `SECURITY_HEADERS` to every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for k, v in SECURITY_HEADERS.items():
                    headers[k] = v
            await send(message)

        await self.app(scope, receive, send_with_headers if scope["type"] == "http" else send)


def _clock(t: float | None) -> str:
    return "–" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _markdown(text: str) -> str:
    """Markdown -> HTML with raw HTML disabled (escaped) and tables on."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def create_app(db_path: str | os.PathLike, *, https: bool = False) -> Starlette:
    """The app over one labeling database (``https``: mark the session cookie Secure)."""
    store = LabelStore(db_path)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(HERE, "templates")),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["clock"] = _clock
    instructions_html = _markdown(store.instructions)

    def page(name: str, session, status: int = 200, **context) -> HTMLResponse:
        body = env.get_template(name).render(session=session, **context)
        return HTMLResponse(body, status_code=status)

    def message(session, title: str, text: str, status: int, link: str | None = None,
                link_text: str = "") -> HTMLResponse:
        return page("message.html", session, status, title=title, message=text, link=link,
                    link_text=link_text)

    def current(request: Request):
        return store.session(request.cookies.get(COOKIE))

    def need_labeler(request: Request):
        s = current(request)
        if s is None or s.is_admin:
            return s, message(s, "Not logged in as a labeler",
                              "Open the link your coordinator gave you.", 403)
        return s, None

    async def read_form(request: Request, session) -> dict[str, str]:
        """The urlencoded body, after the CSRF check (LabelError on any problem)."""
        if request.headers.get("content-type", "").split(";")[0].strip() != \
                "application/x-www-form-urlencoded":
            raise LabelError("expected a form (application/x-www-form-urlencoded)")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise LabelError(f"form too large (over {MAX_BODY} bytes)")
        try:
            pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                                           max_num_fields=200)
        except (UnicodeDecodeError, ValueError) as e:
            raise LabelError(f"unreadable form ({e})") from e
        form: dict[str, str] = {}
        for k, v in pairs:
            if k in form:
                raise LabelError(f"form field {k[:40]!r} sent twice")
            form[k] = v
        sent = form.get("csrf", "").encode("utf-8")
        if session is None or not hmac.compare_digest(sent, session.csrf.encode("utf-8")):
            raise PermissionError("missing or wrong CSRF token: reload the page and try again")
        return form

    def home(request: Request) -> Response:
        s = current(request)
        if s is None:
            return message(None, "Labeling", "Open the link your coordinator gave you.", 200)
        return RedirectResponse("/admin" if s.is_admin else "/task", status_code=303)

    def login(request: Request) -> Response:
        result = store.login(request.path_params["token"])
        if result is None:
            return message(None, "Invalid link", "This link is not valid (it may have been "
                           "re-issued). Ask your coordinator for a new one.", 403)
        sid, s = result
        resp = RedirectResponse("/admin" if s.is_admin else "/instructions", status_code=303)
        resp.set_cookie(COOKIE, sid, httponly=True, samesite="lax", secure=https,
                        max_age=30 * 24 * 3600)
        return resp

    async def logout(request: Request) -> Response:
        s = await run_in_threadpool(current, request)
        try:
            await read_form(request, s)
        except (LabelError, PermissionError) as e:
            return message(s, "Refused", str(e), 403)
        await run_in_threadpool(store.logout, request.cookies.get(COOKIE, ""))
        resp = RedirectResponse("/", status_code=303)
        resp.delete_cookie(COOKIE)
        return resp

    def instructions(request: Request) -> Response:
        s = current(request)
        if s is None:
            return message(None, "Not logged in", "Open the link your coordinator gave you.", 403)
        return page("instructions.html", s, instructions_html=instructions_html)

    def next_task(request: Request) -> Response:
        s, denied = need_labeler(request)
        if denied:
            return denied
        task_id = store.next_task(s.labeler_id)
        saved = request.query_params.get("saved", "")
        if task_id is None:
            done = f"Saved task {saved}. " if saved.isdecimal() else ""
            return message(s, "All done", done + "There is no task left for you. Thank you!",
                           200, link="/progress", link_text="Your progress")
        query = f"?saved={saved}" if saved.isdecimal() else ""
        return RedirectResponse(f"/task/{task_id}{query}", status_code=303)

    def show_task(s, task_id: int, *, saved: str = "", error: str = "", status: int = 200,
                  values: list[str] | None = None) -> Response:
        try:
            task = store.task(s.labeler_id, task_id)
        except LabelError as e:
            return message(s, "No such task", str(e), 404)
        return page("task.html", s, status, task=task, criterion=store.criterion,
                    progress=store.progress(s.labeler_id), current=values or task.answer,
                    saved=saved if saved.isdecimal() else "", error=error)

    async def task(request: Request) -> Response:
        s, denied = await run_in_threadpool(need_labeler, request)
        if denied:
            return denied
        task_id = request.path_params["task_id"]
        if request.method == "GET":
            return await run_in_threadpool(show_task, s, task_id,
                                           saved=request.query_params.get("saved", ""))
        try:
            form = await read_form(request, s)
        except PermissionError as e:
            return message(s, "Refused", str(e), 403)
        except LabelError as e:
            return message(s, "Bad request", str(e), 400)
        values = [form.get(f"rank_{i}") for i in range(sum(k.startswith("rank_") for k in form))]
        try:
            if form.get("action") == "skip":
                await run_in_threadpool(store.skip, s.labeler_id, task_id)
                return RedirectResponse("/task", status_code=303)
            if form.get("action", "submit") != "submit":
                raise LabelError(f"unknown action {form['action'][:20]!r}")
            if any(v is None for v in values):
                raise LabelError("rank fields must be rank_0 .. rank_{K-1}")
            await run_in_threadpool(store.submit, s.labeler_id, task_id, values)
        except TaskNotFound as e:
            return message(s, "No such task", str(e), 404)
        except LabelError as e:
            return await run_in_threadpool(show_task, s, task_id, error=str(e), status=400,
                                           values=[v or "" for v in values])
        return RedirectResponse(f"/task?saved={task_id}", status_code=303)

    def progress(request: Request) -> Response:
        s, denied = need_labeler(request)
        if denied:
            return denied
        return page("progress.html", s, progress=store.progress(s.labeler_id))

    def admin(request: Request) -> Response:
        from rlhf_jax.label.export import agreement

        s = current(request)
        if s is None or not s.is_admin:
            return message(s, "Admins only", "Open the admin link.", 403)
        return page("admin.html", s, criterion=store.criterion, totals=store.totals(),
                    per_prompt=store.labelers_per_prompt, counts=store.labeler_counts(),
                    table=agreement(store), method="borda")

    async def not_found(request: Request, exc) -> Response:
        return HTMLResponse("<!doctype html><title>Not found</title><h1>Not found</h1>",
                            status_code=getattr(exc, "status_code", 404))

    routes = [
        Route("/", home), Route("/login/{token}", login), Route("/logout", logout, methods=["POST"]),
        Route("/instructions", instructions), Route("/task", next_task),
        Route("/task/{task_id:int}", task, methods=["GET", "POST"]),
        Route("/progress", progress), Route("/admin", admin),
        Mount("/static", StaticFiles(directory=os.path.join(HERE, "static")), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    app.add_middleware(_SecurityHeaders)
    app.state.store = store
    return app
