/* Datasets (/datasets): every uploaded dataset (GET /api/datasets) with its shape, count, size,
   creation time and a preview of its real examples (GET /api/datasets/{id}/preview.png: a grid
   of images, or a scatter plot of vectors); delete, which the server refuses (409) while a
   queued or running job uses the dataset: the refusal is shown with those jobs linked. */
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const list = $("ds-list");
  const JOB_ID = /\b[0-9a-f]{32}\b/g;
  const entries = new Map(); // dataset id -> {d, item, preview, refusal}

  /** 1536 -> "1.5 KiB": binary units, as the server names its upload limit. */
  function humanBytes(n) {
    if (n < 1024) return `${n} B`;
    let value = n;
    let unit = "B";
    for (const u of ["KiB", "MiB", "GiB", "TiB"]) {
      value /= 1024;
      unit = u;
      if (value < 1024) break;
    }
    return `${value >= 100 ? value.toFixed(0) : value.toFixed(1)} ${unit}`;
  }

  const shapeText = (shape) => `(${shape.join(", ")})`;
  const countOf = (d) => (typeof d.count === "number" ? d.count : d.shape[0]);

  /** What the preview draws for a shape: "images", "points", or null (single numbers). */
  function previewKind(shape) {
    if (shape.length === 3 || shape.length === 4) return "images";
    return shape.length === 2 && shape[1] >= 2 ? "points" : null;
  }

  function previewAlt(d, kind) {
    const n = countOf(d);
    if (kind === "points") return `Scatter plot of the first two coordinates of ${d.filename}`;
    return n > 64 ? `64 of the ${n.toLocaleString()} images in ${d.filename}, evenly spaced`
      : `The ${n} image${n === 1 ? "" : "s"} in ${d.filename}`;
  }

  function renderPreview(box, d) {
    const kind = previewKind(d.shape);
    box.dataset.locked = String(gf.auth.locked());
    if (!kind) {
      box.replaceChildren(gf.el("p", { class: "muted", text: "No preview: each example is a single number." }));
    } else if (gf.auth.locked()) {
      const ask = () => gf.auth.ask("Previews show the data itself: they need an API token on this server.");
      box.replaceChildren(gf.el("p", {}, gf.el("button", { type: "button", text: "Enter a token to see the preview", onclick: ask })));
    } else {
      const img = gf.el("img", {
        src: `/api/datasets/${encodeURIComponent(d.id)}/preview.png`,
        alt: previewAlt(d, kind),
        loading: "lazy",
      });
      img.addEventListener("error", () =>
        box.replaceChildren(gf.el("p", { class: "muted", text: "The preview could not be loaded." })));
      box.replaceChildren(img);
    }
  }

  function facts(d) {
    const rows = [
      ["Shape", shapeText(d.shape)],
      ["Examples", countOf(d).toLocaleString()],
      ["Type", d.dtype],
      ["Size", humanBytes(d.size)],
      ["Created", gf.when(d.created_at)],
      ["Usable with", (d.usable_with || []).join(", ") || "–"],
    ];
    if (d.created_by) rows.push(["Uploaded by", d.created_by]);
    rows.push(["Id", d.id]);
    return gf.el("dl", { class: "ds-facts" }, rows.flatMap(([name, value]) => [
      gf.el("dt", { text: name }),
      gf.el("dd", { text: value, class: name === "Id" ? "ds-id" : null, "data-fact": name.toLowerCase() }),
    ]));
  }

  function card(d) {
    const titleId = `ds-title-${d.id}`;
    const entry = {
      d,
      preview: gf.el("figure", { class: "ds-preview" }),
      refusal: gf.el("p", { class: "error-text ds-refusal", role: "alert" }),
    };
    const remove = gf.el("button", { type: "button", class: "danger", text: "Delete", "aria-describedby": titleId,
      onclick: () => removeDataset(entry) });
    const use = gf.el("a", { class: "button", href: `/jobs/new?dataset=${encodeURIComponent(d.id)}`,
      text: "New job with it", "aria-describedby": titleId });
    entry.item = gf.el("li", { class: "card ds-card", "data-dataset": d.id, "aria-labelledby": titleId },
      gf.el("h2", { id: titleId, text: d.filename }),
      entry.preview,
      facts(d),
      gf.el("div", { class: "ds-actions" }, use, remove),
      entry.refusal);
    renderPreview(entry.preview, d);
    return entry;
  }

  /** The server's 409 message with each job id in it a link to the job's page. */
  function withJobLinks(message, datasetId) {
    const nodes = [];
    let last = 0;
    for (const match of message.matchAll(JOB_ID)) {
      if (match[0] === datasetId) continue;
      nodes.push(message.slice(last, match.index), gf.el("a", { href: `/jobs/${match[0]}`, text: match[0] }));
      last = match.index + match[0].length;
    }
    nodes.push(message.slice(last));
    return nodes;
  }

  function showState() {
    $("ds-empty").hidden = entries.size > 0;
  }

  function dropCard(entry) {
    const next = entry.item.nextElementSibling || entry.item.previousElementSibling;
    entry.item.remove();
    entries.delete(entry.d.id);
    showState();
    const focus = next ? next.querySelector("a, button") : document.querySelector("main h1");
    if (focus) focus.focus();
  }

  async function removeDataset(entry) {
    const d = entry.d;
    if (entry.busy) return;
    const question = `Delete dataset “${d.filename}” ${shapeText(d.shape)}? Finished jobs keep their ` +
      "results, but cannot be copied or resumed with it. This cannot be undone.";
    if (!window.confirm(question)) return;
    entry.busy = true;
    entry.item.setAttribute("aria-busy", "true");
    entry.refusal.replaceChildren();
    try {
      await gf.api(`/api/datasets/${encodeURIComponent(d.id)}`, { method: "DELETE" });
      dropCard(entry);
      $("ds-announce").textContent = `Deleted dataset ${d.filename}.`;
      gf.toast(`Deleted ${d.filename}.`);
    } catch (err) {
      if (err instanceof gf.ApiError && err.status === 404) {
        dropCard(entry);
        gf.toast(`${d.filename} was already deleted.`);
      } else if (err instanceof gf.ApiError && err.status === 409) {
        entry.refusal.replaceChildren("Not deleted: ", ...withJobLinks(err.message, d.id));
      } else {
        entry.refusal.textContent = `Not deleted: ${err.message}`;
      }
    } finally {
      entry.busy = false;
      entry.item.removeAttribute("aria-busy");
    }
  }

  async function load() {
    try {
      await gf.auth.ready; // the previews need to know whether a token is required
      const answer = await gf.api("/api/datasets?limit=1000");
      for (const d of answer.items) {
        const entry = card(d);
        entries.set(d.id, entry);
        list.append(entry.item);
      }
      showState();
    } catch (err) {
      $("ds-error").textContent = `Could not load the datasets: ${err.message}`;
    } finally {
      $("ds-loading").hidden = true;
    }
  }

  // A token saved or forgotten: previews that were locked (or now are) are drawn again.
  document.addEventListener("gf-auth", () => {
    for (const entry of entries.values()) {
      if (entry.preview.dataset.locked !== String(gf.auth.locked())) renderPreview(entry.preview, entry.d);
    }
  });

  load();
})();
