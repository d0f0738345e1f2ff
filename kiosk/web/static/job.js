// Short-polls the job's JSON every few seconds and updates the page; stops once the job is finished.
(function () {
  "use strict";
  var box = document.getElementById("job");
  if (!box || box.dataset.finished === "true") return;
  var api = box.dataset.api, every = parseInt(box.dataset.poll, 10) || 2000;
  var $ = function (id) { return document.getElementById(id); };

  var wasRunning = box.querySelector("#status").dataset.status === "running";

  function show(data) {
    var status = $("status");
    if (data.status === "running" && !wasRunning) {
      // the moment the piece reaches the screen: tell the visitor to look up
      $("onscreen").hidden = false;
      document.title = "On screen now! · " + document.title;
      if (navigator.vibrate) navigator.vibrate([120, 60, 120]);
    }
    wasRunning = data.status === "running";
    $("onscreen").hidden = data.status !== "running";
    $("wait").textContent = data.wait_text || "";
    $("wait").hidden = !data.wait_text;
    status.textContent = data.message;
    status.className = "status status-" + data.status;
    status.dataset.status = data.status;
    $("position-box").hidden = !data.position;
    $("position").textContent = data.position || "";
    $("progress-box").hidden = data.status !== "running";
    $("progress").value = data.percent;
    $("steps").textContent = data.total ? "step " + data.step + " of " + data.total : "";
    var live = $("live");
    if (data.frame_url && live.getAttribute("src") !== data.frame_url) live.src = data.frame_url;
    live.hidden = !data.frame_url;
    if (data.piece_url) {
      $("piece-link").href = data.piece_url;
      $("done-box").hidden = false;
    }
  }

  function poll() {
    fetch(api, { headers: { "Accept": "application/json" }, cache: "no-store" })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (data) {
        show(data);
        if (!data.finished) setTimeout(poll, every);
      })
      .catch(function () { setTimeout(poll, every * 2); });
  }
  setTimeout(poll, every);
})();
