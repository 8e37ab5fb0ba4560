// One viewport of the review viewer: a Cornerstone StackViewport plus its own window (presets,
// typed W/L), slice slider, HU probe, zoom readout, CAM overlay and lung outline. The CAM and
// the outline are an <img>/<canvas> over the viewport, placed on the image's corners after
// every render, so they follow zoom and pan.
import { Enums, imageLoader, utilities } from "@cornerstonejs/core";
import { imageIdFor, describeSeries, pixelAt, pixelsOf } from "./loader.js";
import { lungRegion, drawOutline } from "./lungs.js";

const POLL_MS = 2000;
const PREFETCH = 4; // slices fetched ahead of (and behind) the one shown
const POLL_TRIES = 90;

function clamp(v, lo, hi) {
  return Math.max(lo, Math.min(hi, v));
}

function readyUrl(url) {
  return url + (url.indexOf("?") < 0 ? "?" : "&") + "ready=1";
}

export class Pane {
  constructor(app, root) {
    this.app = app;
    this.root = root;
    this.name = root.dataset.pane;
    this.viewportId = "ild-" + this.name;
    this.element = this.role("element");
    this.slider = this.role("slider");
    this.camImg = this.role("cam");
    this.camStatus = this.role("cam-status");
    this.outline = this.role("outline");
    this.series = null;
    this.wl = null; // [width, level] the reader chose
    this.current = null;
    this.cam = null; // { url, sliceId, ready, token }
    this.outlineFor = null;
    this.quietIndex = null; // an index set by linked scrolling: do not propagate it back
    this.pending = null; // an index asked for and not shown yet
    this.bind();
  }

  role(name) {
    return this.root.querySelector("[data-role=" + name + "]");
  }

  get viewport() {
    return this.app.engine.getViewport(this.viewportId);
  }

  // The slice shown: Cornerstone announces a new image (STACK_NEW_IMAGE) before it updates
  // its own current index, so the pane keeps the index from the event.
  index() {
    if (this.current !== null && this.current !== undefined) return this.current;
    return this.viewport ? this.viewport.getCurrentImageIdIndex() : 0;
  }

  imageId() {
    return this.series ? imageIdFor(this.series.slices[this.index()]) : null;
  }

  count() {
    return this.series ? this.series.slices.length : 0;
  }

  async load(series, index, windowLW) {
    describeSeries(series);
    this.series = series;
    this.outlineFor = null;
    const ids = series.slices.map(imageIdFor);
    this.slider.max = String(ids.length - 1);
    const start = clamp(index, 0, ids.length - 1);
    this.current = start;
    this.pending = null;
    this.quietIndex = null;
    this.loading = true;
    try {
      await this.viewport.setStack(ids, start);
    } finally {
      this.loading = false;
    }
    this.viewport.resetCamera();
    // 8-bit images already windowed (2-D references from PNG/JPEG) are shown as stored.
    const lw = series.windowed ? this.app.config.greyWindow : windowLW;
    if (lw) this.setWindow(lw[1], lw[0]);
    this.root.classList.toggle("windowed", !!series.windowed);
    this.viewport.render();
    this.refresh();
  }

  // The slice asked for last (shown or still loading): key steps count from it.
  requested() {
    return this.pending !== null ? this.pending : this.index();
  }

  // Moves to slice i; `quiet` marks it as set by the linked viewport: images shown until it
  // arrives are not echoed back to the other viewport.
  go(i, quiet) {
    if (!this.series) return;
    const target = clamp(i, 0, this.count() - 1);
    if (target === this.requested()) return;
    this.pending = target;
    this.quietIndex = quiet ? target : null;
    this.viewport.setImageIdIndex(target);
  }

  setWindow(width, level) {
    const w = Math.max(1, Number(width));
    const l = Number(level);
    if (!Number.isFinite(w) || !Number.isFinite(l)) return;
    this.wl = [w, l];
    this.viewport.setProperties({ voiRange: { lower: l - w / 2, upper: l + w / 2 } });
    this.viewport.render();
    this.showWindow();
  }

  // The window the reader chose, from the viewport (a W/L drag changes it there).
  windowWL() {
    const r = this.viewport && this.viewport.getProperties().voiRange;
    if (!r) return this.wl ? [Math.round(this.wl[0]), Math.round(this.wl[1])] : null;
    return [Math.round(r.upper - r.lower), Math.round((r.upper + r.lower) / 2)];
  }

  // Cornerstone's CPU renderer keeps drawing with the reader's window on a new slice but
  // reports (and lets the W/L tool start from) the slice's default: put the chosen one back.
  keepWindow() {
    if (!this.wl) return;
    const [w, l] = this.wl;
    const r = this.viewport.getProperties().voiRange;
    if (r && Math.abs(r.upper - r.lower - w) < 0.5 && Math.abs((r.upper + r.lower) / 2 - l) < 0.5) return;
    this.viewport.setProperties({ voiRange: { lower: l - w / 2, upper: l + w / 2 } }, true);
    this.showWindow();
  }

  preset(name) {
    if (this.series && this.series.windowed) return; // no HU to window
    const lw = this.app.config.presets[name];
    if (lw) this.setWindow(lw[1], lw[0]);
  }

  reset() {
    this.viewport.resetCamera();
    this.preset(this.app.config.preset);
    this.viewport.render();
  }

  zoomBy(factor) {
    this.viewport.setZoom(this.viewport.getZoom() * factor);
    this.viewport.render();
  }

  showWindow() {
    const wl = this.windowWL();
    if (!wl) return;
    this.role("wl-readout").textContent = "W " + wl[0] + " L " + wl[1];
    const ww = this.role("ww");
    const wc = this.role("wc");
    if (document.activeElement !== ww) ww.value = String(wl[0]);
    if (document.activeElement !== wc) wc.value = String(wl[1]);
    this.root.querySelectorAll("[data-preset]").forEach((b) => {
      const lw = this.app.config.presets[b.dataset.preset];
      b.classList.toggle("active", !!lw && lw[0] === wl[1] && lw[1] === wl[0]);
    });
  }

  // Zoom relative to "whole image fits the viewport" (1.00), from where the image's corners
  // are drawn: the same figure with WebGL and with the CPU renderer (whose own zoom value is
  // an absolute scale).
  zoom() {
    const box = this.imageBox();
    if (!box) return 1;
    const rect = this.element.getBoundingClientRect();
    const fit = Math.min(rect.width / box.worldWidth, rect.height / box.worldHeight);
    return fit > 0 ? box.width / (box.worldWidth * fit) : 1;
  }

  showZoom() {
    if (!this.viewport) return;
    this.role("zoom").textContent = this.zoom().toFixed(2) + "×";
  }

  // The image's rectangle in canvas (CSS pixel) coordinates, and its size in millimetres.
  imageBox() {
    const vp = this.viewport;
    const imageId = this.imageId();
    const p = imageId && pixelsOf(imageId);
    if (!vp || !p) return null;
    let a;
    let b;
    try {
      a = vp.worldToCanvas(utilities.imageToWorldCoords(imageId, [0, 0]));
      b = vp.worldToCanvas(utilities.imageToWorldCoords(imageId, [p.cols, p.rows]));
    } catch {
      return null; // not drawn yet
    }
    if (!a || !b || !a.every(Number.isFinite) || !b.every(Number.isFinite)) return null;
    const [rowSpacing, colSpacing] = this.series.spacing || [1, 1];
    return {
      left: Math.min(a[0], b[0]),
      top: Math.min(a[1], b[1]),
      width: Math.abs(b[0] - a[0]),
      height: Math.abs(b[1] - a[1]),
      worldWidth: p.cols * (colSpacing || 1),
      worldHeight: p.rows * (rowSpacing || 1),
    };
  }

  // Fetches the next slices in the scrolling direction (and a few behind) into Cornerstone's
  // cache, so that the next steps draw without waiting for the network.
  prefetch() {
    if (!this.series) return;
    const i = this.index();
    const dir = this.direction || 1;
    const ids = [];
    for (let d = 1; d <= PREFETCH; d++) ids.push(i + dir * d, i - dir * Math.ceil(d / 2));
    for (const j of ids) {
      if (j < 0 || j >= this.count()) continue;
      imageLoader.loadAndCacheImage(imageIdFor(this.series.slices[j])).catch(() => {});
    }
  }

  // Slice label, slider, CAM visibility and outline for the current slice.
  refresh() {
    if (!this.series) return;
    const i = this.index();
    this.role("slice").textContent = "Slice " + (i + 1) + " / " + this.count();
    this.slider.value = String(i);
    this.element.setAttribute("aria-label", this.role("title").textContent + ": slice " + (i + 1) + " of " + this.count());
    this.showWindow();
    this.updateCam();
    this.updateOutline();
    // Zoom readout and overlay placement follow on IMAGE_RENDERED: Cornerstone announces the
    // new image before its CPU renderer has the image's geometry.
  }

  // Shows `cam` ({ url, sliceId, ready }) on its slice; polls while the worker computes it.
  setCam(cam) {
    const token = {};
    this.cam = cam ? { ...cam, token } : null;
    this.camImg.hidden = true;
    this.camImg.removeAttribute("src");
    delete this.camImg.dataset.src;
    if (!cam || !cam.url) { this.updateCam(); return; }
    const show = (url) => {
      if (!this.cam || this.cam.token !== token) return;
      this.cam.ready = true;
      this.camImg.src = url;
      this.camImg.dataset.src = url;
      this.updateCam();
    };
    if (cam.ready) { show(readyUrl(cam.url)); return; }
    const poll = (tries) => {
      if (!this.cam || this.cam.token !== token) return;
      fetch(cam.url, { cache: "no-store", credentials: "same-origin" }).then((r) => {
        if (r.status === 200) show(readyUrl(cam.url));
        else if (r.status === 202 && tries > 1) setTimeout(() => poll(tries - 1), POLL_MS);
        else this.updateCam(r.status === 202 ? "CAM not ready yet" : "CAM unavailable");
      }).catch(() => { if (tries > 1) setTimeout(() => poll(tries - 1), POLL_MS); });
    };
    this.updateCam();
    poll(POLL_TRIES);
  }

  updateCam(problem) {
    const cam = this.cam;
    const status = this.camStatus;
    const hint = this.role("cam-hint");
    const goPair = this.role("go-pair");
    if (!cam || !this.series) {
      this.camImg.hidden = true;
      status.hidden = true;
      hint.textContent = "";
      goPair.hidden = true;
      return;
    }
    const camIndex = this.series.slices.indexOf(cam.sliceId);
    const here = camIndex === this.index();
    const enabled = this.app.camEnabled();
    this.camImg.hidden = !(cam.ready && here && enabled);
    this.camImg.style.opacity = String(this.app.camOpacity());
    status.hidden = !(here && enabled && !cam.ready);
    status.textContent = problem || "CAM computing…";
    goPair.hidden = here || camIndex < 0;
    hint.textContent = camIndex < 0 ? "" : here ? (cam.ready ? "CAM of result #" + cam.rank : "") : "CAM on slice " + (camIndex + 1);
  }

  updateOutline() {
    if (!this.app.outlineEnabled() || !this.series) {
      this.outline.hidden = true;
      return;
    }
    const imageId = this.imageId();
    const p = pixelsOf(imageId);
    if (!p) { this.outline.hidden = true; return; }
    if (this.outlineFor !== imageId) {
      drawOutline(this.outline, lungRegion(p.data, p.rows, p.cols, p.hu), p.rows, p.cols);
      this.outlineFor = imageId;
    }
    this.outline.hidden = false;
  }

  // Puts the overlays on the image's corners in canvas (CSS pixel) coordinates.
  place() {
    const box = this.imageBox();
    if (!box) return;
    for (const el of [this.camImg, this.outline]) {
      el.style.left = box.left + "px";
      el.style.top = box.top + "px";
      el.style.width = box.width + "px";
      el.style.height = box.height + "px";
    }
  }

  probe(evt) {
    const vp = this.viewport;
    const imageId = this.imageId();
    if (!vp || !imageId) return;
    const rect = this.element.getBoundingClientRect();
    let ij;
    try {
      const world = vp.canvasToWorld([evt.clientX - rect.left, evt.clientY - rect.top]);
      ij = utilities.worldToImageCoords(imageId, world);
    } catch {
      return; // not drawn yet
    }
    const col = Math.floor(ij[0]);
    const row = Math.floor(ij[1]);
    const px = pixelAt(imageId, col, row);
    this.role("probe").textContent = px === null ? "HU –" : (px.hu ? "HU " : "grey ") + px.value + " (" + col + ", " + row + ")";
  }

  bind() {
    const E = Enums.Events;
    this.element.addEventListener(E.STACK_NEW_IMAGE, (evt) => {
      const before = this.index();
      if (evt.detail && Number.isInteger(evt.detail.imageIdIndex)) this.current = evt.detail.imageIdIndex;
      const i = this.index();
      if (i !== before) this.direction = i > before ? 1 : -1;
      const quiet = this.quietIndex !== null;
      if (i === this.quietIndex) this.quietIndex = null;
      if (i === this.pending) this.pending = null;
      this.refresh();
      if (!quiet && !this.loading) this.app.scrolled(this);
      this.prefetch();
    });
    this.element.addEventListener(E.VOI_MODIFIED, () => {
      const r = this.viewport.getProperties().voiRange;
      if (r) this.wl = [r.upper - r.lower, (r.upper + r.lower) / 2];
      this.showWindow();
    });
    this.element.addEventListener(E.CAMERA_MODIFIED, () => { this.showZoom(); this.place(); });
    this.element.addEventListener(E.IMAGE_RENDERED, () => { this.keepWindow(); this.showZoom(); this.place(); });
    this.element.addEventListener("pointermove", (e) => this.probe(e));
    this.element.addEventListener("pointerleave", () => { this.role("probe").textContent = "HU –"; });
    this.element.addEventListener("pointerdown", () => this.app.activate(this));
    this.element.addEventListener("focus", () => this.app.activate(this));
    this.element.addEventListener("contextmenu", (e) => e.preventDefault());
    this.slider.addEventListener("input", () => this.go(parseInt(this.slider.value, 10)));
    this.root.querySelectorAll("[data-preset]").forEach((b) => {
      b.addEventListener("click", () => this.preset(b.dataset.preset));
    });
    const typed = () => this.setWindow(this.role("ww").value, this.role("wc").value);
    for (const name of ["ww", "wc"]) {
      const input = this.role(name);
      input.addEventListener("change", typed);
      input.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); typed(); } });
    }
    this.role("go-pair").addEventListener("click", () => this.app.goToPair());
  }
}
