// wbc serve: helpers shared by both pages (DOM building, number formats, inline SVG charts).
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const SERIES_COLOURS = ["#8a2d5b", "#2f6fa3", "#d08a1a", "#2f6f4e", "#6b4fa3", "#a4262c"];

/** Create an HTML element: el("td", {class: "num"}, "1.0", otherNode). Text children are escaped. */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** Create an SVG element with attributes (and optional text). */
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    node.setAttribute(key, value === true ? "" : String(value));
  }
}

/** GET a JSON document; throws an Error with the server's `detail` message. */
async function fetchJSON(url) {
  const response = await fetch(url, {headers: {Accept: "application/json"}});
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || `${response.status} ${response.statusText}`);
  return body;
}

function fmtPercent(value, digits = 1) {
  return value === null || value === undefined || Number.isNaN(value) ? "–" : `${value.toFixed(digits)} %`;
}

function fmtNumber(value, digits = 3) {
  return value === null || value === undefined || Number.isNaN(value) ? "–" : value.toFixed(digits);
}

function fmtBytes(n) {
  return n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MB` : `${Math.max(1, Math.round(n / 1024))} kB`;
}

/** The model badge in the header, from /api/info. */
function showModelBadge(info) {
  const badge = document.getElementById("model-badge");
  if (!badge) return;
  badge.textContent = info.model
    ? `model: ${info.model.name} · ${info.model.image_size} px · ${info.model.device}`
    : "no checkpoint";
}

/**
 * Horizontal bar chart of percentages with 95 % interval whiskers (the differential count).
 * rows: [{class, percent, ci_low, ci_high}] in percent.
 */
function differentialChart(rows) {
  const width = 460, barH = 22, gap = 10, left = 96, right = 24, top = 8, axisH = 28;
  const height = top + rows.length * (barH + gap) + axisH;
  const plotW = width - left - right;
  const maxValue = Math.min(100, Math.max(10, ...rows.map(r => r.ci_high || 0)) * 1.05);
  const x = v => left + (plotW * Math.min(v, maxValue)) / maxValue;
  const root = svg("svg", {class: "chart", viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
    "aria-label": "differential count with 95 % confidence intervals"});
  const axisY = top + rows.length * (barH + gap);
  for (const tick of niceTicks(0, maxValue, 5)) {
    root.append(svg("line", {class: "grid", x1: x(tick), x2: x(tick), y1: top, y2: axisY}));
    root.append(svg("text", {x: x(tick), y: axisY + 16, "text-anchor": "middle"}, `${tick}%`));
  }
  rows.forEach((row, i) => {
    const y = top + i * (barH + gap);
    const pct = row.percent || 0;
    root.append(svg("text", {x: left - 8, y: y + barH / 2 + 4, "text-anchor": "end"}, row.class));
    const bar = svg("rect", {class: "bar", x: left, y, width: Math.max(0, x(pct) - left), height: barH, rx: 2});
    bar.append(svg("title", {}, `${row.class}: ${fmtPercent(row.percent)} (95 % CI ${fmtPercent(row.ci_low)}–${fmtPercent(row.ci_high)})`));
    root.append(bar);
    if (row.ci_low !== null && row.ci_high !== null) {
      const cy = y + barH / 2;
      root.append(svg("line", {class: "err", x1: x(row.ci_low), x2: x(row.ci_high), y1: cy, y2: cy}));
      for (const v of [row.ci_low, row.ci_high]) {
        root.append(svg("line", {class: "err", x1: x(v), x2: x(v), y1: cy - 6, y2: cy + 6}));
      }
    }
  });
  root.append(svg("line", {class: "axis", x1: left, x2: left + plotW, y1: axisY, y2: axisY}));
  return root;
}

/** About `count` round tick values between lo and hi. */
function niceTicks(lo, hi, count) {
  const span = hi - lo || 1;
  const raw = span / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map(m => m * mag).find(s => s >= raw) || raw;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-9; t += step) ticks.push(+t.toPrecision(12));
  return ticks;
}

/** A small line chart: series [{name, steps, values}] sharing axes; title above. */
function lineChart(title, series) {
  const width = 255, height = 165, left = 42, right = 10, top = 22, bottom = 26;
  const steps = series.flatMap(s => s.steps), values = series.flatMap(s => s.values);
  let [x0, x1] = [Math.min(...steps), Math.max(...steps)];
  let [y0, y1] = [Math.min(...values), Math.max(...values)];
  if (x0 === x1) { x0 -= 0.5; x1 += 0.5; }
  if (y0 === y1) { y0 -= Math.abs(y0) * 0.1 || 0.5; y1 += Math.abs(y1) * 0.1 || 0.5; }
  const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
  const px = v => left + ((v - x0) / (x1 - x0)) * (width - left - right);
  const py = v => top + (1 - (v - y0) / (y1 - y0)) * (height - top - bottom);
  const root = svg("svg", {class: "chart", viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
    "aria-label": title});
  root.append(svg("text", {x: left, y: 14, "font-weight": "600"}, title));
  for (const t of niceTicks(y0, y1, 4)) {
    root.append(svg("line", {class: "grid", x1: left, x2: width - right, y1: py(t), y2: py(t)}));
    root.append(svg("text", {x: left - 4, y: py(t) + 4, "text-anchor": "end"}, +t.toPrecision(3)));
  }
  for (const t of niceTicks(x0, x1, 4).filter(Number.isInteger)) {
    root.append(svg("text", {x: px(t), y: height - 10, "text-anchor": "middle"}, t));
  }
  root.append(svg("line", {class: "axis", x1: left, x2: width - right, y1: height - bottom, y2: height - bottom}));
  series.forEach((s, i) => {
    const colour = SERIES_COLOURS[i % SERIES_COLOURS.length];
    const points = s.steps.map((step, j) => `${px(step).toFixed(1)},${py(s.values[j]).toFixed(1)}`).join(" ");
    root.append(svg("polyline", {points, fill: "none", stroke: colour, "stroke-width": 2}));
    s.steps.forEach((step, j) => root.append(svg("circle", {cx: px(step), cy: py(s.values[j]), r: 2.2, fill: colour})));
    const label = s.name || title;
    root.append(svg("text", {x: width - right - 4 - 60 * (series.length - 1 - i), y: 14, fill: colour,
      "text-anchor": "end"}, label));
  });
  return root;
}
