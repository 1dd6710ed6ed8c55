/* ganforge dashboard: /compare?ids=ID,ID,... overlays the metrics of 2 to 6 jobs.

   Each job's spec is flattened to dotted paths (schedule.order, accumulation.steps, ...); the
   paths whose values differ across the jobs (name aside) label the lines, a table lists them,
   and there is one chart per metric with a line per job. The picker lists recent jobs
   (GET /api/jobs) and rewrites the URL. */
"use strict";

const compare = (() => {
  const MIN = 2;
  const MAX = 6;
  const PAGE = 25;
  const MAX_POINTS = 1000;
  const IGNORED = new Set(["name"]);
  const GROUPS = ["loss/", "d/", "grad_norm/", "audit/", "eval/", "perf/"];
  const KNOWN = [
    "loss/d", "loss/g", "loss/penalty", "d/real", "d/fake", "grad_norm/d", "grad_norm/g",
    "audit/leak_d", "audit/leak_g", "eval/modes", "eval/hq", "eval/modes_drs", "eval/hq_drs",
    "eval/drs_acceptance", "eval/modes_refine", "eval/hq_refine", "eval/classifier_score",
    "eval/fcd", "perf/steps_per_s", "perf/samples_per_s",
  ];
  const Y_LABELS = {
    "loss/d": "D loss", "loss/g": "G loss", "loss/penalty": "penalty",
    "d/real": "mean D logit", "d/fake": "mean D logit",
    "grad_norm/d": "grad norm", "grad_norm/g": "grad norm",
    "audit/leak_d": "foreign / own", "audit/leak_g": "foreign / own",
    "eval/modes": "modes", "eval/hq": "fraction", "eval/modes_drs": "modes",
    "eval/hq_drs": "fraction", "eval/drs_acceptance": "fraction", "eval/modes_refine": "modes",
    "eval/hq_refine": "fraction", "eval/classifier_score": "score",
    "eval/fcd": "FCD", "perf/steps_per_s": "steps/s", "perf/samples_per_s": "samples/s",
  };

  // ---- pure helpers (no DOM) -------------------------------------------------------------

  /** "a, b,,a" -> ["a", "b"]: trimmed, empty and repeated ids dropped, order kept. */
  function parseIds(raw) {
    return [...new Set(String(raw || "").split(",").map((s) => s.trim()).filter(Boolean))];
  }

  function isPlainObject(v) {
    return v !== null && typeof v === "object" && !Array.isArray(v);
  }

  /** {a: {b: 1, c: [1, 2]}} -> Map {"a.b" => 1, "a.c" => [1, 2]} (arrays are leaves). */
  function flatten(obj, prefix = "", out = new Map()) {
    for (const [key, value] of Object.entries(obj || {})) {
      const path = prefix ? `${prefix}.${key}` : key;
      if (isPlainObject(value) && Object.keys(value).length) flatten(value, path, out);
      else out.set(path, value);
    }
    return out;
  }

  function formatValue(v) {
    if (v === undefined) return "–";
    if (v === null) return "null";
    if (Array.isArray(v) || isPlainObject(v)) return JSON.stringify(v).replace(/,/g, ", ");
    return String(v);
  }

  /**
   * The spec fields in which the specs differ: {paths, short, values}.
   * paths: dotted paths in spec order; short[path]: the last segment when no other path of
   * these specs ends in it, else the full path; values[path][i]: job i's value.
   */
  function differences(specs) {
    const flat = specs.map((s) => flatten(s));
    const all = [];
    const seen = new Set();
    for (const f of flat) for (const p of f.keys()) if (!seen.has(p)) { seen.add(p); all.push(p); }
    const lastCount = new Map();
    for (const p of all) {
      const last = p.split(".").pop();
      lastCount.set(last, (lastCount.get(last) || 0) + 1);
    }
    const paths = [];
    const short = {};
    const values = {};
    for (const p of all) {
      if (IGNORED.has(p)) continue;
      const vs = flat.map((f) => f.get(p));
      const keys = new Set(vs.map((v) => (v === undefined ? "\u0000missing" : JSON.stringify(v))));
      if (keys.size < 2) continue;
      const last = p.split(".").pop();
      paths.push(p);
      short[p] = lastCount.get(last) === 1 ? last : p;
      values[p] = vs;
    }
    return { paths, short, values };
  }

  function shortId(id) {
    return String(id).slice(0, 8);
  }

  function jobTitle(job) {
    return job.name ? `${job.name} (${shortId(job.id)})` : shortId(job.id);
  }

  /** One legend label per job: "order=g_first, accumulation.steps=4", unique. */
  function lineLabels(jobs, diff) {
    let labels;
    if (!diff.paths.length) {
      const names = jobs.map((j) => j.name || "");
      const distinct = names.every((n) => n) && new Set(names).size === names.length;
      labels = jobs.map((j) => (distinct ? j.name : jobTitle(j)));
    } else {
      labels = jobs.map((_, i) =>
        diff.paths.map((p) => `${diff.short[p]}=${formatValue(diff.values[p][i])}`).join(", "));
    }
    // Two jobs with the same differing values (3+ jobs): tell them apart by id.
    const counts = new Map();
    for (const l of labels) counts.set(l, (counts.get(l) || 0) + 1);
    return labels.map((l, i) => (counts.get(l) > 1 ? `${l} (${shortId(jobs[i].id)})` : l));
  }

  function metricRank(name) {
    const known = KNOWN.indexOf(name);
    if (known >= 0) return [known, name];
    const group = GROUPS.findIndex((g) => name.startsWith(g));
    const base = group >= 0 ? KNOWN.findLastIndex((k) => k.startsWith(GROUPS[group])) + 0.5 : 1e6;
    return [base, name];
  }

  function sortMetrics(names) {
    return [...names].sort((a, b) => {
      const [ra, na] = metricRank(a);
      const [rb, nb] = metricRank(b);
      return ra - rb || (na < nb ? -1 : na > nb ? 1 : 0);
    });
  }

  function lastPoint(column) {
    if (!column) return null;
    for (let i = column.step.length - 1; i >= 0; i--) {
      if (column.value[i] !== null) return { step: column.step[i], value: column.value[i] };
    }
    return null;
  }

  // ---- the page -----------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);
  const el = (...a) => gf.el(...a);
  const plots = [];
  let jobs = [];
  let labels = [];

  function showError(message) {
    const box = $("compare-error");
    box.append(el("p", { text: message }));
    box.hidden = false;
    $("picker").open = true;
  }

  /** uPlot's own padding, but a flat series (audit/leak_* at 0) sits at the bottom of [0, 1]. */
  function yRange(u, min, max) {
    if (min === null || max === null) return [0, 1];
    if (min === max) return min === 0 ? [0, 1] : uPlot.rangeNum(min - Math.abs(min), max + Math.abs(max), 0, true);
    return uPlot.rangeNum(min, max, 0.1, true);
  }

  function swatch(i) {
    return el("span", { class: "swatch", style: `background:${gf.color(i)}`, "aria-hidden": "true" });
  }

  function renderJobs() {
    const list = $("compare-jobs");
    list.replaceChildren(...jobs.map((job, i) => el("li", {},
      swatch(i),
      el("span", { class: "line-label", text: labels[i] }),
      el("a", { href: `/jobs/${encodeURIComponent(job.id)}`, text: jobTitle(job) }),
      gf.badge(job.status),
      el("span", { class: "muted", text: `step ${job.step} of ${job.steps}` }),
    )));
  }

  function renderDiff(diff) {
    const box = $("compare-diff");
    if (!diff.paths.length) {
      box.replaceChildren(el("p", { class: "muted", text: "The specs are identical (names aside)." }));
      return;
    }
    const head = el("tr", {}, el("th", { scope: "col", text: "field" }),
      jobs.map((job, i) => el("th", { scope: "col" }, swatch(i), el("span", { text: jobTitle(job) }))));
    const rows = diff.paths.map((p) => el("tr", {},
      el("th", { scope: "row" }, el("code", { text: p })),
      jobs.map((_, i) => el("td", { text: formatValue(diff.values[p][i]) }))));
    box.replaceChildren(el("div", { class: "table-wrap", tabindex: "0", role: "region",
      "aria-labelledby": "diff-heading" },
    el("table", { class: "diff-table" },
      el("caption", { class: "visually-hidden", text: "Spec fields that differ, by job" }),
      el("thead", {}, head), el("tbody", {}, rows))));
  }

  /** The chart of one metric (gf.chart): a line per job, in the jobs' colours. */
  function chartDef(name) {
    return {
      title: name,
      yLabel: Y_LABELS[name],
      height: 220,
      scales: { y: { range: yRange } },
      series: jobs.map((_, i) => ({ label: labels[i], color: gf.color(i) })),
    };
  }

  /** One figure: the chart, with the last value of each job for screen readers. */
  function metricFigure(name, columns) {
    const figure = el("figure", {
      class: "card compare-chart", "data-metric": name,
      "data-lines": String(columns.filter((c) => c && c.step.length).length),
    });
    const summary = columns.map((c, i) => {
      const last = lastPoint(c);
      return `${labels[i]}: ${last ? `${gf.fmt(last.value)} at step ${last.step}` : "no data"}`;
    }).join("; ");
    figure.append(el("figcaption", { class: "visually-hidden", text: `${name}, last values. ${summary}` }));
    const holder = el("div", { class: "chart", "aria-hidden": "true" });
    figure.append(holder);
    return { figure, holder };
  }

  /** "15 metrics. run-a is not finished: refresh for newer points." (with a Refresh button). */
  function renderChartsStatus(status, metrics) {
    const unfinished = jobs.filter((j) => !["succeeded", "failed", "cancelled"].includes(j.status));
    const parts = [`${metrics.length} metric${metrics.length === 1 ? "" : "s"}.`];
    if (!metrics.length) parts[0] = "No metrics recorded yet.";
    if (unfinished.length) {
      parts.push(`${unfinished.map(jobTitle).join(", ")} ${unfinished.length === 1 ? "is" : "are"} not finished: refresh for newer points.`);
    }
    status.replaceChildren(parts.join(" "));
    if (unfinished.length) {
      status.append(" ", el("button", { type: "button", onclick: () => reload(), text: "Refresh" }));
    }
  }

  async function renderCharts() {
    const status = $("compare-charts-status");
    const box = $("compare-charts");
    while (plots.length) plots.pop().destroy();
    box.replaceChildren();
    status.textContent = "Loading metrics…";
    let answers;
    try {
      answers = await Promise.all(jobs.map((j) =>
        gf.api(`/api/jobs/${encodeURIComponent(j.id)}/metrics?max_points=${MAX_POINTS}`)));
    } catch (err) {
      status.textContent = `Could not load the metrics: ${err.message}`;
      return;
    }
    const names = new Set();
    for (const a of answers) for (const n of Object.keys(a.series)) names.add(n);
    const metrics = sortMetrics(names);
    renderChartsStatus(status, metrics);
    for (const name of metrics) {
      const columns = answers.map((a) => a.series[name]);
      const { figure, holder } = metricFigure(name, columns);
      box.append(figure);
      plots.push(gf.chart(holder, chartDef(name), gf.align(columns)));
    }
  }

  async function reload() {
    const fresh = await Promise.all(jobs.map((j) => gf.api(`/api/jobs/${encodeURIComponent(j.id)}`)));
    jobs = fresh;
    renderJobs();
    await renderCharts();
  }

  // ---- the picker ---------------------------------------------------------------------

  const picker = { selected: [], listed: new Set(), cursor: null };

  function updatePickerState() {
    const n = picker.selected.length;
    for (const box of $("picker-list").querySelectorAll("input[type=checkbox]")) {
      box.checked = picker.selected.includes(box.value);
      box.disabled = !box.checked && n >= MAX;
    }
    $("picker-count").textContent =
      n >= MAX ? `${n} selected (the most)` : `${n} selected`;
    $("picker-ids").value = picker.selected.join(",");
    if (n >= MIN && n <= MAX) $("picker-error").hidden = true;
  }

  function pickerItem(job) {
    const id = `pick-${job.id}`;
    const box = el("input", { type: "checkbox", id, value: job.id, onchange: (e) => {
      const sel = picker.selected.filter((x) => x !== job.id);
      if (e.target.checked) sel.push(job.id);
      picker.selected = sel.slice(0, MAX);
      updatePickerState();
    } });
    const created = gf.when(job.created_at);
    return el("li", {}, box, el("label", { for: id },
      gf.badge(job.status),
      el("span", { class: "pick-name", text: job.name || "unnamed" }),
      el("code", { text: shortId(job.id) }),
      el("span", { class: "muted pick-meta", text: `${job.steps} steps · ${created}` })));
  }

  function addToPicker(list) {
    const ul = $("picker-list");
    for (const job of list) {
      if (picker.listed.has(job.id)) continue;
      picker.listed.add(job.id);
      ul.append(pickerItem(job));
    }
  }

  async function loadPickerPage() {
    const status = $("picker-status");
    const more = $("picker-more");
    more.disabled = true;
    try {
      const query = new URLSearchParams({ limit: String(PAGE) });
      if (picker.cursor) query.set("cursor", picker.cursor);
      const page = await gf.api(`/api/jobs?${query}`);
      addToPicker(page.items);
      picker.cursor = page.next_cursor;
      more.hidden = !picker.cursor;
      status.textContent = picker.listed.size ? "" : "No jobs yet: submit some first.";
      status.hidden = !!picker.listed.size;
    } catch (err) {
      status.hidden = false;
      status.textContent = `Could not list the jobs: ${err.message}`;
    } finally {
      more.disabled = false;
      // Keep only what can be seen (and unticked); a job not listed cannot stay chosen.
      picker.selected = picker.selected.filter((id) => picker.listed.has(id));
      updatePickerState();
    }
  }

  function setupPicker(knownJobs) {
    // The jobs being compared come first, even when they are not among the recent ones.
    addToPicker(knownJobs);
    picker.selected = knownJobs.map((j) => j.id);
    updatePickerState(); // ticked now, not only once the first page of jobs has arrived
    $("picker-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const n = picker.selected.length;
      if (n < MIN || n > MAX) {
        const err = $("picker-error");
        err.textContent = `Pick ${MIN} to ${MAX} jobs (${n} selected).`;
        err.hidden = false;
        return;
      }
      const url = `/compare?ids=${picker.selected.map(encodeURIComponent).join(",")}`;
      window.location.assign(url);
    });
    $("picker-more").addEventListener("click", () => loadPickerPage());
    return loadPickerPage();
  }

  // ---- start ---------------------------------------------------------------------------

  async function fetchJobs(ids) {
    const settled = await Promise.allSettled(ids.map((id) => gf.api(`/api/jobs/${encodeURIComponent(id)}`)));
    const found = [];
    const unknown = [];
    const failed = [];
    settled.forEach((s, i) => {
      if (s.status === "fulfilled") found.push(s.value);
      else if (s.reason && s.reason.status === 404) unknown.push(ids[i]);
      else failed.push(`${ids[i]}: ${s.reason ? s.reason.message : "error"}`);
    });
    return { found, unknown, failed };
  }

  async function start() {
    const ids = parseIds(JSON.parse($("compare-ids").textContent || '""'));
    if (!ids.length) {
      await setupPicker([]);
      return;
    }
    if (ids.length > MAX) {
      showError(`Compare at most ${MAX} jobs at a time: the link names ${ids.length}.`);
    }
    const checked = ids.length <= MAX ? await fetchJobs(ids) : { found: [], unknown: [], failed: [] };
    if (checked.unknown.length) {
      const quoted = checked.unknown.map((id) => `“${id}”`).join(", ");
      showError(checked.unknown.length === 1 ? `No job with id ${quoted}.` : `No jobs with ids ${quoted}.`);
    } else if (checked.failed.length) {
      showError(`Could not load the jobs: ${checked.failed.join("; ")}`);
    }
    if (ids.length < MIN && checked.found.length) {
      // The job page's "Compare with…" links here with its own id: ask for the others.
      const hint = $("compare-hint");
      hint.textContent = `Pick at least one more job to compare with ${jobTitle(checked.found[0])}` +
        ` (${MIN} to ${MAX} jobs in all).`;
      hint.hidden = false;
      $("picker").open = true;
    }
    const picking = setupPicker(checked.found);
    if (ids.length >= MIN && ids.length <= MAX && checked.found.length === ids.length) {
      jobs = checked.found;
      const diff = differences(jobs.map((j) => j.spec));
      labels = lineLabels(jobs, diff);
      $("compare-result").hidden = false;
      renderJobs();
      renderDiff(diff);
      await renderCharts();
    }
    await picking;
  }

  if (typeof document !== "undefined" && document.getElementById("compare-ids")) {
    start().catch((err) => showError(`Something went wrong: ${err.message}`));
  }

  return { parseIds, flatten, differences, lineLabels, sortMetrics, formatValue };
})();
