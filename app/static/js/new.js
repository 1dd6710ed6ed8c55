/* New job (/jobs/new): presets, a form for the common fields and a YAML/JSON editor holding the
   whole spec, kept in sync both ways; checked with POST /api/specs/validate as you edit,
   submitted with POST /api/jobs, or as a sweep's base with POST /api/sweeps (the Sweep section,
   new_sweep.js). `?from=<job id>` clones a job; `?dataset=<id>` trains on an uploaded dataset,
   picked from the list (GET /api/datasets) or uploaded here. */
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const form = $("nf-form");
  const editor = $("nf-editor");
  const formatSelect = $("nf-format");
  const submitButton = $("nf-submit");
  const tagsInput = $("f-tags");
  const upload = $("nf-upload");
  const picker = $("nf-dataset");
  const useConv = $("nf-use-conv");
  const controls = [...form.querySelectorAll("[data-path]")];
  const DEBOUNCE_MS = 400;
  // Errors of fields the form has no control for, shown at a related one.
  const ALIASES = { "spec.data.path": "spec.data.dataset_id" };

  const state = {
    defaults: {}, // the default spec (GET /api/specs/defaults), to show what is left out
    value: {}, // the editor's content, parsed (any YAML value)
    spec: {}, // the last parsed content that was a mapping: what the form edits
    format: "yaml",
    parseError: null,
    normalized: null, // the spec with defaults, from the last successful check
    checkSeq: 0,
    checkTimer: null,
    editorTimer: null,
  };

  // ---- plain-object paths -------------------------------------------------------------

  const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
  const has = (o, k) => Object.prototype.hasOwnProperty.call(o, k);

  function getPath(obj, path) {
    let o = obj;
    for (const k of path.split(".")) {
      if (!isObject(o) || !has(o, k)) return undefined;
      o = o[k];
    }
    return o;
  }

  function setPath(obj, path, value) {
    const keys = path.split(".");
    let o = obj;
    for (const k of keys.slice(0, -1)) {
      if (!isObject(o[k])) o[k] = {};
      o = o[k];
    }
    o[keys[keys.length - 1]] = value;
  }

  function deletePath(obj, path) {
    const keys = path.split(".");
    const chain = [obj];
    for (const k of keys.slice(0, -1)) {
      const next = chain[chain.length - 1][k];
      if (!isObject(next)) return;
      chain.push(next);
    }
    delete chain[chain.length - 1][keys[keys.length - 1]];
    // A section emptied by the removal goes too (its defaults apply).
    for (let i = chain.length - 1; i > 0; i--) {
      if (Object.keys(chain[i]).length) break;
      delete chain[i - 1][keys[i - 1]];
    }
  }

  /** A copy of `value` with mapping keys in the order of `template` (the default spec). */
  function ordered(value, template) {
    if (Array.isArray(value)) return value.map((v) => ordered(v, undefined));
    if (!isObject(value)) return value;
    const out = {};
    if (isObject(template)) {
      for (const k of Object.keys(template)) if (has(value, k)) out[k] = ordered(value[k], template[k]);
    }
    for (const k of Object.keys(value)) if (!has(out, k)) out[k] = ordered(value[k], undefined);
    return out;
  }

  // ---- the editor ---------------------------------------------------------------------

  function serialize(spec) {
    const value = ordered(spec, state.defaults);
    if (state.format === "json") return JSON.stringify(value, null, 2) + "\n";
    if (!Object.keys(value).length) return "{}\n";
    return jsyaml.dump(value, { flowLevel: 2, lineWidth: -1 });
  }

  function parse(text) {
    if (!text.trim()) return { value: {} };
    try {
      return { value: jsyaml.load(text) };
    } catch (err) {
      if (err && /input is empty/.test(err.reason || "")) return { value: {} }; // comments only
      const mark = err && err.mark;
      const where = mark ? ` (line ${mark.line + 1}, column ${mark.column + 1})` : "";
      return { error: `spec: not valid YAML/JSON: ${(err && (err.reason || err.message)) || err}${where}` };
    }
  }

  function setFormat(format) {
    state.format = format;
    formatSelect.value = format;
  }

  function writeEditor() {
    editor.value = serialize(state.spec);
    state.value = state.spec;
    state.parseError = null;
  }

  /** Read the editor: the form follows it; false when it does not parse. `detect`: take
      the format (YAML or JSON) from the text. */
  function readEditor(detect = true) {
    clearTimeout(state.editorTimer);
    const text = editor.value;
    const parsed = parse(text);
    if (parsed.error) {
      state.parseError = parsed.error;
      showErrors([{ field: "spec", message: parsed.error }]);
      showReport(null, "Fix the YAML to check the spec.");
      return false;
    }
    state.parseError = null;
    state.value = parsed.value;
    if (isObject(parsed.value)) {
      state.spec = parsed.value;
      fillForm();
    }
    const first = text.trimStart()[0];
    if (detect && first === "{") setFormat("json");
    else if (detect && first !== undefined) setFormat("yaml");
    return true;
  }

  editor.addEventListener("input", () => {
    clearTimeout(state.editorTimer);
    state.editorTimer = setTimeout(() => readEditor() && checkNow(), DEBOUNCE_MS);
  });
  editor.addEventListener("change", () => readEditor() && checkNow());
  editor.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  formatSelect.addEventListener("change", () => {
    state.format = formatSelect.value;
    if (readEditor(false) && isObject(state.value)) writeEditor();
  });
  $("nf-expand").addEventListener("click", () => {
    if (!state.normalized) return;
    state.spec = structuredClone(state.normalized);
    writeEditor();
    fillForm();
    checkNow();
  });

  // ---- the form -----------------------------------------------------------------------

  function effective(path) {
    const own = getPath(state.spec, path);
    return own !== undefined ? own : getPath(state.defaults, path);
  }

  function display(value) {
    if (value === undefined || value === null) return "";
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  /** Show the spec's values (or the defaults) in every control but `except`. */
  function fillForm(except = null) {
    for (const control of controls) {
      if (control === except || control.dataset.where !== "spec") continue;
      const text = display(effective(control.dataset.path));
      if (control.tagName === "SELECT") {
        for (const extra of control.querySelectorAll("option[data-extra]")) extra.remove();
        if (![...control.options].some((o) => o.value === text)) {
          // A value the spec does not allow (the check says so): shown, not lost.
          control.append(gf.el("option", { value: text, "data-extra": true, text: `${text} (not allowed)` }));
        }
      }
      if (control.value !== text) control.value = text;
    }
    showPicked();
  }

  function onControl(control) {
    if (!control.dataset || !control.dataset.path) return;
    if (control.dataset.where === "spec") {
      if (control.validity && control.validity.badInput) return; // half-typed number: wait
      if (state.parseError) gf.toast("The editor had a YAML error; it now holds the form's spec.");
      const path = control.dataset.path;
      const raw = control.value.trim();
      if (raw === "") deletePath(state.spec, path);
      else if (control.dataset.kind === "number") setPath(state.spec, path, Number(raw));
      else setPath(state.spec, path, raw);
      if (path === "data.kind" && raw !== "array") {
        deletePath(state.spec, "data.dataset_id");
        deletePath(state.spec, "data.path");
      }
      writeEditor();
      scheduleCheck();
    } else {
      // Tags are checked when the job is submitted; an edit clears their old error.
      const box = control.closest(".nf-field");
      box.querySelector(".nf-error").textContent = "";
      control.removeAttribute("aria-invalid");
    }
  }

  form.addEventListener("input", (e) => onControl(e.target));
  form.addEventListener("change", (e) => {
    if (e.target !== editor && e.target !== upload && e.target !== formatSelect) onControl(e.target);
  });
  // Leaving a field shows what it now means (an emptied field shows its default again).
  form.addEventListener("focusout", (e) => {
    if (e.target.dataset && e.target.dataset.where === "spec") fillForm();
  });

  function tags() {
    return tagsInput.value.split(",").map((t) => t.trim()).filter(Boolean);
  }

  // ---- checking -----------------------------------------------------------------------

  function setStatus(text) {
    $("nf-state").textContent = text;
  }

  function scheduleCheck() {
    clearTimeout(state.checkTimer);
    state.checkSeq++; // an answer to an older request is now stale
    setStatus("Checking…");
    state.checkTimer = setTimeout(checkNow, DEBOUNCE_MS);
  }

  async function checkNow() {
    clearTimeout(state.checkTimer);
    if (state.parseError) return;
    const seq = ++state.checkSeq;
    setStatus("Checking…");
    try {
      const report = await gf.api("/api/specs/validate", { method: "POST", json: { spec: state.value } });
      if (seq !== state.checkSeq) return;
      state.normalized = report.spec;
      showErrors([]);
      showReport(report);
    } catch (err) {
      if (seq !== state.checkSeq) return;
      state.normalized = null;
      if (err instanceof gf.ApiError && err.status === 422) {
        showErrors(Array.isArray(err.detail) ? err.detail : [{ field: "spec", message: err.message }]);
        showReport(null, "Fix the errors to see whether this schedule leaks.");
      } else {
        showReport(null, "");
        setStatus(`Could not check the spec: ${err.message}`);
      }
    }
  }

  function slotFor(field) {
    let f = ALIASES[field] || field || "";
    while (f && f !== "spec") {
      const box = form.querySelector(`[data-field="${CSS.escape(f)}"]`);
      if (box) return box;
      const cut = f.lastIndexOf(".");
      if (cut < 0) break;
      f = f.slice(0, cut);
    }
    return null;
  }

  /** Each error next to its field; errors of fields the form lacks next to the editor. */
  function showErrors(detail) {
    for (const box of form.querySelectorAll(".nf-field")) {
      box.querySelector(".nf-error").textContent = "";
      const control = box.querySelector("input, select");
      if (control) control.removeAttribute("aria-invalid");
    }
    editor.removeAttribute("aria-invalid");
    const atEditor = [];
    for (const d of detail) {
      const message = d.message || gf.describeDetail([d]);
      const box = slotFor(d.field);
      if (box) {
        const slot = box.querySelector(".nf-error");
        slot.textContent = slot.textContent ? `${slot.textContent} ${message}` : message;
        const control = box.querySelector("input, select");
        if (control) control.setAttribute("aria-invalid", "true");
      } else {
        atEditor.push(message);
      }
    }
    $("nf-editor-error").replaceChildren(...atEditor.map((m) => gf.el("p", { text: m })));
    if (atEditor.length) editor.setAttribute("aria-invalid", "true");
    if (detail.length) setStatus(`${detail.length} problem${detail.length > 1 ? "s" : ""}`);
  }

  function showReport(report, note = "") {
    const leak = $("nf-leak");
    const warnings = $("nf-warnings");
    $("nf-expand").disabled = !report;
    if (!report) {
      leak.className = "nf-leak nf-wide muted";
      leak.textContent = note;
      warnings.replaceChildren();
      $("nf-micro").textContent = "";
      return;
    }
    const nets = [report.leaks.d && "D", report.leaks.g && "G"].filter(Boolean);
    if (nets.length) {
      leak.className = "nf-leak nf-wide warning";
      leak.replaceChildren(
        gf.el("strong", { text: `This schedule leaks gradient into ${nets.join(" and ")}: ` }),
        `${nets.length > 1 ? "each network's" : `${nets[0]}'s`} optimizer steps on gradient from the ` +
          "other network's loss. The job still runs (to study the mistake); the audit reports it as " +
          "audit/leak_d and audit/leak_g."
      );
    } else {
      leak.className = "nf-leak nf-wide nf-ok";
      leak.textContent = "No gradient leak: each optimizer step uses only its own network's gradient.";
    }
    const k = report.spec.accumulation.steps;
    const world = report.spec.distributed ? report.spec.distributed.world_size : 1;
    const ranks = world > 1 ? ` on each of ${world} ranks (gradient averaged once per step)` : "";
    $("nf-micro").textContent =
      k * world > 1
        ? `Micro-batches of ${report.micro_batch_size} (${report.spec.batch_size} / ${k * world}), ` +
          `${k} per optimizer step${ranks}.`
        : `One batch of ${report.spec.batch_size} per optimizer step.`;
    if (report.warnings.length) {
      warnings.replaceChildren(
        gf.el("h2", { text: `Warnings (${report.warnings.length}): the job carries them` }),
        gf.el("ul", {}, report.warnings.map((w) => gf.el("li", { class: "warning", text: w })))
      );
      setStatus(`Valid, ${report.warnings.length} warning${report.warnings.length > 1 ? "s" : ""}`);
    } else {
      warnings.replaceChildren();
      setStatus("Valid");
    }
  }

  // ---- presets ------------------------------------------------------------------------

  function presetButton(preset) {
    if (preset.sweep) return sweepPresetButton(preset);
    return gf.el(
      "button",
      {
        type: "button",
        class: "nf-preset",
        "data-preset": preset.id,
        "aria-pressed": "false",
        onclick: () => applyPreset(preset),
      },
      gf.el("span", { class: "nf-preset-title", text: preset.title }),
      gf.el("span", { class: "nf-preset-desc", text: preset.description })
    );
  }

  /** A preset that is a sweep: one click submits it and opens the sweep's page. */
  function sweepPresetButton(preset) {
    const trials = preset.sweep.budget ? preset.sweep.budget.trials : "";
    return gf.el(
      "button",
      { type: "button", class: "nf-preset", "data-preset": preset.id, "data-sweep": "", onclick: () => submitSweep(preset) },
      gf.el("span", { class: "nf-preset-title", text: `${preset.title} (a sweep of ${trials})` }),
      gf.el("span", { class: "nf-preset-desc", text: preset.description })
    );
  }

  async function submitSweep(preset) {
    $("nf-submit-error").textContent = "";
    setStatus(`Submitting the sweep ${preset.title}…`);
    try {
      await gfSweepForm.submit(gfSweepForm.presetBody(preset));
      setStatus("Submitted");
    } catch (err) {
      setStatus("");
      $("nf-submit-error").textContent = `The sweep was not submitted: ${err.message}`;
    }
  }

  function renderPresets(items) {
    const byId = new Map(items.map((p) => [p.id, p]));
    const shown = new Set();
    const nodes = [];
    for (const preset of items) {
      if (shown.has(preset.id)) continue;
      shown.add(preset.id);
      const twin = preset.twin && byId.get(preset.twin);
      if (!twin || shown.has(twin.id)) {
        nodes.push(presetButton(preset));
        continue;
      }
      shown.add(twin.id);
      const titleId = `nf-pair-${preset.id}`;
      nodes.push(
        gf.el(
          "div",
          { class: "nf-pair", role: "group", "aria-labelledby": titleId },
          gf.el("h3", { id: titleId, text: "The seed essay's update order, broken and fixed" }),
          gf.el("p", { class: "nf-pair-diff", text: preset.difference }),
          gf.el("div", { class: "nf-pair-buttons" }, presetButton(preset), presetButton(twin))
        )
      );
    }
    $("nf-presets").replaceChildren(...nodes);
  }

  function markPreset(id) {
    for (const b of document.querySelectorAll(".nf-preset:not([data-sweep])")) {
      b.setAttribute("aria-pressed", String(b.dataset.preset === id));
    }
  }

  function resetUpload() {
    $("nf-upload-status").textContent = "";
    $("nf-upload-error").textContent = "";
    useConv.hidden = true;
  }

  function applyPreset(preset) {
    state.spec = structuredClone(preset.spec);
    writeEditor();
    fillForm();
    markPreset(preset.id);
    resetUpload();
    checkNow();
  }

  // ---- datasets: one uploaded before, or a new upload ----------------------------------

  let datasets = new Map(); // id -> the dataset as GET /api/datasets lists it, newest first

  function datasetLabel(d) {
    return `${d.filename} · (${d.shape.join(", ")}) ${d.dtype} · ${d.id.slice(0, 8)}`;
  }

  function fillPicker() {
    const none = datasets.size ? "— choose a dataset —" : "none uploaded yet";
    picker.replaceChildren(
      gf.el("option", { value: "", text: none }),
      ...[...datasets.values()].map((d) => gf.el("option", { value: d.id, text: datasetLabel(d) }))
    );
    showPicked();
  }

  /** The picker shows the spec's data.dataset_id when it is a listed dataset. */
  function showPicked() {
    const id = effective("data.kind") === "array" ? getPath(state.spec, "data.dataset_id") : undefined;
    picker.value = typeof id === "string" && datasets.has(id) ? id : "";
  }

  async function loadDatasets() {
    try {
      const answer = await gf.api("/api/datasets?limit=1000");
      datasets = new Map([...answer.items.map((d) => [d.id, d]), ...datasets]);
      fillPicker();
    } catch (err) {
      picker.replaceChildren(gf.el("option", { value: "", text: "could not load the datasets" }));
      $("nf-dataset-hint").textContent = `Could not load the uploaded datasets: ${err.message}`;
    }
  }

  /** Train on dataset `d`: data becomes {kind: array, dataset_id}; mlp networks when the
      chosen kind (conv, resnet) cannot take its shape. Returns a note saying what changed. */
  function useDataset(d) {
    state.spec.data = { kind: "array", dataset_id: d.id };
    let note = "";
    const conv = d.usable_with.includes("conv");
    const kind = effective("model.kind");
    if (!d.usable_with.includes(kind)) {
      setPath(state.spec, "model.kind", "mlp");
      const sizes = { conv: "8 to 64 px", resnet: "16 to 128 px" }[kind];
      note = ` model.kind is now mlp: ${kind} takes square images of ${sizes}.`;
    }
    useConv.hidden = !conv || effective("model.kind") === "conv";
    writeEditor();
    fillForm();
    checkNow();
    return note;
  }

  function pickDataset(id) {
    resetUpload();
    const d = datasets.get(id);
    if (!d) {
      deletePath(state.spec, "data.dataset_id");
      writeEditor();
      fillForm();
      checkNow();
      return;
    }
    const note = useDataset(d);
    $("nf-upload-status").textContent =
      `Using ${d.filename}: shape (${d.shape.join(", ")}), ${d.dtype}; data.dataset_id ${d.id}.${note}`;
  }

  picker.addEventListener("change", () => pickDataset(picker.value));

  upload.addEventListener("change", async () => {
    const file = upload.files && upload.files[0];
    if (!file) return;
    resetUpload();
    $("nf-upload-status").textContent = `Uploading ${file.name}…`;
    const body = new FormData();
    body.append("file", file);
    try {
      const dataset = await gf.api("/api/datasets", { method: "POST", body });
      datasets = new Map([[dataset.id, dataset], ...datasets]);
      fillPicker();
      const note = useDataset(dataset);
      $("nf-upload-status").textContent =
        `Uploaded ${dataset.filename}: shape (${dataset.shape.join(", ")}), ${dataset.dtype}; ` +
        `data.dataset_id ${dataset.id}.${note}`;
    } catch (err) {
      $("nf-upload-status").textContent = "";
      const message = err instanceof gf.ApiError ? err.message : `the upload failed (${err.message})`;
      $("nf-upload-error").textContent = message;
    }
  });

  useConv.addEventListener("click", () => {
    setPath(state.spec, "model.kind", "conv");
    useConv.hidden = true;
    writeEditor();
    fillForm();
    checkNow();
  });

  // ---- submit -------------------------------------------------------------------------

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    $("nf-submit-error").textContent = "";
    if (!readEditor()) {
      editor.focus();
      return;
    }
    clearTimeout(state.checkTimer);
    state.checkSeq++; // a check still in flight must not overwrite what the submit says
    submitButton.disabled = true;
    setStatus("Submitting…");
    const sweep = gfSweepForm.active();
    try {
      if (sweep) {
        await gfSweepForm.submit(gfSweepForm.body(state.value));
      } else {
        const job = await gf.api("/api/jobs", { method: "POST", json: { spec: state.value, tags: tags() } });
        window.location.assign(`/jobs/${encodeURIComponent(job.id)}`);
      }
      setStatus("Submitted");
    } catch (err) {
      submitButton.disabled = false;
      setStatus("");
      if (err instanceof gf.ApiError && err.status === 422 && Array.isArray(err.detail)) {
        // A sweep's base is the spec: its errors go where the spec's would.
        const detail = sweep ? err.detail.map((d) => ({ ...d, field: baseField(d.field) })) : err.detail;
        showErrors(detail);
        $("nf-submit-error").textContent = "Not submitted: fix the problems marked above.";
        const first = form.querySelector("[aria-invalid=true]");
        if (first) first.focus();
      } else {
        $("nf-submit-error").textContent = `Not submitted: ${err.message}`;
      }
    }
  });

  /** "base.steps" -> "spec.steps", "base" -> "spec"; other fields of a sweep as they are. */
  function baseField(field) {
    if (field === "base") return "spec";
    return typeof field === "string" && field.startsWith("base.") ? `spec.${field.slice(5)}` : field;
  }

  // ---- start --------------------------------------------------------------------------

  async function cloneJob(jobId) {
    const job = await gf.api(`/api/jobs/${encodeURIComponent(jobId)}`);
    const spec = structuredClone(job.spec);
    const base = job.name || spec.name || `job ${job.id.slice(0, 8)}`;
    spec.name = `${base} (copy)`;
    state.spec = spec;
    writeEditor();
    fillForm();
    tagsInput.value = (job.tags || []).join(", ");
    const note = $("nf-clone");
    note.replaceChildren(
      "A copy of ",
      gf.el("a", { href: `/jobs/${encodeURIComponent(job.id)}`, text: base }),
      ": change what you like and submit."
    );
    note.hidden = false;
    checkNow();
  }

  async function start() {
    const query = new URLSearchParams(window.location.search);
    const listed = loadDatasets();
    await begin(query.get("from"));
    const wanted = query.get("dataset");
    if (!wanted) return;
    await listed;
    if (datasets.has(wanted)) pickDataset(wanted);
    else $("nf-load-error").textContent = `No uploaded dataset ${wanted}: pick one from the list.`;
  }

  /** The form's choices for a spec field (a select's options), or null. */
  function choicesOf(path) {
    const control = controls.find((c) => c.dataset.path === path && c.tagName === "SELECT");
    return control ? [...control.options].filter((o) => !o.dataset.extra).map((o) => o.value) : null;
  }

  /** The presets, then the job to copy (`from`) or the default recipe. */
  async function begin(from) {
    let presets = [];
    try {
      const [defaults, list] = await Promise.all([gf.api("/api/specs/defaults"), gf.api("/api/presets")]);
      state.defaults = defaults;
      presets = list.items;
      renderPresets(presets);
      gfSweepForm.attach({ defaults: () => state.defaults, options: choicesOf });
    } catch (err) {
      $("nf-load-error").textContent = `Could not load the presets: ${err.message}`;
    }
    if (from) {
      try {
        await cloneJob(from);
        return;
      } catch (err) {
        $("nf-load-error").textContent = `Cannot copy job ${from}: ${err.message}`;
      }
    }
    const ring = presets.find((p) => p.id === "ring");
    if (ring) applyPreset(ring);
    else {
      writeEditor();
      fillForm();
      checkNow();
    }
  }

  start();
})();
