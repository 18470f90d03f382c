"""The JSON API of `pscv annotate`, against the real server (the CLI in its own process, uvicorn on a
free loopback port): every endpoint, every refused request, two clients editing one case, a restart,
a store as the source, and the command's own refusals."""
from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pscv_dist.annotate.render import class_colors, window
from pscv_dist.annotate.server import ENDPOINTS
from pscv_dist.cli import main as cli_main
from pscv_dist.data.annotations import import_annotations
from pscv_dist.data.clicks import case_grid
from pscv_dist.data.sources import discover
from pscv_dist.data.synthetic import PHANTOM_CLASSES, write_phantoms
from pscv_dist.data.volume_io import read_nifti
from pscv_dist.eval.predict import segment
from pscv_dist.model import UNet
from pscv_dist.model.bundle import load_model, model_meta, save_model

from .helpers import clicks_from_label, label_of, start, stop

CASE = "phantom_000"


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """Three phantoms (6 x 40 x 48); phantom_002 has no dense label (a clicks-only case)."""
    root = write_phantoms(tmp_path_factory.mktemp("annotate") / "src", 3, seed=4, shape=(6, 40, 48))
    (root / "labelsTr" / "phantom_002.nii.gz").unlink()
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained UNet over the phantom classes whose prediction is not constant."""
    torch.manual_seed(0)
    net = UNet(1, len(PHANTOM_CLASSES), 4, 2)
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor([0.0, 0.05, -0.05, 0.02]))
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    return save_model(path, net.eval(), model_meta(net, PHANTOM_CLASSES, 32, {"mode": "mr"}, len(PHANTOM_CLASSES)))


@pytest.fixture(scope="module")
def server(src, checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    srv = start([str(src), "--layout", "nifti", "--checkpoint", str(checkpoint)], root / "clicks", root / "log.txt")
    yield srv
    assert stop(srv) == 0, srv.log.read_text()[-2000:]  # Ctrl-C stops it cleanly


def grids_of(src: Path) -> dict:
    return {s.case: case_grid(s) for s in discover(src, "nifti", labels_optional=True).cases}


def imported(out: Path, src: Path) -> dict[str, set]:
    """What `pscv prepare SRC --clicks OUT` would import, as {case: {(class, z, y, x)}}."""
    anns = import_annotations(out, None, grids_of(src), PHANTOM_CLASSES, partial=True)
    return {case: {tuple(r) for r in a.points.tolist()} for case, a in anns.items()}


def wait_progress(server, case: str) -> dict:
    for _ in range(200):
        row = next(r for r in server.get("/api/cases")["cases"] if r["case"] == case)
        if row["done"] is not None:
            return row
        time.sleep(0.05)
    raise AssertionError("the label scan never finished")


def test_listens_on_loopback_and_serves_the_page(server):
    assert server.url.startswith("http://127.0.0.1:")
    status, page, headers = server.request("GET", "/")
    assert status == 200 and b"/static/app.js" in page and headers["content-type"].startswith("text/html")
    for asset in ("app.js", "app.css"):
        status, data, _ = server.request("GET", f"/static/{asset}")
        assert status == 200 and len(data) > 1000
    for asset in ("index.html", "app.js", "app.css"):  # offline: nothing is fetched from another host
        text = server.request("GET", f"/static/{asset}")[1].decode()
        assert "//cdn" not in text and "https://" not in text and "http://" not in text


def test_api_index_and_info(server, src):
    listed = server.get("/api")["endpoints"]
    assert [(e["method"], e["path"]) for e in listed] == [(m, p) for m, p, _ in ENDPOINTS]
    info = server.get("/api/info")
    assert [c["name"] for c in info["classes"]] == PHANTOM_CLASSES
    assert [c["key"] for c in info["classes"]] == ["0", "1", "2", "3"]
    assert [c["color"] for c in info["classes"]] == class_colors(4)
    assert info["model"].startswith("checkpoint ") and info["cases"] == 3 and info["kind"] == "nifti"
    assert info["clicks_dir"] == str(server.out)


def test_case_detail_and_presence(server, src):
    detail = server.get(f"/api/cases/{CASE}")
    label = label_of(src, CASE)
    assert detail["shape"] == list(label.shape) and detail["spacing"] == [3.0, 1.5, 1.5]
    assert detail["labelled"] and detail["prediction"] and detail["file"] == f"{CASE}.mrk.json"
    expected = [[int((label[z] == c).any()) for c in range(4)] for z in range(label.shape[0])]
    assert detail["present"] == expected
    unlabelled = server.get("/api/cases/phantom_002")
    assert not unlabelled["labelled"] and unlabelled["present"] is None


def test_slice_image_is_the_windowed_slice(server, src):
    image, _ = read_nifti(src / "imagesTr" / f"{CASE}_0000.nii.gz")
    detail = server.get(f"/api/cases/{CASE}")
    got = server.png(f"/api/cases/{CASE}/slices/2/image.png")
    np.testing.assert_array_equal(got, window(image[2].astype(np.float32), detail["level"], detail["width"]))
    got = server.png(f"/api/cases/{CASE}/slices/5/image.png?level=300&width=200")
    np.testing.assert_array_equal(got, window(image[5].astype(np.float32), 300, 200))
    assert got.dtype == np.uint8 and got.shape == image.shape[1:]


def _rgb(color: str) -> list[int]:
    return [int(color[i:i + 2], 16) for i in (1, 3, 5)]


def test_label_overlay(server, src):
    label = label_of(src, CASE)
    rgba = server.png(f"/api/cases/{CASE}/slices/3/label.png")
    assert rgba.shape == label.shape[1:] + (4,)
    np.testing.assert_array_equal(rgba[..., 3] > 0, label[3] > 0)  # background transparent
    for c in (1, 2, 3):
        assert (rgba[label[3] == c][:, :3] == _rgb(class_colors(4)[c])).all()
    status, answer = server.json("GET", "/api/cases/phantom_002/slices/0/label.png")
    assert status == 404 and "no dense label" in answer["error"]


def test_prediction_overlay_is_pscv_predict(server, src, checkpoint):
    model, meta = load_model(checkpoint)
    image, _ = read_nifti(src / "imagesTr" / f"{CASE}_0000.nii.gz")
    expected = segment(model, meta, image.astype(np.float32))
    assert len(np.unique(expected)) > 1
    for z in (0, 4):
        rgba = server.png(f"/api/cases/{CASE}/slices/{z}/prediction.png")
        np.testing.assert_array_equal(rgba[..., 3] > 0, expected[z] > 0)
        for c in np.unique(expected[z])[1:]:
            assert (rgba[expected[z] == c][:, :3] == _rgb(class_colors(4)[c])).all()


def test_clicks_set_move_delete_and_progress(server, src):
    case = "phantom_001"
    label = label_of(src, case)
    row = wait_progress(server, case)
    assert (row["done"], row["total"], row["clicks"]) == (0, 6, 0)
    points = clicks_from_label(label, np.random.default_rng(1))
    on_slice0 = [p for p in points if p["z"] == 0]
    status, answer = server.json("POST", f"/api/cases/{case}/clicks", {"set": on_slice0})
    assert status == 200 and answer["clicks"] == len(on_slice0) and answer["progress"]["done"] == 1
    assert answer["file"] == f"{case}.mrk.json" and answer["revision"] >= 1
    assert imported(server.out, src)[case] == {(p["class"], p["z"], p["y"], p["x"]) for p in on_slice0}
    # move one point (PUT by id), then delete one (DELETE by id): the slice is no longer done
    moved = dict(on_slice0[0])
    ys, xs = np.nonzero(label[0] == moved["class"])
    moved.update(y=int(ys[-1]), x=int(xs[-1]))
    status, answer = server.json("PUT", f"/api/cases/{case}/clicks/{moved['id']}",
                                 {k: moved[k] for k in ("class", "z", "y", "x")})
    assert status == 200 and {"id": moved["id"], "class": moved["class"], "class_name": PHANTOM_CLASSES[moved["class"]],
                              "z": 0, "y": moved["y"], "x": moved["x"]} in answer["points"]
    status, answer = server.json("DELETE", f"/api/cases/{case}/clicks/{on_slice0[1]['id']}")
    assert status == 200 and answer["clicks"] == len(on_slice0) - 1 and answer["progress"]["done"] == 0
    assert server.get(f"/api/cases/{case}/clicks")["points"] == answer["points"]
    status, answer = server.json("DELETE", f"/api/cases/{case}/clicks/{on_slice0[1]['id']}")
    assert status == 404 and "no point with id" in answer["error"]
    # every slice clicked: done 6 / 6; the case list says so too
    status, answer = server.json("POST", f"/api/cases/{case}/clicks", {"set": points})
    assert answer["progress"] == {"done": 6, "total": 6, "counts": "slices with every class of their label clicked"}
    row = next(r for r in server.get("/api/cases")["cases"] if r["case"] == case)
    assert (row["done"], row["clicks"]) == (6, len(points))
    assert imported(server.out, src)[case] == {(p["class"], p["z"], p["y"], p["x"]) for p in points}


def test_unlabelled_case_counts_clicked_slices(server):
    case = "phantom_002"
    status, answer = server.json("POST", f"/api/cases/{case}/clicks", {"set": [
        {"id": "c1z1", "class": "organ", "z": 1, "y": 20, "x": 10}, {"id": "c0z1", "class": 0, "z": 1, "y": 1, "x": 1},
        {"id": "c3z4", "class": 3, "z": 4, "y": 20, "x": 30}]})
    assert status == 200 and answer["progress"] == {"done": 2, "total": 6, "counts": "clicked slices"}


def test_two_clients_editing_one_case_lose_nothing(server, src):
    case = CASE
    errors = []

    def client(t: int):
        for i in range(12):
            status, answer = server.json("POST", f"/api/cases/{case}/clicks",
                                         {"set": [{"id": f"tab{t}-{i}", "class": 1 + t % 3, "z": i % 6, "y": t, "x": i}]})
            if status != 200:
                errors.append(answer)

    threads = [threading.Thread(target=client, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    points = server.get(f"/api/cases/{case}/clicks")["points"]
    assert {p["id"] for p in points} >= {f"tab{t}-{i}" for t in range(6) for i in range(12)}
    # the same point from two clients: the last write wins, the others stay
    server.json("PUT", f"/api/cases/{case}/clicks/tab0-0", {"class": 1, "z": 0, "y": 30, "x": 30})
    server.json("PUT", f"/api/cases/{case}/clicks/tab0-0", {"class": 1, "z": 0, "y": 31, "x": 32})
    points = {p["id"]: p for p in server.get(f"/api/cases/{case}/clicks")["points"]}
    assert (points["tab0-0"]["y"], points["tab0-0"]["x"]) == (31, 32) and len(points) == 72
    assert len(imported(server.out, src)[case]) == 72


def test_export_csv_imports_as_the_markups(server, src, tmp_path):
    status, data, headers = server.request("GET", "/api/export.csv")
    assert status == 200 and headers["content-type"].startswith("text/csv")
    assert data.splitlines()[0] == b"case,class,i,j,k"
    (tmp_path / "clicks.csv").write_bytes(data)
    grids = grids_of(src)
    from_csv = import_annotations(tmp_path / "clicks.csv", None, grids, PHANTOM_CLASSES, partial=True)
    assert {c: {tuple(r) for r in a.points.tolist()} for c, a in from_csv.items()} == imported(server.out, src)


def _digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


BIG = json.dumps({"set": [{"id": f"p{i}", "class": 1, "z": 0, "y": 0, "x": 0} for i in range(30000)]}).encode()
BAD_REQUESTS = [
    # (method, path, body (JSON) or raw bytes, extra headers, status, message)
    ("GET", "/api/cases/nope", None, {}, 404, "case 'nope': no such case"),
    ("GET", "/api/cases/nope/slices/0/image.png", None, {}, 404, "no such case"),
    ("GET", "/api/cases/..%2F..%2Fetc%2Fpasswd/clicks", None, {}, 400, "not allowed in a case id"),
    ("GET", "/api/cases/%2E%2E/clicks", None, {}, 400, "not allowed in a case id"),
    ("GET", "/api/cases/../../etc/clicks", None, {}, 400, "not allowed in a case id"),
    ("GET", f"/api/cases/{CASE}%00/clicks", None, {}, 400, "not allowed in a case id"),
    ("POST", "/api/cases/..%2Fx/clicks", {"set": []}, {}, 400, "not allowed in a case id"),
    ("GET", f"/api/cases/{CASE}/slices/6/image.png", None, {}, 400, "slice 6 of case phantom_000: outside the volume (slices 0..5)"),
    ("GET", f"/api/cases/{CASE}/slices/-1/image.png", None, {}, 400, "expected an integer slice index 0..5"),
    ("GET", f"/api/cases/{CASE}/slices/1e0/label.png", None, {}, 400, "expected an integer slice index"),
    ("GET", f"/api/cases/{CASE}/slices/x/prediction.png", None, {}, 400, "expected an integer slice index"),
    ("GET", f"/api/cases/{CASE}/slices/99999999999/image.png", None, {}, 400, "expected an integer slice index"),
    ("GET", f"/api/cases/{CASE}/slices/0/image.png?width=0", None, {}, 400, "expected a window width > 0"),
    ("GET", f"/api/cases/{CASE}/slices/0/image.png?level=nan", None, {}, 400, "expected a finite number"),
    ("GET", f"/api/cases/{CASE}/slices/0/image.png?level=abc", None, {}, 400, "expected a number"),
    ("POST", f"/api/cases/{CASE}/clicks", {"set": [{"id": "c1z0", "class": 1, "z": 0, "y": 40, "x": 0}]}, {}, 400,
     "set[0]: y = 40 is outside the image (z, y, x) of 6 x 40 x 48 voxels: y must be in 0..39"),
    ("POST", f"/api/cases/{CASE}/clicks", {"set": [{"id": "c1z6", "class": 1, "z": 6, "y": 0, "x": 0}]}, {}, 400,
     "z = 6 is outside the image"),
    ("POST", f"/api/cases/{CASE}/clicks", {"set": [{"id": "a", "class": 4, "z": 0, "y": 0, "x": 0}]}, {}, 400,
     "set[0].class: unknown class 4; known classes: 0=background, 1=organ, 2=wall, 3=cavity"),
    ("POST", f"/api/cases/{CASE}/clicks", {"set": [{"id": "a", "class": "liver", "z": 0, "y": 0, "x": 0}]}, {}, 400,
     "unknown class 'liver'"),
    ("POST", f"/api/cases/{CASE}/clicks", {"set": [{"id": "a", "class": 1, "z": 0, "y": "3", "x": 0}]}, {}, 400,
     "set[0].y: expected an integer voxel index"),
    ("POST", f"/api/cases/{CASE}/clicks", {"set": [{"class": 1, "z": 0, "y": 3, "x": 0}]}, {}, 400, "missing key(s) ['id']"),
    ("POST", f"/api/cases/{CASE}/clicks", {"set": [{"id": "c2z0", "class": 1, "z": 0, "y": 3, "x": 0}]}, {}, 400,
     "use id 'c1z0'"),
    ("POST", f"/api/cases/{CASE}/clicks", {"add": []}, {}, 400, "unknown key(s) ['add']"),
    ("POST", f"/api/cases/{CASE}/clicks", [1, 2], {}, 400, "body: expected an object"),
    ("POST", f"/api/cases/{CASE}/clicks", b'{"set": [', {"Content-Type": "application/json"}, 400, "body: not valid JSON"),
    ("POST", f"/api/cases/{CASE}/clicks", b'{"set": [{"id": "a", "class": 1, "z": 0, "y": NaN, "x": 0}]}',
     {"Content-Type": "application/json"}, 400, "NaN is not a number JSON allows"),
    ("POST", f"/api/cases/{CASE}/clicks", b"\xff\xfe", {"Content-Type": "application/json"}, 400, "not UTF-8"),
    ("POST", f"/api/cases/{CASE}/clicks", b"set=1", {"Content-Type": "application/x-www-form-urlencoded"}, 415,
     "expected application/json"),
    ("POST", f"/api/cases/{CASE}/clicks", BIG, {"Content-Type": "application/json"}, 413, "at most 1048576"),
    ("PUT", f"/api/cases/{CASE}/clicks/bad%20id", {"class": 1, "z": 0, "y": 0, "x": 0}, {}, 400, "expected a point id"),
    ("PUT", f"/api/cases/{CASE}/clicks/a", {"id": "b", "class": 1, "z": 0, "y": 0, "x": 0}, {}, 400, "differs from the id in the URL"),
    ("PUT", f"/api/cases/{CASE}/clicks/a", {"class": 1, "z": 0, "y": 0, "x": -3}, {}, 400, "x = -3 is outside the image"),
    ("DELETE", f"/api/cases/{CASE}/clicks/never-there", None, {}, 404, "no point with id 'never-there'"),
    ("GET", "/api/nothing", None, {}, 404, "no such page or endpoint"),
    ("PATCH", f"/api/cases/{CASE}/clicks", {"set": []}, {}, 405, "method not allowed"),
    ("GET", "/api/info", None, {"Host": "attacker.example:80"}, 403, "answers loopback names only"),
    ("POST", f"/api/cases/{CASE}/clicks", {"set": [{"id": "c1z0", "class": 1, "z": 0, "y": 1, "x": 1}]},
     {"Origin": "http://attacker.example"}, 403, "writes are accepted from this server's own page only"),
]


def _declared_only(server, method: str, path: str, length: int, headers: dict) -> tuple[int, bytes, dict]:
    """A request that declares a body over the limit and waits for the answer before sending it (as a
    client sending ``Expect: 100-continue`` does): the server must refuse on the header alone. Sending
    the body first races the server's early answer and close (a broken pipe that can lose the answer);
    the body cut off while it streams is test_a_chunked_body_over_the_limit_is_cut_off."""
    import http.client

    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.putrequest(method, path)
        for key, value in {**headers, "Content-Length": str(length)}.items():
            conn.putheader(key, value)
        conn.endheaders()
        answer = conn.getresponse()
        return answer.status, answer.read(), {k.lower(): v for k, v in answer.getheaders()}
    finally:
        conn.close()


@pytest.mark.parametrize("method, path, body, headers, status, message", BAD_REQUESTS,
                         ids=[f"{m} {p[:60]} {s}" for m, p, _, _, s, _ in BAD_REQUESTS])
def test_bad_requests_are_refused_and_write_nothing(server, method, path, body, headers, status, message, tmp_path):
    before = _digest(server.out)
    raw = body if isinstance(body, bytes) else None
    if body is BIG:
        got, data, answer_headers = _declared_only(server, method, path, len(BIG), headers)
    else:
        got, data, answer_headers = server.request(method, path, None if raw is not None else body, headers=headers,
                                                   raw=raw)
    answer = json.loads(data)
    assert got == status and message in answer["error"], answer
    assert answer_headers["content-type"] == "application/json" and len(answer) == 1
    assert "\n" not in answer["error"]
    assert _digest(server.out) == before
    parent = server.out.parent
    assert sorted(p.name for p in parent.iterdir()) == ["clicks", "log.txt"]  # nothing beside CLICKS_DIR


def test_restart_loads_what_was_saved(src, tmp_path):
    out = tmp_path / "clicks"
    first = start([str(src), "--layout", "nifti"], out, tmp_path / "a.log")
    try:
        status, _ = first.json("POST", f"/api/cases/{CASE}/clicks", {"set": [
            {"id": "c2z3", "class": 2, "z": 3, "y": 12, "x": 30}, {"id": "own:7", "class": 0, "z": 5, "y": 0, "x": 47}]})
        assert status == 200
    finally:
        assert stop(first) == 0
    second = start([str(src), "--layout", "nifti"], out, tmp_path / "b.log")
    try:
        points = second.get(f"/api/cases/{CASE}/clicks")["points"]
        assert [(p["id"], p["class"], p["z"], p["y"], p["x"]) for p in points] == [
            ("c2z3", 2, 3, 12, 30), ("own:7", 0, 5, 0, 47)]
        assert second.get("/api/cases")["clicks"] == 2
        assert second.get("/api/info")["model"] is None
        status, answer = second.json("GET", f"/api/cases/{CASE}/slices/0/prediction.png")
        assert status == 404 and "--checkpoint" in answer["error"]
    finally:
        assert stop(second) == 0


def test_a_store_as_the_source(tmp_path):
    """Annotating a store writes markups through the store's geometry: `pscv prepare` of the
    original folder with --clicks imports them to the same voxels."""
    from pscv_dist.data.prepare import PrepareConfig, prepare

    src = write_phantoms(tmp_path / "src", 2, seed=9, shape=(4, 32, 36))
    store = tmp_path / "s.zarr"
    prepare(PrepareConfig(str(src), str(store), "nifti", size=32, folds=2, progress=False))
    srv = start([str(store)], tmp_path / "clicks", tmp_path / "log.txt")
    try:
        info = srv.get("/api/info")
        assert info["kind"] == "store" and [c["name"] for c in info["classes"]] == PHANTOM_CLASSES
        detail = srv.get("/api/cases/phantom_001")
        assert detail["shape"] == [4, 32, 36] and detail["labelled"] and 0 <= detail["min"] <= detail["max"] <= 1
        assert srv.png("/api/cases/phantom_001/slices/3/label.png").shape == (32, 36, 4)
        pts = clicks_from_label(label_of(src, "phantom_001"), np.random.default_rng(3))
        assert srv.json("POST", "/api/cases/phantom_001/clicks", {"set": pts})[0] == 200
    finally:
        assert stop(srv) == 0
    assert imported(tmp_path / "clicks", src) == {"phantom_001": {(p["class"], p["z"], p["y"], p["x"]) for p in pts}}


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_command_refusals(src, checkpoint, tmp_path, capsys):
    out = str(tmp_path / "clicks")
    wrong = tmp_path / "wrong.pt"
    net = UNet(1, 3, 4, 2)
    save_model(wrong, net, model_meta(net, ["bg", "a", "b"], 32, {"mode": "mr"}, 3))
    (tmp_path / "file").write_text("x")
    cases = [
        ([str(src), "--layout", "nifti", "--out", out, "--checkpoint", str(checkpoint), "--model-uri", "models:/m@a"],
         "give at most one of --checkpoint"),
        ([str(src), "--layout", "nifti", "--out", out, "--tracking-uri", "sqlite:///x.db"], "--tracking-uri is for --model-uri"),
        ([str(src), "--out", out], "not a pscv store"),
        ([str(tmp_path / "missing"), "--layout", "nifti", "--out", out], "source folder not found"),
        ([str(src), "--layout", "nifti", "--out", str(tmp_path / "file")], "found a file"),
        ([str(src), "--layout", "nifti", "--out", str(src)], "is the source folder"),
        ([str(src), "--layout", "nifti", "--out", out, "--checkpoint", str(wrong)], "the model predicts 3 classes"),
        ([str(src), "--layout", "nifti", "--out", out, "--checkpoint", str(tmp_path / "none")], "checkpoint not found"),
        ([str(src), "--layout", "nifti", "--out", out, "--classes", "bg,a"], "--classes: 2 names given"),
        ([str(src), "--layout", "nifti", "--out", out, "--port", "70000"], "--port 70000: expected 0..65535"),
    ]
    for args, needle in cases:
        port = [] if "--port" in args else ["--port", "0"]  # never the default port: it may be in use here
        assert cli_main(["annotate", *args, *port]) == 2, args
        assert needle in _one_error(capsys), args
    with socket.socket() as busy:  # a port that is taken
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert cli_main(["annotate", str(src), "--layout", "nifti", "--out", out, "--port", str(port)]) == 2
        assert "address already in use" in _one_error(capsys)
    assert (tmp_path / "file").read_text() == "x" and not Path(out).exists()


def test_loopback_names():
    from pscv_dist.annotate.server import _host_name, _is_loopback

    assert all(_is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "localhost"))
    assert not any(_is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "::", "example.org"))
    assert [_host_name(h) for h in ("127.0.0.1:8765", "[::1]:8765", "localhost", "[::1]")] == [
        "127.0.0.1", "::1", "localhost", "::1"]


def test_a_chunked_body_over_the_limit_is_cut_off(server):
    """Without a Content-Length the server stops reading at the limit."""
    import http.client

    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.putrequest("POST", f"/api/cases/{CASE}/clicks")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        block = b" " * 65536
        try:
            for _ in range(40):  # 2.5 MiB of JSON whitespace
                conn.send(b"%x\r\n%s\r\n" % (len(block), block))
            conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the whole body was sent
        answer = conn.getresponse()
        assert answer.status == 413 and b"at most 1048576" in answer.read()
    finally:
        conn.close()
