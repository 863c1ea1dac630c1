"use strict";
// The monitor's charts: plain SVG built with createElementNS (no library, no inline style: colours are CSS classes
// in monitor.css, so the page's CSP holds). Every bar carries its numbers in a <title> (a tooltip, and read out by
// screen readers), every chart a title, axis labels and a one-line summary, so nothing depends on colour alone.
// Only bars with a count are drawn (rect.bar, data-n holding the count): an empty chart says "none".
const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const W = 560, H = 210, M = {left: 44, right: 12, top: 14, bottom: 46};

  function el(tag, attrs, text) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }
  function titled(e, text) { e.appendChild(el("title", {}, text)); return e; }
  function niceMax(n) {
    if (n <= 5) return Math.max(n, 1);
    const step = Math.pow(10, Math.floor(Math.log10(n)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= n) return m * step;
    return n;
  }

  // A (stacked) bar chart: categories along x, one stacked bar per category of the series' values.
  // spec: {title, xLabel, yLabel, categories, tick(i) -> label or "", series: [{name, cls, values}],
  //        marks: [{at (bar slots from the left), label}], describe(i, parts) -> the bar's <title>}
  function bars(spec) {
    const svg = el("svg", {viewBox: "0 0 " + W + " " + H, class: "chart", role: "img"});
    svg.appendChild(el("title", {}, spec.title));
    const n = spec.categories.length, plotW = W - M.left - M.right, plotH = H - M.top - M.bottom;
    const totals = spec.categories.map((_, i) => spec.series.reduce((s, x) => s + (x.values[i] || 0), 0));
    const top = niceMax(Math.max(0, ...totals)), slot = plotW / Math.max(n, 1), y = (v) => M.top + plotH - (v / top) * plotH;
    const axes = el("g", {class: "axis"});
    axes.appendChild(el("line", {x1: M.left, y1: M.top + plotH, x2: W - M.right, y2: M.top + plotH}));
    axes.appendChild(el("line", {x1: M.left, y1: M.top, x2: M.left, y2: M.top + plotH}));
    for (const v of [0, top / 2, top]) {
      if (v !== Math.round(v)) continue;
      axes.appendChild(el("text", {x: M.left - 4, y: y(v) + 4, class: "tick y-tick"}, v));
    }
    spec.categories.forEach((c, i) => {
      const label = spec.tick ? spec.tick(i) : c;
      if (label) axes.appendChild(el("text", {x: M.left + slot * (i + 0.5), y: M.top + plotH + 14, class: "tick x-tick"}, label));
    });
    axes.appendChild(el("text", {x: M.left + plotW / 2, y: H - 6, class: "axis-label"}, spec.xLabel));
    axes.appendChild(el("text", {x: 12, y: M.top + plotH / 2, class: "axis-label",
      transform: "rotate(-90 12 " + (M.top + plotH / 2) + ")"}, spec.yLabel));
    svg.appendChild(axes);
    const plot = el("g", {class: "bars"});
    spec.categories.forEach((c, i) => {
      let base = 0;
      const parts = spec.series.map((s) => [s.name, s.values[i] || 0]).filter(([, v]) => v > 0);
      for (const s of spec.series) {
        const v = s.values[i] || 0;
        if (v <= 0) continue;
        const r = el("rect", {x: M.left + slot * i + slot * 0.12, width: Math.max(slot * 0.76, 1), y: y(base + v),
          height: Math.max(y(base) - y(base + v), 0.5), class: "bar " + s.cls, "data-n": v, "data-category": c,
          "data-series": s.name});
        plot.appendChild(titled(r, spec.describe ? spec.describe(i, parts, s.name, v) : c + ": " + s.name + " " + v));
        base += v;
      }
    });
    svg.appendChild(plot);
    for (const m of spec.marks || []) {
      const x = M.left + slot * m.at;
      const g = el("g", {class: "mark", "data-label": m.label});
      g.appendChild(titled(el("line", {x1: x, y1: M.top - 4, x2: x, y2: M.top + plotH}), m.title || m.label));
      g.appendChild(el("text", {x: x - 3, y: M.top + 8, class: "mark-label"}, m.label));
      plot.appendChild(g);
    }
    return svg;
  }

  function legend(series) {
    const ul = document.createElement("ul");
    ul.className = "legend";
    for (const s of series) {
      const li = document.createElement("li");
      const swatch = document.createElementNS(NS, "svg");
      swatch.setAttribute("viewBox", "0 0 10 10");
      swatch.setAttribute("class", "swatch");
      swatch.appendChild(el("rect", {x: 0, y: 0, width: 10, height: 10, class: s.cls}));
      li.appendChild(swatch);
      li.appendChild(document.createTextNode(" " + s.name + " (" + s.values.reduce((a, b) => a + b, 0) + ")"));
      ul.appendChild(li);
    }
    return ul;
  }

  function put(id, title, nodes, summary) {
    const box = document.getElementById(id), h = document.createElement("h3");
    h.className = "chart-title";
    h.textContent = title;
    box.replaceChildren(h, ...nodes);
    const p = document.createElement("p");
    p.className = "muted chart-summary";
    p.textContent = summary;
    box.appendChild(p);
  }
  const short = (day) => day.slice(5);  // MM-DD
  const seriesOf = (rows, key, days) => {
    const names = [...new Set(rows.map((r) => r[key] || "(none)"))].sort();
    return names.map((name, k) => ({name, cls: "s" + (k % 8),
      values: days.map((d) => rows.filter((r) => r.day === d && (r[key] || "(none)") === name).reduce((a, r) => a + r.n, 0))}));
  };

  function transfers(c, by) {
    const days = c.transfers.days, rows = by === "council" ? c.transfers.by_council : c.transfers.by_state;
    const series = seriesOf(rows, by, days);
    const total = rows.reduce((a, r) => a + r.n, 0);
    const svg = bars({title: "Transfers per day by " + by + " (UTC, by request day)", xLabel: "day (UTC)",
      yLabel: "transfers", categories: days, tick: (i) => ((days.length - 1 - i) % 5 === 0 ? short(days[i]) : ""),
      series, describe: (i, parts, s, v) => days[i] + ": " + s + " " + v + " (of " + parts.reduce((a, p) => a + p[1], 0) + ")"});
    put("chart-transfers", "Transfers per day by " + by, [svg, legend(series)], total + " transfer(s) in the last " + days.length + " days");
  }

  function latency(c) {
    const L = c.latency, nodes = [];
    for (const g of L.groups) {
      const marks = g.deadlines.map((d) => {
        const exact = d.bucket < L.edges_seconds.length && d.seconds === L.edges_seconds[d.bucket];
        return {at: d.bucket + (exact ? 1 : 0.5), label: d.rule_id,
          title: d.rule_id + ": " + d.what + " within " + d.length + " " + d.unit + " of the request"};
      });
      const fig = document.createElement("figure");
      fig.className = "latency-group";
      fig.dataset.group = g.council + "/" + g.pathway;
      fig.appendChild(bars({title: "Handover latency: " + g.council + " " + g.pathway, xLabel: "requested → acknowledged",
        yLabel: "transfers", categories: L.buckets, series: [{name: "handed over", cls: "s0", values: g.counts}], marks,
        describe: (i, parts, s, v) => g.council + " " + g.pathway + ": " + v + " handed over in " + L.buckets[i]}));
      const cap = document.createElement("figcaption");
      cap.className = "muted";
      cap.textContent = g.council + " " + g.pathway + ": " + g.total + " handed over; " + (g.deadlines.length
        ? "deadline " + g.deadlines.map((d) => d.rule_id + " " + d.length + " " + d.unit).join(", ")
        : "no protocol deadline runs from the request");
      fig.appendChild(cap);
      nodes.push(fig);
    }
    const total = L.groups.reduce((a, g) => a + g.total, 0);
    put("chart-latency", "Handover latency against the protocol deadline", nodes, total ? total + " handover(s) by council and pathway; the line is the protocol deadline"
      : "no handovers yet");
  }

  function due(c) {
    const days = c.due.days, rows = c.due.by_day;
    const values = days.map((d) => rows.filter((r) => r.day === d).reduce((a, r) => a + r.n, 0));
    const svg = bars({title: "Deadlines falling due, next " + days.length + " days (not yet met)", xLabel: "due day (UTC)",
      yLabel: "deadlines", categories: days, tick: (i) => (i % 2 === 0 ? short(days[i]) : ""),
      series: [{name: "due", cls: "s3", values}],
      describe: (i) => days[i] + ": " + values[i] + " due (" + rows.filter((r) => r.day === days[i])
        .map((r) => r.rule_id + " " + r.council + " " + r.n).join("; ") + ")"});
    put("chart-due", "Deadlines falling due in the next " + days.length + " days", [svg], values.reduce((a, b) => a + b, 0) + " deadline(s) due in the next " + days.length + " days");
  }

  function ages(c) {
    const D = c.dead_letters_waiting;
    const svg = bars({title: "Dead letters waiting, by age", xLabel: "time since dead-lettered", yLabel: "dead letters",
      categories: D.buckets, series: [{name: "waiting", cls: "s1", values: D.counts}],
      describe: (i) => D.buckets[i] + ": " + D.counts[i] + " waiting"});
    put("chart-ages", "Dead letters waiting, by age", [svg], D.counts.reduce((a, b) => a + b, 0) + " dead letter(s) waiting");
  }

  // Redrawn only when the figures changed (the page refreshes every 2 s: an unchanged chart keeps its elements, so
  // a tooltip being read stays put and the browser does no needless work), or when the stacking is switched.
  let last = null, drawn = null;
  function draw(c) {
    if (c) {
      const figures = JSON.stringify(Object.assign({}, c, {generated_at: null}));
      if (figures === drawn) return;
      last = c;
      drawn = figures;
    }
    if (!last) return;
    transfers(last, document.getElementById("chart-transfers-by").value);
    latency(last);
    due(last);
    ages(last);
  }
  document.getElementById("chart-transfers-by").addEventListener("change", () => draw(null));
  return {draw};
})();
