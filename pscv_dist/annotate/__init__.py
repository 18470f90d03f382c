"""``pscv annotate``: a local web page for annotation by clicks, one click per organ per slice.

``pscv annotate SRC --out CLICKS_DIR [--layout L] [--checkpoint DIR | --model-uri URI]`` serves a
page over a dataset folder (any layout of :mod:`pscv_dist.data.sources`) or a pscv store. The
annotator opens a case, presses a class's number key and clicks once per slice; every change is
saved at once, atomically, as 3D Slicer markups ``CLICKS_DIR/<case>.mrk.json`` that ``pscv prepare
SRC OUT --layout L --clicks CLICKS_DIR`` imports (and 3D Slicer opens).

Modules: :mod:`.dataset` (cases, grids, volumes, which classes each slice holds), :mod:`.book`
(the points, by id, per-case locks, the markups files), :mod:`.predictor` (the model overlay),
:mod:`.render` (PNG slices and overlays), :mod:`.server` (the FastAPI app and its JSON API). The
page is ``static/`` (plain HTML, CSS and JavaScript, no network access beyond this server).
The user's guide, with the API table: docs/ANNOTATE.md.
"""
from __future__ import annotations

import errno
import logging
import socket
import sys
from pathlib import Path

from ..errors import ConfigError, OutputError

log = logging.getLogger(__name__)

__all__ = ["build_session", "serve", "bind"]


def _inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents


def build_session(src: str, out: str, layout: str | None = None, classes: list[str] | None = None,
                  checkpoint: str | None = None, model_uri: str | None = None, tracking_uri: str | None = None):
    """Open the source, check and read CLICKS_DIR, load the model: everything before serving."""
    from .book import ClickBook
    from .dataset import open_dataset
    from .server import Session

    if checkpoint and model_uri:
        raise ConfigError("give at most one of --checkpoint DIR or --model-uri models:/NAME@ALIAS")
    if tracking_uri and not model_uri:
        raise ConfigError("--tracking-uri is for --model-uri; give --model-uri too (or drop --tracking-uri)")
    if Path(out).exists() and Path(src).exists() and Path(out).resolve() == Path(src).resolve():
        raise OutputError(f"--out {out}: is the source folder; give a folder of its own for the markups files")
    dataset = open_dataset(src, layout, classes)
    if dataset.kind == "store" and _inside(Path(out), Path(src)):
        raise OutputError(f"--out {out}: is inside the store {src}; a store holds only what pscv prepare wrote")
    predictor = None
    if checkpoint or model_uri:
        from .predictor import Predictor

        predictor = Predictor(dataset.classes, checkpoint=checkpoint, model_uri=model_uri, tracking_uri=tracking_uri,
                              normalization=dataset.normalization)
    book = ClickBook(out, dataset.grids, dataset.classes)  # last: CLICKS_DIR is created once all else is fine
    return Session(dataset, book, predictor)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0: any free port)."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: expected 0..65535 (0 picks a free port)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OutputError(f"--host {host}: cannot be resolved ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        why = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise OutputError(f"--host {host} --port {port}: cannot listen there ({why}); pass another --port "
                          f"(0 picks a free one)") from None
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(src: str, out: str, *, layout: str | None = None, classes: list[str] | None = None,
          checkpoint: str | None = None, model_uri: str | None = None, tracking_uri: str | None = None,
          host: str = "127.0.0.1", port: int = 8765) -> int:
    """Check everything, bind, print the address, serve until Ctrl-C / SIGTERM."""
    import uvicorn

    from .server import _is_loopback, create_app

    sock = bind(host, port)  # first: a port in use is refused before anything is loaded or created
    try:
        session = build_session(src, out, layout, classes, checkpoint, model_uri, tracking_uri)
    except BaseException:
        sock.close()
        raise
    loopback = _is_loopback(sock.getsockname()[0])
    app = create_app(session, loopback=loopback)
    ds = session.dataset
    print(f"pscv annotate: {len(ds.cases)} case(s) of {ds.name} ({ds.kind}), {len(ds.classes)} classes"
          + (f", overlay from {session.predictor.describe}" if session.predictor else ""), flush=True)
    print(f"  clicks   {session.book.out}/<case>.mrk.json (saved after every change)", flush=True)
    print(f"  page     {url_of(sock)}  (Ctrl-C stops)", flush=True)
    if not loopback:
        print(f"pscv annotate: warning: listening on {host}, not loopback: the page has no login, anyone who can "
              f"reach this address can see the images and change the clicks", file=sys.stderr, flush=True)
    session.start_scan()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    try:
        server.run(sockets=[sock])  # uvicorn shuts down on Ctrl-C / SIGTERM, then re-raises the signal
    except KeyboardInterrupt:
        pass
    finally:
        session.stop()
        sock.close()
    print("pscv annotate: stopped; every click was saved", flush=True)
    return 0
