// Drag-and-drop for the upload form. Dropped files (and the files inside dropped folders) are
// put into the form's multiple file input, so the form is still an ordinary multipart POST;
// without JavaScript the file input alone works the same way.
(function () {
  "use strict";
  const zone = document.getElementById("dropzone");
  const input = document.getElementById("id_files");
  const list = document.getElementById("file-list");
  const form = document.getElementById("upload-form");
  if (!zone || !input) return;

  function showFiles(files) {
    list.innerHTML = "";
    let total = 0;
    Array.from(files).forEach(function (f) { total += f.size; });
    const shown = Array.from(files).slice(0, 20);
    shown.forEach(function (f) {
      const li = document.createElement("li");
      li.textContent = (f.webkitRelativePath || f.name) + " (" + Math.ceil(f.size / 1024) + " KiB)";
      list.appendChild(li);
    });
    if (files.length > shown.length) {
      const li = document.createElement("li");
      li.textContent = "… and " + (files.length - shown.length) + " more";
      list.appendChild(li);
    }
    const li = document.createElement("li");
    li.className = "muted";
    li.textContent = files.length + " file(s), " + (total / 1048576).toFixed(1) + " MiB";
    list.appendChild(li);
  }

  // Read every file of a dropped folder, recursively (readEntries returns batches).
  function walk(entry) {
    if (entry.isFile) {
      return new Promise(function (resolve) { entry.file(function (f) { resolve([f]); }, function () { resolve([]); }); });
    }
    if (!entry.isDirectory) return Promise.resolve([]);
    const reader = entry.createReader();
    return new Promise(function (resolve) {
      const all = [];
      (function next() {
        reader.readEntries(function (batch) {
          if (!batch.length) {
            Promise.all(all.map(walk)).then(function (lists) { resolve([].concat.apply([], lists)); });
            return;
          }
          all.push.apply(all, batch);
          next();
        }, function () { resolve([]); });
      })();
    });
  }

  ["dragenter", "dragover"].forEach(function (t) {
    zone.addEventListener(t, function (e) { e.preventDefault(); zone.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (t) {
    zone.addEventListener(t, function () { zone.classList.remove("over"); });
  });
  zone.addEventListener("drop", function (e) {
    e.preventDefault();
    const items = Array.from(e.dataTransfer.items || []);
    const entries = items.map(function (it) { return it.webkitGetAsEntry && it.webkitGetAsEntry(); });
    const done = entries.length && entries.every(Boolean)
      ? Promise.all(entries.map(walk)).then(function (lists) { return [].concat.apply([], lists); })
      : Promise.resolve(Array.from(e.dataTransfer.files));
    done.then(function (files) {
      const dt = new DataTransfer();
      files.forEach(function (f) { dt.items.add(f); });
      input.files = dt.files;
      showFiles(input.files);
    });
  });
  input.addEventListener("change", function () { showFiles(input.files); });
  form.addEventListener("submit", function (e) {
    // The server refuses requests with more files than this before reading them.
    const maxFiles = parseInt(form.dataset.maxFiles, 10);
    const tooMany = maxFiles > 0 && input.files.length > maxFiles;
    document.getElementById("upload-too-many").hidden = !tooMany;
    if (tooMany) { e.preventDefault(); return; }
    document.getElementById("upload-busy").hidden = false;
    document.getElementById("upload-submit").disabled = true;
  });
})();
