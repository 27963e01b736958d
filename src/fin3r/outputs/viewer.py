"""The before/after viewer: one self-contained HTML page (no server, no internet, no CDN) showing the
point clouds and cameras of two or more models on the same images, toggled or side by side, with
each view's image and depth maps beside them.

Why a single HTML file rather than a viser server: the page is a file that can be attached to an
issue, put next to a report, opened from a laptop after ``scp``, and tested in a headless browser
without ports or a running Python process; its WebGL renderer (below, ~150 lines of JavaScript
written for this page) draws a few hundred thousand points at interactive rates.

Frame: every scene is drawn in its :class:`~fin3r.outputs.scene.Scene` world (view 0's OpenCV
camera frame); the page's initial view orbits the median point, looking roughly along view 0's
optical axis, image-up up. Depth maps
are inverse depth (disparity) with the turbo colour map, on **one range per view shared by all
models**, so colour differences between models are depth differences.

Opened with ``#side`` in the URL the page starts side by side. Test hook: opened with ``#selftest`` in the URL, the page renders each model once in toggle mode and
writes ``{"labels": [...], "shots": [PNG data URL, ...]}`` into ``<pre id="fin3r-selftest">``
(``chromium --headless --dump-dom`` reads it).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fin3r.errors import InputError

#: points per model drawn at most (a seeded random subset beyond)
MAX_POINTS = 200_000


@dataclass
class ViewerScene:
    """One scene of the page: ``models`` maps a label (``"base"``, ``"Fin3R"``...) to the
    :class:`~fin3r.outputs.scene.Scene` that model predicted for the same images."""

    name: str
    models: dict


def _png_data_url(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def depth_pictures(depths: Sequence[np.ndarray | None]) -> list[str | None]:
    """Turbo-coloured inverse depth of the same view from several models, normalised to one range
    (2-98 % of all their valid values) so the pictures compare; PNG data URLs (``None`` where a
    model has no depth for the view)."""
    from fin3r.colormap import colorize

    disp, valid = [], []
    for d in depths:
        if d is None:
            disp.append(None), valid.append(None)
            continue
        d = np.asarray(d, dtype=np.float64)
        ok = np.isfinite(d) & (d > 0)
        disp.append(np.where(ok, 1.0 / np.where(ok, d, 1.0), np.nan)), valid.append(ok)
    pooled = [x[v] for x, v in zip(disp, valid) if x is not None and v.any()]
    if not pooled:
        return [None] * len(depths)
    lo, hi = np.percentile(np.concatenate(pooled), [2, 98])
    return [None if x is None else _png_data_url(colorize(x, v, value_range=(lo, hi))) for x, v in zip(disp, valid)]


def _scene_payload(vs: ViewerScene, max_points: int, seed: int) -> dict:
    from fin3r.outputs.glb import CAMERA_COLORS
    from fin3r.outputs.scene import drawable_frusta, frustum_depth

    if not vs.models:
        raise InputError(f"viewer scene {vs.name!r} has no models")
    first = next(iter(vs.models.values()))
    n_views = len(first.names)
    for label, scene in vs.models.items():
        if len(scene.names) != n_views:
            raise InputError(f"viewer scene {vs.name!r}: model {label!r} has {len(scene.names)} views, not {n_views}")
    models = {}
    frame_depth = frustum_depth(first)
    for label, scene in vs.models.items():
        finite = np.nonzero(np.isfinite(scene.points).all(axis=1))[0]
        n = len(finite)
        pick = finite if n <= max_points else finite[np.sort(np.random.default_rng(seed).choice(n, max_points, False))]
        frusta = [{"corners": corners.reshape(-1).round(6).tolist(), "color": CAMERA_COLORS[i % len(CAMERA_COLORS)],
                   "name": cam.name} for i, cam, corners in drawable_frusta(scene, frame_depth)]
        models[label] = {"n": int(len(pick)), "total": int(n), "conf_cut": scene.conf_cut,
                         "pos": _b64(scene.points[pick].astype("<f4")), "col": _b64(scene.colors[pick].astype(np.uint8)),
                         "frusta": frusta}
    views = []
    for i in range(n_views):
        pics = depth_pictures([scene.depths[i] for scene in vs.models.values()])
        views.append({"name": first.names[i], "image": _png_data_url(first.images[i]),
                      "depth": dict(zip(vs.models, pics))})
    # the initial view: orbiting the median of the first model's points, from about view 0's side
    pts = first.points[np.isfinite(first.points).all(axis=1)].astype(np.float64)
    target = np.median(pts, axis=0) if len(pts) else np.array([0.0, 0.0, 1.0])
    radius = float(np.linalg.norm(np.percentile(pts, 95, axis=0) - np.percentile(pts, 5, axis=0))) if len(pts) else 1.0
    return {"name": vs.name, "views": views, "models": models, "target": target.round(6).tolist(),
            "dist": max(radius, 1e-6) * 1.8}


def viewer_html(scenes: Sequence[ViewerScene], title: str = "fin3r: before / after", note: str = "",
                max_points: int = MAX_POINTS, seed: int = 0) -> str:
    """The page for ``scenes`` (all with the same model labels, the first being the reference,
    e.g. ``base``); ``note`` is a line of text under the title (what the models are)."""
    if not scenes:
        raise InputError("viewer: no scenes")
    labels = list(scenes[0].models)
    for s in scenes:
        if list(s.models) != labels:
            raise InputError(f"viewer: scene {s.name!r} has models {list(s.models)}, the first has {labels}")
    payload = {"title": title, "note": note, "labels": labels,
               "scenes": [_scene_payload(s, max_points, seed) for s in scenes]}
    data = json.dumps(payload, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    return (_PAGE.replace("__TITLE__", _html_escape(title)).replace("__DATA__", data))


def write_viewer(path: str | Path, scenes: Sequence[ViewerScene], **kw) -> Path:
    """Write :func:`viewer_html` to ``path`` (atomically)."""
    from fin3r.io import write_text_atomic

    return write_text_atomic(path, viewer_html(scenes, **kw))


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
html,body{margin:0;height:100%;overflow:hidden;background:#1e2024;color:#e8e8e8;font:14px/1.35 system-ui,sans-serif}
body{display:flex;flex-direction:column}
#bar{display:flex;flex-wrap:wrap;gap:10px;align-items:center;padding:8px 12px;background:#2a2d33}
#bar h1{font-size:16px;margin:0 12px 0 0}
#bar button{background:#3a3e46;color:#eee;border:1px solid #555;border-radius:4px;padding:3px 10px;cursor:pointer}
#bar button.on{background:#4a7bd0;border-color:#6b9cf0}
#note{padding:2px 12px 6px;background:#2a2d33;color:#aab;font-size:12px}
#main{display:flex;flex:1 1 auto;min-height:0}
#stage{position:relative;flex:1 1 auto;min-width:0}
#gl{width:100%;height:100%;display:block;cursor:grab}
.lab{position:absolute;top:8px;padding:2px 8px;background:rgba(0,0,0,.55);border-radius:4px;font-weight:600}
#side{flex:0 0 400px;overflow-y:auto;padding:8px;background:#25282d}
#side table{border-collapse:collapse;width:100%;table-layout:fixed}
#side td,#side th{padding:2px;text-align:center;font-size:12px;font-weight:500}
#side img{width:100%;display:block;image-rendering:pixelated}
#help{color:#99a;font-size:12px}
</style></head><body>
<div id="bar"><h1>__TITLE__</h1><span id="scenes"></span>
<span><button id="m-toggle" class="on">toggle</button><button id="m-side">side by side</button></span>
<span id="models"></span>
<label>point size <input id="psize" type="range" min="1" max="8" step="0.5" value="2.5"></label>
<span id="help">drag: rotate &middot; shift/right-drag: pan &middot; wheel: zoom &middot; space: next model &middot; r: reset</span></div>
<div id="note"></div>
<div id="main"><div id="stage"><canvas id="gl"></canvas></div><div id="side"></div></div>
<pre id="fin3r-selftest" style="display:none"></pre>
<script type="application/json" id="fin3r-data">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("fin3r-data").textContent);
const canvas = document.getElementById("gl");
const gl = canvas.getContext("webgl", {preserveDrawingBuffer: true, antialias: true});
const st = {scene: 0, model: 0, side: false, psize: 2.5, yaw: 0.35, pitch: 0.25, dist: 1, target: [0, 0, 1]};
document.getElementById("note").textContent = D.note || "";

// --- small matrix helpers (column-major, as WebGL wants) ---
function persp(fy, a, n, f) { const t = 1 / Math.tan(fy / 2);
  return [t / a, 0, 0, 0, 0, t, 0, 0, 0, 0, (f + n) / (n - f), -1, 0, 0, 2 * f * n / (n - f), 0]; }
function sub(a, b) { return [a[0] - b[0], a[1] - b[1], a[2] - b[2]]; }
function cross(a, b) { return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]; }
function norm(a) { const l = Math.hypot(a[0], a[1], a[2]) || 1; return [a[0] / l, a[1] / l, a[2] / l]; }
function dot(a, b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }
function lookAt(e, c, up) { const z = norm(sub(e, c)), x = norm(cross(up, z)), y = cross(z, x);
  return [x[0], y[0], z[0], 0, x[1], y[1], z[1], 0, x[2], y[2], z[2], 0, -dot(x, e), -dot(y, e), -dot(z, e), 1]; }
function mul(a, b) { const o = new Array(16).fill(0);
  for (let c = 0; c < 4; c++) for (let r = 0; r < 4; r++) for (let k = 0; k < 4; k++) o[c * 4 + r] += a[k * 4 + r] * b[c * 4 + k];
  return o; }
function forward() { return [Math.cos(st.pitch) * Math.sin(st.yaw), Math.sin(st.pitch), Math.cos(st.pitch) * Math.cos(st.yaw)]; }

// --- the one shader: coloured points and lines ---
function shader(type, src) { const s = gl.createShader(type); gl.shaderSource(s, src); gl.compileShader(s);
  if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s)); return s; }
let prog = null;
if (gl) {
  prog = gl.createProgram();
  gl.attachShader(prog, shader(gl.VERTEX_SHADER, "attribute vec3 p; attribute vec3 c; uniform mat4 m; uniform float s;" +
    "varying vec3 v; void main(){ gl_Position = m * vec4(p, 1.0); gl_PointSize = s; v = c; }"));
  gl.attachShader(prog, shader(gl.FRAGMENT_SHADER, "precision mediump float; varying vec3 v;" +
    "void main(){ gl_FragColor = vec4(v, 1.0); }"));
  gl.linkProgram(prog);
}
function bytes(b64) { const s = atob(b64), u = new Uint8Array(s.length); for (let i = 0; i < s.length; i++) u[i] = s.charCodeAt(i); return u; }
function buffer(data) { const b = gl.createBuffer(); gl.bindBuffer(gl.ARRAY_BUFFER, b); gl.bufferData(gl.ARRAY_BUFFER, data, gl.STATIC_DRAW); return b; }
const EDGES = [0, 1, 0, 2, 0, 3, 0, 4, 1, 2, 2, 3, 3, 4, 4, 1];
const cache = {};
function geometry(si, label) {
  const key = si + "/" + label; if (cache[key]) return cache[key];
  const m = D.scenes[si].models[label];
  const pos = new Float32Array(bytes(m.pos).buffer), col = bytes(m.col);
  const lp = [], lc = [];
  for (const f of m.frusta) for (const e of EDGES) { lp.push(f.corners[3 * e], f.corners[3 * e + 1], f.corners[3 * e + 2]);
    lc.push(f.color[0], f.color[1], f.color[2]); }
  cache[key] = {n: m.n, pos: buffer(pos), col: buffer(col), nl: lp.length / 3,
                lpos: buffer(new Float32Array(lp)), lcol: buffer(new Uint8Array(lc))};
  return cache[key];
}
function bind(posBuf, colBuf) {
  const p = gl.getAttribLocation(prog, "p"), c = gl.getAttribLocation(prog, "c");
  gl.bindBuffer(gl.ARRAY_BUFFER, posBuf); gl.enableVertexAttribArray(p); gl.vertexAttribPointer(p, 3, gl.FLOAT, false, 0, 0);
  gl.bindBuffer(gl.ARRAY_BUFFER, colBuf); gl.enableVertexAttribArray(c); gl.vertexAttribPointer(c, 3, gl.UNSIGNED_BYTE, true, 0, 0);
}
function drawModel(label, x, w, h) {
  const g = geometry(st.scene, label);
  gl.viewport(x, 0, w, h); gl.scissor(x, 0, w, h);
  gl.clearColor(0.118, 0.125, 0.141, 1); gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
  const f = forward(), eye = [st.target[0] - st.dist * f[0], st.target[1] - st.dist * f[1], st.target[2] - st.dist * f[2]];
  const mvp = mul(persp(0.9, w / Math.max(h, 1), st.dist * 0.01, st.dist * 100), lookAt(eye, st.target, [0, -1, 0]));
  gl.useProgram(prog);
  gl.uniformMatrix4fv(gl.getUniformLocation(prog, "m"), false, new Float32Array(mvp));
  gl.uniform1f(gl.getUniformLocation(prog, "s"), st.psize * (window.devicePixelRatio || 1));
  if (g.n) { bind(g.pos, g.col); gl.drawArrays(gl.POINTS, 0, g.n); }
  if (g.nl) { bind(g.lpos, g.lcol); gl.drawArrays(gl.LINES, 0, g.nl); }
}
function labelsOverlay(shown) {
  document.querySelectorAll(".lab").forEach(e => e.remove());
  const stage = document.getElementById("stage");
  shown.forEach((l, i) => { const d = document.createElement("div"); d.className = "lab"; d.textContent = l;
    d.style.left = (8 + i * stage.clientWidth / shown.length) + "px"; stage.appendChild(d); });
}
function render() {
  const dpr = window.devicePixelRatio || 1, W = Math.round(canvas.clientWidth * dpr), H = Math.round(canvas.clientHeight * dpr);
  if (canvas.width !== W || canvas.height !== H) { canvas.width = W; canvas.height = H; }
  if (!gl) return;
  gl.enable(gl.DEPTH_TEST); gl.enable(gl.SCISSOR_TEST);
  const shown = st.side ? D.labels : [D.labels[st.model]];
  const w = Math.floor(W / shown.length);
  shown.forEach((l, i) => drawModel(l, i * w, w, H));
  labelsOverlay(shown);
}
let pending = false;
function redraw() { if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; render(); }); } }

// --- the side panel: each view's image and every model's depth, one colour range per view ---
function side() {
  const sc = D.scenes[st.scene];
  let h = "<table><tr><th>image</th>" + D.labels.map(l => "<th>" + esc(l) + " depth</th>").join("") + "</tr>";
  for (const v of sc.views) {
    h += "<tr><td><img src='" + v.image + "' title='" + esc(v.name) + "'></td>" +
      D.labels.map(l => "<td>" + (v.depth[l] ? "<img src='" + v.depth[l] + "'>" : "&ndash;") + "</td>").join("") + "</tr>";
  }
  const counts = D.labels.map(l => { const m = sc.models[l]; return esc(l) + ": " + m.n + (m.total > m.n ? " of " + m.total : "") + " points"; });
  document.getElementById("side").innerHTML = h + "</table><p>" + counts.join("<br>") + "</p>";
}
function esc(s) { return String(s).replace(/[&<>'"]/g, c => "&#" + c.charCodeAt(0) + ";"); }
function resetView() { const sc = D.scenes[st.scene]; st.target = sc.target.slice(); st.dist = sc.dist; st.yaw = 0.35; st.pitch = 0.25; }
function buttons() {
  const s = document.getElementById("scenes");
  if (D.scenes.length > 1) {
    s.innerHTML = "<select id='scene-sel'>" + D.scenes.map((x, i) => "<option value='" + i + "'>" + esc(x.name) + "</option>").join("") + "</select>";
    document.getElementById("scene-sel").onchange = e => { st.scene = +e.target.value; resetView(); side(); redraw(); };
  } else s.textContent = D.scenes[0].name;
  const m = document.getElementById("models");
  m.innerHTML = D.labels.map((l, i) => "<button data-i='" + i + "'>" + esc(l) + "</button>").join("");
  m.querySelectorAll("button").forEach(b => b.onclick = () => { st.model = +b.dataset.i; st.side = false; sync(); });
  document.getElementById("m-toggle").onclick = () => { st.side = false; sync(); };
  document.getElementById("m-side").onclick = () => { st.side = true; sync(); };
  document.getElementById("psize").oninput = e => { st.psize = +e.target.value; redraw(); };
}
function sync() {
  document.getElementById("m-toggle").classList.toggle("on", !st.side);
  document.getElementById("m-side").classList.toggle("on", st.side);
  document.querySelectorAll("#models button").forEach(b => b.classList.toggle("on", !st.side && +b.dataset.i === st.model));
  redraw();
}
// --- orbit controls ---
let drag = null;
canvas.addEventListener("contextmenu", e => e.preventDefault());
canvas.addEventListener("mousedown", e => { drag = {x: e.clientX, y: e.clientY, pan: e.shiftKey || e.button === 2}; });
window.addEventListener("mouseup", () => { drag = null; });
window.addEventListener("mousemove", e => {
  if (!drag) return; const dx = e.clientX - drag.x, dy = e.clientY - drag.y; drag.x = e.clientX; drag.y = e.clientY;
  if (drag.pan) { const f = forward(), r = norm(cross(f, [0, -1, 0])), u = cross(r, f), k = st.dist * 0.002;
    for (let i = 0; i < 3; i++) st.target[i] += (-dx * r[i] + dy * u[i]) * k; }
  else { st.yaw += dx * 0.005; st.pitch = Math.max(-1.5, Math.min(1.5, st.pitch + dy * 0.005)); }
  redraw(); });
canvas.addEventListener("wheel", e => { e.preventDefault(); st.dist *= Math.exp(e.deltaY * 0.001); redraw(); }, {passive: false});
window.addEventListener("keydown", e => {
  if (e.key === " ") { e.preventDefault(); st.model = (st.model + 1) % D.labels.length; st.side = false; sync(); }
  if (e.key === "r") { resetView(); redraw(); } });
window.addEventListener("resize", redraw);

if (location.hash.indexOf("side") >= 0) st.side = true;
buttons(); resetView(); side(); sync();
if (!gl) document.getElementById("stage").innerHTML = "<p style='padding:20px'>WebGL is not available in this browser.</p>";
if (location.hash.indexOf("selftest") >= 0) {
  const shots = [];
  for (let i = 0; i < D.labels.length; i++) { st.model = i; st.side = false; render(); shots.push(gl ? canvas.toDataURL("image/png") : ""); }
  st.model = 0; render();
  document.getElementById("fin3r-selftest").textContent = JSON.stringify({labels: D.labels, shots: shots, webgl: !!gl});
}
</script></body></html>
"""

__all__ = ["MAX_POINTS", "ViewerScene", "depth_pictures", "viewer_html", "write_viewer"]
