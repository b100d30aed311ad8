// synthvg explorer: mask toggles and hover highlights. No inline script (the pages' CSP
// forbids it): everything hangs off data- attributes the server wrote, escaped.
"use strict";
(function () {
  function all(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }

  // colour swatches (inline style attributes are refused by the CSP; the DOM API is not)
  all("[data-colour]").forEach(function (el) { el.style.background = el.getAttribute("data-colour"); });

  function setMask(rid, on) {
    all('#overlay g.region[data-rid="' + rid + '"]').forEach(function (g) { g.classList.toggle("off", !on); });
    all('input[data-toggle-rid="' + rid + '"]').forEach(function (c) { c.checked = on; });
  }
  all("input[data-toggle-rid]").forEach(function (box) {
    box.addEventListener("change", function () { setMask(box.getAttribute("data-toggle-rid"), box.checked); });
  });
  all("button[data-masks]").forEach(function (b) {
    b.addEventListener("click", function () {
      var on = b.getAttribute("data-masks") === "all";
      all("input[data-toggle-rid]").forEach(function (c) { setMask(c.getAttribute("data-toggle-rid"), on); });
    });
  });
  var ids = document.getElementById("show-ids");
  if (ids) {
    ids.addEventListener("change", function () {
      document.getElementById("overlay").classList.toggle("no-ids", !ids.checked);
    });
  }

  // hover a region (mask or row): it, its row and every relation it takes part in light up;
  // hover a relation: both its ends light up
  function highlight(rids, on) {
    document.body.classList.toggle("hovering", on);
    rids.forEach(function (rid) {
      if (rid === "") { return; }
      all('[data-rid="' + rid + '"]').forEach(function (el) { el.classList.toggle("hl", on); });
      all('[data-s="' + rid + '"], [data-o="' + rid + '"]').forEach(function (el) { el.classList.toggle("hl", on); });
    });
  }
  all("#overlay g.region, tr.region-row").forEach(function (el) {
    var rid = el.getAttribute("data-rid");
    el.addEventListener("mouseenter", function () { highlight([rid], true); });
    el.addEventListener("mouseleave", function () { highlight([rid], false); });
  });
  all("li.rel, table.edits tr[data-s]").forEach(function (el) {
    var ends = [el.getAttribute("data-s"), el.getAttribute("data-o")];
    el.addEventListener("mouseenter", function () { highlight(ends, true); });
    el.addEventListener("mouseleave", function () { highlight(ends, false); });
  });

  // the SQL box: Ctrl/Cmd+Enter runs it
  var q = document.getElementById("q");
  if (q) {
    q.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { document.getElementById("sql-form").submit(); }
    });
  }
})();
