// centelha web chat. Plain JavaScript, no build step: it talks to the server's own
// OpenAI-compatible API (/v1/chat/completions, streamed as server-sent events).
//
// Conversations and settings live in the browser's localStorage. With "look inside" on,
// each request asks for log-probabilities (top 5 alternatives) and each generated token is
// drawn as a span tinted by its probability; hovering shows the alternatives.
"use strict";

const $ = (id) => document.getElementById(id);
const STORE = "centelha.conversations";
const SETTINGS = "centelha.settings";

// -- words (Portuguese when the browser prefers it) -----------------------------------------
const WORDS = {
  en: {
    newChat: "New chat", model: "Model", lookInside: "Look inside", settings: "Settings",
    system: "System prompt", systemHint: "You are a helpful assistant.", temperature: "Temperature",
    maxTokens: "Max tokens", apiKey: "API key", legend: "Probability of each token:",
    promptHint: "Write a message…", send: "Send", stop: "Stop", you: "You",
    untitled: "New conversation", chosen: "chosen", noModels: "no models", delete: "Delete",
  },
  pt: {
    newChat: "Nova conversa", model: "Modelo", lookInside: "Ver por dentro", settings: "Ajustes",
    system: "Prompt de sistema", systemHint: "Você é um assistente prestativo.",
    temperature: "Temperatura", maxTokens: "Máx. de tokens", apiKey: "Chave da API",
    legend: "Probabilidade de cada token:", promptHint: "Escreva uma mensagem…",
    send: "Enviar", stop: "Parar", you: "Você", untitled: "Nova conversa", chosen: "escolhido",
    noModels: "nenhum modelo", delete: "Apagar",
  },
};
const LANG = (navigator.language || "en").toLowerCase().startsWith("pt") ? "pt" : "en";
const t = (key) => WORDS[LANG][key] || WORDS.en[key] || key;

function translatePage() {
  document.documentElement.lang = LANG;
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  document.querySelectorAll("[data-i18n-placeholder]").forEach((el) => {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  });
}

// -- state -------------------------------------------------------------------------------------
let conversations = JSON.parse(localStorage.getItem(STORE) || "[]");
let current = conversations[0] || null;
let controller = null; // AbortController of the request in flight

function save() {
  localStorage.setItem(STORE, JSON.stringify(conversations));
}

function settings() {
  return {
    model: $("model").value,
    system: $("system").value.trim(),
    temperature: Number($("temperature").value),
    top_p: Number($("top-p").value),
    max_tokens: Math.max(1, Number($("max-tokens").value) || 512),
    apiKey: $("api-key").value,
    lookInside: $("look-inside").checked,
  };
}

function saveSettings() {
  const s = settings();
  delete s.apiKey; // keys are not kept on disk
  localStorage.setItem(SETTINGS, JSON.stringify(s));
}

function restoreSettings() {
  const s = JSON.parse(localStorage.getItem(SETTINGS) || "{}");
  if (s.system) $("system").value = s.system;
  if (s.temperature !== undefined) $("temperature").value = s.temperature;
  if (s.top_p !== undefined) $("top-p").value = s.top_p;
  if (s.max_tokens) $("max-tokens").value = s.max_tokens;
  $("look-inside").checked = !!s.lookInside;
  return s;
}

// -- rendering -----------------------------------------------------------------------------------
function renderList() {
  const list = $("conversations");
  list.replaceChildren();
  for (const conv of conversations) {
    const li = document.createElement("li");
    li.className = conv === current ? "current" : "";
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = conv.title || t("untitled");
    const del = document.createElement("button");
    del.className = "delete";
    del.title = t("delete");
    del.textContent = "×";
    del.onclick = (event) => {
      event.stopPropagation();
      conversations = conversations.filter((c) => c !== conv);
      if (current === conv) current = conversations[0] || null;
      save();
      renderAll();
    };
    li.append(title, del);
    li.onclick = () => { current = conv; renderAll(); };
    list.append(li);
  }
}

function renderMessages() {
  const box = $("messages");
  box.replaceChildren();
  for (const message of current ? current.messages : []) box.append(messageElement(message));
  box.scrollTop = box.scrollHeight;
}

function messageElement(message) {
  const el = document.createElement("div");
  el.className = `message ${message.role}${message.error ? " error" : ""}`;
  const role = document.createElement("div");
  role.className = "role";
  role.textContent = message.role === "user" ? t("you") : message.model || "assistant";
  const body = document.createElement("div");
  body.className = "body";
  fillBody(body, message);
  el.append(role, body);
  return el;
}

function fillBody(body, message) {
  if ($("look-inside").checked && message.tokens && message.tokens.length) {
    body.replaceChildren(...message.tokens.map(tokenSpan));
  } else {
    body.textContent = message.content;
  }
}

function tokenSpan(token) {
  const span = document.createElement("span");
  span.className = "token";
  span.style.setProperty("--p", token.p.toFixed(3));
  span.textContent = token.text;
  span.dataset.p = token.p;
  span.onmouseenter = (event) => showTooltip(event, token);
  span.onmouseleave = hideTooltip;
  return span;
}

function visible(text) {
  return text.replace(/\n/g, "⏎").replace(/ /g, "·") || "∅";
}

function showTooltip(event, token) {
  const tip = $("tooltip");
  const table = document.createElement("table");
  for (const [text, p] of token.top) {
    const row = table.insertRow();
    if (text === token.text) row.className = "chosen";
    row.insertCell().textContent = visible(text);
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.max(2, p * 60)}px`;
    row.insertCell().append(bar);
    const cell = row.insertCell();
    cell.className = "p";
    cell.textContent = `${(p * 100).toFixed(1)}%`;
  }
  const head = document.createElement("div");
  head.textContent = `${t("chosen")}: ${visible(token.text)} — ${(token.p * 100).toFixed(1)}%`;
  tip.replaceChildren(head, table);
  tip.hidden = false;
  const rect = event.target.getBoundingClientRect();
  tip.style.left = `${Math.min(rect.left, window.innerWidth - 240)}px`;
  tip.style.top = `${rect.bottom + 6}px`;
}

function hideTooltip() {
  $("tooltip").hidden = true;
}

function renderAll() {
  renderList();
  renderMessages();
  $("legend").hidden = !$("look-inside").checked;
}

// -- talking to the server ------------------------------------------------------------------------
async function loadModels() {
  const select = $("model");
  try {
    const response = await fetch("/v1/models", { headers: authHeaders() });
    const data = await response.json();
    select.replaceChildren(...data.data.map((m) => new Option(m.id, m.id)));
    const saved = JSON.parse(localStorage.getItem(SETTINGS) || "{}").model;
    if (saved && data.data.some((m) => m.id === saved)) select.value = saved;
  } catch (error) {
    select.replaceChildren(new Option(t("noModels"), ""));
  }
}

function authHeaders() {
  const key = $("api-key").value;
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function newConversation() {
  current = { id: Date.now().toString(36), title: "", messages: [] };
  conversations.unshift(current);
  save();
  renderAll();
}

async function send(text) {
  if (!current) newConversation();
  const s = settings();
  saveSettings();
  current.messages.push({ role: "user", content: text });
  if (!current.title) current.title = text.slice(0, 60);
  const reply = { role: "assistant", content: "", tokens: [], model: s.model };
  current.messages.push(reply);
  save();
  renderAll();
  const element = $("messages").lastElementChild;
  element.classList.add("streaming");
  const body = element.querySelector(".body");

  const history = current.messages.slice(0, -1).filter((m) => !m.error)
    .map((m) => ({ role: m.role, content: m.content }));
  const messages = s.system ? [{ role: "system", content: s.system }, ...history] : history;
  const request = {
    model: s.model, messages, stream: true, temperature: s.temperature, top_p: s.top_p,
    max_tokens: s.max_tokens, logprobs: true, top_logprobs: 5,
  };
  controller = new AbortController();
  busy(true);
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(request),
      signal: controller.signal,
    });
    if (!response.ok) {
      const data = await response.json().catch(() => ({}));
      throw new Error((data.error && data.error.message) || response.statusText);
    }
    for await (const chunk of events(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) continue;
      if (choice.delta && choice.delta.content) reply.content += choice.delta.content;
      for (const entry of (choice.logprobs && choice.logprobs.content) || []) {
        reply.tokens.push({
          text: entry.token,
          p: Math.exp(entry.logprob),
          top: entry.top_logprobs.map((alt) => [alt.token, Math.exp(alt.logprob)]),
        });
      }
      fillBody(body, reply);
      $("messages").scrollTop = $("messages").scrollHeight;
    }
  } catch (error) {
    if (error.name !== "AbortError") {
      reply.error = true;
      reply.content = reply.content || String(error.message || error);
    }
  } finally {
    controller = null;
    busy(false);
    save();
    renderAll();
  }
}

// Server-sent events of a fetch response, one parsed JSON object at a time.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

function busy(on) {
  $("send").hidden = on;
  $("stop").hidden = !on;
  $("prompt").disabled = on;
}

// -- wiring --------------------------------------------------------------------------------------
function wire() {
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("prompt").value.trim();
    if (!text || controller) return;
    $("prompt").value = "";
    send(text);
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").onclick = () => controller && controller.abort();
  $("new-chat").onclick = newConversation;
  $("look-inside").onchange = () => { saveSettings(); renderAll(); };
  $("settings-button").onclick = () => {
    const panel = $("settings");
    panel.hidden = !panel.hidden;
    $("settings-button").setAttribute("aria-expanded", String(!panel.hidden));
  };
  for (const [input, output] of [["temperature", "temperature-value"], ["top-p", "top-p-value"]]) {
    const update = () => { $(output).textContent = Number($(input).value).toFixed(2); };
    $(input).addEventListener("input", update);
    update();
  }
  $("api-key").addEventListener("change", loadModels);
}

translatePage();
restoreSettings();
wire();
loadModels();
renderAll();
