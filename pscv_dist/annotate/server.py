"""The web server of ``pscv annotate``: the page, its assets and a small JSON API (FastAPI + uvicorn).

Every API answer that is not an image is JSON; every refusal is ``{"error": "<one line>"}`` with
status 400 (a bad case id in the URL, a slice outside the volume, a malformed body, a point outside
the image, an unknown class), 404 (no such case, point, overlay or route), 403 (a request from
another site or for another host name), 409 (the case's markups file changed on disk into
something unreadable), 413 (a body over 1 MB) or 415 (a write that is not JSON). The table of
endpoints is :data:`ENDPOINTS` (also served at ``GET /api``) and docs/ANNOTATE.md.
"""
from __future__ import annotations

import json
import logging
import math
import re
import threading
from pathlib import Path
from urllib.parse import unquote

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import PscvError
from .book import BadEdit, ClickBook, FileConflict, check_id, parse_edit, parse_point
from .dataset import Dataset
from .render import class_colors, overlay_png, slice_png

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY = 1 << 20
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}
NO_STORE = {"Cache-Control": "no-store"}

ENDPOINTS = [
    ("GET", "/api", "this table"),
    ("GET", "/api/info", "classes (index, name, colour, key), source, clicks folder, model"),
    ("GET", "/api/cases", "every case: slices, clicks, progress (done / total slices); totals"),
    ("GET", "/api/cases/{case}", "one case: shape, spacing, initial window, per-slice classes present"),
    ("GET", "/api/cases/{case}/slices/{z}/image.png", "slice z as 8-bit PNG; ?level=L&width=W (default: auto)"),
    ("GET", "/api/cases/{case}/slices/{z}/label.png", "the dense label of slice z, RGBA overlay PNG"),
    ("GET", "/api/cases/{case}/slices/{z}/prediction.png", "the model's prediction of slice z, RGBA overlay PNG"),
    ("GET", "/api/cases/{case}/clicks", "the case's points {id, class, z, y, x}, revision, progress"),
    ("POST", "/api/cases/{case}/clicks", "edit by id: {\"set\": [point, ...], \"delete\": [id, ...]}; merged state"),
    ("PUT", "/api/cases/{case}/clicks/{id}", "set (create or move) one point: {class, z, y, x}"),
    ("DELETE", "/api/cases/{case}/clicks/{id}", "delete one point"),
    ("GET", "/api/export.csv", "every click as CSV case,class,i,j,k (what pscv prepare --clicks FILE.csv reads)"),
]


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """``Host`` header -> host name (no port; IPv6 without brackets)."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Guard:
    """ASGI middleware: refuses requests the page never makes.

    * ``..``, ``.`` segments and encoded ``/``, ``\\`` or NUL in an API path: 400;
    * when the server listens on loopback, a ``Host`` other than a loopback name (DNS rebinding): 403;
    * a write whose ``Origin`` is not this server (another site posting to localhost): 403.
    """

    def __init__(self, app, loopback: bool):
        self.app = app
        self.loopback = loopback

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        problem = None
        raw = scope.get("raw_path", b"").decode("latin-1")
        path = scope.get("path", "")
        if path.startswith("/api"):
            segments = unquote(raw.split("?", 1)[0]).split("/")
            if re.search(r"%(2f|5c|00)", raw, re.IGNORECASE) or any(s in (".", "..") for s in segments):
                problem = (400, f"path {raw!r}: '.', '..' and encoded '/', '\\' or NUL are not allowed in a case id "
                                f"or slice index")
        host = _host_name(headers.get("host", ""))
        if problem is None and self.loopback and not _is_loopback(host):
            problem = (403, f"Host {headers.get('host', '')!r}: this server answers loopback names only "
                            f"(127.0.0.1, localhost, ::1)")
        origin = headers.get("origin")
        if (problem is None and scope["method"] not in ("GET", "HEAD", "OPTIONS") and origin is not None
                and origin != f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"):
            problem = (403, f"Origin {origin!r}: writes are accepted from this server's own page only")
        if problem is None:
            return await self.app(scope, receive, send)
        body = json.dumps({"error": problem[1]}).encode()
        await send({"type": "http.response.start", "status": problem[0],
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class Session:
    """What the server serves: the dataset, the click book and (optionally) a predictor."""

    def __init__(self, dataset: Dataset, book: ClickBook, predictor=None):
        self.dataset = dataset
        self.book = book
        self.predictor = predictor
        self.classes = dataset.classes
        self._stop = threading.Event()
        self._scan: threading.Thread | None = None

    # --- validation of URL parts -------------------------------------------------------------
    def case(self, case: str) -> str:
        if not case or any(c in case for c in "/\\\x00") or case in (".", "..") or len(case) > 255:
            raise ApiError(400, f"case id {case!r}: not a valid case id")
        if case not in self.dataset.grids:
            examples = ", ".join(self.dataset.cases[:3]) + (", ..." if len(self.dataset.cases) > 3 else "")
            raise ApiError(404, f"case {case!r}: no such case in {self.dataset.name} ({len(self.dataset.cases)} "
                                f"cases: {examples})")
        return case

    def slice_index(self, case: str, z: str) -> int:
        n = self.dataset.grids[case].shape[0]
        if not re.fullmatch(r"\d{1,9}", z):
            raise ApiError(400, f"slice {z!r} of case {case}: expected an integer slice index 0..{n - 1}")
        if int(z) >= n:
            raise ApiError(400, f"slice {int(z)} of case {case}: outside the volume (slices 0..{n - 1})")
        return int(z)

    # --- answers -----------------------------------------------------------------------------
    def progress(self, case: str, points, wait: bool = True) -> dict:
        """Done / all slices. ``wait`` False (the case list): a label the background scan has not
        read yet gives ``done`` None instead of being read now."""
        z_n = self.dataset.grids[case].shape[0]
        clicked = np.zeros((z_n, len(self.classes)), dtype=bool)
        for p in points:
            clicked[p.z, p.cls] = True
        if not wait and self.dataset.labelled[case] and not self.dataset.presence_known(case):
            return {"done": None, "total": z_n, "counts": "pending"}  # the background scan has not read it yet
        present = self.dataset.presence(case)
        if present is None:  # no dense label: a slice with a click counts
            return {"done": int(clicked.any(axis=1).sum()), "total": z_n, "counts": "clicked slices"}
        return {"done": int((clicked | ~present).all(axis=1).sum()), "total": z_n,
                "counts": "slices with every class of their label clicked"}

    def clicks_answer(self, case: str, revision: int, points, extra: dict | None = None) -> dict:
        return {"case": case, "revision": revision, "file": self.book.file(case).name,
                "points": [p.as_json(self.classes) for p in points], "clicks": len(points),
                "progress": self.progress(case, points), **(extra or {})}

    def edit(self, case: str, sets, deletes, one: str | None = None) -> dict:
        """Apply an edit and answer with the merged state (a blocking call: run in a worker thread).
        ``one``: the id of a single-point DELETE, 404 when there was no such point."""
        revision, points, counts = self.book.apply(case, sets, deletes)
        if one is not None and counts["missing"]:
            raise ApiError(404, f"case {case}: no point with id {one!r}")
        return self.clicks_answer(case, revision, points, counts)

    def info(self) -> dict:
        keys = {c: str(c) for c in range(min(len(self.classes), 10))}
        return {"source": self.dataset.name, "kind": self.dataset.kind, "clicks_dir": str(self.book.out),
                "classes": [{"index": i, "name": n, "color": col, "key": keys.get(i)}
                            for i, (n, col) in enumerate(zip(self.classes, class_colors(len(self.classes))))],
                "model": None if self.predictor is None else self.predictor.describe,
                "cases": len(self.dataset.cases)}

    def case_list(self) -> dict:
        rows, total_clicks, done, total = [], 0, 0, 0
        for case in self.dataset.cases:
            revision, points = self.book.snapshot(case)
            progress = self.progress(case, points, wait=False)
            rows.append({"case": case, "slices": self.dataset.grids[case].shape[0], "labelled": self.dataset.labelled[case],
                         "clicks": len(points), "done": progress["done"], "total": progress["total"],
                         "revision": revision})
            total_clicks += len(points)
            done += progress["done"] or 0
            total += progress["total"]
        return {"cases": rows, "clicks": total_clicks, "done": done, "total": total}

    def case_detail(self, case: str) -> dict:
        grid = self.dataset.grids[case]
        vol = self.dataset.volume(case)
        present = self.dataset.presence(case)
        return {"case": case, "shape": list(grid.shape), "spacing": None if grid.spacing is None else list(grid.spacing),
                "labelled": self.dataset.labelled[case] and vol.label is not None,
                "prediction": self.predictor is not None, "level": vol.level, "width": vol.width,
                "min": vol.lo, "max": vol.hi, "file": self.book.file(case).name,
                "present": None if present is None else present.astype(int).tolist()}

    def image_png(self, case: str, z: int, level: str | None, width: str | None) -> bytes:
        vol = self.dataset.volume(case)
        lv = vol.level if level is None else _finite(level, "level")
        wd = vol.width if width is None else _finite(width, "width")
        if wd <= 0:
            raise ApiError(400, f"width={width}: expected a window width > 0")
        return slice_png(vol.image[z], lv, wd)

    def label_png(self, case: str, z: int) -> bytes:
        vol = self.dataset.volume(case)
        if vol.label is None:
            raise ApiError(404, f"case {case}: has no dense label to overlay")
        return overlay_png(vol.label[z], len(self.classes))

    def prediction_png(self, case: str, z: int) -> bytes:
        if self.predictor is None:
            raise ApiError(404, "no model: start pscv annotate with --checkpoint DIR or --model-uri URI for a "
                                "prediction overlay")
        vol = self.dataset.volume(case)
        labels = self.predictor.predict(case, vol.image, self.dataset.normalised)
        return overlay_png(labels[z], len(self.classes))

    # --- the background scan of the labels ----------------------------------------------------
    def scan(self) -> None:
        for case in self.dataset.cases:
            if self._stop.is_set():
                return
            try:
                self.dataset.presence(case)
            except Exception as exc:  # a broken case file: reported when the case is opened
                log.warning("case %s: %s", case, exc)

    def start_scan(self) -> threading.Thread:
        self._scan = threading.Thread(target=self.scan, name="pscv-annotate-scan", daemon=True)
        self._scan.start()
        return self._scan

    def stop(self, timeout: float = 60) -> None:
        """Stop the scan and wait for the case it is reading: a thread still inside a reader (h5py
        holds HDF5's lock) when the interpreter exits can deadlock the exit."""
        self._stop.set()
        if self._scan is not None:
            self._scan.join(timeout)


def _finite(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ApiError(400, f"{name}={text!r}: expected a number") from None
    if not math.isfinite(value):
        raise ApiError(400, f"{name}={text!r}: expected a finite number")
    return value


async def _json_body(request) -> object:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise ApiError(415, f"Content-Type {kind or '(none)'!r}: expected application/json")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise ApiError(413, f"body of {length} bytes: at most {MAX_BODY}")
    chunks, size = [], 0
    async for chunk in request.stream():  # read no more than the limit, whatever the headers said
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, f"body of more than {MAX_BODY} bytes: at most {MAX_BODY}")
        chunks.append(chunk)
    raw = b"".join(chunks)

    def refuse(constant):
        raise ValueError(f"{constant} is not a number JSON allows")

    try:
        return json.loads(raw.decode("utf-8"), parse_constant=refuse)
    except UnicodeDecodeError:
        raise ApiError(400, "body: not UTF-8 text; expected JSON") from None
    except ValueError as exc:
        raise ApiError(400, f"body: not valid JSON ({exc})") from None


def create_app(session: Session, loopback: bool = True):
    """The FastAPI application (no /docs: its assets come from a CDN, and the page must work offline)."""
    app = FastAPI(title="pscv annotate", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.session = session

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=NO_STORE)

    @app.exception_handler(BadEdit)
    async def _bad_edit(request, exc: BadEdit):
        return JSONResponse({"error": str(exc)}, status_code=400, headers=NO_STORE)

    @app.exception_handler(FileConflict)
    async def _conflict(request, exc: FileConflict):
        return JSONResponse({"error": str(exc)}, status_code=409, headers=NO_STORE)

    @app.exception_handler(PscvError)
    async def _pscv_error(request, exc: PscvError):  # a source file that cannot be read, a model that fails
        log.error("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"error": " ".join(str(exc).split())}, status_code=500, headers=NO_STORE)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            message = f"{request.url.path}: no such page or endpoint (GET /api lists the endpoints)"
        elif exc.status_code == 405:
            message = f"{request.method} {request.url.path}: method not allowed (GET /api lists the endpoints)"
        else:
            message = str(exc.detail)
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=NO_STORE)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc: RequestValidationError):
        return JSONResponse({"error": f"bad request: {exc.errors()[:1]}"}, status_code=400, headers=NO_STORE)

    def png(data: bytes) -> Response:
        return Response(data, media_type="image/png", headers=NO_STORE)

    def answer(data: dict) -> JSONResponse:
        return JSONResponse(data, headers=NO_STORE)

    @app.get("/")
    def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api")
    def api_index():
        return answer({"endpoints": [{"method": m, "path": p, "what": w} for m, p, w in ENDPOINTS]})

    @app.get("/api/info")
    def info():
        return answer(session.info())

    @app.get("/api/cases")
    def cases():
        return answer(session.case_list())

    @app.get("/api/export.csv")
    def export_csv():
        return Response(session.book.export_csv(), media_type="text/csv",
                        headers={**NO_STORE, "Content-Disposition": 'attachment; filename="clicks.csv"'})

    @app.get("/api/cases/{case}")
    def case_detail(case: str):
        return answer(session.case_detail(session.case(case)))

    @app.get("/api/cases/{case}/slices/{z}/image.png")
    def image(case: str, z: str, level: str | None = None, width: str | None = None):
        case = session.case(case)
        return png(session.image_png(case, session.slice_index(case, z), level, width))

    @app.get("/api/cases/{case}/slices/{z}/label.png")
    def label(case: str, z: str):
        case = session.case(case)
        return png(session.label_png(case, session.slice_index(case, z)))

    @app.get("/api/cases/{case}/slices/{z}/prediction.png")
    def prediction(case: str, z: str):
        case = session.case(case)
        return png(session.prediction_png(case, session.slice_index(case, z)))

    @app.get("/api/cases/{case}/clicks")
    def get_clicks(case: str):
        case = session.case(case)
        revision, points = session.book.snapshot(case)
        return answer(session.clicks_answer(case, revision, points))

    @app.post("/api/cases/{case}/clicks")
    async def edit_clicks(case: str, request: Request):
        case = session.case(case)
        body = await _json_body(request)
        sets, deletes = parse_edit(body, session.dataset.grids[case], session.book.names)
        return answer(await run_in_threadpool(session.edit, case, sets, deletes))

    @app.put("/api/cases/{case}/clicks/{point_id}")
    async def put_click(case: str, point_id: str, request: Request):
        case = session.case(case)
        check_id(point_id, "point id in the URL")
        body = await _json_body(request)
        point = parse_point(body, "body", session.dataset.grids[case], session.book.names, point_id=point_id)
        return answer(await run_in_threadpool(session.edit, case, [point], []))

    @app.delete("/api/cases/{case}/clicks/{point_id}")
    def delete_click(case: str, point_id: str):
        case = session.case(case)
        check_id(point_id, "point id in the URL")
        return answer(session.edit(case, [], [point_id], one=point_id))

    return Guard(app, loopback)
