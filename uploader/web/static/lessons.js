// encodeq up: the lessons of `encodeq learn` on the page. A button per lesson runs it in a scratch
// vhost of its own (never beside real jobs); the narration arrives as it happens, then the verdict,
// computed from the broker's counters, which are shown with it. A lesson's knobs break its
// mechanism on purpose: change one and the verdict changes. Only under `encodeq up`: GET
// /api/lessons answers 404 `no_lessons` under `encodeq serve` alone, and this card stays hidden.
// Uses app.js's api(), el(), $ and token().
"use strict";

const LESSON_POLL_MS = 500;

const lessons = { list: [], running: null };

function knobInput(lesson, name, value) {
  const id = `knob-${lesson.name}-${name}`;
  const input = typeof value === "boolean"
    ? el("input", { type: "checkbox", id, "data-knob": name, "data-kind": "bool" })
    : el("input", { type: "text", id, "data-knob": name, "data-kind": typeof value, value: String(value), size: "8" });
  if (typeof value === "boolean") input.checked = value;
  return el("label", { class: "knob", for: id, title: `default: ${value}` }, input, ` ${name}`);
}

function knobsOf(row, lesson) {
  // Only the knobs changed from the lesson's defaults go to the server.
  const knobs = {};
  for (const input of row.querySelectorAll("[data-knob]")) {
    const name = input.dataset.knob;
    let value = input.value;
    if (input.dataset.kind === "bool") value = input.checked;
    else if (input.dataset.kind === "number") value = Number(value);
    if (value !== lesson.knobs[name]) knobs[name] = value;
  }
  return knobs;
}

function renderLessons() {
  $("#lesson-list").replaceChildren(...lessons.list.map((lesson) => {
    const run = el("button", { "data-lesson": lesson.name, text: lesson.title });
    const row = el("li", { "data-lesson": lesson.name }, run,
      el("span", { class: "muted", text: ` ${lesson.summary}` }),
      el("span", { class: "knobs" }, ...Object.entries(lesson.knobs).map(([n, v]) => knobInput(lesson, n, v))));
    run.addEventListener("click", () => startLesson(lesson, knobsOf(row, lesson)));
    return row;
  }));
}

function counterTable(title, columns) {
  const names = Object.keys(columns);
  const rows = [...new Set(names.flatMap((n) => Object.keys(columns[n] || {})))];
  const shown = (v) => (v === undefined ? "" : typeof v === "boolean" ? (v ? "yes" : "no") : String(v));
  return el("table", { class: "lesson-table" },
    el("caption", { text: title }),
    el("thead", {}, el("tr", {}, el("th", { text: "" }), ...names.map((n) => el("th", { text: n })))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, el("th", { text: r }),
      ...names.map((n) => el("td", { text: shown((columns[n] || {})[r]) }))))));
}

function renderRun(run) {
  const knobs = Object.entries(run.knobs || {}).map(([k, v]) => `${k}=${v}`).join(", ");
  $("#lesson-title").textContent = `${run.title}${knobs ? ` (broken: ${knobs})` : ""} · ${run.state}`;
  $("#lesson-steps").replaceChildren(...run.steps.map((s) => s.kind === "table"
    ? el("li", { "data-kind": "table" }, counterTable(s.title, s.columns))
    : el("li", {}, el("time", { text: `${s.at.toFixed(1)}s ` }), el("span", { text: s.text }))));
  const verdict = $("#lesson-verdict");
  verdict.hidden = run.state === "running";
  if (run.state === "error") {
    verdict.dataset.verdict = "error";
    verdict.replaceChildren(el("strong", { text: "could not run: " }), el("span", { text: run.error }));
  } else if (run.state === "done") {
    verdict.dataset.verdict = run.verdict;
    verdict.replaceChildren(
      el("p", {}, el("strong", { text: `verdict: ${run.verdict}` }), el("span", { class: "muted", text: " (computed from these counters)" })),
      counterTable("counters", { value: run.counters }),
      el("p", { text: run.lesson }),
      el("p", { class: "muted", text: `see ${run.see}` }));
  }
}

function setRunning(on) {
  for (const button of document.querySelectorAll("#lesson-list button")) button.disabled = on;
}

async function pollRun(id) {
  let run;
  try {
    run = await api(`/api/lessons/runs/${encodeURIComponent(id)}`);
  } catch (e) {
    $("#lesson-title").textContent = `lost the run: ${e.message}`;
    setRunning(false);
    return;
  }
  renderRun(run);
  if (run.state === "running") setTimeout(() => pollRun(id), LESSON_POLL_MS);
  else setRunning(false);
}

async function startLesson(lesson, knobs) {
  setRunning(true);
  $("#lesson-run").hidden = false;
  $("#lesson-verdict").hidden = true;
  $("#lesson-steps").replaceChildren();
  $("#lesson-title").textContent = `${lesson.title} · starting`;
  try {
    const started = await api(`/api/lessons/${encodeURIComponent(lesson.name)}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ knobs }),
    });
    pollRun(started.id);
  } catch (e) {
    $("#lesson-title").textContent = `${lesson.title}: refused (${e.message})`;
    setRunning(false);
  }
}

async function setupLessons() {
  if (!token()) return;
  try {
    lessons.list = (await api("/api/lessons")).lessons;
  } catch (e) {
    if (e.code === "no_lessons") return; // encodeq serve alone: no lessons here
    $("#lessons").hidden = false;
    $("#lesson-list").replaceChildren(el("li", { class: "error", text: `lessons unavailable: ${e.message}` }));
    return;
  }
  renderLessons();
  $("#lessons").hidden = false;
}

setupLessons();
