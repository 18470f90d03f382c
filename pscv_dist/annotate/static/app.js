// pscv annotate: the page. Plain JavaScript, no dependencies; talks to this server's JSON API only
// (docs/ANNOTATE.md). Voxels are (z, y, x) = slice, row, column of the store's (Z, H, W) volume.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const params = new URLSearchParams(location.search);
  const PREFETCH = params.get("prefetch") !== "0";

  const S = {
    info: null, cases: [], caseId: null, detail: null, z: 0, cls: 1,
    points: new Map(), revision: -1,
    wl: { level: 0, width: 1 }, wlReq: { level: 0, width: 1 },  // shown / rendered by the server
    view: { scale: 1, panX: 0, panY: 0, aspect: 1, fitted: true },
    showLabel: false, showPred: false, opacity: 0.4,
    pending: { set: new Map(), del: new Set() }, inFlight: false,
    epoch: 0,  // bumped by every local edit and saved answer: an older read is stale
    drawn: null,
  };
  const timings = [];  // key press -> slice painted, ms (window.pscv.timings)
  let keyStart = null;  // {z, t}
  let renderToken = 0;

  // ---------------------------------------------------------------- API
  async function api(path, options) {
    const r = await fetch(path, options);
    if (!r.ok) {
      let message = `${r.status} ${r.statusText}`;
      try { message = (await r.json()).error || message; } catch (e) { /* not JSON */ }
      throw new Error(message);
    }
    return r;
  }
  const caseUrl = (id) => `/api/cases/${encodeURIComponent(id)}`;

  // ---------------------------------------------------------------- images (decoded, least recently used out)
  const bitmaps = new Map();  // url -> Promise<ImageBitmap>
  const decoded = new Map();  // url -> ImageBitmap, once it arrived (overlays drawn without waiting)
  function sliceUrl(kind, z) {
    const base = `${caseUrl(S.caseId)}/slices/${z}/${kind}.png`;
    if (kind !== "image") return base;
    return `${base}?level=${S.wlReq.level.toPrecision(6)}&width=${S.wlReq.width.toPrecision(6)}`;
  }
  function bitmap(url) {
    if (bitmaps.has(url)) {
      const hit = bitmaps.get(url);
      bitmaps.delete(url);
      bitmaps.set(url, hit);
      return hit;
    }
    const promise = api(url).then((r) => r.blob()).then((b) => createImageBitmap(b));
    promise.then((b) => { if (bitmaps.get(url) === promise) decoded.set(url, b); }, () => bitmaps.delete(url));
    bitmaps.set(url, promise);
    while (bitmaps.size > 96) {
      const old = bitmaps.keys().next().value;
      bitmaps.delete(old);
      decoded.delete(old);
    }
    return promise;
  }
  function prefetch(z) {
    if (!PREFETCH || !S.detail) return;
    for (const dz of [1, -1, 2, -2]) {
      const n = z + dz;
      if (n < 0 || n >= S.detail.shape[0]) continue;
      bitmap(sliceUrl("image", n)).catch(() => {});
      if (S.showLabel && S.detail.labelled) bitmap(sliceUrl("label", n)).catch(() => {});
      if (S.showPred && S.detail.prediction) bitmap(sliceUrl("prediction", n)).catch(() => {});
    }
  }

  // ---------------------------------------------------------------- geometry
  const voxelToScreen = (x, y) => [S.view.panX + x * S.view.scale, S.view.panY + y * S.view.scale * S.view.aspect];
  const screenToVoxel = (sx, sy) =>
    [Math.floor((sx - S.view.panX) / S.view.scale), Math.floor((sy - S.view.panY) / (S.view.scale * S.view.aspect))];
  const inside = (x, y) => S.detail && x >= 0 && y >= 0 && x < S.detail.shape[2] && y < S.detail.shape[1];
  function fit() {
    if (!S.detail) return;
    const [, h, w] = S.detail.shape;
    const cw = canvas.clientWidth, ch = canvas.clientHeight;
    const scale = 0.96 * Math.min(cw / w, ch / (h * S.view.aspect));
    S.view.scale = scale;
    S.view.panX = (cw - w * scale) / 2;
    S.view.panY = (ch - h * scale * S.view.aspect) / 2;
    S.view.fitted = true;  // refitted when the canvas changes size, until the user zooms or pans
  }
  function zoomAt(factor, sx, sy) {
    const s = Math.min(64, Math.max(0.05, S.view.scale * factor));
    const f = s / S.view.scale;
    S.view.panX = sx - (sx - S.view.panX) * f;
    S.view.panY = sy - (sy - S.view.panY) * f;
    S.view.scale = s;
    S.view.fitted = false;
    paint();
  }
  function resize() {
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(canvas.clientWidth * dpr);
    canvas.height = Math.round(canvas.clientHeight * dpr);
    if (S.view.fitted) fit();
    paint();
  }

  // ---------------------------------------------------------------- drawing
  const color = (c) => S.info.classes[c].color;
  const pointsOn = (z) => [...S.points.values()].filter((p) => p.z === z);
  let lutCache = null;  // {bitmap, data}: the rendered slice's pixels, for the window while dragging
  function windowed(base) {
    // the slice as the server rendered it (window wlReq), re-windowed to wl here: instant feedback
    // while dragging; the exact image is fetched when the drag ends
    if (!lutCache || lutCache.bitmap !== base) {
      const off = new OffscreenCanvas(base.width, base.height);
      const octx = off.getContext("2d", { willReadFrequently: true });
      octx.drawImage(base, 0, 0);
      lutCache = { bitmap: base, data: octx.getImageData(0, 0, base.width, base.height), off, octx };
    }
    const { level: l0, width: w0 } = S.wlReq, { level: l1, width: w1 } = S.wl;
    const lut = new Uint8ClampedArray(256);
    for (let v = 0; v < 256; v++) lut[v] = ((l0 - w0 / 2 + (v * w0) / 255) - (l1 - w1 / 2)) * 255 / w1 + 0.5;
    const src = lutCache.data.data, out = new ImageData(base.width, base.height), dst = out.data;
    for (let i = 0; i < src.length; i += 4) {
      const v = lut[src[i]];
      dst[i] = dst[i + 1] = dst[i + 2] = v;
      dst[i + 3] = 255;
    }
    lutCache.octx.putImageData(out, 0, 0);
    return lutCache.off;
  }
  function paint() {
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.clientWidth, canvas.clientHeight);
    const d = S.drawn;
    if (!d || !S.detail || d.caseId !== S.caseId) return;
    ctx.save();
    ctx.translate(S.view.panX, S.view.panY);
    ctx.scale(S.view.scale, S.view.scale * S.view.aspect);
    ctx.imageSmoothingEnabled = false;
    const rewindow = S.wl.level !== S.wlReq.level || S.wl.width !== S.wlReq.width;
    ctx.drawImage(rewindow ? windowed(d.base) : d.base, 0, 0);
    ctx.globalAlpha = S.opacity;
    if (d.label && S.showLabel) ctx.drawImage(d.label, 0, 0);
    if (d.pred && S.showPred) ctx.drawImage(d.pred, 0, 0);
    ctx.restore();
    for (const p of pointsOn(d.z)) {
      const [sx, sy] = voxelToScreen(p.x + 0.5, p.y + 0.5);
      const active = p.class === S.cls;
      ctx.beginPath();
      ctx.arc(sx, sy, active ? 6 : 5, 0, 2 * Math.PI);
      ctx.fillStyle = color(p.class);
      ctx.fill();
      ctx.lineWidth = active ? 2 : 1.5;
      ctx.strokeStyle = active ? "#fff" : "#000";
      ctx.stroke();
      ctx.font = "11px system-ui, sans-serif";
      ctx.fillStyle = "#fff";
      ctx.shadowColor = "#000";
      ctx.shadowBlur = 3;
      ctx.fillText(p.class_name, sx + 8, sy - 6);
      ctx.shadowBlur = 0;
    }
  }
  async function render() {
    // the slice first; an overlay still on its way (a first prediction computes the whole case)
    // is drawn when it arrives, if the slice is still the one on screen
    if (!S.detail) return;
    const token = ++renderToken, z = S.z, caseId = S.caseId;
    const overlays = [];
    if (S.showLabel && S.detail.labelled) overlays.push(["label", sliceUrl("label", z)]);
    if (S.showPred && S.detail.prediction) overlays.push(["pred", sliceUrl("prediction", z)]);
    for (const [, url] of overlays) bitmap(url).catch(() => {});
    try {
      const base = await bitmap(sliceUrl("image", z));
      if (token !== renderToken) return;  // a newer slice was asked for meanwhile
      S.drawn = { caseId, z, base, label: null, pred: null };
      for (const [key, url] of overlays) S.drawn[key] = decoded.get(url) || null;
      $("message").textContent = "";
      paint();
      if (keyStart && keyStart.z === z) {
        const t0 = keyStart.t;
        keyStart = null;
        requestAnimationFrame(() => timings.push(performance.now() - t0));  // the frame that shows it
      }
      window.pscv.rendered = { caseId, z };
      prefetch(z);
      for (const [key, url] of overlays) {
        if (S.drawn[key]) continue;
        const img = await bitmap(url);
        if (token !== renderToken) return;
        S.drawn[key] = img;
        paint();
      }
    } catch (e) {
      if (token === renderToken) setStatus("error", `slice ${z}: ${e.message}`);
    }
  }

  // ---------------------------------------------------------------- progress and side panels
  function sliceState(z) {
    const pts = pointsOn(z);
    const present = S.detail && S.detail.present;
    if (!present) return pts.length ? "done" : "";
    const clicked = new Set(pts.map((p) => p.class));
    const needed = present[z].map((v, c) => (v ? c : -1)).filter((c) => c >= 0);
    if (needed.every((c) => clicked.has(c))) return "done";
    return pts.length ? "partial" : "";
  }
  function buildStrip() {
    const strip = $("strip");
    strip.textContent = "";
    if (!S.detail) return;
    for (let z = 0; z < S.detail.shape[0]; z++) {
      const cell = document.createElement("div");
      cell.dataset.z = z;
      cell.addEventListener("click", () => setSlice(z));
      strip.appendChild(cell);
    }
  }
  function updateStrip() {
    const cells = $("strip").children;
    for (let z = 0; z < cells.length; z++) {
      cells[z].className = [sliceState(z), z === S.z ? "current" : ""].join(" ").trim();
      cells[z].title = `slice ${z}`;
    }
  }
  function updatePalette() {
    const present = S.detail && S.detail.present ? S.detail.present[S.z] : null;
    const clicked = new Set(pointsOn(S.z).map((p) => p.class));
    for (const b of $("palette").children) {
      const c = Number(b.dataset.cls);
      b.classList.toggle("active", c === S.cls);
      b.classList.toggle("missing", Boolean(present && present[c] && !clicked.has(c)));
    }
  }
  function updateSliceList() {
    const list = $("slice-clicks");
    list.textContent = "";
    const present = S.detail && S.detail.present ? S.detail.present[S.z] : null;
    for (const cls of S.info.classes) {
      const pts = pointsOn(S.z).filter((p) => p.class === cls.index);
      const li = document.createElement("li");
      li.dataset.cls = cls.index;
      if (cls.index === S.cls) li.classList.add("active");
      const where = pts.length ? pts.map((p) => `(${p.x}, ${p.y})`).join(" ")
        : (present && present[cls.index] ? "missing" : "—");
      li.innerHTML = `<span class="swatch"></span><span class="name"></span><span class="where"></span>`;
      li.querySelector(".swatch").style.background = cls.color;
      li.querySelector(".name").textContent = `${cls.key !== null ? cls.key + " " : ""}${cls.name}`;
      const w = li.querySelector(".where");
      w.textContent = where;
      if (where === "missing") w.classList.add("missing");
      list.appendChild(li);
    }
  }
  function renderCaseList() {
    const list = $("case-list");
    list.textContent = "";
    for (const c of S.cases) {
      const li = document.createElement("li");
      li.dataset.case = c.case;
      if (c.case === S.caseId) li.classList.add("current");
      const done = c.done === null ? "…" : c.done;
      li.innerHTML = `<div class="name"><span></span><span class="muted"></span></div><div class="bar"><div></div></div>`;
      li.querySelector(".name span").textContent = c.case;
      li.querySelector(".name .muted").textContent = `${done}/${c.total} · ${c.clicks}`;
      li.title = `${c.case}: ${done} of ${c.total} slices done, ${c.clicks} clicks` + (c.labelled ? "" : " (no dense label)");
      li.querySelector(".bar div").style.width = `${c.done === null ? 0 : (100 * c.done) / c.total}%`;
      li.addEventListener("click", () => openCase(c.case, 0));
      list.appendChild(li);
    }
    const clicks = S.cases.reduce((a, c) => a + c.clicks, 0);
    const done = S.cases.reduce((a, c) => a + (c.done || 0), 0);
    const total = S.cases.reduce((a, c) => a + c.total, 0);
    $("totals").textContent = `${clicks} click${clicks === 1 ? "" : "s"} · ${done}/${total} slices done`;
  }
  function updateStatusLine() {
    if (!S.detail) return;
    const [zn] = S.detail.shape;
    $("slice-info").textContent = `${S.caseId} · slice ${S.z} of 0…${zn - 1}`;
    $("wl-info").textContent = `W ${S.wl.width.toPrecision(4)} L ${S.wl.level.toPrecision(4)}`;
    $("zoom-info").textContent = `zoom ${Math.round(S.view.scale * 100)}%`;
  }
  function refreshPanels() {
    updateStrip();
    updatePalette();
    updateSliceList();
    updateStatusLine();
  }
  function setStatus(kind, text) {
    const el = $("save-status");
    el.className = kind;
    el.textContent = text;
    el.title = text;
  }

  // ---------------------------------------------------------------- clicks: local edits, queued saves
  function adopt(answer) {
    // the server's state of the case, then the edits still waiting to be sent on top of it
    if (answer.case !== S.caseId) return;
    S.points = new Map(answer.points.map((p) => [p.id, p]));
    for (const [id, p] of S.pending.set) S.points.set(id, p);
    for (const id of S.pending.del) S.points.delete(id);
    S.revision = answer.revision;
    const entry = S.cases.find((c) => c.case === answer.case);
    if (entry) {
      entry.clicks = answer.clicks;
      entry.done = answer.progress.done;
      entry.revision = answer.revision;
      renderCaseList();
    }
    paint();
    refreshPanels();
  }
  const idle = () => !S.inFlight && S.pending.set.size === 0 && S.pending.del.size === 0;
  function edit(sets, dels) {
    S.epoch++;
    for (const p of sets) {
      S.points.set(p.id, p);
      S.pending.set.set(p.id, p);
      S.pending.del.delete(p.id);
    }
    for (const id of dels) {
      S.points.delete(id);
      S.pending.set.delete(id);
      S.pending.del.add(id);
    }
    paint();
    refreshPanels();
    flush();
  }
  async function flush() {
    if (S.inFlight || (S.pending.set.size === 0 && S.pending.del.size === 0)) return;
    const caseId = S.caseId;
    const body = {
      set: [...S.pending.set.values()].map((p) => ({ id: p.id, class: p.class, z: p.z, y: p.y, x: p.x })),
      delete: [...S.pending.del],
    };
    S.pending = { set: new Map(), del: new Set() };
    S.inFlight = true;
    setStatus("busy", "saving…");
    try {
      const r = await api(`${caseUrl(caseId)}/clicks`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      const answer = await r.json();
      S.inFlight = false;
      S.epoch++;
      if (caseId === S.caseId) adopt(answer);
      setStatus("ok", `saved · ${answer.clicks} clicks in ${answer.file}`);
    } catch (e) {
      S.inFlight = false;
      setStatus("error", `not saved: ${e.message}`);
      await reloadClicks(true);
    }
    flush();
  }
  async function reloadClicks(force) {
    if (!S.caseId) return;
    const epoch = S.epoch, caseId = S.caseId;
    try {
      const answer = await (await api(`${caseUrl(caseId)}/clicks`)).json();
      // stale: an edit or a save happened since this read started, or it is the state we have
      if (S.inFlight || epoch !== S.epoch || caseId !== S.caseId || (answer.revision === S.revision && !force)) return;
      adopt(answer);
    } catch (e) {
      setStatus("error", e.message);
    }
  }
  function placeAt(sx, sy) {
    const [x, y] = screenToVoxel(sx, sy);
    if (!inside(x, y)) {
      setStatus("error", "outside the image: nothing placed");
      return;
    }
    const same = pointsOn(S.z).filter((p) => p.class === S.cls);
    // one point per class per slice: its slot id, or the point of that class already here (moved)
    const id = same.length ? same[0].id : `c${S.cls}z${S.z}`;
    const cls = S.info.classes[S.cls];
    edit([{ id, class: S.cls, class_name: cls.name, z: S.z, y, x }], []);
  }
  function deleteAt(sx, sy) {
    let best = null, bestD = 12;
    for (const p of pointsOn(S.z)) {
      const [px, py] = voxelToScreen(p.x + 0.5, p.y + 0.5);
      const d = Math.hypot(px - sx, py - sy);
      if (d <= bestD) { best = p; bestD = d; }
    }
    if (best) edit([], [best.id]);
  }
  function deleteActive() {
    const ids = pointsOn(S.z).filter((p) => p.class === S.cls).map((p) => p.id);
    if (ids.length) edit([], ids);
  }

  // ---------------------------------------------------------------- navigation
  function setHash() {
    history.replaceState(null, "", `#case=${encodeURIComponent(S.caseId)}&z=${S.z}`);
  }
  function setSlice(z, start) {
    if (!S.detail) return;
    z = Math.max(0, Math.min(S.detail.shape[0] - 1, z));
    if (z === S.z) return;
    S.z = z;
    keyStart = start === undefined ? null : { z, t: start };
    setHash();
    refreshPanels();
    render();
  }
  function nextUndone(step) {
    const n = S.detail.shape[0];
    for (let i = 1; i <= n; i++) {
      const z = (S.z + step * i + n * n) % n;
      if (sliceState(z) !== "done") return setSlice(z);
    }
    setStatus("ok", "every slice of this case is done");
  }
  async function waitIdle(ms) {
    for (const until = performance.now() + ms; !idle() && performance.now() < until;) {
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  async function openCase(id, z) {
    try {
      await waitIdle(10000);  // the edits of the case on screen are saved before another opens
      const detail = await (await api(caseUrl(id))).json();
      S.caseId = id;
      S.detail = detail;
      S.z = Math.max(0, Math.min(detail.shape[0] - 1, z || 0));
      S.wl = { level: detail.level, width: detail.width };
      S.wlReq = { ...S.wl };
      const sp = detail.spacing;  // (dz, dy, dx): a row is dy/dx columns tall
      S.view.aspect = sp && sp[2] > 0 ? sp[1] / sp[2] : 1;
      S.points = new Map();
      S.pending = { set: new Map(), del: new Set() };
      S.revision = -1;
      S.drawn = null;
      lutCache = null;
      $("show-label").disabled = !detail.labelled;
      $("show-pred").disabled = !detail.prediction;
      $("clicks-file").textContent = `${S.info.clicks_dir}/${detail.file}`;
      fit();
      buildStrip();
      renderCaseList();
      setHash();
      await reloadClicks(true);
      await render();
      window.pscv.ready = true;
    } catch (e) {
      $("message").textContent = `${id}: ${e.message}`;
      setStatus("error", e.message);
    }
  }
  function stepCase(step) {
    const i = S.cases.findIndex((c) => c.case === S.caseId);
    const next = S.cases[i + step];
    if (next) openCase(next.case, 0);
  }
  async function loadCases() {
    try {
      S.cases = (await (await api("/api/cases")).json()).cases;
      renderCaseList();
    } catch (e) { /* the next poll tries again */ }
  }

  // ---------------------------------------------------------------- input
  let drag = null;
  canvas.addEventListener("mousedown", (e) => {
    const pan = e.button === 1 || (e.button === 0 && e.shiftKey);
    if (e.button !== 0 && !pan) return;
    e.preventDefault();
    drag = { x: e.offsetX, y: e.offsetY, moved: false, mode: pan ? "pan" : "window",
             panX: S.view.panX, panY: S.view.panY, level: S.wl.level, width: S.wl.width };
  });
  window.addEventListener("mousemove", (e) => {
    const rect = canvas.getBoundingClientRect();
    const sx = e.clientX - rect.left, sy = e.clientY - rect.top;
    if (S.detail) {
      const [x, y] = screenToVoxel(sx, sy);
      $("cursor-info").textContent = inside(x, y) ? `(i, j, k) = (${x}, ${y}, ${S.z})` : "";
    }
    if (!drag) return;
    const dx = sx - drag.x, dy = sy - drag.y;
    if (!drag.moved && Math.abs(dx) + Math.abs(dy) < 4) return;
    drag.moved = true;
    if (drag.mode === "pan") {
      S.view.panX = drag.panX + dx;
      S.view.panY = drag.panY + dy;
      S.view.fitted = false;
    } else if (S.detail) {
      const k = Math.max(S.detail.max - S.detail.min, 1e-6) / 600;
      S.wl = { width: Math.max(k, drag.width + dx * k), level: drag.level - dy * k };
      updateStatusLine();
    }
    paint();
  });
  window.addEventListener("mouseup", (e) => {
    if (!drag) return;
    const d = drag;
    drag = null;
    const rect = canvas.getBoundingClientRect();
    if (!d.moved && d.mode === "window" && e.button === 0) placeAt(e.clientX - rect.left, e.clientY - rect.top);
    else if (d.moved && d.mode === "window") {
      S.wlReq = { ...S.wl };  // the exact image at the new window, from the server
      render();
    }
  });
  canvas.addEventListener("contextmenu", (e) => {
    e.preventDefault();
    deleteAt(e.offsetX, e.offsetY);
  });
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    if (e.ctrlKey) zoomAt(Math.exp(-e.deltaY / 300), e.offsetX, e.offsetY);
    else setSlice(S.z + Math.sign(e.deltaY), e.timeStamp);
  }, { passive: false });
  document.addEventListener("keydown", (e) => {
    if (!S.detail || e.altKey || e.metaKey) return;
    if (e.target instanceof HTMLInputElement && e.target.type === "range") return;
    const k = e.key;
    let handled = true;
    if (/^[0-9]$/.test(k) && !e.ctrlKey) {
      const c = Number(k);
      if (c < S.info.classes.length) { S.cls = c; paint(); refreshPanels(); }
    } else if (k === "ArrowDown" || k === "ArrowRight") setSlice(S.z + 1, e.timeStamp);
    else if (k === "ArrowUp" || k === "ArrowLeft") setSlice(S.z - 1, e.timeStamp);
    else if (k === "PageDown") setSlice(S.z + 10, e.timeStamp);
    else if (k === "PageUp") setSlice(S.z - 10, e.timeStamp);
    else if (k === "Home") setSlice(0, e.timeStamp);
    else if (k === "End") setSlice(S.detail.shape[0] - 1, e.timeStamp);
    else if (k === "Delete" || k === "Backspace") deleteActive();
    else if (k === "n" || k === "N") nextUndone(e.shiftKey ? -1 : 1);
    else if (k === "l" || k === "L") toggle("show-label");
    else if (k === "p" || k === "P") toggle("show-pred");
    else if (k === "r" || k === "R") { S.wl = { level: S.detail.level, width: S.detail.width }; S.wlReq = { ...S.wl }; render(); updateStatusLine(); }
    else if (k === "f" || k === "F") { fit(); paint(); updateStatusLine(); }
    else if (k === "+" || k === "=") { zoomAt(1.25, canvas.clientWidth / 2, canvas.clientHeight / 2); updateStatusLine(); }
    else if (k === "-" || k === "_") { zoomAt(0.8, canvas.clientWidth / 2, canvas.clientHeight / 2); updateStatusLine(); }
    else if (k === "[") stepCase(-1);
    else if (k === "]") stepCase(1);
    else handled = false;
    if (handled) e.preventDefault();
  });
  function toggle(id) {
    const box = $(id);
    if (box.disabled) return;
    box.checked = !box.checked;
    box.dispatchEvent(new Event("change"));
  }
  $("show-label").addEventListener("change", (e) => { S.showLabel = e.target.checked; e.target.blur(); render(); });
  $("show-pred").addEventListener("change", (e) => { S.showPred = e.target.checked; e.target.blur(); render(); });
  $("opacity").addEventListener("input", (e) => { S.opacity = Number(e.target.value) / 100; paint(); });
  new ResizeObserver(() => resize()).observe(canvas);  // the window, or the panels around the canvas

  // ---------------------------------------------------------------- start
  async function start() {
    S.info = await (await api("/api/info")).json();
    $("source").textContent = `${S.info.source} (${S.info.kind})` + (S.info.model ? ` · overlay: ${S.info.model}` : "");
    const palette = $("palette");
    for (const c of S.info.classes) {
      const b = document.createElement("button");
      b.dataset.cls = c.index;
      b.title = `class ${c.index}: ${c.name}` + (c.key !== null ? ` (key ${c.key})` : "");
      b.innerHTML = `<span class="swatch"></span><span></span>`;
      b.querySelector(".swatch").style.background = c.color;
      b.lastChild.textContent = c.key !== null ? `${c.key} ${c.name}` : c.name;
      b.addEventListener("click", () => { S.cls = c.index; b.blur(); paint(); refreshPanels(); });
      palette.appendChild(b);
    }
    S.cls = S.info.classes.length > 1 ? 1 : 0;
    resize();
    await loadCases();
    const hash = new URLSearchParams(location.hash.slice(1));
    const wanted = hash.get("case");
    const first = S.cases.find((c) => c.case === wanted) || S.cases[0];
    if (first) await openCase(first.case, Number(hash.get("z")) || 0);
    else $("message").textContent = "no cases";
    window.addEventListener("hashchange", () => {  // a link or a typed #case=...&z=...
      const h = new URLSearchParams(location.hash.slice(1));
      const z = Number(h.get("z")) || 0;
      if (h.get("case") && h.get("case") !== S.caseId) openCase(h.get("case"), z);
      else setSlice(z);
    });
    // other tabs (and Slicer) may change the clicks: follow them while nothing of ours is unsaved
    setInterval(() => { if (document.visibilityState === "visible" && idle()) reloadClicks(); }, 2000);
    setInterval(() => { if (document.visibilityState === "visible") loadCases(); }, 5000);
  }

  window.pscv = {
    state: S, timings, ready: false, rendered: null, idle,
    voxelToScreen, screenToVoxel,
  };
  start().catch((e) => { $("message").textContent = e.message; setStatus("error", e.message); });
})();
