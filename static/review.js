// Review page: CAM overlays (toggle + opacity) on the query viewer and the result cards,
// selecting a result (its radiomics table, its query slice and CAM in the viewer), and the
// k / diagnosis filter submitting on change. The slice viewer itself is static/viewer.js.
// Without JavaScript the result links reload the page with ?sel=.
(function () {
  "use strict";
  const configEl = document.getElementById("review-config");
  if (!configEl) return;
  const config = JSON.parse(configEl.textContent);
  const viewerConfigEl = document.getElementById("viewer-config");
  const slices = viewerConfigEl ? JSON.parse(viewerConfigEl.textContent).slices : [];
  const hits = new Map(config.hits.map(function (h) { return [h.rank, h]; }));
  const viewerImg = document.getElementById("viewer-image");
  const viewerCam = document.getElementById("viewer-cam");
  const slider = document.getElementById("viewer-slider");
  const toggle = document.getElementById("cam-toggle");
  const opacity = document.getElementById("cam-opacity");
  const hint = document.getElementById("cam-hint");
  let selected = config.selected;

  function camVisible() { return !toggle || toggle.checked; }

  function applyOpacity() {
    const value = opacity ? parseInt(opacity.value, 10) / 100 : 0.6;
    document.querySelectorAll(".cam-overlay").forEach(function (img) {
      img.style.opacity = String(value);
      img.classList.toggle("off", !camVisible());
    });
  }

  function currentSlice() {
    if (!slider || !slices.length) return null;
    return slices[parseInt(slider.value, 10)];
  }

  // The query CAM belongs to one slice: the selected result's best-matching query slice.
  function updateViewerCam() {
    if (!viewerCam) return;
    const hit = hits.get(selected);
    const show = hit && hit.querySlice === currentSlice() && camVisible();
    if (hit && viewerCam.dataset.src !== hit.queryCam) {
      viewerCam.dataset.src = hit.queryCam;
      viewerCam.src = hit.queryCam;
    }
    viewerCam.hidden = !show;
    if (hint && hit) {
      const i = slices.indexOf(hit.querySlice);
      hint.textContent = show
        ? "CAM of result #" + hit.rank + " on this slice."
        : "CAM of result #" + hit.rank + " is on slice " + (i + 1) + ".";
    }
  }

  function goToSlice(sliceId) {
    const i = slices.indexOf(sliceId);
    if (i < 0 || !slider) return false;
    slider.value = String(i);
    slider.dispatchEvent(new Event("input", { bubbles: true }));
    return true;
  }

  function select(rank) {
    const hit = hits.get(rank);
    if (!hit) return false;
    if (slices.indexOf(hit.querySlice) < 0) return false; // another series: let the link reload
    selected = rank;
    document.querySelectorAll(".result-card").forEach(function (card) {
      card.classList.toggle("selected", parseInt(card.dataset.rank, 10) === rank);
    });
    document.querySelectorAll("section.radiomics").forEach(function (sec) {
      sec.hidden = parseInt(sec.dataset.rank, 10) !== rank;
    });
    const params = new URLSearchParams(window.location.search);
    params.set("sel", String(rank));
    params.delete("slice");
    history.replaceState(null, "", "?" + params.toString());
    goToSlice(hit.querySlice);
    updateViewerCam();
    return true;
  }

  document.querySelectorAll(".result-card .select-result").forEach(function (a) {
    a.addEventListener("click", function (e) {
      const rank = parseInt(a.closest(".result-card").dataset.rank, 10);
      if (select(rank)) e.preventDefault();
    });
  });

  if (viewerImg) {
    // viewer.js changes the image's src when the user scrolls: follow it.
    new MutationObserver(updateViewerCam).observe(viewerImg, { attributes: true, attributeFilter: ["src"] });
  }
  if (toggle) toggle.addEventListener("change", function () { applyOpacity(); updateViewerCam(); });
  if (opacity) opacity.addEventListener("input", applyOpacity);

  const filter = document.getElementById("results-filter");
  if (filter) {
    filter.querySelectorAll("select").forEach(function (sel) {
      sel.addEventListener("change", function () { filter.submit(); });
    });
  }

  applyOpacity();
  updateViewerCam();
})();
