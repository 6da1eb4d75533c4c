/* linterp viewer: rows and columns of F(x0), residual and eigen-images, from a static site folder.
 *
 * Data arrive as scripts (works from file://): data/manifest.js calls LINTERP.manifest(m); every sheet
 * data/<model>/<name>.js calls LINTERP.sheet(name, {meta..., png}). A sheet is an 8-bit PNG of quantised
 * values q (128 = 0, value = (q - 128) / 127 * scale); the colour table comes with the manifest.
 */
"use strict";
(function () {
  const L = (window.LINTERP = {latencies: [], ready: false, rendered: 0, lastRequested: 0});
  let M = null; // the manifest
  const sheets = new Map(); // name -> {promise, data}
  const MAX_SHEETS = 48;
  let lut32 = null; // Uint32Array(256) RGBA colours of q

  const state = {
    dom: "in", y: 0, x: 0, pinned: false, src: 0, dst: 0, show: "filter", k: null, zoom: 0,
    hover: null, // {panel, dom, y, x} under the cursor
  };
  let panels = [];
  let eventTime = null;
  let renderToken = 0;

  L.manifest = function (m) { M = m; };

  // ---- sheets ------------------------------------------------------------------------------------------
  L.sheet = function (name, obj) {
    const entry = sheets.get(name);
    if (!entry) return;
    const img = new Image();
    img.onload = function () {
      const c = document.createElement("canvas");
      c.width = img.width; c.height = img.height;
      const g = c.getContext("2d", {willReadFrequently: true});
      g.drawImage(img, 0, 0);
      const rgba = g.getImageData(0, 0, img.width, img.height).data;
      const n = img.width * img.height;
      const natRGB = obj.channels === 3;
      const px = new Uint8Array(natRGB ? 3 * n : n);
      if (natRGB) { for (let i = 0; i < n; i++) { px[3 * i] = rgba[4 * i]; px[3 * i + 1] = rgba[4 * i + 1]; px[3 * i + 2] = rgba[4 * i + 2]; } }
      else { for (let i = 0; i < n; i++) px[i] = rgba[4 * i]; }
      delete obj.png;
      obj.width = img.width; obj.height = img.height; obj.px = px;
      entry.data = obj;
      entry.resolve(obj);
      if (entry.script) entry.script.remove();
    };
    img.onerror = function () { entry.reject(new Error("cannot decode sheet " + name)); };
    img.src = "data:image/png;base64," + obj.png;
  };

  function loadSheet(name) {
    let entry = sheets.get(name);
    if (entry) { sheets.delete(name); sheets.set(name, entry); return entry.promise; } // LRU touch
    entry = {};
    entry.promise = new Promise(function (resolve, reject) { entry.resolve = resolve; entry.reject = reject; });
    sheets.set(name, entry);
    const s = document.createElement("script");
    s.src = "data/" + name + ".js";
    s.onerror = function () { sheets.delete(name); entry.reject(new Error("missing data file data/" + name + ".js")); };
    entry.script = s;
    document.head.appendChild(s);
    while (sheets.size > MAX_SHEETS) sheets.delete(sheets.keys().next().value);
    return entry.promise;
  }

  // ---- geometry ----------------------------------------------------------------------------------------
  function dims(model, dom) { const s = dom === "in" ? model.in : model.out; return {c: s[0], h: s[1], w: s[2]}; }
  const other = (dom) => (dom === "in" ? "out" : "in");
  const kindOf = (dom) => (dom === "in" ? "col" : "row");
  const ref = () => M.models[0];
  const svdK = () => Math.max(0, ...M.models.map((m) => (m.svd ? m.svd.k : 0)));
  function mapPixel(y, x, from, to) { // pixel centre (y, x) of domain `from` of the first model -> domain of model `to`
    return function (model, dom) {
      const a = dims(from, dom), b = dims(model, dom);
      return [Math.min(b.h - 1, Math.floor((y + 0.5) * b.h / a.h)), Math.min(b.w - 1, Math.floor((x + 0.5) * b.w / a.w))];
    };
  }
  function selIn(model) { return mapPixel(state.y, state.x, ref())(model, state.dom); }
  function corresponding(model, dom, y, x) { // the box in the other domain that pixel (y, x) maps onto
    const a = dims(model, dom), b = dims(model, other(dom));
    const sy = b.h / a.h, sx = b.w / a.w;
    return [Math.floor(y * sy), Math.floor(x * sx), Math.max(1, Math.round(sy)), Math.max(1, Math.round(sx))];
  }
  // a model shows the selected channel label where it has it; a one-channel model (Y) shows its only channel
  function channelIndex(labels, want) { const i = labels.indexOf(want); return i >= 0 ? i : 0; }
  // the channel labels offered by the selectors: those of the model with the most channels
  function channelLabels(kind, which) {
    return M.models.map((m) => m.kinds[kind][which]).reduce((a, b) => (b.length > a.length ? b : a));
  }

  // ---- data look-up ------------------------------------------------------------------------------------
  // A "view" is what one canvas shows: {kind: 'filter'|'image'|'natural', sheet, entry, t, box, dom, ...}
  function filterRequest(model) {
    const kind = kindOf(state.dom), plan = model.kinds[kind];
    const [y, x] = selIn(model);
    const srcLabel = channelLabels(kindOf(state.dom), "sources")[state.src];
    const dstLabel = channelLabels(kindOf(state.dom), "targets")[state.dst];
    const s = channelIndex(plan.sources, srcLabel), t = channelIndex(plan.targets, dstLabel);
    const b = plan.block, by = Math.floor(y / b) * b, bx = Math.floor(x / b) * b;
    return {kind: "filter", name: model.id + "/" + kind + "_" + s + "_" + by + "_" + bx, y: y, x: x, by: by, bx: bx,
            t: t, s: s, dom: other(state.dom), label: kind === "col" ? "column" : "row",
            src: plan.sources[s], dst: plan.targets[t]};
  }
  function imageRequest(model, dom, what) {
    const labels = dom === "in" ? model.kinds.row.targets : model.kinds.col.targets;
    const dstLabel = channelLabels(kindOf(other(dom)), "targets")[state.dst];
    const t = channelIndex(labels, dstLabel);
    if (what === "natural") return {kind: "natural", name: model.id + "/nat_" + (dom === "in" ? "x0" : "y0"), dom: dom};
    if (what === "svd") {
      const sv = model.svd, k = Math.min(state.k, sv.k - 1), per = sv.per_sheet;
      const base = model.id + "/svd_" + (dom === "in" ? "v" : "u");
      return {kind: "image", name: per < sv.k ? base + "_" + Math.floor(k / per) : base, entry: k % per, t: t, dom: dom, dst: labels[t]};
    }
    const entry = {x0: 0, y0: 0, fx0: 1, residual: 2}[what];
    return {kind: "image", name: model.id + (dom === "in" ? "/img_in" : "/img_out"), entry: entry, t: t, dom: dom, dst: labels[t]};
  }

  // values of a view as a full-domain Uint8 q image (+ scale), or natural RGB
  function resolveView(model, req, sh) {
    const d = dims(model, req.dom);
    if (req.kind === "natural") return {natural: true, sh: sh, w: d.w, h: d.h, lo: sh.lo, hi: sh.hi, channels: sh.channels};
    const nt = sh.nt, cw = sh.cell[1], ch = sh.cell[0];
    let box, scale, r, c;
    if (req.kind === "filter") {
      const k = (req.y - req.by) * sh.size[1] + (req.x - req.bx);
      box = sh.boxes.slice(4 * k, 4 * k + 4); scale = sh.scales[nt * k + req.t];
      r = Math.floor(k / sh.size[1]); c = k % sh.size[1];
    } else {
      box = [0, 0, d.h, d.w]; scale = sh.scales[nt * req.entry + req.t]; r = req.entry; c = 0;
    }
    return {natural: false, sh: sh, w: d.w, h: d.h, box: box, scale: scale,
            sx: (c * nt + req.t) * cw, sy: r * ch};
  }
  function qAt(v, y, x) { // q of view v at domain pixel (y, x)
    const b = v.box;
    if (y < b[0] || x < b[1] || y >= b[0] + b[2] || x >= b[1] + b[3]) return M.zero;
    return v.sh.px[(v.sy + y - b[0]) * v.sh.width + v.sx + x - b[1]];
  }
  function valueAt(v, y, x) {
    if (v.natural) {
      const i = y * v.w + x, span = (v.hi - v.lo) / 255;
      if (v.channels === 3) return [0, 1, 2].map((c) => v.lo + v.sh.px[3 * i + c] * span);
      return [v.lo + v.sh.px[i] * span];
    }
    return [(qAt(v, y, x) - M.zero) / M.levels * v.scale];
  }

  // ---- drawing -----------------------------------------------------------------------------------------
  function paint(base, v) { // native-resolution image of view v into the offscreen canvas `base`
    const g = base.getContext("2d");
    const im = g.createImageData(v.w, v.h);
    const out = new Uint32Array(im.data.buffer);
    if (v.natural) {
      const p = v.sh.px;
      if (v.channels === 3) for (let i = 0; i < out.length; i++) out[i] = 0xff000000 | (p[3 * i + 2] << 16) | (p[3 * i + 1] << 8) | p[3 * i];
      else for (let i = 0; i < out.length; i++) out[i] = 0xff000000 | (p[i] << 16) | (p[i] << 8) | p[i];
    } else {
      out.fill(lut32[M.zero]);
      const b = v.box, px = v.sh.px, sw = v.sh.width;
      for (let yy = 0; yy < b[2]; yy++) {
        const row = (v.sy + yy) * sw + v.sx, o = (b[0] + yy) * v.w + b[1];
        for (let xx = 0; xx < b[3]; xx++) out[o + xx] = lut32[px[row + xx]];
      }
    }
    g.putImageData(im, 0, 0);
  }

  function blit(view, base) {
    const g = view.canvas.getContext("2d");
    g.imageSmoothingEnabled = false;
    g.drawImage(base, 0, 0, view.canvas.width, view.canvas.height);
  }

  function drawOverlay(p) {
    for (const dom of ["in", "out"]) {
      const view = p.views[dom], g = view.overlay.getContext("2d"), z = view.zoom;
      g.clearRect(0, 0, view.overlay.width, view.overlay.height);
      const [y, x] = selIn(p.model);
      let box = null;
      if (state.k !== null && p.model.svd) box = null;
      else if (dom === state.dom) box = [y, x, 1, 1];
      else box = corresponding(p.model, state.dom, y, x);
      if (box) {
        g.lineWidth = 2; g.strokeStyle = state.pinned ? "#ffb000" : "#111";
        g.strokeRect(box[1] * z - 1, box[0] * z - 1, box[3] * z + 2, box[2] * z + 2);
        g.lineWidth = 1; g.strokeStyle = "#fff";
        g.strokeRect(box[1] * z - 2.5, box[0] * z - 2.5, box[3] * z + 5, box[2] * z + 5);
      }
      if (state.hover && state.hover.dom === dom && state.pinned) {
        const h = state.hover;
        g.lineWidth = 1; g.strokeStyle = "#0a0";
        g.strokeRect(h.x * z + 0.5, h.y * z + 0.5, Math.max(1, z - 1), Math.max(1, z - 1));
      }
    }
  }

  function drawLegend(p, v, what) {
    const g = p.legend.getContext("2d"), w = p.legend.width, h = p.legend.height;
    if (v.natural) {
      const grad = g.createLinearGradient(0, 0, w, 0); grad.addColorStop(0, "#000"); grad.addColorStop(1, "#fff");
      g.fillStyle = grad; g.fillRect(0, 0, w, h);
      p.legendLo.textContent = fmt(v.lo); p.legendMid.textContent = ""; p.legendHi.textContent = fmt(v.hi);
      p.legendTitle.textContent = what + " · value range";
      return;
    }
    const im = g.createImageData(w, h), out = new Uint32Array(im.data.buffer);
    for (let x = 0; x < w; x++) { const q = 1 + Math.round(x / (w - 1) * 254); for (let y = 0; y < h; y++) out[y * w + x] = lut32[q]; }
    g.putImageData(im, 0, 0);
    p.legendLo.textContent = fmt(-v.scale); p.legendMid.textContent = "0"; p.legendHi.textContent = fmt(v.scale);
    p.legendTitle.textContent = what + " · colour scale ±" + fmt(v.scale) + (M.normalise === "global" ? " (global)" : "");
  }

  function drawZoom(p, v, dom) { // magnified window of the shown filter around its support / the pixel
    const zc = p.zoomCanvas, g = zc.getContext("2d");
    g.fillStyle = "#2a2d33"; g.fillRect(0, 0, zc.width, zc.height);
    const base = p.views[dom].base;
    let t, l, h, w;
    if (!v.natural && v.box && v.box[2] > 0 && state.k === null && state.show === "filter") { [t, l, h, w] = v.box; }
    else {
      const [y, x] = selIn(p.model);
      const c = dom === state.dom ? [y, x, 1, 1] : corresponding(p.model, state.dom, y, x);
      t = c[0] - 8; l = c[1] - 8; h = c[2] + 16; w = c[3] + 16;
    }
    const side = Math.max(h, w) + 2, cy = t + h / 2, cx = l + w / 2;
    const sy = Math.round(cy - side / 2), sx = Math.round(cx - side / 2);
    const z = Math.max(1, Math.floor(zc.width / side));
    const off = Math.floor((zc.width - side * z) / 2);
    g.imageSmoothingEnabled = false;
    g.drawImage(base, sx, sy, side, side, off, off, side * z, side * z);
    p.zoomCaption.textContent = "magnified ×" + z + " · " + (dom === "in" ? "input" : "output") +
      " rows " + Math.max(0, sy) + "–" + (sy + side - 1) + ", cols " + Math.max(0, sx) + "–" + (sx + side - 1);
  }

  const fmt = (v) => (Number.isInteger(v) && Math.abs(v) < 1e6 ? String(v) : Math.abs(v) >= 1e4 || Math.abs(v) < 1e-3 ? v.toExponential(2) : v.toPrecision(3));

  // which view each canvas of a panel shows now
  function requests(model) {
    if (state.k !== null && model.svd) return {in: imageRequest(model, "in", "svd"), out: imageRequest(model, "out", "svd")};
    const nat = (dom) => (model.natural[dom === "in" ? "x0" : "y0"] ? imageRequest(model, dom, "natural") : imageRequest(model, dom, dom === "in" ? "x0" : "y0"));
    if (state.show === "filter") {
      const f = filterRequest(model);
      return f.dom === "out" ? {in: nat("in"), out: f} : {in: f, out: nat("out")};
    }
    if (state.show === "y0") return {in: nat("in"), out: nat("out")};
    return {in: nat("in"), out: imageRequest(model, "out", state.show)};
  }

  function describe(model, req) {
    const d = (dom) => (dom === "in" ? "input" : "output");
    if (req.kind === "filter") {
      const [y, x] = [req.y, req.x];
      return req.label + " of " + d(other(req.dom)) + " pixel (" + y + ", " + x + ") · " + req.src + " → " + req.dst;
    }
    if (req.kind === "natural") return req.dom === "in" ? "input x₀" : "output y₀ = f(x₀)";
    if (state.k !== null) return (req.dom === "in" ? "eigen-input v" : "eigen-output u") + (state.k + 1) + " · " + req.dst;
    return ({0: req.dom === "in" ? "x₀" : "y₀", 1: "F·x₀", 2: "residual r(x₀)"})[req.entry] + " · " + req.dst;
  }

  function render() {
    if (!M) return;
    const token = ++renderToken, t0 = eventTime;
    eventTime = null;
    L.lastRequested = token;
    const jobs = panels.map(function (p) {
      const reqs = requests(p.model);
      return Promise.all([loadSheet(reqs.in.name), loadSheet(reqs.out.name)]).then(function (got) {
        if (token !== renderToken) return;
        p.current = {};
        for (const [i, dom] of [[0, "in"], [1, "out"]]) {
          const v = resolveView(p.model, reqs[dom], got[i]);
          p.current[dom] = v;
          paint(p.views[dom].base, v);
          blit(p.views[dom], p.views[dom].base);
          p.views[dom].caption.textContent = describe(p.model, reqs[dom]) + " · " + v.w + "×" + v.h;
        }
        const focus = reqs.out.kind === "filter" ? "out" : reqs.in.kind === "filter" ? "in" : (state.show !== "y0" || state.k !== null ? "out" : "in");
        p.focus = focus;
        drawLegend(p, p.current[focus], reqs[focus].kind === "filter" ? reqs[focus].label : describe(p.model, reqs[focus]));
        drawZoom(p, p.current[focus], focus);
        drawOverlay(p);
        readout(p);
      });
    });
    Promise.all(jobs).then(function () {
      if (token !== renderToken) return;
      status("");
      if (t0 !== null) requestAnimationFrame(function () { L.latencies.push(performance.now() - t0); });
      L.rendered = token;
    }, function (err) { status(String(err.message || err)); });
    updateControls();
    writeHash();
  }

  function readout(p) {
    const parts = [];
    const [y, x] = selIn(p.model);
    parts.push((state.pinned ? "pinned " : "") + (state.dom === "in" ? "input" : "output") + " pixel (" + y + ", " + x + ")");
    const h = state.hover;
    if (h && p.current) {
      const m = mapPixel(h.y, h.x, ref())(p.model, h.dom);
      const v = p.current[h.dom];
      if (v) {
        const vals = valueAt(v, m[0], m[1]);
        parts.push("under cursor (" + m[0] + ", " + m[1] + "): " + vals.map(fmt).join(", "));
      }
    }
    p.readout.textContent = parts.join(" · ");
  }

  // ---- controls and state ------------------------------------------------------------------------------
  function status(text) { const s = document.getElementById("status"); s.textContent = text; s.hidden = !text; }

  function fillSelect(sel, labels, value) {
    const cur = Array.from(sel.options).map((o) => o.textContent).join("|");
    if (cur !== labels.join("|")) {
      sel.innerHTML = "";
      labels.forEach(function (lab, i) { const o = document.createElement("option"); o.value = i; o.textContent = lab; sel.appendChild(o); });
    }
    sel.value = String(value);
  }

  function updateControls() {
    const kind = kindOf(state.dom), sources = channelLabels(kind, "sources"), targets = channelLabels(kind, "targets");
    state.src = Math.min(state.src, sources.length - 1); state.dst = Math.min(state.dst, targets.length - 1);
    fillSelect(document.getElementById("src-channel"), sources, state.src);
    fillSelect(document.getElementById("dst-channel"), targets, state.dst);
    document.querySelectorAll("[data-mode]").forEach((b) => b.classList.toggle("on", kindOf(state.dom) === b.dataset.mode));
    document.querySelectorAll("[data-show]").forEach((b) => b.classList.toggle("on", state.k === null && state.show === b.dataset.show));
    const pin = document.getElementById("pin");
    pin.textContent = state.pinned ? "pinned" : "unpinned"; pin.classList.toggle("on", state.pinned);
    document.getElementById("zoom").textContent = state.zoom >= 0 ? "+" + state.zoom : String(state.zoom);
    panels.forEach(function (p) {
      if (p.svdList) p.svdList.querySelectorAll("button").forEach((b, i) => b.classList.toggle("on", state.k === i));
      if (p.drawSvd) p.drawSvd();
    });
  }

  function select(dom, y, x) {
    const d = dims(ref(), dom);
    state.dom = dom; state.y = Math.max(0, Math.min(d.h - 1, y)); state.x = Math.max(0, Math.min(d.w - 1, x));
    state.k = null;
  }

  function switchDomain() {
    const [y, x, h, w] = corresponding(ref(), state.dom, state.y, state.x);
    select(other(state.dom), y + Math.floor(h / 2), x + Math.floor(w / 2));
  }

  function writeHash() {
    const h = "#" + ["m=" + kindOf(state.dom), "y=" + state.y, "x=" + state.x, "s=" + state.src, "t=" + state.dst,
      "show=" + state.show, "pin=" + (state.pinned ? 1 : 0), "z=" + state.zoom].concat(state.k !== null ? ["k=" + state.k] : []).join("&");
    if (location.hash !== h) history.replaceState(null, "", h);
  }

  function readHash() {
    const q = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (kv) { const [k, v] = kv.split("="); if (k) q[k] = decodeURIComponent(v || ""); });
    const int = (v, d) => (v !== undefined && /^-?\d+$/.test(v) ? parseInt(v, 10) : d);
    if (q.m === "row" || q.m === "col") {
      const dom = q.m === "col" ? "in" : "out", d = dims(ref(), dom);
      select(dom, int(q.y, d.h >> 1), int(q.x, d.w >> 1));
    }
    state.src = Math.max(0, int(q.s, state.src)); state.dst = Math.max(0, int(q.t, state.dst));
    if (["filter", "y0", "fx0", "residual"].includes(q.show)) state.show = q.show;
    state.pinned = q.pin === "1";
    state.zoom = int(q.z, state.zoom);
    state.k = q.k !== undefined && svdK() ? Math.max(0, Math.min(svdK() - 1, int(q.k, 0))) : null;
  }

  // ---- building the page -------------------------------------------------------------------------------
  function el(tag, cls, parent, text) { const e = document.createElement(tag); if (cls) e.className = cls; if (parent) parent.appendChild(e); if (text !== undefined) e.textContent = text; return e; }

  function zoomFor(model, dom) { // integer zoom: both images about 520 px, the zoom keys scale both alike
    const base = (d) => Math.max(1, Math.floor(520 / Math.max(d.h, d.w)));
    const bOut = base(dims(model, "out")), b = base(dims(model, dom));
    return Math.max(1, Math.round(b * Math.max(1, bOut + state.zoom) / bOut));
  }

  function sizeCanvases(p) {
    for (const dom of ["in", "out"]) {
      const v = p.views[dom], d = dims(p.model, dom), z = zoomFor(p.model, dom);
      v.zoom = z;
      for (const c of [v.canvas, v.overlay]) { c.width = d.w * z; c.height = d.h * z; }
      v.wrap.style.width = d.w * z + "px"; v.wrap.style.height = d.h * z + "px";
    }
  }

  // attribute values as short text: numbers rounded, lists inline, hashes shortened (full value in the tooltip)
  function show(v) {
    if (v === null || v === undefined) return "—";
    if (typeof v === "number") return fmt(v);
    if (typeof v === "string") return /^[0-9a-f]{64}$/.test(v) ? v.slice(0, 12) + "…" : v;
    if (Array.isArray(v)) return v.map(show).join(", ");
    return Object.entries(v).map(([k, x]) => k + " " + show(x)).join(" · ");
  }
  function row(dl, key, value, title) {
    el("dt", null, dl, key);
    const dd = el("dd", null, dl, value);
    if (title) dd.title = title;
  }
  function infoTable(parent, attrs) {
    const main = el("dl", "info", parent);
    row(main, "model", show(attrs.model));
    row(main, "weights", show(attrs.weights));
    if (attrs.weights_sha256 && attrs.weights_sha256 !== attrs.weights) row(main, "weights sha256", show(attrs.weights_sha256), attrs.weights_sha256);
    row(main, "image", show(attrs.image) + (attrs.crop ? " · crop " + show(attrs.crop) : ""));
    if (attrs.image_sha256) row(main, "image sha256", show(attrs.image_sha256), attrs.image_sha256);
    const ver = attrs.verification || {};
    for (const k of Object.keys(ver)) row(main, k.replace(/_/g, " "), show(ver[k]));
    const det = el("details", "infobox", parent);
    el("summary", null, det, "all attributes");
    const dl = el("dl", "info", det);
    for (const k of Object.keys(attrs).sort()) if (k !== "identity") row(dl, k, show(attrs[k]), JSON.stringify(attrs[k]));
  }

  function svdPanel(p, parent) {
    const sv = p.model.svd;
    const box = el("div", "svd", parent);
    el("h3", null, box, "SVD · " + sv.k + " singular pairs");
    const plot = el("canvas", "svd-plot", box); plot.width = 220; plot.height = 93;
    const g = plot.getContext("2d"), S = sv.S, top = Math.log10(S[0] || 1), bot = Math.log10(Math.max(S[S.length - 1], S[0] * 1e-8) || 1e-8);
    const span = Math.max(1e-9, top - bot), bw = (plot.width - 8) / Math.max(1, S.length);
    p.drawSvd = function () {
      g.fillStyle = "#1c1e22"; g.fillRect(0, 0, plot.width, plot.height);
      S.forEach(function (s, i) {
        const x = 4 + i * bw, y = 6 + (top - Math.log10(Math.max(s, 1e-30))) / span * (plot.height - 16);
        g.fillStyle = state.k === i ? "#ffffff" : "#e8a33d";
        g.fillRect(x, y, Math.max(1, bw - (bw > 3 ? 1 : 0)), plot.height - 4 - y);
      });
    };
    p.drawSvd();
    el("div", "muted small", box, "σ₁ = " + fmt(S[0]) + " … σ" + S.length + " = " + fmt(S[S.length - 1]) + " (log scale); click a bar or a number");
    plot.addEventListener("click", function (e) {
      const r = plot.getBoundingClientRect();
      state.k = Math.max(0, Math.min(S.length - 1, Math.floor((e.clientX - r.left - 4) * plot.width / r.width / bw))); render();
    });
    const list = el("div", "svd-list", box);
    S.forEach(function (s, i) {
      const b = el("button", null, list, String(i + 1)); b.title = "σ" + (i + 1) + " = " + fmt(s) + (sv.residuals ? " · residual " + fmt(sv.residuals[i]) : "");
      b.addEventListener("click", function () { state.k = state.k === i ? null : i; render(); });
    });
    p.svdList = list;
  }

  function buildPanel(model) {
    const p = {model: model, views: {}};
    const sec = el("section", "panel", document.getElementById("panels"));
    const head = el("div", "panel-head", sec);
    el("h2", null, head, model.title);
    el("span", "muted", head, "input " + model.in.join("×") + " → output " + model.out.join("×") + (model.attrs.weights ? " · weights " + model.attrs.weights : ""));
    const row = el("div", "views", sec);
    for (const dom of ["in", "out"]) {
      const fig = el("figure", "view " + dom, row);
      const wrap = el("div", "canvas-wrap", fig);
      const canvas = el("canvas", "image", wrap), overlay = el("canvas", "overlay", wrap);
      canvas.dataset.dom = dom; canvas.dataset.model = model.id;
      const caption = el("figcaption", null, fig);
      const base = document.createElement("canvas"); const d = dims(model, dom); base.width = d.w; base.height = d.h;
      p.views[dom] = {canvas: canvas, overlay: overlay, wrap: wrap, caption: caption, base: base, zoom: 1};
      overlay.addEventListener("mousemove", function (e) { onPointer(p, dom, e, false); });
      overlay.addEventListener("click", function (e) { onPointer(p, dom, e, true); });
      overlay.addEventListener("mouseleave", function () { state.hover = null; panels.forEach(function (q) { drawOverlay(q); readout(q); }); });
    }
    const side = el("div", "side", row);
    p.zoomCanvas = el("canvas", "zoom", side); p.zoomCanvas.width = 220; p.zoomCanvas.height = 220;
    p.zoomCaption = el("div", "muted small", side);
    const leg = el("div", "legend", side);
    p.legendTitle = el("div", "muted small", leg);
    p.legend = el("canvas", null, leg); p.legend.width = 220; p.legend.height = 12;
    const labels = el("div", "legend-labels", leg);
    p.legendLo = el("span", null, labels); p.legendMid = el("span", null, labels); p.legendHi = el("span", null, labels);
    p.readout = el("div", "readout", side);
    infoTable(el("div", "infopanel", side), model.attrs);
    if (model.svd) svdPanel(p, side);
    sizeCanvases(p);
    return p;
  }

  function onPointer(p, dom, e, click) {
    const view = p.views[dom], r = view.overlay.getBoundingClientRect();
    const d = dims(p.model, dom);
    const y = Math.max(0, Math.min(d.h - 1, Math.floor((e.clientY - r.top) / view.zoom)));
    const x = Math.max(0, Math.min(d.w - 1, Math.floor((e.clientX - r.left) / view.zoom)));
    // cursor in the first model's pixel units of this domain (the shared cursor)
    const a = dims(ref(), dom);
    const ry = Math.min(a.h - 1, Math.floor((y + 0.5) * a.h / d.h)), rx = Math.min(a.w - 1, Math.floor((x + 0.5) * a.w / d.w));
    state.hover = {dom: dom, y: ry, x: rx};
    eventTime = e.timeStamp || performance.now();
    if (click) {
      if (state.pinned && state.dom === dom && state.y === ry && state.x === rx) state.pinned = false;
      else { select(dom, ry, rx); state.pinned = true; }
      render();
    } else if (!state.pinned && (state.dom !== dom || state.y !== ry || state.x !== rx || state.k !== null)) {
      select(dom, ry, rx); render();
    } else { panels.forEach(function (q) { drawOverlay(q); readout(q); }); }
  }

  function onKey(e) {
    if (e.target && (e.target.tagName === "SELECT" || e.target.tagName === "INPUT")) return;
    const step = e.shiftKey ? 4 : 1;
    const moves = {ArrowUp: [-step, 0], ArrowDown: [step, 0], ArrowLeft: [0, -step], ArrowRight: [0, step]};
    eventTime = e.timeStamp || performance.now();
    const plan = () => ({sources: channelLabels(kindOf(state.dom), "sources"), targets: channelLabels(kindOf(state.dom), "targets")});
    if (moves[e.key]) { select(state.dom, state.y + moves[e.key][0], state.x + moves[e.key][1]); }
    else if (e.key === "t") switchDomain();
    else if (e.key === "c") state.src = (state.src + 1) % plan().sources.length;
    else if (e.key === "v") state.dst = (state.dst + 1) % plan().targets.length;
    else if (e.key === "p" || e.key === "Enter") state.pinned = !state.pinned;
    else if (e.key === "Escape") state.pinned = false;
    else if (e.key === "f") { state.show = "filter"; state.k = null; }
    else if (e.key === "y") { state.show = "y0"; state.k = null; }
    else if (e.key === "l") { state.show = "fx0"; state.k = null; }
    else if (e.key === "r") { state.show = "residual"; state.k = null; }
    else if ((e.key === "]" || e.key === "[") && svdK()) {
      const k = state.k === null ? (e.key === "]" ? 0 : svdK() - 1) : state.k + (e.key === "]" ? 1 : -1);
      state.k = k < 0 || k >= svdK() ? null : k;
    } else if (e.key === "+" || e.key === "=") { state.zoom += 1; panels.forEach(sizeCanvases); }
    else if (e.key === "-") { state.zoom -= 1; panels.forEach(sizeCanvases); }
    else return;
    e.preventDefault();
    render();
  }

  function init() {
    if (!M) { status("No data: data/manifest.js is missing. Export a site with `linterp export STORE --out DIR`."); return; }
    lut32 = new Uint32Array(256);
    M.lut.forEach(function (c, i) { lut32[i] = 0xff000000 | (c[2] << 16) | (c[1] << 8) | c[0]; });
    const a = M.models[0].attrs;
    document.getElementById("subtitle").textContent = (a.image || "image") + " · " + M.models.map((m) => m.title).join(" · ");
    document.title = "linterp · " + (a.image || "") + " · " + M.models.map((m) => m.title).join(", ");
    const d = dims(ref(), "in");
    select("in", d.h >> 1, d.w >> 1);
    readHash();
    panels = M.models.map(buildPanel);
    document.querySelectorAll("[data-mode]").forEach(function (b) {
      b.addEventListener("click", function () { if (kindOf(state.dom) !== b.dataset.mode) switchDomain(); render(); });
    });
    document.querySelectorAll("[data-show]").forEach(function (b) { b.addEventListener("click", function () { state.show = b.dataset.show; state.k = null; render(); }); });
    document.getElementById("src-channel").addEventListener("change", function (e) { state.src = parseInt(e.target.value, 10); render(); });
    document.getElementById("dst-channel").addEventListener("change", function (e) { state.dst = parseInt(e.target.value, 10); render(); });
    document.getElementById("pin").addEventListener("click", function () { state.pinned = !state.pinned; render(); });
    document.getElementById("zoom-in").addEventListener("click", function () { state.zoom += 1; panels.forEach(sizeCanvases); render(); });
    document.getElementById("zoom-out").addEventListener("click", function () { state.zoom -= 1; panels.forEach(sizeCanvases); render(); });
    document.addEventListener("keydown", onKey);
    window.addEventListener("hashchange", function () { readHash(); panels.forEach(sizeCanvases); render(); });
    panels.forEach(sizeCanvases);
    L.ready = true;
    render();
  }

  // test and scripting hooks: the state, and what each canvas shows (scale and box of the filter)
  L.state = function () { return JSON.parse(JSON.stringify(Object.assign({}, state, {hover: null}))); };
  L.shown = function (i, dom) {
    const v = panels[i].current && panels[i].current[dom];
    return v ? {natural: v.natural, scale: v.scale, box: v.box, lo: v.lo, hi: v.hi, w: v.w, h: v.h, zoom: panels[i].views[dom].zoom} : null;
  };
  L.select = function (dom, y, x, opts) { select(dom, y, x); Object.assign(state, opts || {}); panels.forEach(sizeCanvases); render(); };

  document.addEventListener("DOMContentLoaded", init);
})();
