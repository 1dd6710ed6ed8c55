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

  /* ---- the API token ------------------------------------------------------------------
   * Once the server has a token (`ganforge token create NAME`), writes and downloads need
   * one. The page keeps it in localStorage, sends it as `Authorization: Bearer`, and sets it
   * as a SameSite=Strict cookie, which the server takes for downloads (links, <img>) only.
   */
  const TOKEN_KEY = "ganforge.token";
  const COOKIE = "ganforge_token";
  const auth = {
    required: false, // the server needs a token
    name: null, // the stored token's name, when the server accepts it
    ready: null, // resolves once the server has said the above
    stored() {
      try { return localStorage.getItem(TOKEN_KEY) || ""; } catch { return ""; }
    },
    /** Writes and downloads will be refused: a token is needed and none good is stored. */
    locked() { return auth.required && !auth.name; },
    headers() {
      const token = auth.stored();
      return token ? { authorization: `Bearer ${token}` } : {};
    },
  };

  function setCookie(token) {
    const secure = location.protocol === "https:" ? "; Secure" : "";
    document.cookie = token
      ? `${COOKIE}=${encodeURIComponent(token)}; path=/; SameSite=Strict${secure}`
      : `${COOKIE}=; path=/; max-age=0; SameSite=Strict${secure}`;
  }

  function store(token) {
    try {
      if (token) localStorage.setItem(TOKEN_KEY, token);
      else localStorage.removeItem(TOKEN_KEY);
    } catch { /* storage off: the token lasts until the page closes */ }
    setCookie(token);
  }

  async function whoami(token) {
    const answer = await fetch("/api/auth", {
      headers: token ? { authorization: `Bearer ${token}` } : {},
      credentials: "omit", // judge this token, not the cookie
    });
    if (!answer.ok) throw new Error(`/api/auth answered ${answer.status}`);
    return answer.json();
  }

  function renderAuth() {
    const box = document.getElementById("auth");
    if (!box) return;
    box.hidden = !auth.required;
    document.getElementById("auth-state").textContent = auth.name
      ? `Token: ${auth.name}` : "Read-only: no token";
    document.getElementById("auth-button").textContent = auth.name ? "Forget token" : "Enter token";
  }

  async function refreshAuth() {
    try {
      const stored = auth.stored();
      const state = await whoami(stored);
      auth.required = state.required;
      auth.name = state.token;
      if (stored && state.required && !state.token) {
        store("");
        toast(`The saved API token was refused (${state.error || "not valid"}); enter another.`, 8000);
      }
    } catch {
      // Unknown: treat as open; a refused request will ask for the token.
    }
    renderAuth();
    document.dispatchEvent(new CustomEvent("gf-auth"));
  }

  let asking = null;
  /** Ask for a token (the dialog); resolves true once a good one is saved, false if not. */
  function askToken(reason) {
    if (asking) return asking;
    const dialog = document.getElementById("token-dialog");
    if (!dialog) return Promise.resolve(false);
    const input = document.getElementById("token-input");
    const error = document.getElementById("token-error");
    const why = document.getElementById("token-why");
    if (!why.dataset.default) why.dataset.default = why.innerHTML;
    if (reason) why.textContent = reason;
    else why.innerHTML = why.dataset.default;
    input.value = "";
    error.textContent = "";
    asking = new Promise((resolve) => {
      let saved = false;
      const form = document.getElementById("token-form");
      const onSubmit = async (e) => {
        e.preventDefault();
        const token = input.value.trim();
        if (!token) { error.textContent = "Paste the token that `ganforge token create` printed."; return; }
        try {
          const state = await whoami(token);
          if (state.required && !state.token) {
            error.textContent = `That token is refused: ${state.error || "not valid"}.`;
            input.focus();
            return;
          }
          store(token);
          auth.required = state.required;
          auth.name = state.token;
          saved = true;
          dialog.close();
        } catch (err) {
          error.textContent = `Could not check the token: ${err.message}`;
        }
      };
      const onCancel = () => dialog.close();
      form.addEventListener("submit", onSubmit);
      document.getElementById("token-cancel").addEventListener("click", onCancel);
      dialog.addEventListener("close", () => {
        form.removeEventListener("submit", onSubmit);
        document.getElementById("token-cancel").removeEventListener("click", onCancel);
        asking = null;
        renderAuth();
        if (saved) {
          toast(`Token “${auth.name}” saved in this browser`);
          document.dispatchEvent(new CustomEvent("gf-auth"));
        }
        resolve(saved);
      }, { once: true });
      dialog.showModal();
      input.focus();
    });
    return asking;
  }

  function forgetToken() {
    store("");
    auth.name = null;
    renderAuth();
    toast("Token forgotten: this browser is read-only now");
    document.dispatchEvent(new CustomEvent("gf-auth"));
  }

  /** fetch with the token; on a 401, ask for a token once and send the request again. */
  async function request(path, options = {}) {
    const send = () => fetch(path, { ...options, headers: { ...(options.headers || {}), ...auth.headers() } });
    let answer = await send();
    if (answer.status === 401) {
      const body = await answer.clone().json().catch(() => ({}));
      auth.required = true;
      auth.name = null;
      if (await askToken(typeof body.detail === "string" ? tokenReason(body.detail) : undefined)) {
        answer = await send();
      }
    }
    return answer;
  }

  function tokenReason(detail) {
    return `${detail.replace(/^authorization: /, "").split(";")[0]}. ` +
      "Make a token on the server with `ganforge token create NAME` and paste it here.";
  }

  /** fetch JSON from the API; throws ApiError with the server's detail on 4xx/5xx. */
  async function api(path, options = {}) {
    const opts = { ...options, headers: { ...(options.headers || {}) } };
    if (opts.json !== undefined) {
      opts.body = JSON.stringify(opts.json);
      opts.headers["content-type"] = "application/json";
      delete opts.json;
    }
    const answer = await request(path, opts);
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
      // Through the CSSOM: the pages' CSP refuses inline style attributes.
      else if (k === "style") node.style.cssText = v;
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

  /* ---- sweeps -------------------------------------------------------------------------- */

  // A trial in one of these statuses will not run again.
  const TRIAL_DONE = ["succeeded", "failed", "cancelled", "pruned"];

  /** A sweep's trials done (any end) of its budget, and those queued or running. */
  function sweepProgress(sweep) {
    const counts = sweep.counts || {};
    const n = (names) => names.reduce((sum, s) => sum + (counts[s] || 0), 0);
    const total = (sweep.budget && sweep.budget.trials) || 0;
    return { done: n(TRIAL_DONE), active: n(["queued", "running", "cancelling"]), total };
  }

  /** "eval/modes (max)". */
  function objectiveText(objective) {
    return objective ? `${objective.metric} (${objective.mode})` : "–";
  }

  /* ---- numbers and charts ------------------------------------------------------------ */

  const PALETTE = ["#2456c7", "#d1495b", "#2a9d8f", "#e9a03b", "#7b4fc9", "#4d7f17", "#8c564b", "#17becf"];

  /** The i-th line colour (the palette, round again past its end). */
  function color(i) {
    return PALETTE[i % PALETTE.length];
  }

  /**
   * A metric value for legends, axes and notes: "–" when missing, 4 significant digits,
   * whole numbers from 100, an exponent beyond [1e-3, 1e5).
   */
  function fmt(v) {
    if (v === null || v === undefined) return "–";
    if (!isFinite(v)) return String(v);
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 1e5 || a < 1e-3) return v.toExponential(2);
    if (a >= 100) return v.toFixed(0);
    return String(Number(v.toPrecision(4)));
  }

  /**
   * Several {step[], value[]} columns on one x axis, for uPlot: [xs, ys...]. A step a column
   * did not log is `undefined` (uPlot draws across it); a null value (not finite when logged)
   * stays a gap. A missing column is all `undefined`. value(v) maps each value held.
   */
  function align(columns, value = (v) => v) {
    const steps = new Set();
    for (const c of columns) if (c) for (const s of c.step) steps.add(s);
    const xs = [...steps].sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const ys = columns.map((c) => {
      const y = new Array(xs.length).fill(undefined);
      if (c) c.step.forEach((s, i) => (y[index.get(s)] = value(c.value[i])));
      return y;
    });
    return [xs, ...ys];
  }

  const MIN_CHART_WIDTH = 240;
  const stepValue = (u, v) => (v == null ? "–" : v.toLocaleString());
  const tickValues = (u, ticks) => ticks.map((v) => (v == null ? "" : fmt(v)));
  const VALUE_AXIS = { labelSize: 18, size: 56, values: tickValues };

  /** One line: the def's {label, color?, width?, scale?, points?, scatter?, size?} with the
      defaults filled in; scatter: points of `size` px and no line. */
  function lineSeries(s, i) {
    const line = {
      label: s.label,
      stroke: s.color || color(i),
      width: s.width || 1.5,
      scale: s.scale || "y",
      spanGaps: false,
      value: (u, v) => fmt(v),
    };
    if (s.points) line.points = s.points; // else uPlot's own: marks while the points are sparse
    if (s.scatter) {
      // Points only: no line between them.
      line.paths = () => null;
      line.points = { show: true, size: s.size || 8, fill: line.stroke, stroke: line.stroke };
    }
    return line;
  }

  /** def.hooks, plus one that keeps plot.gfZoomed: whether the x axis shows less than all. */
  function chartHooks(hooks = {}) {
    const zoom = (u, key) => {
      if (key !== "x") return;
      const xs = u.data[0];
      u.gfZoomed = xs.length > 1 && (u.scales.x.min > xs[0] || u.scales.x.max < xs[xs.length - 1]);
    };
    return { ...hooks, setScale: [zoom, ...(hooks.setScale || [])] };
  }

  /** Keep the plot as wide as its container; plot.destroy() stops watching. */
  function followWidth(plot, container, height) {
    if (!window.ResizeObserver) return;
    const observer = new ResizeObserver(() => {
      const width = Math.max(MIN_CHART_WIDTH, container.clientWidth);
      if (width !== plot.width) plot.setSize({ width, height });
    });
    observer.observe(container);
    const destroy = plot.destroy.bind(plot);
    plot.destroy = () => { observer.disconnect(); destroy(); };
  }

  /**
   * A uPlot line chart against "step" that fills its container's width, from a definition:
   *   {title?, height?, yLabel?, series: [{label, color?, width?, scale?, points?, scatter?}],
   *    xLabel?, xAxis?: {...merged into the x axis}, xValue?: (u, v) => legend text of an x,
   *    scales?: {y: {...}, y2: {...}}, yAxis?: {...merged into the y axis}, axes?: [more value axes],
   *    hooks?: {...}}
   * (uPlot's own option objects). Legends and y ticks go through fmt. data: [xs, ys...] (align).
   * The plot's gfZoomed says whether the user zoomed in (then keep the x range on setData).
   */
  function chart(container, def, data) {
    const height = def.height || 220;
    const opts = {
      title: def.title,
      width: Math.max(MIN_CHART_WIDTH, container.clientWidth || 400),
      height,
      scales: { x: { time: false }, y: {}, ...def.scales },
      axes: [
        { label: def.xLabel || "step", labelSize: 18, size: 36, ...def.xAxis },
        { ...VALUE_AXIS, scale: "y", label: def.yLabel || "", ...def.yAxis },
        ...(def.axes || []).map((axis) => ({ ...VALUE_AXIS, ...axis })),
      ],
      series: [{ label: def.xLabel || "step", value: def.xValue || stepValue }, ...def.series.map(lineSeries)],
      hooks: chartHooks(def.hooks),
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
    };
    const plot = new uPlot(opts, data, container);
    plot.gfZoomed = false;
    followWidth(plot, container, height);
    return plot;
  }

  // A download link while locked: ask for the token first, then follow the link.
  document.addEventListener("click", async (e) => {
    const link = e.target instanceof Element ? e.target.closest("a[data-download]") : null;
    if (!link || !auth.locked()) return;
    e.preventDefault();
    if (await askToken("Downloads need an API token on this server.")) link.click();
  });
  document.addEventListener("DOMContentLoaded", () => {
    const button = document.getElementById("auth-button");
    if (button) button.addEventListener("click", () => (auth.name ? forgetToken() : askToken()));
    renderAuth();
  });
  setCookie(auth.stored()); // before any page script asks for a download
  auth.ready = refreshAuth();
  auth.ask = askToken;
  auth.forget = forgetToken;

  return {
    api, request, auth, ApiError, describeDetail, el, badge, duration, when, timing, toast, follow,
    chart, align, fmt, color, PALETTE, sweepProgress, objectiveText, TRIAL_DONE,
  };
})();
