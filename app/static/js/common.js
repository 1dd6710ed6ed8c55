/* ganforge dashboard: helpers shared by every page (no build step, no framework). */
"use strict";

const gf = (() => {
  class ApiError extends Error {
    constructor(status, detail) {
      super(typeof detail === "string" ? detail : gf.describeDetail(detail));
      this.status = status;
      this.detail = detail;
    }
    /** {field: message} for 422 answers whose detail is a list of {field, message}. */
    fieldErrors() {
      const out = {};
      if (Array.isArray(this.detail)) {
        for (const d of this.detail) if (d && d.field !== undefined) out[d.field] = d.message;
      }
      return out;
    }
  }

  function describeDetail(detail) {
    if (Array.isArray(detail)) return detail.map((d) => d.message || JSON.stringify(d)).join("; ");
    return String(detail);
  }

  /** fetch JSON from the API; throws ApiError with the server's detail on 4xx/5xx. */
  async function api(path, options = {}) {
    const opts = { ...options, headers: { ...(options.headers || {}) } };
    if (opts.json !== undefined) {
      opts.body = JSON.stringify(opts.json);
      opts.headers["content-type"] = "application/json";
      delete opts.json;
    }
    const answer = await fetch(path, opts);
    if (answer.status === 204) return null;
    const type = answer.headers.get("content-type") || "";
    const body = type.includes("json") ? await answer.json() : await answer.text();
    if (!answer.ok) throw new ApiError(answer.status, body && body.detail !== undefined ? body.detail : body);
    return body;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function badge(status) {
    return el("span", { class: `badge ${status}`, text: status });
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    seconds = Math.max(0, Math.round(seconds));
    const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
    if (m) return `${m}m ${String(s).padStart(2, "0")}s`;
    return `${s}s`;
  }

  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : "–";
  }

  /** Elapsed and estimated remaining seconds of a job (remaining from its average pace). */
  function timing(job, now = Date.now()) {
    if (!job.started_at) return { elapsed: null, remaining: null };
    const end = job.finished_at ? Date.parse(job.finished_at) : now;
    const elapsed = (end - Date.parse(job.started_at)) / 1000;
    let remaining = null;
    if (["running", "cancelling"].includes(job.status) && job.step > 0) {
      remaining = (elapsed / job.step) * (job.steps - job.step);
    }
    return { elapsed, remaining };
  }

  function toast(message, ms = 4000) {
    const box = document.getElementById("toast");
    if (!box) return;
    box.textContent = message;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => (box.textContent = ""), ms);
  }

  /**
   * Follow a job's Server-Sent Events; handlers by event name get the parsed data.
   * since: {step, sample}: skip metric points up to `step` and samples up to id `sample`
   * (what the page has already fetched).
   */
  function follow(jobId, handlers, since = {}) {
    const query = new URLSearchParams();
    if (since.step !== undefined && since.step !== null) query.set("since_step", since.step);
    if (since.sample) query.set("since_sample", since.sample);
    const qs = query.toString();
    const source = new EventSource(`/api/jobs/${jobId}/events${qs ? "?" + qs : ""}`);
    for (const name of ["job", "progress", "metrics", "sample", "end"]) {
      source.addEventListener(name, (e) => {
        const data = JSON.parse(e.data);
        if (handlers[name]) handlers[name](data);
        if (name === "end") source.close();
      });
    }
    source.onerror = () => {
      // The browser reconnects by itself (with Last-Event-ID); a closed stream stays closed.
      if (handlers.error) handlers.error();
    };
    return source;
  }

  const PALETTE = ["#2456c7", "#d1495b", "#2a9d8f", "#e9a03b", "#7b4fc9", "#4d7f17", "#8c564b", "#17becf"];

  /**
   * A line chart (uPlot) that fills its container's width.
   * series: [{label, color?}], data: [xs, ys1, ys2, ...] (null for gaps).
   */
  function chart(container, { title, series, data, yLabel, height = 220, logY = false }) {
    const width = Math.max(240, container.clientWidth || 400);
    const opts = {
      title, width, height,
      scales: { x: { time: false }, y: logY ? { distr: 3 } : {} },
      axes: [{ label: "step" }, { label: yLabel || "", size: 60 }],
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
      series: [{ label: "step" }].concat(series.map((s, i) => ({
        label: s.label, stroke: s.color || PALETTE[i % PALETTE.length], width: 1.5, spanGaps: false,
        points: { show: false },
      }))),
    };
    const plot = new uPlot(opts, data, container);
    const resize = () => plot.setSize({ width: Math.max(240, container.clientWidth), height });
    if (window.ResizeObserver) new ResizeObserver(resize).observe(container);
    return plot;
  }

  /**
   * Align several (step[], value[]) series on one x axis for uPlot: [xs, ys...].
   */
  function align(columns) {
    const steps = new Set();
    for (const c of columns) if (c) for (const s of c.step) steps.add(s);
    const xs = [...steps].sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const ys = columns.map((c) => {
      const y = new Array(xs.length).fill(null);
      if (c) c.step.forEach((s, i) => (y[index.get(s)] = c.value[i]));
      return y;
    });
    return [xs, ...ys];
  }

  return { api, ApiError, describeDetail, el, badge, duration, when, timing, toast, follow, chart, align, PALETTE };
})();
