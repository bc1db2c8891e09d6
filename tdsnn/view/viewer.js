// tdsnn view: cortical sheet maps of recordings, drawn on 2-D canvases.
//
// Each panel (one per recording) draws its area's units once into an offscreen image, one
// pixel block per unit; pan and zoom redraw that image under a transform, so a frame costs the
// same for 100 k units as for 100. The view transform (in sheet fractions) and the selection
// (a node id, or a box in sheet fractions) are shared by all panels: linked zoom and selection.
// Data come from the page itself (offline: base64 typed arrays) or from the loopback server.
"use strict";

const PAYLOAD = JSON.parse(document.getElementById("tdsnn-data").textContent);
const RECS = PAYLOAD.manifest.recordings;
const OFFLINE = PAYLOAD.mode === "offline";
const $ = (id) => document.getElementById(id);
const state = {
  area: RECS[0].areas[0].name, map: "orientation", category: 0, trial: 0, step: 0,
  view: { x: 0, y: 0, zoom: 1 }, // sheet fraction at the canvas's top-left; canvas px per px
  unit: null, box: null, playing: null,
};

// ------------------------------------------------------------------ data source

const cache = new Map();
function memo(key, make) {
  if (!cache.has(key)) cache.set(key, make());
  return cache.get(key);
}

function bytesOf(name) { // a base64 blob of the page, decoded once
  return memo("b:" + name, () => {
    const text = atob(PAYLOAD.blobs[name]);
    const out = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
    return out;
  });
}

async function fetchBytes(url) {
  const reply = await fetch(url);
  if (!reply.ok) throw new Error(`${url}: ${reply.status}`);
  return new Uint8Array(await reply.arrayBuffer());
}

async function fetchJson(url) {
  const reply = await fetch(url);
  if (!reply.ok) throw new Error(`${url}: ${reply.status}`);
  return reply.json();
}

function areaOf(r, name) { return RECS[r].areas.find((a) => a.name === name); }

// The float32 maps of an area: {x, y, rate, orientation?, selectivity?, frequency?, t?}.
function maps(r, name) {
  return memo(`m:${r}/${name}`, async () => {
    const out = {};
    for (const key of areaOf(r, name).blobs) {
      if (key === "bits" || key === "counts") continue;
      const bytes = OFFLINE ? bytesOf(`${r}/${name}/${key}`)
        : await fetchBytes(`/api/blob/${r}/${name}/${key}`);
      out[key] = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
    }
    return out;
  });
}

function spiking(r) { return RECS[r].responses !== "rates"; }
function rowBytes(r, name) { return (areaOf(r, name).units + 7) >> 3; }

// Spike bits of one trial: Uint8Array [T, ceil(N/8)], or null for ReLU units.
function trialBits(r, name, k) {
  if (!spiking(r)) return Promise.resolve(null);
  if (!OFFLINE) return memo(`t:${r}/${name}/${k}`, () => fetchBytes(`/api/trial/${r}/${name}/${k}`));
  const size = RECS[r].timesteps * rowBytes(r, name);
  return Promise.resolve(bytesOf(`${r}/${name}/bits`).subarray(k * size, (k + 1) * size));
}

function bit(bits, row, u, nb) { return (bits[row * nb + (u >> 3)] >> (u & 7)) & 1; }

// One unit: {counts: [trials] responses, raster: [trials·T] 0/1 or null}.
async function unitActivity(r, name, u) {
  if (!OFFLINE) return fetchJson(`/api/unit/${r}/${name}/${u}`);
  const rec = RECS[r], n = areaOf(r, name).units;
  const counts = new Float64Array(rec.trials);
  if (!spiking(r)) {
    const all = new Float32Array(bytesOf(`${r}/${name}/counts`).slice().buffer);
    for (let k = 0; k < rec.trials; k++) counts[k] = all[k * n + u];
    return { counts, raster: null };
  }
  const bits = bytesOf(`${r}/${name}/bits`), nb = rowBytes(r, name), T = rec.timesteps;
  const raster = new Uint8Array(rec.trials * T);
  for (let row = 0; row < rec.trials * T; row++) {
    raster[row] = bit(bits, row, u, nb);
    counts[Math.floor(row / T)] += raster[row];
  }
  return { counts, raster };
}

// Mean response per trial of the units inside a box (mm): {units, mean: [trials]}.
async function regionMean(r, name, box) {
  if (!OFFLINE) return fetchJson(`/api/region/${r}/${name}/${box.map((v) => v.toFixed(6)).join(",")}`);
  const m = await maps(r, name), rec = RECS[r], n = m.x.length;
  const [x0, x1] = [Math.min(box[0], box[2]), Math.max(box[0], box[2])];
  const [y0, y1] = [Math.min(box[1], box[3]), Math.max(box[1], box[3])];
  const inside = [];
  for (let u = 0; u < n; u++) {
    if (m.x[u] >= x0 && m.x[u] <= x1 && m.y[u] >= y0 && m.y[u] <= y1) inside.push(u);
  }
  const mean = new Float64Array(rec.trials);
  if (inside.length) {
    if (spiking(r)) {
      const bits = bytesOf(`${r}/${name}/bits`), nb = rowBytes(r, name), T = rec.timesteps;
      for (let row = 0; row < rec.trials * T; row++) {
        let s = 0;
        for (const u of inside) s += bit(bits, row, u, nb);
        mean[Math.floor(row / T)] += s;
      }
    } else {
      const all = new Float32Array(bytesOf(`${r}/${name}/counts`).slice().buffer);
      for (let k = 0; k < rec.trials; k++) for (const u of inside) mean[k] += all[k * n + u];
    }
    for (let k = 0; k < rec.trials; k++) mean[k] /= inside.length;
  }
  return { units: inside.length, mean };
}

// ------------------------------------------------------------------ tuning

// Responses per trial -> mean per stimulus shown, then mean over the stimuli of each group:
// (orientation, frequency) for gratings, label for categories. The same averages as
// tdsnn.analysis.topography.stimulus_responses.
function tuning(r, perTrial) {
  const rec = RECS[r], st = rec.stimuli, sum = new Map(), reps = new Map();
  rec.stimulus_index.forEach((s, k) => {
    sum.set(s, (sum.get(s) || 0) + perTrial[k]);
    reps.set(s, (reps.get(s) || 0) + 1);
  });
  const grating = st.orientation_deg.some((v) => v !== null);
  const groups = new Map();
  for (const [s, total] of sum) {
    const key = grating ? `${st.orientation_deg[s]}|${st.cycles_per_image[s]}` : `${st.label[s]}`;
    const g = groups.get(key) || { total: 0, n: 0, s };
    g.total += total / reps.get(s);
    g.n += 1;
    groups.set(key, g);
  }
  const value = (key) => (groups.has(key) ? groups.get(key).total / groups.get(key).n : null);
  if (grating) {
    const shown = [...sum.keys()];
    const oris = [...new Set(shown.map((s) => st.orientation_deg[s]))].sort((a, b) => a - b);
    const sfs = [...new Set(shown.map((s) => st.cycles_per_image[s]))].sort((a, b) => a - b);
    return { rows: oris, cols: sfs, rowName: "orientation °", colName: "cycles/image",
      value: (o, f) => value(`${o}|${f}`) };
  }
  const labels = [...new Set([...sum.keys()].map((s) => st.label[s]))].sort((a, b) => a - b);
  return { rows: labels.map((l) => rec.class_names[l] ?? l), cols: ["mean"], rowName: "category",
    colName: "", value: (label) => value(String(label)), labels };
}

function tuningTable(r, perTrial, id) {
  const t = tuning(r, perTrial);
  const table = document.createElement("table");
  table.className = "tuning";
  table.id = id;
  const head = table.insertRow();
  head.innerHTML = `<th>${t.rowName}</th>` + t.cols.map((c) => `<th>${short(c)}</th>`).join("");
  t.rows.forEach((row, i) => {
    const tr = table.insertRow();
    tr.appendChild(document.createElement("th")).textContent = short(row); // names from the file
    t.cols.forEach((col) => {
      const key = t.labels ? t.labels[i] : row;
      const v = t.value(key, col);
      const td = tr.insertCell();
      td.dataset.row = String(t.labels ? t.labels[i] : row);
      td.dataset.col = String(col);
      td.dataset.value = v === null ? "" : String(v);
      td.textContent = v === null ? "–" : v.toFixed(3);
      td.style.background = v === null ? "" : `rgba(255,140,40,${Math.min(1, v / maxOf(t)).toFixed(3)})`;
    });
  });
  return table;
}

function short(v) { return typeof v === "number" ? String(Number(v.toPrecision(4))) : String(v); }

function maxOf(t) {
  let m = 1e-9;
  t.rows.forEach((row, i) => t.cols.forEach((c) => {
    const v = t.value(t.labels ? t.labels[i] : row, c);
    if (v !== null && v > m) m = v;
  }));
  return m;
}

// ------------------------------------------------------------------ colours

const GREY = [60, 60, 60];
function hsv(h, s, v) { // h in [0, 360)
  const f = (n) => { const k = (n + h / 60) % 6; return v - v * s * Math.max(0, Math.min(k, 4 - k, 1)); };
  return [f(5) * 255, f(3) * 255, f(1) * 255];
}
function ramp(stops, x) { // x in [0, 1] along colour stops
  const p = Math.max(0, Math.min(1, x)) * (stops.length - 1), i = Math.min(Math.floor(p), stops.length - 2);
  const f = p - i;
  return stops[i].map((c, j) => c + (stops[i + 1][j] - c) * f);
}
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
const INFERNO = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];
const DIVERGING = [[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130], [178, 24, 43]];

function quantile(values, q) {
  const finite = Array.from(values).filter(Number.isFinite).sort((a, b) => a - b);
  return finite.length ? finite[Math.min(finite.length - 1, Math.floor(q * finite.length))] : 1;
}

// The colour of every unit for the chosen map: {rgb(u) -> [r, g, b], legend} or null.
async function colouring(r, name) {
  const m = await maps(r, name), n = m.x.length, what = state.map;
  if (what === "orientation" && m.orientation) {
    const top = Math.max(quantile(m.selectivity, 0.99), 1e-6);
    return { legend: `hue: preferred orientation (0–180°); brightness: selectivity (0–${top.toFixed(2)})`,
      rgb: (u) => (Number.isFinite(m.orientation[u])
        ? hsv(2 * m.orientation[u], 1, Math.min(1, m.selectivity[u] / top)) : GREY) };
  }
  if (what === "frequency" && m.frequency) {
    const lo = Math.log2(quantile(m.frequency, 0)), hi = Math.log2(quantile(m.frequency, 1));
    return { legend: `preferred spatial frequency ${2 ** lo}–${2 ** hi} cycles/image (log)`,
      rgb: (u) => (Number.isFinite(m.frequency[u])
        ? ramp(VIRIDIS, (Math.log2(m.frequency[u]) - lo) / (hi - lo || 1)) : GREY) };
  }
  if (what === "rate") {
    const top = Math.max(quantile(m.rate, 0.99), 1e-6);
    const unit = spiking(r) ? "spikes per trial" : "activation";
    return { legend: `mean response 0–${top.toFixed(2)} ${unit}`, rgb: (u) => ramp(INFERNO, m.rate[u] / top) };
  }
  if (what === "t" && m.t) {
    const c = state.category, top = Math.max(3, quantile(m.t.subarray(c * n, (c + 1) * n).map(Math.abs), 0.99));
    const cname = RECS[r].class_names[c] ?? c;
    return { legend: `t of ${cname} against the rest, −${top.toFixed(1)}…+${top.toFixed(1)}`,
      rgb: (u) => (Number.isFinite(m.t[c * n + u]) ? ramp(DIVERGING, 0.5 + m.t[c * n + u] / (2 * top)) : GREY) };
  }
  if (what === "spikes" && spiking(r) && state.trial < RECS[r].trials) {
    const bits = await trialBits(r, name, state.trial), nb = rowBytes(r, name);
    return { legend: `spikes of trial ${state.trial}, step ${state.step + 1} of ${RECS[r].timesteps}`,
      rgb: (u) => (bit(bits, state.step, u, nb) ? [255, 236, 120] : [30, 34, 60]) };
  }
  return null;
}

function missing(r) {
  const why = { orientation: "no grating trials", frequency: "no grating trials",
    t: "no labelled trials", spikes: spiking(r) ? "no such trial" : "ReLU units: no spikes" };
  return `${why[state.map] || "not available"} in this recording`;
}

// ------------------------------------------------------------------ panels

const panels = [];

function makePanel(r) {
  const div = document.createElement("div");
  div.className = "panel";
  div.innerHTML = `<h2></h2><canvas></canvas><div class="legend"></div>`;
  div.querySelector("h2").textContent = `${RECS[r].label}`;
  $("panels").appendChild(div);
  const canvas = div.querySelector("canvas");
  const panel = { r, div, canvas, legend: div.querySelector(".legend"), image: null, key: null };
  canvas.id = `sheet-${r}`;
  attachPointer(panel);
  panels.push(panel);
  return panel;
}

function sizeCanvases() {
  const width = Math.max(220, Math.min(560, (window.innerWidth - 24) / panels.length - 24));
  for (const p of panels) {
    p.canvas.width = p.canvas.height = Math.floor(width);
  }
}

async function rebuild(panel) { // offscreen image of the units, one pixel block per unit
  const r = panel.r, area = areaOf(r, state.area);
  const key = `${state.area}|${state.map}|${state.category}|${state.trial}|${state.step}`;
  if (panel.key === key) return;
  panel.key = key;
  if (!area) { panel.image = null; panel.legend.textContent = `no area ${state.area}`; return; }
  const colour = await colouring(r, area.name);
  if (panel.key !== key) return; // a newer request won
  if (!colour) { panel.image = null; panel.legend.textContent = missing(r); return; }
  const m = await maps(r, area.name), n = m.x.length;
  const side = Math.min(2048, Math.ceil(3 * Math.sqrt(n)) + 2), s = side / area.side_mm;
  const image = new ImageData(side, side), px = new Uint32Array(image.data.buffer);
  for (let u = 0; u < n; u++) {
    const [cr, cg, cb] = colour.rgb(u);
    const i = Math.min(side - 2, Math.max(0, Math.floor(m.x[u] * s)));
    const j = Math.min(side - 2, Math.max(0, Math.floor((area.side_mm - m.y[u]) * s)));
    const v = (255 << 24) | ((cb & 255) << 16) | ((cg & 255) << 8) | (cr & 255);
    px[j * side + i] = v; px[j * side + i + 1] = v; px[(j + 1) * side + i] = v; px[(j + 1) * side + i + 1] = v;
  }
  const off = document.createElement("canvas");
  off.width = off.height = side;
  off.getContext("2d").putImageData(image, 0, 0);
  panel.image = off;
  panel.legend.textContent = colour.legend;
}

function draw(panel) {
  const ctx = panel.canvas.getContext("2d"), w = panel.canvas.width, v = state.view;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, w, w);
  if (!panel.image) {
    ctx.fillStyle = "#888";
    ctx.fillText(panel.legend.textContent, 10, 20);
    return;
  }
  const scale = w * v.zoom; // canvas px per sheet (fraction 1)
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(panel.image, -v.x * scale, -v.y * scale, scale, scale);
  const area = areaOf(panel.r, state.area);
  const toCanvas = (xmm, ymm) => [(xmm / area.side_mm - v.x) * scale, ((area.side_mm - ymm) / area.side_mm - v.y) * scale];
  if (state.box) {
    const [x0, y0, x1, y1] = state.box.map((f, i) => (f - (i % 2 ? v.y : v.x)) * scale);
    ctx.strokeStyle = "#fff";
    ctx.setLineDash([4, 3]);
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.setLineDash([]);
  }
  if (state.unit !== null && panel.unitMm) {
    const [x, y] = toCanvas(...panel.unitMm);
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.arc(x, y, 7, 0, 2 * Math.PI);
    ctx.stroke();
    ctx.lineWidth = 1;
  }
}

let frameQueued = false;
function drawAll() { for (const p of panels) draw(p); }
function requestDraw() {
  if (frameQueued) return;
  frameQueued = true;
  requestAnimationFrame(() => { frameQueued = false; drawAll(); });
}

async function refresh() {
  await Promise.all(panels.map(rebuild));
  drawAll();
}

// ------------------------------------------------------------------ pointer: pan, zoom, click, brush

function sheetFraction(panel, event) { // pointer position on the sheet, fractions, y down
  const rect = panel.canvas.getBoundingClientRect(), v = state.view;
  return [v.x + (event.clientX - rect.left) / (panel.canvas.width * v.zoom),
    v.y + (event.clientY - rect.top) / (panel.canvas.width * v.zoom)];
}

function zoomAt(panel, factor, cx, cy) { // cx, cy: canvas px that stays put
  const v = state.view, w = panel.canvas.width;
  const zoom = Math.max(1, Math.min(400, v.zoom * factor));
  v.x += cx / (w * v.zoom) - cx / (w * zoom);
  v.y += cy / (w * v.zoom) - cy / (w * zoom);
  v.zoom = zoom;
  if (zoom === 1) { v.x = 0; v.y = 0; }
  requestDraw();
}

function attachPointer(panel) {
  const c = panel.canvas;
  let drag = null;
  c.addEventListener("wheel", (e) => {
    e.preventDefault();
    const rect = c.getBoundingClientRect();
    zoomAt(panel, Math.exp(-e.deltaY * 0.002), e.clientX - rect.left, e.clientY - rect.top);
  }, { passive: false });
  c.addEventListener("pointerdown", (e) => {
    c.setPointerCapture(e.pointerId);
    drag = { x: e.clientX, y: e.clientY, moved: false, brush: e.shiftKey, start: sheetFraction(panel, e) };
  });
  c.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
    if (!drag.moved) return;
    if (drag.brush) {
      state.box = [...drag.start, ...sheetFraction(panel, e)];
    } else {
      const v = state.view, w = c.width * v.zoom;
      v.x -= dx / w; v.y -= dy / w;
      drag.x = e.clientX; drag.y = e.clientY;
    }
    requestDraw();
  });
  c.addEventListener("pointerup", (e) => {
    if (drag && !drag.moved) selectNear(panel, sheetFraction(panel, e));
    else if (drag && drag.brush) selectBox(state.box);
    drag = null;
  });
}

async function selectNear(panel, [fx, fy]) { // the unit nearest to a point of the sheet
  const m = await maps(panel.r, state.area), side = areaOf(panel.r, state.area).side_mm;
  const x = fx * side, y = (1 - fy) * side;
  let best = -1, dist = Infinity;
  for (let u = 0; u < m.x.length; u++) {
    const d = (m.x[u] - x) ** 2 + (m.y[u] - y) ** 2;
    if (d < dist) { dist = d; best = u; }
  }
  if (best >= 0) await selectUnit(best);
}

// ------------------------------------------------------------------ details: unit and region

function details(r) {
  let div = $(`detail-${r}`);
  if (!div) {
    div = document.createElement("div");
    div.className = "detail";
    div.id = `detail-${r}`;
    div.innerHTML = `<h3></h3><div class="unit"><p class="muted">click a unit</p></div><div class="region"></div>`;
    div.querySelector("h3").textContent = RECS[r].label;
    $("details").appendChild(div);
  }
  return div;
}

function infoRow(table, key, label, value, digits = 3) {
  const tr = table.insertRow();
  tr.dataset.key = key;
  tr.insertCell().textContent = label;
  const td = tr.insertCell();
  td.dataset.value = value === null ? "" : String(value);
  td.textContent = value === null || Number.isNaN(value) ? "–"
    : typeof value === "number" && !Number.isInteger(value) ? value.toFixed(digits) : String(value);
}

// Select node id u in every panel (linked selection), and show its details.
async function selectUnit(u) {
  state.unit = u;
  await Promise.all(panels.map(async (p) => {
    const area = areaOf(p.r, state.area), box = details(p.r).querySelector(".unit");
    p.unitMm = null;
    if (!area || u >= area.units) { box.innerHTML = `<p class="muted">no unit ${u} here</p>`; return; }
    const m = await maps(p.r, area.name), act = await unitActivity(p.r, area.name, u);
    p.unitMm = [m.x[u], m.y[u]];
    showUnit(p.r, area, m, u, act, box);
  }));
  drawAll();
}

function showUnit(r, area, m, u, act, box) {
  const [, H, W] = area.shape, n = area.units;
  const table = document.createElement("table");
  table.className = "info";
  table.id = `unit-${r}`;
  infoRow(table, "area", "area", area.name);
  infoRow(table, "node_id", "node id", u);
  infoRow(table, "channel", "channel, row, col", `${Math.floor(u / (H * W))}, ${Math.floor(u / W) % H}, ${u % W}`);
  infoRow(table, "x_mm", "x (mm)", m.x[u]);
  infoRow(table, "y_mm", "y (mm)", m.y[u]);
  infoRow(table, "rate", "mean response", m.rate[u]);
  if (m.orientation) {
    infoRow(table, "orientation", "preferred orientation (°)", m.orientation[u], 1);
    infoRow(table, "selectivity", "orientation selectivity", m.selectivity[u]);
    infoRow(table, "frequency", "preferred cycles/image", m.frequency[u]);
  }
  if (m.t) infoRow(table, "t", `t (${RECS[r].class_names[state.category] ?? state.category})`, m.t[state.category * n + u], 2);
  box.replaceChildren(table, tuningTable(r, act.counts, `tuning-${r}`));
  if (act.raster) box.appendChild(rasterBlock(r, act));
}

function rasterBlock(r, act) { // raster of the unit over the trials of a chosen stimulus
  const rec = RECS[r], T = rec.timesteps, div = document.createElement("div");
  const select = document.createElement("select");
  const shown = [...new Set(rec.stimulus_index)].sort((a, b) => a - b);
  const mean = (s) => { let t = 0, c = 0; rec.stimulus_index.forEach((x, k) => { if (x === s) { t += act.counts[k]; c++; } }); return t / c; };
  let best = shown[0];
  for (const s of shown) if (mean(s) > mean(best)) best = s;
  for (const s of shown) select.add(new Option(describe(r, s), s, false, s === best));
  const canvas = document.createElement("canvas");
  canvas.className = "raster";
  canvas.id = `raster-${r}`;
  const paint = () => {
    const s = Number(select.value), trials = [];
    rec.stimulus_index.forEach((x, k) => { if (x === s) trials.push(k); });
    canvas.width = 300; canvas.height = Math.max(24, Math.min(200, trials.length * 8));
    const ctx = canvas.getContext("2d"), cw = canvas.width / T, rh = canvas.height / trials.length;
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = "#ffec78";
    trials.forEach((k, i) => { for (let t = 0; t < T; t++) if (act.raster[k * T + t]) ctx.fillRect(t * cw + 1, i * rh + 1, cw - 2, rh - 2); });
    canvas.dataset.spikes = String(trials.reduce((a, k) => a + act.counts[k], 0));
  };
  select.addEventListener("change", paint);
  paint();
  const label = document.createElement("div");
  label.className = "muted";
  label.textContent = `raster: trials × ${T} steps (${rec.dt_ms} ms each) of stimulus`;
  label.appendChild(select);
  div.append(label, canvas);
  return div;
}

function describe(r, s) {
  const st = RECS[r].stimuli;
  if (st.orientation_deg[s] !== null) {
    return `#${s}: ${short(st.orientation_deg[s])}°, ${short(st.cycles_per_image[s])} c/img, phase ${short(st.phase_deg[s])}°`;
  }
  return `#${s}: ${RECS[r].class_names[st.label[s]] ?? st.label[s]}`;
}

// Mean tuning of the units inside a box (sheet fractions [x0, y0, x1, y1], y down) in every panel.
async function selectBox(box) {
  state.box = box;
  await Promise.all(panels.map(async (p) => {
    const area = areaOf(p.r, state.area), out = details(p.r).querySelector(".region");
    if (!area) return;
    const mm = [box[0], 1 - box[1], box[2], 1 - box[3]].map((f) => f * area.side_mm);
    const region = await regionMean(p.r, area.name, mm);
    const title = document.createElement("p");
    title.id = `region-units-${p.r}`;
    title.dataset.units = String(region.units);
    title.textContent = `region: ${region.units} units, mean tuning`;
    out.replaceChildren(title, tuningTable(p.r, region.mean, `region-${p.r}`));
  }));
  drawAll();
}

// ------------------------------------------------------------------ controls

function setupControls() {
  const areaNames = [...new Set(RECS.flatMap((r) => r.areas.map((a) => a.name)))];
  for (const name of areaNames) $("area").add(new Option(name, name));
  const names = RECS.find((r) => r.class_names.length)?.class_names || [];
  names.forEach((c, i) => $("category").add(new Option(c, i)));
  const T = Math.max(...RECS.map((r) => r.timesteps));
  $("step").max = String(T - 1);
  $("trial").max = String(Math.max(0, Math.min(...RECS.map((r) => r.trials)) - 1));
  const hasOrientation = RECS.some((r) => r.stimuli.orientation_deg.some((v) => v !== null));
  state.map = hasOrientation ? "orientation" : "rate";
  $("map").value = state.map;
  const update = async () => {
    state.area = $("area").value; state.map = $("map").value;
    state.category = Number($("category").value) || 0;
    state.trial = Math.max(0, Number($("trial").value) || 0); state.step = Number($("step").value);
    $("category-control").hidden = state.map !== "t";
    $("step-label").textContent = `${state.step + 1}/${T}`;
    await refresh();
    if (state.unit !== null) await selectUnit(state.unit);
  };
  $("area").addEventListener("change", () => { state.unit = null; state.box = null; });
  for (const id of ["area", "map", "category", "trial"]) $(id).addEventListener("change", update);
  $("step").addEventListener("input", update);
  $("reset").addEventListener("click", () => { state.view = { x: 0, y: 0, zoom: 1 }; drawAll(); });
  $("play").addEventListener("click", () => {
    if (state.playing) { clearInterval(state.playing); state.playing = null; $("play").textContent = "play"; return; }
    $("map").value = "spikes";
    $("play").textContent = "stop";
    state.playing = setInterval(() => { $("step").value = String((Number($("step").value) + 1) % T); update(); }, 500);
    update();
  });
  $("category-control").hidden = true;
  $("step-label").textContent = `1/${T}`;
}

function showBanner() {
  const partial = RECS.filter((r) => !r.complete);
  if (!partial.length) return;
  $("banner").hidden = false;
  $("banner").textContent = partial.map((r) => `${r.label}: recording ${r.state}, it holds ${r.trials} of ${r.total_trials} trials`).join(" · ");
}

// For tests and measurements: select, brush and zoom from a script; frame times of a zoom.
window.tdsnn = {
  state, selectUnit, selectBox, refresh,
  zoomFrames(frames) { // mean ms per frame of a zoom in and out, every panel redrawn and read
    const p = panels[0], t0 = performance.now();
    for (let i = 0; i < frames; i++) {
      zoomAt(p, i < frames / 2 ? 1.1 : 1 / 1.1, 100, 120);
      drawAll();
      for (const q of panels) q.canvas.getContext("2d").getImageData(0, 0, 1, 1); // finish drawing
    }
    return (performance.now() - t0) / frames;
  },
};

async function main() {
  setupControls();
  showBanner();
  RECS.forEach((_, r) => { makePanel(r); details(r); });
  sizeCanvases();
  window.addEventListener("resize", () => { sizeCanvases(); drawAll(); });
  await refresh();
  requestAnimationFrame(() => { window.tdsnnFirstPaint = performance.now(); });
}

main().catch((error) => { console.error(error); $("banner").hidden = false; $("banner").textContent = String(error); });
