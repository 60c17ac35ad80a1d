// The labelling page. Every text from the server is put in with textContent: never parsed as HTML.
"use strict";

const TOKEN_KEY = "rlhf_lab_token";
let token = null;
let item = null;        // the item on screen
let shownAt = 0;        // when it was shown (seconds per label)
let ranking = [];       // response indices chosen so far, best first (K > 2)
let busy = false;

function $(id) { return document.getElementById(id); }

function say(text, isError) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
}

function readToken() {
  const match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", window.location.pathname);  // the token leaves the address bar
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

async function api(path, body) {
  const options = { headers: { "Authorization": "Bearer " + token } };
  if (body !== undefined) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  let payload = {};
  try { payload = await response.json(); } catch (e) { /* empty body */ }
  if (!response.ok) {
    const error = new Error(payload.error || ("HTTP " + response.status));
    error.status = response.status;
    throw error;
  }
  return payload;
}

function letter(position) { return String.fromCharCode(65 + position); }

function showProgress(p) {
  $("progress").textContent = "labelled " + p.labelled + " · batch " + p.batch_done + "/" + p.batch_items + " done";
}

function render(next) {
  item = next.item;
  showProgress(next);
  ranking = [];
  $("reason").value = "";
  $("rating").value = "";
  if (!item) {
    $("task").hidden = true;
    say("Nothing left to label for now. Thank you! Reload later for more.");
    return;
  }
  say("");
  $("task").hidden = false;
  showPrompt(item.prompt);
  const box = $("responses");
  box.replaceChildren();
  item.responses.forEach(function (response, position) {
    const card = document.createElement("div");
    card.className = "response";
    card.dataset.position = String(position);
    const title = document.createElement("h3");
    title.textContent = "Response " + letter(position) + (item.responses.length > 2 ? " [" + (position + 1) + "]" : "");
    const text = document.createElement("div");
    text.className = "text";
    text.textContent = response.text;
    card.append(title, text);
    if (item.responses.length > 2) {
      card.draggable = true;
      card.addEventListener("click", function () { pick(position); });
      card.addEventListener("dragstart", function (e) { e.dataTransfer.setData("text/plain", String(position)); });
      card.addEventListener("dragover", function (e) { e.preventDefault(); });
      card.addEventListener("drop", function (e) { e.preventDefault(); moveBefore(Number(e.dataTransfer.getData("text/plain")), position); });
    }
    box.append(card);
  });
  const pair = item.responses.length === 2;
  $("pair-buttons").hidden = !pair;
  $("rank-buttons").hidden = pair;
  $("rating-box").hidden = !item.rating;
  $("hint").textContent = pair
    ? "Which response is better? Click or press a / b, t for a tie, s to skip."
    : "Rank the responses: press their numbers (or click them) best first, or drag one onto another; Enter submits.";
  shownAt = performance.now();
}

// A dialogue ("\n\nHuman: ... \n\nAssistant: ...") is shown as turns: the last human turn, the one the
// responses answer, in view; the earlier turns folded above it, one click away.
const TURN = /(?:^|\n\n)(Human|Assistant|User|System):[ \t]?/g;

function turnsOf(prompt) {
  const marks = [...prompt.matchAll(TURN)];
  if (marks.length < 2) return null;
  if (prompt.slice(0, marks[0].index).trim()) return null;  // text before the first speaker: not a dialogue
  return marks.map(function (mark, i) {
    const end = i + 1 < marks.length ? marks[i + 1].index : prompt.length;
    return { role: mark[1], text: prompt.slice(mark.index + mark[0].length, end).trim() };
  });
}

function turnBlock(turn) {
  const block = document.createElement("div");
  block.className = "turn " + turn.role.toLowerCase();
  const who = document.createElement("strong");
  who.textContent = turn.role;
  const text = document.createElement("div");
  text.textContent = turn.text;
  block.append(who, text);
  return block;
}

function showPrompt(prompt) {
  const box = $("prompt");
  box.replaceChildren();
  box.classList.remove("dialogue");
  const turns = turnsOf(prompt);
  if (!turns) {
    box.textContent = prompt;
    return;
  }
  // The turn answered: the last one with text from anyone but the assistant (a trailing "Assistant:" is the cue).
  let last = turns.length - 1;
  while (last > 0 && (turns[last].role === "Assistant" || !turns[last].text)) last--;
  box.classList.add("dialogue");
  if (last > 0) {
    const earlier = document.createElement("details");
    earlier.id = "earlier-turns";
    const summary = document.createElement("summary");
    summary.textContent = last + " earlier turn" + (last > 1 ? "s" : "") + " of the conversation";
    earlier.append(summary, ...turns.slice(0, last).map(turnBlock));
    box.append(earlier);
  }
  const answered = turnBlock(turns[last]);
  answered.id = "last-turn";
  box.append(answered, ...turns.slice(last + 1).filter(function (t) { return t.text; }).map(turnBlock));
}

function markRanking() {
  document.querySelectorAll(".response").forEach(function (card) {
    const at = ranking.indexOf(Number(card.dataset.position));
    card.classList.toggle("ranked", at >= 0);
    card.querySelector("h3").textContent = "Response " + letter(Number(card.dataset.position)) +
      " [" + (Number(card.dataset.position) + 1) + "]" + (at >= 0 ? " — rank " + (at + 1) : "");
  });
  say(ranking.length ? "Ranking so far: " + ranking.map(letter).join(" > ") : "");
}

function pick(position) {
  if (!item || position >= item.responses.length || ranking.includes(position)) return;
  ranking.push(position);
  markRanking();
}

function moveBefore(dragged, target) {
  // Dragging a response onto another puts it just above that one in the ranking.
  const order = ranking.length === item.responses.length ? ranking.slice() : item.responses.map(function (_, i) { return i; });
  order.splice(order.indexOf(dragged), 1);
  order.splice(order.indexOf(target), 0, dragged);
  ranking = order;
  markRanking();
}

async function submit(answer) {
  if (!item || busy) return;
  busy = true;
  document.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
  const body = Object.assign({ item_id: item.id, seconds: (performance.now() - shownAt) / 1000 }, answer);
  const reason = $("reason").value.trim();
  if (reason && !answer.skip) body.reason = reason;
  if (!$("rating-box").hidden && $("rating").value && !answer.skip) body.rating = Number($("rating").value);
  try {
    await api("/api/labels", body);
    render(await api("/api/next"));
  } catch (e) {
    if (e.status === 403) {
      // The item is no longer this labeller's (its lease ran out, or the server restarted): the next one.
      try { render(await api("/api/next")); } catch (again) { /* the message below stands */ }
    }
    say("Not saved: " + e.message, true);
  } finally {
    busy = false;
    document.querySelectorAll("button").forEach(function (b) { b.disabled = false; });
  }
}

function choosePair(choice) {
  const [a, b] = item.responses.map(function (r) { return r.index; });
  if (choice === "a") submit({ ranking: [a, b] });
  else if (choice === "b") submit({ ranking: [b, a] });
  else if (choice === "tie") submit({ tie: true });
  else submit({ skip: true });
}

function submitRanking() {
  if (ranking.length === item.responses.length - 1) {
    for (let i = 0; i < item.responses.length; i++) if (!ranking.includes(i)) ranking.push(i);
  }
  if (ranking.length !== item.responses.length) {
    say("Rank every response first (" + ranking.length + " of " + item.responses.length + ").", true);
    return;
  }
  submit({ ranking: ranking.map(function (p) { return item.responses[p].index; }) });
}

document.addEventListener("DOMContentLoaded", async function () {
  token = readToken();
  if (!token) {
    say("Open this page with the link you were given (it ends in #token=...).", true);
    return;
  }
  document.querySelectorAll("#pair-buttons button").forEach(function (button) {
    button.addEventListener("click", function () { choosePair(button.dataset.choice); });
  });
  $("submit-ranking").addEventListener("click", submitRanking);
  $("reset-ranking").addEventListener("click", function () { ranking = []; markRanking(); });
  $("rank-skip").addEventListener("click", function () { submit({ skip: true }); });
  document.addEventListener("keydown", function (e) {
    if (!item || e.target.tagName === "TEXTAREA" || e.target.tagName === "SELECT" || e.ctrlKey || e.metaKey || e.altKey) return;
    const key = e.key.toLowerCase();
    if (item.responses.length === 2) {
      const choice = { a: "a", b: "b", t: "tie", s: "skip", arrowleft: "a", arrowright: "b" }[key];
      if (choice) { e.preventDefault(); choosePair(choice); }
    } else if (/^[1-9]$/.test(key)) {
      pick(Number(key) - 1);
    } else if (key === "enter") {
      e.preventDefault(); submitRanking();
    } else if (key === "r") {
      ranking = []; markRanking();
    } else if (key === "s") {
      submit({ skip: true });
    }
  });
  try {
    const me = await api("/api/me");
    $("who").textContent = me.name + " (" + me.role + ") · campaign " + me.campaign;
    render(await api("/api/next"));
  } catch (e) {
    say(e.message, true);
  }
});
