/* The Jobs page (/): a live table of jobs with filters, paging and per-row actions.
 *
 * Live updates poll GET /api/jobs every 2 s for the rows on screen (the first `shown` jobs of
 * the current filter): one request, no EventSource per row, so the browser's six connections
 * per host stay free. Rows are keyed by job id and patched cell by cell: a row whose data did
 * not change is not touched, and a focused button survives every update.
 */
"use strict";

(() => {
  const POLL_MS = 2000;
  const POLL_ERROR_MS = 5000;
  const TAG_DEBOUNCE_MS = 400;
  const MAX_LIMIT = 500; // the API's largest page
  const FINISHED = ["cancelled", "succeeded", "failed"];

  const $ = (id) => document.getElementById(id);
  const body = $("jobs-body");
  const form = $("job-filters");
  const statusSelect = $("filter-status");
  const tagInput = $("filter-tag");
  const clearButton = $("filter-clear");
  const moreButton = $("jobs-more");
  const loading = $("jobs-loading");
  const empty = $("jobs-empty");
  const live = $("jobs-live");
  const announcer = $("jobs-announce");

  const params = new URLSearchParams(location.search);
  const PAGE = Math.min(MAX_LIMIT, Math.max(1, parseInt(params.get("limit"), 10) || 50));
  const knownStatuses = [...statusSelect.options].map((o) => o.value).filter(Boolean);

  const state = {
    status: knownStatuses.includes(params.get("status")) ? params.get("status") : "",
    tag: (params.get("tag") || "").trim(),
    shown: PAGE, // how many jobs from the top the table holds (grows with "Load more")
    cursor: null, // next_cursor after the last row on screen
    generation: 0, // bumped when the filters change: older answers are dropped
    loaded: false,
    timer: null,
    inFlight: false,
    again: false,
    failing: false,
  };
  const rows = new Map(); // job id -> {tr, job, cells, actionsKey, busy}

  // ---- helpers -------------------------------------------------------------------------------

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function label(job) {
    return job.name || job.id.slice(0, 8);
  }

  function shortTime(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    try {
      return d.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
    } catch {
      return d.toLocaleString();
    }
  }

  function announce(message) {
    announcer.textContent = message;
  }

  function query(extra = {}) {
    const q = new URLSearchParams();
    if (state.status) q.set("status", state.status);
    if (state.tag) q.set("tag", state.tag);
    for (const [k, v] of Object.entries(extra)) if (v !== null && v !== undefined) q.set(k, v);
    return q;
  }

  /** The first `n` jobs of the current filter (several requests past the API's page limit). */
  async function fetchTop(n) {
    const items = [];
    let cursor = null;
    for (;;) {
      const page = await gf.api(`/api/jobs?${query({ limit: Math.min(MAX_LIMIT, n - items.length), cursor })}`);
      items.push(...page.items);
      cursor = page.next_cursor;
      if (!cursor || items.length >= n) return { items, next_cursor: cursor };
    }
  }

  // ---- rows ----------------------------------------------------------------------------------

  /** The row's action buttons; a cancelling job keeps a focusable, inert "Cancelling…". */
  function actionsFor(status) {
    const out = [];
    if (status === "queued" || status === "running") out.push("cancel");
    if (status === "cancelling") out.push("cancel:pending");
    if (status === "failed" || status === "cancelled") out.push("resume");
    if (FINISHED.includes(status)) out.push("delete");
    return out;
  }

  const ACTION_TEXT = { cancel: "Cancel", resume: "Resume", delete: "Delete" };

  function createRow(job) {
    const td = (cls, dataLabel) => gf.el("td", { class: cls, "data-label": dataLabel });
    const cells = {
      name: td("col-name"),
      status: td("col-status", "Status"),
      progress: td("col-progress", "Progress"),
      elapsed: td("col-elapsed", "Elapsed"),
      remaining: td("col-remaining", "Remaining"),
      tags: td("col-tags", "Tags"),
      created: td("col-created", "Created"),
      actions: td("col-actions"),
    };
    cells.link = gf.el("a", { class: "job-name", href: `/jobs/${job.id}` });
    cells.shortId = gf.el("span", { class: "job-id muted" });
    cells.error = gf.el("div", { class: "error-text job-error", hidden: true });
    cells.name.append(cells.link, " ", cells.shortId, cells.error);
    cells.bar = gf.el("progress", { max: 1, value: 0 });
    cells.stepText = gf.el("span", { class: "step-text" });
    cells.progress.append(gf.el("div", { class: "progress-line" }, cells.bar, cells.stepText));
    cells.time = gf.el("time");
    cells.created.append(cells.time);
    cells.actionList = gf.el("div", { class: "row-actions" });
    cells.clone = gf.el("a", { class: "button clone", href: `/jobs/new?from=${encodeURIComponent(job.id)}`, text: "Clone" });
    cells.actionList.append(cells.clone);
    cells.actions.append(cells.actionList);

    const tr = gf.el("tr", { "data-id": job.id }, Object.values(cells).filter((c) => c.tagName === "TD"));
    const row = { tr, job: null, cells, actionsKey: null, tagsKey: null, busy: false };
    updateRow(row, job);
    return row;
  }

  function updateRow(row, job) {
    const prev = row.job;
    row.job = job;
    const name = label(job);
    row.tr.dataset.status = job.status;
    updateName(row.cells, job, name);
    if (!prev || prev.status !== job.status) {
      row.cells.status.replaceChildren(gf.badge(job.status));
      if (prev && FINISHED.includes(job.status)) announce(`Job ${name} ${job.status}.`);
    }
    if (!prev || prev.step !== job.step || prev.steps !== job.steps) updateProgress(row.cells, job, name);
    updateTiming(row);
    updateTags(row, job);
    if (!prev || prev.created_at !== job.created_at) updateCreated(row.cells, job);
    updateActions(row, job, name);
  }

  /** The name, the short id beside a name, and the first line of an error. */
  function updateName(c, job, name) {
    setText(c.link, name);
    setText(c.shortId, job.name ? job.id.slice(0, 8) : "");
    if (job.error) {
      const first = job.error.split("\n")[0];
      setText(c.error, first);
      c.error.title = job.error;
      c.error.hidden = false;
    } else if (!c.error.hidden) {
      c.error.hidden = true;
    }
  }

  function updateProgress(c, job, name) {
    const steps = Math.max(1, job.steps);
    c.bar.max = steps;
    c.bar.value = Math.min(job.step, steps);
    c.bar.setAttribute("aria-label", `Progress of ${name}: step ${job.step} of ${job.steps}`);
    setText(c.stepText, `${job.step.toLocaleString()} / ${job.steps.toLocaleString()}`);
  }

  /** A button per tag (pressed: the tag filtered on); rebuilt only when they change. */
  function updateTags(row, job) {
    const c = row.cells;
    const tagsKey = JSON.stringify([job.tags, state.tag]);
    if (row.tagsKey === tagsKey) return;
    row.tagsKey = tagsKey;
    keepFocus(c.tags, () =>
      c.tags.replaceChildren(
        ...job.tags.map((t) =>
          gf.el("button", {
            type: "button",
            class: "tag",
            "data-tag": t,
            "aria-pressed": t === state.tag ? "true" : "false",
            "aria-label": `Show only jobs tagged ${t}`,
            text: t,
            onclick: () => filterByTag(t),
          }),
        ),
      ),
    );
    c.tags.classList.toggle("is-empty", job.tags.length === 0);
  }

  function updateCreated(c, job) {
    c.time.dateTime = job.created_at;
    c.time.title = new Date(job.created_at).toLocaleString();
    setText(c.time, shortTime(job.created_at));
  }

  /** The action buttons the status allows, then Clone; rebuilt only when they change. */
  function updateActions(row, job, name) {
    const c = row.cells;
    const actions = actionsFor(job.status);
    const key = actions.join(",");
    if (row.actionsKey !== key) {
      row.actionsKey = key;
      keepFocus(c.actions, () => {
        const buttons = actions.map((entry) => actionButton(row, entry, name));
        c.actionList.replaceChildren(...buttons, c.clone);
      });
    }
    c.clone.setAttribute("aria-label", `Clone ${name} into a new job`);
  }

  /** "cancel", "resume", "delete", or "cancel:pending" (inert, still focusable). */
  function actionButton(row, entry, name) {
    const [a, pending] = entry.split(":");
    return gf.el("button", {
      type: "button",
      class: a === "delete" ? "danger" : null,
      "data-action": a,
      "aria-disabled": pending ? "true" : null,
      "aria-label": pending ? `Cancelling ${name}` : `${ACTION_TEXT[a]} ${name}`,
      text: pending ? "Cancelling…" : ACTION_TEXT[a],
      onclick: pending ? null : () => act(row, a),
    });
  }

  /** Rebuild `cell`; when focus was inside, put it back on the same control or a neighbour. */
  function keepFocus(cell, rebuild) {
    const active = document.activeElement;
    const had = active && cell.contains(active);
    const key = had ? active.dataset.action || active.dataset.tag || null : null;
    rebuild();
    if (!had || cell.contains(document.activeElement)) return;
    if (active.isConnected && cell.contains(active)) return active.focus();
    const same = key
      ? [...cell.querySelectorAll("button, a")].find((n) => n.dataset.action === key || n.dataset.tag === key)
      : null;
    const target = same || cell.querySelector("button, a") || cell.closest("tr")?.querySelector("a.job-name");
    if (target) target.focus();
  }

  function updateTiming(row) {
    const t = gf.timing(row.job);
    setText(row.cells.elapsed, gf.duration(t.elapsed));
    setText(row.cells.remaining, t.remaining === null ? "–" : gf.duration(t.remaining));
  }

  function removeRow(row) {
    const hadFocus = row.tr.contains(document.activeElement);
    const next = row.tr.nextElementSibling || row.tr.previousElementSibling;
    row.tr.remove();
    rows.delete(row.job.id);
    if (hadFocus) (next ? next.querySelector("a.job-name") : $("main")).focus();
  }

  /** Make the table show `items` in order, touching only rows that changed. */
  function render(items, nextCursor) {
    state.loaded = true;
    state.cursor = nextCursor;
    const seen = new Set();
    let prev = null;
    for (const job of items) {
      if (seen.has(job.id)) continue;
      seen.add(job.id);
      let row = rows.get(job.id);
      if (!row) {
        row = createRow(job);
        rows.set(job.id, row);
      } else if (!row.busy) {
        updateRow(row, job);
      }
      const want = prev ? prev.nextSibling : body.firstChild;
      if (want !== row.tr) body.insertBefore(row.tr, want);
      prev = row.tr;
    }
    for (const row of [...rows.values()]) if (!seen.has(row.job.id)) removeRow(row);
    showState();
  }

  function showState() {
    loading.hidden = state.loaded || rows.size > 0;
    const table = $("jobs-table");
    table.classList.toggle("is-loading", !state.loaded);
    if (state.loaded) table.removeAttribute("aria-busy");
    else table.setAttribute("aria-busy", "true");
    const filtered = Boolean(state.status || state.tag);
    empty.hidden = !state.loaded || rows.size > 0;
    $("jobs-empty-none").hidden = filtered;
    $("jobs-empty-filtered").hidden = !filtered;
    table.classList.toggle("is-empty", rows.size === 0);
    moreButton.hidden = !state.cursor;
    clearButton.hidden = !filtered;
  }

  // ---- polling -------------------------------------------------------------------------------

  function schedule(ms) {
    clearTimeout(state.timer);
    state.timer = setTimeout(poll, ms);
  }

  async function poll() {
    clearTimeout(state.timer);
    if (state.inFlight) {
      state.again = true;
      return;
    }
    if (document.hidden && state.loaded) {
      schedule(POLL_MS);
      return;
    }
    state.inFlight = true;
    const generation = state.generation;
    const shown = state.shown;
    let wait = POLL_MS;
    try {
      const page = await fetchTop(shown);
      if (generation === state.generation && shown === state.shown) render(page.items, page.next_cursor);
      else state.again = true;
      if (state.failing) {
        state.failing = false;
        setText(live, "");
      }
    } catch (err) {
      state.failing = true;
      wait = POLL_ERROR_MS;
      setText(live, `Cannot load the jobs (${err.message || err}); retrying…`);
    } finally {
      state.inFlight = false;
    }
    if (state.again) {
      state.again = false;
      poll();
    } else {
      schedule(wait);
    }
  }

  async function loadMore() {
    if (!state.cursor || moreButton.dataset.busy) return;
    moreButton.dataset.busy = "1";
    moreButton.setAttribute("aria-busy", "true");
    const generation = state.generation;
    const cursor = state.cursor;
    try {
      const page = await gf.api(`/api/jobs?${query({ limit: PAGE, cursor })}`);
      if (generation !== state.generation || cursor !== state.cursor) return;
      const first = page.items.find((j) => !rows.has(j.id));
      const known = [...body.children].map((tr) => rows.get(tr.dataset.id).job);
      state.shown = known.length + page.items.length;
      render(known.concat(page.items), page.next_cursor);
      if (moreButton.hidden && first && rows.has(first.id)) rows.get(first.id).cells.link.focus();
    } catch (err) {
      gf.toast(`Could not load more jobs: ${err.message}`);
    } finally {
      delete moreButton.dataset.busy;
      moreButton.removeAttribute("aria-busy");
    }
  }

  // ---- actions -------------------------------------------------------------------------------

  async function act(row, action) {
    if (row.busy) return;
    const job = row.job;
    const name = label(job);
    if (
      action === "delete" &&
      !window.confirm(`Delete job “${name}” with its metrics, samples and checkpoints? This cannot be undone.`)
    ) {
      return;
    }
    row.busy = true;
    row.tr.setAttribute("aria-busy", "true");
    try {
      if (action === "delete") {
        await gf.api(`/api/jobs/${job.id}`, { method: "DELETE" });
        row.busy = false;
        removeRow(row);
        showState();
        gf.toast(`Deleted ${name}.`);
      } else {
        const fresh = await gf.api(`/api/jobs/${job.id}/${action}`, { method: "POST" });
        row.busy = false;
        if (rows.get(job.id) === row) updateRow(row, fresh);
        announce(`Job ${name} ${fresh.status}.`);
      }
    } catch (err) {
      gf.toast(`Could not ${action} ${name}: ${err.message}`, 6000);
    } finally {
      row.busy = false;
      row.tr.removeAttribute("aria-busy");
      poll();
    }
  }

  // ---- filters -------------------------------------------------------------------------------

  function writeUrl() {
    const q = new URLSearchParams(location.search);
    for (const [k, v] of [["status", state.status], ["tag", state.tag]]) {
      if (v) q.set(k, v);
      else q.delete(k);
    }
    const search = q.toString();
    history.replaceState(null, "", location.pathname + (search ? `?${search}` : "") + location.hash);
  }

  function applyFilters() {
    clearTimeout(applyFilters.debounce);
    const status = statusSelect.value;
    const tag = tagInput.value.trim();
    if (status === state.status && tag === state.tag) return;
    state.status = status;
    state.tag = tag;
    state.generation += 1;
    state.shown = PAGE;
    state.cursor = null;
    state.loaded = false; // the rows on screen stay until the answer replaces them
    writeUrl();
    showState();
    poll();
  }

  function filterByTag(tag) {
    tagInput.value = state.tag === tag ? "" : tag;
    applyFilters();
  }

  function clearFilters() {
    statusSelect.value = "";
    tagInput.value = "";
    applyFilters();
    statusSelect.focus();
  }

  statusSelect.value = state.status;
  tagInput.value = state.tag;
  statusSelect.addEventListener("change", applyFilters);
  tagInput.addEventListener("input", () => {
    clearTimeout(applyFilters.debounce);
    applyFilters.debounce = setTimeout(applyFilters, TAG_DEBOUNCE_MS);
  });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    applyFilters();
  });
  clearButton.addEventListener("click", clearFilters);
  $("jobs-empty-clear").addEventListener("click", clearFilters);
  moreButton.addEventListener("click", loadMore);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) poll();
  });
  // Elapsed and remaining time move between polls.
  setInterval(() => {
    for (const row of rows.values()) if (!FINISHED.includes(row.job.status) && row.job.started_at) updateTiming(row);
  }, 1000);

  showState();
  poll();
})();
