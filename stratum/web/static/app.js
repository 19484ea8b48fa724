// The dashboard's only script: draws the charts a page embeds (uPlot, shipped beside this
// file) and keeps [data-live] parts fresh by polling their URL. Every bit of HTML it
// inserts was rendered (and escaped) by the server; it never builds markup from data.
(function () {
  "use strict";
  var COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d",
                "#4d7c0f"];
  var charts = {};  // id -> uPlot

  function options(doc, width) {
    var series = [{label: doc.xlabel || (doc.time ? "time" : "x")}];
    doc.series.forEach(function (s, i) {
      series.push({label: s.label, stroke: COLORS[i % COLORS.length], width: 1.5,
                   points: {show: doc.x.length < 40}});
    });
    return {
      title: doc.title, width: width, height: 220, series: series,
      // One point would stretch a clock axis over years: show a minute around it.
      scales: {x: {time: !!doc.time, range: function (u, min, max) {
        var pad = doc.time ? 60 : 1;
        return min === max ? [min - pad, max + pad] : [min, max];
      }}},
      axes: [{label: doc.xlabel || null}, {label: doc.unit || null}],
    };
  }

  function data(doc) {
    return [doc.x].concat(doc.series.map(function (s) { return s.values; }));
  }

  function draw(el, doc) {
    var id = el.getAttribute("data-chart");
    var width = Math.max(280, Math.min(el.parentNode.clientWidth || 600, 640) - 10);
    var known = charts[id];
    if (known && known.series.length === doc.series.length + 1) {
      known.setData(data(doc));
      return;
    }
    if (known) { known.destroy(); }
    el.textContent = "";
    charts[id] = new uPlot(options(doc, width), data(doc), el);
  }

  function drawEmbedded(root) {
    root.querySelectorAll(".chart[data-chart]").forEach(function (el) {
      var src = document.getElementById("chart-" + el.getAttribute("data-chart"));
      if (src) { draw(el, JSON.parse(src.textContent)); }
    });
  }

  function poll(box) {
    var url = box.getAttribute("data-live");
    var every = parseInt(box.getAttribute("data-every") || "3000", 10);
    var target = box.querySelector("[data-live-html]");
    var busy = false;
    var timer = setInterval(function () {
      if (busy || document.hidden) { return; }
      busy = true;
      fetch(url, {credentials: "same-origin", headers: {"accept": "application/json"}})
        .then(function (r) {
          if (!r.ok) { throw new Error("HTTP " + r.status); }
          return r.json();
        })
        .then(function (doc) {
          if (target && typeof doc.html === "string") { target.innerHTML = doc.html; }
          Object.keys(doc.charts || {}).forEach(function (id) {
            var el = box.querySelector('.chart[data-chart="' + CSS.escape(id) + '"]');
            var holder = box.querySelector(".charts");
            if (!el && holder) {  // a series that started after the page was rendered
              el = document.createElement("div");
              el.className = "chart";
              el.setAttribute("data-chart", id);
              holder.appendChild(el);
              box.querySelectorAll("[data-empty]").forEach(function (e) { e.remove(); });
            }
            if (el) { draw(el, doc.charts[id]); }
          });
          if (doc.running === false) { clearInterval(timer); }
          box.removeAttribute("data-stale");
        })
        .catch(function () { box.setAttribute("data-stale", "true"); })
        .then(function () { busy = false; });
    }, every);
  }

  document.addEventListener("DOMContentLoaded", function () {
    drawEmbedded(document);
    document.querySelectorAll("[data-live]").forEach(poll);
  });
})();
