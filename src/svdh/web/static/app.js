// svdh page: drag-and-drop onto the file field, show what was chosen, and a busy state.
// The page works without this script (the form posts and the server renders the results).
(function () {
  "use strict";
  var drop = document.getElementById("drop");
  var input = document.getElementById("files");
  var chosen = document.getElementById("chosen");
  var form = document.getElementById("upload");
  var button = document.getElementById("submit");
  if (!drop || !input) { return; }

  function showChosen() {
    var n = input.files ? input.files.length : 0;
    if (!n) { chosen.textContent = ""; return; }
    var names = Array.prototype.map.call(input.files, function (f) { return f.name; });
    chosen.textContent = n === 1 ? names[0] : n + " files: " + names.join(", ");
  }

  ["dragenter", "dragover"].forEach(function (ev) {
    drop.addEventListener(ev, function (e) { e.preventDefault(); drop.classList.add("over"); });
  });
  ["dragleave", "dragend", "drop"].forEach(function (ev) {
    drop.addEventListener(ev, function () { drop.classList.remove("over"); });
  });
  drop.addEventListener("drop", function (e) {
    if (e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files.length) {
      e.preventDefault();
      input.files = e.dataTransfer.files;
      showChosen();
    }
  });
  input.addEventListener("change", showChosen);
  form.addEventListener("submit", function () {
    button.disabled = true;
    button.textContent = "Scoring…";
  });
})();
