// The nanonlp page: a panel per endpoint of each mounted model, built from GET /v1/models, talking to the API
// of the same server.
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

// A model's panel for one endpoint it declares (GET /v1/models: its path, fields, whether it streams,
// and the kind of result to show): a textarea for the field that holds the items, an input per field
// the endpoint labels, one button; errors shown in the panel; Ctrl+Enter submits. The page knows kinds
// of result (views), never tasks.
function formPanel(model, endpoint) {
  const id = "m-" + model.name.replace(/[^\w-]/g, "_") + "-" + endpoint.path.replace(/\W/g, "_");
  const title = endpoint.title || endpoint.path.replace("/v1/", "");
  const itemsField = endpoint.fields[endpoint.items] || {};
  const oneItemALine = itemsField.type === "array of string";  // a batch field: one item a line; else the text whole
  // an endpoint without items (drawing samples, say) has no text box, only its fields
  const input = endpoint.items ? el("textarea", { id: id + "-input", placeholder: endpoint.placeholder || "", "aria-label": title + " input" }) : null;
  const options = Object.entries(endpoint.fields).filter(([name, f]) => f.label && name !== endpoint.items).map(([name, f]) => field(name, f));
  const button = el("button", { type: "submit", text: title });
  const error = el("p", { class: "error", role: "alert", hidden: "" });
  const output = el("div", { class: "output", id: id + "-output", "aria-live": "polite" });
  const form = el("form", {}, ...(input ? [input] : []), el("div", { class: "row" }, ...options.map(o => o.label), button));
  if (input) input.addEventListener("keydown", e => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit(); });
  form.addEventListener("submit", async e => {
    e.preventDefault();
    error.hidden = true;
    button.disabled = true;
    try {
      const body = { model: model.name };
      const text = input ? input.value : "";
      const items = oneItemALine ? lines(text) : text;
      if (endpoint.items && (items.length || !("default" in itemsField))) body[endpoint.items] = items;
      for (const o of options) if (o.value() !== undefined) body[o.name] = o.value();
      if (endpoint.stream) await stream(endpoint, body, text, output);
      else show(endpoint.view, await (await post(endpoint.path, body)).json(), oneItemALine ? items : [items], output);
    }
    catch (err) { error.textContent = err.message; error.hidden = false; }
    finally { button.disabled = false; }
  });
  return el("section", { class: "panel", "data-model": model.name, "data-task": model.task, "data-endpoint": endpoint.path },
    el("h2", {}, model.name, el("span", { class: "task", text: model.task || endpoint.path })), form, error, output);
}

// An input for a declared field: a number (within its bounds), a checkbox, or a line of text. An empty
// number leaves the field out, so the server's default applies.
function field(name, f) {
  const numeric = /integer|number/.test(f.type);
  const attrs = { "aria-label": f.label, title: f.description || "" };
  if (numeric) {
    Object.assign(attrs, { type: "number", step: /integer/.test(f.type) ? "1" : "any" });
    if ((f.ge ?? f.gt) !== undefined) attrs.min = String(f.ge ?? f.gt);
    if ((f.le ?? f.lt) !== undefined) attrs.max = String(f.le ?? f.lt);
    if (f.default === null) attrs.placeholder = "default";
  } else if (f.type === "boolean") attrs.type = "checkbox";
  const input = el("input", attrs);
  if (f.type === "boolean") input.checked = Boolean(f.default);
  else if (f.default !== undefined && f.default !== null) input.value = String(f.default);
  const value = () => f.type === "boolean" ? input.checked : numeric ? (input.value === "" ? undefined : Number(input.value))
    : (input.value === "" && f.default === null ? undefined : input.value);
  return { name, label: el("label", {}, f.label + " ", input), value };
}

// A streaming endpoint continues its input: the output starts with it, and each server-sent event
// ("data:" lines, each a JSON piece of text, then [DONE]) adds its piece.
async function stream(endpoint, body, text, output) {
  output.textContent = text;
  const response = await post(endpoint.path, { ...body, stream: true });
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
}

const lines = text => text.split("\n").map(s => s.trim()).filter(Boolean);

// The kinds of result the page shows: text (one field of each result, a line each), labels (probability
// bars, or a regression's score), spans (entities marked in their text).
const views = {
  text(view, results, texts, output) {
    output.textContent = results.map(r => String(r[view.key || "text"]) + (r.truncated ? "  (truncated)" : "")).join("\n");
  },
  labels(view, results, texts, output) {
    output.replaceChildren(...results.map((r, i) => {
      const chosen = r.labels || (r.label !== undefined ? [r.label] : []);
      const bars = Object.entries(r.probabilities || {}).sort((a, b) => b[1] - a[1]).map(([label, p]) =>
        el("div", { class: "bar" + (chosen.includes(label) ? " chosen" : ""), "data-label": label },
          el("span", { text: label }),
          el("span", { class: "track" }, el("span", { class: "fill", style: `display:block;width:${(100 * p).toFixed(1)}%` })),
          el("span", { text: (100 * p).toFixed(1) + "%" })));
      const note = r.truncated ? " (truncated)" : "";
      const answer = r.score !== undefined ? `score ${r.score.toFixed(3)}` : chosen.join(", ");
      return el("div", { class: "result" }, el("div", { text: texts[i] + note }), el("div", { class: "muted", text: "→ " + answer }), ...bars);
    }));
  },
  spans(view, results, texts, output) {
    output.replaceChildren(...results.map(r => {
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
  },
};

function show(view, body, texts, output) {
  (views[view.kind] || views.text)(view, body.results || [body], texts, output);
}

// The assistant's chat panel: a transcript, an input, quick replies from the reply's suggestions, and a
// visible handoff state. The conversation (its session id and messages) is kept in sessionStorage, so a
// reload continues it; the server keeps the state itself (its session store) and may have expired it.
const CHAT_TEXT = {
  en: { placeholder: "Type a message", send: "Send", fresh: "New conversation", thinking: "…",
        handoff: n => `Handed over to a person: they will read this conversation (${n} turns) and reply here.`,
        waiting: "A person will reply here.", expired: "The earlier conversation had expired; this is a new one.",
        session: id => `session ${id.slice(0, 8)}…` },
  zh: { placeholder: "请输入您的问题", send: "发送", fresh: "新的对话", thinking: "…",
        handoff: n => `已转接人工客服：客服会看到这段对话（共 ${n} 轮）并在这里回复您。`,
        waiting: "人工客服会在这里回复您。", expired: "之前的对话已过期，这是一段新的对话。",
        session: id => `会话 ${id.slice(0, 8)}…` },
};
const MAX_KEPT_MESSAGES = 200;  // the page keeps this many messages of a conversation in sessionStorage

function chatPanel(model, endpoint) {
  const text = CHAT_TEXT[model.language] || CHAT_TEXT.en;
  const section = document.getElementById("chat-panel").content.firstElementChild.cloneNode(true);
  const $ = selector => section.querySelector(selector);
  section.dataset.model = model.name;
  section.lang = model.language === "zh" ? "zh-CN" : model.language;
  section.querySelector("h2").firstChild.textContent = (model.assistant || model.name) + " ";
  $(".placeholder").remove();
  $(".chat-body").hidden = false;
  const [transcript, quick, banner, error, form, input, send, fresh, sessionNote] =
    [".transcript", ".quick-replies", ".handoff", ".error", ".chat-form", ".message", ".send", ".new-chat", ".session"].map($);
  input.placeholder = text.placeholder;
  input.maxLength = endpoint.fields.message.max_length;
  send.textContent = text.send;
  fresh.textContent = text.fresh;

  const storeKey = "nanonlp-chat-" + model.name;
  const empty = () => ({ session_id: null, messages: [], suggestions: model.suggestions || [], handoff: false, turns: 0 });
  let state;
  try { state = { ...empty(), ...JSON.parse(sessionStorage.getItem(storeKey) || "{}") }; } catch (_) { state = empty(); }
  const save = () => {
    state.messages = state.messages.slice(-MAX_KEPT_MESSAGES);
    sessionStorage.setItem(storeKey, JSON.stringify(state));
  };

  function bubble(message) {
    const item = el("li", { class: "msg " + message.who }, el("span", { class: "text", text: message.text }));
    if (message.source) item.dataset.source = message.source;
    if (message.action) item.dataset.action = message.action;
    transcript.append(item);
    transcript.scrollTop = transcript.scrollHeight;
    return item;
  }

  function show() {  // the parts that follow the state: quick replies, the handoff banner, the input
    quick.replaceChildren(...(state.handoff ? [] : state.suggestions).map(s => {
      const b = el("button", { type: "button", class: "quick", text: s });
      b.addEventListener("click", () => say(s));
      return b;
    }));
    banner.hidden = !state.handoff;
    banner.textContent = state.handoff ? text.handoff(state.turns) : "";
    section.classList.toggle("handed-off", state.handoff);
    input.disabled = send.disabled = state.handoff;
    if (state.handoff) { input.value = ""; input.placeholder = text.waiting; } else input.placeholder = text.placeholder;
    sessionNote.textContent = state.session_id ? text.session(state.session_id) : "";
  }

  async function say(message) {
    if (!message.trim() || state.handoff) return;
    error.hidden = true;
    input.value = "";
    send.disabled = input.disabled = true;
    quick.replaceChildren();
    const mine = bubble({ who: "user", text: message });
    const pending = bubble({ who: "bot pending", text: text.thinking });
    try {
      const body = await (await post(endpoint.path, { model: model.name, session_id: state.session_id, message })).json();
      pending.remove();
      if (state.session_id && body.session_id !== state.session_id) {
        state.messages.push({ who: "note", text: text.expired });
        bubble({ who: "note", text: text.expired });
        state.turns = 0;
      }
      const reply = { who: "bot", text: body.reply, source: body.source, action: body.action };
      state.messages.push({ who: "user", text: message }, reply);
      bubble(reply);
      Object.assign(state, { session_id: body.session_id, suggestions: body.suggestions, handoff: body.handoff,
                             turns: body.handoff ? body.transcript.length : state.turns + 1 });
      save();
    } catch (err) {  // nothing is lost: the message goes back into the input
      pending.remove();
      mine.remove();
      input.value = message;
      error.textContent = err.message;
      error.hidden = false;
    } finally {
      send.disabled = input.disabled = false;
      show();
      if (!state.handoff) input.focus();
    }
  }

  form.addEventListener("submit", e => { e.preventDefault(); say(input.value); });
  fresh.addEventListener("click", () => {
    state = empty();
    sessionStorage.removeItem(storeKey);
    transcript.replaceChildren();
    error.hidden = true;
    show();
  });
  state.messages.forEach(bubble);
  show();
  return section;
}

// Views with a panel of their own; every other endpoint gets the form panel.
const panelViews = { chat: chatPanel };
const panelsOf = model => (model.endpoints || []).map(e => (panelViews[e.view.kind] || formPanel)(model, e));

async function load() {
  const panels = document.getElementById("panels");
  const pageError = document.getElementById("page-error");
  pageError.hidden = true;
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    if (!response.ok) throw new Error(await errorOf(response));
    const { models } = await response.json();
    const built = models.flatMap(panelsOf);
    // With no conversation to hold, the chat panel says how to mount an assistant.
    if (!models.some(m => (m.endpoints || []).some(e => e.view.kind === "chat"))) {
      built.push(document.getElementById("chat-panel").content.cloneNode(true));
    }
    panels.replaceChildren(...built);
  } catch (err) {
    pageError.textContent = err.message;
    pageError.hidden = false;
    panels.replaceChildren();
  }
}

load();
