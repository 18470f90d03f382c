"""The page in a real headless browser (Debian's chromium + chromium-driver, driven by Selenium):
choose a class with its key, click the canvas, and the markups file holds the point at the clicked
voxel; move, delete (right-click, Delete key), a second tab's edits merged; reload and the saved
points are shown; a screenshot is saved under pytest's tmp dir. Also the number for the closing
note: key press -> slice painted, median over 50 slices.

Skipped, with the reason, where chromium, chromedriver or selenium are absent."""
from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pytest

from pscv_dist.annotate.render import class_colors
from pscv_dist.data.annotations import import_annotations
from pscv_dist.data.clicks import case_grid
from pscv_dist.data.sources import discover
from pscv_dist.data.synthetic import PHANTOM_CLASSES, write_phantoms

from .helpers import label_of, start, stop

CASE = "phantom_001"


def _browser_paths() -> tuple[str, str]:
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if chromium is None:
        pytest.skip("no chromium browser on PATH (Debian: apt-get install chromium)")
    if driver is None:
        pytest.skip("no chromedriver on PATH (Debian: apt-get install chromium-driver)")
    return chromium, driver


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = _browser_paths()
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,800",
                "--force-device-scale-factor=1", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return write_phantoms(tmp_path_factory.mktemp("page") / "src", 3, seed=6, shape=(6, 40, 48))


@pytest.fixture(scope="module")
def server(src, tmp_path_factory):
    import torch

    from pscv_dist.model import UNet
    from pscv_dist.model.bundle import model_meta, save_model

    root = tmp_path_factory.mktemp("page_server")
    torch.manual_seed(0)
    net = UNet(1, 4, 4, 2)  # an untrained model: its prediction is an overlay like any other
    ckpt = save_model(root / "model.pt", net.eval(), model_meta(net, PHANTOM_CLASSES, 32, {"mode": "mr"}, 4))
    srv = start([str(src), "--layout", "nifti", "--checkpoint", str(ckpt)], root / "clicks", root / "log.txt")
    yield srv
    assert stop(srv) == 0


def wait_for(browser, script: str, timeout: float = 20, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = browser.execute_script(script)
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or script}; browser log: {browser.get_log('browser')[-5:]}")


def open_case(browser, url: str, case: str, z: int) -> None:
    browser.get(f"{url}/#case={case}&z={z}")
    wait_for(browser, f"return window.pscv && pscv.ready && pscv.rendered && pscv.rendered.caseId === '{case}' "
                      f"&& pscv.rendered.z === {z}", what=f"case {case} slice {z} on screen")


def saved(browser) -> None:
    wait_for(browser, "return pscv.idle() && document.getElementById('save-status').className === 'ok'",
             what="the save to finish")


def on_disk(server, src) -> set:
    grids = {s.case: case_grid(s) for s in discover(src, "nifti").cases}
    anns = import_annotations(server.out, "slicer", grids, PHANTOM_CLASSES, partial=True)
    return {(case, *row) for case, a in anns.items() for row in a.points.tolist()}


def press(browser, key: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).send_keys(key).perform()


def voxel_offset(browser, y: int, x: int) -> tuple[int, int]:
    """The canvas offset (from its centre, as Selenium moves) of voxel (y, x)'s centre, from the view's
    scale and pan (the page maps screen -> voxel with floor((s - pan) / scale))."""
    view = browser.execute_script("return pscv.state.view")
    w, h = browser.execute_script("const c = document.getElementById('canvas'); return [c.clientWidth, c.clientHeight]")
    sx = view["panX"] + (x + 0.5) * view["scale"]
    sy = view["panY"] + (y + 0.5) * view["scale"] * view["aspect"]
    return round(sx - w / 2), round(sy - h / 2)


def click_voxel(browser, y: int, x: int, right: bool = False) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = browser.find_element(By.ID, "canvas")
    ox, oy = voxel_offset(browser, y, x)
    chain = ActionChains(browser).move_to_element_with_offset(canvas, ox, oy)
    (chain.context_click() if right else chain.click()).perform()


def voxels_of(label: np.ndarray, z: int, cls: int, n: int) -> list[tuple[int, int]]:
    """n voxels of a class on a slice, away from the class's border (well inside, spread out)."""
    from scipy import ndimage

    inner = ndimage.binary_erosion(label[z] == cls, iterations=1)
    ys, xs = np.nonzero(inner if inner.any() else label[z] == cls)
    picks = np.linspace(0, len(ys) - 1, n).astype(int)
    return [(int(ys[i]), int(xs[i])) for i in picks]


def test_click_saves_the_clicked_voxel_and_reload_shows_it(browser, server, src, tmp_path):
    label = label_of(src, CASE)
    z = 2
    open_case(browser, server.url, CASE, z)
    press(browser, "2")  # class 2 (wall)
    assert browser.execute_script("return pscv.state.cls") == 2
    assert "active" in browser.execute_script("return document.querySelector('#palette button[data-cls=\"2\"]').className")
    (ya, xa), (yb, xb) = voxels_of(label, z, 2, 2)
    click_voxel(browser, ya, xa)
    saved(browser)
    assert on_disk(server, src) == {(CASE, 2, z, ya, xa)}
    raw = json.loads((server.out / f"{CASE}.mrk.json").read_text())
    assert [(p["id"], p["label"]) for p in raw["markups"][0]["controlPoints"]] == [("c2z2", "wall-1")]
    click_voxel(browser, yb, xb)  # the same class again on this slice: the point moves
    saved(browser)
    assert on_disk(server, src) == {(CASE, 2, z, yb, xb)}
    press(browser, "1")
    (yc, xc), = voxels_of(label, z, 1, 1)
    click_voxel(browser, yc, xc)
    saved(browser)
    assert on_disk(server, src) == {(CASE, 2, z, yb, xb), (CASE, 1, z, yc, xc)}
    click_voxel(browser, yc, xc, right=True)  # right-click on a point deletes it
    saved(browser)
    assert on_disk(server, src) == {(CASE, 2, z, yb, xb)}
    press(browser, "3")
    (yd, xd), = voxels_of(label, z, 3, 1)
    click_voxel(browser, yd, xd)
    saved(browser)
    assert (CASE, 3, z, yd, xd) in on_disk(server, src)
    from selenium.webdriver.common.keys import Keys

    press(browser, Keys.DELETE)  # the chosen class's point on this slice
    saved(browser)
    assert on_disk(server, src) == {(CASE, 2, z, yb, xb)}

    browser.refresh()  # a new page: the hash keeps the case and the slice, the server the points
    wait_for(browser, f"return window.pscv && pscv.ready && pscv.rendered && pscv.rendered.z === {z}", what="reload")
    points = browser.execute_script("return [...pscv.state.points.values()]")
    assert [(p["id"], p["class"], p["z"], p["y"], p["x"]) for p in points] == [("c2z2", 2, z, yb, xb)]
    listed = browser.execute_script("return document.querySelector('#slice-clicks li[data-cls=\"2\"] .where').textContent")
    assert listed == f"({xb}, {yb})"
    # the marker is painted on the voxel: the canvas pixel there has the class colour
    ox, oy = voxel_offset(browser, yb, xb)
    pixel = browser.execute_script(
        "const c = document.getElementById('canvas'); const d = window.devicePixelRatio || 1;"
        "const x = (c.clientWidth / 2 + arguments[0]) * d, y = (c.clientHeight / 2 + arguments[1]) * d;"
        "return Array.from(c.getContext('2d').getImageData(Math.round(x), Math.round(y), 1, 1).data)", ox, oy)
    color = class_colors(4)[2]
    assert pixel[:3] == [int(color[i:i + 2], 16) for i in (1, 3, 5)], pixel
    shot = tmp_path / "annotate_page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_two_tabs_keep_each_others_clicks(browser, server, src):
    label = label_of(src, "phantom_002")
    z = 4
    first = browser.current_window_handle
    open_case(browser, server.url, "phantom_002", z)
    browser.switch_to.new_window("tab")
    second = browser.current_window_handle
    try:
        open_case(browser, server.url, "phantom_002", z)
        press(browser, "3")
        (y3, x3), = voxels_of(label, z, 3, 1)
        click_voxel(browser, y3, x3)
        saved(browser)
        browser.switch_to.window(first)  # this tab has not seen the other tab's point yet (or just has)
        press(browser, "1")
        (y1, x1), = voxels_of(label, z, 1, 1)
        click_voxel(browser, y1, x1)
        saved(browser)
        assert {(c, zz, y, x) for case, c, zz, y, x in on_disk(server, src) if case == "phantom_002"} == {
            (3, z, y3, x3), (1, z, y1, x1)}
        # both tabs show both points (the first tab merged on save, the second polls)
        for handle in (first, second):
            browser.switch_to.window(handle)
            wait_for(browser, "return pscv.state.points.size === 2", what="both points in every tab")
    finally:
        browser.switch_to.window(second)
        browser.close()
        browser.switch_to.window(first)


def test_refused_click_outside_the_image_writes_nothing(browser, server, src):
    open_case(browser, server.url, "phantom_000", 0)
    before = on_disk(server, src)
    browser.execute_script("pscv.state.view.panX += 5000")  # the image far off the canvas: every click is outside
    press(browser, "1")
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    ActionChains(browser).move_to_element(browser.find_element(By.ID, "canvas")).click().perform()
    status = wait_for(browser, "const s = document.getElementById('save-status'); return s.className === 'error' && s.textContent")
    assert "outside the image" in status
    assert on_disk(server, src) == before


@pytest.fixture(scope="module")
def tall(tmp_path_factory):
    """One phantom of 60 slices of 256 x 256 (the size of a cardiac MR slice) for the timing."""
    root = tmp_path_factory.mktemp("tall")
    src = write_phantoms(root / "src", 1, seed=2, shape=(60, 256, 256))
    srv = start([str(src), "--layout", "nifti"], root / "clicks", root / "log.txt")
    yield srv
    assert stop(srv) == 0


def _key_to_slice_ms(browser, url: str, query: str, n: int = 50) -> list[float]:
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{url}/{query}#case=phantom_000&z=0")
    wait_for(browser, "return window.pscv && pscv.ready && pscv.rendered && pscv.rendered.z === 0", what="page")
    browser.execute_script("pscv.timings.length = 0")
    for i in range(n):
        press(browser, Keys.ARROW_DOWN)
        wait_for(browser, f"return pscv.timings.length >= {i + 1} && pscv.rendered.z === {i + 1}", what=f"slice {i + 1}")
        time.sleep(0.05)  # an annotator's pace is slower still; this lets the prefetch of the next slice finish
    return browser.execute_script("return pscv.timings.slice()")


@pytest.mark.slow
def test_key_press_to_slice_latency(browser, tall, tmp_path):
    """Median time from the key press (the keydown event) to the frame that shows the new slice,
    over 50 slices of 256 x 256: as the page works (it prefetches the next slices) and with the
    prefetch off (every slice fetched and decoded after the key press)."""
    warm = _key_to_slice_ms(browser, tall.url, "")
    cold = _key_to_slice_ms(browser, tall.url, "?prefetch=0")
    result = {"slices": 50, "shape": [60, 256, 256], "median_ms": statistics.median(warm),
              "p90_ms": float(np.percentile(warm, 90)), "median_ms_no_prefetch": statistics.median(cold),
              "p90_ms_no_prefetch": float(np.percentile(cold, 90))}
    (tmp_path / "key_to_slice.json").write_text(json.dumps(result, indent=2))
    print("key press -> slice painted:", json.dumps(result))
    assert len(warm) == len(cold) == 50
    assert result["median_ms"] < 1000 and result["median_ms_no_prefetch"] < 2000


def test_viewer_controls(browser, server):
    """Wheel and keys change the slice, drag windows (then the exact image is fetched), R resets,
    Ctrl+wheel zooms, Shift+drag pans, F fits, L and P show the overlays, N finds the next slice to do,
    ] opens the next case; a number key beyond the classes changes nothing."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    open_case(browser, server.url, "phantom_000", 1)
    canvas = browser.find_element(By.ID, "canvas")
    state = lambda expr: browser.execute_script(f"return pscv.state.{expr}")  # noqa: E731
    ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, 120).perform()
    wait_for(browser, "return pscv.rendered.z === 2", what="wheel -> next slice")
    for key, z in ((Keys.ARROW_UP, 1), (Keys.PAGE_DOWN, 5), (Keys.HOME, 0), (Keys.END, 5), (Keys.ARROW_LEFT, 4)):
        press(browser, key)
        wait_for(browser, f"return pscv.rendered.z === {z} && pscv.state.z === {z}", what=f"{key!r} -> slice {z}")
    assert browser.execute_script("return location.hash") == "#case=phantom_000&z=4"

    detail = {"level": state("detail.level"), "width": state("detail.width")}
    ActionChains(browser).move_to_element(canvas).click_and_hold().move_by_offset(60, -30).release().perform()
    wl, req = state("wl"), state("wlReq")
    assert wl == req and wl["width"] > detail["width"] and wl["level"] > detail["level"]
    assert not state("points.size")  # a drag is not a click
    wait_for(browser, "return pscv.state.drawn && pscv.state.drawn.z === 4", what="the re-windowed slice")
    press(browser, "r")
    assert state("wl") == detail == state("wlReq")

    scale = state("view.scale")
    (ActionChains(browser).key_down(Keys.CONTROL).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, -200)
     .key_up(Keys.CONTROL).perform())
    assert state("view.scale") > scale * 1.5 and state("z") == 4  # zoomed, same slice
    pan = state("view.panX")
    (ActionChains(browser).move_to_element(canvas).key_down(Keys.SHIFT).click_and_hold().move_by_offset(40, 20)
     .release().key_up(Keys.SHIFT).perform())
    assert abs(state("view.panX") - pan - 40) <= 1 and not state("points.size")
    press(browser, "f")
    cw, ch = browser.execute_script("const c = document.getElementById('canvas'); return [c.clientWidth, c.clientHeight]")
    assert abs(state("view.scale") - 0.96 * min(cw / 48, ch / 40)) < 1e-9  # 6 x 40 x 48 voxels, square pixels

    press(browser, "l")
    wait_for(browser, "return pscv.state.showLabel && pscv.state.drawn.label !== null", what="label overlay")
    press(browser, "p")
    wait_for(browser, "return pscv.state.showPred && pscv.state.drawn.pred !== null", what="prediction overlay")
    assert browser.execute_script("return document.getElementById('show-pred').checked")
    press(browser, "7")  # no class 7
    assert state("cls") == 1
    press(browser, "n")
    wait_for(browser, "return pscv.state.z === 5", what="next slice not done")
    press(browser, "]")
    wait_for(browser, "return pscv.rendered.caseId === 'phantom_001'", what="the next case")
    assert browser.execute_script("return document.querySelector('#case-list li.current').dataset.case") == "phantom_001"
