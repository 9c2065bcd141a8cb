// Live rows on the events page: the browser's EventSource on /events/live (the
// dashboard's copy of /api/stream, authorized by the session cookie). It reconnects by itself and sends Last-Event-ID, so nothing
// logged while the connection was down is missed. Rows are built with textContent only.
(function () {
  "use strict";
  // Every <time class="local" datetime="...Z"> (rendered in UTC): the browser's local time, and how long ago.
  function ago(ms) {
    var s = Math.round(ms / 1000);
    if (s < 60) return "just now";
    var units = [["d", 86400], ["h", 3600], ["min", 60]];
    for (var i = 0; i < units.length; i++) {
      if (s >= units[i][1]) return Math.floor(s / units[i][1]) + " " + units[i][0] + " ago";
    }
    return "";
  }
  function localize(node) {
    var d = new Date(node.getAttribute("datetime"));
    if (isNaN(d)) return;
    node.title = node.textContent;
    node.textContent = ago(Date.now() - d) + " (" + d.toLocaleString([], {dateStyle: "medium", timeStyle: "short"}) + ")";
  }
  Array.prototype.forEach.call(document.querySelectorAll("time.local"), localize);

  var table = document.getElementById("events");
  if (!table || !window.EventSource) return;
  var body = table.tBodies[0];
  var names = JSON.parse(table.dataset.names || "{}");
  var live = document.getElementById("live");
  var query = new URLSearchParams();
  if (table.dataset.system) query.append("system", table.dataset.system);
  if (table.dataset.type) query.append("event_type", table.dataset.type);
  if (table.dataset.after) query.append("after", table.dataset.after);
  var source = new EventSource("/events/live?" + query.toString());

  function time(iso) {
    var d = new Date(iso);
    return isNaN(d) ? iso : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }
  function cell(row, text, href, code) {
    var td = row.insertCell();
    var node = td;
    if (href) { node = document.createElement("a"); node.href = href; td.appendChild(node); }
    if (code) { var c = document.createElement("code"); node.appendChild(c); node = c; }
    node.textContent = text || "";
  }
  source.onopen = function () { live.textContent = "Live: new events appear at the top."; };
  source.onerror = function () { live.textContent = "Live updates paused; reconnecting…"; };
  function add(message) {
    var e = JSON.parse(message.data);
    if (document.getElementById(e.id)) return;
    var row = body.insertRow(0);
    row.id = e.id;
    row.className = "fresh";
    var href = "/events/" + encodeURIComponent(e.id);
    cell(row, time(e.received_at), href);
    cell(row, e.type, href);
    cell(row, names[e.system_id] || e.system_id || "");
    cell(row, e.source);
    cell(row, e.entity_id, null, true);
    var empty = document.getElementById("empty");
    if (empty) empty.remove();
  }
  source.onmessage = add;
})();
