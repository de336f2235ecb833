// wbc serve, Results page: what the workspace's reports/ folder holds, discovered by the server.
"use strict";

const SECTIONS = [["table-section", "Result table"], ["curves-section", "Training curves"],
  ["figures-section", "Figures"], ["other-section", "Other reports"]];

document.addEventListener("DOMContentLoaded", async () => {
  fetchJSON("/api/info").then(showModelBadge).catch(() => {});
  let data;
  try {
    data = await fetchJSON("/api/results");
  } catch (err) {
    return warn(`Cannot read the results: ${err.message}`);
  }
  document.getElementById("where").textContent = `From ${data.reports}`;
  if (!data.found) return warn("No reports/ folder in this workspace: run the pipeline first (dvc repro).");
  if (data.results_html) show("table-section", "results-table", htmlFragment(data.results_html));
  else warn("No reports/results.md yet: the report stage has not run (dvc repro).");
  if (data.curves.length) show("curves-section", "curves", ...data.curves.map(curveRun));
  if (data.figures.length) show("figures-section", "figures", ...data.figures.map(figureGroup));
  if (data.markdown.length) show("other-section", "other", ...data.markdown.map(otherReport));
  buildToc();
});

function warn(text) {
  const box = document.getElementById("message");
  box.append(el("div", {}, text));
  box.classList.remove("hidden");
}

function show(sectionId, containerId, ...nodes) {
  document.getElementById(containerId).replaceChildren(...nodes);
  document.getElementById(sectionId).classList.remove("hidden");
}

/** Server-rendered Markdown (raw HTML escaped by the server's renderer) as nodes. */
function htmlFragment(html) {
  return document.createRange().createContextualFragment(html);
}

function curveRun(run) {
  return el("div", {class: "run"}, el("h3", {}, run.run),
    el("div", {class: "curves"}, ...run.charts.map(c => el("div", {class: "curve"}, lineChart(c.metric, c.series)))));
}

function figureGroup(group) {
  return el("div", {class: "figure-group"}, el("h3", {}, group.group || "reports/"),
    el("div", {class: "figures"}, ...group.images.map(img => {
      const url = `/reports/${img.path.split("/").map(encodeURIComponent).join("/")}`;
      return el("figure", {class: "card"},
        el("a", {href: url, target: "_blank", rel: "noopener"}, el("img", {src: url, alt: img.path, loading: "lazy"})),
        el("figcaption", {}, img.name));
    })));
}

function otherReport(report) {
  const body = el("div", {class: "md"});
  body.append(htmlFragment(report.html));
  return el("details", {}, el("summary", {}, report.path), body);
}

function buildToc() {
  const links = SECTIONS.filter(([id]) => !document.getElementById(id).classList.contains("hidden"))
    .map(([id, label]) => el("a", {href: `#${id}`}, label));
  document.getElementById("toc").replaceChildren(...links);
}
