// The campaign status page (admin token). Texts go in with textContent only.
"use strict";

function $(id) { return document.getElementById(id); }

function cell(row, value) {
  const td = document.createElement("td");
  td.textContent = value === null || value === undefined ? "-" : String(value);
  row.append(td);
}

function fixed(x) { return x === null || x === undefined ? null : x.toFixed(3); }

async function load(token) {
  const response = await fetch("/api/status", { headers: { "Authorization": "Bearer " + token } });
  const status = await response.json();
  if (!response.ok) throw new Error(status.error || ("HTTP " + response.status));
  $("campaign").textContent = status.campaign + " · " + status.labels + " labels";
  const batches = $("batches").querySelector("tbody");
  batches.replaceChildren();
  Object.entries(status.batches).forEach(function ([name, b]) {
    const row = document.createElement("tr");
    cell(row, name); cell(row, b.done); cell(row, b.items);
    batches.append(row);
  });
  const summary = $("summary").querySelector("tbody");
  summary.replaceChildren();
  [["Krippendorff's alpha (nominal, crowd)", fixed(status.krippendorff_alpha)],
   ["mean per-item agreement", fixed(status.mean_item_agreement)],
   ["items routed to an expert", status.needs_expert],
   ["gold items", status.gold_items], ["repeated items", status.repeated_items],
   ["online items (with feedback)", status.online.items + " (" + status.online.with_feedback + ")"],
   ["online thumbs (share up)", status.online.thumbs + " (" + fixed(status.online.thumbs_up_share) + ")"],
   ["online ratings (mean)", status.online.ratings + " (" + fixed(status.online.mean_rating) + ")"],
   ["online choices", status.online.choices]].forEach(function ([name, value]) {
    const row = document.createElement("tr");
    cell(row, name); cell(row, value);
    summary.append(row);
  });
  const people = $("labellers").querySelector("tbody");
  people.replaceChildren();
  status.labellers.forEach(function (q) {
    const row = document.createElement("tr");
    if (q.flags.length) row.className = "flagged";
    cell(row, q.name); cell(row, q.role); cell(row, q.labels); cell(row, q.skips);
    cell(row, q.gold_accuracy === null ? null : fixed(q.gold_accuracy) + " (" + q.gold_labels + ")");
    cell(row, q.self_consistency === null ? null : fixed(q.self_consistency) + " (" + q.repeats + ")");
    cell(row, q.median_seconds === null ? null : q.median_seconds.toFixed(1));
    cell(row, q.excluded ? "yes" : "no"); cell(row, q.flags.join("; "));
    people.append(row);
  });
}

document.addEventListener("DOMContentLoaded", function () {
  const match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
  if (match) {
    sessionStorage.setItem("rlhf_lab_admin_token", decodeURIComponent(match[1]));
    history.replaceState(null, "", window.location.pathname);
  }
  const token = sessionStorage.getItem("rlhf_lab_admin_token");
  if (!token) { $("message").textContent = "Open this page with the admin link (#token=...)."; return; }
  const refresh = function () { load(token).then(function () { $("message").textContent = ""; }, function (e) { $("message").textContent = e.message; }); };
  refresh();
  setInterval(refresh, 5000);
});
