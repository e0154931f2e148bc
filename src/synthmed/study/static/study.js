// Keyboard shortcuts and the time on the page; the form works without this script too.
(function () {
  "use strict";
  var form = document.getElementById("answer");
  if (!form) { return; }
  var started = performance.now();
  var sent = false;
  function pick(name, value) {
    var box = form.querySelector('input[name="' + name + '"][value="' + value + '"]');
    if (box) { box.checked = true; }
  }
  form.addEventListener("submit", function (event) {
    if (sent) { event.preventDefault(); return; }   // one answer per image, even on a double Enter
    sent = true;
    document.getElementById("client_ms").value = String(Math.round(performance.now() - started));
    document.getElementById("submit").disabled = true;
  });
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    var inNote = event.target && event.target.tagName === "TEXTAREA";
    if (inNote) {
      if (event.key === "Escape") { event.target.blur(); }
      return;
    }
    var key = event.key.toLowerCase();
    if (key === "enter") {
      event.preventDefault();
      if (form.requestSubmit) { form.requestSubmit(); } else if (form.reportValidity()) { form.submit(); }
      return;
    }
    if (key === "r") { pick("verdict", "real"); return; }
    if (key === "s") { pick("verdict", "synthetic"); return; }
    if (key >= "1" && key <= "5") { pick("confidence", key); return; }
    if (key === "n") {
      var note = document.getElementById("note");
      if (note) { event.preventDefault(); note.focus(); }
      return;
    }
    var box = form.querySelector('input[name="criterion"][data-key="' + key + '"]');
    if (box) { box.checked = !box.checked; }
  });
}());
