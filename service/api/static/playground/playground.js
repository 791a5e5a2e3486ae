// The playground: one prompt sent to a model's plain, power and distilled routes at once, each
// answer streamed (POST v1/chat/completions, stream: true) into its own column with what it cost.
//
// Where each figure comes from:
//   time to first token, total time  measured here, from sending the request to the first content
//                                    delta and to the end of the stream
//   tokens generated                 usage.completion_tokens of the last chunk
//                                    (stream_options.include_usage); on the power route also
//                                    power.tokens_generated, every token the engine generated
//   cost multiplier                  power.cost_multiplier of that chunk: engine tokens per returned
//                                    token (the plain and distilled routes decode once: 1x)
//   self-reward                      self_reward of that chunk: the answer's log-likelihood under
//                                    the base model (mean per token, and the sum)
//   sampler                          the rest of the power report (method, alpha, particles or steps)
//   (cache hit)                      the x-powerserve-cache response header, after the total time
"use strict";

const ROUTES = [
  { kind: "plain", title: "Plain", suffix: "" },
  { kind: "power", title: "Power", suffix: "-power" },
  { kind: "distilled", title: "Distilled", suffix: "-distilled" },
];
const KEY_STORAGE = "powerserve.apiKey"; // sessionStorage: gone when the tab closes

const $ = (id) => document.getElementById(id);
let models = []; // the cards of GET v1/models
const columns = {}; // route kind -> its <section>

class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code;
  }
}

// --- talking to the API ---------------------------------------------------------------------------

function headers() {
  const key = $("api-key").value.trim();
  const result = { "Content-Type": "application/json" };
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

async function apiError(response) {
  let error = {};
  try {
    error = (await response.json()).error || {};
  } catch {
    // not an OpenAI error body: the status says enough
  }
  return new ApiError(response.status, error);
}

// The `data:` payloads of a server-sent event stream, one event at a time.
async function* eventData(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    // A trailing "\r" may be half of a "\r\n": keep it for the next read.
    const cut = buffer.endsWith("\r") ? buffer.length - 1 : buffer.length;
    const lines = buffer.slice(0, cut).split(/\r\n|\r|\n/);
    buffer = lines.pop() + buffer.slice(cut);
    for (const line of lines) {
      if (line === "") {
        if (data.length) yield data.join("\n");
        data = [];
      } else if (line.startsWith("data:")) {
        data.push(line.slice(5).replace(/^ /, ""));
      } // comments (": keep-alive"), event: and id: lines are not needed
    }
  }
}

// --- the page -------------------------------------------------------------------------------------

function setStatus(text) {
  $("status").textContent = text;
}

function askForKey(message) {
  $("key-field").hidden = false;
  setStatus(message);
  $("api-key").focus();
}

function showPowerFields() {
  const smc = $("power-method").value === "smc";
  $("particles-field").hidden = !smc;
  $("power-particles").disabled = !smc;
  $("steps-field").hidden = smc;
  $("mcmc-steps").disabled = smc;
}

function buildColumns() {
  const template = $("column-template");
  for (const route of ROUTES) {
    const section = template.content.firstElementChild.cloneNode(true);
    section.dataset.route = route.kind;
    section.setAttribute("aria-label", `${route.title} route`);
    section.querySelector(".route-name").textContent = route.title;
    $("columns").append(section);
    columns[route.kind] = section;
  }
}

async function loadModels() {
  setStatus("Loading models…");
  let response;
  try {
    response = await fetch("v1/models", { headers: headers() });
  } catch (error) {
    setStatus(`Cannot reach the service: ${error.message}`);
    return false;
  }
  if (!response.ok) {
    const error = await apiError(response);
    if (error.status === 401) askForKey(error.message);
    else setStatus(error.message);
    return false;
  }
  models = (await response.json()).data;
  const select = $("model");
  const chosen = select.value;
  select.replaceChildren();
  for (const card of models.filter((card) => card.route === "plain")) {
    select.append(new Option(card.id, card.id, false, card.id === chosen));
  }
  showRoutes();
  setStatus(select.options.length ? "" : "This service lists no model.");
  return select.options.length > 0;
}

// Each column's model id: the chosen model with its route's suffix, if the service serves it.
function routeModel(route) {
  const id = $("model").value + route.suffix;
  return models.some((card) => card.id === id) ? id : null;
}

function showRoutes() {
  for (const route of ROUTES) {
    const section = columns[route.kind];
    const id = routeModel(route);
    section.querySelector(".model-id").textContent = id || "";
    reset(section);
    if (id === null) {
      section.dataset.state = "absent";
      section.querySelector(".answer").textContent =
        `This service has no ${route.kind} route for ${$("model").value || "this model"}.`;
    }
  }
}

function reset(section) {
  section.dataset.state = "idle";
  section.querySelector(".answer").textContent = "";
  const error = section.querySelector(".error");
  error.hidden = true;
  error.textContent = "";
  for (const stat of section.querySelectorAll("[data-stat]")) stat.textContent = "–";
}

function setStat(section, name, text) {
  section.querySelector(`[data-stat="${name}"]`).textContent = text;
}

function seconds(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

function requestBody(route) {
  const body = {
    model: routeModel(route),
    messages: [{ role: "user", content: $("prompt").value }],
    max_tokens: Number($("max-tokens").value),
    stream: true,
    stream_options: { include_usage: true },
  };
  if (route.kind === "power") {
    body.power_method = $("power-method").value;
    body.power_alpha = Number($("power-alpha").value);
    if (body.power_method === "smc") body.power_particles = Number($("power-particles").value);
    else body.mcmc_steps = Number($("mcmc-steps").value);
  }
  return body;
}

function describeSampler(power) {
  const parts = [power.method, `α ${power.alpha}`];
  if (power.method === "smc") {
    parts.push(`${power.particles} particles`, `${power.resamples} resamples`);
  } else {
    parts.push(`${power.mcmc_steps} steps/block`);
    if (power.acceptance_rate != null) parts.push(`acceptance ${power.acceptance_rate.toFixed(2)}`);
  }
  return parts.join(" · ");
}

// The last chunk (choices: [], with usage): tokens, cost and self-reward.
function showReport(section, chunk) {
  const power = chunk.power;
  const tokens = chunk.usage.completion_tokens;
  setStat(section, "tokens", power ? `${tokens} (engine: ${power.tokens_generated})` : String(tokens));
  const cost = power ? power.cost_multiplier : 1;
  setStat(section, "cost", cost == null ? "– (no tokens returned)" : `${cost.toFixed(1)}×`);
  const reward = chunk.self_reward;
  if (reward) {
    setStat(section, "reward",
      `${reward.mean_logprob.toFixed(3)} per token (sum ${reward.sum_logprob.toFixed(2)})`);
  }
  setStat(section, "sampler", power ? describeSampler(power) : "one pass (no power sampling)");
}

async function runColumn(route) {
  const section = columns[route.kind];
  if (routeModel(route) === null) return;
  reset(section);
  section.dataset.state = "running";
  const answer = section.querySelector(".answer");
  const started = performance.now();
  try {
    const response = await fetch("v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify(requestBody(route)),
    });
    if (!response.ok) throw await apiError(response);
    const cache = response.headers.get("x-powerserve-cache");
    for await (const data of eventData(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(500, chunk.error);
      const text = chunk.choices.length ? chunk.choices[0].delta.content : "";
      if (text) {
        if (!answer.textContent) setStat(section, "ttft", seconds(performance.now() - started));
        answer.textContent += text;
      }
      if (chunk.usage) showReport(section, chunk);
    }
    const total = seconds(performance.now() - started);
    setStat(section, "total", cache === "hit" ? `${total} (cache hit)` : total);
    section.dataset.state = "done";
  } catch (error) {
    const shown = section.querySelector(".error");
    shown.textContent = error.code ? `${error.message} (${error.code})` : error.message;
    shown.hidden = false;
    section.dataset.state = "error";
    if (error.status === 401) askForKey(error.message);
  }
}

async function run(event) {
  event.preventDefault();
  if (!models.length && !(await loadModels())) return;
  const button = $("run");
  button.disabled = true;
  setStatus("Running…");
  await Promise.all(ROUTES.map(runColumn));
  button.disabled = false;
  const failed = Object.values(columns).some((section) => section.dataset.state === "error");
  setStatus(failed ? "Done, with errors." : "Done.");
}

function saveKey() {
  const key = $("api-key").value.trim();
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
  loadModels();
}

function start() {
  buildColumns();
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) {
    $("api-key").value = key;
    $("key-field").hidden = false;
  }
  $("api-key").addEventListener("change", saveKey);
  $("model").addEventListener("change", showRoutes);
  $("power-method").addEventListener("change", showPowerFields);
  $("run-form").addEventListener("submit", run);
  showPowerFields();
  loadModels();
}

start();
