// The prompt form: a character counter that counts as the server does (code points after NFC and
// whitespace folding), a warning past the limit, the mood label, and only the chosen exhibit's panel.
(function () {
  "use strict";
  var area = document.getElementById("prompt"), count = document.getElementById("count"),
      over = document.getElementById("over"), counter = document.getElementById("counter");
  function length(text) {
    var folded = text.normalize("NFC").split(/\s+/).filter(function (w) { return w.length; }).join(" ");
    return Array.from(folded).length;  // code points, like Python's len()
  }
  function update() {
    var n = length(area.value), max = parseInt(area.dataset.max, 10);
    count.textContent = n;
    var extra = n - max;
    counter.classList.toggle("too-long", extra > 0);
    over.textContent = extra > 0 ? " — " + extra + " too many" : "";
  }
  if (area && count) { area.addEventListener("input", update); update(); }

  var MOODS = [[20, "calm"], [40, "gentle"], [60, "restless"], [80, "strange"], [101, "wild"]];
  document.querySelectorAll('input[type=range][name=mood]').forEach(function (r) {
    var label = document.getElementById("mood-label-" + r.id.slice(5));
    function show() {
      var v = parseInt(r.value, 10), name = MOODS.filter(function (m) { return v < m[0]; })[0][1];
      label.innerHTML = "";
      label.append("Mood: ");
      var b = document.createElement("strong"); b.textContent = name; label.append(b);
    }
    r.addEventListener("input", show); show();
  });

  var radios = document.querySelectorAll('input[type=radio][name=exhibit]');
  function panels() {
    var chosen = document.querySelector('input[type=radio][name=exhibit]:checked');
    var name = chosen ? chosen.value : (document.querySelector('input[type=hidden][name=exhibit]') || {}).value;
    document.querySelectorAll(".panel[data-exhibit]").forEach(function (p) {
      var on = p.dataset.exhibit === name;
      p.hidden = !on;
      p.querySelectorAll("input, select").forEach(function (el) { el.disabled = !on; });
    });
  }
  radios.forEach(function (r) { r.addEventListener("change", panels); });
  panels();
})();
