// encodeq up: the fleet (scale, kill a worker) and the faults (cut S3, restart RabbitMQ, a poison
// upload), each narrated from what the system then does. Only under `encodeq up`: GET /api/fleet
// answers 404 `no_fleet` under `encodeq serve` alone, and this card stays hidden.
// Uses app.js's api(), el(), $ and uploadFile(); events arrive as `encodeq:event` DOM events.
"use strict";

const FLEET_EVERY_MS = 1000;
const NARRATION_MAX = 60;

const fleet = {
  managed: false,
  last: null, // the last GET /api/fleet
  watched: new Map(), // task_id -> what we narrate about it (held by a killed worker...)
  poisonJobs: new Set(),
};

function narrate(kind, text) {
  const list = $("#narration");
  const time = new Date().toLocaleTimeString();
  list.prepend(el("li", { "data-kind": kind }, el("time", { text: time }), el("span", { text: ` ${text}` })));
  while (list.children.length > NARRATION_MAX) list.lastChild.remove();
}

async function fleetCall(path, body, method = "POST") {
  try {
    const options = method === "DELETE" ? { method } : { method, headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}) };
    return await api(path, options);
  } catch (e) {
    narrate("refused", `refused: ${e.message}`);
    return null;
  }
}

function renderFleet(doc) {
  const before = fleet.last;
  fleet.last = doc;
  timelineView.fleet(doc); // the timeline's lanes: every worker, idle or killed too
  $("#fleet-target").textContent = `${doc.target} wanted · ${doc.consumers ?? "?"} consuming the encode queue`;
  $("#fleet-workers").replaceChildren(...(doc.workers || []).map((w) => {
    const kill = el("button", { class: "kill", "data-kill": w.name, text: "kill -9" });
    kill.disabled = !["running", "starting"].includes(w.state);
    kill.addEventListener("click", () => killWorker(w.name));
    return el("li", { "data-worker": w.name, "data-state": w.state },
      el("span", { class: "name", text: w.hostname }),
      el("span", { class: `wstate ${w.state}`, text: w.state }),
      el("span", { class: "muted", text: `pid ${w.pid}${w.restarts ? ` · restarted ${w.restarts}x` : ""}` }),
      kill);
  }));
  const storage = doc.storage || {};
  $("#cut-s3").disabled = Boolean(storage.cut_until);
  $("#restore-s3").hidden = !storage.cut_until;
  $("#fleet-storage").textContent = storage.cut_until ? `S3 cut until ${new Date(storage.cut_until).toLocaleTimeString()}` : `S3 ${storage.kind} at ${storage.endpoint}`;
  const broker = doc.broker || {};
  $("#restart-broker").disabled = Boolean(broker.refusal) || broker.state === "restarting";
  $("#restart-broker").title = broker.refusal || "rabbitmqctl stop_app, then start_app";
  $("#fleet-broker").textContent = `RabbitMQ ${broker.state}${broker.detail ? ` (${broker.detail})` : ""}`;
  if (before) narrateFleetChanges(before, doc);
}

function narrateFleetChanges(before, doc) {
  const was = new Map((before.workers || []).map((w) => [w.name, w]));
  for (const w of doc.workers || []) {
    const old = was.get(w.name);
    if (old && w.restarts > old.restarts) narrate("worker", `${w.name} restarted by up (pid ${w.pid}, restart ${w.restarts})`);
    else if (old && old.state !== w.state && w.state === "exited") narrate("worker", `${w.name} died unasked: up restarts it after a backoff`);
    if (old && old.state !== w.state && w.state === "running") narrate("worker", `${w.name} consumes (all four nodes ready)`);
    if (!old) narrate("worker", `${w.name} starting (pid ${w.pid})`);
  }
  for (const name of was.keys()) {
    if (!(doc.workers || []).some((w) => w.name === name)) narrate("worker", `${name} stopped warm and left`);
  }
  const [was_s3, is_s3] = [before.storage || {}, doc.storage || {}];
  if (was_s3.cut_until && !is_s3.cut_until) narrate("storage", "S3 is back: the next retries succeed");
  const [was_mq, is_mq] = [before.broker || {}, doc.broker || {}];
  if (was_mq.state && was_mq.state !== is_mq.state) {
    if (is_mq.state === "up") narrate("broker", `RabbitMQ is back (${is_mq.detail}); workers reconnect on their own (broker_connection_retry) and unacked tasks are redelivered`);
    if (is_mq.state === "error") narrate("broker", `RabbitMQ restart failed: ${is_mq.detail}`);
  }
}

async function refreshFleet() {
  try {
    renderFleet(await api("/api/fleet"));
    if (!fleet.managed) {
      fleet.managed = true;
      $("#fleet").hidden = false;
    }
  } catch (e) {
    if (e.code === "no_fleet") return; // encodeq serve alone: nothing to manage
    $("#fleet-broker").textContent = `fleet unknown: ${e.message}`;
  }
  setTimeout(refreshFleet, FLEET_EVERY_MS);
}

function runningBars(worker) {
  // The timeline's open bars on this worker's lane(s): what it holds right now.
  return [...document.querySelectorAll(".lane")]
    .filter((lane) => (lane.dataset.worker || "").split("@")[0] === worker)
    .flatMap((lane) => [...lane.querySelectorAll('.bar[data-outcome="running"]')]);
}

async function killWorker(name) {
  const held = runningBars(name).map((bar) => ({ id: bar.dataset.taskId, label: `${bar.dataset.kind} ${bar.dataset.label || ""}`.trim() }));
  const done = await fleetCall(`/api/fleet/workers/${encodeURIComponent(name)}/kill`);
  if (!done) return;
  narrate("kill", `SIGKILL to ${name} (pid ${done.pid}): no warm shutdown, no ack. ` + (held.length ? `It held ${held.map((h) => h.label).join(", ")}. ` : "It held no task. ") + "RabbitMQ sees its connection drop and puts every unacked message back on its queue (late acks).");
  for (const h of held) fleet.watched.set(h.id, { ...h, why: "killed" });
  if (done.restart_in_s) narrate("worker", `up restarts ${name} in ${done.restart_in_s}s (supervision)`);
}

async function cutStorage() {
  const seconds = Number($("#cut-seconds").value) || 15;
  const done = await fleetCall("/api/chaos/storage-cut", { seconds });
  if (done) narrate("storage", `S3 cut for ${seconds}s: open connections dropped, new ones refused. Tasks that read or write S3 now fail and Celery retries them with backoff; a task that runs out of retries is dead-lettered.`);
}

async function restoreStorage() {
  const done = await fleetCall("/api/chaos/storage-cut", undefined, "DELETE");
  if (done) narrate("storage", "S3 restored before its time");
}

async function restartBroker() {
  if (!window.confirm("Restart RabbitMQ on this machine? Every connection to it drops, other vhosts' too.")) return;
  const done = await fleetCall("/api/chaos/broker-restart");
  if (done) narrate("broker", "RabbitMQ stopping (rabbitmqctl stop_app): every connection drops. Messages stay in the durable quorum queues; the ones workers held unacked will be delivered again.");
}

function poisonUpload() {
  const bytes = new Uint8Array(256 * 1024);
  crypto.getRandomValues(bytes.subarray(0, 65536));
  const file = new File([bytes], `poison-${Date.now()}.mp4`, { type: "video/mp4" });
  fleet.poisonJobs.add(file.name);
  uploadFile(file);
  narrate("poison", `uploaded ${file.name}: random bytes with a video's name. The probe will refuse it; its task is rejected without requeue and dead-lettered with its reason, while other jobs go on.`);
}

function narrateEvent(event) {
  if (event.lesson) return; // a lesson's own run (its scratch vhost): the Lessons card narrates it
  const name = event.event || "";
  const watched = event.task_id && fleet.watched.get(event.task_id);
  if (name === "task.started" && event.redelivered) {
    narrate("redelivered", `${event.task} ${event.label || ""} redelivered to ${event.worker} (redelivered=true${watched ? `: its holder was ${watched.why}` : ""})`);
  } else if (name === "task.finished" && event.outcome === "retry") {
    narrate("retry", `${event.task} ${event.label || ""} on ${event.worker} failed and will retry${event.countdown ? ` in ${event.countdown}s` : ""} (attempt ${(event.retries || 0) + 1})`);
  } else if (name === "task.finished" && event.outcome === "dead") {
    narrate("dead", `${event.task} ${event.label || ""} dead-lettered: ${event.reason || event.code || "rejected"}; the DLQ panel below shows it, with replay`);
  } else if (name === "task.finished" && event.outcome === "ok" && watched) {
    narrate("recovered", `${watched.label} finished on ${event.worker} after its worker was ${watched.why}: nothing lost`);
    fleet.watched.delete(event.task_id);
  } else if (name === "job.failed" && [...fleet.poisonJobs].some((f) => (state.jobs.get(event.job_id) || {}).source?.filename === f)) {
    narrate("dead", `job ${event.job_id.slice(0, 8)} failed: ${event.code} (${event.message || ""})`);
  }
}

function setupFleet() {
  $("#scale-up").addEventListener("click", () => fleet.last && fleetCall("/api/fleet/scale", { workers: fleet.last.target + 1 }));
  $("#scale-down").addEventListener("click", () => fleet.last && fleet.last.target > 0 && fleetCall("/api/fleet/scale", { workers: fleet.last.target - 1 }));
  $("#cut-s3").addEventListener("click", cutStorage);
  $("#restore-s3").addEventListener("click", restoreStorage);
  $("#restart-broker").addEventListener("click", restartBroker);
  $("#poison").addEventListener("click", poisonUpload);
  document.addEventListener("encodeq:event", (e) => narrateEvent(e.detail));
  if (token()) refreshFleet();
}

setupFleet();
