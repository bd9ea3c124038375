// The nanonlp page: one panel per mounted model, talking to the API of the same server.
"use strict";

const keyInput = document.getElementById("api-key");
keyInput.value = sessionStorage.getItem("nanonlp-key") || "";
keyInput.addEventListener("change", () => { sessionStorage.setItem("nanonlp-key", keyInput.value); load(); });

function headers() {
  const h = { "Content-Type": "application/json" };
  if (keyInput.value) h["Authorization"] = "Bearer " + keyInput.value;
  return h;
}

// The server's error sentence, whatever its shape (a string, or FastAPI's list of field errors).
async function errorOf(response) {
  let detail = response.statusText;
  try {
    const body = await response.json();
    detail = typeof body.detail === "string" ? body.detail
      : (body.detail || []).map(d => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
  } catch (_) { /* not JSON */ }
  return `${response.status}: ${detail}`;
}

async function post(path, body) {
  const response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (!response.ok) throw new Error(await errorOf(response));
  return response;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

// A panel: a form with a textarea, options and a button; errors shown in the panel; Ctrl+Enter submits.
function panel(model, title, placeholder, options, run) {
  const id = "m-" + model.name.replace(/[^\w-]/g, "_");
  const input = el("textarea", { id: id + "-input", placeholder, "aria-label": title + " input" });
  const button = el("button", { type: "submit", text: title });
  const error = el("p", { class: "error", role: "alert", hidden: "" });
  const output = el("div", { class: "output", id: id + "-output", "aria-live": "polite" });
  const form = el("form", {}, input, el("div", { class: "row" }, ...options, button));
  input.addEventListener("keydown", e => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit(); });
  form.addEventListener("submit", async e => {
    e.preventDefault();
    error.hidden = true;
    button.disabled = true;
    try { await run(input.value, output); }
    catch (err) { error.textContent = err.message; error.hidden = false; }
    finally { button.disabled = false; }
  });
  return el("section", { class: "panel", "data-model": model.name, "data-task": model.task },
    el("h2", {}, model.name, el("span", { class: "task", text: model.task })), form, error, output);
}

function number(label, value, attrs = {}) {
  const input = el("input", { type: "number", value: String(value), "aria-label": label, ...attrs });
  return [el("label", {}, label + " ", input), input];
}

const lines = text => text.split("\n").map(s => s.trim()).filter(Boolean);

function generatePanel(model) {
  const [tokensLabel, tokens] = number("tokens", 200, { min: "1" });
  const [tempLabel, temp] = number("temperature", 0.8, { min: "0.05", step: "0.05" });
  return panel(model, "Generate", "A prompt", [tokensLabel, tempLabel], async (prompt, output) => {
    output.textContent = prompt;
    const response = await post("/v1/generate", { model: model.name, prompt: prompt || "\n", stream: true,
      max_new_tokens: Number(tokens.value), temperature: Number(temp.value) });
    // Server-sent events: each "data:" line holds a JSON piece of text, then [DONE].
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event.split("\n").filter(l => l.startsWith("data: ")).map(l => l.slice(6)).join("\n");
        if (event.startsWith("event: error")) throw new Error(JSON.parse(data).detail);
        if (data && data !== "[DONE]") output.textContent += JSON.parse(data).text;
      }
    }
  });
}

function classifyPanel(model) {
  return panel(model, "Classify", "One text a line", [], async (text, output) => {
    const texts = lines(text);
    const body = await (await post("/v1/classify", { model: model.name, texts })).json();
    output.replaceChildren(...body.results.map((r, i) => {
      const chosen = r.labels || [r.label];
      const bars = Object.entries(r.probabilities).sort((a, b) => b[1] - a[1]).map(([label, p]) =>
        el("div", { class: "bar" + (chosen.includes(label) ? " chosen" : ""), "data-label": label },
          el("span", { text: label }),
          el("span", { class: "track" }, el("span", { class: "fill", style: `display:block;width:${(100 * p).toFixed(1)}%` })),
          el("span", { text: (100 * p).toFixed(1) + "%" })));
      const note = r.truncated ? " (truncated)" : "";
      return el("div", { class: "result" }, el("div", { text: texts[i] + note }), el("div", { class: "muted", text: "→ " + chosen.join(", ") }), ...bars);
    }));
  });
}

function translatePanel(model) {
  const [beamLabel, beam] = number("beam", 5, { min: "1", max: "32" });
  return panel(model, "Translate", `One ${model.languages[0]} sentence a line`, [beamLabel], async (text, output) => {
    const body = await (await post("/v1/translate", { model: model.name, texts: lines(text), beam: Number(beam.value) })).json();
    output.textContent = body.results.map(r => r.translation + (r.truncated ? "  (source truncated)" : "")).join("\n");
  });
}

function tagPanel(model) {
  return panel(model, "Tag", "One text a line", [], async (text, output) => {
    const body = await (await post("/v1/tag", { model: model.name, texts: lines(text) })).json();
    output.replaceChildren(...body.results.map(r => {
      // Offsets count code points (Python's str), so slice an array of code points, not UTF-16 units.
      const chars = Array.from(r.text);
      const line = el("div", { class: "result" });
      let at = 0;
      for (const e of r.entities) {
        line.append(chars.slice(at, e.start).join(""));
        line.append(el("mark", { "data-type": e.type, title: `${e.type} ${(100 * e.score).toFixed(0)}%` },
          chars.slice(e.start, e.end).join(""), el("small", { text: e.type })));
        at = e.end;
      }
      line.append(chars.slice(at).join(""));
      return line;
    }));
  });
}

const builders = { lm: generatePanel, classify: classifyPanel, translate: translatePanel, tag: tagPanel };

async function load() {
  const panels = document.getElementById("panels");
  const pageError = document.getElementById("page-error");
  pageError.hidden = true;
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    if (!response.ok) throw new Error(await errorOf(response));
    const { models } = await response.json();
    panels.replaceChildren(...models.filter(m => builders[m.task]).map(m => builders[m.task](m)),
      document.getElementById("chat-panel").content.cloneNode(true));
  } catch (err) {
    pageError.textContent = err.message;
    pageError.hidden = false;
    panels.replaceChildren();
  }
}

load();
