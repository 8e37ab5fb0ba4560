// Slice viewer of the study page: mouse wheel, arrow keys, Page Up/Down, Home/End and the
// slider move through the series; preset links switch the display window without reloading.
// Without JavaScript the same links reload the page with ?slice= and ?preset=.
(function () {
  "use strict";
  const configEl = document.getElementById("viewer-config");
  const viewer = document.getElementById("viewer");
  if (!configEl || !viewer) return;
  const config = JSON.parse(configEl.textContent);
  const slices = config.slices;
  const img = document.getElementById("viewer-image");
  const slider = document.getElementById("viewer-slider");
  const label = document.getElementById("viewer-index");
  const presets = document.querySelectorAll("[data-preset]");
  let index = config.index;
  let preset = config.preset;
  const cache = new Map();

  function urlFor(i) {
    return config.urlTemplate.replace("{pk}", slices[i]) + "?preset=" + encodeURIComponent(preset);
  }

  function preload(i) {
    if (i < 0 || i >= slices.length) return;
    const url = urlFor(i);
    if (!cache.has(url)) {
      const im = new Image();
      im.src = url;
      cache.set(url, im);
    }
  }

  function show(i) {
    index = Math.max(0, Math.min(slices.length - 1, i));
    img.src = urlFor(index);
    img.alt = "Slice " + (index + 1) + " of " + slices.length;
    slider.value = String(index);
    label.textContent = "Slice " + (index + 1) + " / " + slices.length;
    presets.forEach(function (a) { a.classList.toggle("active", a.dataset.preset === preset); });
    const params = new URLSearchParams(window.location.search);
    params.set("slice", String(index));
    params.set("preset", preset);
    history.replaceState(null, "", "?" + params.toString());
    for (let d = 1; d <= 3; d++) { preload(index + d); preload(index - d); }
  }

  viewer.addEventListener("wheel", function (e) {
    e.preventDefault();
    show(index + (e.deltaY > 0 ? 1 : -1));
  }, { passive: false });

  const steps = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1, PageDown: 10, PageUp: -10 };
  document.addEventListener("keydown", function (e) {
    const tag = (e.target.tagName || "").toLowerCase();
    // Form fields (the slider included) handle their own keys.
    if (tag === "input" || tag === "textarea" || tag === "select" || e.target.isContentEditable) return;
    if (e.key in steps) { e.preventDefault(); show(index + steps[e.key]); }
    else if (e.key === "Home") { e.preventDefault(); show(0); }
    else if (e.key === "End") { e.preventDefault(); show(slices.length - 1); }
  });

  slider.addEventListener("input", function () { show(parseInt(slider.value, 10)); });
  document.getElementById("viewer-prev").addEventListener("click", function (e) { e.preventDefault(); show(index - 1); });
  document.getElementById("viewer-next").addEventListener("click", function (e) { e.preventDefault(); show(index + 1); });
  presets.forEach(function (a) {
    a.addEventListener("click", function (e) {
      e.preventDefault();
      preset = a.dataset.preset;
      cache.clear();
      show(index);
    });
  });
  viewer.focus({ preventScroll: true });
  for (let d = 1; d <= 3; d++) { preload(index + d); preload(index - d); }
})();
