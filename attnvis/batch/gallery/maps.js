"use strict";
// The selected image's overlay, computed in the browser from the map store (attnvis.batch.store).
// The arithmetic is attnvis.render's, in float32 (Math.fround after each operation): OpenCV's
// INTER_LINEAR upsampling, min-max normalization, uint8(255 * norm) levels, colormap lookup, so the
// heatmap equals the Python renderer's. A file:// image's pixels cannot be read back, so the canvas
// blends it (see blendCanvas): within one level of cv2.addWeighted, tested in headless Chromium.
(function () {
  const G = window.attnvisGallery, chunks = {}, asked = {};
  const el = (tag, props = {}, kids = []) => { const e = Object.assign(document.createElement(tag), props); e.append(...kids); return e; };
  const url = (rel) => rel.split("/").map(encodeURIComponent).join("/");
  const f32 = Math.fround;
  const MAX_SIDE = 2048; // larger images are computed at this size and shown scaled

  G.maps = (name, b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    chunks[name] = new Float32Array(bytes.buffer);
    G.rerender();
  };
  function chunkName(info, [shard, row]) {
    return info.shards[shard] + "_" + String(Math.floor(row / info.chunk)).padStart(4, "0");
  }
  function need(info, where) {
    const name = chunkName(info, where);
    if (chunks[name]) return chunks[name];
    if (!asked[name]) {
      asked[name] = true;
      const tag = el("script", { src: info.dir + "/" + name + ".js" });
      tag.onerror = () => { chunks[name] = null; asked[name] = "failed"; G.rerender(); };
      document.body.append(tag);
    }
    return null;
  }

  // Layer l's grid [gh, gw] (l === layers: the rollout's); a Swin's layers differ by stage.
  const gridOf = (info, l) => (l < info.layers && info.grids ? info.grids[l] : info.grid);
  // Where a row's maps start: every layer's, then every head's of each layer, then the rollout, then each
  // explanation method's relevance map at the patch grid (maps.py).
  function offsets(info) {
    if (info.offsets) return info.offsets;
    const hw = (l) => gridOf(info, l)[0] * gridOf(info, l)[1], layer = [], head = [], rel = {};
    let at = 0;
    for (let l = 0; l < info.layers; l++) { layer.push(at); at += hw(l); }
    for (let l = 0; l < (info.heads || []).length; l++) { head.push(at); at += info.heads[l] * hw(l); }
    const rollout = at;
    at += info.rollout ? hw(info.layers) : 0;
    for (const m of info.methods || []) { rel[m] = at; at += info.grid[0] * info.grid[1]; }
    return (info.offsets = { layer, head, rollout, rel, perRow: at });
  }
  // The grid [gh * gw] of one map of a row: layer l (l === layers: the rollout), head h (null: the mean).
  function grid(info, data, base, l, h) {
    const o = offsets(info), [gh, gw] = gridOf(info, l), hw = gh * gw;
    const at = base + (l === info.layers ? o.rollout : h !== null ? o.head[l] + h * hw : o.layer[l]);
    return data.subarray(at, at + hw);
  }
  function relGrid(info, data, base, method) { // a method's relevance map, at the patch grid
    const at = base + offsets(info).rel[method];
    return data.subarray(at, at + info.grid[0] * info.grid[1]);
  }
  function taps(src, dst) { // attnvis.render._kernels.axis_coeffs
    const scale = 1 / (dst / src), i0 = new Int32Array(dst), i1 = new Int32Array(dst), w = new Float32Array(dst);
    for (let d = 0; d < dst; d++) {
      let f = f32((d + 0.5) * scale - 0.5), s = Math.floor(f);
      f = f32(f - s);
      if (s < 0) { s = 0; f = 0; }
      if (s >= src - 1) { s = src - 1; f = 0; }
      i0[d] = s; i1[d] = Math.min(s + 1, src - 1); w[d] = f;
    }
    return [i0, i1, w];
  }
  function upsample(g, gh, gw, H, W) { // horizontal pass, then vertical, as resize_rows and _lerp_row
    const [x0, x1, fx] = taps(gw, W), [y0, y1, fy] = taps(gh, H), rows = new Float32Array(gh * W), out = new Float32Array(H * W);
    for (let r = 0; r < gh; r++) for (let x = 0; x < W; x++)
      rows[r * W + x] = f32(f32(g[r * gw + x0[x]] * f32(1 - fx[x])) + f32(g[r * gw + x1[x]] * fx[x]));
    for (let y = 0; y < H; y++) {
      const top = y0[y] * W, bottom = y1[y] * W, b = fy[y], a = f32(1 - b);
      for (let x = 0; x < W; x++) out[y * W + x] = f32(f32(rows[top + x] * a) + f32(rows[bottom + x] * b));
    }
    return out;
  }
  function range(values) {
    let lo = Infinity, hi = -Infinity;
    for (const v of values) { if (v < lo) lo = v; if (v > hi) hi = v; }
    return [lo, hi];
  }
  function heatCanvas(values, lo, hi, lut, H, W) { // _levels and _paint
    const span = hi > lo ? f32(hi - lo) : 0, canvas = el("canvas", { width: W, height: H });
    const ctx = canvas.getContext("2d"), img = ctx.createImageData(W, H), px = img.data;
    for (let i = 0; i < values.length; i++) {
      let level = 0;
      if (span > 0) level = Math.trunc(f32(255 * Math.min(Math.max(f32(f32(values[i] - lo) / span), 0), 1)));
      px[4 * i] = lut[3 * level]; px[4 * i + 1] = lut[3 * level + 1]; px[4 * i + 2] = lut[3 * level + 2]; px[4 * i + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    return canvas;
  }
  // The canvas blends a heatmap drawn with globalAlpha = a8 / 255 as (heat * k + image * (256 - k)) >> 8,
  // k = a8 + 1 (Skia's 8-bit source-over). With k = round(256 alpha) and each heat value c drawn as
  // round((alpha c 256 + 128) / k), that is within one level of round(image (1 - alpha) + heat alpha)
  // for every pair of values (checked exhaustively for alpha 0.01 ... 0.99).
  function blendCanvas(heat, alpha) {
    const k = Math.min(256, Math.max(1, Math.round(256 * alpha))), table = new Uint8Array(256);
    for (let c = 0; c < 256; c++) table[c] = Math.min(255, Math.max(0, Math.round((alpha * c * 256 + 128) / k)));
    const out = el("canvas", { width: heat.width, height: heat.height }), ctx = out.getContext("2d");
    const img = heat.getContext("2d").getImageData(0, 0, heat.width, heat.height), px = img.data;
    for (let i = 0; i < px.length; i += 4) { px[i] = table[px[i]]; px[i + 1] = table[px[i + 1]]; px[i + 2] = table[px[i + 2]]; }
    ctx.putImageData(img, 0, 0);
    return [out, (k - 1) / 255];
  }
  const lutCache = {};
  function lutOf(name) {
    if (!lutCache[name]) lutCache[name] = Uint8Array.from(G.info.luts[name].match(/../g), (b) => parseInt(b, 16));
    return lutCache[name];
  }

  function draw(entry, data, base, S) {
    const info = G.info.maps, rel = S.rel !== null, [gh, gw] = rel ? info.grid : gridOf(info, S.layer);
    const [H0, W0] = entry.size, k = Math.min(1, MAX_SIDE / Math.max(H0, W0));
    const H = Math.max(1, Math.round(H0 * k)), W = Math.max(1, Math.round(W0 * k));
    const values = upsample(rel ? relGrid(info, data, base, S.rel) : grid(info, data, base, S.layer, S.head), gh, gw, H, W);
    let [lo, hi] = range(values);
    if (!rel && S.norm === "image" && S.layer < info.layers) { // one range over every layer (attnvis.render.global_scale)
      [lo, hi] = [Infinity, -Infinity];
      for (let l = 0; l < info.layers; l++) { const [a, b] = range(grid(info, data, base, l, S.head)); lo = Math.min(lo, a); hi = Math.max(hi, b); }
    }
    const heat = heatCanvas(values, lo, hi, lutOf(S.cmap), H, W);
    heat.className = "main";
    if (S.view === "heatmap" || !entry.src || S.alpha >= 1) return [heat];
    const over = el("canvas", { width: W, height: H, className: "main" }), ctx = over.getContext("2d");
    const src = el("img", { src: url(entry.src), hidden: true, alt: "source" });
    src.addEventListener("load", () => {
      ctx.drawImage(src, 0, 0, W, H);
      if (S.alpha > 0) { const [blend, a8] = blendCanvas(heat, S.alpha); ctx.globalAlpha = a8; ctx.drawImage(blend, 0, 0); }
    });
    src.addEventListener("error", () => over.replaceWith(el("div", { className: "err", textContent: "source image not found: " + entry.src }), heat));
    return [over, src];
  }

  function controls(entry, S, go) {
    const info = G.info.maps, names = G.info.layers;
    const bar = (label, values, current, text, change) => el("div", { className: "bar" }, [el("b", { textContent: label }),
      ...values.map((v) => el("button", { textContent: text(v), className: v === current ? "on" : "", onclick: () => go(change(v)) }))]);
    const layers = [...Array(info.layers).keys()].concat(info.rollout ? [info.layers] : []), kids = [];
    if ((info.methods || []).length) kids.push(bar("explain", info.methods, S.rel, (m) => m, (m) => ({ rel: m })));
    if (layers.length) kids.push(bar("layer", layers, S.rel === null ? S.layer : null,
      (l) => (l === info.layers ? "rollout" : `${l}: ${names[l] || ""}`), (l) => ({ layer: l, rel: null })));
    if (info.heads && S.layer < info.layers && S.rel === null) {
      const heads = [null, ...Array(info.heads[S.layer]).keys()];
      kids.push(bar("head", heads, S.head, (h) => (h === null ? "mean" : "head " + h), (h) => ({ head: h })));
    }
    const cmap = el("select", { onchange: (e) => go({ cmap: e.target.value }) },
      Object.keys(G.info.luts).map((c) => el("option", { value: c, textContent: c, selected: c === S.cmap })));
    const alpha = el("input", { type: "range", min: 0, max: 1, step: 0.05, value: S.alpha, onchange: (e) => go({ alpha: +e.target.value }) });
    kids.push(el("div", { className: "bar" }, [el("b", { textContent: "colormap" }), cmap, el("b", { textContent: " alpha" }), alpha,
      el("span", { className: "muted", textContent: String(S.alpha) })]));
    if (S.rel === null) kids.push(bar("normalize", ["map", "image"], S.norm, (n) => (n === "map" ? "this map" : "all layers"), (n) => ({ norm: n })));
    kids.push(bar("view", ["overlay", "heatmap"], S.view, (v) => v, (v) => ({ view: v })));
    const relFile = (entry.rel || []).find((r) => r[0] === S.rel); // --save both: the method's rendered files
    const file = S.rel !== null ? relFile && [null, null, relFile[1], relFile[2]]
      : (entry.maps || []).find((m) => m[0] === S.layer && m[1] === S.head && m[4] == null);
    if (file) kids.push(el("div", { className: "bar" }, [el("a", { href: url(file[S.view === "heatmap" ? 3 : 2]), textContent: "rendered file" })]));
    return kids;
  }

  window.attnvisMaps = {
    // The detail view's controls and map for an entry with stored maps; S is the gallery's view state.
    detail(entry, S, go) {
      const info = G.info.maps;
      S.layer = S.layer !== null && S.layer >= 0 && S.layer <= info.layers - (info.rollout ? 0 : 1) ? S.layer : info.layers - 1;
      const methods = info.methods || [];
      S.rel = methods.includes(S.rel) ? S.rel : info.layers ? null : methods[0] ?? null;
      S.head = info.heads && S.layer < info.layers && S.head !== null && S.head < info.heads[S.layer] ? S.head : null;
      S.cmap = S.cmap && G.info.luts[S.cmap] ? S.cmap : G.info.colormap;
      S.alpha = S.alpha !== null && S.alpha >= 0 && S.alpha <= 1 ? S.alpha : G.info.alpha;
      S.norm = S.norm === "image" ? "image" : "map";
      const kids = controls(entry, S, go), name = chunkName(info, entry.m), data = need(info, entry.m);
      if (asked[name] === "failed") return [...kids, el("div", { className: "err", textContent: "cannot load " + info.dir + "/" + name + ".js" })];
      if (!data) return [...kids, el("div", { className: "muted", textContent: "loading maps…" })];
      return [...kids, ...draw(entry, data, (entry.m[1] % info.chunk) * offsets(info).perRow, S)];
    },
    // Whether a maps script is still loading (the page is not ready yet).
    pending() { return Object.keys(asked).some((n) => asked[n] === true && !chunks[n]); },
  };
})();
