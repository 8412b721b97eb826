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

  var list = document.getElementById("filelist");

  // One "hand" choice per file, posted as 'side' fields in the files' order, so two hands of
  // one patient give the hands-and-wrists total even when file names and tags do not say which.
  function showChosen() {
    var n = input.files ? input.files.length : 0;
    chosen.textContent = n ? (n === 1 ? "1 file chosen" : n + " files chosen") : "";
    list.textContent = "";
    list.hidden = n === 0;
    Array.prototype.forEach.call(input.files || [], function (f) {
      var li = document.createElement("li");
      var name = document.createElement("span");
      name.className = "fname";
      name.textContent = f.name;
      var label = document.createElement("label");
      label.textContent = "Hand";
      var select = document.createElement("select");
      select.name = "side";
      [["", "from file / DICOM"], ["L", "left"], ["R", "right"]].forEach(function (o) {
        var opt = document.createElement("option");
        opt.value = o[0];
        opt.textContent = o[1];
        select.appendChild(opt);
      });
      label.appendChild(select);
      li.appendChild(name);
      li.appendChild(label);
      list.appendChild(li);
    });
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
