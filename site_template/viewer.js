/* linterp viewer: rows and columns of F(x0), F·x0, residual and eigen-images, from a static site folder.
 *
 * Data arrive as scripts (works from file://): data/manifest.js calls LINTERP.manifest(m); every sheet
 * data/<model>/<name>.js calls LINTERP.sheet(name, {meta..., png}). A sheet is an 8-bit PNG of quantised
 * values q (128 = 0, value = (q - 128) / 127 * scale); the colour table comes with the manifest. The PNG comes
 * inside a script because a page opened from file:// may not read back the pixels of image files it loads.
 *
 * At scale: every image is drawn at its native resolution or larger (integer zoom), in views of bounded size that
 * pan (drag, w a s d) and zoom (wheel, + - 0) together across both domains and all panels. Whole images are
 * tiled; only the tiles and filter sheets in view are decoded, and decoded sheets and painted tiles live in
 * LRU caches of bounded size, so memory does not grow with the site. A lens next to the cursor magnifies the
 * current row / column.
 */
"use strict";
(function () {
  const L = (window.LINTERP = {latencies: [], ready: false, rendered: 0, lastRequested: 0});
  let M = null; // the manifest
  const SHEET_BYTES = 96 * 1048576; // decoded sheet values kept (one byte each), least recently used dropped
  const TILE_CANVASES = 96; // painted tiles kept (RGBA canvases)
  const LENS = 200; // lens side, CSS pixels
  const sheets = new Map(); // name -> {promise, data, bytes}
  let sheetBytes = 0;
  const painted = new Map(); // tile sheet name + plane -> canvas of its colours
  let lut32 = null; // Uint32Array(256) RGBA colours of q

  const state = {
    dom: "in", y: 0, x: 0, panel: 0, // the selection: pixel (y, x) of domain dom of the model of panel `panel`
    pinned: false, src: 0, dst: 0, show: "filter", k: null,
    zoom: 0, cy: 0.5, cx: 0.5, // zoom: screen px per output pixel of the first model (0: fit); view centre
    lens: true, hover: null, // {dom, y, x, model}: the pixel under the cursor, in the grid of the model hovered
  };
  let panels = [];
  let eventTime = null;
  let renderToken = 0;
  let drag = null, dragged = false; // a pan by dragging in progress; a drag just ended

  L.manifest = function (m) { M = m; };

  // ---- sheets ------------------------------------------------------------------------------------------
  let scratch = null;
  function decodeCanvas(w, h) { // one canvas reused for every decode (read back with getImageData)
    if (!scratch) { scratch = document.createElement("canvas"); scratch.g = scratch.getContext("2d", {willReadFrequently: true}); }
    if (scratch.width < w || scratch.height < h) { scratch.width = Math.max(w, scratch.width); scratch.height = Math.max(h, scratch.height); }
    return scratch.g;
  }

  L.sheet = function (name, obj) {
    const entry = sheets.get(name);
    if (!entry || entry.data) return;
    const img = new Image();
    img.onload = function () {
      const w = img.width, h = img.height, g = decodeCanvas(w, h);
      g.globalCompositeOperation = "copy";
      g.drawImage(img, 0, 0);
      const rgba = g.getImageData(0, 0, w, h).data;
      const n = w * h, three = obj.channels === 3 || obj.grey; // RGB, or grey packed three values a pixel
      const px = new Uint8Array(three ? 3 * n : n);
      if (three) { for (let i = 0, j = 0; i < n; i++, j += 4) { px[3 * i] = rgba[j]; px[3 * i + 1] = rgba[j + 1]; px[3 * i + 2] = rgba[j + 2]; } }
      else { for (let i = 0; i < n; i++) px[i] = rgba[4 * i]; }
      delete obj.png;
      obj.width = obj.grey ? 3 * w : w; obj.height = h; obj.px = px; // width: values a row
      entry.data = obj; entry.bytes = px.length; sheetBytes += px.length;
      img.src = "";
      if (entry.script) { entry.script.remove(); entry.script = null; }
      trimSheets();
      entry.resolve(obj);
    };
    img.onerror = function () { entry.reject(new Error("cannot decode sheet " + name)); };
    img.src = "data:image/png;base64," + obj.png;
  };

  function trimSheets() { // drop the least recently used decoded sheets beyond SHEET_BYTES (pending loads stay)
    for (const [name, e] of sheets) {
      if (sheetBytes <= SHEET_BYTES) break;
      if (!e.data || e.keep === renderToken) continue;
      sheets.delete(name); sheetBytes -= e.bytes;
    }
  }

  function loadSheet(name) {
    let entry = sheets.get(name);
    if (entry) { sheets.delete(name); sheets.set(name, entry); entry.keep = renderToken; return entry.promise; } // LRU touch
    entry = {keep: renderToken};
    entry.promise = new Promise(function (resolve, reject) { entry.resolve = resolve; entry.reject = reject; });
    sheets.set(name, entry);
    const s = document.createElement("script");
    s.src = "data/" + name + ".js";
    s.onerror = function () { sheets.delete(name); entry.reject(new Error("missing data file data/" + name + ".js")); };
    entry.script = s;
    document.head.appendChild(s);
    return entry.promise;
  }

  // ---- geometry ----------------------------------------------------------------------------------------
  function dims(model, dom) { const s = dom === "in" ? model.in : model.out; return {c: s[0], h: s[1], w: s[2]}; }
  const other = (dom) => (dom === "in" ? "out" : "in");
  const kindOf = (dom) => (dom === "in" ? "col" : "row");
  const ref = () => M.models[0];
  const svdK = () => Math.max(0, ...M.models.map((m) => (m.svd ? m.svd.k : 0)));
  function mapPixel(y, x, from) { // pixel centre (y, x) of domain `dom` of model `from` -> the same domain of `model`
    return function (model, dom) {
      const a = dims(from, dom), b = dims(model, dom);
      return [Math.min(b.h - 1, Math.floor((y + 0.5) * b.h / a.h)), Math.min(b.w - 1, Math.floor((x + 0.5) * b.w / a.w))];
    };
  }
  const owner = () => M.models[state.panel]; // the model in whose grid the selection was made
  // the selection in a model's grid: the selected pixel itself, or the pixel of `model` at its centre
  function selIn(model) { return mapPixel(state.y, state.x, owner())(model, state.dom); }
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

  // ---- views: zoom and pan -----------------------------------------------------------------------------
  const MAX_ZOOM = 256; // screen pixels per image pixel, at most (fit included)
  // CSS px beside the two views: the side column (about 348 px with its gaps and paddings) and a scrollbar
  const SIDE = 372;
  function viewMax() { // largest canvas of one view, CSS px: two views and the side column side by side
    const w = Math.max(256, Math.floor((window.innerWidth - SIDE) / 2));
    return [Math.max(256, Math.min(w, window.innerHeight - 150)), w];
  }
  let fitted = null; // {key: window size, z}
  function fitZoom() { // the largest integer zoom at which every domain of every model fits its view (at least 1)
    const [mh, mw] = viewMax(), key = mh + "x" + mw;
    if (fitted && fitted.key === key) return fitted.z;
    const d = dims(ref(), "out");
    let z = Math.max(1, Math.min(MAX_ZOOM, Math.floor(mw / d.w), Math.floor(mh / d.h)));
    const fits = (z) => M.models.every((m) => ["in", "out"].every(function (dom) {
      const e = dims(m, dom), k = zoomAt(z, m, dom);
      return e.w * k <= mw && e.h * k <= mh;
    }));
    while (z > 1 && !fits(z)) z--;
    fitted = {key: key, z: z};
    return z;
  }
  const refZoom = () => (state.zoom > 0 ? state.zoom : fitZoom());
  // integer zoom of a domain when the first model's output is at zoom z: the same field of view
  function zoomAt(z, model, dom) { return Math.max(1, Math.round(z * dims(ref(), "out").w / dims(model, dom).w)); }
  const domZoom = (model, dom) => zoomAt(refZoom(), model, dom);
  function layout(model, dom) { // {z, cw, ch (canvas px), oy, ox (image pixel at the canvas' top-left), vh, vw}
    const d = dims(model, dom), z = domZoom(model, dom), [mh, mw] = viewMax();
    const cw = Math.min(d.w * z, mw), ch = Math.min(d.h * z, mh);
    const vw = Math.ceil(cw / z), vh = Math.ceil(ch / z);
    const clamp = (v, n, span) => Math.max(0, Math.min(n - Math.floor(span), v));
    const ox = clamp(Math.round(state.cx * d.w - cw / z / 2), d.w, cw / z);
    const oy = clamp(Math.round(state.cy * d.h - ch / z / 2), d.h, ch / z);
    return {z: z, cw: cw, ch: ch, oy: oy, ox: ox, vh: Math.min(vh, d.h - oy), vw: Math.min(vw, d.w - ox)};
  }
  function sizeViews(p) {
    for (const dom of ["in", "out"]) {
      const v = p.views[dom], lay = layout(p.model, dom);
      v.lay = lay; v.zoom = lay.z;
      for (const c of [v.canvas, v.overlay]) if (c.width !== lay.cw || c.height !== lay.ch) { c.width = lay.cw; c.height = lay.ch; }
      v.wrap.style.width = lay.cw + "px"; v.wrap.style.height = lay.ch + "px";
    }
  }
  function clampCentre() { // keep the centre where the first model's output view can be (its edges stop a pan)
    const d = dims(ref(), "out"), z = domZoom(ref(), "out"), [mh, mw] = viewMax();
    const span = (n, m) => Math.min(0.5, Math.min(n * z, m) / z / 2 / n); // half the shown fraction
    const hy = span(d.h, mh), hx = span(d.w, mw);
    state.cy = Math.max(hy, Math.min(1 - hy, state.cy)); state.cx = Math.max(hx, Math.min(1 - hx, state.cx));
  }
  // anchor: {view, model, dom, fy, fx, clientY, clientX}: image fraction (fy, fx) of the view stays at that point
  // of the window (the views are resized first: a zoom changes their sizes, and so where they sit on the page)
  function setZoom(z, anchor) {
    z = Math.max(1, Math.min(MAX_ZOOM, Math.round(z)));
    state.zoom = z;
    panels.forEach(sizeViews);
    if (anchor) {
      const d = dims(anchor.model, anchor.dom), lay = layout(anchor.model, anchor.dom);
      const r = anchor.view.overlay.getBoundingClientRect();
      state.cy = anchor.fy + (lay.ch / 2 - (anchor.clientY - r.top)) / (lay.z * d.h);
      state.cx = anchor.fx + (lay.cw / 2 - (anchor.clientX - r.left)) / (lay.z * d.w);
    }
    clampCentre();
    panels.forEach(sizeViews);
  }
  function zoomStep(sign, anchor) {
    const z = refZoom();
    setZoom(sign > 0 ? Math.max(z + 1, Math.round(z * 1.25)) : Math.min(z - 1, Math.round(z / 1.25)), anchor);
  }
  function selectionAnchor() { // the selected pixel, at its place on screen
    const p = panels[state.panel], view = p.views[state.dom], lay = view.lay, d = dims(p.model, state.dom);
    const r = view.overlay.getBoundingClientRect();
    return {view: view, model: p.model, dom: state.dom, fy: (state.y + 0.5) / d.h, fx: (state.x + 0.5) / d.w,
            clientY: r.top + (state.y + 0.5 - lay.oy) * lay.z, clientX: r.left + (state.x + 0.5 - lay.ox) * lay.z};
  }
  function reveal(model, dom, y, x) { // pan the least so that pixel (y, x) of a model's domain is in view
    const lay = layout(model, dom), d = dims(model, dom);
    const outY = y < lay.oy || y >= lay.oy + Math.floor(lay.ch / lay.z);
    const outX = x < lay.ox || x >= lay.ox + Math.floor(lay.cw / lay.z);
    if (!outY && !outX) return false;
    if (outY) state.cy = (y + 0.5) / d.h;
    if (outX) state.cx = (x + 0.5) / d.w;
    clampCentre();
    panels.forEach(sizeViews);
    return true;
  }

  // ---- data look-up ------------------------------------------------------------------------------------
  // A request says what one view shows: a filter (one sheet), a signed image or natural colours (tiles)
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
    if (what === "natural") {
      const image = dom === "in" ? "x0" : "y0", meta = model.images["nat_" + image];
      return {kind: "natural", image: image, prefix: model.id + "/nat_" + image, dom: dom, lo: meta.lo, hi: meta.hi, channels: meta.channels};
    }
    const image = what === "svd" ? (dom === "in" ? "v" : "u") + Math.min(state.k, model.svd.k - 1) : what;
    return {kind: "image", image: image, prefix: model.id + "/img_" + image, t: t, dom: dom, dst: labels[t],
            scale: model.images[image].scales[t]};
  }
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
  function tileNames(model, req, lay) { // the tile sheets of a tiled image that overlap the view
    const T = model.tile, d = dims(model, req.dom), out = [];
    for (let ty = Math.floor(lay.oy / T) * T; ty < Math.min(d.h, lay.oy + lay.vh); ty += T)
      for (let tx = Math.floor(lay.ox / T) * T; tx < Math.min(d.w, lay.ox + lay.vw); tx += T) out.push(req.prefix + "_" + ty + "_" + tx);
    return out;
  }
  function sheetNames(model, req, lay) { return req.kind === "filter" ? [req.name] : tileNames(model, req, lay); }

  // a resolved view: what is drawn, with its values at every pixel of its domain
  function resolveView(model, req, got) {
    const d = dims(model, req.dom);
    const v = {req: req, w: d.w, h: d.h, natural: req.kind === "natural"};
    if (req.kind === "filter") {
      const sh = got[0], nt = sh.nt, k = (req.y - req.by) * sh.size[1] + (req.x - req.bx);
      const r = Math.floor(k / sh.size[1]), c = k % sh.size[1];
      v.sh = sh; v.box = sh.boxes.slice(4 * k, 4 * k + 4); v.scale = sh.scales[nt * k + req.t];
      v.sx = (c * nt + req.t) * sh.cell[1]; v.sy = r * sh.cell[0];
    } else {
      v.tiles = got; v.scale = req.scale; v.lo = req.lo; v.hi = req.hi; v.channels = req.channels;
      v.box = [0, 0, d.h, d.w];
    }
    return v;
  }
  function tileAt(v, y, x) {
    for (const t of v.tiles) if (y >= t.origin[0] && y < t.origin[0] + t.size[0] && x >= t.origin[1] && x < t.origin[1] + t.size[1]) return t;
    return null;
  }
  function qAt(v, y, x) { // q of a signed view at domain pixel (y, x); null where not loaded
    if (v.sh) {
      const b = v.box;
      if (y < b[0] || x < b[1] || y >= b[0] + b[2] || x >= b[1] + b[3]) return M.zero;
      return v.sh.px[(v.sy + y - b[0]) * v.sh.width + v.sx + x - b[1]];
    }
    const t = tileAt(v, y, x);
    return t ? t.px[(y - t.origin[0]) * t.width + v.req.t * t.size[1] + x - t.origin[1]] : null;
  }
  function valueAt(v, y, x) {
    if (v.natural) {
      const t = tileAt(v, y, x);
      if (!t) return null;
      const i = (y - t.origin[0]) * t.width + x - t.origin[1], span = (v.hi - v.lo) / 255;
      if (v.channels === 3) return [0, 1, 2].map((c) => v.lo + t.px[3 * i + c] * span);
      return [v.lo + t.px[i] * span];
    }
    const q = qAt(v, y, x);
    return q === null ? null : [(q - M.zero) / M.levels * v.scale];
  }
  function colourAt(v, y, x) { // RGBA (little-endian Uint32) of a view at domain pixel (y, x)
    if (v.natural) {
      const t = tileAt(v, y, x);
      if (!t) return 0xff000000;
      const i = (y - t.origin[0]) * t.width + x - t.origin[1], p = t.px;
      return v.channels === 3 ? 0xff000000 | (p[3 * i + 2] << 16) | (p[3 * i + 1] << 8) | p[3 * i] : 0xff000000 | (p[i] << 16) | (p[i] << 8) | p[i];
    }
    const q = qAt(v, y, x);
    return lut32[q === null ? M.zero : q];
  }

  // ---- drawing -----------------------------------------------------------------------------------------
  let pieceCanvas = null;
  function pieceOf(w, h) { // a small canvas reused to hold one native-resolution piece before scaling
    if (!pieceCanvas) { pieceCanvas = document.createElement("canvas"); pieceCanvas.g = pieceCanvas.getContext("2d"); }
    if (pieceCanvas.width < w || pieceCanvas.height < h) { pieceCanvas.width = Math.max(w, pieceCanvas.width); pieceCanvas.height = Math.max(h, pieceCanvas.height); }
    return pieceCanvas;
  }
  function paintedTile(v, t) { // canvas with the colours of tile sheet t (plane v.req.t), cached
    const key = t.name + "|" + (v.natural ? "n" : v.req.t);
    let c = painted.get(key);
    if (c) { painted.delete(key); painted.set(key, c); return c; }
    const [th, tw] = t.size;
    c = document.createElement("canvas"); c.width = tw; c.height = th;
    const g = c.getContext("2d"), im = g.createImageData(tw, th), out = new Uint32Array(im.data.buffer), p = t.px;
    if (v.natural && v.channels === 3) for (let i = 0; i < out.length; i++) out[i] = 0xff000000 | (p[3 * i + 2] << 16) | (p[3 * i + 1] << 8) | p[3 * i];
    else if (v.natural) {
      for (let y = 0; y < th; y++) for (let x = 0, r = y * t.width; x < tw; x++) { const q = p[r + x]; out[y * tw + x] = 0xff000000 | (q << 16) | (q << 8) | q; }
    } else {
      const off = v.req.t * tw;
      for (let y = 0; y < th; y++) { const row = y * t.width + off, o = y * tw; for (let x = 0; x < tw; x++) out[o + x] = lut32[p[row + x]]; }
    }
    g.putImageData(im, 0, 0);
    painted.set(key, c);
    while (painted.size > TILE_CANVASES) painted.delete(painted.keys().next().value);
    return c;
  }
  function paint(view, v) { // draw view v into the view's canvas at its zoom and pan
    const lay = view.lay, g = view.canvas.getContext("2d"), z = lay.z;
    g.imageSmoothingEnabled = false;
    const bg = v.natural ? 0xff000000 : lut32[M.zero];
    g.fillStyle = "rgb(" + (bg & 255) + "," + ((bg >> 8) & 255) + "," + ((bg >> 16) & 255) + ")";
    g.fillRect(0, 0, view.canvas.width, view.canvas.height);
    const y0 = lay.oy, x0 = lay.ox, y1 = lay.oy + lay.vh, x1 = lay.ox + lay.vw;
    if (v.sh) { // a filter: only the part of its box in view, at native resolution, then scaled
      const b = v.box, t = Math.max(y0, b[0]), l = Math.max(x0, b[1]), bot = Math.min(y1, b[0] + b[2]), r = Math.min(x1, b[1] + b[3]);
      if (bot <= t || r <= l) return;
      const w = r - l, h = bot - t, pc = pieceOf(w, h), im = pc.g.createImageData(w, h), out = new Uint32Array(im.data.buffer);
      const px = v.sh.px, sw = v.sh.width;
      for (let yy = 0; yy < h; yy++) {
        const row = (v.sy + t + yy - b[0]) * sw + v.sx + l - b[1], o = yy * w;
        for (let xx = 0; xx < w; xx++) out[o + xx] = lut32[px[row + xx]];
      }
      pc.g.putImageData(im, 0, 0);
      g.drawImage(pc, 0, 0, w, h, (l - x0) * z, (t - y0) * z, w * z, h * z);
      return;
    }
    for (const tile of v.tiles) {
      const [ty, tx] = tile.origin, [th, tw] = tile.size;
      const t = Math.max(y0, ty), l = Math.max(x0, tx), bot = Math.min(y1, ty + th), r = Math.min(x1, tx + tw);
      if (bot <= t || r <= l) continue;
      g.drawImage(paintedTile(v, tile), l - tx, t - ty, r - l, bot - t, (l - x0) * z, (t - y0) * z, (r - l) * z, (bot - t) * z);
    }
  }

  function markerBox(p, dom) { // the selection's box in a domain of a panel's model (null for eigen-images)
    if (state.k !== null && p.model.svd) return null;
    const [y, x] = selIn(p.model);
    return dom === state.dom ? [y, x, 1, 1] : corresponding(p.model, state.dom, y, x);
  }
  function drawOverlay(p) {
    for (const dom of ["in", "out"]) {
      const view = p.views[dom], g = view.overlay.getContext("2d"), lay = view.lay, z = lay.z;
      g.clearRect(0, 0, view.overlay.width, view.overlay.height);
      const box = markerBox(p, dom);
      if (box) { // a frame 3 px wide around the box, drawn inside the image where the box touches its border
        const d = dims(p.model, dom), X = (box[1] - lay.ox) * z, Y = (box[0] - lay.oy) * z;
        const l = Math.max(-lay.ox * z, X - 3), t = Math.max(-lay.oy * z, Y - 3);
        const r = Math.min((d.w - lay.ox) * z, X + box[3] * z + 3), b = Math.min((d.h - lay.oy) * z, Y + box[2] * z + 3);
        g.lineWidth = 2; g.strokeStyle = state.pinned ? "#ffb000" : "#111";
        g.strokeRect(l + 2, t + 2, r - l - 4, b - t - 4);
        g.lineWidth = 1; g.strokeStyle = "#fff";
        g.strokeRect(l + 0.5, t + 0.5, r - l - 1, b - t - 1);
      }
      if (state.hover && state.hover.dom === dom && state.pinned) {
        const [hy, hx] = mapPixel(state.hover.y, state.hover.x, state.hover.model)(p.model, dom);
        g.lineWidth = 1; g.strokeStyle = "#0a0";
        g.strokeRect((hx - lay.ox) * z + 0.5, (hy - lay.oy) * z + 0.5, Math.max(1, z - 1), Math.max(1, z - 1));
      }
    }
  }

  function drawLens(p) { // magnified shape of the shown row / column (or image around the cursor), next to the cursor
    const focus = p.focus, v = p.current && p.current[focus];
    for (const dom of ["in", "out"]) p.views[dom].lens.hidden = true;
    if (!state.lens || !v) return;
    const home = p.views[state.dom], lens = home.lens, lay = home.lay, g = lens.getContext("2d");
    const mark = markerBox(p, focus);
    let box, pad; // what is magnified (top, left, height, width: the size in the label) and the margin around it
    if (v.sh && v.box[2] > 0) { box = v.box; pad = 1; }
    else if (mark) { box = [mark[0] - 12, mark[1] - 12, mark[2] + 24, mark[3] + 24]; pad = 0; }
    else return;
    const [h, w] = box.slice(2), size = Math.min(LENS, lay.cw, lay.ch); // a smaller lens in a smaller view
    if (lens.width !== size) { lens.width = size; lens.height = size; }
    const side = Math.max(h, w) + 2 * pad, step = Math.max(1, Math.ceil(side / size)); // at most `size` samples a side
    const n = Math.ceil(side / step), z = size / n;
    const t = Math.round(box[0] + h / 2 - side / 2), l = Math.round(box[1] + w / 2 - side / 2);
    const pc = pieceOf(n, n), im = pc.g.createImageData(n, n), out = new Uint32Array(im.data.buffer);
    for (let yy = 0; yy < n; yy++) for (let xx = 0; xx < n; xx++) {
      const y = t + yy * step, x = l + xx * step;
      out[yy * n + xx] = y < 0 || x < 0 || y >= v.h || x >= v.w ? 0xff33302a : colourAt(v, y, x);
    }
    pc.g.putImageData(im, 0, 0);
    g.imageSmoothingEnabled = false;
    g.drawImage(pc, 0, 0, n, n, 0, 0, size, size);
    if (mark) {
      g.lineWidth = 1.5; g.strokeStyle = "#111";
      g.strokeRect((mark[1] - l) / step * z - 1, (mark[0] - t) / step * z - 1, Math.max(2, mark[3] / step * z) + 2, Math.max(2, mark[2] / step * z) + 2);
    }
    const what = v.sh ? (v.req.label === "column" ? "column" : "row") : "around the cursor";
    const label = what + " ×" + (step > 1 ? "1/" + step : Math.round(z * 10) / 10) + " · " + (focus === "in" ? "input" : "output") + " " + h + "×" + w + " px";
    g.fillStyle = "rgba(17,19,23,0.75)"; g.fillRect(0, size - 18, size, 18);
    g.fillStyle = "#e6e6e6"; g.font = "11px system-ui, sans-serif";
    g.fillText(label, 5, size - 5);
    lens.setAttribute("aria-label", label);
    // beside the cursor where there is room, else above or below it (a narrow view: the lens would cover the
    // selected pixel), and always inside its view
    const [sy, sx] = selIn(p.model);
    const cx = (sx + 0.5 - lay.ox) * lay.z, cy = (sy + 0.5 - lay.oy) * lay.z, gap = 18 + lay.z / 2;
    const right = cx + gap + size <= lay.cw, leftOk = cx - gap - size >= 0;
    let beside = right || !leftOk ? cx + gap : cx - gap - size, level = cy - size / 2;
    if (!right && !leftOk) {
      beside = cx - size / 2;
      level = cy + gap + size <= lay.ch || cy - gap - size < 0 ? cy + gap : cy - gap - size;
    }
    const left = Math.max(0, Math.min(lay.cw - size, beside)), top = Math.max(0, Math.min(lay.ch - size, level));
    lens.style.left = Math.round(left) + "px"; lens.style.top = Math.round(top) + "px";
    lens.hidden = false;
  }

  function setText(e, text) { if (e.textContent !== text) e.textContent = text; } // no layout when unchanged
  function drawLegend(p, v, what) {
    const key = [v.natural, v.scale, v.lo, v.hi, what].join("|");
    if (p.legendKey === key) return;
    p.legendKey = key;
    const g = p.legend.getContext("2d"), w = p.legend.width, h = p.legend.height;
    if (v.natural) {
      const grad = g.createLinearGradient(0, 0, w, 0); grad.addColorStop(0, "#000"); grad.addColorStop(1, "#fff");
      g.fillStyle = grad; g.fillRect(0, 0, w, h);
      setText(p.legendLo, fmt(v.lo)); setText(p.legendMid, ""); setText(p.legendHi, fmt(v.hi));
      setText(p.legendTitle, what + " · value range");
      return;
    }
    const im = g.createImageData(w, h), out = new Uint32Array(im.data.buffer);
    for (let x = 0; x < w; x++) { const q = 1 + Math.round(x / (w - 1) * 254); for (let y = 0; y < h; y++) out[y * w + x] = lut32[q]; }
    g.putImageData(im, 0, 0);
    setText(p.legendLo, fmt(-v.scale)); setText(p.legendMid, "0"); setText(p.legendHi, fmt(v.scale));
    setText(p.legendTitle, what + " · colour scale ±" + fmt(v.scale) + (M.normalise === "global" ? " (global)" : ""));
  }

  function drawMap(p) { // overview: the input's thumbnail with the part in view outlined; click or drag to go there
    const c = p.map, g = c.getContext("2d"), d = dims(p.model, "in"), lay = p.views.in.lay;
    const [y, x] = state.dom === "in" ? selIn(p.model) : corresponding(p.model, "out", ...selIn(p.model)).slice(0, 2);
    const key = [lay.oy, lay.ox, lay.z, lay.cw, lay.ch, y, x, !!p.thumb].join("|");
    if (p.mapKey === key) return;
    p.mapKey = key;
    const s = Math.min(c.width / d.w, c.height / d.h), W = d.w * s, H = d.h * s;
    g.fillStyle = "#1c1e22"; g.fillRect(0, 0, c.width, c.height);
    if (p.thumb) { g.imageSmoothingEnabled = true; g.drawImage(p.thumb, 0, 0, W, H); }
    else { g.fillStyle = "#2a2e36"; g.fillRect(0, 0, W, H); }
    g.lineWidth = 2; g.strokeStyle = "#e8a33d";
    g.strokeRect(lay.ox * s + 1, lay.oy * s + 1, Math.max(2, lay.cw / lay.z * s - 2), Math.max(2, lay.ch / lay.z * s - 2));
    g.fillStyle = "#fff"; g.fillRect(x * s - 1, y * s - 1, 3, 3);
    p.mapScale = s;
  }
  function loadThumb(p) {
    if (!p.model.images.thumb) return;
    loadSheet(p.model.id + "/thumb").then(function (sh) {
      const [h, w] = sh.size, c = document.createElement("canvas"); c.width = w; c.height = h;
      const g = c.getContext("2d"), im = g.createImageData(w, h), out = new Uint32Array(im.data.buffer), px = sh.px;
      for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
        const i = y * w + x, k = y * sh.width + x;
        out[i] = sh.channels === 3 ? 0xff000000 | (px[3 * i + 2] << 16) | (px[3 * i + 1] << 8) | px[3 * i] : 0xff000000 | (px[k] << 16) | (px[k] << 8) | px[k];
      }
      g.putImageData(im, 0, 0);
      p.thumb = c; drawMap(p);
    }, function () {});
  }

  const fmt = (v) => (Number.isInteger(v) && Math.abs(v) < 1e6 ? String(v) : Math.abs(v) >= 1e4 || Math.abs(v) < 1e-3 ? v.toExponential(2) : v.toPrecision(3));

  function describe(model, req) {
    const d = (dom) => (dom === "in" ? "input" : "output");
    if (req.kind === "filter") return req.label + " of " + d(other(req.dom)) + " pixel (" + req.y + ", " + req.x + ") · " + req.src + " → " + req.dst;
    if (req.kind === "natural") return req.dom === "in" ? "input x₀" : "output y₀ = f(x₀)";
    if (state.k !== null && model.svd) { // the pair shown: this model's last one when it has fewer than state.k + 1
      const shown = Number(req.image.slice(1)) + 1;
      return (req.dom === "in" ? "eigen-input v" : "eigen-output u") + shown + (shown < state.k + 1 ? " (its last)" : "") + " · " + req.dst;
    }
    return ({x0: "x₀", y0: "y₀", fx0: "F·x₀ (contracted from the stored F)", residual: "residual r(x₀)"})[req.image] + " · " + req.dst;
  }
  function reqKey(req, lay) {
    return [req.kind === "filter" ? req.name + ":" + req.y + ":" + req.x : req.prefix, req.t, lay.z, lay.oy, lay.ox, lay.cw, lay.ch,
      state.k].join("|"); // state.k: an eigen-pair caption names the pair asked for when a model has fewer
  }

  function render() {
    if (!M) return;
    clampChannels(); // before the requests are built: what is drawn is what the selectors and the address say
    const token = ++renderToken, t0 = eventTime;
    eventTime = null;
    L.lastRequested = token;
    const jobs = panels.map(function (p) {
      const reqs = requests(p.model);
      const names = {in: sheetNames(p.model, reqs.in, p.views.in.lay), out: sheetNames(p.model, reqs.out, p.views.out.lay)};
      return Promise.all([Promise.all(names.in.map(loadSheet)), Promise.all(names.out.map(loadSheet))]).then(function (got) {
        if (token !== renderToken) return;
        p.current = p.current || {};
        for (const [i, dom] of [[0, "in"], [1, "out"]]) {
          const view = p.views[dom], key = reqKey(reqs[dom], view.lay);
          got[i].forEach(function (sh, j) { sh.name = names[dom][j]; });
          if (view.key !== key) {
            const v = resolveView(p.model, reqs[dom], got[i]);
            p.current[dom] = v;
            paint(view, v);
            view.key = key;
            setText(view.caption, describe(p.model, reqs[dom]) + " · " + v.w + "×" + v.h + " · ×" + view.lay.z);
          }
        }
        const focus = reqs.out.kind === "filter" ? "out" : reqs.in.kind === "filter" ? "in" : (state.show !== "y0" || state.k !== null ? "out" : "in");
        p.focus = focus;
        drawLegend(p, p.current[focus], reqs[focus].kind === "filter" ? reqs[focus].label : describe(p.model, reqs[focus]));
        drawOverlay(p);
        drawLens(p);
        drawMap(p);
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
      const m = mapPixel(h.y, h.x, h.model)(p.model, h.dom);
      const v = p.current[h.dom];
      const vals = v ? valueAt(v, m[0], m[1]) : null;
      if (vals) parts.push("under cursor (" + m[0] + ", " + m[1] + "): " + vals.map(fmt).join(", "));
    }
    setText(p.readout, parts.join(" · "));
  }

  // ---- controls and state ------------------------------------------------------------------------------
  function status(text) { const s = document.getElementById("status"); setText(s, text); s.hidden = !text; }

  function fillSelect(sel, labels, value) {
    const cur = Array.from(sel.options).map((o) => o.textContent).join("|");
    if (cur !== labels.join("|")) {
      sel.innerHTML = "";
      labels.forEach(function (lab, i) { const o = document.createElement("option"); o.value = i; o.textContent = lab; sel.appendChild(o); });
    }
    sel.value = String(value);
  }

  function clampChannels() { // the pixel and shown channels within the labels of the current mode
    const kind = kindOf(state.dom);
    state.src = Math.min(state.src, channelLabels(kind, "sources").length - 1);
    state.dst = Math.min(state.dst, channelLabels(kind, "targets").length - 1);
  }

  let controlsKey = null;
  function updateControls() {
    const key = JSON.stringify([state.dom, state.src, state.dst, state.show, state.k, state.pinned, state.zoom, state.lens, refZoom()]);
    if (key === controlsKey) return;
    controlsKey = key;
    const kind = kindOf(state.dom), sources = channelLabels(kind, "sources"), targets = channelLabels(kind, "targets");
    clampChannels();
    fillSelect(document.getElementById("src-channel"), sources, state.src);
    fillSelect(document.getElementById("dst-channel"), targets, state.dst);
    document.querySelectorAll("[data-mode]").forEach((b) => b.classList.toggle("on", kindOf(state.dom) === b.dataset.mode));
    document.querySelectorAll("[data-show]").forEach((b) => b.classList.toggle("on", state.k === null && state.show === b.dataset.show));
    const pin = document.getElementById("pin");
    pin.textContent = state.pinned ? "pinned" : "unpinned"; pin.classList.toggle("on", state.pinned);
    document.getElementById("zoom").textContent = "×" + refZoom() + (state.zoom > 0 ? "" : " (fit)");
    document.getElementById("lens").classList.toggle("on", state.lens);
    panels.forEach(function (p) {
      if (p.svdList) p.svdList.querySelectorAll("button").forEach((b, i) => b.classList.toggle("on", state.k === i));
      if (p.drawSvd) p.drawSvd();
    });
  }

  function select(dom, y, x, panel) { // pixel (y, x) of a domain of the model of a panel
    const d = dims(M.models[panel], dom);
    state.dom = dom; state.panel = panel;
    state.y = Math.max(0, Math.min(d.h - 1, y)); state.x = Math.max(0, Math.min(d.w - 1, x));
    state.k = null;
  }

  // to the middle pixel of the box that the selection maps onto in the other domain, in the grid with the most
  // pixels there: every other model's pixel at its centre is then the middle pixel of its own box too
  function switchDomain() {
    const dom = other(state.dom), size = (m) => dims(m, dom).h * dims(m, dom).w;
    const finest = M.models.reduce((best, m, i) => (size(m) > size(M.models[best]) ? i : best), state.panel);
    const [y, x, h, w] = corresponding(M.models[finest], state.dom, ...selIn(M.models[finest]));
    select(dom, y + Math.floor(h / 2), x + Math.floor(w / 2), finest);
  }

  let hashTimer = null;
  function writeHash() { // the address follows the view a moment later (replaceState is too slow for every hover)
    if (hashTimer === null) hashTimer = setTimeout(function () { hashTimer = null; writeHashNow(); }, 150);
  }
  function writeHashNow() {
    const h = "#" + ["m=" + kindOf(state.dom), "y=" + state.y, "x=" + state.x, "p=" + state.panel, "s=" + state.src, "t=" + state.dst,
      "show=" + state.show, "pin=" + (state.pinned ? 1 : 0), "z=" + state.zoom, "cy=" + state.cy.toFixed(4),
      "cx=" + state.cx.toFixed(4)].concat(state.k !== null ? ["k=" + state.k] : []).join("&");
    if (location.hash !== h) history.replaceState(null, "", h);
  }

  function readHash() {
    const q = {};
    const decode = function (v) { try { return decodeURIComponent(v); } catch (err) { return ""; } }; // "%zz": ignored
    location.hash.replace(/^#/, "").split("&").forEach(function (kv) { const [k, v] = kv.split("="); if (k) q[k] = decode(v || ""); });
    const int = (v, d) => (v !== undefined && /^-?\d+$/.test(v) ? parseInt(v, 10) : d);
    const frac = (v, d) => (v !== undefined && /^\d*\.?\d+$/.test(v) ? Math.max(0, Math.min(1, parseFloat(v))) : d);
    if (q.m === "row" || q.m === "col") {
      const dom = q.m === "col" ? "in" : "out", panel = Math.max(0, Math.min(M.models.length - 1, int(q.p, 0)));
      const d = dims(M.models[panel], dom);
      select(dom, int(q.y, d.h >> 1), int(q.x, d.w >> 1), panel);
    }
    state.src = Math.max(0, int(q.s, state.src)); state.dst = Math.max(0, int(q.t, state.dst));
    if (["filter", "y0", "fx0", "residual"].includes(q.show)) state.show = q.show;
    state.pinned = q.pin === "1";
    state.zoom = Math.max(0, Math.min(MAX_ZOOM, int(q.z, state.zoom)));
    state.cy = frac(q.cy, state.cy); state.cx = frac(q.cx, state.cx);
    clampCentre();
    state.k = q.k !== undefined && svdK() ? Math.max(0, Math.min(svdK() - 1, int(q.k, 0))) : null;
  }

  // ---- building the page -------------------------------------------------------------------------------
  function el(tag, cls, parent, text) { const e = document.createElement(tag); if (cls) e.className = cls; if (parent) parent.appendChild(e); if (text !== undefined) e.textContent = text; return e; }

  // attribute values as short text: numbers rounded, lists inline, hashes shortened (full value in the tooltip)
  function show(v) {
    if (v === null || v === undefined) return "—";
    if (typeof v === "number") return fmt(v);
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (typeof v === "string") return /^[0-9a-f]{64}$/.test(v) ? v.slice(0, 12) + "…" : v;
    if (Array.isArray(v)) return v.map(show).join(", ");
    return Object.entries(v).map(([k, x]) => k + " " + show(x)).join(" · ");
  }
  function row(dl, key, value, title) {
    el("dt", null, dl, key);
    const dd = el("dd", null, dl, value);
    if (title) dd.title = title;
    return dd;
  }
  // "InstanceNorm2d", "instance_norm", "torch.tanh" -> "instance norm", "tanh"
  function opName(op) {
    return String(op).split(".").pop().replace(/([a-z0-9])([A-Z])/g, "$1 $2").replace(/_/g, " ").replace(/\s*[123]d$/i, "").trim().toLowerCase();
  }
  const plural = (word, n) => (n === 1 ? word : word + "s");
  // the manifest's jacobian_exact / approximations in words (empty when the store does not say)
  function jacobianText(model) {
    if (model.jacobian_exact === true) return "F is the Jacobian at x₀";
    if (model.jacobian_exact !== false) return "";
    const groups = new Map();
    (model.approximations || []).forEach(function (a) { const k = a.kind + "\u0000" + opName(a.op); groups.set(k, (groups.get(k) || 0) + 1); });
    const parts = [];
    for (const [k, n] of groups) {
      const [kind, op] = k.split("\u0000");
      if (kind === "frozen-statistics") parts.push(n + " " + plural(op, n) + " with frozen statistics");
      else if (kind === "secant") parts.push(n + " " + op + " " + plural("secant", n));
      else if (kind === "frozen-factor") parts.push(n + " " + plural(op, n) + " with one factor frozen");
      else parts.push(n + " " + op + " (" + kind + ")");
    }
    return "F is a linear interpreter, not the Jacobian" + (parts.length ? ": " + parts.join(", ") : "");
  }
  const GEOMETRY = [["adaptivity", "adaptivity"], ["flashlight_top1", "flashlight top-1"], ["flashlight_mrr", "flashlight MRR"],
    ["flashlight_chance", "flashlight chance"], ["flashlight_control_top1", "shuffled control top-1"], ["diagonal_share", "diagonal share"], ["reach90", "reach 90 % (px)"],
    ["global_share", "global share"], ["global_radius", "global radius (px)"], ["flat_edge_ratio", "flat / edge ratio"], ["samples", "samples"]];
  function infoTable(parent, model) {
    const attrs = model.attrs;
    const main = el("dl", "info", parent);
    row(main, "model", show(attrs.model));
    row(main, "weights", show(attrs.weights));
    if (attrs.weights_sha256 && attrs.weights_sha256 !== attrs.weights) row(main, "weights sha256", show(attrs.weights_sha256), attrs.weights_sha256);
    row(main, "image", show(attrs.image) + (attrs.crop ? " · crop " + show(attrs.crop) : ""));
    if (attrs.image_sha256) row(main, "image sha256", show(attrs.image_sha256), attrs.image_sha256);
    row(main, "verification", model.verification_status || "unverified").className = "verification " + (model.verification_status || "unverified");
    const jac = jacobianText(model);
    if (jac) row(main, "F", jac).className = "jacobian";
    const ver = attrs.verification || {};
    for (const k of Object.keys(ver)) if (k !== "status" && k !== "checks") row(main, k.replace(/_/g, " "), show(ver[k]));
    if (model.geometry) {
      const geo = model.geometry, dl = el("dl", "info geometry", el("div", "geometry-box", parent));
      el("dt", "geometry-title", dl, "geometry");
      el("dd", null, dl, "(linterp geometry)");
      const known = new Set(GEOMETRY.map((g) => g[0]));
      for (const [k, label] of GEOMETRY) if (geo[k] !== undefined && geo[k] !== null) row(dl, label, show(geo[k]));
      const rest = Object.keys(geo).sort().filter((k) => !known.has(k));
      if (rest.length) { // standard errors, controls, settings: folded away
        const more = el("details", "infobox", parent);
        el("summary", null, more, "all geometry figures");
        const all = el("dl", "info", more);
        for (const k of rest) row(all, k.replace(/_/g, " "), show(geo[k]));
      }
    }
    const det = el("details", "infobox", parent);
    el("summary", null, det, "all attributes");
    const dl = el("dl", "info", det);
    for (const k of Object.keys(attrs).sort()) if (k !== "identity") row(dl, k, show(attrs[k]), JSON.stringify(attrs[k]));
  }
  function warning(model) { // the banner of a panel whose store has not passed verification
    const status = model.verification_status || "unverified";
    if (status === "passed") return "";
    const failed = ((model.attrs.verification || {}).checks || []).filter((c) => c && c.passed === false).map((c) => c.name);
    if (status === "failed") return "Verification failed" + (failed.length ? " (" + failed.join(", ") + ")" : "") + ": this store's F did not pass its checks; what is shown may be wrong.";
    return "Unverified store: its F has not passed `linterp verify`; what is shown has not been checked.";
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

  function buildPanel(model, index) {
    const p = {model: model, index: index, views: {}};
    const sec = el("section", "panel", document.getElementById("panels"));
    sec.dataset.model = model.id;
    const head = el("div", "panel-head", sec);
    el("h2", null, head, model.title);
    el("span", "muted", head, "input " + model.in.join("×") + " → output " + model.out.join("×") + (model.attrs.weights ? " · weights " + show(model.attrs.weights) : ""));
    const warn = warning(model);
    if (warn) el("div", "panel-warning " + (model.verification_status || "unverified"), sec, warn).setAttribute("role", "alert");
    const row_ = el("div", "views", sec);
    for (const dom of ["in", "out"]) {
      const fig = el("figure", "view " + dom, row_);
      const wrap = el("div", "canvas-wrap", fig);
      const canvas = el("canvas", "image", wrap), overlay = el("canvas", "overlay", wrap), lens = el("canvas", "lens", wrap);
      lens.width = LENS; lens.height = LENS; lens.hidden = true; lens.setAttribute("role", "img");
      canvas.dataset.dom = dom; canvas.dataset.model = model.id;
      const caption = el("figcaption", null, fig);
      p.views[dom] = {canvas: canvas, overlay: overlay, lens: lens, wrap: wrap, caption: caption, zoom: 1, key: null};
      overlay.addEventListener("mousemove", function (e) { if (!drag || !drag.moved) onPointer(p, dom, e, false); });
      overlay.addEventListener("mousedown", function (e) { if (e.button === 0) { drag = {x: e.clientX, y: e.clientY, cy: state.cy, cx: state.cx, p: p, dom: dom, moved: false}; e.preventDefault(); } });
      overlay.addEventListener("click", function (e) { if (!dragged) onPointer(p, dom, e, true); });
      overlay.addEventListener("wheel", function (e) { onWheel(p, dom, e); }, {passive: false});
      overlay.addEventListener("mouseleave", function () { state.hover = null; panels.forEach(function (q) { drawOverlay(q); readout(q); }); });
    }
    const side = el("div", "side", row_);
    p.map = el("canvas", "map", side); p.map.width = 220; p.map.height = 160;
    p.map.title = "overview: the part in view; click or drag to move there";
    const goMap = function (e) {
      const r = p.map.getBoundingClientRect(), d = dims(p.model, "in"), s = p.mapScale || 1;
      state.cx = (e.clientX - r.left) * p.map.width / r.width / s / d.w; state.cy = (e.clientY - r.top) * p.map.height / r.height / s / d.h;
      clampCentre(); panels.forEach(sizeViews); render();
    };
    p.map.addEventListener("mousedown", function (e) { goMap(e); p.mapDrag = true; });
    p.map.addEventListener("mousemove", function (e) { if (p.mapDrag && e.buttons & 1) goMap(e); });
    p.map.addEventListener("mouseup", function () { p.mapDrag = false; });
    const leg = el("div", "legend", side);
    p.legendTitle = el("div", "muted small", leg);
    p.legend = el("canvas", null, leg); p.legend.width = 220; p.legend.height = 12;
    const labels = el("div", "legend-labels", leg);
    p.legendLo = el("span", null, labels); p.legendMid = el("span", null, labels); p.legendHi = el("span", null, labels);
    p.readout = el("div", "readout", side);
    infoTable(el("div", "infopanel", side), model);
    if (model.svd) svdPanel(p, side);
    sizeViews(p);
    loadThumb(p);
    return p;
  }

  function pixelAt(p, dom, e) { // (y, x) of the model's domain under a mouse event
    const view = p.views[dom], r = view.overlay.getBoundingClientRect(), lay = view.lay, d = dims(p.model, dom);
    return [Math.max(0, Math.min(d.h - 1, lay.oy + Math.floor((e.clientY - r.top) / lay.z))),
            Math.max(0, Math.min(d.w - 1, lay.ox + Math.floor((e.clientX - r.left) / lay.z)))];
  }
  function onPointer(p, dom, e, click) { // the pixel under the mouse, in this panel's grid (the shared cursor)
    const [y, x] = pixelAt(p, dom, e);
    state.hover = {dom: dom, y: y, x: x, model: p.model};
    eventTime = e.timeStamp || performance.now();
    if (click) {
      const [sy, sx] = selIn(p.model); // clicking the pinned pixel, as this panel shows it, unpins
      if (state.pinned && state.dom === dom && sy === y && sx === x) state.pinned = false;
      else { select(dom, y, x, p.index); state.pinned = true; }
      render();
    } else if (!state.pinned && (state.dom !== dom || state.panel !== p.index || state.y !== y || state.x !== x || state.k !== null)) {
      select(dom, y, x, p.index); render();
    } else { panels.forEach(function (q) { drawOverlay(q); readout(q); }); }
  }
  function onWheel(p, dom, e) {
    e.preventDefault();
    const view = p.views[dom], r = view.overlay.getBoundingClientRect(), lay = view.lay, d = dims(p.model, dom);
    const py = e.clientY - r.top, px = e.clientX - r.left;
    zoomStep(e.deltaY < 0 ? 1 : -1, {view: view, model: p.model, dom: dom, fy: (lay.oy + py / lay.z) / d.h,
      fx: (lay.ox + px / lay.z) / d.w, clientY: e.clientY, clientX: e.clientX});
    render();
  }
  function onDrag(e) {
    if (!drag) return;
    if (!(e.buttons & 1)) { drag = null; return; }
    const dy = e.clientY - drag.y, dx = e.clientX - drag.x;
    if (!drag.moved && Math.abs(dx) + Math.abs(dy) < 4) return;
    drag.moved = true;
    const lay = drag.p.views[drag.dom].lay, d = dims(drag.p.model, drag.dom);
    state.cy = drag.cy - dy / (lay.z * d.h); state.cx = drag.cx - dx / (lay.z * d.w);
    clampCentre(); panels.forEach(sizeViews); render();
  }

  function onKey(e) {
    if (e.target && (e.target.tagName === "SELECT" || e.target.tagName === "INPUT")) return;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const step = e.shiftKey ? 4 : 1;
    const moves = {ArrowUp: [-step, 0], ArrowDown: [step, 0], ArrowLeft: [0, -step], ArrowRight: [0, step]};
    const pans = {w: [-1, 0], s: [1, 0], a: [0, -1], d: [0, 1]};
    eventTime = e.timeStamp || performance.now();
    const plan = () => ({sources: channelLabels(kindOf(state.dom), "sources"), targets: channelLabels(kindOf(state.dom), "targets")});
    if (moves[e.key]) { select(state.dom, state.y + moves[e.key][0], state.x + moves[e.key][1], state.panel); reveal(owner(), state.dom, state.y, state.x); }
    else if (pans[e.key.toLowerCase()]) { // a quarter of the view
      const lay = panels[0].views.out.lay, d = dims(ref(), "out"), [py, px] = pans[e.key.toLowerCase()];
      state.cy += py * lay.ch / 4 / (lay.z * d.h); state.cx += px * lay.cw / 4 / (lay.z * d.w);
      clampCentre(); panels.forEach(sizeViews);
    }
    else if (e.key === "t") { switchDomain(); reveal(owner(), state.dom, state.y, state.x); }
    else if (e.key === "c") state.src = (state.src + 1) % plan().sources.length;
    else if (e.key === "v") state.dst = (state.dst + 1) % plan().targets.length;
    else if (e.key === "p" || e.key === "Enter") state.pinned = !state.pinned;
    else if (e.key === "Escape") state.pinned = false;
    else if (e.key === "f") { state.show = "filter"; state.k = null; }
    else if (e.key === "y") { state.show = "y0"; state.k = null; }
    else if (e.key === "l") { state.show = "fx0"; state.k = null; }
    else if (e.key === "r") { state.show = "residual"; state.k = null; }
    else if (e.key === "m") state.lens = !state.lens;
    else if ((e.key === "]" || e.key === "[") && svdK()) {
      const k = state.k === null ? (e.key === "]" ? 0 : svdK() - 1) : state.k + (e.key === "]" ? 1 : -1);
      state.k = k < 0 || k >= svdK() ? null : k;
    } else if (e.key === "+" || e.key === "=") zoomStep(1, selectionAnchor());
    else if (e.key === "-" || e.key === "_") zoomStep(-1, selectionAnchor());
    else if (e.key === "0") { state.zoom = 0; state.cy = 0.5; state.cx = 0.5; panels.forEach(sizeViews); }
    else return;
    e.preventDefault();
    render();
  }

  function init() {
    if (!M) { status("No data: data/manifest.js is missing. Export a site with `linterp export STORE --out DIR`."); return; }
    if (M.format !== 2) { status("This site was exported by another version of linterp (format " + M.format + "); export it again."); return; }
    lut32 = new Uint32Array(256);
    M.lut.forEach(function (c, i) { lut32[i] = 0xff000000 | (c[2] << 16) | (c[1] << 8) | c[0]; });
    const a = M.models[0].attrs, imageName = (im) => (im && typeof im === "object" ? im.name : im);
    document.getElementById("subtitle").textContent = (imageName(a.image) || "image") + " · " + M.models.map((m) => m.title).join(" · ");
    document.title = "linterp · " + (imageName(a.image) || "") + " · " + M.models.map((m) => m.title).join(", ");
    const d = dims(ref(), "in");
    if (M.models.every((m) => m.top1 !== undefined)) { // classifiers: the row of the top class, over the input
      select("out", 0, 0, 0);
      state.src = M.models[0].top1;
    } else {
      select("in", d.h >> 1, d.w >> 1, 0);
    }
    readHash();
    panels = M.models.map(buildPanel);
    document.querySelectorAll("[data-mode]").forEach(function (b) {
      b.addEventListener("click", function () { if (kindOf(state.dom) !== b.dataset.mode) switchDomain(); render(); });
    });
    document.querySelectorAll("[data-show]").forEach(function (b) { b.addEventListener("click", function () { state.show = b.dataset.show; state.k = null; render(); }); });
    document.getElementById("src-channel").addEventListener("change", function (e) { state.src = parseInt(e.target.value, 10); render(); });
    document.getElementById("dst-channel").addEventListener("change", function (e) { state.dst = parseInt(e.target.value, 10); render(); });
    document.getElementById("pin").addEventListener("click", function () { state.pinned = !state.pinned; render(); });
    document.getElementById("zoom-in").addEventListener("click", function () { zoomStep(1, selectionAnchor()); render(); });
    document.getElementById("zoom-out").addEventListener("click", function () { zoomStep(-1, selectionAnchor()); render(); });
    document.getElementById("zoom-fit").addEventListener("click", function () { state.zoom = 0; state.cy = 0.5; state.cx = 0.5; panels.forEach(sizeViews); render(); });
    document.getElementById("lens").addEventListener("click", function () { state.lens = !state.lens; render(); });
    document.addEventListener("keydown", onKey);
    window.addEventListener("mousemove", onDrag);
    window.addEventListener("mouseup", function () { // a drag ends without the click that follows it
      if (drag && drag.moved) { dragged = true; setTimeout(function () { dragged = false; }, 0); }
      drag = null;
    });
    window.addEventListener("resize", function () { panels.forEach(sizeViews); render(); });
    window.addEventListener("hashchange", function () { readHash(); panels.forEach(sizeViews); render(); });
    panels.forEach(sizeViews);
    L.ready = true;
    render();
  }

  // test and scripting hooks: the state, what each canvas shows, where a pixel is on screen, memory held
  L.state = function () { return JSON.parse(JSON.stringify(Object.assign({}, state, {hover: null}))); };
  L.shown = function (i, dom) {
    const v = panels[i].current && panels[i].current[dom], lay = panels[i].views[dom].lay;
    return v ? {natural: v.natural, scale: v.scale, box: v.box, lo: v.lo, hi: v.hi, w: v.w, h: v.h, zoom: lay.z,
                oy: lay.oy, ox: lay.ox, vh: Math.min(lay.vh, Math.floor(lay.ch / lay.z)), vw: Math.min(lay.vw, Math.floor(lay.cw / lay.z)),
                image: v.req.image || null} : null;
  };
  L.clientPoint = function (i, dom, y, x) { // client coordinates of the centre of pixel (y, x), or null if not in view
    const view = panels[i].views[dom], lay = view.lay, r = view.overlay.getBoundingClientRect();
    const cy = (y + 0.5 - lay.oy) * lay.z, cx = (x + 0.5 - lay.ox) * lay.z;
    return cy < 0 || cx < 0 || cy >= lay.ch || cx >= lay.cw ? null : {x: r.left + cx, y: r.top + cy};
  };
  L.reveal = function (dom, y, x) { if (reveal(ref(), dom, y, x)) render(); }; // pixel (y, x) of the first model
  L.select = function (dom, y, x, opts) { select(dom, y, x, 0); Object.assign(state, opts || {}); clampCentre(); panels.forEach(sizeViews); render(); };
  L.memory = function () {
    let n = 0; for (const e of sheets.values()) if (e.data) n++;
    return {sheets: n, sheetBytes: sheetBytes, tiles: painted.size};
  };

  document.addEventListener("DOMContentLoaded", init);
})();
