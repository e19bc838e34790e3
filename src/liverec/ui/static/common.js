/* Helpers shared by the demo page and the dashboard: API calls with the tenant header, a
   connection monitor that retries while the server is away, and small DOM helpers. */
"use strict";

const Liverec = (() => {
  /** The server answered with an error status (the body's `detail` is the message). */
  class ApiError extends Error {
    constructor(status, detail) {
      super(typeof detail === "string" ? detail : `HTTP ${status}`);
      this.status = status;
    }
  }

  /** The server could not be reached (down, restarting, or a gateway error). */
  class Unreachable extends Error {}

  // The API key the pages send once the service requires keys: asked for on the first 401 and
  // kept in this browser's local storage (the pages themselves need none).
  const KEY_STORAGE = "liverec.apiKey";
  let asked = false;

  function storedKey() {
    try {
      return window.localStorage.getItem(KEY_STORAGE);
    } catch (err) {
      return null;
    }
  }

  /** Ask for a key once per page load; true when one was given (and stored). */
  function askForKey(message) {
    if (asked) return false;
    asked = true;
    const key = window.prompt(`${message}\n\nThis liverec requires an API key (liverec keys create; the dashboard and the ` +
                              "user list need the admin scope). It stays in this browser's local storage.");
    if (!key || !key.trim()) return false;
    try {
      window.localStorage.setItem(KEY_STORAGE, key.trim());
    } catch (err) {
      return false;
    }
    return true;
  }

  /**
   * Call the API. `app` selects the tenant (X-Liverec-App); `body` is sent as JSON.
   * Resolves to the parsed JSON; rejects with ApiError or Unreachable.
   */
  async function api(method, path, { app, body } = {}, retried = false) {
    const headers = { Accept: "application/json" };
    if (app) headers["X-Liverec-App"] = app;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const key = storedKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (err) {
      throw new Unreachable(String(err));
    }
    if (response.status === 502 || response.status === 503 || response.status === 504) {
      throw new Unreachable(`HTTP ${response.status}`);
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (response.status === 401 && !retried && askForKey((data && data.detail) || "HTTP 401")) {
      return api(method, path, { app, body }, true);
    }
    if (!response.ok) throw new ApiError(response.status, data && data.detail);
    return data;
  }

  /**
   * Tracks whether the server answers. `lost(retry)` shows the banner and calls `retry` every
   * `interval` ms until it resolves; `ok()` marks the connection healthy again.
   */
  function connectionMonitor(pill, banner, interval = 1500) {
    let timer = null;
    let attempts = 0;
    let retryFn = null;

    function show(state) {
      pill.dataset.state = state;
      pill.textContent = state === "online" ? "connected" : state === "reconnecting" ? "reconnecting…" : "connecting…";
      banner.hidden = state !== "reconnecting";
      if (state === "reconnecting") {
        banner.textContent = `The server is not answering: reconnecting… (attempt ${attempts})`;
      }
    }

    async function attempt() {
      timer = null;
      attempts += 1;
      show("reconnecting");
      try {
        await retryFn();
        ok();
      } catch (err) {
        // Any answer, even an error status, means the server is back; the retried call
        // reports its own errors.
        if (!(err instanceof Unreachable)) ok();
        else timer = setTimeout(attempt, interval);
      }
    }

    function ok() {
      attempts = 0;
      if (timer !== null) {
        clearTimeout(timer);
        timer = null;
      }
      show("online");
    }

    function lost(retry) {
      retryFn = retry;
      if (timer === null) {
        attempts = Math.max(attempts, 1);
        show("reconnecting");
        timer = setTimeout(attempt, interval);
      }
    }

    show("connecting");
    return { ok, lost, get reconnecting() { return timer !== null; } };
  }

  /** Create an element: el("button", {class: "x", onclick: f}, "text", child...). */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** A client-side event id, so that an undo can name the event it reverts. */
  function newEventId() {
    if (window.crypto && typeof window.crypto.randomUUID === "function") return `ui-${window.crypto.randomUUID()}`;
    return `ui-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
  }

  /** "3 min ago" for an epoch-seconds timestamp. */
  function timeAgo(seconds) {
    const delta = Math.max(0, Date.now() / 1000 - seconds);
    if (delta < 45) return "just now";
    if (delta < 3600) return `${Math.round(delta / 60)} min ago`;
    if (delta < 86400) return `${Math.round(delta / 3600)} h ago`;
    return `${Math.round(delta / 86400)} d ago`;
  }

  function clockTime(date = new Date()) {
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  return { api, ApiError, Unreachable, connectionMonitor, el, newEventId, timeAgo, clockTime };
})();
