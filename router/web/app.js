// Inkwell web page: plain browser JavaScript, no dependencies (works offline).
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;
const KEYS = { user: "inkwell.user_id", api: "inkwell.api_key", admin: "inkwell.admin_key" };

// ---- settings kept in this browser ------------------------------------------------------------
// The keys live only as long as the tab (sessionStorage): closing it forgets them, and they are
// not left on disk for the next user of this browser profile. The user id is no secret and stays.
const storeOf = (name) => (name === KEYS.user ? localStorage : sessionStorage);
const saved = {
  get: (name) => storeOf(name).getItem(name) || "",
  set: (name, value) => (value ? storeOf(name).setItem(name, value) : storeOf(name).removeItem(name)),
};
// earlier versions of the page kept the keys in localStorage: forget them there
localStorage.removeItem(KEYS.api);
localStorage.removeItem(KEYS.admin);

function randomId(prefix) {
  const bytes = new Uint8Array(6);
  crypto.getRandomValues(bytes);
  return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function takeKeysFromFragment() {
  // the page address may carry #api_key=...&admin_key=... (keys never reach the server that way);
  // keep them in this browser and clean the address bar
  const params = new URLSearchParams(location.hash.slice(1));
  let found = false;
  for (const [param, name] of [["api_key", KEYS.api], ["admin_key", KEYS.admin], ["user_id", KEYS.user]]) {
    if (params.get(param)) { saved.set(name, params.get(param)); found = true; }
  }
  if (found) history.replaceState(null, "", location.pathname + location.search);
}

function userId() { return $("user-id").value.trim() || saved.get(KEYS.user); }
function apiKey() { return $("api-key").value.trim(); }
function adminKey() { return $("admin-key").value.trim(); }

function setupKeys() {
  takeKeysFromFragment();
  if (!saved.get(KEYS.user)) saved.set(KEYS.user, randomId("web-"));
  $("user-id").value = saved.get(KEYS.user);
  $("api-key").value = saved.get(KEYS.api);
  $("admin-key").value = saved.get(KEYS.admin);
  const bind = (input, name) => input.addEventListener("input", () => {
    saved.set(name, input.value.trim());
    refreshAll();
  });
  bind($("user-id"), KEYS.user);
  bind($("api-key"), KEYS.api);
  bind($("admin-key"), KEYS.admin);
  $("keys-toggle").addEventListener("click", () => toggleKeys());
  $("keys").addEventListener("submit", (event) => event.preventDefault());
  if (!apiKey() || !adminKey()) toggleKeys(true);
}

function toggleKeys(open) {
  const panel = $("keys");
  const show = open === undefined ? panel.hidden : open;
  panel.hidden = !show;
  $("keys-toggle").setAttribute("aria-expanded", String(show));
}

// ---- HTTP -------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function call(path, { method = "GET", body, headers = {}, key } = {}) {
  const all = { ...headers };
  if (key) all["X-API-Key"] = key;
  let response;
  try {
    response = await fetch(path, { method, body, headers: all, cache: "no-store" });
  } catch (err) {
    throw new ApiError(0, "network", "The server did not answer. Is `inkwell up` still running?");
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { message: text.slice(0, 300) }; }
  if (!response.ok) {
    const message = (data && (data.message || data.detail)) || `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, data && data.code, typeof message === "string" ? message : JSON.stringify(message));
  }
  return { data, response };
}

function notice(el, text, kind) {
  el.textContent = text;
  el.className = "notice" + (kind ? " " + kind : "");
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

const pct = (x, digits = 1) => (x === null || x === undefined || Number.isNaN(Number(x)) ? "—" : `${(100 * Number(x)).toFixed(digits)} %`);

// ---- drawing pad --------------------------------------------------------------------------------
const pad = { canvas: null, ctx: null, drawing: false, inked: false, last: null, blob: null, prediction: null };

function clearPad() {
  const { ctx, canvas } = pad;
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  pad.inked = false;
  pad.blob = null;
  pad.prediction = null;
  $("answer").dataset.state = "empty";
  $("answer-digit").textContent = "?";
  $("answer-meta").textContent = "Draw, then release the mouse.";
  renderBars(null);
  $("teach").hidden = true;
  notice($("teach-result"), "");
}

function padPoint(event) {
  const rect = pad.canvas.getBoundingClientRect();
  return {
    x: ((event.clientX - rect.left) * pad.canvas.width) / rect.width,
    y: ((event.clientY - rect.top) * pad.canvas.height) / rect.height,
  };
}

function setupPad() {
  pad.canvas = $("pad");
  pad.ctx = pad.canvas.getContext("2d");
  pad.ctx.lineCap = "round";
  pad.ctx.lineJoin = "round";
  pad.ctx.lineWidth = 20;
  pad.ctx.strokeStyle = "#111827";
  clearPad();
  const c = pad.canvas;
  c.addEventListener("pointerdown", (event) => {
    if (pad.prediction) clearPad(); // a new drawing after an answer starts afresh
    pad.drawing = true;
    pad.last = padPoint(event);
    c.setPointerCapture(event.pointerId);
    dot(pad.last);
  });
  c.addEventListener("pointermove", (event) => {
    if (!pad.drawing) return;
    const point = padPoint(event);
    pad.ctx.beginPath();
    pad.ctx.moveTo(pad.last.x, pad.last.y);
    pad.ctx.lineTo(point.x, point.y);
    pad.ctx.stroke();
    pad.last = point;
    pad.inked = true;
  });
  const end = () => {
    if (!pad.drawing) return;
    pad.drawing = false;
    if (pad.inked) predictDigit();
  };
  c.addEventListener("pointerup", end);
  c.addEventListener("pointercancel", end);
  $("clear").addEventListener("click", clearPad);
  $("read").addEventListener("click", () => predictDigit());
  const digits = $("teach-digits");
  for (let d = 0; d <= 9; d++) {
    const button = el("button", { "data-digit": String(d), text: String(d), title: `Teach: this is a ${d}` });
    button.addEventListener("click", () => teach(d));
    digits.append(button);
  }
  $("confirm").addEventListener("click", () => pad.prediction && teach(pad.prediction.digit));
}

function dot(point) {
  pad.ctx.beginPath();
  pad.ctx.arc(point.x, point.y, pad.ctx.lineWidth / 2, 0, 2 * Math.PI);
  pad.ctx.fillStyle = pad.ctx.strokeStyle;
  pad.ctx.fill();
  pad.inked = true;
}

const padBlob = () => new Promise((resolve) => pad.canvas.toBlob(resolve, "image/png"));

async function predictDigit() {
  if (!pad.inked) {
    $("answer-meta").textContent = "Draw a digit first.";
    return;
  }
  $("answer-meta").textContent = "Reading…";
  pad.blob = await padBlob();
  try {
    const headers = { "Content-Type": "image/png" };
    if (userId()) headers["X-User-Id"] = userId();
    const { data } = await call("/v1/digits/predict", { method: "POST", body: pad.blob, headers });
    showPrediction(data);
  } catch (err) {
    pad.prediction = null;
    $("answer").dataset.state = "error";
    $("answer-digit").textContent = "!";
    $("answer-meta").textContent = err.message;
    renderBars(null);
  }
}

function showPrediction(p) {
  pad.prediction = p;
  const answer = $("answer");
  answer.dataset.state = "answered";
  answer.dataset.variant = p.variant;
  $("answer-digit").textContent = String(p.digit);
  const meta = $("answer-meta");
  meta.replaceChildren(
    `${pct(p.confidence)} sure · answered by `,
    el("span", { class: `variant ${p.variant}`, text: p.variant }),
    ` model v${p.model_version}`,
  );
  renderBars(p.probabilities, p.digit);
  $("confirm-digit").textContent = String(p.digit);
  $("teach").hidden = false;
  notice($("teach-result"), "");
}

function renderBars(probabilities, top) {
  const bars = $("bars");
  bars.replaceChildren();
  for (let d = 0; d <= 9; d++) {
    const p = probabilities ? probabilities[d] : 0;
    const fill = el("div", { class: "fill" });
    fill.style.height = `${Math.max(1, Math.round(p * 100))}%`;
    const bar = el(
      "div",
      { class: "bar" + (d === top ? " top" : ""), "data-digit": String(d), title: `${d}: ${pct(p, 2)}` },
      el("span", { class: "pct", text: probabilities ? `${Math.round(p * 100)}` : "" }),
      fill,
      el("span", { class: "lbl", text: String(d) }),
    );
    bars.append(bar);
  }
}

async function teach(label) {
  const result = $("teach-result");
  if (!pad.blob) { notice(result, "Draw and read a digit first.", "err"); return; }
  if (!apiKey()) {
    toggleKeys(true);
    notice(result, "Teaching stores a labelled sample and needs the API key (Keys & user).", "err");
    return;
  }
  const form = new FormData();
  form.append("image", pad.blob, "digit.png");
  form.append("label", String(label));
  form.append("user_id", userId());
  form.append("idempotency_key", randomId("web-sample-"));
  notice(result, "Sending…");
  try {
    const { data } = await call("/v1/samples", { method: "POST", body: form, key: apiKey() });
    const repeat = data.created ? "" : " (you sent this one before)";
    notice(
      result,
      `Thanks! Stored as sample #${data.sample_id}, label ${data.label}, user ${data.user_id}: ${data.state}${repeat}.`,
      "ok",
    );
    refreshSamples();
  } catch (err) {
    notice(result, `Not stored: ${err.message}`, "err");
  }
}

// ---- cheque amounts ----------------------------------------------------------------------------
function setupCheque() {
  const input = $("cheque-file");
  input.addEventListener("change", () => input.files[0] && readCheque(input.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) readCheque(e.dataTransfer.files[0]);
  });
}

function loadImage(file) {
  return new Promise((resolve, reject) => {
    const url = URL.createObjectURL(file);
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("This file is not an image the browser can show."));
    image.src = url;
  });
}

async function readCheque(file) {
  const out = $("cheque-result");
  out.dataset.state = "reading";
  out.textContent = "Reading…";
  chequeRead.file = file;
  chequeRead.reading = null;
  $("correct").hidden = true;
  notice($("correct-result"), "");
  let image = null;
  try {
    image = await loadImage(file);
    drawCheque(image, []);
  } catch (err) {
    $("cheque-view").hidden = true; // the server still gets it and says what is wrong
  }
  try {
    const headers = { "Content-Type": file.type || "application/octet-stream" };
    if (userId()) headers["X-User-Id"] = userId();
    const { data } = await call("/v1/cheques/read", { method: "POST", body: file, headers });
    const boxes = chequeBoxes(data, image ? image.naturalHeight : 0);
    if (image) drawCheque(image, boxes, data.field_box);
    showCheque(data, boxes);
    chequeRead.reading = data;
    $("correct-amount").value = "";
    $("correct").hidden = false;
    if (data.needs_review) refreshReviews();
  } catch (err) {
    out.dataset.state = "error";
    out.replaceChildren(el("span", { class: "notice err", text: err.message }));
  }
}

// Character boxes in image pixels. The service gives each character's columns `x: [x0, x1]`;
// its rows are the amount field's: the whole image, or `field_box` when a whole cheque was sent.
function chequeBoxes(data, imageHeight) {
  const field = data.field_box; // [x0, y0, x1, y1] or null
  const top = field ? field[1] : 0;
  const height = field ? field[3] - field[1] : imageHeight || 0;
  return (data.characters || [])
    .filter((c) => Array.isArray(c.x) && c.x.length === 2)
    .map((c) => ({
      text: String(c.digit),
      confidence: c.confidence,
      box: { x: c.x[0], y: top, w: c.x[1] - c.x[0], h: height },
    }));
}

function drawCheque(image, boxes, field) {
  $("cheque-view").hidden = false;
  const canvas = $("cheque-canvas");
  const ctx = canvas.getContext("2d");
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  ctx.drawImage(image, 0, 0);
  const line = Math.max(2, Math.round(image.naturalHeight / 60));
  ctx.lineWidth = line;
  ctx.font = `bold ${Math.max(12, Math.round(image.naturalHeight / 7))}px system-ui, sans-serif`;
  ctx.textBaseline = "bottom";
  canvas.dataset.boxes = String(boxes.length);
  if (field) {
    ctx.setLineDash([line * 3, line * 2]);
    ctx.strokeStyle = "#677489";
    ctx.strokeRect(field[0], field[1], field[2] - field[0], field[3] - field[1]);
    ctx.setLineDash([]);
  }
  for (const { text, confidence, box } of boxes) {
    const unsure = confidence !== undefined && confidence < 0.8;
    ctx.strokeStyle = unsure ? "#c26a00" : "#1d6fd6";
    ctx.strokeRect(box.x, box.y, box.w, box.h);
    const label = text;
    const width = ctx.measureText(label).width + 8;
    const height = parseInt(ctx.font.match(/(\d+)px/)[1], 10) + 2;
    const top = Math.max(height, box.y);
    ctx.fillStyle = unsure ? "#c26a00" : "#1d6fd6";
    ctx.fillRect(box.x - line / 2, top - height, width, height);
    ctx.fillStyle = "#ffffff";
    ctx.fillText(label, box.x + 4 - line / 2, top);
  }
}

function showCheque(data, boxes) {
  const out = $("cheque-result");
  out.dataset.state = "read";
  const amount = data.amount || "";
  const review = data.needs_review;
  const children = [el("div", { class: "amount", text: amount === "" ? "(no amount found)" : amount })];
  const line = el("div", { class: "muted" });
  const parts = [];
  if (data.confidence !== undefined) parts.push(`confidence ${pct(data.confidence)}`);
  if (data.model_version) parts.push(`model v${data.model_version}`);
  if (data.layout) parts.push(data.layout === "cheque" ? "amount box found on the cheque" : "amount field");
  line.append(parts.join(" · "));
  if (review !== undefined) {
    line.append(el("span", { class: `review ${review ? "yes" : "no"}`, text: review ? "needs human review" : "auto-accepted" }));
  }
  children.push(line);
  const chars = el("div", { class: "chars" });
  for (const c of boxes) chars.append(el("span", { text: `${c.text} ${c.confidence !== undefined ? pct(c.confidence, 0) : ""}` }));
  children.push(chars);
  out.replaceChildren(...children);
}

// ---- reviewed cheques: corrections and the review queue -----------------------------------------
// A correction of any reading, or of one waiting in the review queue, is uploaded with the image,
// the typed amount and the reading's id to POST /v1/cheques/samples: a reviewed sample.
const chequeRead = { file: null, reading: null };

async function uploadReview(image, amount, readingId, out) {
  if (!apiKey()) {
    toggleKeys(true);
    notice(out, "Saving a correction stores a reviewed sample and needs the API key (Keys & user).", "err");
    return null;
  }
  if (!amount.trim()) { notice(out, "Type the amount the image shows first.", "err"); return null; }
  const form = new FormData();
  form.append("image", image, "amount");
  form.append("amount", amount.trim());
  form.append("user_id", userId());
  form.append("idempotency_key", randomId("web-review-"));
  if (readingId) form.append("reading_id", readingId);
  notice(out, "Sending…");
  try {
    const { data } = await call("/v1/cheques/samples", { method: "POST", body: form, key: apiKey() });
    const state = data.state === "quarantined" ? `quarantined (${data.reason})` : data.state;
    const repeat = data.created ? "" : " (sent before)";
    notice(
      out,
      `Stored as reviewed sample #${data.sample_id}, amount ${data.amount}, user ${data.user_id}: ${state}${repeat}.`,
      data.state === "quarantined" ? "err" : "ok",
    );
    return data;
  } catch (err) {
    notice(out, `Not stored: ${err.message}`, "err");
    return null;
  }
}

function setupCorrections() {
  $("correct").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!chequeRead.file) return;
    const readingId = chequeRead.reading ? chequeRead.reading.reading_id : null;
    const data = await uploadReview(chequeRead.file, $("correct-amount").value, readingId, $("correct-result"));
    if (data) refreshReviews();
  });
}

function dataUrlBlob(url) {
  // decoded here rather than fetched: the page asks no one but its own server for anything
  const [head, body] = url.split(",", 2);
  const type = (head.match(/^data:([^;]+)/) || [])[1] || "application/octet-stream";
  const bytes = Uint8Array.from(atob(body), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type });
}

function reviewItem(review) {
  const input = el("input", {
    inputmode: "numeric",
    autocomplete: "off",
    placeholder: review.amount,
    "aria-label": "amount the image shows",
  });
  const form = el("form", {}, input, el("button", { type: "submit", class: "primary", text: "Save" }));
  const item = el(
    "li",
    { class: "review-item", "data-reading": review.reading_id },
    el("img", { src: review.image, alt: "amount field waiting for review" }),
    el(
      "div",
      { class: "read" },
      "read ",
      el("b", { text: review.amount }),
      ` · confidence ${pct(review.confidence)} · model v${review.model_version} (${review.variant})`,
    ),
    form,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = await uploadReview(dataUrlBlob(review.image), input.value, review.reading_id, $("review-result"));
    if (data) {
      item.remove();
      refreshReviews();
    }
  });
  return item;
}

function renderReviews(reviews) {
  const list = $("reviews");
  $("review-count").textContent = `${reviews.length}${reviews.length >= REVIEW_LIMIT ? "+" : ""} waiting`;
  const shown = [...list.querySelectorAll(".review-item")];
  const same = shown.length === reviews.length && shown.every((item, i) => item.dataset.reading === reviews[i].reading_id);
  if (same && reviews.length) return; // leave the inputs alone while someone types
  if (!reviews.length) {
    list.replaceChildren(el("li", { class: "empty", text: "Nothing waiting for review." }));
    return;
  }
  const byId = new Map(shown.map((item) => [item.dataset.reading, item]));
  list.replaceChildren(...reviews.map((r) => byId.get(r.reading_id) || reviewItem(r)));
}

const REVIEW_LIMIT = 24;

async function refreshReviews() {
  const list = $("reviews");
  if (!apiKey()) {
    $("review-locked").hidden = false;
    list.hidden = true;
    $("review-count").textContent = "";
    return;
  }
  try {
    const { data } = await call(`/v1/cheques/reviews?limit=${REVIEW_LIMIT}`, { key: apiKey() });
    $("review-locked").hidden = true;
    list.hidden = false;
    renderReviews(data.reviews || []);
  } catch (err) {
    $("review-locked").hidden = false;
    list.hidden = true;
    $("review-locked").textContent = err.status === 401 ? `API key not accepted: ${err.message}` : err.message;
  }
}

// ---- rollout -----------------------------------------------------------------------------------
const rollout = { status: null };

function setupRollout() {
  const actions = {
    "act-promote": ["promote", null],
    "act-pause": ["pause", null],
    "act-resume": ["resume", null],
    "act-rollback": ["rollback", JSON.stringify({ reason: "rolled back from the web page" })],
  };
  for (const [id, [action, body]] of Object.entries(actions)) {
    $(id).addEventListener("click", () => rolloutAction(action, body));
    // the same buttons for the cheque model's own rollout (`?model=cheques`)
    $(`c${id}`).addEventListener("click", () => rolloutAction(action, body, "cheques"));
  }
}

async function rolloutAction(action, body, model = "digits") {
  const cheques = model === "cheques";
  const msg = $(cheques ? "cheque-rollout-notice" : "rollout-notice");
  notice(msg, `${action}…`);
  try {
    const headers = body ? { "Content-Type": "application/json" } : {};
    const path = `/admin/rollout/${action}` + (cheques ? "?model=cheques" : "");
    const { data } = await call(path, { method: "POST", body, headers, key: adminKey() });
    if (cheques) renderChequeRollout(data);
    else renderRollout(data);
    notice(msg, `${action}: done`, "ok");
    refreshOverview();
  } catch (err) {
    notice(msg, `${action} refused: ${err.message}`, "err");
  }
}

async function refreshRollout() {
  if (!adminKey()) {
    $("rollout-locked").hidden = false;
    $("rollout-body").hidden = true;
    setPhase("locked");
    return;
  }
  try {
    const { data } = await call("/admin/rollout", { key: adminKey() });
    $("rollout-locked").hidden = true;
    $("rollout-body").hidden = false;
    renderRollout(data);
  } catch (err) {
    $("rollout-locked").hidden = false;
    $("rollout-body").hidden = true;
    $("rollout-locked").textContent = err.status === 401 ? `Admin key not accepted: ${err.message}` : err.message;
    setPhase("unknown");
  }
  try {
    const { data } = await call("/admin/rollout/events?limit=8", { key: adminKey() });
    renderEvents(data);
  } catch { /* the status above already says what is wrong */ }
}

function setPhase(phase) {
  const badge = $("phase");
  badge.dataset.phase = phase;
  badge.textContent = phase === "locked" ? "locked" : phase.replace("_", " ");
}

function renderRollout(s) {
  const changed = rollout.status && rollout.status.phase !== s.phase;
  rollout.status = s;
  if (changed) refreshOverview(); // aliases and gate tags move with the phase
  setPhase(s.phase);
  $("r-canary").textContent = s.canary_version ? `v${s.canary_version}` : "none";
  const serving = (s.served_versions || {}).stable;
  const stable = s.stable_version || serving;
  $("r-stable").textContent = stable ? `v${stable}` : "—";
  $("r-weight").textContent = `${Number(s.weight || 0).toFixed(0)} %`;
  $("weight-fill").style.width = `${Math.min(100, Number(s.weight || 0))}%`;
  const steps = $("weight-steps");
  steps.replaceChildren(...(s.steps || []).filter((w) => w < 100).map((w) => {
    const tick = el("i", { title: `${w} %` });
    tick.style.left = `${w}%`;
    return tick;
  }));
  $("r-interval").textContent = s.analysis_interval_s ? `${s.analysis_interval_s} s` : "—";
  $("r-source").textContent = s.metrics_source || "—";
  enableActions("act", s.phase);
  renderVerdict(s.last_verdict || s.analysis, s);
  renderServing(s.served_versions);
  if ("cheques" in s) renderChequeRollout(s.cheques); // an action's answer has no `cheques`
}

// A rollout's buttons (ids `${prefix}-promote`, …) as its phase allows them.
function enableActions(prefix, phase) {
  const live = phase === "canary" || phase === "paused";
  $(`${prefix}-promote`).disabled = !live;
  $(`${prefix}-rollback`).disabled = !live;
  $(`${prefix}-pause`).disabled = phase !== "canary";
  $(`${prefix}-resume`).disabled = phase !== "paused";
}

// The cheque model's own rollout (null while INKWELL_ROUTER_CHEQUE_ROLLOUT is off).
function renderChequeRollout(c) {
  const badge = $("cheque-phase");
  const box = $("cheque-verdict");
  const phase = c ? c.phase : "off";
  badge.dataset.phase = phase;
  badge.textContent = phase.replace("_", " ");
  const serving = c && c.served_versions ? c.served_versions.stable : null;
  const stable = c ? c.stable_version || serving : null;
  $("rc-canary").textContent = c && c.canary_version ? `v${c.canary_version}` : "none";
  $("rc-stable").textContent = stable ? `v${stable}` : "—";
  $("rc-weight").textContent = `${Number((c && c.weight) || 0).toFixed(0)} %`;
  enableActions("cact", phase);
  const v = c && c.last_verdict;
  box.dataset.result = v ? v.result : "none";
  if (!c) {
    box.textContent = "Off: cheque reads follow the digit split (INKWELL_ROUTER_CHEQUE_ROLLOUT).";
  } else if (!v) {
    box.textContent = c.reason ? c.reason : "No analysis yet.";
  } else {
    const reads = `${Math.round(v.canary_requests || 0)} canary reads`;
    box.textContent = `${v.result}: ${v.reason} (${reads})`;
  }
}

function renderVerdict(v, s) {
  const box = $("verdict");
  const body = $("checks").querySelector("tbody");
  body.replaceChildren();
  if (!v) {
    box.dataset.result = "none";
    box.textContent = s.reason ? s.reason : "No analysis yet.";
    return;
  }
  box.dataset.result = v.result;
  const requests = `${Math.round(v.canary_requests || 0)} canary requests`;
  const summary = v.result === "inconclusive" ? `waiting for data (${requests} so far)` : `${v.reason} (${requests})`;
  box.textContent = `${v.result}: ${summary}` + (s.last_error ? ` · last error: ${s.last_error}` : "");
  for (const c of v.checks || []) {
    const fmt = checkFormat(c.name);
    body.append(el("tr", { "data-check": c.name, title: c.detail || "" },
      el("td", { text: c.name.replaceAll("_", " ") }),
      el("td", { text: fmt(c.canary) }),
      el("td", { text: fmt(c.baseline) }),
      el("td", { text: fmt(c.limit) }),
      el("td", { class: `status-${c.status}`, text: c.status.replace("_", " "), title: c.detail || "" }),
    ));
  }
}

// How each analysis check's numbers read best: latencies in ms, rates and accuracies in %.
function checkFormat(name) {
  const missing = (x) => x === null || x === undefined;
  if (name.includes("latency")) return (x) => (missing(x) ? "—" : `${(1000 * x).toFixed(1)} ms`);
  if (name === "circuit_breaker") return (x) => (missing(x) ? "—" : String(x));
  return (x) => (missing(x) ? "—" : pct(x, 1));
}

function renderEvents(events) {
  const list = $("events");
  list.replaceChildren();
  if (!events.length) list.append(el("li", { class: "muted", text: "No rollout yet." }));
  for (const e of events) {
    const when = new Date(e.at * 1000).toLocaleTimeString();
    list.append(el("li", {},
      el("time", { text: when }),
      `${e.from_phase} → ${e.to_phase} · v${e.canary_version} · ${Number(e.weight).toFixed(0)} % · ${e.reason}`,
    ));
  }
}

const SERVING_PHASES = ["canary", "paused", "promoting"];

function renderServing(served) {
  if (!served) return;
  const set = (id, variant, version, note) => {
    const pill = $(id);
    pill.textContent = version ? `${variant} v${version}${note}` : `${variant} —`;
    pill.classList.toggle("off", !version || note !== "");
  };
  set("pill-stable", "stable", served.stable, "");
  // the canary service keeps its last model loaded after a rollout ends; it gets no traffic
  const phase = rollout.status && rollout.status.phase;
  const idle = phase !== undefined && phase !== null && !SERVING_PHASES.includes(phase);
  set("pill-canary", "canary", served.canary, idle ? " · no traffic" : "");
}

async function refreshServing() {
  try {
    const { data } = await call("/readyz");
    renderServing(data.served_versions);
  } catch {
    renderServing({ stable: null, canary: null });
  }
}

// ---- versions, trainer, samples -----------------------------------------------------------------
async function refreshOverview() {
  if (!adminKey()) {
    $("trainer-status").textContent = "Enter the admin key to see the trainer.";
    return;
  }
  try {
    const { data } = await call("/ui/api/overview", { key: adminKey() });
    renderVersions(data.models.digits.versions);
    renderTrainer(data.trainer);
  } catch (err) {
    $("trainer-status").textContent = err.message;
  }
}

function renderVersions(versions) {
  const body = $("versions").querySelector("tbody");
  body.replaceChildren();
  if (!versions.length) body.append(el("tr", {}, el("td", { colspan: "4", class: "muted", text: "no versions" })));
  for (const v of versions) {
    const aliases = el("td");
    for (const a of v.aliases) aliases.append(el("span", { class: `alias ${a === "stable" || a === "canary" ? a : "other"}`, text: a }));
    const tags = v.tags || {};
    const gate = tags.rolled_back ? "rolled back" : tags.validation_status || "—";
    body.append(el("tr", { "data-version": v.version },
      el("td", { text: `v${v.version}` }),
      aliases,
      el("td", { text: gate }),
      el("td", { text: tags.test_accuracy ? pct(tags.test_accuracy, 2) : "—" }),
    ));
  }
}

function renderTrainer(trainer) {
  const box = $("trainer-status");
  if (!trainer.available) { box.textContent = trainer.error; return; }
  const s = trainer.status || {};
  const rows = [];
  const active = s.active_job;
  rows.push(["state", active ? `retraining: ${active.phase || active.status} (job #${active.job_id})` : "waiting for samples"]);
  const pending = s.pending || {};
  const trigger = pending.would_trigger ? `retrain due (${pending.would_trigger})` : "not yet";
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  rows.push(["pending", `${plural(pending.count ?? 0, "sample")} from ${plural(pending.users ?? 0, "user")} · ${trigger}`]);
  const outcome = s.last_outcome;
  const job = s.last_job;
  if (outcome) {
    const m = outcome.metrics || {};
    const acc = m.test_accuracy !== undefined ? ` · MNIST ${pct(m.test_accuracy, 2)} (stable ${pct(m.stable_test_accuracy, 2)})` : "";
    const held = m.holdout_accuracy !== undefined ? ` · new style ${pct(m.holdout_accuracy, 1)} (stable ${pct(m.stable_holdout_accuracy, 1)})` : "";
    rows.push(["last gate", `${outcome.status}${outcome.version ? " v" + outcome.version : ""}${acc}${held}`]);
    if (outcome.reasons && outcome.reasons.length) rows.push(["gate said", outcome.reasons.join("; ")]);
    const q = Object.entries(outcome.quarantined || {});
    if (q.length) rows.push(["quarantined", q.map(([r, n]) => `${r}: ${n}`).join(", ")]);
  } else if (job) {
    rows.push(["last job", `#${job.job_id} ${job.status}${job.outcome ? " · " + job.outcome : ""}${job.version ? " v" + job.version : ""}`]);
  } else {
    rows.push(["last gate", "no retrain yet"]);
  }
  if (s.last_error) rows.push(["last error", s.last_error]);
  box.replaceChildren(...rows.map(([k, v]) =>
    el("div", { class: "kv" }, el("span", { text: k }), el("b", { text: String(v) }))));
}

async function refreshSamples() {
  if (!apiKey()) {
    $("learning-locked").hidden = false;
    $("learning-body").hidden = true;
    return;
  }
  try {
    const { data } = await call("/v1/samples/stats", { key: apiKey() });
    $("learning-locked").hidden = true;
    $("learning-body").hidden = false;
    const by = data.by_state || {};
    $("s-waiting").textContent = by.accepted ?? 0;
    $("s-trained").textContent = by.trained ?? 0;
    $("s-quarantined").textContent = by.quarantined ?? 0;
    $("s-users").textContent = Object.keys(data.by_user || {}).length;
    const reasons = $("reasons");
    const entries = Object.entries(data.quarantine_reasons || {});
    reasons.replaceChildren(...(entries.length
      ? entries.map(([r, n]) => el("li", { text: `${r}: ${n}` }))
      : [el("li", { class: "muted", text: "none" })]));
  } catch (err) {
    $("learning-locked").hidden = false;
    $("learning-body").hidden = true;
    $("learning-locked").textContent = err.status === 401 ? `API key not accepted: ${err.message}` : err.message;
  }
}

// ---- polling ------------------------------------------------------------------------------------
function refreshAll() {
  refreshServing();
  refreshRollout();
  refreshOverview();
  refreshSamples();
  refreshReviews();
}

function start() {
  setupKeys();
  setupPad();
  setupCheque();
  setupCorrections();
  setupRollout();
  refreshAll();
  let tick = 0;
  setInterval(() => {
    tick += 1;
    if (document.hidden) return;
    refreshServing();
    refreshRollout();
    if (tick % 2 === 0) { refreshOverview(); refreshSamples(); refreshReviews(); }
  }, POLL_MS);
}

document.addEventListener("DOMContentLoaded", start);
