/*
 * Tether labeling UI: the login page (index.html) and the labeling page (label.html).
 * Plain script, no framework, no build step.
 *
 * Security: prompts, responses and rationales are untrusted. Nothing from the server is
 * ever passed to innerHTML & co.; text goes in via textContent / Node.append(string), and
 * Markdown via TetherMarkdown.render, which builds DOM nodes itself. The page runs under a
 * strict CSP (script-src 'self', no inline scripts or handlers), so all wiring is here.
 */
(function () {
  "use strict";

  const LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
  // Rank mode: keys a..h select card A..H (so at most 8 cards are keyboard-selectable).
  const CARD_KEYS = "abcdefgh";
  // Pair mode: what each choice sends. Ranks are in display order, lower is better.
  const PAIR_RANKS = { "a-better": [0, 1], "b-better": [1, 0], "tie": [0, 0] };
  const NO_RANK_CHOICES = { "both-bad": "both_bad", "cant-tell": "cant_tell" };
  // Rate mode (one response, "thumbs"): what each choice sends.
  const RATE_CHOICES = { good: "good", bad: "bad", "cant-tell": "cant_tell" };
  const ROLE_NAMES = { system: "System", user: "User", assistant: "Assistant" };

  // ------------------------------------------------------------------ helpers

  /*
   * Creates an element. `opts.text` sets textContent; other keys become attributes
   * (only ever called with our own constant keys). Children may be nodes or strings;
   * strings are appended as text nodes, never parsed.
   */
  function h(tag, opts, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(opts || {})) {
      if (value == null || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "className") node.className = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children || []) {
      if (child != null) node.append(child);
    }
    return node;
  }

  function kbd(label) {
    return h("kbd", { text: label });
  }

  function getCookie(name) {
    for (const part of document.cookie.split(";")) {
      const eq = part.indexOf("=");
      if (eq !== -1 && part.slice(0, eq).trim() === name) {
        try {
          return decodeURIComponent(part.slice(eq + 1).trim());
        } catch (e) {
          return part.slice(eq + 1).trim();
        }
      }
    }
    return "";
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // FastAPI-style {"detail": "..."} or validation errors {"detail": [{"msg": ...}]}.
  function errorMessage(data, status) {
    const detail = data && data.detail;
    if (typeof detail === "string" && detail) return detail;
    if (Array.isArray(detail) && detail.length) {
      return detail.map((d) => (d && d.msg) || JSON.stringify(d)).join("; ");
    }
    return "The server answered with an error (HTTP " + status + ").";
  }

  /*
   * JSON request to our own server. POSTs carry the CSRF token from the (JS-readable)
   * tether_csrf cookie. A 401 means the session is gone: go back to the login page.
   */
  async function api(method, path, body) {
    const opts = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (method !== "GET") {
      opts.headers["Content-Type"] = "application/json";
      opts.headers["X-CSRF-Token"] = getCookie("tether_csrf");
      opts.body = JSON.stringify(body || {});
    }
    let res;
    try {
      res = await fetch(path, opts);
    } catch (e) {
      throw new ApiError(0, "Could not reach the server. Check your connection and try again.");
    }
    if (res.status === 401) {
      window.location.assign("/");
      throw new ApiError(401, "Your session has ended. Please log in again.");
    }
    const raw = res.status === 204 ? "" : await res.text();
    let data = null;
    if (raw) {
      try {
        data = JSON.parse(raw);
      } catch (e) {
        data = null;
      }
    }
    if (!res.ok) throw new ApiError(res.status, errorMessage(data, res.status));
    return data;
  }

  // ------------------------------------------------------------------ login page

  function initLogin() {
    // The server redirects a bad token to /?error=1.
    if (new URLSearchParams(window.location.search).has("error")) {
      document.getElementById("error").textContent = "That token is not valid.";
    }
  }

  // ------------------------------------------------------------------ labeling page

  const state = {
    me: null, // /api/me
    project: null, // current project name
    item: null, // current item from /next, or null
    done: 0,
    total: 0,
    // Pair mode: one of a-better|b-better|tie|both-bad|cant-tell. Rank mode: both-bad|cant-tell
    // override the ranks while set; choosing a rank clears it.
    choice: null,
    ranks: [], // rank mode: 1-based rank per displayed card, null = not ranked yet
    active: 0, // rank mode: the card that digit keys rank
    busy: false, // a submit or load is in flight: actions are ignored, submit disabled
    view: "label", // "label" | "answers"
    heldByOthers: 0, // items not labelled by me that others hold (shown, not answered yet)
  };

  let dom = {};

  function isRankMode() {
    return !!state.item && state.item.responses.length > 2;
  }

  function isRateMode() {
    return !!state.item && state.item.responses.length === 1;
  }

  function apiPath(suffix) {
    return "/api/projects/" + encodeURIComponent(state.project) + suffix;
  }

  function setStatus(message) {
    dom.status.textContent = message;
  }

  function clearError() {
    dom.error.replaceChildren();
  }

  /* Shows a message in the alert area; `retry` adds a "Try again" button. */
  function showError(message, retry) {
    const children = [h("span", { text: message })];
    if (retry) {
      const btn = h("button", { type: "button", className: "btn btn-small", "data-action": "retry" }, ["Try again"]);
      btn.addEventListener("click", () => {
        clearError();
        retry();
      });
      children.push(btn);
    }
    dom.error.replaceChildren(...children);
  }

  // ---------------------------------------------------------------- rendering: prompt

  function renderMarkdown(textValue) {
    const div = h("div", { className: "markdown" });
    if (textValue == null || String(textValue).trim() === "") {
      div.append(h("p", { className: "muted empty", text: "(empty)" }));
    } else {
      div.append(window.TetherMarkdown.render(String(textValue)));
    }
    return div;
  }

  /* A prompt is a string, or a list of {role, content} messages shown as a conversation. */
  function renderPrompt(prompt, target) {
    target.replaceChildren();
    if (Array.isArray(prompt)) {
      target.classList.add("conversation");
      for (const msg of prompt) {
        const role = msg && typeof msg.role === "string" ? msg.role : "unknown";
        const known = Object.prototype.hasOwnProperty.call(ROLE_NAMES, role);
        const content = msg && msg.content != null ? msg.content : "";
        const text = typeof content === "string" ? content : JSON.stringify(content, null, 2);
        const bubble = renderMarkdown(text);
        bubble.classList.add("bubble");
        target.append(
          h("div", { className: "message role-" + (known ? role : "other"), "data-role": role }, [
            h("div", { className: "message-role", text: known ? ROLE_NAMES[role] : role }),
            bubble,
          ])
        );
      }
    } else {
      target.classList.remove("conversation");
      target.append(renderMarkdown(prompt));
    }
  }

  /* One line summarising a prompt: the last user turn of a conversation, else the text. */
  function promptSummary(prompt) {
    let textValue = prompt;
    if (Array.isArray(prompt)) {
      const users = prompt.filter((m) => m && m.role === "user");
      const last = users.length ? users[users.length - 1] : prompt[prompt.length - 1];
      textValue = last && typeof last.content === "string" ? last.content : "";
    }
    return firstLine(textValue, 160) || "(empty prompt)";
  }

  /* First non-empty line, with the commonest Markdown markers dropped (it is shown as plain text). */
  function firstLine(value, max) {
    const line =
      String(value == null ? "" : value)
        .split("\n")
        .map((l) => l.replace(/^\s*(#{1,6}\s+|[-*+]\s+|>\s*)/, "").replace(/\*\*|__|`/g, "").trim())
        .find((l) => l) || "";
    return line.length > max ? line.slice(0, max - 1) + "…" : line;
  }

  // ---------------------------------------------------------------- rendering: item

  function renderItem(item) {
    const k = item.responses.length;
    const rankMode = k > 2;
    const rateMode = k === 1;
    state.item = item;
    state.choice = null;
    state.ranks = new Array(k).fill(null);
    state.active = 0;
    dom.rationale.value = "";
    // After Ctrl+Enter from the rationale, leave it: the new item's shortcuts must work at once.
    if (document.activeElement === dom.rationale) dom.rationale.blur();

    renderPrompt(item.prompt, dom.prompt);
    // Conversations are answered at their last turn: show that end first.
    dom.prompt.scrollTop = Array.isArray(item.prompt) ? dom.prompt.scrollHeight : 0;

    dom.responses.replaceChildren();
    dom.responses.setAttribute("data-k", String(k));
    dom.responses.classList.toggle("rank-mode", rankMode);
    item.responses.forEach((response, i) => {
      const slot = LETTERS[i];
      const card = h("article", {
        className: "response-card",
        "data-slot": slot,
        "data-index": String(i),
        "aria-labelledby": "card-title-" + slot,
      });
      const head = h("header", { className: "card-head" }, [
        h("h3", { className: "card-title", id: "card-title-" + slot }, [
          rateMode ? "Response" : h("span", { className: "card-letter", text: slot }),
          rankMode ? kbd(CARD_KEYS[i] ? CARD_KEYS[i].toUpperCase() : "") : null,
        ]),
        h("span", { className: "card-badge", "data-badge": "" }),
      ]);
      // tabindex so keyboard users can scroll a long response
      const body = renderMarkdown(response);
      body.classList.add("card-body");
      body.setAttribute("tabindex", "0");
      body.setAttribute("role", "region");
      body.setAttribute("aria-label", rateMode ? "Response" : "Response " + slot);
      card.append(head, body);
      if (rankMode) {
        const ranks = h("div", { className: "card-ranks", role: "group", "aria-label": "Rank for " + slot }, [
          h("span", { className: "card-ranks-label", text: "Rank" }),
        ]);
        for (let r = 1; r <= k; r++) {
          ranks.append(
            h("button", {
              type: "button",
              className: "rank-btn",
              "data-rank": String(r),
              "aria-pressed": "false",
              "aria-label": "Rank " + r + " for " + slot + (r === 1 ? " (best)" : ""),
              text: String(r),
            })
          );
        }
        card.append(ranks);
      }
      dom.responses.append(card);
    });

    renderChoices(k);
    renderHelp(k);
    updateSelection();
  }

  function choiceButton(action, label, key) {
    return h("button", { type: "button", className: "btn choice", "data-action": action, "aria-pressed": "false", "aria-keyshortcuts": key }, [
      label + " ",
      kbd(key),
    ]);
  }

  // "Can't tell" is on T in every mode (in rank mode A..H select cards).
  function renderChoices(k) {
    const buttons = [];
    if (k === 1) {
      buttons.push(choiceButton("good", "Good", "G"), choiceButton("bad", "Bad", "B"));
    } else if (k === 2) {
      buttons.push(
        choiceButton("a-better", "A is better", "1"),
        choiceButton("b-better", "B is better", "2"),
        choiceButton("tie", "Equally good", "3"),
        choiceButton("both-bad", "Both bad", "X")
      );
    } else {
      buttons.push(choiceButton("both-bad", "All bad", "X"));
    }
    buttons.push(choiceButton("cant-tell", k === 1 ? "Can't tell / skip" : "Can't tell", "T"));
    dom.choices.replaceChildren(...buttons);
  }

  function renderHelp(k) {
    const parts = [];
    // keys: list of key labels; "-" between two keys marks a range (A–D), else alternatives (3 / =)
    const add = (keys, what, range) => {
      const span = h("span", { className: "help-item" });
      keys.forEach((key, i) => {
        if (i) span.append(range ? "–" : " / ");
        span.append(kbd(key));
      });
      span.append(" " + what);
      parts.push(span);
    };
    if (k === 1) {
      add(["G"], "good");
      add(["B"], "bad");
    } else if (k === 2) {
      add(["1"], "A better");
      add(["2"], "B better");
      add(["3", "="], "equally good");
      add(["X"], "both bad");
    } else {
      add(["A", LETTERS[Math.min(k, CARD_KEYS.length) - 1]], "select card", true);
      add(["1", String(Math.min(k, 9))], "rank it (1 = best)", true);
      add(["X"], "all bad");
    }
    add(["T"], "can't tell");
    add(["R"], "rationale");
    add(["Enter"], "submit (Ctrl+Enter from the rationale)");
    add(["U"], "undo last");
    add(["M"], "my answers");
    dom.help.replaceChildren(...parts);
  }

  /* The request body for the current selection, or null if it is incomplete. */
  function buildPayload() {
    const item = state.item;
    if (!item) return null;
    let body;
    if (isRateMode()) {
      if (!RATE_CHOICES[state.choice]) return null;
      body = { choice: RATE_CHOICES[state.choice] };
    } else if (NO_RANK_CHOICES[state.choice]) {
      body = { choice: NO_RANK_CHOICES[state.choice] };
    } else if (!isRankMode() && PAIR_RANKS[state.choice]) {
      body = { choice: "rank", ranks: PAIR_RANKS[state.choice].slice() };
    } else if (isRankMode() && state.ranks.every((r) => r != null)) {
      body = { choice: "rank", ranks: state.ranks.map((r) => r - 1) };
    } else {
      return null;
    }
    body.assignment = item.assignment;
    body.rationale = dom.rationale.value.trim();
    return body;
  }

  /* Reflects state (choice, ranks, active card, busy) onto buttons and cards. */
  function updateSelection() {
    const rankMode = isRankMode();
    for (const btn of dom.choices.querySelectorAll("[data-action]")) {
      btn.setAttribute("aria-pressed", String(btn.dataset.action === state.choice));
      btn.disabled = state.busy;
    }
    const cards = dom.responses.querySelectorAll(".response-card");
    cards.forEach((card, i) => {
      const badge = card.querySelector("[data-badge]");
      card.classList.remove("is-preferred", "is-tie", "is-bad", "is-active", "is-overridden");
      card.removeAttribute("aria-current");
      if (rankMode) {
        const rank = state.ranks[i];
        for (const btn of card.querySelectorAll("[data-rank]")) {
          btn.setAttribute("aria-pressed", String(Number(btn.dataset.rank) === rank));
          btn.disabled = state.busy;
        }
        badge.textContent = rank == null ? "" : "Rank " + rank;
        if (i === state.active) {
          card.classList.add("is-active");
          card.setAttribute("aria-current", "true");
        }
        if (state.choice) card.classList.add("is-overridden");
      } else {
        const c = state.choice;
        let label = "";
        if (c === "good") {
          card.classList.add("is-preferred");
          label = "Good";
        } else if (c === "bad") {
          card.classList.add("is-bad");
          label = "Bad";
        } else if ((c === "a-better" && i === 0) || (c === "b-better" && i === 1)) {
          card.classList.add("is-preferred");
          label = "Better";
        } else if (c === "tie") {
          card.classList.add("is-tie");
          label = "Equally good";
        } else if (c === "both-bad") {
          card.classList.add("is-bad");
          label = "Bad";
        }
        badge.textContent = label;
      }
      if (rankMode && state.choice === "both-bad") card.classList.add("is-bad");
    });
    dom.submit.disabled = state.busy || buildPayload() === null;
  }

  function renderProgress() {
    dom.progress.hidden = false;
    const total = state.total;
    let progressText = total ? state.done + " of " + total + " labelled" : state.done + " labelled";
    // Items others hold count in the total until they answer: say so rather than "0 of 1".
    if (state.heldByOthers) progressText += " · " + state.heldByOthers + " in progress by others";
    dom.progressText.textContent = progressText;
    dom.progressBar.max = Math.max(total, 1);
    dom.progressBar.value = total ? Math.min(state.done, total) : 0;
  }

  function showView() {
    const answers = state.view === "answers";
    dom.labelView.hidden = answers;
    dom.myAnswers.hidden = !answers;
    dom.actionBar.hidden = answers || !state.item;
    dom.toggleAnswers.setAttribute("aria-pressed", String(answers));
    document.body.classList.toggle("view-answers", answers);
  }

  function showDone() {
    state.item = null;
    dom.item.hidden = true;
    dom.loading.hidden = true;
    dom.done.hidden = false;
    const others = (state.me ? state.me.projects : []).filter((p) => p.name !== state.project && p.done < p.assigned_total);
    const p = state.me && state.me.projects.find((x) => x.name === state.project);
    const held = state.heldByOthers
      ? " " + state.heldByOthers + (state.heldByOthers === 1 ? " item is" : " items are") + " being labelled by someone else; if not answered within " +
        (p ? p.lease_minutes : 30) + " minutes, " + (state.heldByOthers === 1 ? "it comes" : "they come") + " back: reload then."
      : "";
    // not "all done" while others may still give items back
    dom.doneTitle.textContent = state.heldByOthers ? "Nothing to label right now" : "All done, thank you";
    dom.doneDetail.textContent =
      "You have labelled " + state.done + (state.done === 1 ? " item" : " items") + " in " + state.project + ". Nothing is left for you here now." +
      held +
      (others.length ? " Other projects still have items: pick one above." : "");
    showView();
  }

  // ---------------------------------------------------------------- actions

  function setBusy(busy) {
    state.busy = busy;
    document.body.classList.toggle("is-busy", busy);
    updateSelection();
  }

  async function loadNext() {
    setBusy(true);
    try {
      const data = await api("GET", apiPath("/next"));
      takeCounts(data);
      if (!data.item) {
        state.busy = false;
        showDone();
        return;
      }
      dom.loading.hidden = true;
      dom.done.hidden = true;
      dom.item.hidden = false;
      const sameItem = state.item && state.item.assignment === data.item.assignment;
      // /next returns the same assignment until it is submitted; keep the user's selection then.
      if (!sameItem) renderItem(data.item);
      showView();
      setStatus("New item loaded.");
    } catch (e) {
      if (e.status !== 401) showError(e.message, loadNext);
    } finally {
      setBusy(false);
    }
  }

  /* The annotator's counts from /next or /labels/undo. */
  function takeCounts(data) {
    state.done = Number(data.done) || 0;
    if (data.assigned_total != null) state.total = Number(data.assigned_total) || 0;
    state.heldByOthers = Number(data.held_by_others) || 0;
    syncProjectCounts();
    renderProgress();
  }

  /* Takes back the last answer: its item comes back with that answer selected, to change. */
  async function undo() {
    if (state.busy || state.view !== "label") return;
    clearError();
    setBusy(true);
    try {
      const data = await api("POST", apiPath("/labels/undo"));
      takeCounts(data);
      state.item = null;
      renderItem(data.item);
      restoreAnswer(data.item.previous);
      dom.loading.hidden = true;
      dom.done.hidden = true;
      dom.item.hidden = false;
      showView();
      setStatus("Your last answer is back: change it and submit again.");
    } catch (e) {
      if (e.status === 404) showError("There is no answer of yours here to undo.");
      else if (e.status !== 401) showError(e.message);
    } finally {
      setBusy(false);
    }
  }

  /* Selects a previous answer (ranks in display order, 0 = best) on the item just rendered. */
  function restoreAnswer(previous) {
    if (!previous) return;
    const byChoice = { both_bad: "both-bad", cant_tell: "cant-tell", good: "good", bad: "bad" };
    const ranks = previous.ranks;
    if (byChoice[previous.choice]) {
      state.choice = byChoice[previous.choice];
    } else if (Array.isArray(ranks) && isRankMode()) {
      state.ranks = ranks.map((r) => r + 1);
    } else if (Array.isArray(ranks)) {
      state.choice = ranks[0] === ranks[1] ? "tie" : ranks[0] < ranks[1] ? "a-better" : "b-better";
    }
    dom.rationale.value = previous.rationale || "";
    updateSelection();
  }

  function syncProjectCounts() {
    const p = state.me && state.me.projects.find((x) => x.name === state.project);
    if (p) {
      p.done = state.done;
      if (state.total) p.assigned_total = state.total;
    }
  }

  async function submit() {
    if (state.busy || !state.item || state.view !== "label") return;
    const payload = buildPayload();
    if (!payload) {
      showError(isRankMode() ? "Give every response a rank (or choose All bad / Can't tell) before submitting." : isRateMode() ? "Choose Good, Bad or Can't tell before submitting." : "Choose an answer before submitting.");
      return;
    }
    clearError();
    setBusy(true); // also disables Submit: a double click cannot send twice
    setStatus("Saving…");
    try {
      const res = await api("POST", apiPath("/labels"), payload);
      setStatus(res && res.duplicate ? "Already saved. Loading the next item." : "Saved. Loading the next item.");
    } catch (e) {
      setBusy(false);
      setStatus("");
      if (e.status !== 401) showError(e.message);
      return;
    }
    state.item = null; // so the next item is rendered fresh even if the server repeats an id
    await loadNext();
  }

  function choose(action) {
    if (state.busy || !state.item) return;
    const allowed = isRateMode() ? RATE_CHOICES : isRankMode() ? NO_RANK_CHOICES : { ...PAIR_RANKS, ...NO_RANK_CHOICES };
    if (!Object.prototype.hasOwnProperty.call(allowed, action)) return;
    state.choice = action;
    clearError();
    updateSelection();
  }

  function setRank(index, rank) {
    if (state.busy || !isRankMode() || index < 0 || index >= state.ranks.length) return;
    state.ranks[index] = rank;
    state.choice = null; // ranking again means the all-bad / can't-tell override is off
    clearError();
    updateSelection();
  }

  function setActive(index) {
    if (!isRankMode() || index < 0 || index >= state.ranks.length) return;
    state.active = index;
    updateSelection();
    const card = dom.responses.children[index];
    if (card) card.scrollIntoView({ block: "nearest" });
  }

  /* After a digit ranks the active card: go to the next card, else the first unranked one. */
  function advanceActive() {
    const k = state.ranks.length;
    if (state.active + 1 < k) {
      setActive(state.active + 1);
    } else {
      const firstOpen = state.ranks.findIndex((r) => r == null);
      if (firstOpen !== -1) setActive(firstOpen);
    }
  }

  async function logout() {
    try {
      await api("POST", "/logout");
    } catch (e) {
      if (e.status === 401) return;
      // fall through: go to the login page anyway, the session is useless to us now
    }
    window.location.assign("/");
  }

  // ---------------------------------------------------------------- my answers

  async function toggleAnswers() {
    state.view = state.view === "answers" ? "label" : "answers";
    showView();
    if (state.view === "answers") await loadAnswers();
  }

  function describeChoice(label) {
    const k = Array.isArray(label.responses) ? label.responses.length : 2;
    if (label.choice === "both_bad") return { badge: k > 2 ? "All bad" : "Both bad", detail: "" };
    if (label.choice === "cant_tell") return { badge: "Can't tell", detail: "" };
    if (label.choice === "good") return { badge: "Good", detail: "" };
    if (label.choice === "bad") return { badge: "Bad", detail: "" };
    const ranks = Array.isArray(label.ranks) ? label.ranks : [];
    if (!ranks.length) return { badge: label.choice || "?", detail: "" };
    const best = Math.min(...ranks);
    const winners = ranks.map((r, i) => (r === best ? i : -1)).filter((i) => i !== -1);
    if (winners.length === ranks.length) return { badge: k > 2 ? "All equal" : "Equally good", detail: "" };
    const snippet = (i) => "“" + firstLine(label.responses ? label.responses[i] : "", 120) + "”";
    if (winners.length === 1) return { badge: k > 2 ? "Ranked" : "Preferred", detail: "Best: " + snippet(winners[0]) };
    return { badge: "Ranked", detail: "Tied best: " + winners.map(snippet).join(" · ") };
  }

  function renderAnswer(label) {
    const { badge, detail } = describeChoice(label);
    const created = label.created ? new Date(label.created) : null;
    const when = created && !isNaN(created) ? created.toLocaleString() : label.created || "";
    const li = h("li", { className: "answer", "data-label": label.label != null ? String(label.label) : null }, [
      h("div", { className: "answer-head" }, [
        h("span", { className: "answer-badge choice-" + String(label.choice).replace(/[^a-z_]/g, ""), text: badge }),
        h("span", { className: "answer-prompt", text: promptSummary(label.prompt) }),
        h("time", { className: "answer-time muted", datetime: label.created || null, text: when }),
      ]),
    ]);
    if (detail) li.append(h("p", { className: "answer-detail", text: detail }));
    if (label.rationale) li.append(h("p", { className: "answer-rationale", text: label.rationale }));

    // Full item on demand; rendered only when opened, to keep long lists cheap.
    const details = h("details", { className: "answer-full" }, [h("summary", { text: "Show prompt and responses" })]);
    details.addEventListener(
      "toggle",
      () => {
        if (!details.open || details.dataset.rendered) return;
        details.dataset.rendered = "1";
        const prompt = h("div", { className: "prompt answer-prompt-full" });
        renderPrompt(label.prompt, prompt);
        const grid = h("div", { className: "answer-responses" });
        (label.responses || []).forEach((resp, i) => {
          const rank = Array.isArray(label.ranks) ? label.ranks[i] : null;
          // the server returns them in the order this annotator saw them: A, B, ...
          const title = label.responses.length === 1 ? "Response" : LETTERS[i] + (rank != null ? " · rank " + (rank + 1) : "");
          const body = renderMarkdown(resp);
          body.classList.add("card-body");
          grid.append(h("div", { className: "answer-response" }, [h("div", { className: "answer-response-title", text: title }), body]));
        });
        details.append(prompt, grid);
      }
    );
    li.append(details);
    return li;
  }

  async function loadAnswers() {
    dom.answersStatus.textContent = "Loading…";
    dom.answersList.replaceChildren();
    try {
      const data = await api("GET", apiPath("/labels"));
      const labels = (data && Array.isArray(data.labels) ? data.labels : []).slice();
      // Newest first, whatever order the server used (ISO timestamps sort as strings).
      labels.sort((a, b) => String(b.created || "").localeCompare(String(a.created || "")));
      dom.answersStatus.textContent = labels.length
        ? labels.length + (labels.length === 1 ? " answer" : " answers") + " in " + state.project + "."
        : "You have not labelled anything in " + state.project + " yet.";
      dom.answersList.replaceChildren(...labels.map(renderAnswer));
    } catch (e) {
      dom.answersStatus.textContent = "";
      if (e.status !== 401) showError(e.message, loadAnswers);
    }
  }

  // ---------------------------------------------------------------- keyboard

  /*
   * Global shortcuts. They are off while typing in the rationale (or any field), where only
   * Escape (leave the field) and Ctrl/Cmd+Enter (submit) are handled. Browser shortcuts with
   * Ctrl/Alt/Meta are left alone.
   */
  function onKeyDown(e) {
    if (e.defaultPrevented || e.isComposing) return;
    const target = e.target instanceof Element ? e.target : null;
    const typing = !!target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));

    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      if (state.view === "label") {
        e.preventDefault();
        submit();
      }
      return;
    }
    if (typing) {
      if (e.key === "Escape" && target.tagName === "TEXTAREA") {
        e.preventDefault();
        target.blur();
      }
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) return;

    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (key === "m") {
      e.preventDefault();
      toggleAnswers();
      return;
    }
    if (key === "?" && !dom.toggleGuidelines.hidden) {
      e.preventDefault();
      toggleGuidelines();
      return;
    }
    if (key === "u" && state.view === "label") {
      e.preventDefault();
      undo();
      return;
    }
    if (state.view !== "label" || !state.item) return;

    if (key === "Enter") {
      // Enter on a focused button normally activates it. We let that happen unless the
      // button is a choice that is already selected (e.g. just clicked with the mouse):
      // then Enter means "submit", as it does everywhere else on the page.
      const control = target && target.closest("button, a, summary, details");
      if (control) {
        const isChoice = control.matches("[data-rank], #choices [data-action]");
        if (!isChoice || control.getAttribute("aria-pressed") !== "true") return;
      }
      e.preventDefault();
      if (!e.repeat) submit();
      return;
    }
    if (key === "r") {
      e.preventDefault(); // focus the field without typing an "r" into it
      dom.rationale.focus();
      return;
    }
    if (key === "t") {
      e.preventDefault();
      choose("cant-tell");
      return;
    }

    if (isRateMode()) {
      const rateKeys = { g: "good", b: "bad" };
      if (rateKeys[key]) {
        e.preventDefault();
        choose(rateKeys[key]);
      }
      return;
    }
    if (key === "x") {
      e.preventDefault();
      choose("both-bad");
      return;
    }

    if (!isRankMode()) {
      const pairKeys = { 1: "a-better", 2: "b-better", 3: "tie", "=": "tie" };
      if (pairKeys[key]) {
        e.preventDefault();
        choose(pairKeys[key]);
      }
      return;
    }

    // Rank mode.
    const k = state.ranks.length;
    const cardIndex = CARD_KEYS.indexOf(key);
    if (key.length === 1 && cardIndex !== -1) {
      if (cardIndex < k) {
        e.preventDefault();
        setActive(cardIndex);
      }
      return;
    }
    if (/^[1-9]$/.test(key) && Number(key) <= k && !state.busy) {
      e.preventDefault();
      const slot = LETTERS[state.active];
      setRank(state.active, Number(key));
      setStatus("Response " + slot + ": rank " + key + ".");
      advanceActive();
    }
  }

  // ---------------------------------------------------------------- wiring

  function onClick(e) {
    const target = e.target instanceof Element ? e.target : null;
    if (!target) return;
    const rankBtn = target.closest("[data-rank]");
    if (rankBtn) {
      const card = rankBtn.closest(".response-card");
      const index = Number(card.dataset.index);
      setRank(index, Number(rankBtn.dataset.rank));
      state.active = index;
      updateSelection();
      return;
    }
    const actionBtn = target.closest("[data-action]");
    if (actionBtn) {
      const action = actionBtn.dataset.action;
      if (action === "submit") submit();
      else if (action === "undo") undo();
      else if (action === "toggle-guidelines") toggleGuidelines();
      else if (action === "toggle-answers") toggleAnswers();
      else if (action === "logout") logout();
      else if (action !== "retry") choose(action);
      return;
    }
    // Clicking a card (not a link in it) makes it the one digit keys rank.
    const card = target.closest(".response-card");
    if (card && !target.closest("a") && isRankMode()) setActive(Number(card.dataset.index));
  }

  function toggleGuidelines(open) {
    const show = open === undefined ? dom.guidelines.hidden : open;
    dom.guidelines.hidden = !show;
    dom.toggleGuidelines.setAttribute("aria-pressed", String(show));
  }

  /* The project's guidelines (Markdown), opened at first for someone who has not started. */
  function renderGuidelines(p) {
    const text = p && typeof p.guidelines === "string" ? p.guidelines.trim() : "";
    dom.guidelinesBody.replaceChildren(...(text ? [renderMarkdown(text)] : []));
    dom.toggleGuidelines.hidden = !text;
    toggleGuidelines(!!text && p.done === 0);
  }

  function pickProject(projects) {
    const wanted = new URLSearchParams(window.location.search).get("project");
    if (wanted && projects.some((p) => p.name === wanted)) return wanted;
    const open = projects.find((p) => p.done < p.assigned_total);
    return (open || projects[0]).name;
  }

  function selectProject(name) {
    state.project = name;
    state.item = null;
    const p = state.me.projects.find((x) => x.name === name);
    state.done = p ? p.done : 0;
    state.total = p ? p.assigned_total : 0;
    state.heldByOthers = p ? p.held_by_others || 0 : 0;
    renderGuidelines(p);
    dom.projectName.textContent = name;
    dom.projectSelect.value = name;
    // Keep the project in the URL so a reload stays on it.
    const url = new URL(window.location.href);
    url.searchParams.set("project", name);
    window.history.replaceState(null, "", url.pathname + url.search);
    renderProgress();
    dom.item.hidden = true;
    dom.done.hidden = true;
    dom.loading.hidden = false;
    clearError();
    showView();
    loadNext();
    if (state.view === "answers") loadAnswers();
  }

  async function initLabel() {
    dom = {
      error: document.getElementById("error"),
      status: document.getElementById("status"),
      labelView: document.getElementById("label-view"),
      loading: document.getElementById("loading"),
      item: document.getElementById("item"),
      prompt: document.getElementById("prompt"),
      responses: document.getElementById("responses"),
      done: document.getElementById("done"),
      doneDetail: document.getElementById("done-detail"),
      doneTitle: document.getElementById("done-title"),
      myAnswers: document.getElementById("my-answers"),
      answersList: document.getElementById("answers-list"),
      answersStatus: document.getElementById("answers-status"),
      actionBar: document.getElementById("action-bar"),
      choices: document.getElementById("choices"),
      rationale: document.getElementById("rationale"),
      submit: document.querySelector('#action-bar [data-action="submit"]'),
      help: document.getElementById("shortcut-help"),
      progress: document.getElementById("progress"),
      progressText: document.getElementById("progress-text"),
      progressBar: document.getElementById("progress-bar"),
      projectSelect: document.getElementById("project-select"),
      projectName: document.getElementById("project-name"),
      annotator: document.getElementById("annotator"),
      toggleAnswers: document.getElementById("toggle-answers"),
      toggleGuidelines: document.getElementById("toggle-guidelines"),
      guidelines: document.getElementById("guidelines"),
      guidelinesBody: document.getElementById("guidelines-body"),
      adminLink: document.getElementById("admin-link"),
    };
    document.addEventListener("keydown", onKeyDown);
    document.addEventListener("click", onClick);
    dom.projectSelect.addEventListener("change", () => selectProject(dom.projectSelect.value));

    try {
      state.me = await api("GET", "/api/me");
    } catch (e) {
      if (e.status !== 401) {
        dom.loading.hidden = true;
        showError(e.message, initLabel);
      }
      return;
    }
    const me = state.me;
    me.projects = Array.isArray(me.projects) ? me.projects : [];
    dom.annotator.textContent = me.annotator + (me.admin ? " (admin)" : "");
    dom.adminLink.hidden = !me.admin;
    if (!me.projects.length) {
      dom.loading.textContent = "You have no projects to label yet. Ask an administrator to assign you one.";
      return;
    }
    if (me.projects.length > 1) {
      dom.projectSelect.replaceChildren(...me.projects.map((p) => h("option", { value: p.name, text: p.name })));
      dom.projectSelect.hidden = false;
      dom.projectName.hidden = true;
    }
    selectProject(pickProject(me.projects));
  }

  // ------------------------------------------------------------------ admin page

  function percent(x) {
    return x == null ? "no gold yet" : Math.round(x * 100) + "% on gold";
  }

  function adminButton(action, name, label) {
    return h("button", { type: "button", className: "btn btn-small", "data-admin": action, "data-name": name, text: label });
  }

  async function loadAdmin() {
    const [projects, people] = await Promise.all([api("GET", "/api/admin/projects"), api("GET", "/api/admin/annotators")]);
    const projectRows = projects.projects.map((p) =>
      h("tr", {}, [
        h("th", { scope: "row", text: p.name }),
        h("td", { text: p.done + " of " + p.total }),
        h("td", { text: String(p.in_progress) }),
        h("td", { text: String(p.overlap) }),
        h("td", { text: String(p.gold_rate) }),
      ])
    );
    document.querySelector("#projects-table tbody").replaceChildren(...projectRows);
    const rows = people.annotators.map((a) => {
      const progress = h("ul", { className: "admin-progress" }, a.projects.map((p) => h("li", { text: p.project + ": " + p.done + " of " + p.assigned_total + " labelled, " + percent(p.gold_accuracy) })));
      const self = state.me && a.name === state.me.annotator;
      const actions = self
        ? [h("span", { className: "muted small", text: "you" })]
        : [a.revoked ? null : adminButton("revoke", a.name, "Revoke"), adminButton("token", a.name, a.revoked ? "Reissue token" : "New token")];
      return h("tr", { "data-annotator": a.name, className: a.revoked ? "is-revoked" : null }, [
        h("th", { scope: "row", text: a.name + (a.admin ? " (admin)" : "") }),
        h("td", { text: a.revoked ? "revoked" : "active" }),
        h("td", {}, [progress]),
        h("td", { className: "admin-actions" }, actions),
      ]);
    });
    document.querySelector("#annotators-table tbody").replaceChildren(...rows);
  }

  function showToken(name, token, what) {
    const box = document.getElementById("new-token");
    box.replaceChildren(h("span", { text: what + " " + name + " (shown only now): " }), h("code", { className: "token", text: token }));
    box.hidden = false;
  }

  async function addAnnotator(e) {
    e.preventDefault();
    clearError();
    const name = document.getElementById("new-name");
    const isAdmin = document.getElementById("new-admin");
    try {
      const data = await api("POST", "/api/admin/annotators", { name: name.value.trim(), admin: isAdmin.checked });
      showToken(data.annotator, data.token, "Token for the new " + (isAdmin.checked ? "admin" : "annotator"));
      name.value = "";
      isAdmin.checked = false;
      await loadAdmin();
    } catch (err) {
      if (err.status !== 401) showError(err.message);
    }
  }

  async function adminAction(action, name) {
    clearError();
    const box = document.getElementById("new-token");
    try {
      if (action === "revoke") {
        if (!window.confirm("Revoke " + name + "'s token? They are logged out at once.")) return;
        await api("POST", "/api/admin/annotators/" + encodeURIComponent(name) + "/revoke");
        box.hidden = true;
        setStatus(name + " revoked.");
      } else {
        const data = await api("POST", "/api/admin/annotators/" + encodeURIComponent(name) + "/token");
        showToken(name, data.token, "New token (the old one no longer works) for");
      }
      await loadAdmin();
    } catch (e) {
      if (e.status !== 401) showError(e.message);
    }
  }

  async function initAdmin() {
    dom = { error: document.getElementById("error"), status: document.getElementById("status") };
    document.addEventListener("click", (e) => {
      const target = e.target instanceof Element ? e.target : null;
      const btn = target && target.closest("[data-admin]");
      if (btn) adminAction(btn.dataset.admin, btn.dataset.name);
      else if (target && target.closest("[data-action='logout']")) logout();
    });
    document.getElementById("add-annotator").addEventListener("submit", addAnnotator);
    try {
      state.me = await api("GET", "/api/me");
      document.getElementById("annotator").textContent = state.me.annotator + " (admin)";
      await loadAdmin();
    } catch (e) {
      if (e.status !== 401) showError(e.message, initAdmin);
    }
  }

  function init() {
    const page = document.body.dataset.page;
    if (page === "login") initLogin();
    else if (page === "label") initLabel();
    else if (page === "admin") initAdmin();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
