// camstack live updates: one EventSource; cards and status lists update in place.
// Only textContent and attributes are set (never HTML), so device text stays text.
"use strict";
(function () {
  const live = document.getElementById("live");
  function age(ms) {
    if (!ms) return "—";
    let s = Math.max(0, (Date.now() - Number(ms)) / 1000);
    for (const [u, n] of [["d", 86400], ["h", 3600], ["m", 60]]) {
      if (s >= n) return Math.floor(s / n) + u;
    }
    return Math.floor(s) + "s";
  }
  function tick() {
    for (const el of document.querySelectorAll("[data-age]")) {
      el.textContent = age(el.getAttribute("data-age"));
    }
  }
  function show(v) { return v === null || v === undefined ? "—" : String(v); }
  function updateDevice(c) {
    const sel = '[data-device="' + CSS.escape(c.id) + '"]';
    for (const box of document.querySelectorAll(sel)) {
      for (const el of box.querySelectorAll("[data-f]")) {
        const f = el.getAttribute("data-f");
        el.textContent = f === "alerts" ? c.alerts + " ⚠" : show(c[f]);
        if (f === "alerts") el.classList.toggle("none", !c.alerts);
      }
      const a = box.querySelector("[data-age]");
      if (a) a.setAttribute("data-age", c.last_frame_ms || "");
      if (box.classList.contains("card")) {
        box.className = "card state-" + c.state;
        const img = box.querySelector("img");
        if (c.thumb && img && img.getAttribute("src") !== c.thumb) img.setAttribute("src", c.thumb);
        if (c.thumb && !img) {
          const link = box.querySelector(".thumb");
          link.textContent = "";
          const im = document.createElement("img");
          im.setAttribute("src", c.thumb); im.setAttribute("alt", "latest video of " + c.id);
          im.width = 160; im.height = 120; link.appendChild(im);
        }
      }
    }
    for (const b of document.querySelectorAll('[data-device-state="' + CSS.escape(c.id) + '"]')) {
      b.textContent = c.state; b.className = "badge state-" + c.state;
    }
  }
  function connect() {
    // Changes since this page was rendered come first on the stream (no gap).
    const seq = document.body.getAttribute("data-seq") || "-1";
    const es = new EventSource("/events?since=" + encodeURIComponent(seq));
    es.onopen = function () { if (live) { live.textContent = "● live"; live.className = "live on"; } };
    es.onerror = function () { if (live) { live.textContent = "○ reconnecting"; live.className = "live"; } };
    es.addEventListener("resync", function () { es.close(); location.reload(); });
    es.onmessage = function (ev) {
      let c;
      try { c = JSON.parse(ev.data); } catch (e) { return; }
      if (c && c.type === "device" && typeof c.id === "string") updateDevice(c);
      document.body.setAttribute("data-last-event", String(Date.now()));
    };
  }
  tick();
  setInterval(tick, 1000);
  if (live) connect();
})();
