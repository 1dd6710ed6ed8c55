/* One sweep (/sweeps/{id}): progress, the trials table (sortable by any column), the best
 * trial marked, the objective against each varied parameter, skipped combinations, cancel,
 * delete and "Compare the best N". Polls GET /api/sweeps/{id} every 2 s until the sweep and
 * its trials have stopped. window.gfSweep exposes the state and the uPlot instances (tests
 * read them). */
"use strict";

(() => {
  const root = document.getElementById("sweep");
  const sweepId = root.dataset.sweepId;
  const $ = (id) => document.getElementById(id);
  const { el, fmt } = gf;

  const POLL_MS = 2000;
  const POLL_ERROR_MS = 5000;
  const CHART_HEIGHT = 200;
  const STATUS_ORDER = ["running", "cancelling", "queued", "succeeded", "pruned", "failed", "cancelled"];

  const state = {
    sweep: null,
    params: [], // the varied parameters (dotted spec paths), in the order first seen
    sort: { key: "number", dir: 1 }, // a column key (below) and 1 ascending / -1 descending
    rows: new Map(), // job id -> {tr, key}
    headKey: null,
    chartKey: null,
    plots: {}, // parameter -> uPlot
    timer: null,
    busy: false,
  };
  window.gfSweep = { id: sweepId, state, plots: state.plots };

  const label = (sweep) => sweep.name || `Sweep ${sweep.id.slice(0, 8)}`;
  const isActive = (trial) => !gf.TRIAL_DONE.includes(trial.status);
  const hasValue = (v) => v !== null && v !== undefined && Number.isFinite(v);

  /** A parameter's value as text: strings as they are, numbers through fmt. */
  function show(v) {
    if (v === null || v === undefined) return "–";
    return typeof v === "number" ? fmt(v) : String(v);
  }

  /** The leak audit's mean as one number (the larger of D's and G's when given apart). */
  function leakValue(leak) {
    if (leak === null || leak === undefined) return null;
    if (typeof leak === "number") return leak;
    const parts = [leak.d, leak.g, leak.mean].filter(hasValue);
    return parts.length ? Math.max(...parts) : null;
  }

  function leakText(leak) {
    if (leak === null || leak === undefined) return "–";
    if (typeof leak === "number") return fmt(leak);
    if (hasValue(leak.d) || hasValue(leak.g)) return `D ${fmt(leak.d)} · G ${fmt(leak.g)}`;
    return fmt(leakValue(leak));
  }

  /* ---- columns: key, header, sort value, cell ----------------------------------------- */

  function columns(sweep) {
    const best = sweep.best && sweep.best.job_id;
    const objective = sweep.objective ? sweep.objective.metric : "objective";
    return [
      {
        key: "number", title: "Trial", sort: (t) => t.number,
        cell: (t) => [
          el("a", { href: `/jobs/${t.job_id}`, class: "trial-link", text: `#${t.number}` }),
          t.job_id === best ? el("span", { class: "badge best", text: "best" }) : null,
        ],
      },
      ...state.params.map((p) => ({
        key: `param:${p}`, title: p, param: true, sort: (t) => (t.params || {})[p],
        cell: (t) => show((t.params || {})[p]),
      })),
      {
        key: "value", title: objective, numeric: true, sort: (t) => t.value,
        cell: (t) => show(t.value),
      },
      {
        key: "status", title: "Status", sort: (t) => STATUS_ORDER.indexOf(t.status),
        cell: (t) => [
          gf.badge(t.status),
          hasValue(t.pruned_at)
            ? el("span", { class: "muted small prune", text: ` at step ${t.pruned_at.toLocaleString()}${t.prune_rule ? ` (${t.prune_rule})` : ""}` })
            : null,
        ],
      },
      {
        key: "step", title: "Step", numeric: true, sort: (t) => t.step,
        cell: (t) => (hasValue(t.step) ? `${t.step.toLocaleString()} / ${(t.steps || 0).toLocaleString()}` : "–"),
      },
      {
        key: "sps", title: "Steps/s", numeric: true, sort: (t) => t.steps_per_second,
        cell: (t) => show(t.steps_per_second),
      },
      {
        key: "leak", title: "Leak audit (mean)", numeric: true, sort: (t) => leakValue(t.audit_leak),
        cell: (t) => leakText(t.audit_leak),
      },
    ];
  }

  /** Missing values last whichever the direction; numbers before text. */
  function compare(a, b) {
    const missA = a === null || a === undefined, missB = b === null || b === undefined;
    if (missA || missB) return missA === missB ? 0 : missA ? 1 : -1;
    if (typeof a === "number" && typeof b === "number") return a - b;
    if (typeof a === "number") return -1;
    if (typeof b === "number") return 1;
    return String(a).localeCompare(String(b), undefined, { numeric: true });
  }

  function sorted(trials, cols) {
    const col = cols.find((c) => c.key === state.sort.key) || cols[0];
    return [...trials].sort((x, y) => {
      const a = col.sort(x), b = col.sort(y);
      const missing = (a === null || a === undefined) !== (b === null || b === undefined);
      const order = missing ? compare(a, b) : state.sort.dir * compare(a, b);
      return order || x.number - y.number;
    });
  }

  function renderHead(cols) {
    const key = JSON.stringify([cols.map((c) => c.key), state.sort]);
    if (state.headKey === key) return;
    state.headKey = key;
    const head = $("trials-head");
    const focused = document.activeElement && head.contains(document.activeElement)
      ? document.activeElement.dataset.sort : null;
    head.replaceChildren(
      ...cols.map((c) => {
        const on = c.key === state.sort.key;
        const button = el(
          "button",
          { type: "button", class: "sort", "data-sort": c.key, onclick: () => sortBy(c.key) },
          c.title,
          el("span", { class: "sort-mark", "aria-hidden": "true", text: on ? (state.sort.dir > 0 ? " ▲" : " ▼") : "" }),
        );
        return el("th", {
          scope: "col", class: c.numeric ? "num" : null, "data-col": c.key,
          "aria-sort": on ? (state.sort.dir > 0 ? "ascending" : "descending") : "none",
        }, button);
      }),
    );
    if (focused) head.querySelector(`[data-sort="${CSS.escape(focused)}"]`)?.focus();
  }

  function sortBy(key) {
    // A new column sorts ascending, except the objective, which starts best first.
    if (state.sort.key === key) state.sort.dir = -state.sort.dir;
    else state.sort = { key, dir: key === "value" && state.sweep?.objective?.mode === "max" ? -1 : 1 };
    renderTrials();
    $("sweep-announce").textContent = `Sorted by ${key.replace(/^param:/, "")}, ${state.sort.dir > 0 ? "ascending" : "descending"}.`;
  }

  function renderTrials() {
    const sweep = state.sweep;
    const trials = sweep.trials || [];
    const cols = columns(sweep);
    renderHead(cols);
    const body = $("trials-body");
    const best = sweep.best && sweep.best.job_id;
    const seen = new Set();
    let prev = null;
    for (const trial of sorted(trials, cols)) {
      seen.add(trial.job_id);
      const key = JSON.stringify([trial, trial.job_id === best, state.params]);
      let row = state.rows.get(trial.job_id);
      if (!row) {
        row = { tr: el("tr", { "data-job": trial.job_id }), key: null };
        state.rows.set(trial.job_id, row);
      }
      if (row.key !== key) {
        row.key = key;
        row.tr.dataset.status = trial.status;
        row.tr.dataset.number = trial.number;
        row.tr.classList.toggle("is-best", trial.job_id === best);
        row.tr.replaceChildren(
          ...cols.map((c) => el("td", { class: c.numeric ? "num" : null, "data-col": c.key }, c.cell(trial))),
        );
      }
      const want = prev ? prev.nextSibling : body.firstChild;
      if (want !== row.tr) body.insertBefore(row.tr, want);
      prev = row.tr;
    }
    for (const [id, row] of [...state.rows]) {
      if (!seen.has(id)) {
        row.tr.remove();
        state.rows.delete(id);
      }
    }
    $("trials-empty").hidden = trials.length > 0;
  }

  /* ---- header: status, progress, counts, actions -------------------------------------- */

  function renderHeader() {
    const sweep = state.sweep;
    const name = label(sweep);
    $("sweep-name").textContent = name;
    document.title = `${name} · ganforge`;
    $("sweep-status").replaceWith(Object.assign(gf.badge(sweep.status), { id: "sweep-status" }));
    $("sweep-method").textContent = `method ${sweep.method}`;
    $("sweep-objective").textContent = `objective ${gf.objectiveText(sweep.objective)}`;
    const pruner = typeof sweep.pruner === "string" ? sweep.pruner : sweep.pruner && sweep.pruner.kind;
    $("sweep-pruner").textContent = `pruner ${pruner || "none"}`;
    $("sweep-times").textContent = sweep.finished_at
      ? `created ${gf.when(sweep.created_at)} · ended ${gf.when(sweep.finished_at)}`
      : `created ${gf.when(sweep.created_at)}`;

    const { done, active, total } = gf.sweepProgress(sweep);
    const bar = $("sweep-progress");
    bar.max = Math.max(1, total);
    bar.value = Math.min(done, total);
    const concurrent = sweep.budget ? sweep.budget.concurrent : null;
    $("sweep-progress-text").textContent =
      `${done} of ${total} trials done` + (active ? ` · ${active} active (at most ${concurrent} at once)` : "");
    const counts = sweep.counts || {};
    $("sweep-counts").replaceChildren(
      ...STATUS_ORDER.filter((s) => counts[s]).map((s) =>
        el("li", { "data-status": s }, gf.badge(s), ` ${counts[s]}`)),
    );

    $("sweep-cancel").hidden = sweep.status !== "running";
    $("sweep-delete").hidden = sweep.status === "running";
    renderBest();
    renderCompare();
    renderSkipped();
  }

  function paramsText(params) {
    return Object.entries(params || {}).map(([k, v]) => `${k}=${show(v)}`).join(", ");
  }

  function renderBest() {
    const best = state.sweep.best;
    const box = $("sweep-best");
    if (!best || !hasValue(best.value)) {
      box.textContent = "";
      return;
    }
    const trial = (state.sweep.trials || []).find((t) => t.job_id === best.job_id);
    box.replaceChildren(
      el("strong", { text: "Best: " }),
      `${state.sweep.objective.metric} ${fmt(best.value)} by `,
      el("a", { href: `/jobs/${best.job_id}`, text: trial ? `trial #${trial.number}` : best.job_id.slice(0, 8) }),
      ` (${paramsText(best.params)})`,
    );
  }

  /** The job ids of the n trials with the best objective value: the sweep's best first (it
      decides ties), then by value, ties by trial number. */
  function bestIds(n) {
    const sign = state.sweep.objective && state.sweep.objective.mode === "min" ? 1 : -1;
    const best = state.sweep.best && state.sweep.best.job_id;
    const rank = (t) => (t.job_id === best ? 0 : 1);
    return (state.sweep.trials || [])
      .filter((t) => hasValue(t.value))
      .sort((a, b) => rank(a) - rank(b) || sign * (a.value - b.value) || a.number - b.number)
      .slice(0, n)
      .map((t) => t.job_id);
  }

  function renderCompare() {
    const n = Number($("compare-n").value);
    const ids = bestIds(n);
    const link = $("sweep-compare");
    if (ids.length >= 2) {
      link.href = `/compare?ids=${ids.map(encodeURIComponent).join(",")}`;
      link.removeAttribute("aria-disabled");
      link.textContent = ids.length < n ? `Compare (only ${ids.length} have a value)` : "Compare";
    } else {
      link.removeAttribute("href");
      link.setAttribute("aria-disabled", "true");
      link.textContent = "Compare (needs 2 trials with a value)";
    }
  }

  function renderSkipped() {
    const skipped = state.sweep.skipped || [];
    $("skipped").hidden = skipped.length === 0;
    $("skipped-list").replaceChildren(
      ...skipped.map((s) => el("li", {}, el("code", { text: paramsText(s.params) }), `: ${s.error}`)),
    );
  }

  /* ---- charts: the objective against each parameter ------------------------------------ */

  /** x positions of a parameter's values: the numbers themselves, or indexes of categories. */
  function axisFor(values) {
    if (values.every((v) => typeof v === "number" && Number.isFinite(v))) return { numeric: true };
    const labels = [...new Set(values.map(show))].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
    return { numeric: false, labels, index: new Map(labels.map((l, i) => [l, i])) };
  }

  function renderCharts() {
    const sweep = state.sweep;
    const scored = (sweep.trials || []).filter((t) => hasValue(t.value));
    const key = JSON.stringify([state.params, scored.map((t) => [t.job_id, t.value, t.status]), sweep.best]);
    if (state.chartKey === key) return;
    state.chartKey = key;
    $("charts-empty").hidden = scored.length > 0;
    const box = $("sweep-charts");
    for (const plot of Object.values(state.plots)) plot.destroy();
    for (const k of Object.keys(state.plots)) delete state.plots[k];
    box.replaceChildren();
    if (!scored.length) return;
    const best = sweep.best && sweep.best.job_id;
    for (const param of state.params) {
      const card = el("div", { class: "card chart-card", "data-param": param },
        el("div", { class: "chart-title", text: `${sweep.objective.metric} against ${param}` }));
      const holder = el("div", { class: "chart" });
      card.append(holder);
      box.append(card);
      const points = scored
        .filter((t) => t.params && t.params[param] !== undefined)
        .map((t) => ({ x: t.params[param], y: t.value, t }));
      const axis = axisFor(points.map((p) => p.x));
      const xs = points.map((p) => (axis.numeric ? p.x : axis.index.get(show(p.x))));
      const order = xs.map((_, i) => i).sort((a, b) => xs[a] - xs[b]);
      // One series per kind of trial; uPlot leaves out the nulls.
      const groups = [
        { label: "finished", color: gf.color(0), keep: (t) => t.job_id !== best && t.status !== "pruned" },
        { label: "pruned", color: "#7b4fc9", keep: (t) => t.job_id !== best && t.status === "pruned" },
        { label: "best", color: "#d1495b", size: 12, keep: (t) => t.job_id === best },
      ];
      const data = [order.map((i) => xs[i]), ...groups.map((g) => order.map((i) => (g.keep(points[i].t) ? points[i].y : null)))];
      const def = {
        height: CHART_HEIGHT,
        xLabel: param,
        yLabel: sweep.objective.metric,
        yAxis: { size: 72 }, // room for tick labels such as 8.00e-4 beside the axis label
        series: groups.map((g) => ({ label: g.label, color: g.color, scatter: true, size: g.size })),
      };
      const y = { range: (u, min, max) => pad(min, max) };
      if (axis.numeric) {
        const distinct = [...new Set(xs)];
        def.scales = { x: { time: false, range: (u, min, max) => pad(min, max) }, y };
        if (distinct.length <= 8) def.xAxis = { splits: () => distinct.sort((a, b) => a - b), values: (u, ticks) => ticks.map(fmt) };
        def.xValue = (u, v) => fmt(v);
        // A range searched on a log scale is drawn on one.
        const dim = sweep.space && sweep.space[param];
        if (dim && dim.log) def.scales.x = { time: false, distr: 3, log: 10 };
      } else {
        const n = axis.labels.length;
        def.scales = { x: { time: false, range: () => [-0.5, n - 0.5] }, y };
        def.xAxis = { splits: () => axis.labels.map((_, i) => i), values: (u, ticks) => ticks.map((t) => axis.labels[t] ?? "") };
        def.xValue = (u, v) => (v == null ? "–" : axis.labels[v] ?? "–");
      }
      state.plots[param] = gf.chart(holder, def, data);
    }
  }

  /** Room around a range so the end points are not on the frame. */
  function pad(min, max) {
    if (min === null || max === null) return [0, 1];
    if (min === max) return [min - 1, max + 1];
    const room = (max - min) * 0.08;
    return [min - room, max + room];
  }

  /* ---- load, poll, act ----------------------------------------------------------------- */

  function render(sweep) {
    state.sweep = sweep;
    const seen = new Set(state.params);
    for (const t of sweep.trials || []) {
      for (const p of Object.keys(t.params || {})) {
        if (!seen.has(p)) {
          seen.add(p);
          state.params.push(p);
        }
      }
    }
    for (const s of sweep.skipped || []) {
      for (const p of Object.keys(s.params || {})) {
        if (!seen.has(p)) {
          seen.add(p);
          state.params.push(p);
        }
      }
    }
    renderHeader();
    renderTrials();
    renderCharts();
  }

  const live = (sweep) => sweep.status === "running" || (sweep.trials || []).some(isActive);

  async function poll() {
    clearTimeout(state.timer);
    let wait = POLL_MS;
    try {
      const sweep = await gf.api(`/api/sweeps/${encodeURIComponent(sweepId)}`);
      const was = state.sweep && state.sweep.status;
      if (!state.busy) render(sweep);
      if (was && was !== sweep.status) $("sweep-announce").textContent = `Sweep ${label(sweep)} ${sweep.status}.`;
      $("sweep-error").textContent = "";
      if (!live(sweep)) return; // stopped: nothing more will change
    } catch (err) {
      if (err instanceof gf.ApiError && err.status === 404) {
        $("sweep-error").textContent = "This sweep was deleted.";
        return;
      }
      $("sweep-error").textContent = `Cannot load the sweep (${err.message}); retrying…`;
      wait = POLL_ERROR_MS;
    }
    state.timer = setTimeout(poll, wait);
  }

  async function act(action) {
    const sweep = state.sweep;
    if (!sweep || state.busy) return;
    const name = label(sweep);
    if (action === "delete" && !window.confirm(`Delete sweep “${name}” and its ${sweep.trials.length} trial jobs? This cannot be undone.`)) return;
    state.busy = true;
    const button = $(`sweep-${action}`);
    button.disabled = true;
    try {
      if (action === "delete") {
        await gf.api(`/api/sweeps/${encodeURIComponent(sweepId)}`, { method: "DELETE" });
        clearTimeout(state.timer);
        window.location.assign("/sweeps");
        return;
      }
      const fresh = await gf.api(`/api/sweeps/${encodeURIComponent(sweepId)}/cancel`, { method: "POST" });
      state.busy = false;
      if (fresh && fresh.id) render(fresh);
      gf.toast(`Cancelling ${name}: queued and running trials stop.`);
    } catch (err) {
      gf.toast(`Could not ${action} ${name}: ${err.message}`, 6000);
    } finally {
      state.busy = false;
      button.disabled = false;
    }
    poll();
  }

  $("sweep-cancel").addEventListener("click", () => act("cancel"));
  $("sweep-delete").addEventListener("click", () => act("delete"));
  $("compare-n").addEventListener("change", () => state.sweep && renderCompare());
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && state.sweep && live(state.sweep)) poll();
  });
  poll();
})();
