"""The reader-study web app: Starlette + Jinja2 templates + plain HTML forms, one SQLite file.

A reader opens their private link ``/r/<token>``; the app checks the token's hash, puts the token in
an HttpOnly cookie and sends the browser on to ``/task`` (so the token leaves the address bar and
nothing logs it). ``/task`` shows the reader's first unanswered image; the form POSTs to ``/answer``,
which validates every field, commits the answer in one transaction and only then redirects to the
next image (POST-redirect-GET: a reload never answers twice). ``/a/<token>`` does the same for the
admin, whose page shows progress only.

Security: tokens are compared by their SHA-256 (the database holds nothing else); every POST carries
a per-reader CSRF token (HMAC under the study's secret) and a foreign ``Origin`` is refused; the
cookie is SameSite=Lax; images are served by opaque id, only to a reader who has that image among
their tasks, from a path the database gives (never from the URL); pages forbid framing and
sniffing, send no referrer to other sites and allow scripts/styles from this server only.
"""

from __future__ import annotations

import hmac
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from synthmed.study import db

HERE = Path(__file__).parent
READER_COOKIE = "synthmed_reader"
ADMIN_COOKIE = "synthmed_admin"
IMAGE_ID = re.compile(r"^[A-Za-z0-9_-]{16}$")
# the displayed image: the largest integer multiple of its size up to this many CSS pixels
DISPLAY_PX = 512
MAX_NOTE_CHARS = 2000
MAX_CLIENT_MS = 24 * 3600 * 1000
MAX_FORM_BYTES = 64 * 1024
# keys that toggle the plausibility criteria (r, s and n are taken by real / synthetic / note)
CRITERION_KEYS = "abcdefghijklmopqtuvwxyz"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make browsers send Origin: null on POSTs
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Cache-Control": "no-store",
}


class _SecurityHeaders:
    """ASGI middleware adding SECURITY_HEADERS to every HTTP response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.decode().lower() != "cache-control"]
                headers += [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def build_app(folder: str | Path) -> Starlette:
    """The app for the study in ``folder`` (its database must exist)."""
    folder = Path(folder).resolve()
    db.connect(folder).close()  # fails now, with a clear message, when this is no study folder
    images_dir = (folder / "images").resolve()
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    with db.connect(folder) as con:
        meta = db.all_meta(con)
    mode, criteria, show_class = meta["mode"], meta.get("criteria") or {}, meta["show_class"]
    native = int(meta["image_shape"][0])
    display = native * max(1, DISPLAY_PX // native)

    def page(name: str, status: int = 200, **context) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(**context), status_code=status)

    def message(status: int, title: str, text: str, link: str | None = "/task") -> HTMLResponse:
        return page("message.html", status, title=title, text=text, link=link)

    def reader_of(request: Request, con) -> object | None:
        return db.reader_for_token(con, request.cookies.get(READER_COOKIE))

    async def index(request: Request):
        return message(200, "Reader study", "Open the private link you were sent to start or resume.", link=None)

    def _enter(token: str, cookie: str, check, target: str) -> Response:
        with db.connect(folder) as con:
            if not check(con, token):
                return message(404, "Unknown link", "This link is not valid (mistyped, or replaced by a new one). "
                               "Ask the study organiser for your link.", link=None)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(cookie, token, httponly=True, samesite="lax", path="/")
        return response

    async def enter_reader(request: Request):
        token = request.path_params["token"]
        return await run_in_threadpool(_enter, token, READER_COOKIE, lambda c, t: db.reader_for_token(c, t), "/task")

    async def enter_admin(request: Request):
        token = request.path_params["token"]
        return await run_in_threadpool(_enter, token, ADMIN_COOKIE, db.is_admin_token, "/admin")

    def _task(request: Request) -> Response:
        with db.connect(folder) as con:
            reader = reader_of(request, con)
            if reader is None:
                return message(401, "Not signed in", "Open the private link you were sent.", link=None)
            done, total = db.progress(con, reader["id"])
            task = db.next_task(con, reader["id"])
            if task is None:
                return page("done.html", reader=reader["name"], done=done, total=total)
            db.mark_shown(con, task["id"])
            class_criteria = criteria.get(task["class_name"], []) if mode != "turing" else []
            return page("task.html", reader=reader["name"], done=done, total=total, number=done + 1,
                        task=task, mode=mode, show_class=show_class, class_name=task["class_name"],
                        criteria=list(zip(CRITERION_KEYS, class_criteria)), display=display,
                        csrf=db.csrf_token(con, reader["id"]), max_note=MAX_NOTE_CHARS)

    async def task(request: Request):
        return await run_in_threadpool(_task, request)

    def _image(request: Request) -> Response:
        image_id = request.path_params["image_id"]
        if not IMAGE_ID.match(image_id):
            return Response("not found", status_code=404, media_type="text/plain")
        with db.connect(folder) as con:
            reader = reader_of(request, con)
            row = None if reader is None else db.reader_may_see(con, reader["id"], image_id)
        if row is None:
            return Response("not found", status_code=404, media_type="text/plain")
        path = (images_dir / row["file"]).resolve()
        if path.parent != images_dir or not path.is_file():  # the database names a file in images/, nothing else
            return Response("not found", status_code=404, media_type="text/plain")
        return Response(path.read_bytes(), media_type="image/png")

    async def image(request: Request):
        return await run_in_threadpool(_image, request)

    def _same_origin(request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None:  # not sent by every client; the CSRF token and SameSite cookie still hold
            return True
        host = request.headers.get("host", "")
        return origin != "null" and urlsplit(origin).netloc == host

    def _answer(request: Request, form: dict) -> Response:
        with db.connect(folder) as con:
            reader = reader_of(request, con)
            if reader is None:
                return message(401, "Not signed in", "Open the private link you were sent.", link=None)
            if not _same_origin(request) or not hmac.compare_digest(str(form.get("csrf", "")),
                                                                    db.csrf_token(con, reader["id"])):
                return message(403, "Form expired", "This form did not come from this study page; "
                               "nothing was saved. Continue from the current image.")
            try:
                fields = _parse_answer(con, form)
            except _Invalid as e:
                return message(e.status, "Answer not saved", str(e))
            try:
                db.record_answer(con, reader["id"], **fields)
            except db.AnswerRejected as e:
                return message(e.status, "Answer not saved", str(e))
        return RedirectResponse("/task", status_code=303)

    def _parse_answer(con, form: dict) -> dict:
        task_id = _int(form.get("task"), "task", 0, 2**62)
        image_id = str(form.get("image", ""))
        if not IMAGE_ID.match(image_id):
            raise _Invalid(400, "unknown image")
        row = con.execute("SELECT class_name FROM images WHERE id = ?", (image_id,)).fetchone()
        if row is None:
            raise _Invalid(400, "unknown image")
        out = {"task_id": task_id, "image_id": image_id, "says_synthetic": None, "confidence": None,
               "plausible": None, "criteria_met": None, "note": None,
               "client_ms": None if form.get("client_ms") in (None, "") else
               _int(form.get("client_ms"), "client_ms", 0, MAX_CLIENT_MS)}
        if mode in ("turing", "both"):
            verdict = form.get("verdict")
            if verdict not in ("real", "synthetic"):
                raise _Invalid(422, "choose real or synthetic")
            out["says_synthetic"] = int(verdict == "synthetic")
            out["confidence"] = _int(form.get("confidence"), "confidence", 1, 5)
        if mode in ("plausibility", "both"):
            n = len(criteria.get(row["class_name"], []))
            met = [_int(v, "criterion", 0, n - 1) for v in form.get("criterion", [])]
            if len(set(met)) != len(met):
                raise _Invalid(422, "a criterion was ticked twice")
            note = str(form.get("note") or "")
            if len(note) > MAX_NOTE_CHARS:
                raise _Invalid(422, f"the note is longer than {MAX_NOTE_CHARS} characters")
            out.update(criteria_met=sorted(met), plausible=int(len(met) == n), note=note or None)
        return out

    async def answer(request: Request):
        if int(request.headers.get("content-length") or 0) > MAX_FORM_BYTES:
            return message(413, "Answer not saved", "the form is too large")
        async with request.form(max_files=0, max_fields=200, max_part_size=64 * 1024) as raw:
            form = {k: (raw.getlist(k) if k == "criterion" else raw.get(k)) for k in raw.keys()}
        if any(not isinstance(v, (str, list)) for v in form.values()):
            return message(400, "Answer not saved", "unexpected form content")
        return await run_in_threadpool(_answer, request, form)

    def _admin(request: Request) -> Response:
        with db.connect(folder) as con:
            if not db.is_admin_token(con, request.cookies.get(ADMIN_COOKIE)):
                return message(403, "Admin only", "Open the admin link printed when the study was created.", link=None)
            rows = db.reader_progress(con)
        for r in rows:
            r["last"] = None if r["last"] is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(r["last"]))
        return page("admin.html", rows=rows, mode=mode, total_answers=sum(r["done"] for r in rows),
                    total_tasks=sum(r["total"] for r in rows))

    async def admin(request: Request):
        return await run_in_threadpool(_admin, request)

    routes = [
        Route("/", index),
        Route("/r/{token}", enter_reader),
        Route("/a/{token}", enter_admin),
        Route("/task", task),
        Route("/answer", answer, methods=["POST"]),
        Route("/image/{image_id}", image),
        Route("/admin", admin),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(_SecurityHeaders)
    return app


class _Invalid(Exception):
    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status = status


def _int(value, name: str, lo: int, hi: int) -> int:
    try:
        v = int(str(value).strip())
    except (TypeError, ValueError):
        raise _Invalid(422, f"{name} must be a whole number") from None
    if not lo <= v <= hi:
        raise _Invalid(422, f"{name} must be between {lo} and {hi}")
    return v


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def serve(folder: str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the study on ``host:port`` (127.0.0.1: this machine only). Another host exposes the
    study to the network over plain HTTP: warned, and best put behind an HTTPS proxy."""
    import warnings

    import uvicorn

    import socket

    app = build_app(folder)
    try:  # a port in use is the user's to fix: say so in one line instead of a server log
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
            probe.bind((host, port))
    except OSError as e:
        raise ValueError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror}); pick another --port") from None
    if host not in LOCAL_HOSTS:
        warnings.warn(f"study: serving on {host}:{port} exposes the study to every machine that can reach this one, "
                      "over plain HTTP (links and answers unencrypted); serve on 127.0.0.1 behind an HTTPS reverse "
                      "proxy, or only on a network you trust")
    print(f"serving {Path(folder).resolve()} on http://{host}:{port}  (Ctrl-C stops; answers are saved as they come)",
          flush=True)
    # no access log: the first request of a reader carries their token in its path
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")
