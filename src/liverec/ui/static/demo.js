/* The demo page: a user's recommendations that react to every click.

   Each action sends one real event to POST /v1/events, then reloads the list, so what is shown is
   exactly what the API answers now. Items that entered or moved since the previous list are
   highlighted; items that left it are named under the list. */
"use strict";

(() => {
  const { api, ApiError, Unreachable, el, newEventId, timeAgo, clockTime } = Liverec;

  const LIST_SIZE = 12;
  // Policy adjustments smaller than this (in normalised score units) are not worth a mention.
  const MINOR_ADJUSTMENT = 0.1;
  const POSITIVE = new Set(["view", "click", "add_to_cart", "purchase", "rating", "like", "favorite", "share", "review"]);
  const NEGATIVE = new Set(["skip", "dislike", "block"]);
  const VERBS = {
    view: "viewed", click: "clicked", like: "liked", favorite: "saved", share: "shared", purchase: "bought",
    add_to_cart: "added to cart", rating: "rated", review: "reviewed", skip: "skipped", dislike: "disliked",
    block: "blocked", search: "searched for", tag: "tagged",
  };

  const $ = (id) => document.getElementById(id);
  const connection = Liverec.connectionMonitor($("connection"), $("banner"));

  const state = {
    app: "default",
    user: null,
    known: false, // whether the user has events (GET /v1/users/{id} answers 404 otherwise)
    previous: null, // item ids of the list shown before, in order; null for a fresh user
    lastFeedback: null, // {eventId, label} of the last action that undo reverts
    catalogItems: null,
    titles: new Map(), // item id -> title, for labels of blocks and removed items
    listed: new Set(), // user ids of the last users listing (known to have events)
    busy: false,
  };

  // ---- messages --------------------------------------------------------------------------------
  function say(text, kind = "info") {
    const node = $("message");
    node.textContent = text;
    node.dataset.kind = kind;
  }

  function showUndo() {
    const button = $("undo");
    button.hidden = state.lastFeedback === null;
    if (state.lastFeedback !== null) button.setAttribute("aria-label", `Undo: ${state.lastFeedback.label}`);
  }

  function setBusy(busy) {
    state.busy = busy;
    $("recs").setAttribute("aria-busy", busy ? "true" : "false");
    for (const button of document.querySelectorAll(".rec .actions button, #undo")) button.disabled = busy;
  }

  function titleOf(itemId) {
    return state.titles.get(itemId) || itemId;
  }

  function updateUrl() {
    const params = new URLSearchParams();
    if (state.app !== "default") params.set("app", state.app);
    if (state.user) params.set("user", state.user);
    const query = params.toString();
    history.replaceState(null, "", query ? `/?${query}` : "/");
  }

  // ---- apps and users ---------------------------------------------------------------------------
  async function loadApps() {
    const data = await api("GET", "/v1/apps");
    const select = $("app-select");
    const apps = data.apps.slice();
    // with an API key the service lists the key's app alone: show it unless the URL names one
    if (!new URLSearchParams(location.search).has("app") && apps.length === 1) state.app = apps[0].app;
    if (!apps.some((a) => a.app === state.app)) apps.push({ app: state.app, items: 0, users: 0 });
    select.replaceChildren(
      ...apps.map((a) => el("option", { value: a.app, selected: a.app === state.app }, `${a.app} (${a.items} items, ${a.users} users)`)),
    );
    state.catalogItems = apps.find((a) => a.app === state.app).items;
  }

  async function loadUsers() {
    const data = await api("GET", "/v1/users?limit=200", { app: state.app });
    const select = $("user-select");
    const options = [el("option", { value: "" }, data.users.length ? `— ${data.total} users, most recent first —` : "— no users yet —")];
    for (const u of data.users) options.push(el("option", { value: u.user_id }, `${u.user_id} · ${u.n_events} events`));
    if (state.user && !data.users.some((u) => u.user_id === state.user)) {
      options.push(el("option", { value: state.user }, state.user));
    }
    select.replaceChildren(...options);
    select.value = state.user || "";
    state.listed = new Set(data.users.map((u) => u.user_id));
    return data.users;
  }

  /** Whether `userId` has events in the current app (asked without provoking a 404). */
  async function userExists(userId) {
    const data = await api("GET", `/v1/users?limit=1000&prefix=${encodeURIComponent(userId)}`, { app: state.app });
    return data.users.some((u) => u.user_id === userId);
  }

  async function selectUser(userId) {
    state.user = userId;
    state.previous = null;
    state.lastFeedback = null;
    showUndo();
    $("user-input").value = "";
    const select = $("user-select");
    if (![...select.options].some((o) => o.value === userId)) select.append(el("option", { value: userId }, userId));
    select.value = userId;
    updateUrl();
    try {
      state.known = state.listed.has(userId) || await userExists(userId);
    } catch (err) {
      if (err instanceof Unreachable) return connection.lost(() => selectUser(userId));
      throw err;
    }
    say(state.known ? `Showing ${userId}. Every button sends a real event.` : `${userId} is a new user: the list starts with what is popular.`);
    await refresh();
  }

  function anonymousId() {
    return `anon-${newEventId().slice(3, 11)}`;
  }

  // ---- the list ---------------------------------------------------------------------------------
  /** Reload recommendations and history; the retry of the connection monitor calls it too. */
  async function refresh() {
    if (!state.user) return;
    const user = state.user;
    const path = `/v1/users/${encodeURIComponent(user)}`;
    try {
      const [recs, profile] = await Promise.all([
        api("GET", `${path}/recommendations?n=${LIST_SIZE}`, { app: state.app }),
        state.known ? api("GET", path, { app: state.app }).catch((err) => {
          if (err instanceof ApiError && err.status === 404) return null;
          throw err;
        }) : Promise.resolve(null),
      ]);
      if (user !== state.user) return; // the user changed while loading
      connection.ok();
      if (recs.items.length === 0) await loadApps().catch(() => {});
      renderHistory(profile); // first: it fills the titles the explanations name
      renderRecs(recs);
    } catch (err) {
      if (err instanceof Unreachable) {
        connection.lost(refresh);
        throw err;
      }
      say(`Could not load the list: ${err.message}`, "error");
    }
  }

  /** One `because` entry as a short phrase, or null when it says nothing readable. */
  function reason(b) {
    if (typeof b === "string") return b;
    if (!b || typeof b !== "object") return null;
    const text = b.text || b.message || b.explanation;
    if (typeof text === "string") return text;
    const what = b.title || (b.item_id ? `“${titleOf(b.item_id)}”` : null);
    const verb = VERBS[b.type] || b.type;
    if (b.kind === "event" && what) return `you ${verb || "interacted with"} ${what}`;
    if (b.kind === "policy") {
      if (b.adjustment === "diversity") return b.reason === "negative streak" ? "something different after your skips" : "picked for variety";
      if (b.adjustment === "like_boost" && what) return `similar to ${what} you ${verb || "liked"}`;
      if (b.adjustment === "category_demote") return `lowered: repeated skips/dislikes in ${b.target}`;
      if (b.adjustment === "category_boost") return `raised: you liked or clicked ${b.target} lately`;
      if (b.scope && b.scope !== "item" && b.target) return `lowered: you ${verb || "disliked"} ${b.scope} ${b.target}`;
      if (what) return `lowered: near ${what} you ${verb || "disliked"}`;
      return b.adjustment ? String(b.adjustment).replaceAll("_", " ") : null;
    }
    if (b.kind === "exploration") {
      const label = b.category ? `exploring ${b.category}` : "exploring";
      return typeof b.propensity === "number" ? `${label} (chosen with p = ${b.propensity.toFixed(2)})` : label;
    }
    if (b.kind === "model") return b.reason === "popular" ? "popular now" : b.reason || "model score";
    if (typeof b.reason === "string") return b.reason;
    if (what) return `you ${verb || "interacted with"} ${what}`;
    return null;
  }

  /** The `because` list as one line: at most three phrases, no item named twice. */
  function explain(because) {
    if (!Array.isArray(because) || because.length === 0) return null;
    const named = new Set(because.filter((b) => b && b.kind === "event" && b.item_id).map((b) => b.item_id));
    const minor = (b) => b && b.kind === "policy" && typeof b.delta === "number" && Math.abs(b.delta) < MINOR_ADJUSTMENT;
    const entries = because.filter((b) => !minor(b)
      && !(b && b.kind === "policy" && b.adjustment === "like_boost" && named.has(b.item_id)));
    // Exploration and clear demotions explain a change best, so they come before supporting events.
    const first = entries.filter((b) => b && (b.kind === "exploration" || (b.kind === "policy" && b.delta < 0)));
    const rest = entries.filter((b) => !first.includes(b));
    const parts = [...new Set([...first, ...rest].map(reason).filter(Boolean))].slice(0, 3);
    return parts.length ? `Because ${parts.join(" · ")}` : null;
  }

  function renderRecs(recs) {
    const list = $("recs");
    const notice = $("recs-notice");
    const ids = recs.items.map((r) => r.item_id);
    const before = state.previous;
    const oldRank = new Map((before || []).map((id, i) => [id, i]));
    for (const r of recs.items) if (r.title) state.titles.set(r.item_id, r.title);

    $("recs-title").textContent = `Recommended for ${state.user}`;
    $("recs-sub").textContent = `app ${recs.app} · scorer ${recs.scorer} · updated ${clockTime()}`;

    notice.replaceChildren();
    if (ids.length === 0) {
      notice.append(state.catalogItems === 0
        ? el("p", { class: "notice warn", id: "empty-catalog" },
          `The catalog of app “${state.app}” is empty, so there is nothing to recommend yet. `,
          "Add items with ", el("code", {}, "POST /v1/items"), " or run ", el("code", {}, "liverec demo"), ".")
        : el("p", { class: "notice warn", id: "nothing-left" },
          "Nothing left to recommend: every candidate is blocked or already consumed. Unblock something on the right."));
    }

    list.replaceChildren(...recs.items.map((r, rank) => {
      const categories = r.categories || [];
      const title = r.title || r.item_id;
      let change = null;
      let cls = "rec";
      if (before !== null && !oldRank.has(r.item_id)) {
        cls += " is-new";
        change = el("span", { class: "badge new" }, "new");
      } else if (before !== null && oldRank.get(r.item_id) !== rank) {
        const moved = oldRank.get(r.item_id) - rank;
        cls += moved > 0 ? " is-up" : " is-down";
        change = el("span", { class: `badge ${moved > 0 ? "up" : "down"}`, title: `moved ${moved > 0 ? "up" : "down"} ${Math.abs(moved)}` },
          `${moved > 0 ? "▲" : "▼"} ${Math.abs(moved)}`);
      }
      const because = explain(r.because);
      const actions = el("div", { class: "actions" },
        actionButton("Like", `Like “${title}”`, "good", () => feedback("like", r), "like"),
        actionButton("Dislike", `Dislike “${title}”`, "bad", () => feedback("dislike", r), "dislike"),
        actionButton("Skip", `Skip “${title}”`, "", () => feedback("skip", r), "skip"),
        actionButton("Block item", `Block “${title}”`, "bad", () => feedback("block", r), "block"),
        categories.length
          ? actionButton(`Block ${categories[0]}`, `Block the category ${categories[0]}`, "bad", () => feedback("block", r, "category", categories[0]), "block-category")
          : null);
      return el("li", { class: cls, dataset: { itemId: r.item_id, categories: categories.join("|") } },
        el("div", { class: "rank", "aria-hidden": "true" }, String(rank + 1)),
        el("div", {},
          el("div", { class: "head" }, el("h3", {}, title), change,
            r.explored ? el("span", { class: "badge explore", title: "placed by exploration" }, "explore") : null),
          el("div", { class: "meta" },
            categories.map((c) => el("span", { class: "chip" }, c)),
            el("span", { class: "score" }, `score ${Number(r.score).toFixed(3)}`),
            el("span", { class: "muted" }, r.item_id)),
          because ? el("p", { class: "because" }, because) : null),
        actions);
    }));

    const left = before === null ? [] : before.filter((id) => !ids.includes(id));
    const leftNode = $("left-list");
    leftNode.hidden = left.length === 0;
    leftNode.textContent = left.length ? `Left the list: ${left.map((id) => `“${titleOf(id)}”`).join(", ")}` : "";
    state.previous = ids;
    setBusy(false);
  }

  function actionButton(text, label, cls, onclick, role) {
    return el("button", { type: "button", class: cls || null, "aria-label": label, dataset: { action: role }, onclick: () => run(onclick()) }, text);
  }

  function renderHistory(profile) {
    const list = $("history");
    const notice = $("history-notice");
    notice.replaceChildren();
    const history = profile ? profile.history : [];
    $("history-sub").textContent = profile ? `${profile.n_events} events` : "";
    if (!history.length) {
      notice.append(el("p", { class: "notice", id: "no-history" },
        `No history yet for ${state.user}: the list shows what is popular. Every click here starts the history.`));
    }
    for (const h of history) if (h.item_id && h.title) state.titles.set(h.item_id, h.title);
    list.replaceChildren(...history.slice(0, 25).map((h) => {
      const kind = POSITIVE.has(h.type) ? "positive" : NEGATIVE.has(h.type) ? "negative" : "";
      // Scoped feedback (a whole category or creator) has no item; its target is listed under Blocks.
      const what = h.type === "search" ? `“${h.text || ""}”` : h.title || h.item_id || h.text || "a category or attribute";
      return el("li", {},
        el("span", { class: `type ${kind}` }, h.type),
        el("span", { class: "what", title: what }, what),
        el("span", { class: "when" }, timeAgo(h.timestamp)));
    }));

    const blocks = $("blocks");
    const entries = profile ? Object.entries(profile.blocked || {}).flatMap(([scope, targets]) => targets.map((t) => [scope, t])) : [];
    if (!entries.length) {
      blocks.replaceChildren(el("li", { class: "muted" }, "Nothing blocked."));
      return;
    }
    blocks.replaceChildren(...entries.map(([scope, target]) => {
      const label = scope === "item" ? `“${titleOf(target)}”` : `${scope}: ${target}`;
      return el("li", {},
        el("span", {}, label),
        el("button", { type: "button", class: "link", "aria-label": `Unblock ${label}`, onclick: () => run(unblock(scope, target, label)) }, "Unblock"));
    }));
  }

  // ---- actions ---------------------------------------------------------------------------------
  /** Send one event, remember it for undo, and reload the list. */
  async function send(event, label, undoable = true) {
    if (!state.user) return;
    setBusy(true);
    const body = { event_id: newEventId(), user_id: state.user, ...event };
    try {
      await api("POST", "/v1/events", { app: state.app, body });
    } catch (err) {
      setBusy(false);
      if (err instanceof Unreachable) {
        say("Not sent: the server is not answering. Try again once it is back.", "error");
        connection.lost(refresh);
      } else {
        say(`Not accepted: ${err.message}`, "error");
      }
      return;
    }
    state.known = true;
    state.lastFeedback = undoable ? { eventId: body.event_id, label } : null;
    say(`${label}.`, "done");
    showUndo();
    await refresh().catch(() => {});
    setBusy(false);
  }

  function feedback(type, rec, scope = "item", target = null) {
    const title = rec.title || rec.item_id;
    if (scope === "item") {
      return send({ type, item_id: rec.item_id }, `${capitalised(VERBS[type] || type)} “${title}”`);
    }
    return send({ type, scope, target }, `${capitalised(VERBS[type] || type)} the ${scope} ${target}`);
  }

  function unblock(scope, target, label) {
    const event = scope === "item" ? { type: "unblock", item_id: target } : { type: "unblock", scope, target };
    return send(event, `Unblocked ${label}`);
  }

  async function undo() {
    const last = state.lastFeedback;
    if (last === null) return;
    state.lastFeedback = null;
    await send({ type: "undo", target: last.eventId }, `Undid: ${last.label}`, false);
  }

  function capitalised(text) {
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  // ---- wiring ------------------------------------------------------------------------------------
  /** Run an action from an event handler; failures are already shown, so none goes unhandled. */
  function run(promise) {
    promise.catch(() => {});
  }

  function wire() {
    $("user-select").addEventListener("change", (e) => {
      if (e.target.value) run(selectUser(e.target.value));
    });
    $("user-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const value = $("user-input").value.trim();
      if (value) run(selectUser(value));
    });
    $("new-user").addEventListener("click", () => run(selectUser(anonymousId())));
    $("app-select").addEventListener("change", (e) => {
      state.app = e.target.value;
      state.user = null;
      run(start());
    });
    $("search-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const text = $("search-input").value.trim();
      if (!text) return;
      $("search-input").value = "";
      run(send({ type: "search", text }, `Searched for “${text}”`));
    });
    $("undo").addEventListener("click", () => run(undo()));
  }

  /** Load apps and users, then show the chosen (or first) user; retried while unreachable. */
  async function start() {
    try {
      await loadApps();
      const users = await loadUsers();
      connection.ok();
      const user = state.user || (users.length ? users[0].user_id : anonymousId());
      await selectUser(user);
    } catch (err) {
      if (err instanceof Unreachable) {
        connection.lost(start);
        throw err;
      }
      say(`Could not start: ${err.message}`, "error");
    }
  }

  const params = new URLSearchParams(location.search);
  state.app = params.get("app") || "default";
  state.user = params.get("user") || null;
  wire();
  run(start());
})();
