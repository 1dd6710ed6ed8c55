/* New job (/jobs/new), sweep mode: the "Sweep" section turns the form into a sweep. Each row
   names a spec field to vary and its values (comma-separated choices, or a low/high range);
   with method, objective, budget and pruner they make the body of POST /api/sweeps, whose
   `base` is the form's spec. new.js calls in (window.gfSweepForm) when it submits, and for
   presets that carry a sweep ("The seed's study"), which submit in one click. */
"use strict";

window.gfSweepForm = (() => {
  const $ = (id) => document.getElementById(id);
  const toggle = $("sw-on");
  const dims = $("sw-dims");
  const hooks = { defaults: () => ({}), spec: () => ({}), options: () => null };
  let rowCount = 0;

  const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

  /** Every leaf of the default spec as a dotted path (what a sweep may vary). */
  function leafPaths(spec, prefix = "") {
    const out = [];
    for (const [k, v] of Object.entries(spec || {})) {
      const path = prefix ? `${prefix}.${k}` : k;
      if (isObject(v)) out.push(...leafPaths(v, path));
      else if (k !== "name") out.push(path);
    }
    return out;
  }

  function defaultOf(path) {
    let o = hooks.defaults();
    for (const k of path.split(".")) {
      if (!isObject(o) || !(k in o)) return undefined;
      o = o[k];
    }
    return o;
  }

  /** One comma-separated choice as the value the field takes: numbers for numeric fields,
      true/false and null as JSON, anything else as text (the API says what is wrong). */
  function choice(text, fallback) {
    const t = text.trim();
    if (t === "true" || t === "false") return t === "true";
    if (t === "null") return null;
    const n = Number(t);
    if (t !== "" && Number.isFinite(n) && (typeof fallback === "number" || fallback === undefined || fallback === null)) return n;
    return t;
  }

  function show(row) {
    const ranged = row.kind.value === "range";
    row.values.closest(".sw-values-box").hidden = ranged;
    row.range.hidden = !ranged;
  }

  /** The row's error slot answers for `space.<its path>`. */
  function named(row) {
    row.box.dataset.field = `space.${row.path.value.trim()}`;
  }

  /** When a field is picked, offer what it can be: a select's options, or its default. */
  function suggest(row) {
    named(row);
    const path = row.path.value.trim();
    const options = hooks.options(path);
    const fallback = defaultOf(path);
    if (!row.values.value.trim() && options) row.values.value = options.join(", ");
    row.int.checked = typeof fallback === "number" && Number.isInteger(fallback) && !/lr|rate|weight|std/.test(path);
    row.hint.textContent = fallback === undefined ? "" : `default ${JSON.stringify(fallback)}`;
  }

  function addRow(path = "", values = "") {
    const n = ++rowCount;
    const id = (what) => `sw-${what}-${n}`;
    const input = (what, attrs) => gf.el("input", { id: id(what), class: `sw-${what}`, ...attrs });
    const row = {
      path: input("path", { type: "text", list: "sw-paths", autocomplete: "off", spellcheck: "false",
        placeholder: "e.g. optim.g.lr", value: path, "aria-describedby": `${id("hint")} ${id("error")}` }),
      kind: gf.el("select", { id: id("kind"), class: "sw-kind" },
        gf.el("option", { value: "values", text: "choices" }), gf.el("option", { value: "range", text: "range" })),
      values: input("values", { type: "text", autocomplete: "off", spellcheck: "false",
        placeholder: "comma-separated, e.g. 1, 2, 4", value: values }),
      low: input("low", { type: "number", step: "any", inputmode: "decimal" }),
      high: input("high", { type: "number", step: "any", inputmode: "decimal" }),
      log: input("log", { type: "checkbox" }),
      int: input("int", { type: "checkbox" }),
      hint: gf.el("p", { class: "nf-hint", id: id("hint") }),
      error: gf.el("p", { class: "error-text nf-error", id: id("error"), role: "alert" }),
    };
    row.range = gf.el("div", { class: "sw-range" },
      gf.el("div", {}, gf.el("label", { for: id("low"), text: "Low" }), row.low),
      gf.el("div", {}, gf.el("label", { for: id("high"), text: "High" }), row.high),
      gf.el("label", { class: "sw-inline", for: id("log") }, row.log, "log scale"),
      gf.el("label", { class: "sw-inline", for: id("int") }, row.int, "whole numbers"));
    const remove = gf.el("button", { type: "button", class: "sw-remove", "aria-label": `Stop varying field ${n}`,
      text: "Remove", onclick: () => { row.box.remove(); } });
    row.box = gf.el("div", { class: "nf-field sw-dim", "data-row": n },
      gf.el("div", {}, gf.el("label", { for: id("path"), text: "Field to vary" }), row.path),
      gf.el("div", {}, gf.el("label", { for: id("kind"), text: "Kind" }), row.kind),
      gf.el("div", {},
        gf.el("div", { class: "sw-values-box" }, gf.el("label", { for: id("values"), text: "Values" }), row.values),
        row.range),
      remove, row.hint, row.error);
    row.box.gfRow = row;
    row.kind.addEventListener("change", () => show(row));
    row.path.addEventListener("change", () => suggest(row));
    show(row);
    dims.append(row.box);
    if (path) suggest(row);
    return row;
  }

  function rows() {
    return [...dims.querySelectorAll(".sw-dim")].map((box) => box.gfRow);
  }

  function dimension(row) {
    const path = row.path.value.trim();
    if (row.kind.value === "values") {
      const fallback = defaultOf(path);
      const parts = row.values.value.split(",").filter((t) => t.trim() !== "");
      return { values: parts.map((t) => choice(t, fallback)) };
    }
    const number = (input) => (input.value.trim() === "" ? null : Number(input.value));
    const out = { low: number(row.low), high: number(row.high) };
    if (row.log.checked) out.log = true;
    if (row.int.checked) out.int = true;
    return out;
  }

  const whole = (id) => {
    const v = $(id).value.trim();
    return v === "" ? null : Number(v);
  };

  /** The body of POST /api/sweeps for the form's spec. */
  function body(spec) {
    const space = {};
    for (const row of rows()) {
      const path = row.path.value.trim();
      if (path) space[path] = dimension(row);
    }
    const out = {
      base: spec,
      space,
      method: $("sw-method").value,
      objective: { metric: $("sw-metric").value.trim(), mode: $("sw-mode").value },
      budget: { trials: whole("sw-trials"), concurrent: whole("sw-concurrent") },
      pruner: $("sw-pruner").value,
    };
    if (isObject(spec) && typeof spec.name === "string" && spec.name.trim()) out.name = spec.name.trim();
    return out;
  }

  async function submit(sweepBody) {
    const sweep = await gf.api("/api/sweeps", { method: "POST", json: sweepBody });
    window.location.assign(`/sweeps/${encodeURIComponent(sweep.id)}`);
    return sweep;
  }

  /** A preset with a sweep: its spec is the base. */
  function presetBody(preset) {
    return { ...structuredClone(preset.sweep), base: structuredClone(preset.spec) };
  }

  function setOn(on) {
    toggle.checked = on;
    $("sw-body").hidden = !on;
    const button = $("nf-submit");
    if (button) button.textContent = on ? "Submit sweep" : "Submit job";
    if (on && !rows().length) addRow();
  }

  toggle.addEventListener("change", () => setOn(toggle.checked));
  // The Sweeps page's "New sweep" links here with #nf-sweep.
  window.addEventListener("hashchange", () => window.location.hash === "#nf-sweep" && setOn(true));
  $("sw-add").addEventListener("click", () => addRow().path.focus());

  /** new.js: where the defaults, the spec and a field's choices come from. */
  function attach(given) {
    Object.assign(hooks, given);
    $("sw-paths").replaceChildren(...leafPaths(hooks.defaults()).map((p) => gf.el("option", { value: p })));
    if (window.location.hash === "#nf-sweep") setOn(true);
  }

  return { attach, active: () => toggle.checked, body, submit, presetBody, setOn, addRow };
})();
