// edgecache dashboard: reads the admin API with the operator's token and draws what it says.
// Data goes into the page as text only (textContent), never as markup.
"use strict";

const TOKEN_KEY = "edgecache-admin-token";
const REFRESH_MS = 2000;
const WINDOW_MS = 15 * 60 * 1000;

const state = { token: null, timer: null, samples: [], lastSample: 0 };

const $ = (id) => document.getElementById(id);

// ---- formatting ----

function formatNumber(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

function formatBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return (i === 0 ? String(Math.round(n)) : n.toFixed(1)) + " " + units[i];
}

function formatPercent(ratio) {
  return ratio === null || ratio === undefined ? "–" : (ratio * 100).toFixed(1) + " %";
}

function formatMs(ms) {
  if (ms === null || ms === undefined) return "–";
  return ms < 10 ? ms.toFixed(2) : ms < 100 ? ms.toFixed(1) : String(Math.round(ms));
}

function formatDuration(seconds) {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d > 0) return d + "d " + h + "h";
  if (h > 0) return h + "h " + m + "m";
  if (m > 0) return m + "m " + (s % 60) + "s";
  return s + "s";
}

function formatTime(rfc3339) {
  if (!rfc3339) return "–";
  const date = new Date(rfc3339);
  return Number.isNaN(date.getTime()) ? rfc3339 : date.toLocaleString();
}

function setText(id, text) { $(id).textContent = text; }

// ---- the API ----

class Refused extends Error {}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + state.token }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
  if (response.status === 401) throw new Refused("token refused");
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || "HTTP " + response.status);
  return body;
}

// ---- login ----

function showLogin(message) {
  stopRefreshing();
  state.token = null;
  state.samples = [];
  state.lastSample = 0;
  sessionStorage.removeItem(TOKEN_KEY);
  clearData();
  $("dashboard").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  setText("login-error", message || "");
}

// Empties every place data was written to, so a refused token leaves nothing on the page.
function clearData() {
  for (const el of document.querySelectorAll(".tile .value, .tile .sub")) el.textContent = "";
  for (const body of document.querySelectorAll("tbody")) body.replaceChildren();
  $("events").replaceChildren();
  for (const id of ["identity", "ring-fingerprint", "config-version", "config-loaded", "purge-result", "reload-result"]) {
    setText(id, "");
  }
  $("cluster").hidden = true;
  for (const canvas of document.querySelectorAll("canvas")) {
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  }
}

async function logIn(token) {
  state.token = token;
  try {
    const status = await api("/status");
    sessionStorage.setItem(TOKEN_KEY, token);
    $("login").hidden = true;
    $("dashboard").hidden = false;
    $("logout").hidden = false;
    setText("login-error", "");
    renderStatus(status);
    await refresh();
    state.timer = setInterval(refresh, REFRESH_MS);
  } catch (error) {
    showLogin(error instanceof Refused ? "That token was refused." : "Cannot reach the admin API: " + error.message);
  }
}

function stopRefreshing() {
  if (state.timer !== null) clearInterval(state.timer);
  state.timer = null;
}

// ---- refreshing ----

async function refresh() {
  if (!state.token) return;
  try {
    const [status, history, events] = await Promise.all([
      api("/status"),
      api("/history?after=" + state.lastSample),
      api("/events"),
    ]);
    $("connection-error").hidden = true;
    renderStatus(status);
    addSamples(history.samples);
    renderEvents(events.events);
  } catch (error) {
    if (error instanceof Refused) {
      showLogin("The token was refused (rotated by a reload?).");
      return;
    }
    $("connection-error").hidden = false;
    setText("connection-error", "Cannot reach the admin API: " + error.message);
  }
}

function renderStatus(status) {
  setText("identity", "node " + status.node + " · v" + status.version + " · up " + formatDuration(status.uptime_seconds) +
    " · config " + status.config.version);
  const requests = status.requests;
  setText("requests-total", formatNumber(requests.total));
  setText("errors-total", formatNumber(requests.server_errors) + " answered with 5xx");
  const cache = status.cache;
  setText("hit-ratio-total", formatPercent(cache.hit_ratio) + " since start (" + formatNumber(cache.lookups) + " lookups)");
  setText("cache-fill", formatBytes(cache.bytes) + " / " + formatBytes(cache.max_bytes));
  setText("cache-entries", formatNumber(cache.entries) + " entries · " + formatNumber(cache.evictions) + " evicted");
  const fromCache = requests.bytes_from_cache, fromOrigin = requests.bytes_from_origin;
  const all = fromCache + fromOrigin;
  setText("bytes-split", all > 0 ? formatPercent(fromCache / all) + " from cache" : "–");
  setText("bytes-total", formatBytes(fromCache) + " from cache · " + formatBytes(fromOrigin) + " from origins");
  setText("config-version", String(status.config.version));
  setText("config-loaded", formatTime(status.config.loaded_at));
  renderSites(status.sites);
  renderCluster(status.cluster);
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function renderSites(sites) {
  const body = $("sites").tBodies[0];
  const rows = [];
  for (const site of sites) {
    const name = site.hosts.length ? site.hosts.join(", ") : "default";
    const expires = site.certificate_expires ? formatTime(site.certificate_expires) : "–";
    for (const origin of site.origins) {
      const row = document.createElement("tr");
      cell(row, name + (site.default ? " (default)" : ""));
      const pool = origin.route ? " (route " + origin.route + ")" : "";
      cell(row, origin.addr + (origin.backup ? " (backup)" : "") + pool);
      cell(row, origin.healthy ? "up" : "down", origin.healthy ? "up" : "down");
      cell(row, origin.health_since ? formatTime(origin.health_since) : "start");
      cell(row, formatNumber(origin.failures));
      cell(row, formatTime(origin.last_failure));
      cell(row, expires);
      rows.push(row);
    }
  }
  body.replaceChildren(...rows);
}

function renderCluster(cluster) {
  $("cluster").hidden = !cluster;
  if (!cluster) return;
  setText("ring-fingerprint", cluster.ring_fingerprint);
  setText("cluster-forwarded", formatNumber(cluster.forwarded));
  setText("cluster-served", formatNumber(cluster.served_for_peers));
  setText("cluster-failures", formatNumber(cluster.peer_failures));
  const rows = cluster.peers.map((peer) => {
    const row = document.createElement("tr");
    cell(row, peer.id + (peer.id === cluster.node ? " (this node)" : ""));
    cell(row, peer.addr);
    cell(row, String(peer.weight));
    cell(row, peer.healthy ? "up" : "down", peer.healthy ? "up" : "down");
    return row;
  });
  $("peers").tBodies[0].replaceChildren(...rows);
}

function renderEvents(events) {
  const items = events.slice(0, 30).map((event) => {
    const li = document.createElement("li");
    const time = document.createElement("time");
    time.textContent = formatTime(event.time);
    const kind = document.createElement("span");
    kind.className = "kind";
    kind.textContent = event.type;
    const details = document.createElement("span");
    const text = JSON.stringify(event.details);
    details.textContent = text.length > 200 ? text.slice(0, 200) + "…" : text;
    li.append(time, kind, details);
    return li;
  });
  $("events").replaceChildren(...items);
}

function addSamples(samples) {
  if (samples.length) state.lastSample = samples[samples.length - 1].time;
  const oldest = Date.now() - WINDOW_MS;
  state.samples = state.samples.concat(samples).filter((s) => s.time >= oldest);
  const last = state.samples[state.samples.length - 1];
  if (last) {
    setText("rps", formatNumber(last.requests_per_second));
    setText("hit-ratio", formatPercent(last.hit_ratio));
    const latency = last.origin_latency_ms;
    setText("latency", latency ? formatMs(latency.p50) + " / " + formatMs(latency.p90) + " / " + formatMs(latency.p99) + " ms" : "–");
  }
  drawCharts();
}

// ---- charts ----

const COLORS = ["--c0", "--c1", "--c2", "--c3"];

function color(index) {
  return getComputedStyle(document.documentElement).getPropertyValue(COLORS[index]).trim();
}

// Draws lines of `series` ([{color, value(sample)}]) over the last 15 minutes.
function drawChart(canvas, series, options) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  if (width === 0 || height === 0) return;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const samples = state.samples;
  const now = Date.now();
  let max = options.max || 0;
  if (!options.max) {
    for (const s of samples) for (const line of series) max = Math.max(max, line.value(s) || 0);
  }
  if (max <= 0) max = 1;
  const top = 14, bottom = height - 14;
  const x = (time) => ((time - (now - WINDOW_MS)) / WINDOW_MS) * width;
  const y = (value) => bottom - (value / max) * (bottom - top);
  const muted = getComputedStyle(document.documentElement).getPropertyValue("--muted").trim();
  ctx.strokeStyle = muted;
  ctx.globalAlpha = 0.3;
  ctx.beginPath();
  ctx.moveTo(0, bottom + 0.5);
  ctx.lineTo(width, bottom + 0.5);
  ctx.stroke();
  ctx.globalAlpha = 1;
  ctx.fillStyle = muted;
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillText(options.format(max), 2, 10);
  ctx.fillText("15 min ago", 2, height - 2);
  ctx.textAlign = "right";
  ctx.fillText("now", width - 2, height - 2);
  ctx.textAlign = "left";
  for (const line of series) {
    ctx.strokeStyle = color(line.color);
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let drawing = false;
    for (const s of samples) {
      const value = line.value(s);
      if (value === null || value === undefined) { drawing = false; continue; }
      if (drawing) ctx.lineTo(x(s.time), y(value));
      else ctx.moveTo(x(s.time), y(value));
      drawing = true;
    }
    ctx.stroke();
  }
}

function drawCharts() {
  const latency = (key) => (s) => (s.origin_latency_ms ? s.origin_latency_ms[key] : null);
  drawChart($("chart-requests"), [
    { color: 0, value: (s) => s.requests_per_second },
    { color: 3, value: (s) => s.errors_per_second },
  ], { format: formatNumber });
  drawChart($("chart-hit-ratio"), [{ color: 1, value: (s) => s.hit_ratio }], { max: 1, format: formatPercent });
  drawChart($("chart-bytes"), [
    { color: 1, value: (s) => s.cache_bytes_per_second },
    { color: 2, value: (s) => s.origin_bytes_per_second },
  ], { format: formatBytes });
  drawChart($("chart-latency"), [
    { color: 1, value: latency("p50") },
    { color: 2, value: latency("p90") },
    { color: 3, value: latency("p99") },
  ], { format: formatMs });
  drawChart($("chart-fill"), [{ color: 0, value: (s) => s.cache_bytes }], { format: formatBytes });
}

// ---- actions ----

async function purge(event) {
  event.preventDefault();
  const kind = $("purge-kind").value;
  const request = { [kind]: $("purge-value").value.trim(), soft: $("purge-soft").checked };
  setText("purge-result", "Purging…");
  try {
    const answer = await api("/purge", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request),
    });
    let text = "Purged " + answer.purged + (answer.purged === 1 ? " entry" : " entries") + (answer.soft ? " (soft)" : "");
    if (answer.peers) {
      const pending = answer.peers.filter((peer) => !peer.ok).length;
      text += " on this node; " + answer.peers.length + " peers asked" + (pending ? ", " + pending + " retried" : "");
    }
    setText("purge-result", text);
  } catch (error) {
    if (error instanceof Refused) return showLogin("The token was refused.");
    setText("purge-result", "Purge failed: " + error.message);
  }
  refresh();
}

async function reload() {
  setText("reload-result", "Reloading…");
  try {
    const answer = await api("/reload", { method: "POST" });
    setText("reload-result", "Config version " + answer.version + " applied.");
  } catch (error) {
    if (error instanceof Refused) return showLogin("The token was refused.");
    setText("reload-result", "Reload refused, the old config keeps running: " + error.message);
  }
  refresh();
}

function purgePlaceholder() {
  const examples = { url: "https://example.com/page", prefix: "https://example.com/static/", host: "example.com", tag: "product-42" };
  $("purge-value").placeholder = examples[$("purge-kind").value];
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value;
    $("token").value = "";
    logIn(token);
  });
  $("logout").addEventListener("click", () => showLogin(""));
  $("purge-form").addEventListener("submit", purge);
  $("purge-kind").addEventListener("change", purgePlaceholder);
  $("reload").addEventListener("click", reload);
  window.addEventListener("resize", drawCharts);
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) logIn(saved);
});
