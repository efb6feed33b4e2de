// fotadelta console: the only script. Pages work without it (reload to see a command's result);
// with it, the regions marked data-poll refresh themselves until the server marks them final.
"use strict";

function poll(el) {
  const every = Number(el.dataset.every || 1500);
  if (el.dataset.final === "true") return;
  setTimeout(async () => {
    let next = el;
    try {
      const r = await fetch(el.dataset.poll, {credentials: "same-origin", headers: {accept: "text/html"}});
      if (r.redirected || r.status === 401) { location.reload(); return; }
      if (r.ok) {
        const t = document.createElement("template");
        t.innerHTML = (await r.text()).trim();
        const fresh = t.content.firstElementChild;
        if (fresh && fresh.dataset.poll) { el.replaceWith(fresh); next = fresh; }
      }
    } catch (e) { /* the server is away: try again later */ }
    poll(next);
  }, every);
}

document.querySelectorAll("[data-poll]").forEach(poll);

// Forms that undo work ask first.
document.addEventListener("submit", (ev) => {
  const q = ev.target.dataset && ev.target.dataset.confirm;
  if (q && !window.confirm(q)) ev.preventDefault();
});
