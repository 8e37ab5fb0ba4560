// Behaviour that would otherwise be inline markup, which the Content-Security-Policy forbids:
// bar widths from data-width (percent), and forms with data-confirm ask before submitting.
(function () {
  "use strict";
  function setWidths() {
    document.querySelectorAll("[data-width]").forEach(function (el) {
      el.style.width = el.dataset.width + "%";
    });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", setWidths);
  } else {
    setWidths();
  }
  document.addEventListener("submit", function (event) {
    const message = event.target.dataset ? event.target.dataset.confirm : null;
    if (message && !window.confirm(message)) event.preventDefault();
  });
})();
