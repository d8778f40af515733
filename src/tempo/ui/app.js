// tracelake's trace view: a client of the Tempo HTTP API it is served with (the same calls
// Grafana makes). Search at `/`, a trace's waterfall at `/trace/<id>`. No dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "tracelake.token";

// ---------------------------------------------------------------------------------------
// The API, with the bearer token when one was given.

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  let response;
  try {
    response = await fetch(path, { headers });
  } catch (e) {
    throw new ApiError(0, "the server did not answer: " + e.message);
  }
  const text = await response.text();
  if (response.status === 401) {
    $("token-form").hidden = false;
    throw new ApiError(401, "this server needs a bearer token: enter it at the top right");
  }
  if (!response.ok) throw new ApiError(response.status, text.trim() || response.statusText);
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ApiError(response.status, "the answer is not JSON: " + e.message);
  }
}

// Tag names in paths are encoded twice, as Grafana sends them.
const tagPath = (tag) => encodeURIComponent(encodeURIComponent(tag));

// ---------------------------------------------------------------------------------------
// Formatting.

function formatDuration(ns) {
  const n = Number(ns);
  if (n < 1e3) return n + " ns";
  if (n < 1e6) return (n / 1e3).toPrecision(3) + " µs";
  if (n < 1e9) return (n / 1e6).toPrecision(3) + " ms";
  return (n / 1e9).toPrecision(3) + " s";
}

function formatTime(ns) {
  const ms = Number(BigInt(ns) / 1000000n);
  return new Date(ms).toISOString().replace("T", " ").replace("Z", " UTC");
}

function serviceColor(name) {
  let h = 0;
  for (const c of name || "") h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return `hsl(${h % 360}, 62%, 52%)`;
}

// An OTLP/JSON AnyValue as [type, text].
function anyValue(v) {
  if (!v) return ["empty", ""];
  if ("stringValue" in v) return ["string", v.stringValue];
  if ("intValue" in v) return ["int", String(v.intValue)];
  if ("doubleValue" in v) return ["double", String(v.doubleValue)];
  if ("boolValue" in v) return ["bool", String(v.boolValue)];
  if ("bytesValue" in v) return ["bytes", String(v.bytesValue)];
  if ("arrayValue" in v) {
    const items = (v.arrayValue.values || []).map((x) => anyValue(x));
    const type = items.length ? items[0][0] : "empty";
    return [`array<${type}>`, "[" + items.map((x) => x[1]).join(", ") + "]"];
  }
  if ("kvlistValue" in v) {
    const items = (v.kvlistValue.values || []).map((kv) => kv.key + ": " + anyValue(kv.value)[1]);
    return ["map", "{" + items.join(", ") + "}"];
  }
  return ["empty", ""];
}

const KINDS = ["unspecified", "internal", "server", "client", "producer", "consumer"];
function kindName(kind) {
  if (typeof kind === "number") return KINDS[kind] || String(kind);
  return String(kind || "").replace(/^SPAN_KIND_/, "").toLowerCase() || "unspecified";
}
function statusName(status) {
  const code = status ? status.code : 0;
  if (code === 2 || code === "STATUS_CODE_ERROR") return "error";
  if (code === 1 || code === "STATUS_CODE_OK") return "ok";
  return "unset";
}

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
}

function setStatus(id, kind, message) {
  const node = $(id);
  node.className = "status " + kind;
  node.textContent = message;
}

// ---------------------------------------------------------------------------------------
// Search.

const RANGE_MAX_SECONDS = 604800;

function windowSeconds() {
  const range = $("range").value;
  if (range === "custom") {
    const from = Date.parse($("from").value);
    const to = Date.parse($("to").value);
    if (Number.isNaN(from) || Number.isNaN(to)) throw new ApiError(400, "pick both ends of the custom range");
    return [Math.floor(from / 1000), Math.ceil(to / 1000)];
  }
  const end = Math.ceil(Date.now() / 1000) + 60;
  return [end - 60 - Number(range), end];
}

function literal(value) {
  const v = value.trim();
  if (/^".*"$/.test(v)) return v;
  if (/^-?\d+$/.test(v) || /^-?\d+\.\d+$/.test(v) || v === "true" || v === "false") return v;
  return JSON.stringify(v);
}

// Splits `key=value` pairs (space or newline separated; quoted values may hold spaces).
function attributePairs(text) {
  const pairs = [];
  const re = /([^\s=]+)\s*=\s*("(?:[^"\\]|\\.)*"|\S+)/g;
  let m;
  while ((m = re.exec(text)) !== null) pairs.push([m[1], m[2]]);
  return pairs;
}

function buildQuery() {
  const raw = $("traceql").value.trim();
  if (raw) return raw;
  const conditions = [];
  if ($("service").value) conditions.push(`resource.service.name = ${JSON.stringify($("service").value)}`);
  if ($("span-name").value.trim()) conditions.push(`name = ${JSON.stringify($("span-name").value.trim())}`);
  for (const [key, value] of attributePairs($("attributes").value)) {
    const scoped = /^(span|resource)\./.test(key) || key.startsWith(".") ? key : "." + key;
    conditions.push(`${scoped} = ${literal(value)}`);
  }
  if ($("status").value) conditions.push(`status = ${$("status").value}`);
  if ($("min-duration").value.trim()) conditions.push(`duration >= ${$("min-duration").value.trim()}`);
  if ($("max-duration").value.trim()) conditions.push(`duration <= ${$("max-duration").value.trim()}`);
  return conditions.length ? `{ ${conditions.join(" && ")} }` : "{ }";
}

// The form's state in the address, so a search can be shared and the back button works.
const FORM_FIELDS = ["service", "span-name", "status", "min-duration", "max-duration", "range", "from", "to", "limit", "attributes", "traceql"];

function formToUrl() {
  const params = new URLSearchParams();
  for (const f of FORM_FIELDS) if ($(f).value) params.set(f, $(f).value);
  return "/?" + params.toString();
}

function urlToForm() {
  const params = new URLSearchParams(location.search);
  for (const f of FORM_FIELDS) if (params.has(f)) $(f).value = params.get(f);
  showCustomRange();
  return params.toString() !== "";
}

function showCustomRange() {
  for (const n of document.querySelectorAll(".custom-range")) n.hidden = $("range").value !== "custom";
}

async function runSearch() {
  const table = $("results");
  table.hidden = true;
  let query, start, end;
  try {
    query = buildQuery();
    [start, end] = windowSeconds();
  } catch (e) {
    setStatus("search-status", "error", e.message);
    return;
  }
  $("query-shown").textContent = query;
  setStatus("search-status", "loading", "Searching…");
  const limit = Math.max(1, Math.min(1000, Number($("limit").value) || 20));
  const params = new URLSearchParams({ q: query, limit: String(limit), spss: "3", start: String(start), end: String(end) });
  let answer;
  try {
    answer = await api("/api/search?" + params.toString());
  } catch (e) {
    setStatus("search-status", "error", `The search failed (${e.status || "no answer"}): ${e.message}`);
    return;
  }
  const traces = answer.traces || [];
  if (traces.length === 0) {
    setStatus("search-status", "empty", "No traces match in this time range.");
    return;
  }
  const body = table.querySelector("tbody");
  body.replaceChildren();
  for (const t of traces) {
    let spans = 0;
    let errors = 0;
    for (const s of Object.values(t.serviceStats || {})) {
      spans += Number(s.spanCount || 0);
      errors += Number(s.errorCount || 0);
    }
    const row = el("tr", { "data-trace-id": t.traceID, class: "result" }, [
      el("td", {}, [el("span", { class: "service-dot" }), t.rootServiceName || "<root not yet received>"]),
      el("td", { text: t.rootTraceName || "" }),
      el("td", { text: formatTime(t.startTimeUnixNano) }),
      el("td", { text: formatDuration(Number(t.durationMs || 0) * 1e6) }),
      el("td", { class: "spans", text: String(spans) }),
      el("td", { class: "errors" + (errors ? " some" : ""), text: String(errors) }),
      el("td", {}, [el("a", { href: "/trace/" + t.traceID, text: t.traceID })]),
    ]);
    row.addEventListener("click", (e) => {
      if (e.target.tagName !== "A") location.href = "/trace/" + t.traceID;
    });
    body.append(row);
  }
  table.hidden = false;
  setStatus("search-status", "done", `${traces.length} trace${traces.length === 1 ? "" : "s"}, newest first.`);
}

async function fillPickers() {
  let start, end;
  try {
    [start, end] = windowSeconds();
  } catch (e) {
    return;
  }
  const w = `start=${start}&end=${end}`;
  const keep = $("service").value;
  try {
    const services = await api(`/api/v2/search/tag/${tagPath("resource.service.name")}/values?${w}`);
    const select = $("service");
    select.replaceChildren(el("option", { value: "", text: "any" }));
    for (const v of services.tagValues || []) select.append(el("option", { value: v.value, text: v.value }));
    select.value = keep;
    const names = await api(`/api/v2/search/tag/${tagPath("name")}/values?${w}`);
    $("span-names").replaceChildren(...(names.tagValues || []).map((v) => el("option", { value: v.value })));
    const tags = await api(`/api/v2/search/tags?${w}`);
    const keys = [];
    for (const scope of tags.scopes || []) {
      if (scope.name === "span" || scope.name === "resource") for (const t of scope.tags) keys.push(scope.name + "." + t);
    }
    $("tag-hint").textContent = keys.length ? "keys: " + keys.slice(0, 40).join(", ") : "no attribute keys in this range";
  } catch (e) {
    // The pickers are a convenience; the search reports errors itself.
  }
}

function showSearch() {
  $("search-view").hidden = false;
  const hasQuery = urlToForm();
  fillPickers();
  $("range").addEventListener("change", () => {
    showCustomRange();
    fillPickers();
  });
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    history.pushState(null, "", formToUrl());
    runSearch();
  });
  window.addEventListener("popstate", () => {
    urlToForm();
    runSearch();
  });
  if (hasQuery) runSearch();
  else setStatus("search-status", "idle", "Search by service, span name, attributes, duration or TraceQL.");
}

// ---------------------------------------------------------------------------------------
// The trace: spans ordered as `trace_tree` orders them.

function spansOf(answer) {
  const spans = [];
  const batches = (answer.trace && answer.trace.resourceSpans) || answer.batches || [];
  for (const rs of batches) {
    const resource = (rs.resource && rs.resource.attributes) || [];
    const service = resource.find((kv) => kv.key === "service.name");
    const serviceName = service ? anyValue(service.value)[1] : "";
    for (const ss of rs.scopeSpans || []) {
      for (const s of ss.spans || []) {
        spans.push({
          id: s.spanId || "",
          parent: s.parentSpanId || null,
          name: s.name || "",
          kind: kindName(s.kind),
          status: statusName(s.status),
          statusMessage: (s.status && s.status.message) || "",
          start: BigInt(s.startTimeUnixNano || 0),
          end: BigInt(s.endTimeUnixNano || 0),
          attributes: s.attributes || [],
          events: s.events || [],
          links: s.links || [],
          service: serviceName,
          resource,
          scope: ss.scope || {},
        });
      }
    }
  }
  return spans;
}

// Depth-first pre-order; siblings and roots by (start, span id). A span whose parent is not
// in the trace is a root (`orphan`); a repeated span id keeps its first occurrence as the
// parent of children (`duplicate_span_id`); a parent cycle is broken at its earliest span
// (`cycle`). The same rules as the `trace_tree` SQL function.
function treeOrder(spans) {
  const n = spans.length;
  const sorted = [...spans.keys()].sort((a, b) => {
    const x = spans[a], y = spans[b];
    if (x.start !== y.start) return x.start < y.start ? -1 : 1;
    if (x.id !== y.id) return x.id < y.id ? -1 : 1;
    return a - b;
  });
  const rank = new Array(n);
  const anomaly = new Array(n).fill(null);
  const first = new Map();
  sorted.forEach((i, k) => {
    rank[i] = k;
    if (first.has(spans[i].id)) anomaly[i] = "duplicate_span_id";
    else first.set(spans[i].id, i);
  });
  const parentOf = new Array(n).fill(null);
  const children = Array.from({ length: n }, () => []);
  const roots = [];
  for (const i of sorted) {
    const p = spans[i].parent === null ? undefined : first.get(spans[i].parent);
    if (p !== undefined && p !== i) {
      parentOf[i] = p;
      children[p].push(i);
    } else {
      if (spans[i].parent !== null && p === undefined && anomaly[i] === null) anomaly[i] = "orphan";
      else if (p === i) anomaly[i] = "cycle";
      roots.push(i);
    }
  }
  const out = [];
  const visited = new Array(n).fill(false);
  const walk = (startSpan) => {
    const stack = [[startSpan, 0]];
    while (stack.length) {
      const [span, depth] = stack.pop();
      if (visited[span]) continue;
      visited[span] = true;
      out.push({ index: span, depth, anomaly: anomaly[span] });
      const kids = children[span];
      for (let c = kids.length - 1; c >= 0; c--) stack.push([kids[c], depth + 1]);
    }
  };
  for (const r of roots) walk(r);
  const stamp = new Array(n).fill(-1);
  sorted.forEach((i, k) => {
    if (visited[i]) return;
    let onCycle = i;
    while (stamp[onCycle] !== k) {
      stamp[onCycle] = k;
      if (parentOf[onCycle] === null) break;
      onCycle = parentOf[onCycle];
    }
    let earliest = onCycle;
    let member = onCycle;
    while (parentOf[member] !== null) {
      const p = parentOf[member];
      if (p === onCycle) break;
      if (rank[p] < rank[earliest]) earliest = p;
      member = p;
    }
    anomaly[earliest] = "cycle";
    walk(earliest);
  });
  return out;
}

function attributeTable(list, label, cls) {
  const rows = list.map((kv) => {
    const [type, text] = anyValue(kv.value);
    return el("tr", { "data-key": kv.key, "data-type": type }, [
      el("td", { class: "key", text: kv.key }),
      el("td", { class: "value", text }),
      el("td", { class: "type", text: type }),
    ]);
  });
  if (!rows.length) return [el("h3", { text: label }), el("p", { class: "hint", text: "none" })];
  return [el("h3", { text: label }), el("table", { class: cls }, [el("tbody", {}, rows)])];
}

function showDetails(span, t0) {
  const details = $("details");
  const facts = [
    ["service", span.service],
    ["kind", span.kind],
    ["status", span.status + (span.statusMessage ? `: ${span.statusMessage}` : "")],
    ["span id", span.id],
    ["parent id", span.parent || "(root)"],
    ["start", "+" + formatDuration(span.start - t0)],
    ["duration", formatDuration(span.end - span.start)],
    ["scope", [span.scope.name, span.scope.version].filter(Boolean).join(" ")],
  ];
  const parts = [
    el("h2", { text: span.name }),
    el("table", { class: "facts" }, [el("tbody", {}, facts.map(([k, v]) => el("tr", { "data-fact": k }, [el("td", { class: "key", text: k }), el("td", { text: v })])))]),
    ...attributeTable(span.attributes, "Attributes", "attributes"),
    ...attributeTable(span.resource, "Resource", "resource"),
    el("h3", { text: "Events" }),
  ];
  if (!span.events.length) parts.push(el("p", { class: "hint", text: "none" }));
  for (const e of span.events) {
    const at = e.timeUnixNano ? "+" + formatDuration(BigInt(e.timeUnixNano) - t0) : "";
    parts.push(el("div", { class: "event", "data-event": e.name || "" }, [el("strong", { text: `${e.name || ""} ${at}` }), ...attributeTable(e.attributes || [], "Event attributes", "event-attributes").slice(1)]));
  }
  parts.push(el("h3", { text: "Links" }));
  if (!span.links.length) parts.push(el("p", { class: "hint", text: "none" }));
  for (const l of span.links) {
    parts.push(el("div", { class: "link", "data-link": l.traceId || "" }, [
      el("a", { href: "/trace/" + l.traceId, text: `${l.traceId} / ${l.spanId}` }),
      ...attributeTable(l.attributes || [], "Link attributes", "link-attributes").slice(1),
    ]));
  }
  details.replaceChildren(...parts);
}

async function showTrace(id) {
  const began = performance.now();
  $("trace-view").hidden = false;
  $("trace-title").textContent = "Trace " + id;
  document.title = "tracelake: trace " + id;
  setStatus("trace-status", "loading", "Loading…");
  let answer;
  try {
    answer = await api("/api/v2/traces/" + encodeURIComponent(id));
  } catch (e) {
    const message = e.status === 404 ? `Trace ${id} was not found.` : `The trace could not be read (${e.status || "no answer"}): ${e.message}`;
    setStatus("trace-status", "error", message);
    return;
  }
  const spans = spansOf(answer);
  if (!spans.length) {
    setStatus("trace-status", "empty", `Trace ${id} has no spans.`);
    return;
  }
  const order = treeOrder(spans);
  let t0 = spans[0].start;
  let t1 = spans[0].end;
  for (const s of spans) {
    if (s.start < t0) t0 = s.start;
    if (s.end > t1) t1 = s.end;
  }
  const total = Number(t1 - t0) || 1;
  const ticks = $("ticks");
  ticks.replaceChildren(...[0, 0.25, 0.5, 0.75, 1].map((f) => el("span", {
    class: f === 1 ? "last" : "",
    text: formatDuration(Math.round(total * f)),
    style: `left: ${f === 0 ? 2 : f * 100}%`,
  })));
  const fragment = document.createDocumentFragment();
  order.forEach(({ index, depth, anomaly }, position) => {
    const s = spans[index];
    const left = (Number(s.start - t0) / total) * 100;
    const width = (Number(s.end - s.start) / total) * 100;
    const label = el("div", { class: "span-label", style: `padding-left: ${8 + depth * 14}px` }, [
      el("span", { class: "service", style: `background: ${serviceColor(s.service)}` }),
      el("span", { class: "name", text: s.name }),
      el("span", { class: "svc", text: s.service }),
    ]);
    if (anomaly) label.append(el("span", { class: "anomaly", text: anomaly }));
    const bar = el("div", { class: "bar", style: `left: ${left}%; width: ${width}%; background: ${serviceColor(s.service)}` });
    const track = el("div", { class: "span-track" }, [bar, el("span", { class: "bar-label", style: `left: ${Math.min(left + width, 90)}%`, text: formatDuration(s.end - s.start) })]);
    const row = el("div", {
      class: "span-row" + (s.status === "error" ? " error" : ""),
      "data-span-id": s.id,
      "data-depth": String(depth),
      "data-order": String(position),
      "data-service": s.service,
      "data-left": left.toFixed(4),
      "data-width": width.toFixed(4),
      "data-anomaly": anomaly || "",
    }, [label, track]);
    row.addEventListener("click", () => {
      for (const r of document.querySelectorAll(".span-row.selected")) r.classList.remove("selected");
      row.classList.add("selected");
      showDetails(s, t0);
    });
    fragment.append(row);
  });
  $("rows").replaceChildren(fragment);
  $("trace-body").hidden = false;
  const services = new Set(spans.map((s) => s.service)).size;
  const errors = spans.filter((s) => s.status === "error").length;
  setStatus("trace-status", "done", `${spans.length} spans, ${services} service${services === 1 ? "" : "s"}, ${errors} error${errors === 1 ? "" : "s"}, ${formatDuration(total)}, started ${formatTime(t0)}.`);
  // Rendering time (fetch to rows in the document), for the tests' log.
  requestAnimationFrame(() => {
    document.body.dataset.renderMs = String(Math.round(performance.now() - began));
  });
}

// ---------------------------------------------------------------------------------------

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value);
  location.reload();
});
if (sessionStorage.getItem(TOKEN_KEY)) $("token-form").hidden = false;

const traceMatch = location.pathname.match(/^\/trace\/([^/]+)\/?$/);
if (traceMatch) showTrace(decodeURIComponent(traceMatch[1]));
else showSearch();
