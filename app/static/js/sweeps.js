/* The Sweeps page (/sweeps): every sweep with its status, method, objective, progress and best
 * value, newest first. Polls GET /api/sweeps every 2 s while a sweep runs (every 10 s when
 * none does, so one started elsewhere still appears); rows are keyed by sweep id and rebuilt
 * only when their data changed. */
"use strict";

(() => {
  const POLL_MS = 2000;
  const IDLE_MS = 10000;
  const POLL_ERROR_MS = 5000;
  const $ = (id) => document.getElementById(id);
  const body = $("sweeps-body");
  const rows = new Map(); // sweep id -> {tr, key}
  const state = { loaded: false, timer: null, failing: false };

  function cells(sweep) {
    const name = sweep.name || `sweep ${sweep.id.slice(0, 8)}`;
    const { done, total } = gf.sweepProgress(sweep);
    const bar = gf.el("progress", { max: Math.max(1, total), value: Math.min(done, total),
      "aria-label": `Progress of ${name}: ${done} of ${total} trials` });
    const best = sweep.best;
    const created = gf.el("time", { datetime: sweep.created_at, text: gf.when(sweep.created_at) });
    return [
      gf.el("td", { class: "col-name" }, gf.el("a", { class: "sweep-name", href: `/sweeps/${sweep.id}`, text: name })),
      gf.el("td", { "data-label": "Status" }, gf.badge(sweep.status)),
      gf.el("td", { "data-label": "Method", text: sweep.method }),
      gf.el("td", { "data-label": "Objective", text: gf.objectiveText(sweep.objective) }),
      gf.el("td", { "data-label": "Progress", class: "col-progress" },
        gf.el("div", { class: "progress-line" }, bar, gf.el("span", { class: "step-text", text: `${done} / ${total}` }))),
      gf.el("td", { "data-label": "Best", class: "col-best" },
        best && best.value !== null && best.value !== undefined
          ? gf.el("a", { href: `/jobs/${best.job_id}`, text: gf.fmt(best.value) }) : "–"),
      gf.el("td", { "data-label": "Created", class: "col-created" }, created),
    ];
  }

  function render(items) {
    state.loaded = true;
    const seen = new Set();
    let prev = null;
    for (const sweep of items) {
      seen.add(sweep.id);
      const key = JSON.stringify([sweep.name, sweep.status, sweep.counts, sweep.budget, sweep.best]);
      let row = rows.get(sweep.id);
      if (!row) {
        row = { tr: gf.el("tr", { "data-id": sweep.id }), key: null };
        rows.set(sweep.id, row);
      }
      if (row.key !== key) {
        row.key = key;
        row.tr.dataset.status = sweep.status;
        row.tr.replaceChildren(...cells(sweep));
      }
      const want = prev ? prev.nextSibling : body.firstChild;
      if (want !== row.tr) body.insertBefore(row.tr, want);
      prev = row.tr;
    }
    for (const [id, row] of [...rows]) {
      if (!seen.has(id)) {
        row.tr.remove();
        rows.delete(id);
      }
    }
    $("sweeps-loading").hidden = true;
    $("sweeps-empty").hidden = rows.size > 0;
    $("sweeps-table").classList.toggle("is-empty", rows.size === 0);
  }

  async function poll() {
    clearTimeout(state.timer);
    let wait = IDLE_MS;
    try {
      const answer = await gf.api("/api/sweeps");
      const items = Array.isArray(answer) ? answer : answer.items;
      render(items);
      if (items.some((s) => s.status === "running")) wait = POLL_MS;
      if (state.failing) {
        state.failing = false;
        $("sweeps-live").textContent = "";
      }
    } catch (err) {
      state.failing = true;
      wait = POLL_ERROR_MS;
      $("sweeps-live").textContent = `Cannot load the sweeps (${err.message || err}); retrying…`;
    }
    state.timer = setTimeout(poll, document.hidden ? Math.max(wait, IDLE_MS) : wait);
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) poll();
  });
  poll();
})();
