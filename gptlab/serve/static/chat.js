// The chat page: sends the conversation to /v1/chat/completions and streams the reply.
// Same origin only (the server sends no CORS headers); nothing is loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  model: null,       // the model id from GET /v1/models
  history: [],       // [{role, content, element}] of user and assistant messages
  controller: null,  // AbortController of the reply being streamed
};

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function setStatus(text) { $("status").textContent = text; }

function addBubble(role, text) {
  const el = document.createElement("div");
  el.className = "msg " + role;
  el.textContent = text;
  $("messages").appendChild(el);
  el.scrollIntoView({ block: "end" });
  return el;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return { message: body.error.message, code: body.error.code };
  } catch (_) {
    return { message: "HTTP " + response.status, code: null };
  }
}

async function loadModel() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (response.status === 503) {
    $("model").textContent = "model loading...";
    setTimeout(loadModel, 2000);
    return;
  }
  if (!response.ok) {
    const err = await errorMessage(response);
    $("model").textContent = "not connected";
    if (response.status === 401) $("settings").open = true;
    setStatus(err.message);
    return;
  }
  const body = await response.json();
  state.model = body.data[0].id;
  $("model").textContent = "model: " + state.model;
  setStatus("");
}

function requestMessages() {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  for (const m of state.history) {
    if (!m.dropped) messages.push({ role: m.role, content: m.content });
  }
  return messages;
}

// Drop the oldest exchange (user message + reply) that is still sent; false if none is left.
function dropOldestExchange() {
  const kept = state.history.filter((m) => !m.dropped);
  if (kept.length < 3) return false;  // only the new message is left
  for (const m of kept.slice(0, 2)) {
    m.dropped = true;
    m.element.classList.add("dropped");
  }
  return true;
}

// Read an SSE body; call onData with each parsed `data:` payload until [DONE].
async function readEvents(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return false;  // ended without [DONE]
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return true;
        onData(JSON.parse(data));
      }
    }
  }
}

async function send(text) {
  if (!state.model) await loadModel();
  if (!state.model) return;
  const history = state.history;  // "New chat" during the reply starts another one
  const user = { role: "user", content: text, element: addBubble("user", text) };
  history.push(user);
  const bubble = addBubble("assistant", "");
  bubble.dataset.state = "streaming";
  state.controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  let reply = "";
  try {
    for (;;) {
      const maxTokens = parseInt($("max-tokens").value, 10);
      const body = {
        model: state.model,
        messages: requestMessages(),
        stream: true,
        temperature: parseFloat($("temperature").value),
      };
      if (maxTokens > 0) body.max_tokens = maxTokens;
      const response = await fetch("/v1/chat/completions", {
        method: "POST", headers: headers(), body: JSON.stringify(body),
        signal: state.controller.signal,
      });
      if (response.ok) {
        setStatus("");
        const complete = await readEvents(response, (data) => {
          if (data.error) throw new Error(data.error.message);
          const delta = data.choices.length ? data.choices[0].delta : {};
          if (delta.content) {
            reply += delta.content;
            bubble.textContent = reply;
            bubble.scrollIntoView({ block: "end" });
          }
        });
        if (!complete) throw new Error("the server closed the stream early");
        bubble.dataset.state = "done";
        break;
      }
      const err = await errorMessage(response);
      if (err.code === "context_length_exceeded" && dropOldestExchange()) {
        setStatus("The conversation no longer fits the model's context window: the oldest "
          + "exchange (greyed out) is no longer sent.");
        continue;
      }
      throw new Error(err.message);
    }
  } catch (error) {
    if (error.name === "AbortError") {
      bubble.dataset.state = "stopped";
    } else {
      bubble.dataset.state = "error";
      bubble.textContent = reply ? reply + "\n" : "";
      bubble.textContent += "Error: " + error.message;
    }
  } finally {
    state.controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
  if (reply) {
    history.push({ role: "assistant", content: reply, element: bubble });
  } else {
    history.pop();  // no reply: the message is not part of the conversation
    user.element.classList.add("dropped");
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || state.controller) return;
  $("prompt").value = "";
  send(text);
});

$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

$("stop").addEventListener("click", () => {
  if (state.controller) state.controller.abort();
});

$("new-chat").addEventListener("click", () => {
  if (state.controller) state.controller.abort();
  state.history = [];
  $("messages").replaceChildren();
  setStatus("");
});

$("api-key").addEventListener("change", loadModel);
loadModel();
