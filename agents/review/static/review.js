// The review page: one pair at a time from /api/queue, decided through /api/pairs/<id>/decision.
// Every value from the server is put in the page as text (textContent), never as HTML:
// licenses, authors and sources come from outside and must not become markup.
"use strict";

(() => {
  const state = {
    queue: [],      // [{pair_id, decided}] in queue order; decided ones stay for "previous"
    index: 0,
    waiting: 0,
    item: null,
    selected: 0,    // index into item.candidates
    busy: false,
  };

  const $ = (id) => document.getElementById(id);

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("data-") || key.startsWith("aria-")) node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function say(message, kind = "info") {
    const status = $("status");
    status.textContent = message;
    status.dataset.kind = kind;
  }

  // The session's CSRF token, rendered into the page by the server; every POST sends it.
  const csrfToken = document.querySelector('meta[name="csrf-token"]').content;

  async function api(path, body) {
    const options = { headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (body !== undefined) {
      options.method = "POST";
      options.headers["Content-Type"] = "application/json";
      options.headers["X-CSRF-Token"] = csrfToken;
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    if (response.status === 401) {
      // The session ended (expired, logged out elsewhere, account removed): log in again.
      window.location.assign("/login");
    }
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const error = new Error(data && data.error ? data.error : `${response.status} ${response.statusText}`);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  const fixed = (value, digits = 2) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));
  const short = (id) => (id ? id.slice(0, 8) : "–");

  // -- queue and navigation -------------------------------------------------------------

  async function reloadQueue() {
    const data = await api("/api/queue?limit=200");
    $("reviewer").textContent = data.reviewer;
    state.queue = data.items.map((item) => ({ pair_id: item.pair_id, decided: false }));
    state.waiting = data.waiting;
    state.index = 0;
  }

  async function loadQueue() {
    await reloadQueue();
    await show();
  }

  async function show() {
    if (state.index >= state.queue.length) {
      // Past the end of what was loaded: ask again, since new pairs may have arrived and
      // skipped ones are still pending.
      await reloadQueue();
      if (state.queue.length === 0) return showEmpty();
    }
    const entry = state.queue[state.index];
    const main = $("item");
    main.setAttribute("aria-busy", "true");
    try {
      state.item = await api(`/api/pairs/${encodeURIComponent(entry.pair_id)}`);
    } catch (error) {
      if (error.status === 404) {
        // Erased or re-matched away since the queue was loaded: drop it and go on.
        state.queue.splice(state.index, 1);
        say(`Pair ${short(entry.pair_id)} is gone: ${error.message}`, "warn");
        return show();
      }
      throw error;
    }
    state.selected = initialSelection(state.item);
    render();
  }

  function showEmpty() {
    state.item = null;
    $("item").hidden = true;
    $("item").dataset.pairId = "";
    $("empty").hidden = false;
    $("progress").textContent = "Queue empty";
    $("reload").focus();
  }

  function initialSelection(item) {
    const wanted = item.ref_id || item.suggested_ref_id;
    const found = item.candidates.findIndex((c) => c.ref_id === wanted);
    return found >= 0 ? found : 0;
  }

  async function move(step) {
    if (state.busy) return;
    const target = state.index + step;
    if (target < 0) {
      say("This is the first item.");
      return;
    }
    state.index = target;
    await guarded(show);
  }

  // -- rendering ------------------------------------------------------------------------

  function render() {
    const item = state.item;
    const main = $("item");
    $("empty").hidden = true;
    main.hidden = false;

    const crop = $("crop");
    crop.classList.remove("broken");
    crop.onerror = () => {
      crop.classList.add("broken");
      say("The face crop could not be loaded.", "error");
    };
    crop.src = `/blobs/${item.crop}.png`;
    const face = item.face;
    $("face-credit").textContent = face.attribution
      ? `${face.attribution}${face.license ? ` (${face.license})` : ""}`
      : `Source: ${face.source}${face.license ? ` (${face.license})` : ""}`;
    const flag = $("face-flag");
    flag.hidden = !face.flag;
    flag.textContent = face.flag ? `Flagged ${face.flag.replaceAll("_", " ")}: ${face.flag_detail ?? ""}` : "";

    const meta = $("pair-meta");
    meta.replaceChildren();
    const rows = [
      ["Pair", short(item.pair_id)],
      ["Style", item.style],
      ["Status", item.status],
      ["Decided by", item.decided_by ? `${item.decided_by}, ${new Date(item.decided_at).toLocaleString()}` : "–"],
      ["Pair score", fixed(item.score)],
      ["Library", item.library_version === null ? "–" : `v${item.library_version}`],
      ["Queued", new Date(item.created_at).toLocaleString()],
    ];
    for (const [term, value] of rows) meta.append(el("dt", { text: term }), el("dd", { text: value }));

    renderLabels(item.labels);
    renderCandidates(item.candidates);

    const position = `${state.index + 1} of ${state.queue.length} loaded`;
    $("progress").textContent = `${position}; ${state.waiting} waiting in all`;
    $("previous").disabled = state.index === 0;
    $("reject").disabled = item.status === "rejected";
    updateApprove();
    main.dataset.pairId = item.pair_id;
    main.dataset.status = item.status;
    main.setAttribute("aria-busy", "false");
  }

  function renderLabels(labels) {
    const box = $("labels");
    const focused = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.name
      : undefined;
    box.replaceChildren();
    for (const label of labels) {
      const id = `label-${label.name}`;
      const select = el("select", { id, "data-name": label.name });
      if (label.value === null) {
        select.append(el("option", { value: "", text: "– not set –", selected: true, disabled: true }));
      }
      for (const value of label.allowed) {
        select.append(el("option", { value, text: value, selected: value === label.value }));
      }
      select.addEventListener("change", () => relabel(label.name, select.value));
      select.addEventListener("keydown", (event) => {
        if (event.key === "Escape") {
          event.preventDefault();
          select.blur();
        }
      });
      const missing = label.learnable && label.value === null;
      const source = label.value === null
        ? (missing ? el("span", { class: "tag-missing", text: "missing" }) : "not set")
        : `${label.source} · ${fixed(label.confidence)}`;
      const others = label.sources
        .filter((s) => s.source !== label.source)
        .map((s) => `${s.source}: ${s.value} (${fixed(s.confidence)})`)
        .join("; ");
      const row = el(
        "div",
        { class: missing ? "label missing" : "label", "data-label": label.name },
        el("label", { htmlFor: id, text: label.name.replaceAll("_", " ") }),
        select,
        el("span", { class: "source" }, source, others ? ` — also ${others}` : null),
      );
      box.append(row);
    }
    if (focused) {
      const again = box.querySelector(`select[data-name="${CSS.escape(focused)}"]`);
      if (again) again.focus();
    }
  }

  function renderCandidates(candidates) {
    const list = $("candidates");
    list.replaceChildren();
    if (candidates.length === 0) {
      list.append(el("li", { class: "muted", text: "No candidate: reject, or wait for the library to grow." }));
    }
    candidates.forEach((candidate, i) => {
      const ref = candidate.ref;
      const button = el("button", {
        type: "button",
        class: candidate.approvable ? "candidate" : "candidate unusable",
        "aria-pressed": String(i === state.selected),
        "data-ref-id": candidate.ref_id,
      });
      const suggested = candidate.ref_id === state.item.suggested_ref_id;
      button.append(el(
        "span",
        { class: "rank", text: `${candidate.rank}. ${short(candidate.ref_id)}` },
        suggested ? el("span", { class: "tag-suggested", text: "suggested" }) : null,
      ));
      if (ref) {
        button.append(el("img", {
          src: `/blobs/${ref.training}.png`,
          alt: `Reference ${candidate.rank}: ${ref.style} training image`,
        }));
      }
      button.append(el("span", {
        class: "scores",
        text: `score ${fixed(candidate.score)} · similarity ${fixed(candidate.similarity)} · label agreement ${fixed(candidate.label_agreement)}`,
      }));
      if (ref) {
        button.append(el("span", { class: "style", text: `style ${ref.style}` }));
        // Attribution is always visible, never behind a hover.
        button.append(el("p", { class: "attribution", text: `© ${ref.author} — ${ref.license}. Source: ${ref.source}` }));
        if (ref.status !== "active") {
          button.append(el("span", { class: "problem", text: `${ref.status}${ref.reason ? `: ${ref.reason}` : ""}` }));
        }
      } else {
        button.append(el("span", { class: "problem", text: "no longer in the library" }));
      }
      button.addEventListener("click", () => select(i));
      list.append(el("li", {}, button));
    });
  }

  function select(i) {
    if (!state.item || i < 0 || i >= state.item.candidates.length) return;
    state.selected = i;
    for (const [j, button] of $("candidates").querySelectorAll(".candidate").entries()) {
      button.setAttribute("aria-pressed", String(j === i));
    }
    updateApprove();
    const candidate = state.item.candidates[i];
    say(`Candidate ${candidate.rank} selected${candidate.approvable ? "" : " (cannot be approved)"}.`);
  }

  function updateApprove() {
    const candidate = state.item ? state.item.candidates[state.selected] : undefined;
    $("approve").disabled = !candidate || !candidate.approvable;
  }

  // -- decisions ------------------------------------------------------------------------

  async function decide(body) {
    const item = state.item;
    const answer = await api(`/api/pairs/${encodeURIComponent(item.pair_id)}/decision`, {
      ...body,
      seen_updated_at: item.updated_at,
    });
    return answer;
  }

  async function approve() {
    const item = state.item;
    const candidate = item && item.candidates[state.selected];
    if (!candidate) return say("There is no candidate to approve; reject instead.", "error");
    if (!candidate.approvable) return say(`Candidate ${candidate.rank} cannot be approved.`, "error");
    // Approving anything but the matcher's suggestion is recorded as a pick.
    const action = candidate.ref_id === item.suggested_ref_id ? "approve" : "pick";
    const answer = await decide({ action, ref_id: candidate.ref_id });
    await finished(`Approved ${short(answer.pair.pair_id)} with candidate ${candidate.rank}.`, answer.notice);
  }

  async function reject() {
    if (!state.item) return;
    const answer = await decide({ action: "reject" });
    await finished(`Rejected ${short(answer.pair.pair_id)}.`, answer.notice);
  }

  // The next item loads after every decision; a notice (the decision was saved but could
  // not be announced) stays on screen instead of the confirmation.
  async function finished(message, notice) {
    state.queue[state.index].decided = true;
    state.waiting = Math.max(0, state.waiting - 1);
    say(notice || message, notice ? "warn" : "ok");
    state.index += 1;
    await show();
  }

  async function relabel(name, value) {
    await guarded(async () => {
      const answer = await decide({ action: "relabel", labels: { [name]: value } });
      const selected = state.selected;
      state.item = await api(`/api/pairs/${encodeURIComponent(state.item.pair_id)}`);
      state.selected = Math.min(selected, Math.max(0, state.item.candidates.length - 1));
      render();
      say(answer.notice || `Saved ${name.replaceAll("_", " ")} = ${value}.`, answer.notice ? "warn" : "ok");
    });
  }

  // One request at a time; a conflict reloads the item so the reviewer sees who decided.
  async function guarded(work) {
    if (state.busy) return;
    state.busy = true;
    try {
      await work();
    } catch (error) {
      say(error.message, "error");
      if (error.status === 409 && state.item) {
        try {
          state.item = await api(`/api/pairs/${encodeURIComponent(state.item.pair_id)}`);
          state.selected = initialSelection(state.item);
          render();
        } catch (reload) {
          say(`${error.message} (reloading failed: ${reload.message})`, "error");
        }
      }
    } finally {
      state.busy = false;
    }
  }

  // -- keyboard -------------------------------------------------------------------------

  function focusLabels() {
    const selects = [...$("labels").querySelectorAll("select")];
    const missing = $("labels").querySelector(".label.missing select");
    const target = missing || selects[0];
    if (target) target.focus();
  }

  function toggleHelp() {
    const help = $("help");
    if (help.open) help.close();
    else help.showModal();
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return;
    const target = event.target;
    // Keys typed into a form control belong to it (a select jumps to options by letter).
    if (target instanceof HTMLSelectElement || target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement) return;
    if ($("help").open) {
      if (event.key === "?") {
        event.preventDefault();
        toggleHelp();
      }
      return;
    }
    const key = event.key;
    let handled = true;
    if (key === "?") toggleHelp();
    else if (!state.item && key !== "j" && key !== "k") handled = false;
    else if (key === "a") guarded(approve);
    else if (key === "r") guarded(reject);
    else if (key === "j") move(1);
    else if (key === "k") move(-1);
    else if (key === "l") focusLabels();
    else if (/^[1-9]$/.test(key)) select(Number(key) - 1);
    else handled = false;
    if (handled) event.preventDefault();
  });

  // -- start ----------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("approve").addEventListener("click", () => guarded(approve));
    $("reject").addEventListener("click", () => guarded(reject));
    $("next").addEventListener("click", () => move(1));
    $("previous").addEventListener("click", () => move(-1));
    $("help-button").addEventListener("click", toggleHelp);
    $("reload").addEventListener("click", () => guarded(loadQueue));
    guarded(loadQueue);
  });
})();
