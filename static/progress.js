// Live progress bars: every element with data-progress-url polls that JSON endpoint
// (retrieval/views/review.py: study_progress) and updates its bar and text. The endpoint's
// `text` says honestly where the study stands ("Waiting in queue (position 2 of 11, about
// 40 s)", then "Running: embed (40%)"); while the study waits (`waiting`) the bar moves
// (class "waiting") instead of showing a frozen percent. When the study finishes or fails, the
// page reloads (so status badges, results and Retry buttons are server-rendered); elements
// with data-progress-reload="0" only update.
(function () {
  "use strict";
  const INTERVAL_MS = 1500;
  const boxes = Array.from(document.querySelectorAll("[data-progress-url]"));
  if (!boxes.length) return;

  function render(box, data) {
    const bar = box.querySelector(".progress");
    if (bar) {
      bar.classList.toggle("waiting", Boolean(data.waiting));
      if (data.waiting) bar.removeAttribute("aria-valuenow");
      else bar.setAttribute("aria-valuenow", String(data.percent));
      bar.setAttribute("aria-valuetext", data.text || "");
      const fill = bar.querySelector("span");
      if (fill) fill.style.width = data.percent + "%";
    }
    const text = box.querySelector("[data-progress-text]");
    if (text) text.textContent = data.text || data.status_display;
    const pct = box.querySelector("[data-progress-percent]");
    if (pct) pct.textContent = data.waiting ? "" : data.percent + "%";
    // The short line under a small bar (worklist, study page).
    const label = box.querySelector("[data-progress-label]");
    if (label) label.textContent = data.text || data.status_display;
  }

  function poll(box, initialStatus) {
    let stopped = false;
    function tick() {
      if (stopped) return;
      fetch(box.dataset.progressUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
        .then(function (data) {
          render(box, data);
          const ended = data.finished || data.failed;
          if (ended || data.status !== initialStatus && data.status !== "processing") {
            stopped = true;
            if (box.dataset.progressReload !== "0") window.location.reload();
            return;
          }
          setTimeout(tick, INTERVAL_MS);
        })
        .catch(function () { setTimeout(tick, INTERVAL_MS * 4); });
    }
    setTimeout(tick, INTERVAL_MS);
  }

  boxes.forEach(function (box) {
    // Only studies on their way need polling; finished ones are rendered already.
    const status = box.dataset.progressStatus || "processing";
    if (status === "ready_for_review" || status === "reviewed") return;
    if (status === "failed" && box.dataset.progressReload !== "0") return;
    poll(box, status);
  });
})();
