// difflm's page: one streamed /v1/completions request with stream_steps, drawn step by step.
// A masked model's canvas fills in (masked cells become tokens); a uniform-state model's canvas holds a
// token everywhere from the first step, and each step changes some of them (highlighted).
// Plain JS, no build step and nothing fetched from another host.
"use strict";

const $ = (id) => document.getElementById(id);
const MASK = "\u2591\u2591";  // what a masked cell shows
let controller = null;         // AbortController of the request in flight
let modelId = null;
let uniform = false;           // the model is uniform-state (GET /v1/models says "process": "uniform")

function apiHeaders() {
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = "Bearer " + key;
  return headers;
}

async function loadModel() {
  try {
    const response = await fetch("/v1/models", { headers: apiHeaders() });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
    modelId = body.data[0].id;
    uniform = body.data[0].process === "uniform";
    $("model").textContent = "model: " + modelId + (uniform ? " (uniform-state)" : "");
    // options of masked decoding (strategy, blocks, cache) mean nothing to a uniform-state sampler
    document.querySelectorAll(".masked-only").forEach((el) => { el.hidden = uniform; });
    document.querySelectorAll(".uniform-only").forEach((el) => { el.hidden = !uniform; });
    $("label-tpc").textContent = uniform ? "changes per call" : "tokens per call";
  } catch (err) {
    $("model").textContent = "model: unknown (" + err.message + ")";
  }
}

function numberOrNull(id, parse = Number) {
  const raw = $(id).value.trim();
  return raw === "" ? null : parse(raw);
}

// The request body: OpenAI's fields plus difflm's decoding options as extra fields.
function requestBody() {
  const infill = $("mode-infill").checked;
  const body = {
    model: modelId, prompt: $("prompt").value, max_tokens: numberOrNull("max-tokens", parseInt),
    temperature: numberOrNull("temperature"), top_p: numberOrNull("top-p"), seed: numberOrNull("seed", parseInt),
    stream: true, stream_steps: true,
  };
  const extras = { steps: numberOrNull("steps", parseInt) };
  if (!uniform) {
    Object.assign(body, { strategy: $("strategy").value, cache: $("cache").value });
    Object.assign(extras, { block_length: numberOrNull("block-length", parseInt),
                            threshold: $("strategy").value === "threshold" ? numberOrNull("threshold") : null });
  }
  for (const [name, value] of Object.entries(extras)) if (value !== null) body[name] = value;
  for (const name of Object.keys(body)) if (body[name] === null) delete body[name];
  if (infill) body.suffix = $("suffix").value;
  return body;
}

// -- drawing -------------------------------------------------------------------------------------
const view = { frames: [], timer: null, done: false, maxMasked: 0, count: 0, committed: 0, times: [] };

function resetView(body) {
  Object.assign(view, { frames: [], done: false, maxMasked: 0, count: 0, committed: 0, times: [] });
  const canvas = $("canvas");
  canvas.textContent = "";
  canvas.dataset.frames = "0";
  canvas.dataset.maxMasked = "0";
  canvas.dataset.changed = "0";
  const prefix = document.createElement("span");
  prefix.className = "fixed";
  prefix.textContent = body.prompt;
  const cells = document.createElement("span");
  cells.id = "cells";
  const suffix = document.createElement("span");
  suffix.className = "fixed";
  suffix.textContent = body.suffix !== undefined ? (/^[A-Za-z0-9]/.test(body.suffix) ? " " : "") + body.suffix : "";
  canvas.append(prefix, cells, suffix);
  $("timeline").textContent = "";
  $("final-text").textContent = "";
  $("usage").textContent = "";
  $("error").hidden = true;
  for (const id of ["stat-step", "stat-block", "stat-calls", "stat-tpc", "stat-ms", "stat-batch"]) $(id).textContent = "-";
}

function drawFrame(step) {
  const cells = $("cells");
  const fresh = new Set(step.committed);
  while (cells.children.length < step.canvas.length) cells.append(document.createElement("span"));
  let masked = 0;
  // uniform-state: no cell is masked; `committed` lists the cells this step changed
  const [freshClass, keptClass] = step.process === "uniform" ? ["changed", "kept"] : ["new", "done"];
  step.canvas.forEach((token, i) => {
    const cell = cells.children[i];
    if (token === null) { masked += 1; cell.className = "cell masked"; cell.textContent = MASK; return; }
    cell.className = "cell " + (fresh.has(i) ? freshClass : keptClass);
    cell.textContent = token;
  });
  view.count += 1;
  view.committed += step.committed.length;
  view.maxMasked = Math.max(view.maxMasked, masked);
  const canvas = $("canvas");
  canvas.dataset.frames = String(view.count);
  canvas.dataset.maxMasked = String(view.maxMasked);
  canvas.dataset.changed = String(view.committed);
  $("stat-step").textContent = (step.step + 1) + " / " + step.total_steps;
  $("stat-block").textContent = String(step.block);
  $("stat-calls").textContent = String(step.model_calls);
  $("stat-tpc").textContent = (view.committed / step.model_calls).toFixed(2);
  $("stat-ms").textContent = step.step_ms.toFixed(1);
  $("stat-batch").textContent = String(step.batch_size);
  const bar = document.createElement("div");
  bar.className = "bar";
  bar.title = "step " + (step.step + 1) + ": " + step.step_ms.toFixed(1) + " ms, " + step.committed.length +
    (step.process === "uniform" ? " changed" : " committed");
  bar.style.height = Math.max(2, Math.min(62, step.step_ms * 2)) + "px";
  $("timeline").append(bar);
}

// Frames are shown at most one per `ms per frame`: the model is faster than the eye.
function pump() {
  if (view.timer !== null) return;
  const tick = () => {
    const frame = view.frames.shift();
    if (frame === undefined) { view.timer = null; if (view.done) finish(); return; }
    if (frame.denoising) drawFrame(frame.denoising);
    if (frame.text) $("final-text").textContent += frame.text;
    view.timer = setTimeout(tick, Math.max(0, numberOrNull("delay") || 0));
  };
  view.timer = setTimeout(tick, 0);
}

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status").textContent = text;
}

function finish() {
  if (view.frames.length || view.timer !== null) return;  // still drawing
  setStatus(view.error ? "error" : "done", view.error ? "error" : "done (" + (view.finish || "stopped") + ")");
  $("generate").disabled = false;
  $("stop").disabled = true;
}

// -- the request ---------------------------------------------------------------------------------
async function generate(event) {
  event.preventDefault();
  if (modelId === null) await loadModel();
  const body = requestBody();
  resetView(body);
  view.error = null;
  view.finish = null;
  setStatus("running", "denoising...");
  $("generate").disabled = true;
  $("stop").disabled = false;
  controller = new AbortController();
  try {
    const response = await fetch("/v1/completions", { method: "POST", headers: apiHeaders(),
                                                      body: JSON.stringify(body), signal: controller.signal });
    if (!response.ok) {
      const err = await response.json().catch(() => ({}));
      throw new Error(err.error ? err.error.message : response.status + " " + response.statusText);
    }
    await readEvents(response.body.getReader());
  } catch (err) {
    if (err.name !== "AbortError") { view.error = err.message; $("error").textContent = err.message; $("error").hidden = false; }
  }
  view.done = true;
  pump();
  finish();
}

// Server-sent events: "data: <json>" blocks separated by a blank line, ending with "data: [DONE]".
async function readEvents(reader) {
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      for (const choice of chunk.choices) {
        view.frames.push({ text: choice.text, denoising: choice.denoising });
        if (choice.finish_reason) view.finish = choice.finish_reason;
      }
      if (chunk.usage) {
        const u = chunk.usage;
        $("usage").textContent = u.prompt_tokens + " prompt tokens, " + u.completion_tokens + " completion tokens, " +
          u.model_calls + " model calls";
      }
      pump();
    }
  }
}

function setMode() {
  const infill = $("mode-infill").checked;
  document.querySelectorAll(".infill-only").forEach((el) => { el.hidden = !infill; });
  $("prompt-label").textContent = infill ? "prefix" : "prompt";
}

$("form").addEventListener("submit", generate);
$("stop").addEventListener("click", () => { if (controller) controller.abort(); });
$("mode-continue").addEventListener("change", setMode);
$("mode-infill").addEventListener("change", setMode);
loadModel();
