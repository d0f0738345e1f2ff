// Live character count under the prompt box.
(function () {
  "use strict";
  var area = document.getElementById("prompt"), count = document.getElementById("count");
  if (!area || !count) return;
  area.addEventListener("input", function () { count.textContent = area.value.length; });
})();
