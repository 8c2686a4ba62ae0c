// warren dashboards: live onboarding progress. The page works without this script; with it, a
// checklist that is still running refreshes its steps every two seconds until all are done, and a
// jobs page with a job still running reloads every two seconds.
(function () {
  "use strict";
  if (document.querySelector("[data-live-jobs]")) setTimeout(function () { location.reload(); }, 2000);
})();
(function () {
  "use strict";
  var box = document.querySelector("[data-poll]");
  if (!box) return;
  var url = box.getAttribute("data-poll");
  function apply(steps) {
    var running = false;
    steps.forEach(function (s) {
      var li = box.querySelector('li[data-step="' + s.key + '"]');
      if (!li) return;
      li.setAttribute("data-done", String(s.done));
      li.querySelector(".check").textContent = s.done ? "\u2713" : "\u25CB";
      if (!s.done) running = true;
      if (s.progress) {
        var bar = li.querySelector("progress");
        var fig = li.querySelector(".step-progress .metric");
        if (bar) { bar.max = Math.max(1, s.progress[1]); bar.value = s.progress[0]; }
        if (fig) { fig.textContent = s.progress[0] + " / " + s.progress[1]; fig.setAttribute("data-value", String(s.progress[0])); }
      }
      var note = li.querySelector(".step-note");
      if (note) note.textContent = s.note || "";
    });
    return running;
  }
  function tick() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (body) {
        if (body && apply(body.steps)) setTimeout(tick, 2000);
        else if (!body) setTimeout(tick, 5000);
      })
      .catch(function () { setTimeout(tick, 5000); });
  }
  setTimeout(tick, 2000);
})();
