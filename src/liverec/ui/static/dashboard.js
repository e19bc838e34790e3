/* The operations dashboard: polls GET /v1/stats every interval and redraws figures and plots.
   While the server is away it keeps polling and shows "reconnecting"; the last figures stay. */
"use strict";

(() => {
  const { api, Unreachable, el, clockTime } = Liverec;
  const $ = (id) => document.getElementById(id);
  const connection = Liverec.connectionMonitor($("connection"), $("banner"));

  let app = new URLSearchParams(location.search).get("app") || "default";
  let interval = 2000;
  let timer = null;

  // ---- formatting ------------------------------------------------------------------------------
  const num = (v, digits = 1) => (v === null || v === undefined ? "—" : Number(v).toFixed(digits));
  const pct = (v) => (v === null || v === undefined ? "—" : `${(100 * v).toFixed(1)}%`);
  const ms = (v) => (v === null || v === undefined ? "—" : v < 10 ? `${v.toFixed(2)} ms` : `${v.toFixed(1)} ms`);
  const count = (v) => (v === null || v === undefined ? "—" : Number(v).toLocaleString("en-US"));

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    if (seconds < 120) return `${Number(seconds).toFixed(1)} s`;
    if (seconds < 7200) return `${(seconds / 60).toFixed(1)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  function setValue(id, text, unit) {
    const node = $(id);
    node.replaceChildren(text);
    if (unit && text !== "—") node.append(el("span", { class: "unit" }, unit));
  }

  function definitions(target, pairs) {
    target.replaceChildren(...pairs.flatMap(([k, v, id]) => [el("dt", {}, k), el("dd", id ? { id } : {}, v)]));
  }

  function shortValue(v) {
    if (typeof v === "number") return Number.isInteger(v) ? count(v) : v.toFixed(4);
    if (v === null || v === undefined) return "—";
    if (typeof v === "object") return JSON.stringify(v).slice(0, 80);
    return String(v);
  }

  // ---- rendering ------------------------------------------------------------------------------
  function render(stats) {
    const series = stats.series || [];
    const pick = (key) => series.map((s) => s[key]);
    interval = Math.max(500, (stats.interval_s || 2) * 1000);
    $("interval").textContent = String(stats.interval_s);
    $("span").textContent = series.length > 1 ? ((series[series.length - 1].t - series[0].t) / 60).toFixed(1) : "0";
    $("updated").textContent = clockTime();

    const t = stats.throughput;
    setValue("events-rate", num(t.events_per_s), "/s");
    $("events-total").textContent = `${count(stats.totals.events_accepted)} accepted since start · ${count(stats.totals.events_rejected)} rejected`;
    setValue("recs-rate", num(t.recommendations_per_s), "/s");
    $("recs-total").textContent = `${count(stats.totals.recommendations)} served since start`;
    const lat = stats.latency_ms.recommendations;
    setValue("latency", lat.p50 === null ? "—" : `${num(lat.p50, lat.p50 < 10 ? 2 : 1)} / ${num(lat.p99, lat.p99 < 10 ? 2 : 1)}`, "ms");
    $("latency-note").textContent = lat.count ? `of ${lat.count} recommendation requests, last ${stats.latency_ms.window_s} s` : "no recommendation requests yet";

    const f = stats.feedback;
    const types = f.by_type || {};
    setValue("ctr", pct(f.ctr));
    $("ctr-note").textContent = `${count(types.click || 0)} clicks / ${count(f.impressions)} impressions, last ${f.window_s} s`;
    setValue("like-rate", pct(f.like_rate));
    $("like-note").textContent = `${count((types.like || 0) + (types.favorite || 0))} likes / ${count(f.impressions)} impressions, last ${f.window_s} s`;
    setValue("negative", pct(f.negative_share));
    $("negative-note").textContent = `skips, dislikes and blocks among feedback, last ${f.window_s} s`;

    Sparkline.draw($("spark-events"), [{ values: pick("events_per_s") }], (v) => `${num(v)}/s`);
    Sparkline.draw($("spark-recs"), [{ values: pick("recommendations_per_s") }], (v) => `${num(v)}/s`);
    Sparkline.draw($("spark-latency"), [{ values: pick("p50_ms") }, { values: pick("p99_ms"), cls: "second" }], ms);
    Sparkline.draw($("spark-ctr"), [{ values: pick("ctr") }], pct);
    Sparkline.draw($("spark-like"), [{ values: pick("like_rate") }], pct);
    Sparkline.draw($("spark-negative"), [{ values: pick("negative_share") }], pct);

    renderModel(stats.model);
    renderLearner(stats.learner, stats.learners);
    renderStreams(stats.streams || [], stats.time);
    const c = stats.catalog;
    definitions($("totals"), [
      ["Items", count(c.items), "catalog-items"],
      ["Users", count(c.users), "catalog-users"],
      ["Events in the log", count(stats.events_total), "log-events"],
      ["Events accepted", count(stats.totals.events_accepted), "total-events"],
      ["Duplicates ignored", count(stats.totals.events_duplicate)],
      ["Recommendations", count(stats.totals.recommendations), "total-recs"],
      ["Impressions", count(stats.totals.impressions), "total-impressions"],
      ["Uptime", duration(stats.uptime_s)],
    ]);
    const byType = Object.entries(stats.totals.by_type || {}).sort((a, b) => b[1] - a[1]);
    $("by-type").replaceChildren(...(byType.length
      ? byType.map(([type, n]) => el("li", {}, el("span", { class: "muted" }, type), " ", count(n)))
      : [el("li", { class: "muted" }, "no events since start")]));

    renderItems($("popular"), c.popular, (i) => el("span", { class: "bar", style: `width:${Math.max(4, Math.round(60 * i.popularity))}px`, title: `relative popularity ${i.popularity}` }),
      "No positive interactions yet.");
    renderItems($("newest"), c.newest, (i) => el("span", { class: "muted" }, i.updated_at ? new Date(i.updated_at * 1000).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" }) : ""),
      "The catalog is empty.");
  }

  // Lag per partition as each stream consumer (`liverec consume kafka`, any machine) last reported
  // it to the store; a report older than 30 s means that consumer is gone or stuck.
  function renderStreams(streams, now) {
    const rows = streams.map((s) => {
      const age = Math.max(0, now - s.updated_at);
      return el("tr", { class: age > 30 ? "stale" : "" },
        el("td", {}, s.group), el("td", {}, s.topic), el("td", {}, String(s.partition)),
        el("td", { "data-testid": `lag-${s.topic}-${s.partition}` }, count(s.lag)),
        el("td", { class: "muted" }, `${duration(age)} ago`));
    });
    $("streams").tBodies[0].replaceChildren(...rows);
    const behind = streams.reduce((n, s) => n + s.lag, 0);
    $("streams-note").textContent = streams.length
      ? `${count(behind)} messages not yet in the log`
      : "no stream consumer has reported (events arrive over HTTP only)";
  }

  // Each experiment of the app: a header row (name, kind, status, verdict), then one row per
  // variant with its rates and their intervals (user-clustered, at the experiment's confidence).
  function rateCell(r) {
    if (!r || r.value === null) return "—";
    return r.low === null ? pct(r.value) : `${pct(r.value)} [${pct(r.low)}–${pct(r.high)}]`;
  }

  function renderExperiments(experiments) {
    const rows = [];
    for (const e of experiments) {
      const duel = e.interleaving
        ? ` · wins ${Object.entries(e.interleaving.wins).map(([k, v]) => `${k} ${v}`).join(", ")}, ties ${e.interleaving.ties}`
        : "";
      rows.push(el("tr", { class: "experiment", dataset: { experimentId: e.experiment_id } },
        el("td", { colspan: "2" }, `${e.name} `, el("span", { class: "muted" }, `${e.kind} · ${e.status}`)),
        el("td", { colspan: "4", class: "verdict", "data-testid": `verdict-${e.experiment_id}` }, `${e.verdict}${duel}`)));
      for (const v of e.variants) {
        rows.push(el("tr", { dataset: { variant: v.name } },
          el("td", {}, `  ${v.name}`), el("td", {}, count(v.users)), el("td", {}, count(v.impressions)),
          el("td", {}, rateCell(v.ctr)), el("td", {}, rateCell(v.like_rate)), el("td", {}, rateCell(v.negative_share))));
      }
    }
    $("experiments").tBodies[0].replaceChildren(...rows);
    const running = experiments.filter((e) => e.status === "running").length;
    $("experiments-note").textContent = experiments.length
      ? `${running} running · intervals at each experiment's confidence, by user`
      : "no experiment in this app (POST /v1/experiments)";
  }

  function renderModel(model) {
    const pairs = [["Scorer", model.scorer, "model-scorer"]];
    if (model.version !== undefined) pairs.push(["Version", shortValue(model.version), "model-version"]);
    for (const key of ["trained_at", "created_at"]) {
      if (typeof model[key] === "number") pairs.push([key.replace("_", " "), new Date(model[key] * 1000).toLocaleString()]);
    }
    if (model.fallback) pairs.push(["Fallback", model.fallback]);
    const metrics = Object.entries(model.metrics || {});
    for (const [k, v] of metrics) pairs.push([k, shortValue(v)]);
    if (!metrics.length) pairs.push(["Metrics", "none reported by this scorer"]);
    definitions($("model"), pairs);
  }

  // The app's learner first (status, served version, staleness), then the rest of what it reports;
  // learners of other apps are named on one line so an operator sees they run.
  function renderLearner(learner, all) {
    const others = (all || []).filter((l) => !learner || l.app !== learner.app);
    const elsewhere = others.length
      ? [["Other apps", others.map((l) => `${l.app || l.name} (${l.version || "no version"})`).join(", "), "learner-others"]]
      : [];
    if (!learner) {
      const note = others.length ? "no online learner for this app" : "no online learner running";
      definitions($("learner"), [["Status", note, "learner-status"], ...elsewhere]);
      return;
    }
    const shown = ["name", "app", "status", "version", "staleness_s"];
    const pairs = [
      ["Learner", learner.app ? `${learner.name} · ${learner.app}` : learner.name],
      ["Status", shortValue(learner.status), "learner-status"],
      ["Serving", shortValue(learner.version), "learner-version"],
      ["Staleness", learner.staleness_s === null || learner.staleness_s === undefined ? "no update yet" : duration(learner.staleness_s), "learner-staleness"],
    ];
    for (const [k, v] of Object.entries(learner)) {
      if (!shown.includes(k)) pairs.push([k.replaceAll("_", " "), shortValue(v)]);
    }
    definitions($("learner"), [...pairs.slice(0, 12), ...elsewhere]);
  }

  function renderItems(target, items, extra, emptyText) {
    if (!items || !items.length) {
      target.replaceChildren(el("li", { class: "muted" }, emptyText));
      return;
    }
    target.replaceChildren(...items.map((i) => el("li", { dataset: { itemId: i.item_id } },
      el("span", { class: "name", title: `${i.item_id} · ${(i.categories || []).join(", ")}` }, i.title || i.item_id),
      extra(i))));
  }

  // ---- polling ----------------------------------------------------------------------------------
  async function poll() {
    try {
      const stats = await api("GET", "/v1/stats", { app });
      connection.ok();
      render(stats);
      const listed = await api("GET", "/v1/experiments", { app });
      renderExperiments(listed.experiments || []);
    } catch (err) {
      if (err instanceof Unreachable) {
        // Keep the last figures; the banner says they are stale until the server answers.
        $("connection").dataset.state = "reconnecting";
        connection.lost(() => api("GET", "/v1/health"));
      } else {
        $("updated").textContent = `failed (${err.message})`;
      }
    }
    timer = setTimeout(poll, interval);
  }

  async function loadApps() {
    try {
      const data = await api("GET", "/v1/apps");
      const names = data.apps.map((a) => a.app);
      // with an API key the service lists the key's app alone: show it unless the URL names one
      if (!new URLSearchParams(location.search).has("app") && names.length === 1) app = names[0];
      if (!names.includes(app)) names.push(app);
      $("app-select").replaceChildren(...names.map((n) => el("option", { value: n, selected: n === app }, n)));
    } catch (err) {
      $("app-select").replaceChildren(el("option", { value: app }, app));
    }
  }

  $("app-select").addEventListener("change", (e) => {
    app = e.target.value;
    history.replaceState(null, "", app === "default" ? "/dashboard" : `/dashboard?app=${encodeURIComponent(app)}`);
    if (timer !== null) clearTimeout(timer);
    poll();
  });

  loadApps().then(poll);
})();
