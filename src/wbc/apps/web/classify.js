// wbc serve, Classify page: upload images and zip files, show predictions and the differential count.
"use strict";

const state = {info: null, result: null, sort: {key: null, dir: 1}, columns: []};
const $ = id => document.getElementById(id);

document.addEventListener("DOMContentLoaded", async () => {
  setupDropZone();
  $("filter-class").addEventListener("change", renderRows);
  $("filter-low").addEventListener("change", renderRows);
  $("threshold").addEventListener("input", renderRows);
  try {
    state.info = await fetchJSON("/api/info");
  } catch (err) {
    return showMessage(`Cannot reach the server: ${err.message}`);
  }
  showModelBadge(state.info);
  const {max_upload_bytes: bytes, max_files: files} = state.info.limits;
  $("limits").textContent = `Up to ${files} files and ${fmtBytes(bytes)} per upload. Nothing leaves this machine.`;
  if (!state.info.model) {
    $("model-missing").textContent = state.info.model_error;
    $("model-missing").classList.remove("hidden");
    $("choose").setAttribute("aria-disabled", "true");
    $("file-input").disabled = true;
  }
});

// ------------------------------------------------------------------------------ choosing files

function setupDropZone() {
  const drop = $("drop");
  $("file-input").addEventListener("change", event => {
    const files = [...event.target.files];
    event.target.value = "";  // choosing the same files again fires `change` again
    upload(files);
  });
  drop.addEventListener("dragover", event => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async event => {
    event.preventDefault();
    drop.classList.remove("over");
    upload(await droppedFiles(event.dataTransfer));
  });
}

/** Files of a drop, folders walked recursively (when the browser exposes entries). */
async function droppedFiles(transfer) {
  const entries = [...transfer.items].map(item => item.webkitGetAsEntry && item.webkitGetAsEntry()).filter(Boolean);
  if (!entries.length) return [...transfer.files];
  const files = [];
  const walk = async entry => {
    if (entry.isFile) {
      files.push(await new Promise((resolve, reject) => entry.file(resolve, reject)));
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (let batch; (batch = await new Promise((res, rej) => reader.readEntries(res, rej))).length;) {
        for (const child of batch) await walk(child);
      }
    }
  };
  for (const entry of entries) await walk(entry);
  return files;
}

// ------------------------------------------------------------------------------ uploading

/** Check the limits, then POST the files with upload progress; a spinner while the server classifies. */
function upload(files) {
  hideMessage();
  if (!files.length || !state.info || !state.info.model) return;
  const {max_upload_bytes: maxBytes, max_files: maxFiles} = state.info.limits;
  const total = files.reduce((sum, f) => sum + f.size, 0);
  if (files.length > maxFiles) return showMessage(`Too many files: ${files.length} (limit ${maxFiles} per upload).`);
  if (total > maxBytes) return showMessage(`Too large: ${fmtBytes(total)} (limit ${fmtBytes(maxBytes)} per upload).`);

  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/api/classify");
  xhr.responseType = "json";
  const what = `${files.length} file${files.length === 1 ? "" : "s"} (${fmtBytes(total)})`;
  showProgress(`Uploading ${what}…`);
  let timer = null;
  xhr.upload.addEventListener("progress", event => {
    if (event.lengthComputable) setUploadProgress(what, (100 * event.loaded) / event.total);
  });
  xhr.upload.addEventListener("load", () => { timer = showInference(what); });
  xhr.addEventListener("loadend", () => {
    clearInterval(timer);
    $("progress").classList.add("hidden");
    if (xhr.status === 200 && xhr.response) return showResult(xhr.response, what);
    const detail = xhr.response && xhr.response.detail;
    showMessage(detail ? `Upload refused (${xhr.status}): ${detail}` : "The upload failed: connection lost or refused by the server.");
  });
  xhr.send(form);
}

function showProgress(text) {
  $("progress").classList.remove("hidden");
  $("upload-row").classList.remove("hidden");
  $("infer-row").classList.add("hidden");
  setUploadProgress(text, 0);
}

function setUploadProgress(what, percent) {
  $("upload-bar").value = percent;
  $("upload-text").textContent = `Uploading ${what}… ${Math.round(percent)} %`;
}

/** Switch from the upload bar to the spinner; returns the elapsed-time timer. */
function showInference(what) {
  $("upload-row").classList.add("hidden");
  $("infer-row").classList.remove("hidden");
  const start = Date.now();
  const tick = () => { $("infer-text").textContent = `Classifying ${what}… ${Math.round((Date.now() - start) / 1000)} s`; };
  tick();
  return setInterval(tick, 500);
}

function showMessage(text) {
  $("message").textContent = text;
  $("message").classList.remove("hidden");
}

function hideMessage() { $("message").classList.add("hidden"); }

// ------------------------------------------------------------------------------ results

function showResult(result, what) {
  state.result = result;
  state.columns = columnsFor(result.classes);
  state.sort = {key: null, dir: 1};
  $("results").classList.remove("hidden");
  $("stat-read").firstChild.textContent = result.read;
  $("stat-bad").firstChild.textContent = result.unreadable + result.notes.length;
  $("stat-files").textContent = `from ${what}`;
  $("download").href = `/api/jobs/${result.job}/predictions.csv`;
  renderDifferential(result.differential);
  renderProblems(result);
  renderClassFilter(result.classes);
  renderHeader();
  renderRows();
}

function renderDifferential(rows) {
  $("diff-table").tBodies[0].replaceChildren(...rows.map(r => el("tr", {"data-class": r.class},
    el("td", {}, r.class), el("td", {class: "num"}, r.count), el("td", {class: "num"}, fmtPercent(r.percent)),
    el("td", {class: "num"}, `${fmtPercent(r.ci_low)} – ${fmtPercent(r.ci_high)}`))));
  $("diff-chart").replaceChildren(differentialChart(rows));
}

function renderProblems(result) {
  const bad = [...result.rows.filter(r => r.error), ...result.notes];
  $("problems").classList.toggle("hidden", !bad.length);
  $("problem-list").replaceChildren(...bad.map(r => el("li", {},
    el("code", {}, r.path), ": ", el("span", {class: "reason"}, r.error))));
}

function renderClassFilter(classes) {
  const select = $("filter-class");
  select.replaceChildren(el("option", {value: ""}, "all"),
    ...classes.map(c => el("option", {value: c}, c)), el("option", {value: "__error__"}, "not classified"));
}

/** Table columns: thumbnail, file, predicted class, confidence, one probability per class, error. */
function columnsFor(classes) {
  return [
    {key: "thumb", label: "", sortable: false},
    {key: "path", label: "file", get: r => r.path},
    {key: "label", label: "predicted", get: r => r.label || null},
    {key: "confidence", label: "confidence", num: true, get: r => r.confidence},
    ...classes.map((c, j) => ({key: `p_${c}`, label: c, num: true, prob: true, get: r => (r.probs ? r.probs[j] : null)})),
    {key: "error", label: "error", get: r => r.error || null},
  ];
}

function renderHeader() {
  const row = $("pred-table").tHead.rows[0];
  row.replaceChildren(...state.columns.map(col => {
    const th = el("th", {class: [col.num ? "num" : "", col.sortable === false ? "" : "sortable"].join(" ").trim(),
      "data-key": col.key, title: col.prob ? `probability of ${col.label}` : null}, col.prob ? `p(${col.label})` : col.label);
    if (col.sortable !== false) th.addEventListener("click", () => sortBy(col.key));
    return th;
  }));
}

function sortBy(key) {
  state.sort = {key, dir: state.sort.key === key ? -state.sort.dir : 1};
  for (const th of $("pred-table").tHead.rows[0].cells) {
    th.removeAttribute("aria-sort");
    if (th.dataset.key === key) th.setAttribute("aria-sort", state.sort.dir > 0 ? "ascending" : "descending");
  }
  renderRows();
}

/** Rows after the class and low-confidence filters, in the chosen order (empty values last). */
function visibleRows() {
  const cls = $("filter-class").value;
  const low = $("filter-low").checked;
  const threshold = parseFloat($("threshold").value);
  let rows = state.result.rows.filter(r =>
    (!cls || (cls === "__error__" ? Boolean(r.error) : r.label === cls)) &&
    (!low || (r.confidence !== null && !(r.confidence >= threshold))));
  const col = state.columns.find(c => c.key === state.sort.key);
  if (col) {
    const dir = state.sort.dir;
    rows = [...rows].sort((a, b) => {
      const [x, y] = [col.get(a), col.get(b)];
      if (x === null || y === null) return (x === null) - (y === null);
      return dir * (typeof x === "number" ? x - y : String(x).localeCompare(String(y)));
    });
  }
  return rows;
}

function renderRows() {
  if (!state.result) return;
  const threshold = parseFloat($("threshold").value);
  const rows = visibleRows();
  $("pred-table").tBodies[0].replaceChildren(...rows.map(r => rowElement(r, threshold)));
  $("row-count").textContent = `showing ${rows.length} of ${state.result.rows.length}`;
}

function rowElement(r, threshold) {
  const low = r.confidence !== null && r.confidence < threshold;
  const tr = el("tr", {class: r.error ? "error" : low ? "low" : null, "data-index": r.index});
  for (const col of state.columns) tr.append(cellElement(col, r));
  return tr;
}

function cellElement(col, r) {
  if (col.key === "thumb") {
    return el("td", {}, r.error ? el("span", {class: "thumb-missing"})
      : el("img", {class: "thumb", loading: "lazy", alt: r.label, src: `/api/jobs/${state.result.job}/thumbs/${r.index}.jpg`}));
  }
  const value = col.get(r);
  if (col.key === "label") return el("td", {}, value ? el("span", {class: "label-chip"}, value) : "");
  if (col.key === "path") return el("td", {class: "path"}, value);
  if (!col.num) return el("td", {}, value || "");
  if (!col.prob) return el("td", {class: "num"}, fmtNumber(value));
  const bar = el("span", {}); bar.style.width = `${Math.round(100 * (value || 0))}%`;
  return el("td", {class: "num"}, el("span", {class: "pcell"}, fmtNumber(value), el("span", {class: "pbar"}, bar)));
}
