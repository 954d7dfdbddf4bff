// The sparsecodes playground: plain JavaScript, no libraries, no build step. It talks to the service only
// through its public API (relative URLs, so it also works behind a path prefix):
//   GET  v1/models                      model cards
//   GET  v1/models/{name}/examples      held-out input rows shipped in the bundle
//   GET  v1/models/{name}/plots/{plot}  the training report's plots
//   GET  v1/models/{name}/stats         distribution of recently served code lengths (L0)
//   POST v1/models/{name}/encode        the code + reconstruction of the current input
//   POST v1/models/{name}/denoise       the reconstruction of the current input plus noise
"use strict";

const KEY_STORAGE = "sparsecodes.apiKey";
const SVG_NS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

const state = {
  key: sessionStorage.getItem(KEY_STORAGE) || "",
  models: [],
  model: null,        // the ModelInfo of the chosen model
  examples: [],       // rows [n][d_in], raw units
  image: null,        // {h, w} when inputs are flattened grey images, else null
  range: [0, 1],      // display range of input values (from the examples)
  spread: 1,          // standard deviation of the example values: the unit of the noise slider
  noiseBasis: [],     // a fixed N(0, 1) vector [d_in] per model, so the noise does not flicker
  input: [],          // the current input row [d_in]
  inputId: 0,         // changes whenever the input changes (the trade-off trace belongs to one input)
  trace: new Map(),   // max_active (0 = off) -> {l0, error} for the current input
  seq: 0,             // latest update; older responses are dropped
  timer: 0,
  plotUrls: [],
};

// -- API --------------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
  describe() {
    if (this.status === 0) return this.message;
    return `The service answered ${this.status} (${this.type}): ${this.message}`;
  }
}

async function api(path, { body, blob = false } = {}) {
  const headers = {};
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, {
      method: body === undefined ? "GET" : "POST",
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, "network", `Cannot reach the service (${e.message}). Is it running?`);
  }
  if (!resp.ok) {
    let type = `http_${resp.status}`;
    let message = resp.statusText || "request failed";
    try {
      const data = await resp.json();
      if (data && data.error) ({ type, message } = data.error);
    } catch (_) { /* not JSON: keep the status text */ }
    throw new ApiError(resp.status, type, message);
  }
  return blob ? resp.blob() : resp.json();
}

const modelPath = (suffix) => `v1/models/${encodeURIComponent(state.model.name)}/${suffix}`;

// -- messages ---------------------------------------------------------------------------------------------

function showError(err, context) {
  const box = $("error");
  const text = err instanceof ApiError ? err.describe() : String(err && err.message ? err.message : err);
  box.textContent = context ? `${context}: ${text}` : text;
  box.hidden = false;
  if (err instanceof ApiError && err.status === 401) askForKey(err.message);
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function placeholder(container, text, cls = "empty") {
  container.replaceChildren(Object.assign(document.createElement("p"), { className: cls, textContent: text }));
}

// -- API key ----------------------------------------------------------------------------------------------

function askForKey(reason) {
  $("auth").hidden = false;
  $("main").hidden = true;
  $("auth").querySelector("p").dataset.reason = reason || "";
  $("key-input").focus();
}

function onKeySubmit(event) {
  event.preventDefault();
  state.key = $("key-input").value.trim();
  sessionStorage.setItem(KEY_STORAGE, state.key);
  $("key-input").value = "";
  loadModels();
}

// -- models -----------------------------------------------------------------------------------------------

async function loadModels() {
  let listing;
  try {
    listing = await api("v1/models");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      showError(err, state.key ? "The API key was not accepted" : "This service requires an API key");
    } else {
      showError(err, "Cannot list the models");
    }
    return;
  }
  clearError();
  $("auth").hidden = true;
  $("change-key").hidden = !state.key;
  state.models = listing.models;
  const select = $("model-select");
  select.replaceChildren(...state.models.map((m) => new Option(`${m.name} (${m.kind})`, m.name)));
  select.disabled = state.models.length === 0;
  if (state.models.length === 0) {
    showError("The service serves no models yet (no bundle under SPARSECODES_MODEL_DIR).");
    return;
  }
  const wanted = new URLSearchParams(location.hash.slice(1)).get("model");
  const first = state.models.some((m) => m.name === wanted) ? wanted : state.models[0].name;
  select.value = first;
  await selectModel(first);
}

async function selectModel(name) {
  state.model = state.models.find((m) => m.name === name);
  history.replaceState(null, "", `#model=${encodeURIComponent(name)}`);
  $("main").hidden = false;
  renderCard(state.model);
  let examples;
  try {
    examples = (await api(modelPath("examples"))).inputs;
  } catch (err) {
    showError(err, "Cannot load the examples");
    examples = [];
  }
  if (state.model.name !== name) return; // another model was picked meanwhile
  state.examples = examples;
  setUpInput(state.model, examples);
  loadPlots(state.model);
}

function renderCard(m) {
  $("card-title").textContent = m.name;
  const facts = [
    ["kind", m.kind], ["d_in", m.d_in], ["d_served", `${m.d_served} (of d_sae ${m.d_sae})`],
    ["input", m.input_shape ? m.input_shape.join(" × ") + " image" : "vector"],
    ["version", m.version], ["providers", m.providers.join(", ")],
  ];
  $("card-facts").replaceChildren(...facts.flatMap(([k, v]) => [
    Object.assign(document.createElement("dt"), { textContent: k }),
    Object.assign(document.createElement("dd"), { textContent: String(v) }),
  ]));
  const rows = Object.entries(m.metrics).filter(([, v]) => typeof v === "number");
  const table = $("card-metrics");
  table.replaceChildren();
  table.createCaption().textContent = "held-out metrics (normalised units)";
  for (const [k, v] of rows) {
    const tr = table.insertRow();
    tr.insertCell().textContent = k;
    tr.insertCell().textContent = formatNumber(v);
  }
}

async function loadPlots(m) {
  state.plotUrls.forEach((u) => URL.revokeObjectURL(u));
  state.plotUrls = [];
  const box = $("card-plots");
  if (!m.plots || m.plots.length === 0) {
    placeholder(box, "This bundle carries no training plots.", "hint");
    return;
  }
  box.replaceChildren();
  for (const plot of m.plots) {
    const figure = document.createElement("figure");
    const caption = Object.assign(document.createElement("figcaption"), { textContent: plot.replaceAll("_", " ") });
    try {
      // Fetched (not an <img src>) so that the API key header goes with it.
      const url = URL.createObjectURL(await api(modelPath(`plots/${encodeURIComponent(plot)}`), { blob: true }));
      state.plotUrls.push(url);
      const img = Object.assign(document.createElement("img"), { src: url, alt: `${plot} plot`, title: "click to enlarge" });
      img.addEventListener("click", () => figure.classList.toggle("large"));
      figure.append(img, caption);
    } catch (err) {
      figure.append(Object.assign(document.createElement("p"), { className: "error-inline", textContent: err.describe ? err.describe() : String(err) }), caption);
    }
    if (state.model !== m) return;
    box.append(figure);
  }
}

// -- input ------------------------------------------------------------------------------------------------

function imageShape(shape) {
  if (!shape) return null;
  const dims = shape.filter((d) => d !== 1);
  return dims.length === 2 ? { h: dims[0], w: dims[1] } : null;
}

function setUpInput(m, examples) {
  state.image = imageShape(m.input_shape);
  const values = examples.flat();
  let lo = Math.min(0, ...values);
  let hi = Math.max(...values, lo + 1e-6);
  if (!values.length) { lo = 0; hi = 1; }
  state.range = [lo, hi];
  const mean = values.reduce((a, b) => a + b, 0) / Math.max(values.length, 1);
  state.spread = Math.sqrt(values.reduce((a, b) => a + (b - mean) ** 2, 0) / Math.max(values.length, 1)) || 1;
  state.noiseBasis = gaussianVector(m.d_in, hashString(m.name));
  $("image-input").hidden = !state.image;
  $("vector-input").hidden = !!state.image;
  $("vector-hint").textContent = state.image ? "" : `${m.d_in} numbers`;
  setUpSlider(m);
  renderExamples(examples);
  setInput(examples.length ? examples[0].slice() : new Array(m.d_in).fill(0), 0);
}

function setUpSlider(m) {
  // The slider's last position means "no cap"; its range covers a few times the typical L0.
  const typical = Math.ceil(4 * (m.metrics.l0_mean || 8));
  const top = Math.max(2, Math.min(m.d_served, Math.max(32, typical)));
  const slider = $("max-active");
  slider.max = String(top + 1);
  slider.value = String(top + 1);
  showSliderValues();
}

function maxActive() {
  const slider = $("max-active");
  const v = Number(slider.value);
  return v > Number(slider.max) - 1 ? null : v;
}

function showSliderValues() {
  const cap = maxActive();
  $("max-active-value").textContent = cap === null ? "off (no cap)" : String(cap);
  $("noise-value").textContent = `σ = ${noiseSigma().toPrecision(2)}`;
}

const noiseSigma = () => (Number($("noise").value) / 100) * state.spread;

function renderExamples(examples) {
  const box = $("examples");
  if (!examples.length) {
    placeholder(box, "This bundle carries no example inputs.", "hint");
    return;
  }
  box.replaceChildren(...examples.map((row, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "example";
    button.dataset.index = String(i);
    button.title = `example ${i + 1}`;
    if (state.image) {
      button.append(imageCanvas(row, 44));
    } else {
      button.append(sparkline(row), Object.assign(document.createElement("span"), { textContent: `#${i + 1}` }));
    }
    button.addEventListener("click", () => setInput(row.slice(), i));
    return button;
  }));
}

function setInput(row, exampleIndex = null) {
  state.input = row;
  state.inputId += 1;
  state.trace = new Map();
  document.querySelectorAll(".example").forEach((b) => b.classList.toggle("chosen", Number(b.dataset.index) === exampleIndex));
  if (state.image) drawInputCanvas();
  else $("vector-text").value = row.map((v) => formatNumber(v)).join(", ");
  scheduleUpdate();
}

function parseVector(text) {
  const tokens = text.split(/[\s,;[\]]+/).filter((t) => t.length);
  const bad = tokens.findIndex((t) => !Number.isFinite(Number(t)));
  if (bad >= 0) throw new Error(`"${tokens[bad]}" (number ${bad + 1}) is not a number`);
  if (!tokens.length) throw new Error("paste some numbers first");
  return tokens.map(Number);
}

function onUseVector() {
  let row;
  try {
    row = parseVector($("vector-text").value);
  } catch (err) {
    showError(err, "Cannot read the vector");
    return;
  }
  // A wrong length is left to the service to judge: its message says what it expects.
  state.input = row;
  state.inputId += 1;
  state.trace = new Map();
  document.querySelectorAll(".example").forEach((b) => b.classList.remove("chosen"));
  scheduleUpdate();
}

// Drawing: the canvas shows the model's input grid enlarged; a stroke adds ink to the cells it passes.
function drawInputCanvas() {
  const canvas = $("draw-canvas");
  paintImage(canvas.getContext("2d"), state.input, canvas.width, canvas.height);
}

function cellAt(event) {
  const canvas = $("draw-canvas");
  const rect = canvas.getBoundingClientRect();
  return [
    ((event.clientY - rect.top) / rect.height) * state.image.h,
    ((event.clientX - rect.left) / rect.width) * state.image.w,
  ];
}

function ink(event) {
  const [y, x] = cellAt(event);
  const { h, w } = state.image;
  const [lo, hi] = state.range;
  const radius = Math.max(0.8, Math.min(h, w) / 10);
  for (let r = Math.floor(y - radius - 1); r <= Math.ceil(y + radius); r += 1) {
    for (let c = Math.floor(x - radius - 1); c <= Math.ceil(x + radius); c += 1) {
      if (r < 0 || c < 0 || r >= h || c >= w) continue;
      const d = Math.hypot(r + 0.5 - y, c + 0.5 - x);
      const amount = Math.max(0, 1 - d / (radius + 0.5)) * (hi - lo) * 0.6;
      const i = r * w + c;
      state.input[i] = Math.min(hi, state.input[i] + amount);
    }
  }
  drawInputCanvas();
}

function setUpDrawing() {
  const canvas = $("draw-canvas");
  let drawing = false;
  canvas.addEventListener("pointerdown", (e) => {
    if (!state.image) return;
    drawing = true;
    canvas.setPointerCapture(e.pointerId);
    state.inputId += 1;
    state.trace = new Map();
    document.querySelectorAll(".example").forEach((b) => b.classList.remove("chosen"));
    ink(e);
    scheduleUpdate();
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!drawing) return;
    ink(e);
    scheduleUpdate();
  });
  const stop = () => { drawing = false; };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);
  $("clear-canvas").addEventListener("click", () => setInput(new Array(state.model.d_in).fill(state.range[0])));
}

// -- live update ------------------------------------------------------------------------------------------

function scheduleUpdate() {
  document.body.dataset.busy = "1";
  clearTimeout(state.timer);
  state.timer = setTimeout(update, 60);
}

function noisyInput() {
  const sigma = noiseSigma();
  return state.input.map((v, i) => v + sigma * state.noiseBasis[i % state.noiseBasis.length]);
}

async function update() {
  const seq = ++state.seq;
  const m = state.model;
  const inputId = state.inputId;
  const cap = maxActive();
  const options = cap === null ? {} : { max_active: cap };
  const clean = state.input.slice();
  const noisy = noisyInput();
  const [encoded, denoised] = await Promise.allSettled([
    api(modelPath("encode"), { body: { inputs: [clean], return_reconstruction: true, ...options } }),
    api(modelPath("denoise"), { body: { inputs: [noisy], ...options } }),
  ]);
  if (seq !== state.seq) return; // a newer update is on its way
  const failure = [encoded, denoised].find((r) => r.status === "rejected");
  if (failure) showError(failure.reason, "Encoding failed");
  else clearError();
  if (encoded.status === "fulfilled") {
    const code = encoded.value.codes[0];
    const error = encoded.value.reconstruction_error[0];
    if (inputId === state.inputId) state.trace.set(cap === null ? 0 : cap, { l0: encoded.value.l0[0], error });
    renderCode(code, encoded.value.l0[0], m.d_served);
    renderReconstruction(clean, encoded.value.reconstructions[0], error);
    renderTradeoff(cap);
  } else {
    $("l0").textContent = "";
    $("code-chart").replaceChildren(svgText(320, 110, "No code: the request failed (see the message above).", "middle", "error-text"));
    $("tradeoff-chart").replaceChildren();
    placeholder($("recon-view"), "No reconstruction: the request failed (see the message above).", "error-inline");
    $("recon-error").textContent = "";
  }
  if (denoised.status === "fulfilled") {
    renderDenoise(clean, noisy, denoised.value.outputs[0], denoised.value.l0[0]);
  } else {
    placeholder($("denoise-view"), "No denoised output: the request failed (see the message above).", "error-inline");
    $("denoise-error").textContent = "";
  }
  await refreshStats(seq);
  if (seq === state.seq) document.body.dataset.busy = "0";
}

async function refreshStats(seq) {
  try {
    const stats = await api(modelPath("stats"));
    if (seq === state.seq) renderStats(stats);
  } catch (err) {
    if (seq === state.seq) placeholder($("stats-text"), `Cannot read the statistics: ${err.describe ? err.describe() : err}`, "error-inline");
  }
}

// -- drawing helpers --------------------------------------------------------------------------------------

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

const svgText = (x, y, text, anchor = "start", cls = "label") => svg("text", { x, y, "text-anchor": anchor, class: cls }, text);

function formatNumber(v) {
  if (!Number.isFinite(v)) return String(v);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(2) : String(Number(v.toPrecision(4)));
}

function paintImage(ctx, row, width, height) {
  const { h, w } = state.image;
  const [lo, hi] = state.range;
  const cw = width / w;
  const ch = height / h;
  for (let r = 0; r < h; r += 1) {
    for (let c = 0; c < w; c += 1) {
      const t = Math.min(1, Math.max(0, (row[r * w + c] - lo) / (hi - lo)));
      const g = Math.round(255 * (1 - t)); // dark ink on white
      ctx.fillStyle = `rgb(${g},${g},${g})`;
      ctx.fillRect(Math.floor(c * cw), Math.floor(r * ch), Math.ceil(cw), Math.ceil(ch));
    }
  }
}

function imageCanvas(row, size) {
  const canvas = Object.assign(document.createElement("canvas"), { width: size, height: size });
  paintImage(canvas.getContext("2d"), row, size, size);
  return canvas;
}

function figure(child, caption) {
  const f = document.createElement("figure");
  f.append(child, Object.assign(document.createElement("figcaption"), { textContent: caption }));
  return f;
}

function sparkline(row) {
  const el = svg("svg", { viewBox: "0 0 60 20", class: "spark" });
  const lo = Math.min(...row);
  const hi = Math.max(...row, lo + 1e-9);
  const pts = row.map((v, i) => `${(i / Math.max(row.length - 1, 1)) * 60},${18 - ((v - lo) / (hi - lo)) * 16}`);
  el.append(svg("polyline", { points: pts.join(" "), class: "line input" }));
  return el;
}

// A line plot of several rows over the input dimension: series = [{row, cls, label}].
function linePlot(series, width = 420, height = 200) {
  const el = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart" });
  const pad = { l: 40, r: 10, t: 22, b: 24 };
  const all = series.flatMap((s) => s.row);
  const lo = Math.min(...all);
  const hi = Math.max(...all, lo + 1e-9);
  const n = Math.max(...series.map((s) => s.row.length));
  const x = (i) => pad.l + (i / Math.max(n - 1, 1)) * (width - pad.l - pad.r);
  const y = (v) => height - pad.b - ((v - lo) / (hi - lo)) * (height - pad.t - pad.b);
  el.append(
    svg("line", { x1: pad.l, x2: width - pad.r, y1: y(Math.min(Math.max(0, lo), hi)), y2: y(Math.min(Math.max(0, lo), hi)), class: "axis" }),
    svgText(pad.l - 4, y(hi) + 4, formatNumber(hi), "end"),
    svgText(pad.l - 4, y(lo), formatNumber(lo), "end"),
    svgText(width - pad.r, height - 6, "input dimension", "end"),
  );
  series.forEach((s, k) => {
    el.append(svg("polyline", { points: s.row.map((v, i) => `${x(i)},${y(v)}`).join(" "), class: `line ${s.cls}` }));
    el.append(svg("rect", { x: pad.l + k * 110, y: 6, width: 10, height: 4, class: `key ${s.cls}` }));
    el.append(svgText(pad.l + 14 + k * 110, 12, s.label));
  });
  return el;
}

// -- renderers --------------------------------------------------------------------------------------------

function renderCode(code, l0, dServed) {
  const chart = $("code-chart");
  const W = 640, H = 220, pad = { l: 44, r: 10, t: 14, b: 30 };
  chart.replaceChildren();
  chart.dataset.l0 = String(l0);
  $("l0").textContent = `L0 = ${l0}`;
  const values = code.values;
  const lo = Math.min(0, ...values);
  const hi = Math.max(0, ...values, lo + 1e-9);
  const x = (i) => pad.l + (i / dServed) * (W - pad.l - pad.r);
  const y = (v) => H - pad.b - ((v - lo) / (hi - lo)) * (H - pad.t - pad.b);
  const barWidth = Math.max(2, ((W - pad.l - pad.r) / dServed) * 0.8);
  chart.append(
    svg("line", { x1: pad.l, x2: W - pad.r, y1: y(0), y2: y(0), class: "axis" }),
    svgText(pad.l - 4, y(hi) + 4, formatNumber(hi), "end"),
    svgText(pad.l - 4, y(lo), formatNumber(lo), "end"),
    svgText(pad.l, H - 8, "0"),
    svgText(W - pad.r, H - 8, `served latent index (d_served = ${dServed})`, "end"),
  );
  if (l0 === 0) chart.append(svgText(W / 2, H / 2, "empty code: no latent is active for this input", "middle"));
  code.indices.forEach((index, k) => {
    const v = values[k];
    const bar = svg("rect", {
      x: x(index + 0.5) - barWidth / 2, y: Math.min(y(v), y(0)), width: barWidth,
      height: Math.max(1, Math.abs(y(v) - y(0))), class: v >= 0 ? "bar" : "bar negative",
    });
    bar.append(svg("title", {}, `latent ${index}: ${formatNumber(v)}`));
    chart.append(bar);
  });
}

function renderReconstruction(input, output, error) {
  const view = $("recon-view");
  if (state.image) {
    view.replaceChildren(figure(imageCanvas(input, 150), "input"), figure(imageCanvas(output, 150), "reconstruction"));
  } else {
    view.replaceChildren(linePlot([
      { row: input, cls: "input", label: "input" },
      { row: output, cls: "output", label: "reconstruction" },
    ]));
  }
  $("recon-error").textContent = `reconstruction error ‖x − x̂‖² = ${formatNumber(error)} (normalised units; the model's held-out mean is ${formatNumber(state.model.metrics.mse)})`;
}

function rawMse(a, b) {
  return a.reduce((s, v, i) => s + (v - b[i]) ** 2, 0) / a.length;
}

function renderDenoise(clean, noisy, output, l0) {
  const view = $("denoise-view");
  if (state.image) {
    view.replaceChildren(
      figure(imageCanvas(noisy, 110), "noisy input"),
      figure(imageCanvas(output, 110), `denoised (L0 ${l0})`),
      figure(imageCanvas(clean, 110), "clean"),
    );
  } else {
    view.replaceChildren(linePlot([
      { row: noisy, cls: "noisy", label: "noisy input" },
      { row: output, cls: "output", label: `denoised (L0 ${l0})` },
      { row: clean, cls: "input", label: "clean" },
    ]));
  }
  $("denoise-error").textContent = `mean squared distance to the clean input (raw units): noisy ${formatNumber(rawMse(noisy, clean))} → denoised ${formatNumber(rawMse(output, clean))}`;
}

function renderTradeoff(current) {
  const chart = $("tradeoff-chart");
  const W = 320, H = 150, pad = { l: 58, r: 10, t: 10, b: 28 };
  chart.replaceChildren();
  const points = [...state.trace.entries()];
  const l0s = points.map(([, p]) => p.l0);
  const errs = points.map(([, p]) => p.error);
  const l0Max = Math.max(1, ...l0s);
  const eMax = Math.max(1e-9, ...errs);
  const x = (v) => pad.l + (v / l0Max) * (W - pad.l - pad.r);
  const y = (v) => H - pad.b - (v / eMax) * (H - pad.t - pad.b);
  chart.append(
    svg("line", { x1: pad.l, x2: W - pad.r, y1: y(0), y2: y(0), class: "axis" }),
    svg("line", { x1: pad.l, x2: pad.l, y1: y(0), y2: y(eMax), class: "axis" }),
    svgText(W - pad.r, H - 8, `L0 (max ${l0Max})`, "end"),
    svgText(pad.l - 4, y(eMax) + 8, formatNumber(eMax), "end"),
    svgText(pad.l - 4, y(0), "0", "end"),
  );
  const sorted = points.sort((a, b) => a[1].l0 - b[1].l0);
  chart.append(svg("polyline", { points: sorted.map(([, p]) => `${x(p.l0)},${y(p.error)}`).join(" "), class: "line trace" }));
  for (const [cap, p] of sorted) {
    const dot = svg("circle", { cx: x(p.l0), cy: y(p.error), r: cap === (current ?? 0) ? 5 : 3, class: cap === (current ?? 0) ? "dot current" : "dot" });
    dot.append(svg("title", {}, `max_active ${cap || "off"}: L0 ${p.l0}, error ${formatNumber(p.error)}`));
    chart.append(dot);
  }
}

function renderStats(stats) {
  const chart = $("stats-chart");
  const W = 320, H = 170, pad = { l: 36, r: 10, t: 10, b: 30 };
  chart.replaceChildren();
  const { l0, count } = stats.histogram;
  if (!l0.length) {
    chart.append(svgText(W / 2, H / 2, "no rows encoded yet", "middle"));
    $("stats-text").textContent = "";
    return;
  }
  const lMax = Math.max(...l0) + 1;
  const cMax = Math.max(...count);
  const x = (v) => pad.l + (v / lMax) * (W - pad.l - pad.r);
  const y = (c) => H - pad.b - (c / cMax) * (H - pad.t - pad.b);
  const barWidth = Math.max(2, ((W - pad.l - pad.r) / lMax) * 0.8);
  chart.append(
    svg("line", { x1: pad.l, x2: W - pad.r, y1: y(0), y2: y(0), class: "axis" }),
    svgText(pad.l - 4, y(cMax) + 8, String(cMax), "end"),
    svgText(pad.l, H - 10, "0"),
    svgText(W - pad.r, H - 10, `L0 (active latents) up to ${lMax - 1}`, "end"),
  );
  l0.forEach((v, k) => {
    const bar = svg("rect", { x: x(v + 0.5) - barWidth / 2, y: y(count[k]), width: barWidth, height: Math.max(1, y(0) - y(count[k])), class: "bar stat" });
    bar.append(svg("title", {}, `L0 ${v}: ${count[k]} rows`));
    chart.append(bar);
  });
  $("stats-text").textContent = `Last ${stats.rows} rows served by this process (window ${stats.window}, ${stats.rows_total} since start), mean L0 ${formatNumber(stats.l0_mean)}: ${l0.length > 1 ? "different inputs use different numbers of latents" : `every row used ${l0[0]} latents`}.`;
}

// -- randomness (seeded, so the noise and the screenshots are reproducible) --------------------------------

function hashString(text) {
  let h = 2166136261;
  for (const ch of text) h = Math.imul(h ^ ch.charCodeAt(0), 16777619);
  return h >>> 0;
}

function gaussianVector(n, seed) {
  let s = seed || 1;
  const uniform = () => { // mulberry32
    s = (s + 0x6d2b79f5) | 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return Array.from({ length: n }, () => Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform()));
}

// -- start ------------------------------------------------------------------------------------------------

function start() {
  $("key-form").addEventListener("submit", onKeySubmit);
  $("change-key").addEventListener("click", () => askForKey(""));
  $("model-select").addEventListener("change", (e) => selectModel(e.target.value));
  $("use-vector").addEventListener("click", onUseVector);
  for (const id of ["max-active", "noise"]) {
    $(id).addEventListener("input", () => { showSliderValues(); scheduleUpdate(); });
  }
  setUpDrawing();
  loadModels();
}

start();
