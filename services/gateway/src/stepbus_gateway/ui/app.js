// The stepbus task timeline: a plain client of the gateway's public API (no build step).
//
// Security notes:
// - The API key lives in sessionStorage: it survives a reload of this tab but not closing it,
//   and other tabs never see it. localStorage would keep a bearer key on disk indefinitely;
//   a cookie would need a server-side session the gateway does not have (and CSRF defences).
// - Everything taken from events (tool outputs are untrusted) is rendered with textContent,
//   never innerHTML.
// - EventSource cannot send an Authorization header, so task streams are read with fetch()
//   and their SSE frames parsed here.
"use strict";

const KEY_STORAGE = "stepbus.apiKey";
const LIST_REFRESH_MS = 2000;
const RECONNECT_MS = 1000;
const FOLD_AFTER = 160; // characters shown before long text is folded into <details>
const TERMINAL = new Set(["stepbus.task.completed", "stepbus.task.failed", "stepbus.task.cancelled"]);
const TRACEPARENT = /^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$/;
const TRACE_ID = /^[0-9a-f]{32}$/;

const $ = (id) => document.getElementById(id);

let config = { trace_url_template: null };
let leaveView = () => {}; // stops the current view's timers and streams

// ---- API ---------------------------------------------------------------------------------

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE); // null: not signed in; "": open development mode
}

function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function errorOf(response) {
  let message = response.statusText || "request failed";
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (_) {
    // not JSON: keep the status text
  }
  return new ApiError(response.status, `${response.status}: ${message}`);
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: authHeaders(options.headers || {}),
    cache: "no-store",
  });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

function handleError(err) {
  if (err instanceof ApiError && err.status === 401) {
    signOut(`Signed out: ${err.message}`);
    return;
  }
  showError(err.message || String(err));
}

// ---- small DOM helpers (text only) -------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function folded(text, label) {
  // Long text (thoughts, tool outputs) folded: a short summary, the whole text on demand.
  if (text.length <= FOLD_AFTER && !text.includes("\n")) return el("p", { class: "text", text });
  const summary = el("summary", { text: label || `${text.slice(0, FOLD_AFTER).split("\n")[0]}…` });
  return el("details", {}, summary, el("pre", { text }));
}

function localTime(iso) {
  const date = new Date(iso);
  return el("time", { datetime: iso, text: isNaN(date) ? iso : date.toLocaleString() });
}

function age(iso) {
  const seconds = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
  if (!isFinite(seconds)) return "";
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function show(viewId) {
  for (const id of ["login-view", "list-view", "task-view"]) $(id).hidden = id !== viewId;
  const signedIn = apiKey() !== null;
  $("logout").hidden = !signedIn;
  $("nav-tasks").hidden = !signedIn;
}

// ---- sign in -----------------------------------------------------------------------------

function signOut(message = "") {
  sessionStorage.removeItem(KEY_STORAGE);
  leaveView();
  leaveView = () => {};
  // Nothing of the previous key's tenant stays on the page.
  $("task-rows").replaceChildren();
  $("no-tasks").hidden = true;
  $("timeline").replaceChildren();
  $("who").textContent = "";
  showError(message);
  show("login-view");
  $("api-key").value = "";
  $("api-key").focus();
}

async function signIn(event) {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
  $("api-key").value = "";
  try {
    await api("/v1/tasks?limit=1"); // checks the key before showing anything
  } catch (err) {
    signOut(err.message);
    return;
  }
  showError("");
  route();
}

// ---- the task list -----------------------------------------------------------------------

function showList() {
  show("list-view");
  let timer = null;
  let stopped = false;
  const refresh = async () => {
    try {
      const body = await api("/v1/tasks?limit=50");
      if (stopped) return;
      renderList(body.tasks);
      showError("");
    } catch (err) {
      if (!stopped) handleError(err);
    }
    if (!stopped) timer = setTimeout(refresh, LIST_REFRESH_MS);
  };
  refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function renderList(tasks) {
  const rows = tasks.map((task) => {
    const link = el("a", { href: `#/tasks/${encodeURIComponent(task.task_id)}`, text: task.task_id });
    const updated = el("td", { title: new Date(task.updated_at).toLocaleString(), text: age(task.updated_at) });
    return el(
      "tr",
      { "data-task-id": task.task_id },
      el("td", {}, link),
      el("td", {}, el("span", { class: `status status-${task.status}`, text: task.status })),
      el("td", { text: task.steps === null ? "–" : String(task.steps) }),
      updated,
    );
  });
  $("task-rows").replaceChildren(...rows);
  $("no-tasks").hidden = tasks.length > 0;
}

// ---- one task ----------------------------------------------------------------------------

function showTask(taskId) {
  show("task-view");
  $("task-id").textContent = taskId;
  $("copied").textContent = "";
  $("not-found").hidden = true;
  $("task-status").textContent = "…";
  $("task-status").className = "status";
  $("task-steps").textContent = "…";
  $("stream-state").textContent = "connecting";
  $("timeline").replaceChildren();
  const controller = new AbortController();
  const state = { taskId, lastEventId: null, seen: new Set(), ended: false, approvals: new Map() };
  refreshSummary(state, controller.signal);
  follow(state, controller.signal);
  return () => controller.abort();
}

async function refreshSummary(state, signal) {
  try {
    const task = await api(`/v1/tasks/${encodeURIComponent(state.taskId)}`, { signal });
    $("task-status").textContent = task.status;
    $("task-status").className = `status status-${task.status}`;
    $("task-steps").textContent = task.steps === null ? "–" : String(task.steps);
  } catch (err) {
    if (signal.aborted) return;
    if (err instanceof ApiError && err.status === 404) notFound(state.taskId);
    else handleError(err);
  }
}

function notFound(taskId) {
  $("not-found").textContent = `Task not found: no task ${taskId} for this API key's tenant.`;
  $("not-found").hidden = false;
  $("task-status").textContent = "not found";
  $("task-status").className = "status status-failed";
  $("task-steps").textContent = "–";
  $("stream-state").textContent = "closed";
}

async function follow(state, signal) {
  // Read the task's SSE stream until its terminal event, reconnecting with Last-Event-ID
  // (the gateway then sends every later event once) when the connection drops before it.
  while (!state.ended && !signal.aborted) {
    try {
      const headers = authHeaders({ Accept: "text/event-stream" });
      if (state.lastEventId !== null) headers["Last-Event-ID"] = state.lastEventId;
      const url = `/v1/tasks/${encodeURIComponent(state.taskId)}/events`;
      const response = await fetch(url, { headers, signal, cache: "no-store" });
      if (response.status === 404) return notFound(state.taskId);
      if (!response.ok) throw await errorOf(response);
      $("stream-state").textContent = "live";
      for await (const frame of sseFrames(response.body)) {
        if (frame.id !== null) state.lastEventId = frame.id;
        if (frame.data) onEvent(state, JSON.parse(frame.data), signal);
        if (state.ended) break;
      }
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError && (err.status === 401 || err.status === 403)) return handleError(err);
      $("stream-state").textContent = `reconnecting (${err.message})`;
    }
    if (!state.ended && !signal.aborted) {
      $("stream-state").textContent = "reconnecting";
      await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
    }
  }
  if (state.ended) $("stream-state").textContent = "ended";
}

async function* sseFrames(body) {
  // The SSE wire format: frames separated by a blank line; "field: value" lines; ":" comments.
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const frame = { id: null, event: "message", data: "" };
        const data = [];
        for (const line of block.split("\n")) {
          if (!line || line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? "" : line.slice(colon + 1);
          if (value.startsWith(" ")) value = value.slice(1);
          if (field === "id") frame.id = value;
          else if (field === "event") frame.event = value;
          else if (field === "data") data.push(value);
        }
        frame.data = data.join("\n");
        if (frame.id !== null || data.length) yield frame;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function onEvent(state, event, signal) {
  if (state.seen.has(event.id)) return;
  state.seen.add(event.id);
  $("timeline").append(renderEvent(state, event));
  if (TERMINAL.has(event.type)) state.ended = true;
  refreshSummary(state, signal);
}

// ---- timeline entries --------------------------------------------------------------------

const STAGE_LABELS = {
  accepted: "accepted",
  memory: "memory recall",
  thought: "thought",
  action: "action",
  observation: "observation",
  critique: "critic",
  approval: "approval",
};

function renderEvent(state, event) {
  const data = event.data || {};
  let kind = event.type;
  const body = [];
  switch (event.type) {
    case "stepbus.task.progress":
      kind = STAGE_LABELS[data.stage] || data.stage || "progress";
      if (data.tool) kind += ` · ${data.tool}`;
      body.push(folded(String(data.message || "")));
      break;
    case "stepbus.approval.requested":
      kind = "approval waiting";
      body.push(approvalForm(state, event));
      break;
    case "stepbus.approval.resolved":
      kind = `approval ${data.outcome}`;
      body.push(el("p", { class: "text", text: `${data.tool}: ${data.outcome}${data.by ? ` by ${data.by}` : ""}${data.reason ? ` (${data.reason})` : ""}` }));
      settleApproval(state, data.approval_id, data.outcome);
      break;
    case "stepbus.task.completed":
      kind = "answer";
      body.push(el("p", { class: "answer", text: String(data.output) }));
      body.push(el("p", { class: "muted", text: completedNote(data) }));
      break;
    case "stepbus.task.failed":
      kind = `failed: ${data.reason}`;
      body.push(el("p", { class: "text", text: String(data.message || "") }));
      break;
    case "stepbus.task.cancelled":
      kind = "cancelled";
      body.push(el("p", { class: "text", text: data.reason || "cancelled on request" }));
      break;
    default:
      body.push(folded(JSON.stringify(data, null, 2), "details"));
  }
  const step = data.step !== undefined ? el("span", { class: "step", text: `step ${data.step}` }) : null;
  const head = el("div", { class: "head" }, el("strong", { class: "kind", text: kind }), step,
    event.time ? localTime(event.time) : null, traceLink(event));
  const family = event.type.replace(/^stepbus\./, "").replace(/\W/g, "-");
  return el("li", { class: `event event-${family}`, "data-type": event.type }, head, ...body);
}

function completedNote(data) {
  const parts = [`${data.steps} LLM step${data.steps === 1 ? "" : "s"}`];
  const usage = data.usage || {};
  const tokens = (usage.prompt_tokens || 0) + (usage.completion_tokens || 0);
  if (tokens) parts.push(`${tokens} tokens`);
  if (data.critic && typeof data.critic.score === "number") parts.push(`critic score ${data.critic.score.toFixed(2)}`);
  return parts.join(", ");
}

function traceLink(event) {
  // The task's trace id is on its `accepted` progress event (data.trace_id); an event carrying
  // a CloudEvents `traceparent` extension links to its own span.
  const template = config.trace_url_template;
  const data = event.data || {};
  let match = typeof event.traceparent === "string" && TRACEPARENT.exec(event.traceparent);
  if (!match && typeof data.trace_id === "string" && TRACE_ID.test(data.trace_id)) {
    match = [null, data.trace_id, ""];
  }
  if (!template || !match) return null;
  const href = template.replaceAll("{trace_id}", match[1]).replaceAll("{span_id}", match[2]);
  if (!/^https?:\/\//i.test(href)) return null; // never a javascript: or data: link
  return el("a", { class: "trace", href, target: "_blank", rel: "noopener noreferrer", text: `trace ${match[1].slice(0, 8)}…` });
}

function approvalForm(state, event) {
  const data = event.data;
  const who = data.approvers && data.approvers.length ? ` (needs role ${data.approvers.join(" or ")})` : "";
  const box = el("div", { class: "approval" });
  box.append(el("p", { class: "text", text: `${data.tool} waits for approval${who}: rule ${data.rule}${data.reason ? `, ${data.reason}` : ""}` }));
  box.append(folded(JSON.stringify(data.arguments || {}, null, 2), "arguments"));
  if (data.expires_at) box.append(el("p", { class: "muted" }, "expires ", localTime(data.expires_at)));
  const reasonId = `reason-${state.approvals.size}`;
  const reason = el("input", { id: reasonId, type: "text", maxlength: "2000" });
  const approve = el("button", { type: "button", class: "approve", text: "Approve" });
  const deny = el("button", { type: "button", class: "deny", text: "Deny" });
  const result = el("p", { class: "decision", role: "status" });
  box.append(el("label", { for: reasonId, text: "Reason (optional)" }), reason,
    el("div", { class: "buttons" }, approve, deny), result);
  const decide = async (decision) => {
    approve.disabled = deny.disabled = true;
    result.textContent = "sending…";
    try {
      const path = `/v1/tasks/${encodeURIComponent(state.taskId)}/approvals/${encodeURIComponent(data.approval_id)}`;
      await api(path, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ decision, reason: reason.value }),
      });
      result.textContent = `${decision === "approve" ? "approval" : "denial"} sent`;
    } catch (err) {
      result.textContent = `could not ${decision}: ${err.message}`;
      result.classList.add("failed");
      approve.disabled = deny.disabled = false;
    }
  };
  approve.addEventListener("click", () => decide("approve"));
  deny.addEventListener("click", () => decide("deny"));
  state.approvals.set(data.approval_id, { approve, deny, result, reason });
  return box;
}

function settleApproval(state, approvalId, outcome) {
  const form = state.approvals.get(approvalId);
  if (!form) return;
  form.approve.disabled = form.deny.disabled = form.reason.disabled = true;
  form.result.classList.remove("failed");
  form.result.textContent = `decided: ${outcome}`;
}

// ---- routing -----------------------------------------------------------------------------

function route() {
  leaveView();
  leaveView = () => {};
  if (apiKey() === null) return signOut($("error").textContent);
  $("who").textContent = apiKey() ? `key …${apiKey().slice(-4)}` : "open mode";
  const match = /^#\/tasks\/([^/]+)$/.exec(location.hash);
  if (match) leaveView = showTask(decodeURIComponent(match[1]));
  else leaveView = showList();
}

async function start() {
  $("login-form").addEventListener("submit", signIn);
  $("logout").addEventListener("click", () => signOut());
  $("copy-id").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText($("task-id").textContent);
      $("copied").textContent = "copied";
    } catch (err) {
      $("copied").textContent = `could not copy (${err.message})`;
    }
  });
  window.addEventListener("hashchange", route);
  try {
    const response = await fetch("config.json", { cache: "no-store" });
    if (response.ok) config = await response.json();
  } catch (_) {
    // no config: no trace links
  }
  route();
}

start();
