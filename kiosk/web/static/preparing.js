// "Being prepared": polls the export's status and starts the download when the file is ready.
(function () {
  "use strict";
  var box = document.getElementById("preparing");
  if (!box) return;
  var status = document.getElementById("prep-status"), tries = 0;
  function poll() {
    fetch(box.dataset.api, { headers: { "Accept": "application/json" }, cache: "no-store" })
      .then(function (r) { return r.json(); })
      .then(function (d) {
        if (d.status === "ready") {
          status.textContent = "Ready: your download is starting.";
          window.location.href = box.dataset.url || d.url;  // the page that asked (the AR view), else the file
        } else if (d.status === "failed" || d.status === "missing") {
          status.textContent = "Sorry, this file could not be made. The staff have been told.";
        } else {
          tries += 1;
          setTimeout(poll, tries < 10 ? 1500 : 4000);
        }
      })
      .catch(function () { setTimeout(poll, 4000); });
  }
  setTimeout(poll, 1000);
})();
