"use strict";
let me = {name: null, role: "viewer", milestones: {}};
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
async function api(path, options) {
  const r = await fetch(path, Object.assign({credentials: "same-origin", signal: AbortSignal.timeout(15000)}, options || {}));
  if (r.status === 401) { window.location = "/login"; throw new Error("signed out"); }
  let body = null;
  try { body = await r.json(); } catch (err) { if (r.ok) throw new Error("the answer was not JSON"); }
  if (!r.ok) throw new Error("HTTP " + r.status + ": " + ((body && body.detail) || r.statusText || "error"));
  return body;
}
function table(id, head, rows) {
  document.getElementById(id).innerHTML =
    "<tr>" + head.map((h) => "<th>" + esc(h) + "</th>").join("") + "</tr>" +
    (rows.length ? rows.map((r) => "<tr>" + r.join("") + "</tr>").join("") : '<tr><td class="muted" colspan="9">none</td></tr>');
}
const td = (v, cls) => "<td" + (cls ? ' class="' + esc(cls) + '"' : "") + ">" + esc(v) + "</td>";
const link = (id) => '<td><a class="transfer-link" data-id="' + esc(id) + '">' + esc(id) + "</a></td>";
function set(id, v) { document.getElementById(id).textContent = v; }

async function refresh() {
  const o = await api("/api/overview");
  set("total-transfers", o.total);
  set("in-flight", o.in_flight);
  set("count-completed", o.by_state.completed || 0);
  set("count-held", o.by_state.held || 0);
  set("count-overdue", o.deadlines.overdue || 0);
  set("dead-letters-waiting", o.dead_letters.waiting);
  table("counts", ["council", "pathway", "state", "transfers"],
        o.counts.map((c) => [td(c.council), td(c.pathway), td(c.state), td(c.n)]));
  table("in-flight-list", ["transfer", "council", "state", "since"],
        o.in_flight_transfers.map((t) => [link(t.transfer_id), td(t.council), td(t.state), td(t.updated_at)]));
  table("overdue", ["transfer", "rule", "what", "due"],
        o.overdue.map((d) => [link(d.transfer_id), td(d.rule_id, "overdue"), td(d.what), td(d.due_at)]));
  table("top-reasons", ["reason", "count"], o.dead_letters.top_reasons.map((r) => [td(r.reason), td(r.count)]));
  await refreshDeadLetters();
  table("lag", ["consumer group", "topic", "lag"], o.consumer_lag.map((l) => [td(l.group), td(l.topic), td(l.lag)]));
  await refreshAlerts();
  Charts.draw(await api("/api/charts"));
  lastRefreshed = new Date().toLocaleTimeString();
  set("updated", lastRefreshed);
}

// The dead letters: one page of /api/dead-letters (newest first; the API pages, so the page costs what it shows),
// of one status or all, older and newer pages by the API's cursor (``next_before``).
const DL_STATUSES = ["waiting", "replayed", "parked", "resolved", "expired"];
const dl = {status: "", cursors: [], next: null, limit: 20};
function deadLetterControls() {
  if (document.getElementById("dead-letter-controls")) return;
  const p = document.createElement("p");
  p.id = "dead-letter-controls";
  p.innerHTML = '<select id="dead-letter-status"><option value="">every status</option>' +
    DL_STATUSES.map((s) => "<option>" + esc(s) + "</option>").join("") + "</select> " +
    '<button id="dead-letters-newer">newer</button> <button id="dead-letters-older">older</button> ' +
    '<span class="muted" id="dead-letters-range"></span>';
  const list = document.getElementById("dead-letters");
  list.parentNode.insertBefore(p, list);
  document.getElementById("dead-letter-status").addEventListener("change", (ev) => {
    dl.status = ev.target.value;
    dl.cursors = [];
    refreshDeadLetters().catch((err) => alert(err.message));
  });
}
async function refreshDeadLetters() {
  deadLetterControls();
  const before = dl.cursors.length ? dl.cursors[dl.cursors.length - 1] : null;
  const query = "limit=" + dl.limit + (dl.status ? "&status=" + encodeURIComponent(dl.status) : "") +
    (before ? "&before=" + encodeURIComponent(before) : "");
  let r;
  try { r = await api("/api/dead-letters?" + query); } catch (err) {
    if (before && err.message.startsWith("HTTP 404")) { dl.cursors = []; return refreshDeadLetters(); }  // gone: newest
    throw err;
  }
  table("dead-letters", ["id", "transfer", "council", "error", "rules", "reason", "status"],
        r.dead_letters.map((d) => [td(d.id), d.transfer_id ? link(d.transfer_id) : td("-"), td(d.council),
          td(d.error_class), td(d.rule_ids.join(", ")), td(d.reason), td(d.status, "dl-" + d.status)]));
  set("dead-letter-statuses", r.total + " in all: " + Object.entries(r.by_status).map(([s, n]) => n + " " + s).join(" · "));
  dl.next = r.next_before;
  const first = dl.cursors.length * dl.limit;
  set("dead-letters-range", r.dead_letters.length
    ? "newest first: " + (first + 1) + " to " + (first + r.dead_letters.length) + " of " + r.matching
    : "none" + (dl.status ? " " + dl.status : ""));
  document.getElementById("dead-letters-newer").disabled = dl.cursors.length === 0;
  document.getElementById("dead-letters-older").disabled = !dl.next;
}

// The banner: what /api/health says is wrong (the tracker not storing or behind, Kafka unreachable), and this
// page's own refresh failing (a network error, a timeout, a non-2xx answer); each line goes when it clears.
let lastRefreshed = null;
function showBanner(lines) {
  document.getElementById("banner-list").innerHTML =
    lines.map((l) => '<li class="banner-' + esc(l.kind) + '" data-kind="' + esc(l.kind) + '">' + esc(l.text) + "</li>").join("");
  document.getElementById("banner").hidden = lines.length === 0;
}
async function tick() {
  const lines = [], failed = [];
  try {
    if (!me.name) {
      me = await api("/api/me");
      set("me", me.name + " (" + me.role + ")");
      document.getElementById("bulk-replay").hidden = me.role !== "operator";
    }
    const h = await api("/api/health");
    for (const p of h.problems) lines.push({kind: p.kind, text: p.message});
  } catch (err) { failed.push(err.message); }
  try { await refresh(); } catch (err) { failed.push(err.message); }
  if (failed.length) lines.push({kind: "refresh-failed", text: "This page could not refresh (" + failed.join("; ") +
    "): the figures shown are from " + (lastRefreshed || "never") + ". Retrying every 2 s."});
  showBanner(lines);
}
async function loop() {
  try { await tick(); } finally { setTimeout(loop, 2000); }
}

async function refreshAlerts() {
  const a = await api("/api/alerts?limit=50");
  set("alerts-open", a.open);
  const open = a.alerts.filter((x) => x.status === "open"), resolved = a.alerts.filter((x) => x.status !== "open");
  table("alerts", ["state", "severity", "transfer", "council", "rules", "summary", "raised", "resolved"],
        open.concat(resolved).map((x) => [td(x.status, x.status === "open" ? "overdue" : ""), td(x.severity),
          x.transfer_id ? link(x.transfer_id) : td("-"), td(x.council), td(x.rule_ids.join(", ")), td(x.summary),
          td(x.raised_at), td(x.resolved_at ? x.resolved_by + " " + x.resolved_at : "")]));
}

async function search() {
  const q = document.getElementById("search-input").value.trim();
  const r = await api("/api/transfers?q=" + encodeURIComponent(q));
  document.getElementById("search-results").innerHTML = r.transfers.length
    ? "<table>" + r.transfers.map((t) => "<tr>" + link(t.transfer_id) + td(t.council) + td(t.direction) + td(t.state) + "</tr>").join("") + "</table>"
    : '<p class="muted">no transfer starts with that id</p>';
  if (r.transfers.length === 1) openTransfer(r.transfers[0].transfer_id);
}

function describe(e) {
  const bits = [];
  if (e.violations) bits.push(e.violations.map((v) => v.rule_id + ": " + v.message).join("; "));
  if (e.errors) bits.push(e.errors.map((x) => x.field + " (" + x.rule + ")").join("; "));
  for (const k of ["target_system", "target_reference", "assigned_role", "tier", "error_class", "reason", "summary", "milestone", "operator"])
    if (e[k] !== undefined && e[k] !== null) bits.push(k + "=" + e[k]);
  if (e.rule_ids && e.rule_ids.length) bits.push("rules " + e.rule_ids.join(", "));
  return bits.join(" · ");
}

async function openTransfer(id) {
  const d = await api("/api/transfers/" + encodeURIComponent(id));
  const t = d.transfer;
  let html = '<section id="timeline"><h2>Transfer <code id="timeline-transfer-id">' + esc(t.transfer_id) + "</code></h2>" +
    '<p class="muted">' + esc(t.council) + " · " + esc(t.direction) + " · " + esc(t.from_system) + " → " + esc(t.to_system) +
    ' · state <b id="timeline-state">' + esc(t.state) + "</b></p><table><tr><th>when</th><th>event</th><th>detail</th></tr>" +
    d.timeline.map((e) => '<tr class="timeline-event">' + td(e.occurred_at) + td(e.event_type, e.severity) + td(describe(e)) + "</tr>").join("") +
    "</table>";
  if (d.deadlines.length) {
    html += "<h2>Deadlines</h2><table><tr><th>rule</th><th>what</th><th>due</th><th>state</th></tr>" +
      d.deadlines.map((s) => "<tr>" + td(s.rule_id) + td(s.what) + td(s.due_at) + td(s.state + (s.met_late ? " (late)" : ""), s.state) + "</tr>").join("") + "</table>";
  }
  if (me.role === "operator") {
    const waiting = d.dead_letters.filter((x) => x.status === "waiting");
    if (waiting.length) html += '<p><button id="replay-button" data-id="' + esc(t.transfer_id) + '">Replay ' + waiting.length + " dead letter(s)</button></p>";
    const names = Object.keys(me.milestones).filter((n) => me.milestones[n][t.council]);
    if (names.length) html += '<p>Record milestone: <select id="milestone">' + names.map((n) => "<option>" + esc(n) + "</option>").join("") +
      '</select> <button id="milestone-button" data-id="' + esc(t.transfer_id) + '">Record</button></p>';
  }
  html += '<p id="action-result" class="muted"></p></section>';
  document.getElementById("timeline-panel").innerHTML = html;
}

// Replay, as the CLI does it: a preview of exactly what would be replayed (ids, transfers, councils, reasons,
// and whether a router is consuming), then an explicit confirmation of those ids and no others.
let pendingReplay = null;
function bulkFilters() {
  const f = {};
  for (const [key, id] of [["council", "bulk-council"], ["rule_id", "bulk-rule"], ["error_class", "bulk-error"], ["pathway", "bulk-pathway"]]) {
    const v = document.getElementById(id).value.trim();
    if (v) f[key] = v;
  }
  return f;
}
async function replayCall(body) {
  return api("/api/replay", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
}
async function previewReplay(filters) {
  const r = await replayCall(Object.assign({}, filters, {dry_run: true}));
  pendingReplay = {filters: filters, ids: r.selected};
  let html = '<section id="replay-preview-panel"><h2>Replay preview</h2><p id="replay-preview-summary">would replay ' +
    r.selected.length + " dead letter(s)" + (r.already_replayed.length ? "; " + r.already_replayed.length + " already replayed" : "") +
    (r.by_reference.length ? "; " + r.by_reference.length + " too big to replay" : "") + '</p><p id="replay-router" class="muted">router: ' +
    esc(r.router) + (r.router === "none consuming" ? " (replayed messages wait until casebridge run starts)" : "") + "</p>";
  if (r.letters.length) {
    html += "<table><tr><th>id</th><th>transfer</th><th>council</th><th>error</th><th>rules</th><th>reason</th><th>status</th></tr>" +
      r.letters.map((d) => '<tr class="replay-letter">' + td(d.id) + td(d.transfer_id || "-") + td(d.council) + td(d.error_class) +
        td((d.rule_ids || []).join(", ")) + td(d.reason) + td(d.status) + "</tr>").join("") + "</table>" +
      '<p><button id="replay-confirm-button">Replay these ' + r.letters.length + '</button> <button id="replay-cancel-button">Cancel</button></p>';
  }
  html += '<p id="replay-result" class="muted"></p></section>';
  document.getElementById("replay-preview").innerHTML = html;
  document.getElementById("replay-preview").scrollIntoView();
}
async function confirmReplay() {
  if (!pendingReplay) return;
  const chosen = pendingReplay;
  pendingReplay = null;
  const r = await replayCall(Object.assign({}, chosen.filters, {dead_letter_ids: chosen.ids}));
  set("replay-result", "replayed " + r.replayed.length + (r.already_replayed.length ? ", already replayed " + r.already_replayed.length : ""));
  const button = document.getElementById("replay-confirm-button");
  if (button) button.disabled = true;
}

document.addEventListener("click", async (ev) => {
  const el = ev.target;
  try {
    if (el.classList.contains("transfer-link")) await openTransfer(el.dataset.id);
    else if (el.id === "search-button") await search();
    else if (el.id === "dead-letters-older" && dl.next) { dl.cursors.push(dl.next); await refreshDeadLetters(); }
    else if (el.id === "dead-letters-newer") { dl.cursors.pop(); await refreshDeadLetters(); }
    else if (el.id === "replay-button") await previewReplay({transfer_id: el.dataset.id});
    else if (el.id === "bulk-preview-button") await previewReplay(bulkFilters());
    else if (el.id === "replay-confirm-button") await confirmReplay();
    else if (el.id === "replay-cancel-button") { pendingReplay = null; document.getElementById("replay-preview").innerHTML = ""; }
    else if (el.id === "milestone-button") {
      const m = document.getElementById("milestone").value;
      await api("/api/transfers/" + encodeURIComponent(el.dataset.id) + "/milestones", {method: "POST",
        headers: {"Content-Type": "application/json"}, body: JSON.stringify({milestone: m})});
      set("action-result", "recorded " + m);
    }
  } catch (err) { alert(err.message); }
});
document.getElementById("search-input").addEventListener("keydown", (ev) => { if (ev.key === "Enter") search(); });

loop();
