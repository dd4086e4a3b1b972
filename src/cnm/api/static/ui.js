// cnm's live page: the map from GET map, re-fetched on each change event (server-sent
// events from cnmd's event stream); a click shows a container's explain or a port's path (traced).
// Every request carries the page's token.  Plain DOM, no framework, nothing from elsewhere.
"use strict";

const token = new URLSearchParams(location.search).get("token") || "";
const $ = (id) => document.getElementById(id);
let containers = {};        // id -> {name, running, networks: [{network, address}], ports: [text]}
let selected = "";          // container id shown in the detail pane
let busy = false, again = false;

function url(path) {
  return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
}

async function get(path) {
  const r = await fetch(url(path), { cache: "no-store" });
  const body = await r.json();
  if (!r.ok) throw new Error(body.message || r.statusText);
  return body;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}

// "0.0.0.0:8080->80/tcp" -> "8080/tcp"
function hostPort(text) {
  const m = /:(\d+)->\d+\/(\w+)$/.exec(text);
  return m ? m[1] + "/" + m[2] : "";
}

function collect(map) {
  const out = {};
  for (const c of map.containers) {
    out[c.id] = { name: c.name, running: c.running, mode: c.network_mode, networks: [], ports: [] };
  }
  for (const net of map.topology.networks) {
    for (const m of net.members) {
      const c = out[m.container_id] ||= { name: m.container, running: m.running, networks: [], ports: [] };
      c.networks.push({ network: net.name, address: m.address });
      c.ports.push(...m.ports);
    }
  }
  return out;
}

function renderList() {
  const ul = $("containers");
  ul.replaceChildren();
  const ids = Object.keys(containers).sort((a, b) => containers[a].name.localeCompare(containers[b].name));
  for (const id of ids) {
    const c = containers[id];
    const nets = c.networks.map((n) => `${n.network} ${n.address || "-"}`).join(", ") ||
      `no network attached (${c.running ? "" : "not running, "}network mode ${c.mode})`;
    const li = el("li", { "data-id": id, "data-name": c.name, class: id === selected ? "selected" : "" },
      el("b", {}, c.name + (c.running ? "" : " (stopped)")), el("div", { class: "nets" }, nets));
    for (const p of c.ports) {
      const b = el("button", { class: "port", "data-id": id, "data-port": hostPort(p) }, p);
      b.addEventListener("click", (ev) => { ev.stopPropagation(); showPath(id, hostPort(p)); });
      li.append(b);
    }
    li.addEventListener("click", () => showExplain(id));
    ul.append(li);
  }
  if (!ids.length) ul.append(el("li", { class: "empty" }, "no containers"));
}

function renderSvg(svgText) {
  const box = $("map");
  if (!svgText) { box.replaceChildren(el("p", {}, "no drawing (see the problems)")); return; }
  const doc = new DOMParser().parseFromString(svgText, "image/svg+xml");
  const svg = document.importNode(doc.documentElement, true);
  for (const g of svg.querySelectorAll("g.node")) {
    const title = (g.querySelector("title") || {}).textContent || "";
    if (title.startsWith("c:")) {
      const id = title.slice(2);
      g.classList.add("clickable");
      g.dataset.container = id;
      if (id === selected) g.classList.add("selected");
      g.addEventListener("click", () => showExplain(id));
    } else if (title.startsWith("port:")) {
      const text = title.slice(5);
      const owner = Object.keys(containers).find((id) => containers[id].ports.includes(text));
      if (owner) {
        g.classList.add("clickable");
        g.dataset.port = hostPort(text);
        g.addEventListener("click", () => showPath(owner, hostPort(text)));
      }
    }
  }
  box.replaceChildren(svg);
}

async function refresh() {
  if (busy) { again = true; return; }
  busy = true;
  try {
    do {
      again = false;
      const m = await get("map");
      containers = collect(m);
      renderList();
      renderSvg(m.svg);
      $("problems").textContent = (m.problems || []).join("\n");
      const box = $("map");
      box.dataset.version = String(Number(box.dataset.version) + 1);
      $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    } while (again);
  } catch (err) {
    $("problems").textContent = "could not load the map: " + err.message;
  } finally {
    busy = false;
  }
}

function cmd(lines, command, indent) {
  if (command) lines.push(`${indent}  $ ${command}`);
}

function explainText(e) {
  const c = e.commands || {};
  const out = [`container ${e.container} (${e.container_id.slice(0, 12)}), ${e.running ? "running" : "not running"}, network mode ${e.network_mode}`];
  if (e.netns) { out.push(`network namespace ${e.netns}`); cmd(out, c.enter, ""); }
  for (const a of e.attachments || []) {
    const ac = a.commands || {};
    out.push("", `network ${a.network} (${a.driver} driver)`);
    if (a.ifname) {
      out.push(`  ${a.ifname}: ifindex ${a.ifindex}, iflink ${a.iflink}, MAC ${a.mac || "-"}, IP ${a.address || "-"}`);
      cmd(out, ac.inside, "  ");
    }
    if (a.host_ifname) { out.push(`  host veth ${a.host_ifname}: ifindex ${a.host_ifindex}${a.host_alias ? `, alias "${a.host_alias}"` : ""}`); cmd(out, ac.host, "  "); }
    if (a.bridge) { out.push(`  bridge ${a.bridge}: ifindex ${a.bridge_ifindex}`); cmd(out, ac.bridge, "  "); }
    if (a.gateway) out.push(`  gateway ${a.gateway}`);
    for (const p of a.ports || []) {
      const host = p.host_ip.includes(":") ? `[${p.host_ip}]` : p.host_ip;
      out.push(`  published ${host}:${p.host_port} -> ${p.container_port}/${p.protocol}`);
      for (const r of p.rules.length ? p.rules : ["no firewall entry serves it in the kernel"]) out.push(`    ${r}`);
      cmd(out, p.command, "  ");
    }
    for (const l of a.links || []) out.push(`  --link ${l}`);
  }
  if (e.netns) {
    out.push("", "routes inside", ...(e.routes || []).map((r) => "  " + r.text));
    cmd(out, c.routes, "");
    out.push(`default gateway ${e.default_gateway || "none"}`);
  }
  if (e.resolv_conf) { out.push("", "resolv.conf", ...e.resolv_conf.trimEnd().split("\n").map((l) => "  " + l)); cmd(out, c["resolv.conf"], ""); }
  const ct = e.conntrack || [];
  out.push("", `conntrack: ${ct.length} live entr${ct.length === 1 ? "y" : "ies"}`, ...ct.map((l) => "  " + l));
  for (const [k, v] of Object.entries(c)) if (k.startsWith("conntrack ")) cmd(out, v, "");
  for (const p of e.problems || []) out.push(`could not read: ${p}`);
  return out.join("\n") + "\n";
}

function select(id) {
  selected = id;
  for (const li of document.querySelectorAll("#containers li")) li.classList.toggle("selected", li.dataset.id === id);
  for (const g of document.querySelectorAll("#map g.node.clickable")) g.classList.toggle("selected", g.dataset.container === id);
}

async function show(title, kind, load) {
  $("detail-title").textContent = title;
  const pre = $("details");
  pre.dataset.kind = kind;
  pre.textContent = "loading…";
  try {
    pre.textContent = await load();
  } catch (err) {
    pre.textContent = "error: " + err.message;
  }
}

function showExplain(id) {
  select(id);
  const name = (containers[id] || {}).name || id.slice(0, 12);
  return show(`explain ${name}`, "explain", async () => explainText(await get(`explain/${encodeURIComponent(id)}`)));
}

function showPath(id, port) {
  select(id);
  const name = (containers[id] || {}).name || id.slice(0, 12);
  return show(`path of ${port} to ${name}`, "path", async () => {
    // the trace engine's walk from the world (as `cnm trace world host:PORT/PROTO`)
    const p = await get(`path/${encodeURIComponent(id)}?port=${encodeURIComponent(port)}`);
    const lines = p.source ? [`trace ${p.source} -> ${p.destination}`] : [];
    p.steps.forEach((s, i) => lines.push(`${i + 1}. [${s.step}] ${s.text}` + (s.command ? `\n     $ ${s.command}` : "")));
    if (p.verdict) lines.push(`=> ${p.verdict}` + (p.reason ? `: ${p.reason}` : ""));
    (p.problems || []).forEach((note) => lines.push(`note: ${note}`));
    return lines.join("\n") + "\n";
  });
}

function listen() {
  const source = new EventSource(url("events"));
  source.addEventListener("open", () => {
    $("status").textContent = "live";
    $("status").className = "live";
    refresh();  // whatever changed while the stream was down
  });
  source.addEventListener("change", () => refresh());
  source.addEventListener("error", () => {
    $("status").textContent = "reconnecting";
    $("status").className = "down";
  });
}

listen();
