// harness-xai report script (no network, no dependencies). What it does, in order:
// 1. tables: click a header to sort (numbers via data-sort, blanks last); tables with class
//    "paged" show data-page-size rows at a time with previous/next buttons (sorting spans pages);
// 2. failure pages: read the page's JSON (#case-data) and draw the token heatmap, the matrix grids
//    (layers, states, heads, history) and the interactive attribution graph (pan, zoom, hover,
//    edge-threshold slider). Benchmark text only ever goes into textContent / attribute values.
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var RED = [200, 30, 30], BLUE = [25, 95, 200];
  var MAX_SHOWN = 60;  // dense attribution graphs open with their 60 strongest edges shown

  function el(tag, attrs, parent) {
    var node = document.createElementNS(SVG, tag);
    for (var k in attrs) if (Object.prototype.hasOwnProperty.call(attrs, k)) node.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(node);
    return node;
  }
  function titled(node, text) { var t = el("title", {}, node); t.textContent = text; return node; }

  // Python's format(x, "+.{d}g") / ".{d}g"
  function fmtG(x, d, signed) {
    if (x === null || x === undefined || !isFinite(x)) return "—";
    var s;
    if (x === 0) s = "0";
    else {
      var parts = x.toExponential(d - 1).split("e"), exp = parseInt(parts[1], 10);
      if (exp < -4 || exp >= d) {
        var m = parts[0].indexOf(".") >= 0 ? parts[0].replace(/0+$/, "").replace(/\.$/, "") : parts[0];
        s = m + "e" + (exp < 0 ? "-" : "+") + (Math.abs(exp) < 10 ? "0" : "") + Math.abs(exp);
      } else {
        s = x.toFixed(Math.max(0, d - 1 - exp));
        if (s.indexOf(".") >= 0) s = s.replace(/0+$/, "").replace(/\.$/, "");
      }
    }
    return signed && x >= 0 ? "+" + s : s;
  }
  function colour(r, scale) {
    if (r === null || !isFinite(r) || r === 0 || !(scale > 0)) return { rgb: "rgb(255, 255, 255)", a: 0 };
    var a = Math.min(Math.abs(r) / scale, 1), t = r > 0 ? RED : BLUE;
    var c = t.map(function (v) { return Math.round(255 + a * (v - 255)); });
    return { rgb: "rgb(" + c[0] + ", " + c[1] + ", " + c[2] + ")", a: a };
  }

  // ---- 1. tables: sort and page ------------------------------------------------------------
  function key(cell, type) {
    var raw = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent;
    if (type !== "num") return raw.trim().toLowerCase();
    var v = parseFloat(raw);
    return isNaN(v) ? null : v;
  }
  function showPage(table, page) {
    var size = parseInt(table.getAttribute("data-page-size"), 10);
    var rows = table.tBodies[0].rows, n = rows.length, pages = Math.max(1, Math.ceil(n / size));
    page = Math.min(Math.max(page, 1), pages);
    for (var i = 0; i < n; i++) rows[i].hidden = Math.floor(i / size) + 1 !== page;
    table.setAttribute("data-page", String(page));
    var nav = document.querySelector('nav.pager[data-for="' + table.id + '"]');
    if (!nav) return;
    nav.hidden = pages < 2;
    nav.querySelector(".where").textContent = "rows " + ((page - 1) * size + 1) + "–" +
      Math.min(page * size, n) + " of " + n + " (page " + page + " of " + pages + ")";
    nav.querySelector(".prev").disabled = page <= 1;
    nav.querySelector(".next").disabled = page >= pages;
  }
  function sortBy(table, th, idx) {
    var type = th.getAttribute("data-type") || "text";
    var dir = th.getAttribute("aria-sort") === "descending" ? 1 : -1;
    if (!th.hasAttribute("aria-sort") && type === "text") dir = 1;
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows).filter(function (r) { return r.cells.length > idx; });
    rows.sort(function (a, b) {
      var x = key(a.cells[idx], type), y = key(b.cells[idx], type);
      if (x === null && y === null) return 0;
      if (x === null) return 1;
      if (y === null) return -1;
      return x < y ? -dir : x > y ? dir : 0;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    if (table.classList.contains("paged")) showPage(table, 1);
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    if (!table.tHead || !table.tBodies.length) return;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, idx) {
      th.addEventListener("click", function () { sortBy(table, th, idx); });
    });
  });
  Array.prototype.forEach.call(document.querySelectorAll("table.paged"), function (table) {
    var nav = document.querySelector('nav.pager[data-for="' + table.id + '"]');
    if (nav) {
      nav.querySelector(".prev").addEventListener("click", function () {
        showPage(table, parseInt(table.getAttribute("data-page"), 10) - 1);
      });
      nav.querySelector(".next").addEventListener("click", function () {
        showPage(table, parseInt(table.getAttribute("data-page"), 10) + 1);
      });
    }
    showPage(table, 1);
  });

  // a link to #run-N (or any collapsed section) opens it
  function openTarget() {
    var id = decodeURIComponent((location.hash || "").slice(1));
    var node = id && document.getElementById(id);
    if (node && node.tagName === "DETAILS") node.open = true;
  }
  window.addEventListener("hashchange", openTarget);
  openTarget();

  // ---- 2. failure pages --------------------------------------------------------------------
  var dataNode = document.getElementById("case-data");
  if (dataNode) {
    var data = JSON.parse(dataNode.textContent);
    drawTokens(data);
    if (data.layers) drawGrid("layers", data.layers.rows, labelsOf(data.positions), data.layers.values, "position", data.tokens.first_special);
    (data.states || []).forEach(function (s) {
      drawGrid("state-" + s.kind, s.rows, labelsOf(data.positions), s.values, "position", data.tokens.first_special);
    });
    if (data.heads) drawGrid("heads", data.heads.rows, data.heads.cols, data.heads.values, "head", false);
    if (data.history) {
      drawGrid("history", data.history.map(function (h) {
        return "step " + h.step + (h.current ? " (this page)" : "") + (h.cosine === null ? "" : " · cos " + h.cosine.toFixed(2));
      }), labelsOf(data.positions), data.history.map(function (h) { return h.values; }), "position", false, 1.0);
    }
    if (data.graph) drawGraph(data);
    Array.prototype.forEach.call(document.querySelectorAll("[data-goto]"), function (node) {
      node.addEventListener("click", function () {
        var target = document.getElementById(node.getAttribute("data-goto"));
        if (!target) return;
        target.scrollIntoView({ block: "center" });
        target.classList.add("flash");
        setTimeout(function () { target.classList.remove("flash"); }, 1500);
      });
    });
  }

  function labelsOf(positions) { return positions.map(String); }

  function displayToken(t) {
    if (t === null || t === "") return "∅";
    return t.replace(/\r\n/g, "↵\r\n").replace(/\n/g, "↵\n").replace(/\t/g, "⇥\t");
  }
  function segmentLabel(seg, idx) { return seg ? (idx === null || idx === undefined ? seg : seg + " " + idx) : ""; }

  // one span per token; the byte pieces of a split character (same data.tokens.group) share
  // one span that shows the merged text and lists every exact piece on hover
  function drawTokens(data) {
    var box = document.getElementById("tokens");
    if (!box) return;
    var t = data.tokens, n = t.text.length, scale = 0;
    var group = t.group || t.text.map(function (_, i) { return i; });
    var shown = t.display || t.text.map(displayToken);
    var sums = {};
    for (var i = 0; i < n; i++) {
      var r = t.relevance[i];
      if (r !== null && isFinite(r)) sums[group[i]] = (sums[group[i]] || 0) + r;
    }
    for (var g in sums) if (!(t.first_special && +g === 0)) scale = Math.max(scale, Math.abs(sums[g]));
    var scaleNode = document.getElementById("token-scale");
    if (scaleNode) scaleNode.textContent = fmtG(scale, 4, false);
    while (box.firstChild) box.removeChild(box.firstChild);
    var previous = null;
    for (i = 0; i < n; i++) {
      if (group[i] !== i) continue;
      var members = [i];
      for (var k = i + 1; k < n && group[k] === i; k++) members.push(k);
      var seg = t.segment[i], segi = t.segment_index[i], label = segmentLabel(seg, segi);
      var segKey = seg === null ? null : seg + "|" + segi;
      if (seg !== null && segKey !== previous) {
        var mark = document.createElement("span");
        mark.className = "seg-mark seg-" + seg.replace(/[^a-z]/g, "");
        mark.title = label;
        mark.textContent = label;
        box.appendChild(mark);
      }
      previous = segKey;
      var rel = members.length > 1 ? (i in sums ? sums[i] : null) : t.relevance[i];
      var raw = t.text[i] === null ? "" : t.text[i];
      var span = document.createElement("span");
      var cls = "tok";
      if (t.first_special && i === 0) cls += " special";
      if (raw === "") cls += " empty";
      if (members.length > 1) cls += " bytes";
      if (seg) cls += " in-" + seg.replace(/[^a-z]/g, "");
      if (members.some(function (m) { return t.evidence[m] === 1; })) cls += " evidence";
      span.className = cls;
      span.id = "tok-" + data.positions[i];
      span.setAttribute("data-position", String(data.positions[i]));
      if (members.length > 1) span.setAttribute("data-positions", members.map(function (m) { return data.positions[m]; }).join(" "));
      span.setAttribute("data-relevance", rel === null ? "nan" : String(rel));
      span.setAttribute("data-segment", label);
      span.title = members.map(function (m) {
        return "pos " + data.positions[m] + " · token " + JSON.stringify(t.text[m] === null ? "" : t.text[m]) + " · id " + t.id[m] +
          " · relevance " + fmtG(t.relevance[m], 6, true);
      }).join("\n") + (members.length > 1 ? "\n(byte pieces of one character; colour: their sum " + fmtG(rel, 6, true) + ")" : "") +
        (label ? " · " + label : "") + (members.some(function (m) { return t.evidence[m] === 1; }) ? " · evidence" : "");
      var c = colour(rel, scale);
      span.style.backgroundColor = c.rgb;
      if (c.a > 0.55) span.style.color = "#fff";
      span.textContent = shown[i];
      box.appendChild(span);
    }
  }

  // a labelled matrix as coloured rectangles; columns summed in bins so at most maxCols remain
  function drawGrid(id, rowLabels, colLabels, values, what, skipFirst, fixedScale) {
    var box = document.getElementById(id);
    if (!box) return;
    var nRows = values.length, nCols = nRows ? values[0].length : 0, maxCols = 160;
    var size = Math.max(1, Math.ceil(nCols / maxCols)), nBins = Math.ceil(nCols / size);
    var binned = values.map(function (row) {
      var out = [];
      for (var c = 0; c < nBins; c++) {
        var sum = 0, any = false;
        for (var k = c * size; k < Math.min((c + 1) * size, nCols); k++) {
          if (row[k] !== null && isFinite(row[k])) { sum += row[k]; any = true; }
        }
        out.push(any ? sum : null);
      }
      return out;
    });
    var scale = fixedScale || 0;
    if (!fixedScale) binned.forEach(function (row) {
      row.forEach(function (v, c) {
        if (v !== null && !(skipFirst && size === 1 && c === 0 && nBins > 1)) scale = Math.max(scale, Math.abs(v));
      });
    });
    var cellW = Math.max(3, Math.min(22, Math.floor(900 / Math.max(nBins, 1))));
    var longest = rowLabels.reduce(function (m, l) { return Math.max(m, String(l).length); }, 0);
    var cellH = 16, labelW = Math.min(280, 14 + 7 * longest), top = 4, axisY = top + nRows * cellH + 14;
    var svg = el("svg", { width: labelW + nBins * cellW + 24, height: axisY + 6, role: "img",
      "aria-label": id }, box);
    box.setAttribute("data-bin-size", String(size));
    box.setAttribute("data-scale", String(scale));
    for (var r = 0; r < nRows; r++) {
      var lab = el("text", { x: 0, y: top + r * cellH + cellH - 4, "class": "ylab" }, svg);
      lab.textContent = rowLabels[r];
      for (var c = 0; c < nBins; c++) {
        var v = binned[r][c], lo = colLabels[c * size], hi = colLabels[Math.min((c + 1) * size, nCols) - 1];
        var rect = el("rect", { x: labelW + c * cellW, y: top + r * cellH, width: cellW, height: cellH,
          fill: colour(v, scale).rgb }, svg);
        titled(rect, rowLabels[r] + ", " + what + " " + (lo === hi ? lo : lo + "–" + hi) + ": " + fmtG(v, 6, true));
      }
    }
    var step = Math.max(1, Math.ceil(nBins / 12));
    for (c = 0; c < nBins; c += step) {
      var tick = el("text", { x: labelW + c * cellW, y: axisY, "class": "xlab" }, svg);
      tick.textContent = colLabels[c * size];
    }
  }

  // ---- the interactive attribution graph ---------------------------------------------------
  // Zoom and pan re-lay the drawing out (coordinates, not a scale transform), so strokes, node
  // sizes and labels keep their size; token labels are placed greedily in up to three rows
  // without overlap (the others show on hover); above MAX_SHOWN edges the weakest are hidden
  // by default (the slider starts at the share that keeps MAX_SHOWN).
  function drawGraph(data) {
    var box = document.getElementById("graph");
    if (!box) return;
    var g = data.graph, layers = g.layers.length || 1, positions = data.positions;
    var maxPos = positions.length ? positions[positions.length - 1] : 1;
    var W = 900, rowH = 60, left = 70, top = 20, labelRows = 3;
    var H = top * 2 + (layers - 1) * rowH + 14 + 13 * labelRows;
    var svg = el("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img",
      "aria-label": "attribution graph", "class": "graph-svg" }, box);
    var view = el("g", { "class": "viewport" }, svg);
    var k = 1, tx = 0, ty = 0, drag = null;
    function bx(p) { return left + (W - left - 20) * p / Math.max(maxPos, 1); }
    function by(l) { return top + (layers - 1 - l) * rowH; }
    function x(p) { return bx(p) * k + tx; }
    function y(l) { return by(l) * k + ty; }
    var shown = data.tokens.display || data.tokens.text, group = data.tokens.group;
    var labelOf = {}, exactOf = {};
    positions.forEach(function (p, i) {
      var gi = group ? group[i] : i;
      labelOf[p] = shown[gi] === null || shown[gi] === undefined ? "" : shown[gi];
      exactOf[p] = data.tokens.text[i];
    });
    var layerText = [], gridLines = [];
    g.layers.forEach(function (name, l) {
      var t = el("text", { x: 4, "class": "ylab" }, svg);
      t.textContent = name;
      layerText.push(t);
      gridLines.push(el("line", { "class": "gridline" }, view));
    });
    var wMax = 0;
    g.edges.forEach(function (e) { if (e[4] !== null) wMax = Math.max(wMax, Math.abs(e[4])); });
    wMax = wMax || 1;
    var info = document.getElementById("graph-info");
    function describe(node) {
      return g.layers[node[0]] + " @ position " + node[1] + " " + JSON.stringify(exactOf[node[1]] === undefined ? "" : exactOf[node[1]]);
    }
    var edgeNodes = [], hitNodes = [];
    g.edges.forEach(function (e, i) {
      var w = e[4] === null ? 0 : e[4];
      var line = el("line", { stroke: w > 0 ? "rgb(200,30,30)" : "rgb(25,95,200)",
        "stroke-opacity": (0.15 + 0.85 * Math.abs(w) / wMax).toFixed(3),
        "stroke-width": (0.6 + 3.4 * Math.abs(w) / wMax).toFixed(2), "class": "edge",
        "data-index": String(i), "data-weight": String(w) }, view);
      var text = describe([e[0], e[1]]) + " → " + describe([e[2], e[3]]) + ": " + fmtG(w, 5, true) +
        " (edge weight; " + Math.round(100 * Math.abs(w) / wMax) + "% of the strongest)";
      titled(line, text);
      var hit = el("line", { "class": "edge-hit", "data-index": String(i) }, view);
      titled(hit, text);
      [line, hit].forEach(function (node) {
        node.addEventListener("mouseenter", function () {
          box.setAttribute("data-hover", "edge-" + i);
          line.classList.add("hot");
          info.textContent = "edge " + text;
        });
        node.addEventListener("mouseleave", function () { line.classList.remove("hot"); });
      });
      edgeNodes.push(line);
      hitNodes.push(hit);
    });
    var rMax = 0;
    g.nodes.forEach(function (n) { if (n[2] !== null) rMax = Math.max(rMax, Math.abs(n[2])); });
    rMax = rMax || 1;
    var nodeEls = g.nodes.map(function (n, i) {
      var r = n[2] === null ? 0 : n[2];
      var circle = el("circle", { r: (2.5 + 4.5 * Math.min(Math.abs(r) / rMax, 1)).toFixed(2),
        fill: colour(r, rMax).rgb, "class": "node", "data-index": String(i) }, view);
      var text = describe(n) + ": relevance " + fmtG(r, 5, true);
      titled(circle, text);
      circle.addEventListener("mouseenter", function () {
        box.setAttribute("data-hover", "node-" + i);
        var incident = 0;
        g.edges.forEach(function (e, j) {
          var on = (e[0] === n[0] && e[1] === n[1]) || (e[2] === n[0] && e[3] === n[1]);
          edgeNodes[j].classList.toggle("hot", on);
          if (on) incident++;
        });
        info.textContent = "node " + text + " · " + incident + " incident edges";
      });
      circle.addEventListener("mouseleave", function () {
        edgeNodes.forEach(function (line) { line.classList.remove("hot"); });
      });
      return circle;
    });
    // token labels under the bottom row, for the positions the graph touches
    var used = {};
    g.nodes.forEach(function (n) { used[n[1]] = true; });
    var labels = Object.keys(used).map(Number).sort(function (a, b) { return a - b; }).map(function (p) {
      var raw = labelOf[p] === undefined ? "" : labelOf[p];
      var text = raw.replace(/\n/g, "").trim() || (raw.length ? "␣" : "·");
      if (text.length > 14) text = text.slice(0, 13) + "…";
      var t = el("text", { "class": "xlab tokname", "text-anchor": "middle", "data-position": String(p) }, svg);
      t.textContent = text;
      titled(t, "position " + p + " " + JSON.stringify(exactOf[p] === undefined ? "" : exactOf[p]));
      return { p: p, node: t, half: 3.2 * text.length + 3 };
    });
    function placeLabels() {
      var ends = [], base = by(0) + 18, shownN = 0;
      labels.forEach(function (lab) {
        var cx = x(lab.p), row = -1;
        for (var r = 0; r < labelRows; r++) {
          if (ends[r] === undefined || cx - lab.half > ends[r]) { row = r; break; }
        }
        var inside = cx >= left - 4 && cx <= W;
        if (row < 0 || !inside) { lab.node.style.display = "none"; return; }
        ends[row] = cx + lab.half;
        lab.node.style.display = "";
        lab.node.setAttribute("x", cx.toFixed(2));
        lab.node.setAttribute("y", (base + 13 * row).toFixed(2));
        shownN++;
      });
      box.setAttribute("data-labels-shown", String(shownN));
    }

    // edge threshold slider; dense graphs start thinned to the MAX_SHOWN strongest edges
    var slider = document.getElementById("graph-threshold"), shownEdges = document.getElementById("graph-visible");
    var valueLabel = document.getElementById("graph-threshold-value");
    var initial = null;  // exact share that keeps the MAX_SHOWN strongest, until the slider moves
    if (slider && g.edges.length > MAX_SHOWN) {
      var ws = g.edges.map(function (e) { return Math.abs(e[4] === null ? 0 : e[4]); }).sort(function (a, b) { return b - a; });
      initial = ws[MAX_SHOWN - 1] / wMax;
      slider.value = String(Math.floor(100 * initial));
      box.setAttribute("data-thinned", "true");
    }
    function threshold(ev) {
      if (ev) initial = null;
      var t = initial !== null ? initial : slider ? parseInt(slider.value, 10) / 100 : 0, visible = 0;
      g.edges.forEach(function (e, i) {
        var on = Math.abs(e[4] === null ? 0 : e[4]) >= t * wMax;
        edgeNodes[i].style.display = on ? "" : "none";
        hitNodes[i].style.display = on ? "" : "none";
        if (on) visible++;
      });
      box.setAttribute("data-visible-edges", String(visible));
      if (shownEdges) shownEdges.textContent = visible + " of " + g.edges.length + " edges shown";
      if (valueLabel) valueLabel.textContent = (initial !== null ? (100 * t).toFixed(1) : Math.round(t * 100)) + "%";
    }
    if (slider) slider.addEventListener("input", threshold);
    threshold(null);

    function apply() {
      g.layers.forEach(function (_, l) {
        layerText[l].setAttribute("y", (y(l) + 4).toFixed(2));
        gridLines[l].setAttribute("x1", x(0).toFixed(2)); gridLines[l].setAttribute("x2", x(maxPos).toFixed(2));
        gridLines[l].setAttribute("y1", y(l).toFixed(2)); gridLines[l].setAttribute("y2", y(l).toFixed(2));
      });
      g.edges.forEach(function (e, i) {
        var c = { x1: x(e[1]).toFixed(2), y1: y(e[0]).toFixed(2), x2: x(e[3]).toFixed(2), y2: y(e[2]).toFixed(2) };
        for (var a in c) { edgeNodes[i].setAttribute(a, c[a]); hitNodes[i].setAttribute(a, c[a]); }
      });
      g.nodes.forEach(function (n, i) {
        nodeEls[i].setAttribute("cx", x(n[1]).toFixed(2));
        nodeEls[i].setAttribute("cy", y(n[0]).toFixed(2));
      });
      placeLabels();
      box.setAttribute("data-zoom", k.toFixed(4));
      box.setAttribute("data-pan", tx.toFixed(1) + "," + ty.toFixed(1));
    }
    function local(ev) {
      var rect = svg.getBoundingClientRect();
      return [(ev.clientX - rect.left) * W / rect.width, (ev.clientY - rect.top) * H / rect.height];
    }
    svg.addEventListener("wheel", function (ev) {
      ev.preventDefault();
      var p = local(ev), f = Math.exp(-ev.deltaY * 0.0015), nk = Math.min(Math.max(k * f, 0.25), 40);
      tx = p[0] - (p[0] - tx) * nk / k;
      ty = p[1] - (p[1] - ty) * nk / k;
      k = nk;
      apply();
    }, { passive: false });
    svg.addEventListener("mousedown", function (ev) { drag = { p: local(ev), tx: tx, ty: ty }; ev.preventDefault(); });
    window.addEventListener("mousemove", function (ev) {
      if (!drag) return;
      var p = local(ev);
      tx = drag.tx + p[0] - drag.p[0];
      ty = drag.ty + p[1] - drag.p[1];
      apply();
    });
    window.addEventListener("mouseup", function () { drag = null; });
    var reset = document.getElementById("graph-reset");
    if (reset) reset.addEventListener("click", function () { k = 1; tx = 0; ty = 0; apply(); });
    apply();
  }

  document.documentElement.setAttribute("data-js", "ready");
})();
