"use strict";
// The web viewer: sends the pasted note to this service's /v1/extract and draws the answer.
// Note text only ever enters the DOM as text nodes (textContent), never as markup.
// DOM contract (service-contract.md): every entity and modifier is one element with data-span-id,
// data-type, data-start, data-end whose text is the note's text at those offsets; every relation
// is one element with data-entity and data-modifier (span ids).
(function () {
  const config = JSON.parse(document.getElementById("config").textContent);
  const $ = (id) => document.getElementById(id);
  const form = $("form"), note = $("note"), policy = $("policy"), key = $("api-key");
  const status = $("status"), submit = $("submit");

  for (const name of config.policies) {
    const opt = document.createElement("option");
    opt.value = name;
    opt.textContent = name === config.default_policy ? name + " (default)" : name;
    if (name === config.default_policy) opt.selected = true;
    policy.appendChild(opt);
  }
  if (config.auth) $("key-field").hidden = false;

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function legend(result) {
    const box = $("legend");
    box.replaceChildren();
    const seen = new Map();
    for (const s of result.entities) seen.set(s.type, "entity");
    for (const s of result.modifiers) if (!seen.has(s.type)) seen.set(s.type, "modifier");
    for (const [type, kind] of seen) {
      const item = el("span", { "data-legend": type });
      item.appendChild(el("i", { class: kind === "modifier" ? "mod" : "" }));
      item.appendChild(document.createTextNode(type + (kind === "modifier" ? " (modifier)" : "")));
      box.appendChild(item);
    }
    const band = el("span");
    band.appendChild(el("i", { class: "llm" }));
    band.appendChild(document.createTextNode("answered by the LLM tier"));
    box.appendChild(band);
  }

  // Spans nest into a forest (longer first at equal starts); a span that overlaps another only in
  // part cannot be an element inside the text without breaking the DOM contract, so it is listed
  // apart, as an element of its own.
  function forest(spans) {
    const sorted = spans.slice().sort((a, b) => a.start - b.start || b.end - a.end);
    const roots = [], apart = [], stack = [];
    for (const s of sorted) {
      while (stack.length && stack[stack.length - 1].span.end <= s.start) stack.pop();
      const parent = stack[stack.length - 1];
      if (parent && s.end > parent.span.end) { apart.push(s); continue; }
      const node = { span: s, children: [] };
      (parent ? parent.children : roots).push(node);
      stack.push(node);
    }
    return { roots, apart };
  }

  function mark(s) {
    return el("mark", {
      "data-span-id": s.id, "data-type": s.type, "data-start": s.start, "data-end": s.end,
      "data-kind": s.kind, title: s.type + " " + s.id + " (confidence " + s.confidence.toFixed(2) + ")",
    });
  }

  // Plain text between spans, cut where an LLM-answered range begins or ends. `text` is an array
  // of code points: the service's offsets count code points, JS strings count UTF-16 units.
  function appendText(parent, text, from, to, ranges) {
    let i = from;
    while (i < to) {
      const inside = ranges.find((r) => r.start <= i && i < r.end);
      let j = to;
      if (inside) j = Math.min(to, inside.end);
      else for (const r of ranges) if (r.start > i && r.start < j) j = r.start;
      const piece = text.slice(i, j).join("");
      parent.appendChild(inside ? el("span", { class: "llm" }, piece) : document.createTextNode(piece));
      i = j;
    }
  }

  function fill(parent, text, from, to, nodes, ranges) {
    let at = from;
    for (const node of nodes) {
      appendText(parent, text, at, node.span.start, ranges);
      const m = mark(node.span);
      // inside a span its own colour shows; the LLM band is drawn around spans, not through them
      fill(m, text, node.span.start, node.span.end, node.children, []);
      parent.appendChild(m);
      at = node.span.end;
    }
    appendText(parent, text, at, to, ranges);
  }

  function routeTable(result) {
    const dl = $("route");
    dl.replaceChildren();
    const r = result.route;
    const rows = [
      ["tier", r.tier],
      ["escalated", r.escalated ? "yes — " + (r.escalated_ranges || []).length + " part(s) to the LLM tier" : "no"],
      ["reason", r.reason],
      ["models", Object.entries(result.models || {}).map(([k, v]) => k + ": " + v).join(", ")],
      ["timings", Object.entries(result.timings_ms || {}).map(([k, v]) => k + " " + v.toFixed(1) + " ms").join(", ")],
      ["found", result.entities.length + " entities, " + result.modifiers.length + " modifiers, " +
        result.relations.length + " relations"],
    ];
    for (const [k, v] of rows) {
      dl.appendChild(el("dt", {}, k));
      dl.appendChild(el("dd", { "data-route": k }, v));
    }
  }

  function render(note, result) {
    const text = Array.from(note);
    const spans = result.entities.map((s) => ({ ...s, kind: "entity" }))
      .concat(result.modifiers.map((s) => ({ ...s, kind: "modifier" })));
    const byId = new Map(spans.map((s) => [s.id, s]));
    const ranges = (result.route.escalated_ranges || []).slice().sort((a, b) => a.start - b.start);
    routeTable(result);
    legend(result);
    const { roots, apart } = forest(spans);
    const box = $("rendered");
    box.replaceChildren();
    fill(box, text, 0, text.length, roots, ranges);
    const overlaps = $("overlaps");
    overlaps.replaceChildren();
    for (const s of apart) {
      const li = el("li");
      const m = mark(s);
      m.textContent = text.slice(s.start, s.end).join("");
      li.appendChild(m);
      li.appendChild(el("span", { class: "conf" }, "[" + s.start + ", " + s.end + ")"));
      overlaps.appendChild(li);
    }
    $("overlap-box").hidden = apart.length === 0;
    const list = $("relations");
    list.replaceChildren();
    for (const rel of result.relations) {
      const e = byId.get(rel.entity), m = byId.get(rel.modifier);
      const li = el("li", { class: "relation", "data-entity": rel.entity, "data-modifier": rel.modifier });
      li.appendChild(el("span", {}, e.type + " “" + e.text + "”"));
      li.appendChild(el("span", { class: "arrow" }, "has"));
      li.appendChild(el("span", {}, m.type + " “" + m.text + "”"));
      li.appendChild(el("span", { class: "conf" }, rel.confidence.toFixed(2)));
      const marks = () => box.parentNode.querySelectorAll(
        '[data-span-id="' + CSS.escape(rel.entity) + '"], [data-span-id="' + CSS.escape(rel.modifier) + '"]');
      li.addEventListener("mouseenter", () => marks().forEach((x) => x.classList.add("hl")));
      li.addEventListener("mouseleave", () => marks().forEach((x) => x.classList.remove("hl")));
      list.appendChild(li);
    }
    $("relation-count").textContent = "(" + result.relations.length + ")";
    $("result").hidden = false;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = note.value;
    status.className = "";
    status.textContent = "extracting…";
    submit.disabled = true;
    const headers = { "content-type": "application/json" };
    if (config.auth && key.value) headers.authorization = "Bearer " + key.value;
    try {
      const response = await fetch(config.extract_url, {
        method: "POST", headers, credentials: "omit", cache: "no-store",
        body: JSON.stringify({ text, policy: policy.value }),
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) {
        const err = body.error || { code: "http_" + response.status, message: response.statusText };
        const wait = response.headers.get("retry-after");
        throw new Error(response.status + " " + err.code + ": " + err.message + (wait ? " (retry after " + wait + " s)" : ""));
      }
      render(text, body);
      status.textContent = "done";
      document.body.dataset.state = "done";
    } catch (exc) {
      status.className = "error";
      status.textContent = String(exc.message || exc);
      document.body.dataset.state = "error";
    } finally {
      submit.disabled = false;
    }
  });
})();
