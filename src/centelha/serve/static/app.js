// centelha web chat. Plain JavaScript, no build step: it talks to the server's own
// OpenAI-compatible API (/v1/chat/completions, streamed as server-sent events).
//
// Conversations and settings live in the browser's localStorage. With "look inside" on,
// each request asks for log-probabilities (top 5 alternatives) and each generated token is
// drawn as a span tinted by its probability; hovering shows the alternatives. With it off,
// nothing of the kind is requested or stored: a reply is kept as its text only.
"use strict";

const $ = (id) => document.getElementById(id);
const STORE = "centelha.conversations";
const SETTINGS = "centelha.settings";
// Where an unreadable conversations entry is copied before the page writes over it, so the
// user's data is not destroyed by the first save after a bad read.
const UNREADABLE = `${STORE}.unreadable`;
const TOP_ALTERNATIVES = 5;

// -- words (Portuguese when the browser prefers it) -----------------------------------------
const WORDS = {
  en: {
    newChat: "New chat", model: "Model", lookInside: "Look inside", settings: "Settings",
    system: "System prompt", systemHint: "You are a helpful assistant.", temperature: "Temperature",
    maxTokens: "Max tokens", apiKey: "API key", legend: "Probability of each token:",
    promptHint: "Write a message…", send: "Send", stop: "Stop", you: "You",
    untitled: "New conversation", chosen: "chosen", noModels: "no models", delete: "Delete",
    dismiss: "Dismiss",
    unreadable: "Saved conversations could not be read; those are not shown.",
    settingsUnreadable: "Saved settings could not be read; the defaults are in use.",
    unsaved: "Could not save the conversation (the browser's storage is full or blocked): "
      + "it stays in this page only until you close it.",
    savedLean: "The browser's storage is nearly full: conversations were saved without "
      + "their probabilities.",
    noLogprobs: "No probabilities for this reply: “look inside” was off when it was written.",
  },
  pt: {
    newChat: "Nova conversa", model: "Modelo", lookInside: "Ver por dentro", settings: "Ajustes",
    system: "Prompt de sistema", systemHint: "Você é um assistente prestativo.",
    temperature: "Temperatura", maxTokens: "Máx. de tokens", apiKey: "Chave da API",
    legend: "Probabilidade de cada token:", promptHint: "Escreva uma mensagem…",
    send: "Enviar", stop: "Parar", you: "Você", untitled: "Nova conversa", chosen: "escolhido",
    noModels: "nenhum modelo", delete: "Apagar", dismiss: "Fechar",
    unreadable: "Não foi possível ler as conversas salvas; elas não aparecem aqui.",
    settingsUnreadable: "Não foi possível ler os ajustes salvos; os padrões estão em uso.",
    unsaved: "Não foi possível salvar a conversa (o armazenamento do navegador está cheio "
      + "ou bloqueado): ela fica só nesta página até você fechá-la.",
    savedLean: "O armazenamento do navegador está quase cheio: as conversas foram salvas "
      + "sem as probabilidades.",
    noLogprobs: "Sem probabilidades para esta resposta: “ver por dentro” estava desligado "
      + "quando ela foi escrita.",
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

// -- notices (storage trouble is told in the page, never thrown at it) ------------------------
function notify(key) {
  let notice = document.querySelector(`#notices [data-key="${key}"]`);
  if (!notice) {
    notice = document.createElement("p");
    notice.className = "notice";
    notice.dataset.key = key;
    const text = document.createElement("span");
    text.textContent = t(key);
    const close = document.createElement("button");
    close.className = "dismiss";
    close.textContent = "×";
    close.title = t("dismiss");
    close.setAttribute("aria-label", t("dismiss"));
    close.onclick = () => notice.remove();
    notice.append(text, close);
    $("notices").append(notice);
  }
}

function unnotify(key) {
  const notice = document.querySelector(`#notices [data-key="${key}"]`);
  if (notice) notice.remove();
}

// -- storage -----------------------------------------------------------------------------------
// localStorage may be full (QuotaExceededError), blocked, or hold what this page did not write
// (an older version, a hand edit, a cut-off write). None of that may stop the chat: reads are
// checked for shape, writes are best-effort, and the user is told.

// The parsed value of `key`: {value} (undefined when absent) or {broken: true}.
function readStored(key) {
  let raw;
  try {
    raw = localStorage.getItem(key);
  } catch (error) {
    return { broken: true, raw: null };
  }
  if (raw === null) return { value: undefined, raw };
  try {
    return { value: JSON.parse(raw), raw };
  } catch (error) {
    return { broken: true, raw };
  }
}

// Whether `value` could be written under `key`.
function writeStored(key, value) {
  try {
    localStorage.setItem(key, typeof value === "string" ? value : JSON.stringify(value));
    return true;
  } catch (error) {
    return false;
  }
}

const isObject = (x) => x !== null && typeof x === "object" && !Array.isArray(x);
const isNumber = (x) => typeof x === "number" && Number.isFinite(x);

function isToken(token) {
  return isObject(token) && typeof token.text === "string" && isNumber(token.p)
    && Array.isArray(token.top)
    && token.top.every((alt) => Array.isArray(alt) && typeof alt[0] === "string" && isNumber(alt[1]));
}

// A message of the shape this page writes, or null.
function cleanMessage(m) {
  if (!isObject(m) || !["user", "assistant"].includes(m.role) || typeof m.content !== "string") {
    return null;
  }
  const message = { role: m.role, content: m.content };
  if (typeof m.model === "string") message.model = m.model;
  if (m.error === true) message.error = true;
  // Bad log-probs only cost the tinting, not the message.
  if (Array.isArray(m.tokens) && m.tokens.every(isToken)) message.tokens = m.tokens;
  return message;
}

// A conversation of the shape this page writes, or null when it or any message is not.
function cleanConversation(c) {
  if (!isObject(c) || !Array.isArray(c.messages)) return null;
  const messages = c.messages.map(cleanMessage);
  if (messages.includes(null)) return null;
  return {
    id: typeof c.id === "string" ? c.id : Math.random().toString(36).slice(2),
    title: typeof c.title === "string" ? c.title : "",
    messages,
  };
}

// The saved conversations that can be read; the rest is kept aside and the user told.
function readConversations() {
  const { value, raw, broken } = readStored(STORE);
  if (value === undefined && !broken) return [];
  const kept = Array.isArray(value) ? value.map(cleanConversation).filter(Boolean) : [];
  if (broken || !Array.isArray(value) || kept.length < value.length) {
    if (raw !== null) writeStored(UNREADABLE, raw);
    notify("unreadable");
  }
  return kept;
}

const SETTING_TYPES = {
  model: "string", system: "string", temperature: "number", top_p: "number",
  max_tokens: "number", lookInside: "boolean",
};

// The saved settings that have the right type; an entry that is not an object is reported.
function readSettings() {
  const { value, broken } = readStored(SETTINGS);
  if (value === undefined && !broken) return {};
  if (broken || !isObject(value)) {
    notify("settingsUnreadable");
    return {};
  }
  const s = {};
  for (const [key, type] of Object.entries(SETTING_TYPES)) {
    const ok = type === "number" ? isNumber(value[key]) : typeof value[key] === type;
    if (ok) s[key] = value[key];
  }
  return s;
}

// The conversations as stored; `lean` leaves out the log-probs, by far the biggest part.
function storedForm(lean) {
  if (!lean) return conversations;
  return conversations.map((c) => ({
    ...c,
    messages: c.messages.map(({ tokens, ...message }) => message),
  }));
}

// Save the conversations; when storage is short, without log-probs; when that fails too,
// the conversations stay in memory and the page says they are not saved.
function save() {
  if (writeStored(STORE, storedForm(false))) {
    unnotify("savedLean");
    unnotify("unsaved");
  } else if (writeStored(STORE, storedForm(true))) {
    notify("savedLean");
    unnotify("unsaved");
  } else {
    notify("unsaved");
  }
}

// -- state -------------------------------------------------------------------------------------
let conversations = [];
let current = null;
let savedSettings = {};
let controller = null; // AbortController of the request in flight
let streaming = null; // the reply being streamed, so a re-render keeps its cursor
const elements = new WeakMap(); // message -> its element now in the page

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
  // Settings are a convenience: when they cannot be written the conversations' notice
  // already says that storage is failing.
  writeStored(SETTINGS, s);
}

function restoreSettings(s) {
  if (s.system) $("system").value = s.system;
  if (s.temperature !== undefined) $("temperature").value = s.temperature;
  if (s.top_p !== undefined) $("top-p").value = s.top_p;
  if (s.max_tokens) $("max-tokens").value = s.max_tokens;
  $("look-inside").checked = !!s.lookInside;
}

const lookInside = () => $("look-inside").checked;

// -- rendering -----------------------------------------------------------------------------------
// The list is rebuilt on every change; keyboard focus inside it stays at the same position
// (the opened item, or the next one after a delete) rather than dropping to the page.
function renderList() {
  const list = $("conversations");
  const focused = [...list.children].findIndex((li) => li.contains(document.activeElement));
  list.replaceChildren(...conversations.map(listItem));
  if (focused < 0) return;
  const item = list.children[Math.min(focused, list.children.length - 1)];
  (item ? item.querySelector(".title") : $("new-chat")).focus();
}

// One conversation in the list: a button that opens it (Enter and Space work as with any
// button) and a button that deletes it.
function listItem(conv) {
  const li = document.createElement("li");
  const isCurrent = conv === current;
  li.className = isCurrent ? "current" : "";
  const title = document.createElement("button");
  title.className = "title";
  title.textContent = conv.title || t("untitled");
  if (isCurrent) title.setAttribute("aria-current", "true");
  title.onclick = () => openConversation(conv);
  const del = document.createElement("button");
  del.className = "delete";
  del.title = t("delete");
  del.setAttribute("aria-label", `${t("delete")}: ${title.textContent}`);
  del.textContent = "×";
  del.onclick = () => deleteConversation(conv);
  li.append(title, del);
  return li;
}

function openConversation(conv) {
  current = conv;
  renderAll();
}

function deleteConversation(conv) {
  conversations = conversations.filter((c) => c !== conv);
  if (current === conv) current = conversations[0] || null;
  save();
  renderAll();
}

function renderMessages() {
  const box = $("messages");
  box.replaceChildren(...(current ? current.messages : []).map(messageElement));
  box.scrollTop = box.scrollHeight;
}

function messageElement(message) {
  const el = document.createElement("div");
  el.className = `message ${message.role}${message.error ? " error" : ""}`;
  if (message === streaming) el.classList.add("streaming");
  const role = document.createElement("div");
  role.className = "role";
  role.textContent = message.role === "user" ? t("you") : message.model || "assistant";
  const body = document.createElement("div");
  body.className = "body";
  fillBody(body, message);
  el.append(role, body);
  if (lookInside() && message.role === "assistant" && !message.error && !message.tokens) {
    // A reply written with "look inside" off has no log-probs: it shows as plain text.
    const hint = document.createElement("div");
    hint.className = "hint";
    hint.textContent = t("noLogprobs");
    el.append(hint);
  }
  elements.set(message, el);
  return el;
}

// The body as a whole: tinted token spans when looking inside and the reply has them, else
// the text. `dataset.view` tells the streaming code which of the two to append to.
function fillBody(body, message) {
  const tinted = lookInside() && !message.error && Array.isArray(message.tokens);
  body.dataset.view = tinted ? "tokens" : "text";
  if (tinted) body.replaceChildren(...message.tokens.map(tokenSpan));
  else body.replaceChildren(message.content);
}

// What one chunk added to a streaming reply goes at the end of its body: the spans already
// there are kept (no flicker, no lost hover or selection, no work growing with the reply).
function appendToReply(reply, text, tokens) {
  const element = elements.get(reply);
  if (!element) return;
  const body = element.querySelector(".body");
  if (body.dataset.view === "tokens") body.append(...tokens.map(tokenSpan));
  else if (text) body.append(text);
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

// The reply is done: drop the cursor; an error is redrawn once (its text replaces the body).
function finishReply(reply) {
  const element = elements.get(reply);
  if (!element) return;
  if (reply.error) element.replaceWith(messageElement(reply));
  else element.classList.remove("streaming");
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
  $("legend").hidden = !lookInside();
}

// -- talking to the server ------------------------------------------------------------------------
async function loadModels() {
  const select = $("model");
  try {
    const response = await fetch("/v1/models", { headers: authHeaders() });
    const data = await response.json();
    select.replaceChildren(...data.data.map((m) => new Option(m.id, m.id)));
    const saved = savedSettings.model;
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

// A probability kept to 3 significant digits: the tooltip shows one decimal of a percent,
// and full doubles would triple what each token costs in storage.
const rounded = (logprob) => Number(Math.exp(logprob).toPrecision(3));

function tokenFrom(entry) {
  return {
    text: entry.token,
    p: rounded(entry.logprob),
    top: entry.top_logprobs.map((alt) => [alt.token, rounded(alt.logprob)]),
  };
}

function chatRequest(s, history) {
  const messages = s.system ? [{ role: "system", content: s.system }, ...history] : history;
  const request = {
    model: s.model, messages, stream: true, temperature: s.temperature, top_p: s.top_p,
    max_tokens: s.max_tokens,
  };
  // Log-probs are asked for only when they will be shown: they cost the server work and
  // the browser's storage.
  if (s.lookInside) Object.assign(request, { logprobs: true, top_logprobs: TOP_ALTERNATIVES });
  return request;
}

async function send(text) {
  if (!current) newConversation();
  const conversation = current;
  const s = settings();
  saveSettings();
  const question = { role: "user", content: text };
  const reply = { role: "assistant", content: "", model: s.model };
  if (s.lookInside) reply.tokens = [];
  const history = conversation.messages.filter((m) => !m.error)
    .map((m) => ({ role: m.role, content: m.content }));
  history.push({ role: "user", content: text });
  conversation.messages.push(question, reply);
  if (!conversation.title) conversation.title = text.slice(0, 60);
  streaming = reply;
  save();
  renderList();
  $("messages").append(messageElement(question), messageElement(reply));

  controller = new AbortController();
  busy(true);
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(chatRequest(s, history)),
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
      const delta = (choice.delta && choice.delta.content) || "";
      const tokens = ((choice.logprobs && choice.logprobs.content) || []).map(tokenFrom);
      reply.content += delta;
      if (reply.tokens) reply.tokens.push(...tokens);
      appendToReply(reply, delta, tokens);
    }
  } catch (error) {
    if (error.name !== "AbortError") {
      reply.error = true;
      reply.content = reply.content || String(error.message || error);
    }
  } finally {
    controller = null;
    streaming = null;
    busy(false);
    save();
    renderList();
    finishReply(reply);
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

function start() {
  translatePage();
  conversations = readConversations();
  current = conversations[0] || null;
  savedSettings = readSettings();
  restoreSettings(savedSettings);
  wire();
  loadModels();
  renderAll();
}

start();
