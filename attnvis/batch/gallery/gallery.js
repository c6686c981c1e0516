"use strict";
const S = { page: 0, img: null, layer: null, head: null, view: "overlay", word: null, cmap: null, alpha: null, norm: "map", rel: null };
const G = window.attnvisGallery = {
  info: null, pages: {},
  run(info) { this.info = info; },
  page([n, entries, thumbs]) { // thumbs: the store's thumbnails in base64 (--save maps), beside the entries
    (thumbs || []).forEach((t, i) => { if (t) entries[i].thumbData = "data:image/jpeg;base64," + t; });
    this.pages[n] = entries; if (n === S.page) render();
  },
  rerender() { render(); },
};
const $ = (id) => document.getElementById(id);
// a relative path, every segment URL-encoded: a file named "data:x.jpg" or "a#b.png" is a file, not a scheme or a fragment
const url = (rel) => rel.split("/").map(encodeURIComponent).join("/");
const el = (tag, props = {}, kids = []) => { const e = Object.assign(document.createElement(tag), props); e.append(...kids); return e; };
const headName = (h) => (h === null || h === undefined ? "mean" : "head " + h);
// batch --method: "circle (2), 91.2%" for the top-1 class, and the class explained
const className = (c) => (G.info.classes && G.info.classes[c] !== undefined ? `${G.info.classes[c]} (${c})` : "class " + c);
function predicted(entry) {
  if (!entry.verdict) return entry.prediction || "";
  const [top, p, target] = entry.verdict;
  return `${className(top)}, ${(100 * p).toFixed(1)}%` + (target === top ? "" : ` · explained: ${className(target)}`);
}

function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  const num = (k) => (p.has(k) && p.get(k) !== "" && !isNaN(+p.get(k)) ? +p.get(k) : null);
  S.page = num("page") || 0; S.img = num("img"); S.layer = num("layer"); S.word = num("word");
  S.head = p.get("head") === null || p.get("head") === "mean" ? null : num("head");
  S.view = p.get("view") === "heatmap" ? "heatmap" : "overlay";
  S.cmap = p.get("cmap"); S.alpha = num("alpha"); S.norm = p.get("norm") === "image" ? "image" : "map";  // stored maps (maps.js)
  S.rel = p.get("rel") || null;  // an explanation method's relevance map instead of a layer
}
function writeHash() {
  const parts = ["page=" + S.page];
  if (S.img !== null) parts.push("img=" + S.img, "layer=" + S.layer, "head=" + (S.head === null ? "mean" : S.head), "view=" + S.view);
  if (S.word !== null) parts.push("word=" + S.word);
  if (S.img !== null && S.rel !== null) parts.push("rel=" + encodeURIComponent(S.rel));
  if (S.img !== null && S.cmap !== null) parts.push("cmap=" + S.cmap, "alpha=" + S.alpha, "norm=" + S.norm);
  history.replaceState(null, "", "#" + parts.join("&"));
}
function loadPage(n) {
  if (G.pages[n]) return render();
  const tag = el("script", { src: "gallery/page_" + String(n).padStart(4, "0") + ".js" });
  tag.onerror = () => { $("grid").textContent = "cannot load " + tag.src; done(); };
  document.body.append(tag);
}
function go(changes) { Object.assign(S, changes); writeHash(); G.pages[S.page] ? render() : loadPage(S.page); }

function render() {
  document.body.dataset.state = "loading";
  const info = G.info, entries = G.pages[S.page] || [];
  $("title").textContent = info.title;
  $("counts").textContent = `${info.ok} rendered, ${info.failed} failed, ${info.total} images`;
  const pager = $("pager"); pager.textContent = "";
  if (info.pages > 1) {
    pager.append(el("button", { textContent: "◀", disabled: S.page === 0, onclick: () => go({ page: S.page - 1, img: null }) }),
      ` page ${S.page + 1} / ${info.pages} `,
      el("button", { textContent: "▶", disabled: S.page >= info.pages - 1, onclick: () => go({ page: S.page + 1, img: null }) }));
  }
  $("grid").replaceChildren(...entries.map(card));
  renderDetail(entries);
  done();
}
function card(entry, i) {
  if (entry.status !== "ok") {
    return el("figure", { className: "card failed", title: entry.error }, [el("div", { className: "err", textContent: entry.error }),
      el("figcaption", { textContent: entry.key })]);
  }
  const cap = el("figcaption", {}, [entry.key]);
  if (entry.prediction || entry.verdict) cap.append(el("br"), el("span", { className: "pred", textContent: predicted(entry) }));
  if (entry.words) cap.append(el("br"), el("span", { className: "pred", textContent: entry.words.join(" ") }));
  const thumb = entry.thumbData || (entry.thumb ? url(entry.thumb) : null); // thumbData: the store's, a data: URL
  const kids = thumb ? [el("img", { src: thumb, alt: entry.key })] : [];
  return el("figure", { className: "card", onclick: () => go({ img: i, layer: null, head: null, word: null, rel: null }) }, [...kids, cap]);
}

function pick(maps, key, want) {
  const values = [...new Set(maps.map((m) => m[key]))];
  return { values, value: values.includes(want) ? want : values[0] };
}
function renderDetail(entries) {
  const box = $("detail"), entry = S.img === null ? null : entries[S.img];
  if (!entry || entry.status !== "ok") { box.hidden = true; box.textContent = ""; return; }
  if (entry.m && G.info.maps && window.attnvisMaps) { // stored maps: drawn here, any layer, head, colormap, alpha
    box.replaceChildren(navBar(entry, entries), ...window.attnvisMaps.detail(entry, S, go)); box.hidden = false; return;
  }
  const rels = entry.rel || [];  // batch --method: [method, overlay, heatmap] per method
  if (S.rel === null && !entry.maps.length && rels.length) S.rel = rels[0][0];
  if (S.rel !== null && !rels.some((r) => r[0] === S.rel)) S.rel = entry.maps.length || !rels.length ? null : rels[0][0];
  let maps = entry.maps.map((m) => ({ layer: m[0], head: m[1], overlay: m[2], heatmap: m[3], word: m[4] === undefined ? null : m[4] }));
  const word = pick(maps, "word", S.word); maps = maps.filter((m) => m.word === word.value);
  const layer = pick(maps, "layer", S.layer); maps = maps.filter((m) => m.layer === layer.value);
  const grids = entry.grids ? entry.grids.layers[String(layer.value)] : null;
  const head = pick(maps.concat(grids ? grids.map((_, h) => ({ head: h })) : []), "head", S.head);
  const map = maps.find((m) => m.head === head.value);
  Object.assign(S, { layer: layer.value, head: head.value, word: word.value });
  const names = G.info.layers;
  const bar = (label, values, current, text, change) => el("div", { className: "bar" }, [el("b", { textContent: label }),
    ...values.map((v) => el("button", { textContent: text(v), className: v === current ? "on" : "", onclick: () => go(change(v)) }))]);
  const kids = [
    el("div", { className: "bar" }, [el("button", { textContent: "✕ close", onclick: () => go({ img: null }) }),
      el("button", { textContent: "◀ prev", disabled: S.img === 0, onclick: () => go({ img: S.img - 1 }) }),
      el("button", { textContent: "next ▶", disabled: S.img >= entries.length - 1, onclick: () => go({ img: S.img + 1 }) }),
      el("strong", { textContent: " " + entry.key }), el("span", { className: "muted", textContent: entry.size ? `  ${entry.size[1]}×${entry.size[0]}` : "" }),
      el("span", { className: "pred", textContent: entry.prediction || entry.verdict ? "  predicted: " + predicted(entry) : "" })]),
  ];
  if (entry.words) kids.push(bar("word", word.values, word.value, (w) => entry.words[w] ?? String(w), (w) => ({ word: w })));
  if (rels.length) kids.push(bar("explain", rels.map((r) => r[0]), S.rel, (m) => m, (m) => ({ rel: m })));
  if (layer.values.length) kids.push(bar("layer", layer.values, S.rel === null ? layer.value : null, (l) => `${l}: ${names[l] || ""}`, (l) => ({ layer: l, rel: null })));
  if (S.rel === null) kids.push(bar("head", head.values, head.value, headName, (h) => ({ head: h })));
  kids.push(bar("view", ["overlay", "heatmap"], S.view, (v) => v, (v) => ({ view: v })));
  const rel = rels.find((r) => r[0] === S.rel);
  if (rel) kids.push(el("img", { className: "main", src: url(rel[S.view === "heatmap" ? 2 : 1]), alt: rel[S.view === "heatmap" ? 2 : 1] }));
  else if (map) kids.push(el("img", { className: "main", src: url(map[S.view]), alt: map[S.view] }));
  else if (grids) kids.push(el("div", { className: "muted", textContent: "head preview drawn by the browser from the 8-bit head grid (no file rendered for this head)" }),
    ...preview(entry, grids[head.value], S.view));
  box.replaceChildren(...kids); box.hidden = false;
}

function navBar(entry, entries) {
  return el("div", { className: "bar" }, [el("button", { textContent: "✕ close", onclick: () => go({ img: null }) }),
    el("button", { textContent: "◀ prev", disabled: S.img === 0, onclick: () => go({ img: S.img - 1 }) }),
    el("button", { textContent: "next ▶", disabled: S.img >= entries.length - 1, onclick: () => go({ img: S.img + 1 }) }),
    el("strong", { textContent: " " + entry.key }), el("span", { className: "muted", textContent: entry.size ? `  ${entry.size[1]}×${entry.size[0]}` : "" }),
    el("span", { className: "pred", textContent: entry.prediction || entry.verdict ? "  predicted: " + predicted(entry) : "" })]);
}
function bilinear(g, gh, gw, h, w) {
  // (h, w) values from the (gh, gw) grid: half-pixel centres, clamped borders, as cv2.resize INTER_LINEAR
  const taps = (n, src) => Array.from({ length: n }, (_, d) => {
    const f = Math.min(Math.max((d + 0.5) * src / n - 0.5, 0), src - 1), i = Math.floor(f);
    return [i, Math.min(i + 1, src - 1), f - i];
  });
  const ys = taps(h, gh), xs = taps(w, gw), out = new Float32Array(h * w);
  ys.forEach(([y0, y1, fy], y) => xs.forEach(([x0, x1, fx], x) => {
    const top = g[y0 * gw + x0] * (1 - fx) + g[y0 * gw + x1] * fx, bottom = g[y1 * gw + x0] * (1 - fx) + g[y1 * gw + x1] * fx;
    out[y * w + x] = top * (1 - fy) + bottom * fy;
  }));
  return out;
}
function preview(entry, b64, view) {
  const [gh, gw] = entry.grids.grid, [H, W] = entry.size, scale = Math.min(1, 800 / W);
  const w = Math.max(1, Math.round(W * scale)), h = Math.max(1, Math.round(H * scale));
  const vals = bilinear(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)), gh, gw, h, w);
  let lo = Infinity, hi = -Infinity; vals.forEach((v) => { lo = Math.min(lo, v); hi = Math.max(hi, v); });
  const lut = G.info.lut.match(/../g).map((b) => parseInt(b, 16));
  const heat = el("canvas", { width: w, height: h, className: "main" }), data = heat.getContext("2d").createImageData(w, h);
  vals.forEach((v, i) => {
    const level = Math.min(255, Math.floor(255 * (v - lo) / (hi - lo || 1)));
    data.data.set([lut[3 * level], lut[3 * level + 1], lut[3 * level + 2], 255], 4 * i);
  });
  heat.getContext("2d").putImageData(data, 0, 0);
  if (view === "heatmap" || !entry.src) return [heat];
  // Canvas pixels of a file:// image cannot be read back, but drawing with globalAlpha blends them.
  const over = el("canvas", { width: w, height: h, className: "main" }), ctx = over.getContext("2d");
  const src = el("img", { src: url(entry.src), hidden: true, alt: "source" });
  src.addEventListener("load", () => { ctx.drawImage(src, 0, 0, w, h); ctx.globalAlpha = G.info.alpha; ctx.drawImage(heat, 0, 0); });
  return [over, src];
}
function done() {
  if (window.attnvisMaps && window.attnvisMaps.pending()) return; // G.maps renders again when the maps arrive
  const imgs = [...document.images], pending = imgs.filter((i) => !i.complete);
  if (pending.length) { pending.forEach((i) => ["load", "error"].forEach((t) => i.addEventListener(t, done, { once: true }))); return; }
  const loaded = imgs.filter((i) => i.naturalWidth > 0).length, map = document.querySelector("#detail canvas.main");
  if (map) { const r = map.getBoundingClientRect(); document.body.dataset.canvas = [r.left + scrollX, r.top + scrollY, r.width, r.height].map(Math.round).join(","); }
  Object.assign(document.body.dataset, { state: "ready", loaded, broken: imgs.length - loaded });
}
document.addEventListener("keydown", (e) => {
  if (S.img === null) return;
  const entries = G.pages[S.page] || [];
  if (e.key === "Escape") go({ img: null });
  else if (e.key === "ArrowRight" && S.img < entries.length - 1) go({ img: S.img + 1 });
  else if (e.key === "ArrowLeft" && S.img > 0) go({ img: S.img - 1 });
  else if (e.key === "ArrowDown") go({ layer: S.layer + 1 });
  else if (e.key === "ArrowUp") go({ layer: S.layer - 1 });
});
window.addEventListener("hashchange", () => { readHash(); G.pages[S.page] ? render() : loadPage(S.page); });
window.addEventListener("DOMContentLoaded", () => {
  if (!G.info) { $("grid").textContent = "gallery/run.js is missing: re-run attnvis batch"; document.body.dataset.state = "ready"; return; }
  readHash(); loadPage(S.page);
});
