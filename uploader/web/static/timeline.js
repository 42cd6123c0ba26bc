// encodeq dashboard: the live timeline of task runs, the picture of competing consumers.
// One lane per worker (`encodeq worker` process), a row per node of it that has run something
// (w1@host is the express lane, w1@host.control, .high, .bulk the nodes it forked), a bar per run
// of a task: coloured by job, labelled by what it works on, laid out by time over a sliding
// window. Runs come from GET /api/timeline (what happened before the page opened) and the task.*
// events of the SSE stream (core/timeline.py keeps the same model on the server). Lanes also come
// from GET /api/fleet when `encodeq up` runs the workers (404 `no_fleet` otherwise: lanes from
// runs only). DOM, not canvas: every bar is an element a test (or a person's inspector) can query.
// Everything is inside one closure (the page's scripts share one global scope); app.js calls
// timelineView.start(), .apply(event) and .clock(t); this file uses app.js's el(), api() and $.
"use strict";

const timelineView = (() => {
  const TIMELINE_WINDOW_MS = 180_000; // the last 3 minutes, or since the first bar if shorter
  const TIMELINE_MIN_SPAN_MS = 10_000; // a first bar does not fill the whole width at once
  const TIMELINE_EVERY_MS = 500;
  const TIMELINE_KEEP = 500; // runs kept in the page, as the server keeps
  const NODE_ORDER = ["", "control", "high", "bulk", "express"]; // rows: the worker's own node first
  const QUEUE_ROWS = {
    "encodeq.encode.express": "express", "encodeq.control": "control",
    "encodeq.encode.high": "high", "encodeq.encode": "bulk",
  };
  const OUTCOME_TEXT = {
    running: "running",
    ok: "done (acked)",
    retry: "retry: published again with a countdown",
    dead: "dead-lettered: rejected to the DLQ",
    failed: "failed: rejected, back in the queue",
    cancelled: "cancelled: its job was cancelled",
    lost: "lost: its worker died before acking; the broker redelivered it",
  };
  const REDELIVERED_TEXT = "redelivered: the previous holder died before acking";

  const timeline = {
    runs: new Map(), // run key -> run (core/timeline.py's fields)
    bars: new Map(), // run key -> its .bar element
    lanes: new Map(), // worker hostname -> its lane: {element, head, name, state, rows, idle}
    fleet: null, // Map worker hostname -> {name, hostname, pid, state} under `encodeq up`; else null
    skewMs: 0, // the server's clock minus this one: bars are laid out in the server's time
  };

  // --- the model (as core/timeline.py) ------------------------------------------------------------
  function timelineKey(run) {
    return `${run.task_id}|${run.worker}|${run.pid}|${run.started_at}`;
  }

  function workerOfNode(node) {
    // w1@host.bulk -> w1@host (the worker's own node is named as the worker)
    for (const suffix of NODE_ORDER.filter(Boolean).concat("node")) {
      if (node.endsWith(`.${suffix}`)) return node.slice(0, -suffix.length - 1);
    }
    return node;
  }

  function addRun(run) {
    run.run = timelineKey(run);
    timeline.runs.delete(run.run);
    timeline.runs.set(run.run, run);
    while (timeline.runs.size > TIMELINE_KEEP) timeline.runs.delete(timeline.runs.keys().next().value);
    return run;
  }

  function openRun(event) {
    // The run a finish ends: the latest still open of this task id on the same pool process.
    let found = null;
    for (const run of timeline.runs.values()) {
      if (run.task_id === event.task_id && run.outcome === "running" && run.worker === event.worker
        && run.pid === event.pid) found = run;
    }
    return found;
  }

  function runFromEvent(event, startedAt) {
    return addRun({
      task_id: event.task_id, task: event.task, job_id: event.job_id, label: event.label,
      worker: event.worker, worker_hostname: event.worker_hostname || workerOfNode(event.worker || "?"),
      pid: event.pid, queue: event.queue, lesson: event.lesson || null, redelivered: Boolean(event.redelivered),
      retries: event.retries || 0, started_at: startedAt, finished_at: null, outcome: "running",
    });
  }

  function timelineApply(event) {
    if (!event.task_id) return;
    if (event.event === "task.started") {
      runFromEvent(event, event.time);
    } else if (event.event === "task.finished") {
      let run = openRun(event);
      if (!run) {
        const began = new Date(Date.parse(event.time) - 1000 * (event.runtime_s || 0));
        // In the server's spelling (core/timeline.py), so both name the run alike.
        const iso = Number.isNaN(began.getTime()) ? event.time : began.toISOString().replace("Z", "+00:00");
        run = runFromEvent(event, iso);
      }
      Object.assign(run, {
        finished_at: event.time, outcome: event.outcome || "ok", countdown: event.countdown ?? null,
        code: event.code ?? null, reason: event.reason ?? null, runtime_s: event.runtime_s ?? null,
      });
    }
  }

  function timelineClock(serverSeconds) {
    if (typeof serverSeconds === "number") timeline.skewMs = serverSeconds * 1000 - Date.now();
  }

  async function loadTimeline() {
    try {
      const body = await api("/api/timeline");
      timelineClock(body.now);
      for (const run of body.runs) {
        const known = timeline.runs.get(run.run);
        // An event may have got here first; a finished run wins over the same run still open.
        if (!known || (known.outcome === "running" && run.outcome !== "running")) addRun(run);
      }
    } catch (e) {
      console.warn("timeline", e);
    }
  }

  function timelineFleet(doc) {
    // fleet.js polls GET /api/fleet under `encodeq up` and hands each answer here; under
    // `encodeq serve` alone it never does, and the lanes come from the runs.
    timeline.fleet = new Map((doc.workers || []).map((w) => [w.hostname || w.name, w]));
  }

  // --- the picture ----------------------------------------------------------------------------------
  function jobColour(jobId) {
    if (!jobId) return "hsl(0 0% 62%)";
    let hash = 0;
    for (const ch of jobId) hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
    return `hsl(${hash % 360} 62% 46%)`;
  }

  function displayedOutcome(run) {
    // An open run whose task id started again later was lost: its holder died, the broker
    // redelivered the message elsewhere.
    if (run.outcome !== "running") return run.outcome;
    return run.next ? "lost" : "running";
  }

  function barTitle(run, outcome, orphan) {
    const secs = ((run.end - run.start) / 1000).toFixed(1);
    const lines = [
      `${run.label || run.task} (${run.task}) · job ${(run.job_id || "–").slice(0, 12)}`,
      `${OUTCOME_TEXT[outcome] || outcome} · ${secs} s`,
      `${run.worker} · pid ${run.pid} · ${run.queue || ""}`,
    ];
    if (run.retries) lines.push(`attempt ${run.retries + 1} (retried ${run.retries}x before)`);
    if (outcome === "retry" && run.countdown != null) lines.push(`retry in ${run.countdown} s: ${run.reason || ""}`);
    if (outcome === "dead" || outcome === "failed") lines.push(`reason: ${run.code || ""} ${run.reason || ""}`);
    if (run.redelivered) lines.push(REDELIVERED_TEXT);
    if (orphan) lines.push("its worker is gone: the broker will redeliver the message");
    return lines.join("\n");
  }

  function marker(kind, text, title) {
    return el("i", { class: `mark ${kind}`, text, title, "aria-label": title });
  }

  function drawBar(run, outcome, orphan, view) {
    let bar = timeline.bars.get(run.run);
    if (!bar) {
      bar = el("div", { class: "bar", "data-task-id": run.task_id, "data-run": run.run });
      timeline.bars.set(run.run, bar);
    }
    const attrs = {
      "data-job": run.job_id || "", "data-kind": run.task || "", "data-label": run.label || "",
      "data-outcome": outcome, "data-redelivered": String(Boolean(run.redelivered)),
      "data-retries": String(run.retries || 0), "data-orphan": String(orphan),
    };
    const signature = JSON.stringify(attrs); // redrawn inside only when something changed
    if (bar.timelineSignature !== signature) {
      for (const [key, value] of Object.entries(attrs)) bar.setAttribute(key, value);
      bar.timelineSignature = signature;
      const marks = [];
      if (run.redelivered) marks.push(marker("redelivered", "⟲", REDELIVERED_TEXT));
      if (outcome === "retry") marks.push(marker("retry", "↻", `retry in ${run.countdown ?? "?"} s`));
      if (outcome === "dead") marks.push(marker("dead", "✕", `dead-lettered: ${run.code || ""} ${run.reason || ""}`));
      bar.replaceChildren(...marks, el("span", { class: "text", text: run.label || run.task }));
      bar.style.backgroundColor = jobColour(run.job_id); // the outcome's pattern goes over it
    }
    bar.title = barTitle(run, outcome, orphan);
    const left = Math.max(0, (run.start - view.from) / view.span);
    const right = Math.min(1, (run.end - view.from) / view.span);
    bar.style.left = `${(left * 100).toFixed(3)}%`;
    bar.style.width = `${(Math.max(0, right - left) * 100).toFixed(3)}%`;
    return bar;
  }

  function syncChildren(parent, children) {
    // Touches the DOM only when the children or their order changed: an element moved loses the
    // tooltip a person is reading, and the page redraws twice a second.
    const current = parent.children;
    if (current.length !== children.length || children.some((c, i) => current[i] !== c)) {
      parent.replaceChildren(...children);
    }
  }

  function laneFor(worker, fleetWorker, lesson) {
    let lane = timeline.lanes.get(worker);
    if (!lane) {
      const name = el("span", { class: "name" });
      const state = el("span", { class: "lane-state" });
      const head = el("div", { class: "lane-head" }, name, state);
      lane = {
        element: el("div", { class: "lane", "data-worker": worker }, head), head, name, state,
        rows: new Map(), idle: el("div", { class: "idle muted", text: "idle: no task in the window" }),
      };
      timeline.lanes.set(worker, lane);
    }
    const state = fleetWorker ? fleetWorker.state : "";
    lane.element.dataset.state = state || "seen";
    // A lesson's worker runs in the lesson's scratch vhost (console/learn/event_relay.py).
    if (lesson) lane.element.dataset.lesson = lesson;
    lane.name.textContent = fleetWorker ? `${fleetWorker.name} · ${worker}` : lesson ? `lesson ${lesson} · ${worker}` : worker;
    lane.state.textContent = state;
    lane.state.className = `lane-state ${state}`;
    return lane;
  }

  function rowLabel(node, runs) {
    const suffix = node.slice(workerOfNode(node).length + 1);
    return suffix || QUEUE_ROWS[runs[runs.length - 1].queue] || "node";
  }

  function nodeRank(node) {
    const rank = NODE_ORDER.indexOf(node.slice(workerOfNode(node).length + 1));
    return rank < 0 ? NODE_ORDER.length : rank;
  }

  function drawRow(lane, node, runs, context) {
    let row = lane.rows.get(node);
    if (!row) {
      const label = el("span", { class: "row-label", title: node });
      const track = el("div", { class: "track" });
      row = { element: el("div", { class: "row", "data-node": node }, label, track), label, track };
      lane.rows.set(node, row);
    }
    // One track per pool process of the node: a process runs one task at a time.
    const pids = [...new Set(runs.map((r) => r.pid))];
    row.label.textContent = rowLabel(node, runs);
    row.track.style.height = `${pids.length * 20}px`;
    const bars = runs.map((run) => {
      const outcome = displayedOutcome(run);
      const bar = drawBar(run, outcome, context.gone && outcome === "running", context.view);
      bar.style.top = `${pids.indexOf(run.pid) * 20}px`;
      return bar;
    });
    syncChildren(row.track, bars);
    return row.element;
  }

  function timelineWindow(runs) {
    const now = Date.now() + timeline.skewMs;
    const first = Math.min(now, ...runs.map((r) => r.start));
    const from = Math.max(now - TIMELINE_WINDOW_MS, Math.min(first, now - TIMELINE_MIN_SPAN_MS));
    return { from, span: now - from, now };
  }

  function visibleRuns() {
    // Each run's start and end in ms; an open run ends now, or, lost, where its task id started
    // again (``next``: the broker gave the message to another holder then).
    const now = Date.now() + timeline.skewMs;
    const starts = new Map(); // task id -> the starts of its runs
    for (const run of timeline.runs.values()) {
      run.start = Date.parse(run.started_at);
      if (!starts.has(run.task_id)) starts.set(run.task_id, []);
      starts.get(run.task_id).push(run.start);
    }
    const runs = [];
    for (const run of timeline.runs.values()) {
      if (Number.isNaN(run.start)) continue;
      const later = starts.get(run.task_id).filter((t) => t > run.start);
      run.next = later.length ? Math.min(...later) : null;
      const open = run.next === null ? now : run.next;
      run.end = Math.max(run.start, run.finished_at ? Date.parse(run.finished_at) : open);
      if (run.end >= now - TIMELINE_WINDOW_MS) runs.push(run);
    }
    return runs;
  }

  function drawAxis(view) {
    const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => {
      const ago = Math.round((view.span * (1 - f)) / 1000);
      return el("span", { style: `left:${f * 100}%`, text: ago ? `-${ago}s` : "now" });
    });
    $("#timeline-axis").replaceChildren(el("span", { class: "row-label" }), el("div", { class: "ticks" }, ...ticks));
  }

  function renderTimeline() {
    const runs = visibleRuns();
    const view = timelineWindow(runs);
    const byWorker = new Map();
    const fleetNames = new Map(); // a fleet worker's name -> its hostname, should a run spell it otherwise
    for (const [hostname, w] of timeline.fleet || new Map()) {
      byWorker.set(hostname, new Map());
      fleetNames.set(w.name, hostname);
    }
    for (const run of runs) {
      let worker = run.worker_hostname || workerOfNode(run.worker || "?");
      if (!byWorker.has(worker)) worker = fleetNames.get(worker.split("@")[0]) || worker;
      if (!byWorker.has(worker)) byWorker.set(worker, new Map());
      const nodes = byWorker.get(worker);
      if (!nodes.has(run.worker)) nodes.set(run.worker, []);
      nodes.get(run.worker).push(run);
    }
    const lanes = [];
    for (const [worker, nodes] of [...byWorker.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1))) {
      const fleetWorker = timeline.fleet && timeline.fleet.get(worker);
      const gone = Boolean(fleetWorker && ["killed", "exited"].includes(fleetWorker.state));
      const lesson = [...nodes.values()].flat().find((run) => run.lesson)?.lesson;
      const lane = laneFor(worker, fleetWorker, lesson);
      const sorted = [...nodes.entries()].sort((a, b) => nodeRank(a[0]) - nodeRank(b[0]));
      const rows = sorted.map(([node, nodeRuns]) => drawRow(lane, node, nodeRuns, { gone, view }));
      syncChildren(lane.element, [lane.head, ...(rows.length ? rows : [lane.idle])]);
      for (const node of [...lane.rows.keys()]) if (!nodes.has(node)) lane.rows.delete(node);
      lanes.push(lane.element);
    }
    // What left the window is forgotten (a run, a node, a worker that ran nothing since).
    const drawn = new Set(runs.map((run) => run.run));
    for (const key of [...timeline.bars.keys()]) if (!drawn.has(key)) timeline.bars.delete(key);
    for (const worker of [...timeline.lanes.keys()]) if (!byWorker.has(worker)) timeline.lanes.delete(worker);
    syncChildren($("#timeline-lanes"), lanes);
    $("#timeline-empty").hidden = lanes.length > 0;
    drawAxis(view);
  }

  function drawLegend() {
    const items = ["running", "ok", "retry", "dead", "lost", "cancelled"].map((outcome) =>
      el("li", { title: OUTCOME_TEXT[outcome] }, el("i", { class: "swatch", "data-legend": outcome }), outcome));
    items.push(el("li", { title: REDELIVERED_TEXT }, el("i", { class: "mark redelivered", text: "⟲" }), "redelivered"));
    items.push(el("li", { class: "muted", text: "colour: one per job · a track per pool process" }));
    $("#timeline-legend").replaceChildren(...items);
  }

  async function timelineStart() {
    drawLegend();
    await loadTimeline();
    renderTimeline();
    setInterval(renderTimeline, TIMELINE_EVERY_MS);
  }

  return { start: timelineStart, apply: timelineApply, clock: timelineClock, fleet: timelineFleet };
})();
