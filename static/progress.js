// Live progress bars: every element with data-progress-url polls that JSON endpoint
// (retrieval/views/review.py: study_progress) and updates its bar and text. While the study
// waits, the endpoint's `queue` says where it stands ("queued — position 2 of 11, about 40 s"),
// shown instead of a stage and percent. When the study finishes or fails, the page reloads (so
// status badges, results and Retry buttons are server-rendered); elements with
// data-progress-reload="0" only update.
(function () {
  "use strict";
  const INTERVAL_MS = 1500;
  const boxes = Array.from(document.querySelectorAll("[data-progress-url]"));
  if (!boxes.length) return;

  function render(box, data) {
    const bar = box.querySelector(".progress");
    if (bar) {
      bar.setAttribute("aria-valuenow", String(data.percent));
      const fill = bar.querySelector("span");
      if (fill) fill.style.width = data.percent + "%";
    }
    const queue = data.status === "processing" ? data.queue : null;
    const waiting = queue && queue.state === "queued";
    const text = box.querySelector("[data-progress-text]");
    if (text) {
      text.textContent = data.status === "uploaded" ? "Waiting to be processed"
        : queue ? queue.text.charAt(0).toUpperCase() + queue.text.slice(1)
        : data.status === "processing" ? "Processing: " + (data.stage || "queued")
        : data.status_display;
    }
    const pct = box.querySelector("[data-progress-percent]");
    if (pct) pct.textContent = waiting ? "" : data.percent + "%";
    // The short line under a small bar (worklist, study page).
    const label = box.querySelector("[data-progress-label]");
    if (label) {
      label.textContent = queue ? queue.text
        : data.status === "processing" ? (data.stage || "queued") + " " + data.percent + "%"
        : data.status_display;
    }
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
