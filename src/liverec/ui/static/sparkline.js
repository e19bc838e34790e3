/* Sparklines drawn as inline SVG: no library, works offline. */
"use strict";

const Sparkline = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const WIDTH = 200;
  const HEIGHT = 46;
  const PAD = 3;

  function node(tag, attrs) {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
    return n;
  }

  /** Runs of consecutive non-null points: a missing value breaks the line. */
  function segments(values, x, y) {
    const runs = [];
    let run = [];
    values.forEach((v, i) => {
      if (v === null || v === undefined || !Number.isFinite(v)) {
        if (run.length) runs.push(run);
        run = [];
      } else {
        run.push([x(i), y(v)]);
      }
    });
    if (run.length) runs.push(run);
    return runs;
  }

  /**
   * Draw `lines` ([{values: [number|null], cls?: string}], all of one length) into `svg`.
   * The vertical scale starts at zero (rates and latencies) and is shared by every line; the
   * first line is filled below. `format` renders values for the tooltip.
   */
  function draw(svg, lines, format = (v) => String(v)) {
    svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
    svg.setAttribute("preserveAspectRatio", "none");
    const all = lines.flatMap((l) => l.values).filter((v) => v !== null && v !== undefined && Number.isFinite(v));
    const count = Math.max(0, ...lines.map((l) => l.values.length));
    svg.replaceChildren();
    if (all.length === 0 || count < 2) {
      const text = node("text", { x: WIDTH / 2, y: HEIGHT / 2 + 3, "text-anchor": "middle", class: "empty" });
      text.textContent = count < 2 ? "collecting…" : "no data yet";
      svg.append(text);
      svg.dataset.points = "0";
      return;
    }
    const top = Math.max(...all) || 1;
    const x = (i) => PAD + (i / (count - 1)) * (WIDTH - 2 * PAD);
    const y = (v) => HEIGHT - PAD - (v / top) * (HEIGHT - 2 * PAD);
    lines.forEach((line, k) => {
      for (const run of segments(line.values, x, y)) {
        const path = run.map(([px, py], i) => `${i ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)}`).join(" ");
        if (k === 0 && run.length > 1) {
          const base = (HEIGHT - PAD).toFixed(1);
          svg.append(node("path", { d: `${path} L${run[run.length - 1][0].toFixed(1)},${base} L${run[0][0].toFixed(1)},${base} Z`, class: "area" }));
        }
        svg.append(node("path", { d: run.length > 1 ? path : `${path} l0.5,0`, class: `line ${line.cls || ""}`.trim() }));
      }
    });
    const title = node("title", {});
    const first = lines[0].values.filter((v) => v !== null && v !== undefined);
    title.textContent = first.length
      ? `last ${format(first[first.length - 1])} · max ${format(Math.max(...first))} · min ${format(Math.min(...first))}`
      : "no data yet";
    svg.append(title);
    svg.dataset.points = String(all.length);
  }

  return { draw };
})();
