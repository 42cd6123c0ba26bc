// encodeq dashboard: uploads, live jobs (server-sent events), queues, workers, DLQ, playback;
// the timeline of task runs is timeline.js.
// Manifests (GET /api/jobs) are the truth; events only move things along between two reads.
// Every API call carries the token (Authorization: Bearer). It arrives once in the link that
// `encodeq serve` prints (http://HOST:PORT/#token=...: a fragment never reaches a server), is kept
// in sessionStorage (this tab only, gone when it closes) and removed from the address bar. The two
// requests that cannot carry a header get tickets: the event stream (POST /api/tickets/events) and
// the <video> element (the job's links.master_playlist).
"use strict";

const QUEUE_COLOURS = {
  "encodeq.control": "#0891b2", "encodeq.encode": "#2563eb", "encodeq.encode.high": "#7c3aed", "encodeq.encode.express": "#0d9488", "encodeq.dlq": "#dc2626",
};
const JOBS_EVERY_MS = 5000;
const DLQ_EVERY_MS = 4000;
const HISTORY = 180;
const TOKEN_KEY = "encodeq-token";
const RECONNECT_MS = 2000;

const state = {
  config: { max_upload_bytes: Infinity, queues: [] },
  jobs: new Map(), // job_id -> manifest (with live progress folded in)
  history: [], // queue depth samples
  chunks: new Map(), // job_id -> Map(chunk index -> {state, worker, straggler}), chunked mode
};

const $ = (selector, root = document) => root.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "style") node.style.cssText = value; // CSSOM: allowed by the CSP, unlike markup
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// --- the token --------------------------------------------------------------------------------
function takeTokenFromUrl() {
  const params = new URLSearchParams(window.location.hash.slice(1));
  const t = params.get("token");
  if (!t) return;
  sessionStorage.setItem(TOKEN_KEY, t);
  params.delete("token");
  const rest = params.toString();
  // Out of the address bar, the history and any screenshot of it.
  history.replaceState(null, "", window.location.pathname + window.location.search + (rest ? `#${rest}` : ""));
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function authHeaders() {
  const t = token();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

function askForToken(message) {
  $("#token-row").hidden = false;
  $("#token-note").textContent = message;
  $("#token").focus();
}

function setupToken() {
  $("#token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const t = $("#token").value.trim();
    if (!t) return;
    sessionStorage.setItem(TOKEN_KEY, t);
    window.location.reload();
  });
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    askForToken("The server refused the token: enter the one `encodeq serve` printed.");
  }
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (!response.ok) {
    const err = (body && body.error) || { code: String(response.status), message: response.statusText };
    throw Object.assign(new Error(err.message), { code: err.code, status: response.status });
  }
  return body;
}

// --- uploads ----------------------------------------------------------------------------------
function uploadFile(file) {
  const bar = el("progress", { max: "100", value: "0" });
  const status = el("span", { class: "status", text: "uploading…" });
  $("#uploads").prepend(el("li", { "data-upload": file.name }, el("span", { text: file.name }), bar, status));
  if (file.size > state.config.max_upload_bytes) {
    status.textContent = `too large: the limit is ${state.config.max_upload_bytes} bytes`;
    status.classList.add("error");
    return;
  }
  const form = new FormData();
  form.append("file", file, file.name);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", `/api/uploads?priority=${encodeURIComponent($("#priority").value)}`);
  for (const [key, value] of Object.entries(authHeaders())) xhr.setRequestHeader(key, value);
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) bar.value = Math.round((e.loaded / e.total) * 100);
  };
  xhr.upload.onload = () => { status.textContent = "storing…"; };
  xhr.onload = () => {
    let body = null;
    try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
    if (xhr.status === 202 && body) {
      bar.value = 100;
      status.textContent = `queued as ${body.job_id}`;
      mergeJob(body);
      renderJobs();
    } else {
      if (xhr.status === 401) askForToken("The server refused the token.");
      const err = (body && body.error) || { message: `HTTP ${xhr.status}` };
      status.textContent = `refused: ${err.message}`;
      status.classList.add("error");
    }
  };
  xhr.onerror = () => {
    status.textContent = "upload failed (connection closed)";
    status.classList.add("error");
  };
  xhr.send(form);
}

function setupUpload() {
  const input = $("#file");
  input.addEventListener("change", () => {
    for (const file of input.files) uploadFile(file);
    input.value = "";
  });
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    for (const file of e.dataTransfer.files) uploadFile(file);
  });
}

// --- jobs -------------------------------------------------------------------------------------
function mergeJob(manifest) {
  const known = state.jobs.get(manifest.job_id);
  if (known) {
    // A record is written every few seconds; a progress event may be ahead of it.
    const before = new Map(known.renditions.map((r) => [r.name, r]));
    for (const r of manifest.renditions) {
      const old = before.get(r.name);
      if (old && r.state === "encoding" && old.state === "encoding") {
        r.progress = Math.max(r.progress, old.progress || 0);
        r.fps = r.fps ?? old.fps;
        r.speed = r.speed ?? old.speed;
      }
    }
  }
  state.jobs.set(manifest.job_id, manifest);
}

async function refreshJobs() {
  try {
    const body = await api("/api/jobs?limit=50");
    for (const manifest of body.jobs) mergeJob(manifest);
    renderJobs();
    $("#jobs-note").hidden = true;
  } catch (e) {
    // S3 away (503 storage_unavailable) or the server restarting: the jobs stay as last read,
    // the page says so, and the next refresh tries again.
    const note = $("#jobs-note");
    note.textContent = `${e.code === "storage_unavailable" ? "S3 does not answer" : "jobs unavailable"}: showing them as last read; retrying (${e.message})`;
    note.hidden = false;
  }
}

async function refreshJob(jobId) {
  try {
    mergeJob(await api(`/api/jobs/${jobId}`));
    renderJobs();
  } catch (e) {
    console.warn("job", jobId, e);
  }
}

function renditionLine(r) {
  const pct = Math.max(0, Math.min(100, Math.round(r.state === "completed" ? 100 : r.progress || 0)));
  const who = [r.worker || "", r.fps ? `${Math.round(r.fps)} fps` : "", r.speed ? `${r.speed.toFixed(1)}x` : ""]
    .filter(Boolean).join(" · ");
  return el(
    "div", { class: "rendition", "data-rendition": r.name, "data-rendition-state": r.state },
    el("span", { text: r.name }),
    el("progress", { max: "100", value: String(pct), "data-progress": String(pct) }),
    el("span", { text: `${pct}%` }),
    el("span", { class: "who", text: who || r.state, title: r.worker || "" }),
    r.live_playlist && r.state !== "completed" ? el("span", { class: "live", text: "playable" }) : "",
  );
}

function jobRow(job) {
  const row = el("tr", { "data-job-id": job.job_id, "data-state": job.state });
  row.append(el("td", { class: "id" }, el("div", { text: job.job_id.slice(0, 12) }),
    el("div", { class: "muted", text: job.source.filename })));
  row.append(el("td", {}, el("span", { class: `state ${job.state}`, text: job.state })));
  const cell = el("td", {});
  for (const r of job.renditions) cell.append(renditionLine(r));
  if (!job.renditions.length && !job.error) cell.append(el("span", { class: "muted", text: "waiting for the probe" }));
  const chunks = state.chunks.get(job.job_id);
  if (chunks && chunks.size) cell.append(chunkStrip(chunks));
  if (job.error) cell.append(el("div", { class: "error", text: `${job.error.code}: ${job.error.message}` }));
  row.append(cell);
  const actions = el("td", {});
  const live = job.state === "encoding" && job.renditions.some((r) => r.live_playlist);
  if (job.state === "completed" || live) {
    // While it encodes, the lowest rung plays already (its playlist grows: HLS EVENT).
    const play = el("button", { "data-action": "play", text: live ? "play (live)" : "play" });
    play.addEventListener("click", () => playJob(job));
    actions.append(play);
  } else if (!["failed", "cancelled"].includes(job.state)) {
    const cancel = el("button", { "data-action": "cancel", text: "cancel" });
    cancel.addEventListener("click", () => cancelJob(job.job_id, cancel));
    actions.append(cancel);
  }
  row.append(actions);
  return row;
}

async function cancelJob(jobId, button) {
  // The server records it and tells every worker; the job.cancelled event redraws the row.
  button.disabled = true;
  try {
    mergeJob(await api(`/api/jobs/${jobId}/cancel`, { method: "POST" }));
  } catch (e) {
    button.disabled = false;
    button.title = e.message;
  }
  renderJobs();
}

function chunkStrip(chunks) {
  // One mark per chunk (who encodes it); a straggler, offered to a second worker, is flagged.
  const strip = el("div", { class: "chunks" });
  for (const [index, c] of [...chunks.entries()].sort((a, b) => a[0] - b[0])) {
    strip.append(el("span", {
      class: `chunk ${c.state}${c.straggler ? " straggler" : ""}`,
      "data-chunk": String(index), "data-chunk-state": c.state,
      "data-straggler": c.straggler ? "true" : "false",
      title: `chunk ${index}: ${c.state} ${c.worker || ""}${c.straggler ? " (straggler, offered again)" : ""}`,
    }));
  }
  return strip;
}

function applyChunkEvent(event) {
  if (!state.chunks.has(event.job_id)) state.chunks.set(event.job_id, new Map());
  const chunks = state.chunks.get(event.job_id);
  const c = chunks.get(event.chunk) || { state: "pending", worker: null, straggler: false };
  if (event.event === "chunk.started") Object.assign(c, { state: "encoding", worker: event.worker });
  else if (event.event === "chunk.completed") Object.assign(c, { state: "completed", worker: event.worker });
  else if (event.event === "chunk.straggler") c.straggler = true;
  chunks.set(event.chunk, c);
  renderJobs();
}

function renderJobs() {
  const body = $("#job-rows");
  const jobs = [...state.jobs.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : -1)).slice(0, 50);
  const old = new Map([...body.children].map((tr) => [tr.dataset.jobId, tr]));
  const rows = jobs.map((job) => {
    const fresh = jobRow(job);
    const previous = old.get(job.job_id);
    return previous && previous.outerHTML === fresh.outerHTML ? previous : fresh;
  });
  body.replaceChildren(...rows);
  $("#no-jobs").hidden = jobs.length > 0;
}

function applyEvent(event) {
  const job = state.jobs.get(event.job_id);
  if (event.event && event.event.startsWith("chunk.")) return applyChunkEvent(event);
  if (event.event === "rendition.progress" || event.event === "rendition.started") {
    if (!job) return refreshJob(event.job_id);
    let r = job.renditions.find((x) => x.name === event.rendition);
    if (!r) return refreshJob(event.job_id);
    r.state = "encoding";
    r.worker = event.worker || r.worker;
    if (event.event === "rendition.started") r.progress = 0;
    else {
      r.progress = Math.max(r.progress || 0, event.progress || 0);
      r.fps = event.fps;
      r.speed = event.speed;
    }
    if (job.state !== "encoding") job.state = "encoding";
    renderJobs();
  } else if (event.event && event.event.startsWith("job.") || event.event === "rendition.completed") {
    refreshJob(event.job_id);
    if (event.event === "job.failed") setTimeout(refreshDlq, 500);
  }
}

// --- playback ---------------------------------------------------------------------------------
let player = null; // the hls.js instance playing, if any

async function playJob(job) {
  const video = $("#video");
  $("#player").hidden = false;
  $("#player-title").textContent = `${job.source.filename} (${job.job_id.slice(0, 12)})`;
  video.dataset.jobId = job.job_id;
  $("#player-note").textContent = job.state === "completed"
    ? "Segments come straight from object storage through presigned URLs."
    : "Still encoding: this plays the lowest rung from the start while the rest is encoded.";
  let links;
  try {
    // The master playlist URL carries a playback ticket: the player sends no Authorization header.
    links = (await api(`/api/jobs/${job.job_id}`)).links;
  } catch (e) {
    $("#player-note").textContent = `cannot play: ${e.message}`;
    return;
  }
  const source = links.master_playlist;
  video.poster = links.poster || "";
  if (player) player.destroy();
  player = null;
  resetQuality();
  if (window.Hls && Hls.isSupported()) {
    // hls.js (vendored from its npm package); from 0 even while the playlist is still growing.
    player = new Hls({ enableWorker: false, startPosition: 0 });
    player.on(Hls.Events.MANIFEST_PARSED, (_, data) => offerQualities(data.levels));
    player.on(Hls.Events.LEVEL_SWITCHED, (_, data) => showLevel(data.level));
    player.loadSource(source);
    player.attachMedia(video);
    video.dataset.player = "hls.js";
  } else {
    video.src = source;
    video.dataset.player = "native";
  }
  video.play().catch((e) => { $("#player-note").textContent = `cannot play: ${e.message}`; });
  $("#player").scrollIntoView({ block: "nearest" });
}

// The quality menu: "auto" (hls.js picks by bandwidth) or one rung, each as the master lists it.
function resetQuality() {
  const select = $("#quality");
  select.replaceChildren(new Option("auto", "-1"));
  select.disabled = true;
  $("#playing-level").textContent = "";
  delete $("#video").dataset.level;
}

function offerQualities(levels) {
  const select = $("#quality");
  levels.forEach((level, i) => {
    const kbps = Math.round(level.bitrate / 1000);
    select.add(new Option(`${level.height}p (${kbps} kb/s)`, String(i)));
  });
  select.disabled = levels.length < 2;
}

function showLevel(index) {
  const level = player && player.levels[index];
  if (!level) return;
  $("#video").dataset.level = String(index);
  $("#playing-level").textContent = `playing ${level.height}p`;
}

$("#quality").addEventListener("change", (e) => {
  if (player) player.currentLevel = Number(e.target.value); // -1: back to automatic
});

// --- queues and workers -----------------------------------------------------------------------
function addSample(sample) {
  state.history.push(sample);
  if (state.history.length > HISTORY) state.history.splice(0, state.history.length - HISTORY);
  drawQueues();
  // Back-pressure: at the bound, the server refuses uploads (503 busy) until the workers catch up.
  const waiting = state.config.queues.filter((n) => n !== "encodeq.dlq").reduce((sum, n) => sum + (sample[n] || 0), 0);
  const bound = state.config.max_queued_tasks;
  const busy = $("#busy");
  busy.hidden = !(bound && waiting >= bound);
  busy.textContent = `Busy: ${waiting} tasks wait in the work queues (bound ${bound}); uploads are refused until the workers catch up.`;
}

function drawQueues() {
  const canvas = $("#queue-chart");
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  const names = state.config.queues;
  const samples = state.history;
  const top = Math.max(4, ...samples.flatMap((s) => names.map((n) => s[n] || 0)));
  ctx.strokeStyle = "#e3e6eb";
  ctx.beginPath();
  ctx.moveTo(0, height - 0.5);
  ctx.lineTo(width, height - 0.5);
  ctx.stroke();
  ctx.fillStyle = "#6b7280";
  ctx.font = "10px sans-serif";
  ctx.fillText(String(top), 2, 10);
  for (const name of names) {
    ctx.strokeStyle = QUEUE_COLOURS[name] || "#999";
    ctx.lineWidth = 2;
    ctx.beginPath();
    samples.forEach((s, i) => {
      const x = width - ((samples.length - 1 - i) / (HISTORY - 1)) * width; // newest on the right
      const y = height - 2 - ((s[name] || 0) / top) * (height - 14);
      if (i === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
  const last = samples[samples.length - 1] || {};
  const legend = $("#queue-now");
  legend.replaceChildren(...names.map((n) => el("li", { "data-queue": n, "data-depth": String(last[n] ?? "") },
    el("i", { style: `background:${QUEUE_COLOURS[n] || "#999"}` }),
    `${n}: ${last[n] ?? "–"}`)));
}

let workersPending = false;
async function refreshWorkers() {
  if (workersPending) return;
  workersPending = true;
  try {
    const body = await api("/api/workers");
    const list = $("#worker-list");
    if (!body.workers.length) {
      list.replaceChildren(el("li", { class: "muted", text: "none seen yet" }));
    } else {
      list.replaceChildren(...body.workers.map((w) => el("li", { "data-worker": w.name },
        el("div", { class: "name", text: w.name }),
        el("div", { class: "muted", text: `${w.doing || "idle"} · ${w.tasks_done} done` }))));
    }
  } catch (e) {
    console.warn("workers", e);
  } finally {
    setTimeout(() => { workersPending = false; }, 1000);
  }
}

// --- the DLQ ----------------------------------------------------------------------------------
async function refreshDlq() {
  try {
    const body = await api("/api/dlq");
    const rows = body.messages.map(dlqRow);
    $("#dlq-rows").replaceChildren(...rows);
    $("#dlq-count").textContent = `(${body.messages.length} in ${body.queue})`;
  } catch (e) {
    $("#dlq-note").textContent = `cannot read the DLQ: ${e.message}`;
  }
}

function dlqRow(m) {
  const exception = m.exc_type ? `${m.exc_type}: ${m.error || ""}` : m.why;
  const detail = el("details", {}, el("summary", { text: exception }));
  if (m.traceback_tail) detail.append(el("pre", { text: m.traceback_tail }));
  const replay = el("button", { "data-action": "replay", text: "replay" });
  replay.addEventListener("click", () => dlqAction(m.id, "replay", replay));
  const purge = el("button", { "data-action": "purge", text: "purge" });
  purge.addEventListener("click", () => {
    if (confirm(`Purge ${m.id}? It is exported to a file first.`)) dlqAction(m.id, "purge", purge);
  });
  return el("tr", { "data-dlq-id": m.id, "data-dlq-job": m.job_id || "", "data-reason": m.reason },
    el("td", { class: "id", text: m.id }),
    el("td", { text: m.task || "–" }),
    el("td", { class: "id", text: (m.job_id || "–").slice(0, 12) }),
    el("td", { text: m.code ? `${m.reason} (${m.code})` : m.reason }),
    el("td", {}, detail),
    el("td", { text: m.died_at ? new Date(m.died_at).toLocaleTimeString() : "–" }),
    el("td", { text: String(m.replays) }),
    el("td", {}, replay, " ", purge));
}

async function dlqAction(id, action, button) {
  button.disabled = true;
  try {
    const result = await api(`/api/dlq/${id}/${action}`, { method: "POST" });
    $("#dlq-note").textContent = action === "replay"
      ? `replayed ${id} -> ${Object.keys(result.targets).join(", ")}`
      : `purged ${id} (exported to ${result.export})`;
  } catch (e) {
    $("#dlq-note").textContent = `${action} ${id}: ${e.message}`;
    button.disabled = false;
  }
  refreshDlq();
}

// --- events -----------------------------------------------------------------------------------
let events = null;
async function connectEvents() {
  // EventSource sends no headers: a short-lived ticket rides in the URL instead of the token, and
  // every reconnect asks for a new one (so the browser's own retry, with a stale ticket, is off).
  const live = $("#live");
  if (events) events.close();
  let ticket;
  try {
    ticket = (await api("/api/tickets/events", { method: "POST" })).ticket;
  } catch (e) {
    live.dataset.live = "false";
    live.textContent = "offline";
    if (e.status !== 401) setTimeout(connectEvents, RECONNECT_MS);
    return;
  }
  const source = new EventSource(`/api/events?ticket=${encodeURIComponent(ticket)}`);
  events = source;
  source.onopen = () => { live.dataset.live = "true"; live.textContent = "live"; };
  source.onerror = () => {
    live.dataset.live = "false";
    live.textContent = "reconnecting…";
    source.close();
    if (events === source) setTimeout(connectEvents, RECONNECT_MS);
  };
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.event === "queues") {
      timelineView.clock(event.t); // the server's clock, which the timeline lays bars out against
      return addSample(event);
    }
    if (event.event === "hello") return;
    document.dispatchEvent(new CustomEvent("encodeq:event", { detail: event })); // fleet.js narrates
    if (event.event && event.event.startsWith("task.")) {
      timelineView.apply(event); // a task run: a bar on the timeline (timeline.js)
    } else {
      applyEvent(event);
      if (event.worker) refreshWorkers();
    }
  };
}

async function start() {
  takeTokenFromUrl();
  setupToken();
  setupUpload();
  if (!token()) {
    askForToken("Enter the API token, or open the link `encodeq serve` printed.");
    return;
  }
  try {
    state.config = await api("/api/config");
  } catch (e) {
    console.warn("config", e);
    if (e.status === 401) return;
  }
  connectEvents();
  try {
    const queues = await api("/api/queues");
    for (const sample of queues.history.slice(-HISTORY)) state.history.push(sample);
    drawQueues();
  } catch (e) {
    console.warn("queues", e);
  }
  await Promise.all([timelineView.start(), refreshJobs(), refreshWorkers(), refreshDlq()]);
  setInterval(refreshJobs, JOBS_EVERY_MS);
  setInterval(refreshDlq, DLQ_EVERY_MS);
  document.body.dataset.ready = "true";
}

start();
