/* ganforge dashboard: one job (/jobs/{id}). Header, live charts, sample gallery, generation,
 * checkpoints, spec, warnings, status timeline and error. Initial state comes from the REST
 * API; while the job is not finished one EventSource (gf.follow) keeps everything current.
 * window.gfJob exposes the state and the uPlot instances (tests read them). */
"use strict";

(() => {
  const root = document.getElementById("job");
  const jobId = root.dataset.jobId;
  const $ = (id) => document.getElementById(id);
  const { el, fmt } = gf;

  const FINISHED = ["succeeded", "failed", "cancelled"];
  // A job that may still run (app.models.ACTIVE): its newest checkpoint cannot be deleted.
  const ACTIVE = ["queued", "running", "cancelling"];
  const MAX_POINTS = 2000;
  // A live series longer than this is fetched again, downsampled by the server.
  const REFETCH_ABOVE = 4 * MAX_POINTS;
  const CHART_HEIGHT = 190;

  /* Chart groups, in page order; a chart shows the group's series the job has.
   * y: its value axis (a key of Y_AXES, "linear" when absent); points: mark every point (sparse
   * series); lineWidth, colors: of its lines; note(card, names): writes the card's note. */
  const GROUPS = [
    { key: "loss", title: "Losses", names: ["loss/d", "loss/g", "loss/penalty"] },
    { key: "d", title: "D outputs (mean logits)", names: ["d/real", "d/fake"] },
    { key: "grad", title: "Gradient norms", names: ["grad_norm/d", "grad_norm/g"], y: "log" },
    { key: "audit", title: "Gradient-leak audit", names: ["audit/leak_d", "audit/leak_g"], y: "audit",
      lineWidth: 2, colors: ["#d1495b", "#e9a03b"], note: auditNote },
    { key: "eval", title: "Evaluation", y: "eval", points: true,
      names: ["eval/modes", "eval/hq", "eval/classifier_score", "eval/fcd", "eval/fid", "eval/kid"] },
    // The guided samplers beside plain (ring and grid): a sampler that sharpens samples by
    // dropping modes shows as a lower line on the modes chart.
    { key: "samplers_hq", title: "High quality by sampler", y: "sampler", points: true,
      names: ["eval/hq", "eval/hq_drs", "eval/hq_refine"], only: ["eval/hq_drs", "eval/hq_refine"] },
    { key: "samplers_modes", title: "Modes by sampler", y: "sampler", points: true,
      names: ["eval/modes", "eval/modes_drs", "eval/modes_refine"],
      only: ["eval/modes_drs", "eval/modes_refine"] },
    { key: "perf", title: "Throughput", names: ["perf/steps_per_s"], colors: ["#4d7f17"] },
  ];

  /* Each kind of value axis as gf.chart options, for the names a chart shows. */
  const Y_AXES = {
    linear: () => ({}),
    log: () => ({ scales: { y: { distr: 3, log: 10 } }, yAxis: { splits: logSplits } }),
    audit: () => ({ scales: { y: { range: auditRange } }, hooks: { drawAxes: [drawZeroLine] } }),
    eval: evalAxes,
    // One axis for plain's and each sampler's value of one metric.
    sampler: (names) => ({
      scales: { y: { range: evalRange(names[0]) } },
      yAxis: { label: evalLabel(names[0]) },
    }),
  };

  const state = {
    job: null,
    series: {}, // metric name -> {step: [], value: []}, ascending steps
    lastStep: {}, // metric name -> the last step held
    plots: {}, // group key -> uPlot
    shown: {}, // group key -> the names its plot was built with
    loading: 0, // metric fetches in flight: SSE points wait in `pending` meanwhile
    pending: [],
    samples: [], // {id, step, url}, by step
    sampleId: null, // the sample on show; null: follow the latest
    checkpoints: [],
    retention: null, // GET /api/jobs/{id}/retention: the policy in force
    source: null,
    timer: null,
    refetchTimer: null,
    checkpointTimer: null,
    genUrl: null,
    lossHistory: [], // lengths of the loss plot's data after each update (for tests)
  };
  window.gfJob = { id: jobId, state, plots: state.plots };

  /* ---- formatting ------------------------------------------------------------------- */

  function bytes(n) {
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${i ? n.toFixed(n < 10 ? 1 : 0) : n} ${units[i]}`;
  }

  const isActive = (job) => job && !FINISHED.includes(job.status);

  /* ---- header, timeline, warnings, error --------------------------------------------- */

  function renderJob() {
    const job = state.job;
    if (!job) return;
    const name = job.name || `Job ${job.id.slice(0, 8)}`;
    $("job-name").textContent = name;
    document.title = `${name} · ganforge`;
    $("job-status").replaceWith(Object.assign(gf.badge(job.status), { id: "job-status" }));
    $("job-tags").replaceChildren(...job.tags.map((t) => el("span", { class: "tag", text: t })));
    renderProgress();
    $("job-cancel").hidden = !["queued", "running"].includes(job.status);
    $("job-resume").hidden = !["failed", "cancelled"].includes(job.status);

    const error = $("job-error");
    error.hidden = !job.error;
    $("job-error-text").textContent = job.error || "";
    error.querySelector("strong").textContent =
      job.status === "failed" ? "The job failed." : "Error";

    $("job-warnings").replaceChildren(
      ...job.warnings.map((w) => el("div", { class: "warning", role: "note" }, el("strong", { text: "Warning: " }), w))
    );
    renderTimeline();
    if ($("spec").dataset.filled !== "1") {
      $("spec").textContent = JSON.stringify(job.spec, null, 2);
      $("spec").dataset.filled = "1";
    }
    const live = isActive(job);
    $("charts-empty").textContent = live ? "No metric points yet." : "This job recorded no metric points.";
    $("samples-empty").textContent = live ? "No samples yet." : "This job saved no samples.";
    $("checkpoints-empty").textContent = live ? "No checkpoints yet." : "This job wrote no checkpoint.";
    updateGenerateHint();
    tick();
    if (isActive(job) && !state.timer) state.timer = setInterval(tick, 1000);
    if (!isActive(job) && state.timer) { clearInterval(state.timer); state.timer = null; }
  }

  function renderProgress() {
    const job = state.job;
    const progress = $("job-progress");
    progress.max = Math.max(1, job.steps);
    progress.value = Math.min(job.step, job.steps);
    const pct = job.steps ? Math.floor((100 * job.step) / job.steps) : 0;
    $("job-step").textContent = `step ${job.step.toLocaleString()} / ${job.steps.toLocaleString()} (${pct}%)`;
  }

  function tick() {
    const job = state.job;
    if (!job) return;
    const { elapsed, remaining } = gf.timing(job);
    let text = "";
    if (elapsed === null) text = job.status === "queued" ? "waiting for a worker" : "not started";
    else if (!isActive(job)) text = `ran ${gf.duration(elapsed)}`;
    else {
      text = `elapsed ${gf.duration(elapsed)}`;
      if (remaining !== null) text += ` · about ${gf.duration(remaining)} left`;
    }
    $("job-timing").textContent = text;
  }

  function renderTimeline() {
    const job = state.job;
    const item = (label, iso, cls, extra) =>
      el("li", { class: iso ? `done ${cls || ""}` : "pending" },
        el("span", { class: "dot", "aria-hidden": "true" }),
        el("span", { class: "what", text: label }),
        iso ? el("time", { datetime: iso, text: gf.when(iso) }) : el("span", { class: "muted", text: "not yet" }),
        extra || null);
    const finishedLabel = FINISHED.includes(job.status) ? gf.badge(job.status) : null;
    $("timeline").replaceChildren(
      item("Created", job.created_at),
      item("Started", job.started_at),
      item("Finished", job.finished_at, job.status, finishedLabel),
    );
    const attempt = job.attempt || 0;
    $("job-attempt").textContent = attempt > 1
      ? `Attempt ${attempt} (resumed ${attempt - 1} time${attempt > 2 ? "s" : ""}); the times are this attempt's.`
      : `Attempt ${attempt}.`;
    if (job.created_by) $("job-attempt").textContent += ` Submitted with the token “${job.created_by}”.`;
    if (job.worker) {
      const gpus = job.devices && job.devices.length ? `, GPUs ${job.devices.join(", ")}` : ", no GPU";
      $("job-attempt").textContent += ` Ran on ${job.worker.split(":")[0]} (worker ${job.worker}${gpus}).`;
    }
  }

  async function act(what) {
    const button = $(what === "cancel" ? "job-cancel" : "job-resume");
    button.disabled = true;
    try {
      const job = await gf.api(`/api/jobs/${jobId}/${what}`, { method: "POST" });
      const resumed = what === "resume";
      onJob(job);
      gf.toast(resumed ? "Resumed: the job is queued again" : "Cancel requested");
      if (resumed) {
        // The worker rewinds what was recorded after the checkpoint: load everything again.
        resetMetrics();
        loadMetrics();
        loadSamples();
        loadCheckpoints();
        startFollow();
      }
    } catch (err) {
      gf.toast(`${what}: ${err.message}`, 6000);
      refreshJob();
    } finally {
      button.disabled = false;
    }
  }

  async function refreshJob() {
    try { onJob(await gf.api(`/api/jobs/${jobId}`)); } catch (err) { gf.toast(err.message); }
  }

  /* ---- charts ------------------------------------------------------------------------ */

  function resetMetrics() {
    for (const key of Object.keys(state.plots)) { state.plots[key].destroy(); delete state.plots[key]; }
    state.series = {};
    state.lastStep = {};
    state.shown = {};
    state.lossHistory.length = 0;
    $("charts").replaceChildren();
  }

  async function loadMetrics() {
    state.loading++;
    try {
      const body = await gf.api(`/api/jobs/${jobId}/metrics?max_points=${MAX_POINTS}`);
      state.series = {};
      state.lastStep = {};
      for (const [name, s] of Object.entries(body.series)) {
        state.series[name] = { step: s.step.slice(), value: s.value.slice() };
        state.lastStep[name] = s.step.length ? s.step[s.step.length - 1] : -1;
      }
    } catch (err) {
      gf.toast(`metrics: ${err.message}`);
    } finally {
      state.loading--;
    }
    const waiting = state.pending.splice(0);
    for (const columns of waiting) merge(columns);
    updateCharts();
  }

  /** Append the points after the last step held (the stream starts from the beginning). */
  function merge(columns) {
    let longest = 0;
    for (const [name, s] of Object.entries(columns)) {
      const held = state.series[name] || (state.series[name] = { step: [], value: [] });
      const last = state.lastStep[name] ?? -1;
      for (let i = 0; i < s.step.length; i++) {
        if (s.step[i] > last) { held.step.push(s.step[i]); held.value.push(s.value[i]); }
      }
      if (held.step.length) state.lastStep[name] = held.step[held.step.length - 1];
      longest = Math.max(longest, held.step.length);
    }
    return longest;
  }

  function onMetrics(columns) {
    if (state.loading) { state.pending.push(columns); return; }
    const longest = merge(columns);
    updateCharts();
    if (longest > REFETCH_ABOVE && !state.refetchTimer) {
      state.refetchTimer = setTimeout(() => { state.refetchTimer = null; loadMetrics(); }, 2000);
    }
  }

  /** The group's series this job has; none when it has none of the group's `only` names
   * (the samplers' charts need a guided series, not plain's alone). */
  function present(group) {
    const has = (n) => state.series[n] && state.series[n].step.length;
    if (group.only && !group.only.some(has)) return [];
    return group.names.filter(has);
  }

  /** The group's series on one x axis (gf.align); log axes cannot show values <= 0. */
  function plotData(group, names) {
    const positive = (v) => (v !== null && v <= 0 ? null : v);
    return gf.align(names.map((n) => state.series[n]), group.y === "log" ? positive : undefined);
  }

  function updateCharts() {
    let any = false;
    for (const group of GROUPS) {
      const names = present(group);
      if (!names.length) continue;
      any = true;
      const card = chartCard(group);
      const plot = state.plots[group.key];
      if (!plot || state.shown[group.key].join() !== names.join()) {
        if (plot) plot.destroy();
        state.shown[group.key] = names;
        state.plots[group.key] = buildPlot(group, names, card.querySelector(".chart"));
      } else {
        plot.setData(plotData(group, names), !plot.gfZoomed);
      }
      if (group.note) group.note(card, names);
      if (group.key === "loss") {
        state.lossHistory.push(state.plots.loss.data[0].length);
        if (state.lossHistory.length > 200) state.lossHistory.splice(0, 100);
      }
    }
    $("charts-empty").hidden = any;
  }

  function chartCard(group) {
    let card = $(`chart-${group.key}`);
    if (card) return card;
    const titleId = `chart-${group.key}-title`;
    card = el("section", { class: "card chart-card", id: `chart-${group.key}`, "aria-labelledby": titleId, "data-group": group.key },
      el("h3", { class: "chart-title", id: titleId, text: group.title }),
      el("div", { class: "chart", role: "img" }),
      group.note ? el("p", { class: "chart-note", "aria-live": "polite" }) : null);
    // Keep the page order of GROUPS whatever order the metrics appear in.
    const order = GROUPS.map((g) => g.key);
    const after = [...$("charts").children].find(
      (c) => order.indexOf(c.dataset.group) > order.indexOf(group.key));
    $("charts").insertBefore(card, after || null);
    return card;
  }

  function buildPlot(group, names, container) {
    container.setAttribute("aria-label",
      `${group.title}: ${names.join(", ")} by step${group.y === "log" ? " (log scale)" : ""}`);
    const axes = Y_AXES[group.y || "linear"](names);
    const dual = Boolean(axes.scales && axes.scales.y2);
    const series = names.map((name, i) => {
      const color = (group.colors && group.colors[i]) || gf.color(i);
      return {
        label: name, color, width: group.lineWidth, scale: dual && i > 0 ? "y2" : "y",
        points: group.points ? { show: true, size: 6, fill: color } : { show: false },
      };
    });
    return gf.chart(container, { height: CHART_HEIGHT, series, ...axes }, plotData(group, names));
  }

  /** Zero at the bottom with a margin, so an all-zero run draws a clear line. */
  function auditRange(u, min, max) {
    const top = max > 0 && isFinite(max) ? max * 1.15 : 1;
    return [-0.06 * top, top];
  }

  /** The evaluation chart's axes: the first metric's on the left, a second's on the right. */
  function evalAxes(names) {
    const def = {
      scales: { y: { range: evalRange(names[0]) } },
      yAxis: { label: evalLabel(names[0]) },
    };
    if (names[0] === "eval/modes") def.yAxis.incrs = [1, 2, 5, 10, 20, 50, 100];
    if (names.length > 1) {
      def.scales.y2 = { range: evalRange(names[1]) };
      def.axes = [{ scale: "y2", side: 1, grid: { show: false }, label: evalLabel(names[1]) }];
    }
    return def;
  }

  /** How many modes the job's data has (ring, grid), or null. */
  function modeCount() {
    const data = state.job && state.job.spec.data;
    if (!data) return null;
    if (data.kind === "ring") return data.modes;
    if (data.kind === "grid") return data.size * data.size;
    return null;
  }

  function evalLabel(name) {
    const modes = modeCount();
    if (name === "eval/modes") return modes ? `modes (of ${modes})` : "modes";
    const labels = {
      "eval/hq": "high-quality fraction", "eval/hq_drs": "high-quality fraction (drs)",
      "eval/hq_refine": "high-quality fraction (refine)", "eval/classifier_score": "classifier score",
      "eval/fcd": "FCD", "eval/fid": "FID", "eval/kid": "KID",
    };
    return labels[name] || name.slice(5);
  }

  /** Evaluation metrics on their natural scales, so that two series never coincide by
   * auto-scaling alone: modes 0..all, hq 0..1, classifier score 0..10 (10 classes); the
   * distances (FCD, FID, KID) from 0, KID below it when it is (it can be, slightly). */
  function evalRange(name) {
    const fixed = { "eval/hq": 1, "eval/classifier_score": 10, "eval/modes": modeCount() };
    return (u, min, max) => {
      const top = Math.max(fixed[name] || 0, isFinite(max) ? max : 0) || 1;
      const bottom = isFinite(min) && min < 0 ? min * 1.06 : -0.04 * top;
      return [bottom, top * 1.06];
    };
  }

  /** Log-axis ticks at 1, 2 and 5 times the powers of ten in view (fewer when it spans many). */
  function logSplits(u, axis, min, max) {
    const out = [];
    if (!(min > 0) || !(max > 0)) return out;
    const lo = Math.floor(Math.log10(min)), hi = Math.ceil(Math.log10(max));
    const steps = hi - lo <= 3 ? [1, 2, 5] : [1];
    for (let e = lo; e <= hi; e++) {
      for (const m of steps) {
        const v = m * 10 ** e;
        if (v >= min * 0.999 && v <= max * 1.001) out.push(Number(v.toPrecision(3)));
      }
    }
    return out;
  }

  function drawZeroLine(u) {
    const y = Math.round(u.valToPos(0, "y", true));
    const { left, width } = u.bbox;
    const ratio = window.devicePixelRatio || 1;
    const ctx = u.ctx;
    ctx.save();
    ctx.strokeStyle = "#1a7f37";
    ctx.lineWidth = 1.5 * ratio;
    ctx.setLineDash([6 * ratio, 4 * ratio]);
    ctx.beginPath();
    ctx.moveTo(left, y);
    ctx.lineTo(left + width, y);
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = "#1a7f37";
    ctx.font = `${11 * ratio}px system-ui, sans-serif`;
    ctx.textBaseline = "bottom";
    ctx.textAlign = "left";
    ctx.fillText("0 = no leak", left + 6 * ratio, y - 3 * ratio);
    ctx.restore();
  }

  function auditNote(card, names) {
    const parts = [];
    let leak = false;
    for (const name of names) {
      const s = state.series[name];
      let max = -Infinity, at = null;
      s.value.forEach((v, i) => { if (v !== null && v > max) { max = v; at = s.step[i]; } });
      if (max > 0) { leak = true; parts.push(`${name} max ${fmt(max)} at step ${at.toLocaleString()}`); }
    }
    const note = card.querySelector(".chart-note");
    note.className = `chart-note ${leak ? "leak" : "no-leak"}`;
    note.textContent = leak
      ? `Leak: ${parts.join("; ")}. An optimizer stepped on gradient from the other network's loss.`
      : "0.0 at every step: no leak";
  }

  /* ---- samples ----------------------------------------------------------------------- */

  async function loadSamples() {
    try {
      const body = await gf.api(`/api/jobs/${jobId}/samples`);
      state.samples = [];
      for (const s of body.items) addSample(s, false);
      renderSamples();
    } catch (err) {
      gf.toast(`samples: ${err.message}`);
    }
  }

  function addSample(sample, render = true) {
    if (state.samples.some((s) => s.id === sample.id)) return;
    state.samples.push(sample);
    state.samples.sort((a, b) => a.step - b.step || a.id - b.id);
    if (render) renderSamples();
  }

  function currentIndex() {
    if (state.sampleId === null) return state.samples.length - 1;
    const i = state.samples.findIndex((s) => s.id === state.sampleId);
    return i < 0 ? state.samples.length - 1 : i;
  }

  function renderSamples() {
    const n = state.samples.length;
    $("samples-empty").hidden = n > 0;
    $("samples-body").hidden = n === 0;
    if (!n) return;
    const slider = $("sample-slider");
    slider.max = String(n - 1);
    slider.disabled = n < 2;
    showSample(currentIndex());
  }

  function showSample(i) {
    const s = state.samples[i];
    if (!s) return;
    const last = i === state.samples.length - 1;
    state.sampleId = last ? null : s.id; // at the latest: keep following new ones
    const slider = $("sample-slider");
    slider.value = String(i);
    slider.setAttribute("aria-valuetext", `step ${s.step}`);
    $("sample-step-label").textContent = `step ${s.step.toLocaleString()}`;
    $("sample-count").textContent = `${i + 1} of ${state.samples.length}${last ? " (latest)" : ""}`;
    const img = $("sample-img");
    const locked = gf.auth.locked();
    $("samples-locked").hidden = !locked;
    $("sample-open").hidden = locked;
    if (locked) img.removeAttribute("src");
    else if (img.getAttribute("src") !== s.url) img.src = s.url;
    img.alt = `Samples at step ${s.step}`;
    $("sample-download").href = `${s.url}?download=1`;
    $("sample-download").setAttribute("download", `${jobId}-step_${String(s.step).padStart(6, "0")}.png`);
    const dialog = $("sample-dialog");
    if (dialog.open) fillDialog(s);
  }

  function fillDialog(s) {
    $("sample-dialog-title").textContent = `Samples at step ${s.step.toLocaleString()}`;
    const img = $("sample-dialog-img");
    if (gf.auth.locked()) img.removeAttribute("src");
    else img.src = s.url;
    img.alt = `Samples at step ${s.step}, full size`;
  }

  function openDialog() {
    const s = state.samples[currentIndex()];
    if (!s) return;
    fillDialog(s);
    $("sample-dialog").showModal();
  }

  /* ---- checkpoints and generation ---------------------------------------------------- */

  async function loadCheckpoints() {
    try {
      const [body, plan] = await Promise.all([
        gf.api(`/api/jobs/${jobId}/checkpoints`),
        gf.api(`/api/jobs/${jobId}/retention`),
      ]);
      state.checkpoints = body.items;
      state.retention = plan;
      renderCheckpoints();
    } catch (err) {
      gf.toast(`checkpoints: ${err.message}`);
    }
  }

  /** One line on the policy in force and what the checkpoints take. */
  function renderRetention() {
    const note = $("retention-note");
    const plan = state.retention;
    note.hidden = !plan || state.checkpoints.length === 0;
    if (note.hidden) return;
    const p = plan.policy;
    const parts = [];
    if (p.keep_last) parts.push(`the last ${p.keep_last}`);
    if (p.keep_best) parts.push(`the best ${p.keep_best} by ${p.best_metric} (${p.mode})`);
    const policy = p.keeps_everything
      ? "Retention keeps every checkpoint."
      : `Retention keeps ${parts.join(" and ")}, the newest and pinned ones.`;
    const total = state.job && state.job.artifact_bytes != null
      ? `; with the samples, ${bytes(state.job.artifact_bytes)} in all`
      : "";
    note.textContent = `${policy} Checkpoints stored: ${bytes(plan.bytes_kept + plan.bytes_deleted)}${total}.`;
  }

  /** Pin or unpin a checkpoint (pinned ones are kept whatever the policy says). */
  async function togglePin(c, button) {
    button.disabled = true;
    try {
      await gf.api(`${c.url}/pin`, { method: c.pinned ? "DELETE" : "POST" });
      gf.toast(c.pinned ? `Step ${c.step} unpinned` : `Step ${c.step} pinned: kept forever`);
    } catch (err) {
      gf.toast(`pin: ${err.message}`, 6000);
    }
    await loadCheckpoints();
  }

  async function deleteCheckpoint(c, button) {
    if (!window.confirm(`Delete the checkpoint of step ${c.step.toLocaleString()} (${bytes(c.size)})? This cannot be undone.`)) return;
    button.disabled = true;
    try {
      await gf.api(c.url, { method: "DELETE" });
      gf.toast(`Checkpoint of step ${c.step} deleted`);
    } catch (err) {
      gf.toast(`delete: ${err.message}`, 6000);
    }
    await loadCheckpoints();
  }

  /** The newest checkpoint of an unfinished job stays: the job resumes from it. */
  function deleteRefusal(c, newest) {
    if (c.pinned) return "Pinned: unpin it to delete it";
    if (c.step === newest && ACTIVE.includes(state.job && state.job.status)) {
      return "The newest checkpoint of an unfinished job: it resumes from it";
    }
    return null;
  }

  function checkpointActions(c, newest) {
    const refusal = deleteRefusal(c, newest);
    const pin = el("button", { type: "button", class: "pin", "aria-pressed": c.pinned ? "true" : "false",
      "aria-label": `${c.pinned ? "Unpin" : "Pin"} the checkpoint of step ${c.step}`,
      title: c.pinned ? "Put it back under the retention policy" : "Keep it whatever the retention policy says",
      text: c.pinned ? "Unpin" : "Pin" });
    pin.addEventListener("click", () => togglePin(c, pin));
    const remove = el("button", { type: "button", class: "danger delete", disabled: Boolean(refusal),
      title: refusal || "Delete this checkpoint", "aria-label": `Delete the checkpoint of step ${c.step}`, text: "Delete" });
    remove.addEventListener("click", () => deleteCheckpoint(c, remove));
    return [pin, remove];
  }

  /** While running: look again once the step passes the next checkpoint interval. */
  function maybeRefreshCheckpoints(step) {
    const every = state.job && state.job.spec.every ? state.job.spec.every.checkpoint : 0;
    const have = state.checkpoints.length ? state.checkpoints[state.checkpoints.length - 1].step : 0;
    if (!every || step < have + every || state.checkpointTimer) return;
    state.checkpointTimer = setTimeout(() => { state.checkpointTimer = null; loadCheckpoints(); }, 700);
  }

  function renderCheckpoints() {
    const items = state.checkpoints;
    $("checkpoints-empty").hidden = items.length > 0;
    $("checkpoints-wrap").hidden = items.length === 0;
    const newest = items.length ? items[items.length - 1].step : null;
    $("checkpoints").tBodies[0].replaceChildren(...items.slice().reverse().map((c) => el("tr", { "data-step": String(c.step) },
      el("td", { class: "num" }, c.step.toLocaleString(),
        c.best ? el("span", { class: "badge best", title: `The best by ${state.retention ? state.retention.policy.best_metric : "the metric"}`, text: "best" }) : null,
        c.pinned ? el("span", { class: "badge pinned", text: "pinned" }) : null),
      el("td", { class: "num size", text: bytes(c.size) }),
      el("td", {}, el("code", { title: c.sha256, text: `${c.sha256.slice(0, 12)}…` })),
      el("td", { class: "actions" },
        el("a", { href: c.url, "data-download": true, download: `${jobId}-step_${String(c.step).padStart(6, "0")}.safetensors`,
          "aria-label": `Download the checkpoint of step ${c.step}`, text: "Download" }),
        " ",
        el("a", { href: `${c.url}?part=sidecar`, class: "muted small", "data-download": true,
          "aria-label": `Download the JSON sidecar of step ${c.step}`, text: "sidecar" }),
        ...checkpointActions(c, newest)),
    )));
    renderRetention();
    const select = $("gen-step");
    const chosen = select.value;
    select.replaceChildren(
      el("option", { value: "", text: items.length ? `latest (step ${items[items.length - 1].step})` : "latest" }),
      ...items.slice().reverse().map((c) => el("option", { value: String(c.step), text: `step ${c.step}` })));
    select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "";
    updateGenerateHint();
  }

  function updateGenerateHint() {
    const none = state.checkpoints.length === 0;
    $("gen-submit").disabled = none || $("gen-submit").dataset.busy === "1";
    const hint = $("gen-hint");
    hint.hidden = !none;
    if (none && state.job) {
      const every = state.job.spec.every ? state.job.spec.every.checkpoint : 0;
      hint.textContent = isActive(state.job)
        ? `Generation needs a checkpoint; the first is written at step ${every || state.job.steps}.`
        : "This job wrote no checkpoint: nothing to generate from.";
    }
  }

  function filename(disposition, fallback) {
    const m = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition || "");
    return m ? decodeURIComponent(m[1]) : fallback;
  }

  /** What a guided sampler did, from its X-Sampler-* headers; "" for plain. */
  function samplerReport(headers) {
    const sampler = headers.get("x-sampler");
    if (!sampler) return "";
    const plain = Number(headers.get("x-sampler-logit-plain"));
    const returned = Number(headers.get("x-sampler-logit-returned"));
    const logits = `mean discriminator logit ${plain.toPrecision(3)} (plain) → ${returned.toPrecision(3)}`;
    if (sampler !== "drs") return `${sampler}: ${logits}`;
    const proposals = Number(headers.get("x-sampler-proposals"));
    const rate = Number(headers.get("x-sampler-acceptance"));
    return `drs: ${(100 * rate).toFixed(1)} % of ${proposals.toLocaleString("en")} proposals accepted; ${logits}`;
  }

  async function generate(event) {
    event.preventDefault();
    const form = $("generate-form");
    if (!form.reportValidity()) return;
    const n = $("gen-n").value.trim();
    const seed = $("gen-seed").value.trim();
    const format = $("gen-format").value;
    const step = $("gen-step").value;
    const sampler = $("gen-sampler").value;
    // Written by hand so that a seed beyond 2^53 keeps every digit.
    const body = `{"n": ${Number.parseInt(n, 10)}, "seed": ${seed}, "format": "${format}"` +
      `, "sampler": ${JSON.stringify(sampler)}` +
      (step ? `, "step": ${Number.parseInt(step, 10)}` : "") + "}";
    const button = $("gen-submit");
    button.dataset.busy = "1";
    button.disabled = true;
    button.textContent = "Generating…";
    $("gen-error").textContent = "";
    try {
      const answer = await gf.request(`/api/jobs/${jobId}/generate`, {
        method: "POST", headers: { "content-type": "application/json" }, body,
      });
      if (!answer.ok) {
        const type = answer.headers.get("content-type") || "";
        const detail = type.includes("json") ? (await answer.json()).detail : await answer.text();
        throw new gf.ApiError(answer.status, detail);
      }
      const blob = await answer.blob();
      const shape = (answer.headers.get("x-shape") || "").split(",").join(" × ");
      const used = answer.headers.get("x-checkpoint-step") || step || "latest";
      const name = filename(answer.headers.get("content-disposition"),
        `${jobId}-step_${used}-seed_${seed}.${format}`);
      if (state.genUrl) URL.revokeObjectURL(state.genUrl);
      state.genUrl = URL.createObjectURL(blob);
      const link = el("a", { href: state.genUrl, download: name, class: "button", text: format === "png" ? "Download PNG" : "Save again" });
      const caption = el("p", { class: "small" }, el("strong", { text: name }), el("br"),
        `${shape} from the checkpoint of step ${used}, seed ${seed} (${bytes(blob.size)})`);
      const report = samplerReport(answer.headers);
      if (report) caption.append(el("br"), el("span", { class: "gen-sampler-report", text: report }));
      if (format === "png") {
        $("gen-result").replaceChildren(
          el("img", { src: state.genUrl, alt: `${n} generated samples, checkpoint step ${used}, seed ${seed}`, class: "gen-img" }),
          caption, link);
      } else {
        $("gen-result").replaceChildren(caption, link);
        // Save it at once, as a download of the server's file would be.
        const save = el("a", { href: state.genUrl, download: name, hidden: true });
        document.body.append(save);
        save.click();
        save.remove();
      }
    } catch (err) {
      const message = err instanceof gf.ApiError ? err.message : `generation failed: ${err.message}`;
      $("gen-error").textContent = err.status === 409 || err.status === 422 || err.status === 404
        ? message : `${err.status || ""} ${message}`.trim();
    } finally {
      button.dataset.busy = "";
      button.textContent = "Generate";
      updateGenerateHint();
    }
  }

  /* ---- the event stream --------------------------------------------------------------- */

  function onJob(job) {
    const before = state.job && state.job.status;
    state.job = job;
    renderJob();
    if (before && before !== job.status && FINISHED.includes(job.status)) {
      gf.toast(`The job ${job.status}`);
      loadCheckpoints();
    }
  }

  function onProgress(p) {
    if (!state.job) return;
    Object.assign(state.job, { step: p.step, steps: p.steps, status: p.status });
    renderProgress();
    tick();
    maybeRefreshCheckpoints(p.step);
  }

  /** What the page already holds, so the stream starts after it. */
  function held() {
    const steps = Object.values(state.lastStep);
    const ids = state.samples.map((s) => s.id);
    return {
      step: steps.length ? Math.min(...steps) : -1,
      sample: ids.length ? Math.max(...ids) : 0,
    };
  }

  function startFollow(since = {}) {
    if (state.source) state.source.close();
    state.source = gf.follow(jobId, {
      job: onJob,
      progress: onProgress,
      metrics: onMetrics,
      sample: (s) => addSample(s),
      end: () => {
        state.source = null;
        loadCheckpoints();
      },
    }, since);
    window.gfJob.source = state.source;
  }

  /* ---- wiring --------------------------------------------------------------------------- */

  $("job-cancel").addEventListener("click", () => act("cancel"));
  $("job-resume").addEventListener("click", () => act("resume"));
  $("sample-slider").addEventListener("input", (e) => showSample(Number(e.target.value)));
  $("sample-open").addEventListener("click", openDialog);
  $("sample-dialog-close").addEventListener("click", () => $("sample-dialog").close());
  $("sample-dialog").addEventListener("click", (e) => {
    if (e.target === e.currentTarget) e.currentTarget.close(); // a click on the backdrop
  });
  $("sample-dialog").addEventListener("keydown", (e) => {
    if (e.key !== "ArrowLeft" && e.key !== "ArrowRight") return;
    e.preventDefault();
    const i = currentIndex() + (e.key === "ArrowRight" ? 1 : -1);
    if (i >= 0 && i < state.samples.length) showSample(i);
  });
  $("generate-form").addEventListener("submit", generate);
  $("samples-unlock").addEventListener("click", () => gf.auth.ask("Sample images need an API token on this server."));
  // A token entered or forgotten: show (or hide) the sample images.
  document.addEventListener("gf-auth", () => { if (state.samples.length) renderSamples(); });
  $("spec-copy").addEventListener("click", async () => {
    const text = $("spec").textContent;
    try {
      await navigator.clipboard.writeText(text);
      gf.toast("Spec copied");
    } catch {
      const range = document.createRange();
      range.selectNodeContents($("spec"));
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      gf.toast("Spec selected: press Ctrl+C to copy");
    }
  });

  async function start() {
    let job;
    try {
      job = await gf.api(`/api/jobs/${jobId}`);
    } catch (err) {
      gf.toast(err.message, 8000);
      return;
    }
    onJob(job);
    await gf.auth.ready; // whether sample images may be shown
    await Promise.all([loadMetrics(), loadSamples(), loadCheckpoints()]);
    // The stream starts after what was just fetched (nothing is sent twice).
    if (isActive(state.job)) startFollow(held());
    window.gfJob.ready = true;
  }
  start();
})();
