// The public front widget: renders /public/{name}/front/stream as it changes.
// No inline script or style: colours are set through the CSSOM, text as text.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const HEX = /^[0-9a-fA-F]{6}$/;
  let since = null;

  const imageUrl = (url) =>
    typeof url === "string" && (url.startsWith("https://") || url.startsWith("data:image/")) ? url : null;

  function avatar(url, label, color) {
    const src = imageUrl(url);
    let el;
    if (src) {
      el = document.createElement("img");
      el.src = src;
      el.alt = "";
      el.loading = "lazy";
      el.referrerPolicy = "no-referrer";
    } else {
      el = document.createElement("span");
      el.textContent = (label || "?").trim().charAt(0).toUpperCase() || "?";
      el.setAttribute("aria-hidden", "true");
    }
    el.className = "avatar";
    if (HEX.test(color || "")) el.style.setProperty("--accent", "#" + color);
    return el;
  }

  function fronter(member) {
    const li = document.createElement("li");
    li.className = "fronter";
    const label = member.display_name || member.name || "";
    if (HEX.test(member.color || "")) li.style.setProperty("--accent", "#" + member.color);
    li.append(avatar(member.avatar_url, label, member.color));
    const who = document.createElement("span");
    who.className = "who";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = label || "Someone";
    who.append(name);
    if (member.pronouns) {
      const pronouns = document.createElement("span");
      pronouns.className = "pronouns";
      pronouns.textContent = member.pronouns;
      who.append(pronouns);
    }
    li.append(who);
    return li;
  }

  function ago(iso) {
    const at = Date.parse(iso);
    if (Number.isNaN(at)) return "";
    const minutes = Math.round((Date.now() - at) / 60000);
    const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
    if (minutes < 1) return "since just now";
    if (minutes < 60) return "since " + rtf.format(-minutes, "minute");
    if (minutes < 48 * 60) return "since " + rtf.format(-Math.round(minutes / 60), "hour");
    return "since " + rtf.format(-Math.round(minutes / 1440), "day");
  }

  function showSince() {
    const el = $("since");
    el.textContent = since ? ago(since) : "";
    el.title = since ? new Date(since).toLocaleString() : "";
  }

  function render(front) {
    const system = front.system || {};
    const header = $("system");
    header.hidden = !(system.name || system.tag);
    $("system-name").textContent = system.name || "";
    $("system-tag").textContent = system.tag || "";
    $("system-avatar").replaceChildren(...(imageUrl(system.avatar_url) ? [avatar(system.avatar_url, system.name, system.color)] : []));
    const fronters = Array.isArray(front.fronters) ? front.fronters : [];
    $("fronters").replaceChildren(...fronters.map(fronter));
    $("empty").hidden = fronters.length > 0;
    since = front.since || null;
    showSince();
    $("widget").setAttribute("aria-busy", "false");
    document.body.dataset.fronters = String(fronters.length);
  }

  function status(state, text) {
    const el = $("status");
    el.dataset.state = state;
    el.textContent = text;
  }

  function connect() {
    const source = new EventSource("front/stream");
    source.onopen = () => status("live", "Live");
    source.onmessage = (message) => {
      try {
        render(JSON.parse(message.data));
        status("live", "Live");
      } catch (err) {
        console.warn("front widget: an unreadable message", err);
      }
    };
    source.onerror = () => status("down", "Reconnecting…");  // EventSource retries by itself
  }

  document.addEventListener("DOMContentLoaded", () => {
    connect();
    setInterval(showSince, 30000);
  });
})();
