// The review page's viewer (templates/retrieval/_review_viewer.html): the query in one
// Cornerstone3D StackViewport and, once a similar case is selected, that reference case in a
// second one beside it, opened at the matched slice pair with scrolling linked by position
// within the lungs. Config: #review-viewer-config (retrieval/selectors/viewer.py).
// Built by `npm ci && npm run build` in frontend/ into static/viewer/viewer.js.
import {
  init as csInit,
  RenderingEngine,
  Enums,
  getRenderingCapabilities,
  getShouldUseCPURendering,
  setUseCPURendering,
} from "@cornerstonejs/core";
import {
  init as toolsInit,
  addTool,
  ToolGroupManager,
  StackScrollTool,
  WindowLevelTool,
  ZoomTool,
  PanTool,
  Enums as ToolEnums,
} from "@cornerstonejs/tools";
import { registerLoader } from "./loader.js";
import { Pane } from "./pane.js";
import { linkedIndex } from "./sync.js";

const MB = ToolEnums.MouseBindings;
const TOOLS = { scroll: StackScrollTool.toolName, wl: WindowLevelTool.toolName, zoom: ZoomTool.toolName, pan: PanTool.toolName };
const PRIMARY = [{ mouseButton: MB.Primary }, { numTouchPoints: 1 }];
const FIXED = {
  [StackScrollTool.toolName]: [{ mouseButton: MB.Wheel }],
  [ZoomTool.toolName]: [{ mouseButton: MB.Secondary }, { numTouchPoints: 2 }],
  [PanTool.toolName]: [{ mouseButton: MB.Auxiliary }],
  [WindowLevelTool.toolName]: [],
};
const KEY_STEPS = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1, PageDown: 10, PageUp: -10 };

class Viewer {
  constructor(root, config) {
    this.root = root;
    this.config = config;
    this.engine = new RenderingEngine("ild-review-engine");
    this.panes = {};
    root.querySelectorAll(".csv-pane").forEach((el) => { this.panes[el.dataset.pane] = new Pane(this, el); });
    this.query = this.panes.query;
    this.reference = this.panes.reference;
    this.active = this.query;
    this.linked = true;
    this.offset = 0;
    this.compared = null; // the result shown in the reference viewport
    this.hits = new Map(config.results.map((r) => [r.rank, r]));
    this.mode = null;
  }

  camEnabled() {
    const t = document.getElementById("cam-toggle");
    return !t || t.checked;
  }

  camOpacity() {
    const o = document.getElementById("cam-opacity");
    return o ? parseInt(o.value, 10) / 100 : 0.6;
  }

  outlineEnabled() {
    const t = document.getElementById("outline-toggle");
    return !!t && t.checked;
  }

  async start() {
    this.engine.setViewports(
      Object.values(this.panes).map((p) => ({
        viewportId: p.viewportId,
        type: Enums.ViewportType.STACK,
        element: p.element,
        defaultOptions: { background: [0, 0, 0] },
      })),
    );
    [StackScrollTool, WindowLevelTool, ZoomTool, PanTool].forEach((T) => addTool(T));
    const group = ToolGroupManager.createToolGroup("ild-review-tools");
    this.group = group;
    Object.values(TOOLS).forEach((name) => group.addTool(name));
    Object.values(this.panes).forEach((p) => group.addViewport(p.viewportId, this.engine.id));
    for (const [name, bindings] of Object.entries(FIXED)) {
      if (bindings.length) group.setToolActive(name, { bindings });
    }
    const coarse = window.matchMedia && window.matchMedia("(pointer: coarse)").matches;
    this.setMode(coarse ? "scroll" : "wl");
    this.bindUi();
    const q = this.config.query;
    const lw = this.config.presets[this.config.preset];
    await this.query.load(q, q.index, lw);
    const sel = this.hits.get(this.config.selected);
    if (sel) this.query.setCam({ url: sel.queryCam, sliceId: sel.querySlice, ready: sel.camReady, rank: sel.rank });
    new ResizeObserver(() => {
      this.engine.resize(true, true);
      Object.values(this.panes).forEach((p) => p.place());
    }).observe(this.root.querySelector(".csv-panes"));
    this.root.dataset.ready = "1";
    // For the benchmark: when the first slice is on screen (ms since navigation start).
    requestAnimationFrame(() => { this.root.dataset.readyAt = String(Math.round(performance.now())); });
  }

  setMode(mode) {
    if (!TOOLS[mode] || mode === this.mode) return;
    if (this.mode) {
      const old = TOOLS[this.mode];
      this.group.setToolPassive(old);
      if (FIXED[old].length) this.group.setToolActive(old, { bindings: FIXED[old] });
    }
    this.group.setToolActive(TOOLS[mode], { bindings: PRIMARY });
    this.mode = mode;
    this.root.querySelectorAll("[data-mode]").forEach((b) => {
      b.classList.toggle("active", b.dataset.mode === mode);
      b.setAttribute("aria-pressed", String(b.dataset.mode === mode));
    });
  }

  activate(pane) {
    if (pane.root.hidden) return;
    this.active = pane;
    Object.values(this.panes).forEach((p) => p.root.classList.toggle("active", p === pane));
  }

  // Opens result `rank` in the reference viewport at its matched slice, the query at its own.
  async compare(rank) {
    const hit = this.hits.get(rank);
    if (!hit) return false;
    this.compared = null; // no linked scrolling until the new case is in place
    this.root.classList.add("comparing");
    this.reference.root.hidden = false;
    this.reference.role("title").textContent = "#" + hit.rank + " " + hit.label + " · " + hit.diagnosis;
    this.engine.resize(true, true);
    const keep = this.reference.series && !this.reference.series.windowed ? this.reference.windowWL() : null;
    const lw = keep ? [keep[1], keep[0]] : this.config.presets[this.config.preset];
    const refIndex = hit.series.slices.indexOf(hit.referenceSlice);
    await this.reference.load(hit.series, refIndex, lw);
    this.reference.setCam({ url: hit.referenceCam, sliceId: hit.referenceSlice, ready: hit.camReady, rank: hit.rank });
    this.query.setCam({ url: hit.queryCam, sliceId: hit.querySlice, ready: hit.camReady, rank: hit.rank });
    this.compared = hit;
    this.goToPair();
    this.root.dispatchEvent(new CustomEvent("viewer:compare", { detail: { rank } }));
    return true;
  }

  closeComparison() {
    this.compared = null;
    this.reference.root.hidden = true;
    this.reference.setCam(null);
    this.root.classList.remove("comparing");
    this.activate(this.query);
    this.engine.resize(true, true);
  }

  // Both viewports to the matched slice pair; the link offset is that pair's.
  goToPair() {
    const hit = this.compared || this.hits.get(this.config.selected);
    if (!hit) return;
    const qi = this.query.series.slices.indexOf(hit.querySlice);
    if (qi >= 0) this.query.go(qi, true);
    if (this.compared) {
      const ri = this.reference.series.slices.indexOf(hit.referenceSlice);
      if (ri >= 0) this.reference.go(ri, true);
      this.relink(qi, ri);
    }
  }

  relink(qi, ri) {
    const q = this.query.series;
    const r = this.reference.series;
    if (!q || !r) return;
    const i = qi === undefined || qi < 0 ? this.query.index() : qi;
    const j = ri === undefined || ri < 0 ? this.reference.index() : ri;
    this.offset = r.positions[j] - q.positions[i];
  }

  setLinked(on) {
    this.linked = on;
    const t = document.getElementById("link-toggle");
    if (t) t.checked = on;
    if (on && this.compared) this.relink();
    this.root.classList.toggle("unlinked", !on);
  }

  // A viewport moved by the user: move the other one to the same place in the lungs.
  scrolled(pane) {
    if (!this.linked || !this.compared || this.reference.root.hidden) return;
    const q = this.query.series;
    const r = this.reference.series;
    if (pane === this.query) this.reference.go(linkedIndex(q.positions, this.query.index(), r.positions, this.offset), true);
    else this.query.go(linkedIndex(r.positions, this.reference.index(), q.positions, -this.offset), true);
  }

  toggleHelp(show) {
    const dlg = document.getElementById("viewer-help");
    if (!dlg) return;
    const open = show === undefined ? !dlg.open : show;
    if (open && !dlg.open) dlg.showModal();
    else if (!open && dlg.open) dlg.close();
  }

  bindUi() {
    this.root.querySelectorAll("[data-mode]").forEach((b) => b.addEventListener("click", () => this.setMode(b.dataset.mode)));
    document.getElementById("viewer-reset").addEventListener("click", () => this.active.reset());
    document.getElementById("viewer-help-button").addEventListener("click", () => this.toggleHelp(true));
    document.getElementById("link-toggle").addEventListener("change", (e) => this.setLinked(e.target.checked));
    const refresh = () => Object.values(this.panes).forEach((p) => { p.updateCam(); p.updateOutline(); });
    document.getElementById("cam-toggle").addEventListener("change", refresh);
    document.getElementById("cam-opacity").addEventListener("input", refresh);
    document.getElementById("outline-toggle").addEventListener("change", refresh);
    this.reference.role("close").addEventListener("click", () => this.closeComparison());
    document.querySelectorAll(".result-card[data-rank]").forEach((card) => {
      const link = card.querySelector("a.select-result") || card;
      link.addEventListener("click", (e) => {
        const rank = parseInt(card.dataset.rank, 10);
        if (!this.hits.has(rank)) return;
        e.preventDefault();
        this.compare(rank).then(() => {
          // On a phone the grid lies below the viewer: bring the comparison into view.
          const box = this.reference.root.getBoundingClientRect();
          if (box.top < 0 || box.bottom > window.innerHeight) this.reference.root.scrollIntoView({ block: "nearest" });
        });
      });
    });
    document.addEventListener("keydown", (e) => this.onKey(e));
  }

  onKey(e) {
    const tag = (e.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "textarea" || tag === "select" || e.target.isContentEditable) return;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const pane = this.active;
    if (e.key in KEY_STEPS) { e.preventDefault(); pane.go(pane.requested() + KEY_STEPS[e.key]); return; }
    const actions = {
      Home: () => pane.go(0),
      End: () => pane.go(pane.count() - 1),
      "?": () => this.toggleHelp(),
      1: () => pane.preset("lung"),
      2: () => pane.preset("mediastinum"),
      3: () => pane.preset("bone"),
      r: () => pane.reset(),
      l: () => this.setLinked(!this.linked),
      g: () => this.goToPair(),
      s: () => this.setMode("scroll"),
      w: () => this.setMode("wl"),
      z: () => this.setMode("zoom"),
      p: () => this.setMode("pan"),
      c: () => this.toggleCheckbox("cam-toggle"),
      o: () => this.toggleCheckbox("outline-toggle"),
    };
    const act = actions[e.key.length === 1 ? e.key.toLowerCase() : e.key];
    if (act) { e.preventDefault(); act(); }
  }

  toggleCheckbox(id) {
    const t = document.getElementById(id);
    if (!t) return;
    t.checked = !t.checked;
    t.dispatchEvent(new Event("change", { bubbles: true }));
  }

  // For tests and the benchmark: the state each viewport shows.
  state() {
    const one = (p) => p.series && !p.root.hidden ? { index: p.index(), window: p.windowWL(), zoom: p.zoom() } : null;
    return {
      query: one(this.query),
      reference: one(this.reference),
      linked: this.linked,
      compared: this.compared && this.compared.rank,
      renderer: getShouldUseCPURendering() ? "cpu" : "webgl",
    };
  }
}

async function boot() {
  const root = document.getElementById("review-viewer");
  const configEl = document.getElementById("review-viewer-config");
  if (!root || !configEl) return;
  const config = JSON.parse(configEl.textContent);
  if (!config) return;
  csInit();
  // A software WebGL rasterizer (SwiftShader, llvmpipe: no GPU) draws 2-D slices slower than
  // Cornerstone's own canvas path.
  if (getRenderingCapabilities().softwareRasterizer) setUseCPURendering(true);
  toolsInit();
  registerLoader(config.pixelsUrl);
  const viewer = new Viewer(root, config);
  window.ildViewer = viewer;
  try {
    await viewer.start();
  } catch (err) {
    root.dataset.error = String(err && err.message ? err.message : err);
    console.error("viewer failed to start", err);
  }
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
else boot();
