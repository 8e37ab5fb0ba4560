// Review page: CAM overlays (toggle + opacity) on the query viewer and the result cards,
// selecting a result (its radiomics table, its query slice and CAM in the viewer), and the
// k / diagnosis filter submitting on change. The slice viewer itself is static/viewer.js.
// Without JavaScript the result links reload the page with ?sel=.
// CAMs and live queries are computed by workers after the page is served: a CAM URL answers
// 202 with a transparent placeholder until its overlay is stored, so pending images
// (data-cam-pending) and the viewer's CAM are polled and swapped in when ready; a (k,
// diagnosis) choice still being computed polls config.liveStatusUrl and reloads when ready.
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

  const POLL_MS = 2000;
  const POLL_TRIES = 90;

  // Calls ready() once `url` answers 200 (polling while it answers 202); gives up quietly.
  function whenReady(url, ready, tries) {
    tries = tries === undefined ? POLL_TRIES : tries;
    fetch(url, { cache: "no-store", credentials: "same-origin" }).then(function (r) {
      if (r.status === 200) ready();
      else if (r.status === 202 && tries > 1) {
        setTimeout(function () { whenReady(url, ready, tries - 1); }, POLL_MS);
      }
    }).catch(function () {
      if (tries > 1) setTimeout(function () { whenReady(url, ready, tries - 1); }, POLL_MS);
    });
  }

  function readyUrl(url) { return url + (url.indexOf("?") < 0 ? "?" : "&") + "ready=1"; }

  document.querySelectorAll("img.cam-overlay[data-cam-pending]").forEach(function (img) {
    const url = img.getAttribute("src");
    whenReady(url, function () {
      img.src = readyUrl(url);
      img.removeAttribute("data-cam-pending");
      const badge = img.parentNode.querySelector(".cam-computing");
      if (badge) badge.remove();
    });
  });

  config.hits.forEach(function (h) {
    if (h.camReady) return;
    whenReady(h.queryCam, function () {
      h.camReady = true;
      h.queryCam = readyUrl(h.queryCam);
      updateViewerCam();
    });
  });

  if (config.liveStatusUrl) {
    (function poll(tries) {
      fetch(config.liveStatusUrl, { cache: "no-store", credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (body) {
          if (body.ready) window.location.reload();
          else if (tries > 1) setTimeout(function () { poll(tries - 1); }, POLL_MS);
        })
        .catch(function () { if (tries > 1) setTimeout(function () { poll(tries - 1); }, POLL_MS); });
    })(POLL_TRIES);
  }

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
    const show = hit && hit.camReady && hit.querySlice === currentSlice() && camVisible();
    if (hit && hit.camReady && viewerCam.dataset.src !== hit.queryCam) {
      viewerCam.dataset.src = hit.queryCam;
      viewerCam.src = hit.queryCam;
    }
    viewerCam.hidden = !show;
    if (hint && hit) {
      const i = slices.indexOf(hit.querySlice);
      hint.textContent = !hit.camReady
        ? "CAM of result #" + hit.rank + " is being computed…"
        : show
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

  // Reading-time metrics (experts): each similar case opened during the reading is counted
  // once by the server (retrieval/views/review.py: review_event).
  const reported = new Set();
  function reportOpened(rank) {
    if (!config.eventUrl || reported.has(rank)) return;
    const token = document.querySelector("input[name=csrfmiddlewaretoken]");
    if (!token) return;
    reported.add(rank);
    fetch(config.eventUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": token.value },
      body: JSON.stringify({ event: "result_opened", rank: rank }),
    }).catch(function () { reported.delete(rank); });
  }

  function select(rank) {
    const hit = hits.get(rank);
    if (!hit) return false;
    reportOpened(rank);
    document.dispatchEvent(new CustomEvent("review:select", { detail: { rank: rank } }));
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

  // "Open case" leaves the page: report with a beacon (form fields, CSRF token included).
  document.querySelectorAll(".result-card [data-testid=open-case]").forEach(function (a) {
    a.addEventListener("click", function () {
      const rank = parseInt(a.closest(".result-card").dataset.rank, 10);
      const token = document.querySelector("input[name=csrfmiddlewaretoken]");
      if (!config.eventUrl || !token || reported.has(rank) || !navigator.sendBeacon) return;
      const body = new FormData();
      body.append("csrfmiddlewaretoken", token.value);
      body.append("event", "result_opened");
      body.append("rank", String(rank));
      if (navigator.sendBeacon(config.eventUrl, body)) reported.add(rank);
    });
  });

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
