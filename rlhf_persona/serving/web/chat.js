// The chat page: send a message, show the reply (or two, A and B), collect thumbs, stars, the
// A/B choice, reason tags and comments. No framework and no build step.
//
// Auth: a short-lived per-user token from the link (/chat?token=...) is kept in sessionStorage
// and removed from the address bar; every call sends it as "Authorization: Bearer". No API key
// ever reaches the browser. Each vote is an event with its own id; a retry after a network error
// reuses the id (the server stores it once), and a changed vote is a new event that updates
// the current value.
"use strict";

const TOKEN_KEY = "rlhf_persona_chat_token";
const RETRIES = 3;
let reasonTags = [];
const conversationId = "web-" + randomHex(8);

function randomHex(bytes) {
  const a = new Uint8Array(bytes);
  crypto.getRandomValues(a); // available outside secure contexts, unlike randomUUID
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

function takeToken() {
  const url = new URL(location.href);
  const fromLink = url.searchParams.get("token");
  if (fromLink) {
    sessionStorage.setItem(TOKEN_KEY, fromLink);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search); // keep it out of history
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

const token = takeToken();

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value; // model text is never parsed as HTML
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

// A thumb drawn as SVG (emoji fonts are not everywhere); CSS turns it over for "down".
function thumbIcon() {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", "M7 10v11H3V10h4zm0 0l4-8c1.7 0 3 1.3 3 3v3h5.5c1.2 0 2.1 1.1 1.9 2.3" +
    "l-1.4 8.3c-.2 1-1 1.4-1.9 1.4H7");
  svg.append(path);
  return svg;
}

function notice(message) {
  const box = document.getElementById("notice");
  box.textContent = message || "";
  box.hidden = !message;
}

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function api(method, path, body) {
  // Network errors and 5xx are retried (same body, so the same event id); 4xx are not.
  let last;
  for (let attempt = 0; attempt <= RETRIES; attempt++) {
    if (attempt) await new Promise((r) => setTimeout(r, 300 * 2 ** (attempt - 1)));
    let resp;
    try {
      resp = await fetch(path, {
        method,
        headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      last = new ApiError(0, "network error, retrying");
      continue;
    }
    const data = await resp.json().catch(() => ({}));
    if (resp.ok) return data;
    last = new ApiError(resp.status, data.detail || resp.statusText);
    if (resp.status === 401) notice("Your chat link has expired or is not valid: ask for a new one.");
    if (resp.status < 500) break;
  }
  throw last;
}

// -- feedback ------------------------------------------------------------------------------------

// One queue per reply card: votes go out in the order they were given, so the last one wins.
function makeSender(statusNode) {
  let chain = Promise.resolve();
  return (event) => {
    const payload = { event_id: "web-" + randomHex(12), ...event };
    statusNode.className = "status";
    statusNode.textContent = "saving…";
    chain = chain.then(async () => {
      try {
        const result = await api("POST", "/v1/chat/feedback", payload);
        statusNode.className = "status saved";
        statusNode.textContent = result.status === "updated" ? "✓ updated" : "✓ saved";
        statusNode.dataset.state = result.status;
      } catch (err) {
        statusNode.className = "status error";
        statusNode.textContent = "not saved: " + err.message;
        statusNode.dataset.state = "error";
      }
    });
    return chain;
  };
}

function replyCard(reply, label) {
  const status = el("div", { class: "status", "data-testid": "status", "aria-live": "polite" });
  const send = makeSender(status);
  const state = { thumb: 0, stars: 0, last: null };
  const tagsChecked = () =>
    Array.from(card.querySelectorAll(".tag input:checked"), (input) => input.value);

  // Reason tags travel with the latest thumb or rating (sent again when the tags change).
  function vote(kind, value) {
    state.last = { kind, value };
    return send({ kind, reply_id: reply.reply_id, value, reason_tags: tagsChecked() });
  }

  const up = el("button", { type: "button", class: "thumb up", "aria-pressed": "false",
    "aria-label": "Thumbs up", title: "Good reply", "data-testid": "thumb-up" }, thumbIcon());
  const down = el("button", { type: "button", class: "thumb down", "aria-pressed": "false",
    "aria-label": "Thumbs down", title: "Bad reply", "data-testid": "thumb-down" }, thumbIcon());
  function setThumb(value) {
    state.thumb = state.thumb === value ? 0 : value; // pressing again clears the vote
    up.setAttribute("aria-pressed", String(state.thumb === 1));
    down.setAttribute("aria-pressed", String(state.thumb === -1));
    vote("thumbs", state.thumb);
  }
  up.addEventListener("click", () => setThumb(1));
  down.addEventListener("click", () => setThumb(-1));

  const stars = el("div", { class: "group", role: "radiogroup", "aria-label": "Rating" });
  for (let n = 1; n <= 5; n++) {
    stars.append(el("button", { type: "button", class: "star", role: "radio",
      "aria-checked": "false", "aria-label": `${n} star${n > 1 ? "s" : ""}`,
      "data-testid": `star-${n}`, text: "★", onclick: () => setStars(n) }));
  }
  function setStars(n) {
    state.stars = n;
    stars.querySelectorAll(".star").forEach((star, i) => {
      star.classList.toggle("on", i < n);
      star.setAttribute("aria-checked", String(i + 1 === n));
    });
    vote("rating", n);
  }

  const tagBoxes = el("div", { class: "tags" });
  for (const tag of reasonTags) {
    const input = el("input", { type: "checkbox", value: tag, "data-testid": "tag" });
    input.addEventListener("change", () => {
      if (state.last) vote(state.last.kind, state.last.value);
      else {
        status.className = "status";
        status.textContent = "give a thumb or stars to save the reasons";
      }
    });
    tagBoxes.append(el("label", { class: "tag" }, input, document.createTextNode(tag)));
  }
  const commentBox = el("textarea", { rows: "2", maxlength: "5000",
    placeholder: "Anything else? (optional)", "data-testid": "comment" });
  const commentButton = el("button", { type: "button", "data-testid": "send-comment",
    text: "Send", onclick: () => {
      const text = commentBox.value.trim();
      if (text) send({ kind: "comment", reply_id: reply.reply_id, comment: text });
    } });
  const more = el("details", { class: "more" }, el("summary", { text: "Why? Add reasons or a comment" }),
    tagBoxes, el("div", { class: "comment" }, commentBox, commentButton));

  const card = el("article", { class: "reply", "data-testid": "reply", "data-reply-id": reply.reply_id },
    el("div", { class: "reply-label", text: label }),
    el("div", { class: "reply-text", "data-testid": "reply-text", text: reply.text || "(empty reply)" }),
    el("div", { class: "controls" }, el("div", { class: "group" }, up, down), stars),
    more, status);
  return card;
}

function choiceBar(a, b, cards) {
  const status = el("div", { class: "status", "data-testid": "choice-status", "aria-live": "polite" });
  const send = makeSender(status);
  const buttons = [];
  function choose(slot) {
    buttons.forEach((btn) => btn.setAttribute("aria-pressed", String(btn.dataset.slot === slot)));
    cards.forEach((card, i) => card.classList.toggle("chosen", "AB"[i] === slot));
    // pairwise: +1 = reply_id (A) chosen over other_reply_id (B), -1 = B chosen.
    send({ kind: "pairwise", reply_id: a.reply_id, other_reply_id: b.reply_id,
           value: slot === "A" ? 1 : -1 });
  }
  for (const slot of ["A", "B"]) {
    const btn = el("button", { type: "button", "aria-pressed": "false", "data-slot": slot,
      "data-testid": `choose-${slot}`, text: `${slot} is better`, onclick: () => choose(slot) });
    buttons.push(btn);
  }
  return el("div", { class: "choice", "data-testid": "choice" },
    el("span", { class: "q", text: "Which reply is better?" }), ...buttons, status);
}

// -- chat ----------------------------------------------------------------------------------------

async function sendMessage(text) {
  const log = document.getElementById("log");
  const turn = el("section", { class: "turn", "data-testid": "turn" },
    el("div", { class: "user-msg", text }));
  const waiting = el("div", { class: "reply pending" }, el("div", { class: "reply-text", text: "thinking…" }));
  turn.append(waiting);
  log.append(turn);
  turn.scrollIntoView({ block: "end", behavior: "smooth" });
  try {
    // Not retried: a second request would generate new replies.
    const resp = await fetch("/v1/chat", {
      method: "POST",
      headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" },
      body: JSON.stringify({ message: text, conversation_id: conversationId }),
    });
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      if (resp.status === 401) notice("Your chat link has expired or is not valid: ask for a new one.");
      throw new Error(data.detail || resp.statusText);
    }
    waiting.remove();
    const ab = data.replies.length === 2;
    const cards = data.replies.map((r) => replyCard(r, ab ? `Reply ${r.slot}` : "Reply"));
    turn.append(el("div", { class: ab ? "replies ab" : "replies" }, ...cards));
    if (ab) turn.append(choiceBar(data.replies[0], data.replies[1], cards));
  } catch (err) {
    waiting.querySelector(".reply-text").textContent = "Could not get a reply: " + err.message;
  }
  turn.scrollIntoView({ block: "end", behavior: "smooth" });
}

async function start() {
  const form = document.getElementById("composer");
  const input = document.getElementById("message");
  const button = document.getElementById("send");
  let ready = false; // until the session is known, the form does nothing (never submits natively)
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!ready || !text || button.disabled) return;
    input.value = "";
    input.style.height = "auto";
    button.disabled = true;
    await sendMessage(text);
    button.disabled = false;
    input.focus();
  });
  button.disabled = true;
  if (!token) {
    notice("This page needs your personal chat link (it carries a short-lived token).");
    return;
  }
  try {
    const session = await api("GET", "/v1/chat/session");
    reasonTags = session.reason_tags;
    input.maxLength = session.max_message_chars;
    document.getElementById("who").textContent = "signed in as " + session.user_id;
  } catch (err) {
    if (err.status !== 401) notice("The chat service is not reachable: " + err.message);
    return;
  }
  input.addEventListener("input", () => {
    input.style.height = "auto";
    input.style.height = input.scrollHeight + "px";
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  ready = true;
  button.disabled = false;
  input.focus();
}

start();
