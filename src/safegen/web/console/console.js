// safegen console: classify images and try a generation against this server's own API.
// The API key lives in sessionStorage only (this tab), and goes out as a Bearer header.
"use strict";

const KEY_STORAGE = "safegen.apiKey";
const DEFAULT_FILES_PER_REQUEST = 16; // until /v1/info says the server's limit
const $ = (id) => document.getElementById(id);
const api = (path) => new URL(path, document.baseURI).href; // same origin, behind any prefix

const state = { info: null, cards: [] };

function apiKey() { return sessionStorage.getItem(KEY_STORAGE) || ""; }

function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  const key = apiKey();
  if (key) headers.Authorization = "Bearer " + key;
  return headers;
}

// The server's error body is {"error": {"code", "message", ...}}; anything else gets a sentence.
async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON */ }
  return "the server answered " + response.status + " " + response.statusText;
}

function showStatus(element, text, isError) {
  element.textContent = text;
  element.classList.toggle("error", Boolean(isError));
}

// ---- API key and server info ---------------------------------------------------------------

async function loadInfo() {
  const status = $("key-status");
  let response;
  try {
    response = await fetch(api("v1/info"), { headers: authHeaders() });
  } catch (_) {
    showStatus(status, "server unreachable", true);
    return;
  }
  if (response.status === 401) {
    state.info = null;
    showStatus(status, apiKey() ? "key refused" : "enter an API key", true);
    return;
  }
  if (!response.ok) {
    showStatus(status, await errorMessage(response), true);
    return;
  }
  state.info = await response.json();
  showStatus(status, "connected: " + state.info.model, false);
  setThreshold(state.info.nsfw_threshold);
  $("generate").hidden = !state.info.generator;
}

function setupKeyForm() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    $("api-key").value = "";
    loadInfo();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    loadInfo();
  });
}

// ---- classification --------------------------------------------------------------------------

function threshold() { return Number($("threshold").value); }

function setThreshold(value) {
  $("threshold").value = String(value);
  $("threshold-value").textContent = Number(value).toFixed(2);
  judgeAll();
}

function newCard(name, thumbnailUrl) {
  const item = document.createElement("li");
  item.className = "card pending";
  const image = document.createElement("img");
  image.className = "thumb";
  image.alt = name;
  if (thumbnailUrl) image.src = thumbnailUrl;
  image.addEventListener("click", () => {
    card.revealed = !card.revealed;
    judge(card);
  });
  const label = document.createElement("div");
  label.className = "name";
  label.textContent = name;
  const score = document.createElement("div");
  score.className = "score";
  score.textContent = "scoring…";
  const verdict = document.createElement("div");
  verdict.className = "verdict";
  item.append(image, label, score, verdict);
  $("results").append(item);
  const card = { item, image, score, verdict, nsfwScore: null, error: null, revealed: false };
  state.cards.push(card);
  return card;
}

// Re-judges one card against the slider's threshold: no request is sent.
function judge(card) {
  const { item, image } = card;
  item.classList.remove("nsfw", "safe", "pending", "failed");
  if (card.error !== null) {
    item.classList.add("failed");
    image.classList.remove("blurred");
    return;
  }
  if (card.nsfwScore === null) { item.classList.add("pending"); return; }
  const flagged = card.nsfwScore >= threshold();
  item.classList.add(flagged ? "nsfw" : "safe");
  card.verdict.textContent = flagged ? "NSFW" : "safe";
  image.classList.toggle("blurred", flagged && !card.revealed);
}

function judgeAll() { state.cards.forEach(judge); }

function fillCard(card, result) {
  if (result.error) {
    card.error = result.error.message;
    card.score.textContent = "";
    card.verdict.textContent = "";
    const message = document.createElement("div");
    message.className = "error";
    message.textContent = result.error.message;
    card.item.append(message);
  } else {
    card.nsfwScore = result.nsfw_score;
    card.score.textContent = "score " + result.nsfw_score.toFixed(4);
  }
  judge(card);
}

function failCards(cards, message) {
  cards.forEach((card) => fillCard(card, { error: { message } }));
}

function filesPerRequest() {
  return state.info ? state.info.limits.max_files_per_request : DEFAULT_FILES_PER_REQUEST;
}

// Sends one request and fills its cards; a request-level error is shown on each of its images.
async function send(cards, init) {
  let response;
  try {
    response = await fetch(api("v1/classify"), init);
  } catch (_) {
    failCards(cards, "the server could not be reached");
    return;
  }
  if (!response.ok) {
    failCards(cards, await errorMessage(response));
    return;
  }
  const body = await response.json();
  body.results.forEach((result) => fillCard(cards[result.index], result));
}

async function classifyFiles(files) {
  const images = Array.from(files);
  if (!images.length) return;
  showStatus($("classify-status"), "scoring " + images.length + " image(s)…", false);
  const size = filesPerRequest();
  const requests = [];
  for (let start = 0; start < images.length; start += size) {
    const part = images.slice(start, start + size);
    const cards = part.map((file) => newCard(file.name, URL.createObjectURL(file)));
    const form = new FormData();
    part.forEach((file) => form.append("files", file, file.name));
    requests.push(send(cards, { method: "POST", headers: authHeaders(), body: form }));
  }
  await Promise.all(requests);
  showStatus($("classify-status"), "done: " + images.length + " image(s)", false);
}

async function classifyUrls(text) {
  const urls = text.split(/\s+/).map((u) => u.trim()).filter(Boolean);
  if (!urls.length) return;
  const size = filesPerRequest();
  const requests = [];
  for (let start = 0; start < urls.length; start += size) {
    const part = urls.slice(start, start + size);
    // The URL is fetched by the server; the thumbnail stays empty (no outside request here).
    const cards = part.map((url) => newCard(url, null));
    const body = JSON.stringify({ images: part.map((url) => ({ url })) });
    requests.push(send(cards, {
      method: "POST", headers: authHeaders({ "Content-Type": "application/json" }), body,
    }));
  }
  await Promise.all(requests);
}

function setupClassify() {
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    classifyFiles(event.dataTransfer.files);
  });
  $("file-input").addEventListener("change", (event) => {
    classifyFiles(event.target.files);
    event.target.value = "";
  });
  $("url-form").addEventListener("submit", (event) => {
    event.preventDefault();
    classifyUrls($("urls").value);
  });
  $("threshold").addEventListener("input", () => {
    $("threshold-value").textContent = threshold().toFixed(2);
    judgeAll();
  });
}

// ---- generation ------------------------------------------------------------------------------

// "generate;dur=812.3, nsfw;dur=20.1" -> [["generate", 812.3], ["nsfw", 20.1]]
function parseServerTiming(header) {
  if (!header) return [];
  return header.split(",").map((part) => {
    const [name, ...params] = part.trim().split(";");
    const duration = params.map((p) => p.trim()).find((p) => p.startsWith("dur="));
    return [name.trim(), duration ? Number(duration.slice(4)) : 0];
  }).filter(([name, ms]) => name && ms >= 0);
}

function drawTiming(stages) {
  const bar = $("timing-bar");
  const legend = $("timing-legend");
  bar.replaceChildren();
  legend.replaceChildren();
  // "total" spans the others: it is the bar's length, not one of its segments.
  const parts = stages.filter(([name]) => name !== "total");
  const total = parts.reduce((sum, [, ms]) => sum + ms, 0) || 1;
  parts.forEach(([name, ms], i) => {
    const segment = document.createElement("span");
    segment.className = "s" + (i % 6);
    segment.style.width = ((100 * ms) / total).toFixed(2) + "%"; // CSSOM: allowed by the CSP
    segment.title = name + ": " + ms.toFixed(1) + " ms";
    bar.append(segment);
    const entry = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch s" + (i % 6);
    entry.append(swatch, name + " " + ms.toFixed(1) + " ms");
    legend.append(entry);
  });
  const overall = stages.find(([name]) => name === "total");
  if (overall) {
    const entry = document.createElement("li");
    entry.textContent = "total " + overall[1].toFixed(1) + " ms";
    legend.append(entry);
  }
}

function generateBody() {
  const format = document.querySelector("input[name=response]:checked").value;
  const body = {
    prompt: $("prompt").value,
    width: Number($("width").value),
    height: Number($("height").value),
    num_inference_steps: Number($("steps").value),
    upscale: $("upscale").checked,
    response_format: format,
  };
  if ($("negative-prompt").value.trim()) body.negative_prompt = $("negative-prompt").value;
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if (format === "s3") body.s3_prefix = $("s3-prefix").value;
  return body;
}

function showGeneration(data, timing) {
  $("generate-result").hidden = false;
  const image = $("generated-image");
  if (data.b64_json) image.src = "data:image/jpeg;base64," + data.b64_json;
  else image.removeAttribute("src"); // uploaded: the object stays where it was put
  const score = data.nsfw_score;
  $("gen-score").textContent = score === null || score === undefined ? "not checked" : score.toFixed(4);
  $("gen-verdict").textContent = score === null || score === undefined ? "—"
    : (score >= threshold() ? "NSFW" : "safe");
  $("gen-hash").textContent = data.image_hash || "";
  $("gen-upload").textContent = data.s3_upload_status === undefined || data.s3_upload_status === null
    ? "inline (no upload)" : String(data.s3_upload_status);
  $("gen-url").textContent = data.s3_url || "—";
  drawTiming(parseServerTiming(timing));
}

async function generate(event) {
  event.preventDefault();
  const status = $("generate-status");
  const button = $("generate-button");
  button.disabled = true;
  showStatus(status, "generating…", false);
  try {
    const response = await fetch(api("generate"), {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json" }),
      body: JSON.stringify(generateBody()),
    });
    let body = null;
    try { body = await response.json(); } catch (_) { /* not JSON */ }
    if (body && body.data) showGeneration(body.data, response.headers.get("Server-Timing"));
    if (!response.ok) {
      const message = body && body.error ? body.error.message : "the server answered " + response.status;
      showStatus(status, message, true);
    } else {
      showStatus(status, "done", false);
    }
  } catch (_) {
    showStatus(status, "the server could not be reached", true);
  } finally {
    button.disabled = false;
  }
}

function setupGenerate() {
  $("generate-form").addEventListener("submit", generate);
  document.querySelectorAll("input[name=response]").forEach((radio) => {
    radio.addEventListener("change", () => {
      $("s3-prefix").disabled = document.querySelector("input[name=response]:checked").value !== "s3";
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupKeyForm();
  setupClassify();
  setupGenerate();
  loadInfo();
});
