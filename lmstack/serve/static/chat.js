// lmstack web chat: the page's logic. Fetches the model id from GET /v1/models, sends the whole
// conversation to POST /v1/chat/completions with stream=true, and appends each server-sent-event
// delta to the assistant's bubble as it arrives. Model output is only ever inserted as text
// (Text nodes / textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const el = {
  messages: $("messages"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
  newChat: $("new-chat"), composer: $("composer"), error: $("error"), modelName: $("model-name"),
  temperature: $("temperature"), topP: $("top-p"), maxTokens: $("max-tokens"),
  seed: $("seed"), system: $("system"), apiKey: $("api-key"),
};

let modelId = null;     // from GET /v1/models
let history = [];       // [{role, content}] of the finished turns, sent with each request
let firstKept = 0;      // history[firstKept:] is sent: older turns no longer fit the model's context
let controller = null;  // AbortController of the reply being streamed, or null

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = el.apiKey.value.trim();
  if (key) h["Authorization"] = `Bearer ${key}`;
  return h;
}

function showError(text) {
  el.error.textContent = text;
  el.error.hidden = !text;
}

// The JSON body of an error response, or null.
async function errorBody(response) {
  try { return await response.json(); } catch (_) { return null; }
}

// The message of an error response: OpenAI's {"error": {"message": ...}}, else the HTTP status.
function errorText(response, body) {
  let message = (body && body.error && body.error.message) || (body && body.detail) || "";
  if (typeof message !== "string") message = JSON.stringify(message);
  const status = `HTTP ${response.status}${response.statusText ? " " + response.statusText : ""}`;
  if (response.status === 401) {
    return `This server needs an API key: enter it under Settings. (${message || status})`;
  }
  return message ? `${message} (${status})` : status;
}

async function loadModel() {
  el.modelName.textContent = "loading…";
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    if (!response.ok) throw new Error(errorText(response, await errorBody(response)));
    const body = await response.json();
    if (!body.data || !body.data.length) throw new Error("the server lists no models");
    modelId = body.data[0].id;
    el.modelName.textContent = modelId;
    showError("");
  } catch (err) {
    modelId = null;
    el.modelName.textContent = "unavailable";
    showError(`Could not load the model list: ${err.message}`);
  }
  return modelId;
}

// Adds a message bubble; returns {node, text} where text is the Text node to append to.
function addBubble(role, content) {
  const node = document.createElement("div");
  node.className = `msg ${role}`;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role;
  const body = document.createElement("div");
  body.className = "text";
  const text = document.createTextNode(content);
  body.appendChild(text);
  node.append(label, body);
  el.messages.appendChild(node);
  scrollDown();
  return { node, text };
}

function addNote(node, note) {
  const small = document.createElement("div");
  small.className = "note";
  small.textContent = note;
  node.appendChild(small);
}

function scrollDown() {
  el.messages.scrollTop = el.messages.scrollHeight;
}

function setStreaming(on) {
  el.send.disabled = on;
  el.stop.disabled = !on;
}

// Reads "data: ..." lines from an SSE body; calls onEvent(parsedJson) for each, stops at [DONE].
async function readEvents(body, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    const lines = buffer.split("\n");
    buffer = done ? "" : lines.pop();  // keep the unfinished last line for the next chunk
    for (const raw of lines) {
      const line = raw.replace(/\r$/, "");
      if (!line.startsWith("data:")) continue;  // blank separators, ": comments", event: lines
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      if (data) onEvent(JSON.parse(data));
    }
    if (done) return;
  }
}

// A number field's value, or undefined (left out of the request) when it is empty.
function numberSetting(input, parse = parseFloat) {
  const value = parse(input.value);
  return Number.isFinite(value) ? value : undefined;
}

async function send() {
  const content = el.prompt.value;
  if (!content.trim() || controller) return;
  if (!modelId && !(await loadModel())) return;
  showError("");
  el.prompt.value = "";

  const userTurn = { role: "user", content };
  const userBubble = addBubble("user", content);
  const reply = addBubble("assistant", "");
  reply.node.dataset.state = "streaming";
  const request = (messages) => ({
    model: modelId, messages, stream: true,
    temperature: numberSetting(el.temperature),
    top_p: numberSetting(el.topP),
    max_tokens: numberSetting(el.maxTokens, parseInt),
    seed: numberSetting(el.seed, parseInt),
  });
  const conversation = () => [
    ...(el.system.value.trim() ? [{ role: "system", content: el.system.value }] : []),
    ...history.slice(firstKept), userTurn,
  ];

  controller = new AbortController();
  setStreaming(true);
  let finish = null;
  let note = null;
  try {
    let response, left = 0;
    for (;;) {
      response = await fetch("/v1/chat/completions", {
        method: "POST", headers: headers(), body: JSON.stringify(request(conversation())),
        signal: controller.signal,
      });
      if (response.ok) break;
      const body = await errorBody(response);
      const tooLong = body && body.error && body.error.code === "context_length_exceeded";
      if (tooLong && firstKept < history.length) {
        // The conversation outgrew the model's context: leave out the oldest exchange and retry
        // (the system prompt stays; the page still shows everything).
        firstKept += 2;
        left += 2;
        continue;
      }
      // Nothing was said: drop both bubbles and give the text back so it can be re-sent.
      showError(errorText(response, body));
      userBubble.node.remove();
      reply.node.remove();
      if (!el.prompt.value) el.prompt.value = content;
      return;
    }
    await readEvents(response.body, (event) => {
      if (event.error) throw new Error(event.error.message || "stream error");
      const choice = event.choices && event.choices[0];
      if (!choice) return;
      const piece = choice.delta && choice.delta.content;
      if (piece) {
        reply.text.appendData(piece);
        scrollDown();
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    });
    if (finish === "length") note = "stopped: max tokens";
    else if (finish && finish !== "stop") note = `finish reason: ${finish}`;
    if (left) {
      const earlier = `left out ${left} earlier messages to fit the model's context`;
      note = note ? `${note}; ${earlier}` : earlier;
    }
  } catch (err) {
    if (err.name === "AbortError") note = "stopped";
    else {
      controller.abort();  // close the connection too
      note = "interrupted";
      showError(`The reply failed: ${err.message}`);
    }
  } finally {
    controller = null;
    setStreaming(false);
    if (reply.node.isConnected) {
      // Keep whatever arrived (a stopped reply's partial text too) as part of the conversation.
      history.push(userTurn, { role: "assistant", content: reply.text.data });
      if (note) addNote(reply.node, note);
      reply.node.dataset.state = "done";
      scrollDown();
    }
    el.prompt.focus();
  }
}

function newChat() {
  if (controller) controller.abort();
  history = [];
  firstKept = 0;
  el.messages.replaceChildren();
  showError("");
  el.prompt.focus();
}

el.composer.addEventListener("submit", (event) => { event.preventDefault(); send(); });
el.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
el.stop.addEventListener("click", () => { if (controller) controller.abort(); });
el.newChat.addEventListener("click", newChat);
el.apiKey.addEventListener("change", loadModel);  // a new key may unlock /v1/models
loadModel();
