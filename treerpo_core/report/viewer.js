// Tree viewer of `treerpo report`: pick a dumped step and prompt, see the tree layered by depth, click a node.
// Everything from the run (completions are untrusted model text) is written with textContent, never as HTML.
"use strict";

(function () {
  const DATA = JSON.parse(document.getElementById("tree-data").textContent);
  const SVG_NS = "http://www.w3.org/2000/svg";
  const MIN_SLOT = 30, MAX_SLOT = 90;  // horizontal room per leaf (px): small trees spread out, big ones scroll
  const LAYER = 74;       // vertical distance between depths (px)
  const RADIUS = 10;
  const MARGIN = { left: 64, right: 24, top: 26, bottom: 40 };
  const KIND_LETTER = { root: "R", forced: "F", entropy: "E", coverage: "C", sample: "S" };
  const VERDICT_GLYPH = { PASS: ["✓", "v-pass"], FAIL: ["✗", "v-fail"], ERROR: ["!", "v-error"], TIMEOUT: ["T", "v-timeout"] };

  const $ = (id) => document.getElementById(id);
  const stepSelect = $("step-select"), promptSelect = $("prompt-select"), canvas = $("tree-canvas");
  let current = null;      // {tree, byId, children}

  function fmt(x) {
    if (x === null || x === undefined) return "—";
    return String(Number(x.toFixed(4)));
  }

  function rewardColour(r) {
    if (r === null || r === undefined) return "#9aa3ad";
    const c = Math.max(0, Math.min(1, r));
    return `hsl(${Math.round(120 * c)}, 62%, ${c > 0.5 ? 38 : 45}%)`;
  }

  function leavesOf(tree) {
    const parents = new Set(tree.nodes.map((n) => n.parent));
    return tree.nodes.filter((n) => n.parent !== null && !parents.has(n.id));
  }

  function option(select, value, label) {
    const o = document.createElement("option");
    o.value = value;
    o.textContent = label;
    select.appendChild(o);
  }

  // -- layout: leaves get consecutive columns in depth-first order; a parent sits over its children --------
  function layout(tree) {
    const byId = new Map(tree.nodes.map((n) => [n.id, n]));
    const children = new Map(tree.nodes.map((n) => [n.id, []]));
    for (const n of tree.nodes) {
      if (n.parent !== null && children.has(n.parent)) children.get(n.parent).push(n.id);
    }
    const x = new Map();
    let column = 0;
    const seen = new Set();
    function place(id) {
      if (seen.has(id)) return;  // a malformed dump must not loop forever
      seen.add(id);
      const kids = children.get(id).filter((k) => !seen.has(k));
      if (kids.length === 0) {
        x.set(id, column++);
        return;
      }
      kids.forEach(place);
      x.set(id, (x.get(kids[0]) + x.get(kids[kids.length - 1])) / 2);
    }
    const roots = tree.nodes.filter((n) => n.parent === null || !byId.has(n.parent));
    roots.forEach((r) => place(r.id));
    return { byId, children, x, columns: Math.max(column, 1) };
  }

  function pathTo(id) {
    const out = [];
    let n = current.byId.get(id);
    const guard = new Set();
    while (n && !guard.has(n.id)) {
      guard.add(n.id);
      out.push(n);
      n = n.parent === null ? null : current.byId.get(n.parent);
    }
    return out.reverse();
  }

  function svgEl(name, attrs, parent) {
    const el = document.createElementNS(SVG_NS, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (parent) parent.appendChild(el);
    return el;
  }

  function draw(tree) {
    const lay = layout(tree);
    current = { tree, byId: lay.byId, children: lay.children };
    const maxDepth = Math.max(0, ...tree.nodes.map((n) => n.depth));
    const room = canvas.clientWidth - MARGIN.left - MARGIN.right;
    const SLOT = Math.max(MIN_SLOT, Math.min(MAX_SLOT, room / lay.columns));
    const width = MARGIN.left + MARGIN.right + lay.columns * SLOT;
    const height = MARGIN.top + MARGIN.bottom + maxDepth * LAYER;
    const px = (n) => MARGIN.left + (lay.x.get(n.id) + 0.5) * SLOT;
    const py = (n) => MARGIN.top + n.depth * LAYER;

    canvas.replaceChildren();
    const svg = svgEl("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" }, canvas);
    for (let d = 0; d <= maxDepth; d++) {
      const t = svgEl("text", { x: 6, y: MARGIN.top + d * LAYER + 4, class: "depth-label" }, svg);
      t.textContent = `depth ${d}`;
    }
    const edges = svgEl("g", {}, svg);
    for (const n of tree.nodes) {
      const p = n.parent === null ? null : lay.byId.get(n.parent);
      if (!p || !lay.x.has(n.id) || !lay.x.has(p.id)) continue;
      const midY = (py(p) + py(n)) / 2;
      svgEl("path", {
        d: `M${px(p)},${py(p)} C${px(p)},${midY} ${px(n)},${midY} ${px(n)},${py(n)}`,
        class: "edge", "data-child": n.id,
      }, edges);
    }
    const leaves = new Set(leavesOf(tree).map((n) => n.id));
    for (const n of tree.nodes) {
      if (!lay.x.has(n.id)) continue;
      const g = svgEl("g", {
        class: "node" + (leaves.has(n.id) ? " leaf" : ""), "data-node-id": n.id, tabindex: 0, role: "button",
        transform: `translate(${px(n)},${py(n)})`,
      }, svg);
      const title = svgEl("title", {}, g);
      title.textContent = `node ${n.id} · ${n.kind} · reward ${fmt(n.reward)}` + (n.verdict ? ` · ${n.verdict}` : "");
      if (n.kind === "root") {
        svgEl("rect", { x: -RADIUS, y: -RADIUS, width: 2 * RADIUS, height: 2 * RADIUS, rx: 3, fill: rewardColour(n.reward) }, g);
      } else {
        svgEl("circle", { r: RADIUS, fill: rewardColour(n.reward) }, g);
      }
      const letter = svgEl("text", { class: "kind", "text-anchor": "middle", dy: "0.35em" }, g);
      letter.textContent = KIND_LETTER[n.kind] || "?";
      if (leaves.has(n.id) && n.verdict) {
        const [glyph, cls] = VERDICT_GLYPH[n.verdict] || ["?", ""];
        const v = svgEl("text", { class: "verdict " + cls, "text-anchor": "middle", y: RADIUS + 16 }, g);
        v.textContent = glyph;
      }
      g.addEventListener("click", () => select(n.id));
      g.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(n.id); }
      });
    }
  }

  function select(id) {
    const n = current.byId.get(id);
    const path = pathTo(id);
    const onPath = new Set(path.map((p) => p.id));
    canvas.querySelectorAll(".node").forEach((g) => g.classList.toggle("selected", Number(g.dataset.nodeId) === id));
    canvas.querySelectorAll(".edge").forEach((e) => e.classList.toggle("on-path", onPath.has(Number(e.dataset.child))));

    const field = (name, value) => { document.querySelector(`#node-fields [data-field="${name}"]`).textContent = value; };
    field("id", String(n.id));
    field("kind", n.kind);
    field("depth", String(n.depth));
    field("tokens", String(n.tokens));
    field("split_entropy", n.split_entropy === null ? "— (no split below)" : fmt(n.split_entropy) + " nats");
    field("verdict", n.verdict || "— (not a leaf)");
    field("reward", fmt(n.reward));
    field("advantage", fmt(n.advantage));
    $("node-text").textContent = n.text;

    const pathEl = $("node-path");
    pathEl.replaceChildren();
    path.forEach((p, i) => {
      const span = document.createElement("span");
      span.className = p.id === id ? "seg-this" : (i % 2 ? "seg-odd" : "seg-even");
      span.title = `node ${p.id} (${p.kind})`;
      span.textContent = p.text;
      pathEl.appendChild(span);
    });
    $("node-hint").hidden = true;
    $("node-body").hidden = false;
  }

  function showTree() {
    const step = DATA.steps[Number(stepSelect.value)];
    const tree = step.trees[Number(promptSelect.value)];
    const leaves = leavesOf(tree);
    const passed = leaves.filter((n) => n.verdict === "PASS").length;
    const maxDepth = Math.max(0, ...tree.nodes.map((n) => n.depth));
    $("tree-stats").textContent =
      `step ${step.step} · prompt ${tree.prompt_id} · ${tree.nodes.length} nodes · ${leaves.length} leaves · ` +
      `max depth ${maxDepth} · ${passed}/${leaves.length} leaves pass`;
    $("prompt-text").textContent = tree.prompt_text === null ? "(prompt text not available: no tokenizer in the run directory)" : tree.prompt_text;
    $("reference-text").textContent = tree.reference;
    $("info-text").textContent = JSON.stringify(tree.info, null, 2);
    draw(tree);
    $("node-hint").hidden = false;
    $("node-body").hidden = true;
  }

  function fillPrompts() {
    promptSelect.replaceChildren();
    DATA.steps[Number(stepSelect.value)].trees.forEach((t, i) => {
      const leaves = leavesOf(t);
      const passed = leaves.filter((n) => n.verdict === "PASS").length;
      option(promptSelect, i, `${t.prompt_id} · ${leaves.length} leaves · ${passed} pass`);
    });
  }

  if (DATA.steps.length === 0) {
    $("no-trees").hidden = false;
    stepSelect.disabled = promptSelect.disabled = true;
    return;
  }
  DATA.steps.forEach((s, i) => {
    const count = s.trees.length < s.dumped ? `${s.trees.length} of ${s.dumped} prompts` : `${s.dumped} prompt${s.dumped === 1 ? "" : "s"}`;
    option(stepSelect, i, `step ${s.step} · ${count}`);
  });
  stepSelect.value = String(DATA.steps.length - 1);  // the latest dump is what one usually wants to see
  fillPrompts();
  showTree();
  stepSelect.addEventListener("change", () => { fillPrompts(); showTree(); });
  promptSelect.addEventListener("change", showTree);
})();
