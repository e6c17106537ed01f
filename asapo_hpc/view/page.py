"""The view's one page: HTML, CSS and JavaScript inline (no CDN, works offline)."""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asapo_hpc.view.server import ViewServer

_CSS = """
body { margin: 0; font: 14px system-ui, sans-serif; background: #15171a; color: #ddd; }
header { padding: 8px 14px; background: #22262b; display: flex; gap: 24px;
         align-items: baseline; flex-wrap: wrap; }
header h1 { font-size: 16px; margin: 0; color: #fff; }
.num { font-variant-numeric: tabular-nums; color: #fff; font-weight: 600; }
main { display: flex; gap: 14px; padding: 14px; flex-wrap: wrap; }
section { background: #1d2024; border-radius: 6px; padding: 10px; flex: 1 1 480px; }
section h2 { font-size: 14px; margin: 0 0 8px; color: #aaa; font-weight: 500; }
#frame { display: block; width: 100%; max-height: 75vh; object-fit: contain;
         image-rendering: pixelated;
         background: #282828; min-height: 64px; }
#profile { width: 100%; height: 420px; display: block; background: #fff; }
.err { color: #ff8a80; white-space: pre-wrap; }
.dim { color: #888; }
"""

_BODY = """
<header>
  <h1>asapo-hpc view</h1>
  <span>beamtime <span class="num" id="beamtime">__BEAMTIME__</span></span>
  <span>raw <span class="num">__RAW__</span>: frame id <span class="num" id="frame-id">-</span>,
    <span class="num" id="frame-rate">-</span> frames/s</span>
  <span id="processed-head">profile id <span class="num" id="profile-id">-</span>,
    <span class="num" id="profile-rate">-</span> /s</span>
  <span class="dim" id="conn">connecting</span>
</header>
<main>
  <section>
    <h2>latest raw frame <span class="dim" id="frame-info"></span></h2>
    <img id="frame" alt="latest raw frame">
    <div class="err" id="frame-error"></div>
  </section>
  <section id="profile-section">
    <h2>latest integrated profile <span class="dim" id="profile-info"></span>
      <label class="dim"><input type="checkbox" id="logy"> log I</label></h2>
    <canvas id="profile" width="800" height="420"></canvas>
    <div class="err" id="profile-error"></div>
  </section>
</main>
"""

_JS = r"""
const CFG = __CONFIG__;
const $ = (id) => document.getElementById(id);
let shownFrame = null, frameBusy = false, shownProfile = null, profileBusy = false;
let lastProfile = null;

function fmtRate(r) { return (r === null || r === undefined) ? '-' : r.toFixed(1); }
function text(id, v) { const e = $(id); if (e.textContent !== String(v)) e.textContent = v; }

async function tick() {
  try {
    const s = await (await fetch('status.json', {cache: 'no-store'})).json();
    showRaw(s.raw);
    if (s.processed) showProcessed(s.processed);
    text('conn', 'live');
  } catch (e) {
    text('conn', 'server unreachable');
  }
  setTimeout(tick, document.hidden ? 1000 : CFG.poll_ms);
}

function showRaw(r) {
  text('frame-rate', fmtRate(r.rate_hz));
  const shape = r.shape ? r.shape.join('\u00d7') + ' ' + r.dtype : '';
  const age = (r.age_s === undefined) ? '' : ', ' + r.age_s.toFixed(1) + ' s old';
  // a whole frame assembled from its parts, or (no dataset) one message
  const part = r.parts ? ', ' + r.parts[0] + ' of ' + r.parts[1] + ' parts'
    : (r.dataset ? ', part ' + r.dataset[0] + ' of ' + r.dataset[1] : '');
  const geometry = r.geometry ? ', ' + r.geometry : '';
  text('frame-info', r.id === null ? '' : '(' + shape + part + geometry + age + ')');
  text('frame-error', r.frame_error || r.error || (r.id === null ? 'no frame yet' : ''));
  if (r.id !== null && r.id !== shownFrame && !frameBusy && !r.frame_error) loadFrame();
}

async function loadFrame() {
  frameBusy = true;
  try {
    const resp = await fetch('frame.png?t=' + Date.now(), {cache: 'no-store'});
    if (resp.ok) {
      const id = Number(resp.headers.get('X-Frame-Id'));
      const url = URL.createObjectURL(await resp.blob());
      const img = $('frame');
      img.onload = () => {
        URL.revokeObjectURL(url);
        shownFrame = id;
        text('frame-id', id);
        document.body.dataset.frameId = id;
        document.body.dataset.frameSize = img.naturalHeight + 'x' + img.naturalWidth;
      };
      img.src = url;
    }
  } finally {
    frameBusy = false;
  }
}

function showProcessed(p) {
  text('profile-rate', fmtRate(p.rate_hz));
  text('profile-error', p.error || (p.id === null ? 'no profile yet' : ''));
  if (p.id !== null && p.id !== shownProfile && !profileBusy) loadProfile();
}

async function loadProfile() {
  profileBusy = true;
  try {
    const resp = await fetch('profile.json?t=' + Date.now(), {cache: 'no-store'});
    const prof = await resp.json();
    if (prof.error) { text('profile-error', prof.error); return; }
    lastProfile = prof;
    shownProfile = prof.id;
    drawProfile(prof);
    text('profile-id', prof.id);
    text('profile-info', '(' + prof.npt + ' points)');
    document.body.dataset.profileId = prof.id;
  } finally {
    profileBusy = false;
  }
}

function niceTicks(lo, hi, n) {
  const span = hi - lo || 1, raw = span / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => span / s <= n) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(v);
  return out;
}

function fmtTick(v) {
  const a = Math.abs(v);
  return (a !== 0 && (a >= 1e5 || a < 1e-3)) ? v.toExponential(1) : String(+v.toPrecision(4));
}

function drawProfile(prof) {
  const c = $('profile'), ctx = c.getContext('2d');
  const W = c.width = c.clientWidth || 800, H = c.height = c.clientHeight || 420;
  const L = 70, R = 16, T = 12, B = 46;
  const logy = $('logy').checked;
  const ys = (v) => (v === null ? null : (logy ? (v > 0 ? Math.log10(v) : null) : v));
  const pts = [];
  prof.radial.forEach((x, i) => {
    const y = ys(prof.intensity[i]);
    if (x !== null && y !== null) pts.push([x, y]);
  });
  ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, W, H);
  if (pts.length === 0) return;
  let x0 = Math.min(...pts.map((p) => p[0])), x1 = Math.max(...pts.map((p) => p[0]));
  let y0 = Math.min(...pts.map((p) => p[1])), y1 = Math.max(...pts.map((p) => p[1]));
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) y1 = y0 + 1;
  const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
  const px = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
  const py = (y) => H - B - (y - y0) / (y1 - y0) * (H - T - B);
  ctx.strokeStyle = '#ddd'; ctx.fillStyle = '#333'; ctx.font = '12px sans-serif';
  ctx.textAlign = 'center';
  for (const v of niceTicks(x0, x1, 8)) {
    ctx.beginPath(); ctx.moveTo(px(v), T); ctx.lineTo(px(v), H - B); ctx.stroke();
    ctx.fillText(fmtTick(v), px(v), H - B + 16);
  }
  ctx.textAlign = 'right';
  for (const v of niceTicks(y0, y1, 6)) {
    ctx.beginPath(); ctx.moveTo(L, py(v)); ctx.lineTo(W - R, py(v)); ctx.stroke();
    ctx.fillText(logy ? '1e' + fmtTick(v) : fmtTick(v), L - 6, py(v) + 4);
  }
  ctx.strokeStyle = '#333'; ctx.strokeRect(L, T, W - L - R, H - T - B);
  ctx.textAlign = 'center'; ctx.fillText(prof.unit, L + (W - L - R) / 2, H - 8);
  ctx.save(); ctx.translate(16, T + (H - T - B) / 2); ctx.rotate(-Math.PI / 2);
  ctx.fillText(logy ? 'intensity (log)' : 'intensity', 0, 0); ctx.restore();
  ctx.strokeStyle = '#1f5fbf'; ctx.lineWidth = 1.5; ctx.beginPath();
  pts.forEach((p, i) => (i ? ctx.lineTo(px(p[0]), py(p[1])) : ctx.moveTo(px(p[0]), py(p[1]))));
  ctx.stroke(); ctx.lineWidth = 1;
}

$('logy').addEventListener('change', () => { if (lastProfile) drawProfile(lastProfile); });
if (!CFG.processed) {
  $('profile-section').style.display = 'none';
  $('processed-head').style.display = 'none';
}
tick();
"""


def page_html(view: ViewServer) -> str:
    """The page, with the server's settings baked in."""
    cfg = view.config
    config = json.dumps({"poll_ms": cfg.poll_ms, "processed": cfg.processed})
    body = (_BODY.replace("__BEAMTIME__", html.escape(cfg.beamtime))
            .replace("__RAW__", html.escape(cfg.raw)))
    script = _JS.replace("__CONFIG__", config.replace("</", "<\\/"))
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>asapo-hpc view: {html.escape(cfg.beamtime)}</title>"
            f"<style>{_CSS}</style></head>\n<body>{body}<script>{script}</script>"
            "</body></html>\n")
