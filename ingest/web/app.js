// beiflow live map: plain JS, no external resources. Polls the JSON API every 2 s.
"use strict";
(function () {
  const POLL_MS = 2000, TRACK_MINUTES = 10, R = 6378137;
  const svg = document.getElementById("map");
  const statusEl = document.getElementById("status");
  const state = { fences: null, devices: [], events: [], prev: null, rates: null, tiles: null };
  const FENCE_COLORS = { restricted: "#d62728", berth: "#1f77b4", gate: "#9467bd",
    container_yard: "#ff7f0e", road: "#7f7f7f", fuel_depot: "#e377c2", port_area: "#2ca02c",
    apron: "#17becf", inspection: "#bcbd22" };
  const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#008080",
    "#9a6324", "#800000", "#000075", "#808000", "#f032e6", "#469990"];

  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;",
    ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  function hash(s) { let h = 0; for (const c of String(s)) h = (h * 31 + c.charCodeAt(0)) | 0; return Math.abs(h); }
  const devColor = (id) => PALETTE[hash(id) % PALETTE.length];
  function fenceColor(p) { return FENCE_COLORS[p.kind] || FENCE_COLORS[p.category] || "#2b7a78"; }

  // Web Mercator in world units [0, 1).
  function merc(lon, lat) {
    const s = Math.sin(Math.max(-85, Math.min(85, lat)) * Math.PI / 180);
    return [(lon + 180) / 360, 0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)];
  }

  function eachCoord(geom, f) {
    if (!geom) return;
    const walk = (c) => { if (typeof c[0] === "number") f(c[0], c[1]); else c.forEach(walk); };
    walk(geom.coordinates);
  }

  // Projection fitted to the fences and the devices (latest fixes and tracks).
  function fit(w, h) {
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity, lat = 0, n = 0;
    const add = (lon, la) => {
      if (!isFinite(lon) || !isFinite(la)) return;
      const [x, y] = merc(lon, la);
      x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      lat += la; n++;
    };
    for (const f of (state.fences || {}).features || []) eachCoord(f.geometry, add);
    // devices far outside the fenced area (2 spans away) do not shrink the view
    const fenced = n > 0, fx0 = x0, fx1 = x1, fy0 = y0, fy1 = y1, span = Math.max(x1 - x0, y1 - y0) * 2;
    const near = (lon, la) => {
      if (!fenced) return true;
      const [x, y] = merc(lon, la);
      return x > fx0 - span && x < fx1 + span && y > fy0 - span && y < fy1 + span;
    };
    for (const d of state.devices) {
      if (!near(d.lon, d.lat)) continue;
      add(d.lon, d.lat); d.track.forEach((p) => { if (near(p[0], p[1])) add(p[0], p[1]); });
    }
    if (!n) return null;
    const pad = 40, minSpan = 1e-6;
    const sx = Math.max(x1 - x0, minSpan), sy = Math.max(y1 - y0, minSpan);
    const k = Math.min((w - 2 * pad) / sx, (h - 2 * pad) / sy);
    const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
    const meanLat = lat / n;
    return {
      k, cx, cy, w, h,
      p(lon, la) { const [x, y] = merc(lon, la); return [w / 2 + (x - cx) * k, h / 2 + (y - cy) * k]; },
      // metres per pixel at the mean latitude of what is drawn
      mpp: (2 * Math.PI * R * Math.cos(meanLat * Math.PI / 180)) / k,
    };
  }

  const pts = (proj, ring) => ring.map((c) => proj.p(c[0], c[1]).map((v) => v.toFixed(1)).join(",")).join(" ");
  function ringPath(proj, ring) { return "M" + pts(proj, ring).replace(/ /g, "L") + "Z"; }

  function drawFence(proj, f, labels) {
    const g = f.geometry || {}, p = f.properties || {}, col = fenceColor(p);
    const name = p.name || f.id;
    let out = "", lx = null, ly = null;
    const center = (coords) => {
      let x = 0, y = 0, n = 0;
      coords.forEach((c) => { const q = proj.p(c[0], c[1]); x += q[0]; y += q[1]; n++; });
      return [x / n, y / n];
    };
    const title = `<title>${esc(name)} (${esc(p.kind || p.shape || "")})</title>`;
    if (g.type === "Polygon" || g.type === "MultiPolygon") {
      const polys = g.type === "Polygon" ? [g.coordinates] : g.coordinates;
      const d = polys.map((poly) => poly.map((r) => ringPath(proj, r)).join("")).join("");
      out = `<path class="fence" fill-rule="evenodd" d="${d}" fill="${col}" stroke="${col}">${title}</path>`;
      [lx, ly] = center(polys[0][0].slice(0, -1));
    } else if (g.type === "Point") {
      const [x, y] = proj.p(g.coordinates[0], g.coordinates[1]);
      const r = Math.max(2, (p.radius_m || 0) / proj.mpp);
      out = `<circle class="fence" cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="${r.toFixed(1)}" fill="${col}" stroke="${col}">${title}</circle>`;
      [lx, ly] = [x, y];
    } else if (g.type === "LineString") {
      const wpx = Math.max(2, (p.width_m || 0) / proj.mpp);
      out = `<polyline class="fence" points="${pts(proj, g.coordinates)}" fill="none" stroke="${col}" stroke-opacity=".35" stroke-width="${wpx.toFixed(1)}" stroke-linecap="round" stroke-linejoin="round">${title}</polyline>` +
        `<polyline points="${pts(proj, g.coordinates)}" fill="none" stroke="${col}" stroke-dasharray="6 4" stroke-width="1"/>`;
      [lx, ly] = center(g.coordinates);
    }
    if (lx !== null) labels.push(`<text class="fence-label" data-fence="${esc(f.id)}" x="${lx.toFixed(1)}" y="${ly.toFixed(1)}" text-anchor="middle">${esc(name)}</text>`);
    return out;
  }

  function scaleBar(proj) {
    const maxPx = 140, target = proj.mpp * maxPx;
    const pow = Math.pow(10, Math.floor(Math.log10(target)));
    let m = pow;
    for (const s of [5, 2, 1]) if (s * pow <= target) { m = s * pow; break; }
    const px = m / proj.mpp, x = 16, y = proj.h - 22;
    const label = m >= 1000 ? `${m / 1000} km` : `${m} m`;
    return `<g class="scale" data-metres="${m}"><rect x="${x - 6}" y="${y - 18}" width="${px + 12}" height="28" rx="3"/>` +
      `<path d="M${x},${y - 5}V${y}H${(x + px).toFixed(1)}V${y - 5}" fill="none" stroke="#222" stroke-width="2"/>` +
      `<text x="${(x + px / 2).toFixed(1)}" y="${y - 7}" text-anchor="middle">${label}</text></g>`;
  }

  function tileLayer(proj) {
    if (!state.tiles) return "";
    const z = Math.max(0, Math.min(19, Math.round(Math.log2(proj.k / 256))));
    const n = 2 ** z, size = proj.k / n;
    const wx0 = proj.cx - proj.w / 2 / proj.k, wy0 = proj.cy - proj.h / 2 / proj.k;
    const tx0 = Math.floor(wx0 * n), ty0 = Math.max(0, Math.floor(wy0 * n));
    const tx1 = Math.floor((wx0 + proj.w / proj.k) * n), ty1 = Math.min(n - 1, Math.floor((wy0 + proj.h / proj.k) * n));
    let out = "";
    for (let tx = tx0; tx <= tx1 && tx - tx0 < 16; tx++) {
      for (let ty = ty0; ty <= ty1 && ty - ty0 < 16; ty++) {
        const url = state.tiles.replace("{z}", z).replace("{x}", ((tx % n) + n) % n).replace("{y}", ty);
        const x = proj.w / 2 + (tx / n - proj.cx) * proj.k, y = proj.h / 2 + (ty / n - proj.cy) * proj.k;
        out += `<image href="${esc(url)}" x="${x.toFixed(1)}" y="${y.toFixed(1)}" width="${(size + 0.5).toFixed(1)}" height="${(size + 0.5).toFixed(1)}"/>`;
      }
    }
    return `<g class="tiles">${out}</g>`;
  }

  function render() {
    const w = svg.clientWidth || 800, h = svg.clientHeight || 600;
    const proj = fit(w, h);
    if (!proj) { svg.innerHTML = `<text x="20" y="40">no fences or positions yet</text>`; return; }
    const labels = [];
    const fences = ((state.fences || {}).features || []).map((f) => drawFence(proj, f, labels)).join("");
    let tracks = "", dots = "", devLabels = "";
    const placed = [];  // label boxes so far: devices close together get stacked labels
    for (const d of state.devices) {
      const col = devColor(d.device_id);
      if (d.track.length > 1) tracks += `<polyline class="track" stroke="${col}" points="${pts(proj, d.track)}"/>`;
      const [x, y] = proj.p(d.lon, d.lat);
      dots += `<circle class="dev" data-device="${esc(d.device_id)}" cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="5.5" fill="${col}"><title>${esc(d.device_id)} ${esc(d.time)}</title></circle>`;
      let ly = y + 4;
      while (placed.some(([px, py]) => Math.abs(px - x) < 70 && Math.abs(py - ly) < 12)) ly += 12;
      placed.push([x, ly]);
      devLabels += `<text class="dev-label" x="${(x + 8).toFixed(1)}" y="${ly.toFixed(1)}" fill="${col}">${esc(d.device_id)}</text>`;
    }
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.innerHTML = tileLayer(proj) + `<g class="fences">${fences}</g><g class="fence-labels">${labels.join("")}</g>` +
      `<g class="tracks">${tracks}</g><g class="devices">${dots}${devLabels}</g>` + scaleBar(proj);
  }

  function fmt(v) { return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2); }

  function renderRates() {
    const cur = state.rates, prev = state.prev, el = document.getElementById("rates");
    if (!cur) return;
    const rows = [];
    // two scrapes at least 0.5 s apart; else (first scrape, headless virtual time) the
    // average since the ingest started
    const recent = prev && cur.t - prev.t >= 0.5;
    const dt = recent ? cur.t - prev.t : Math.max(1e-3, cur.uptime_s);
    const rate = (a, b) => fmt(Math.max(0, (a || 0) - (recent ? (b || 0) : 0)) / dt) + " /s";
    for (const [k, v] of Object.entries(cur.received).sort()) rows.push([`messages ${k}`, rate(v, prev && prev.received[k])]);
    for (const [k, v] of Object.entries(cur.rows).sort()) rows.push([`rows ${k}`, rate(v, prev && prev.rows[k])]);
    rows.push(["acked", rate(cur.acked, prev && prev.acked)]);
    rows.push(["dead letters", rate(cur.rejected, prev && prev.rejected) + ` (${cur.rejected} total)`]);
    rows.push(["broker / database", `${cur.mqtt_connected ? "up" : "DOWN"} / ${cur.db_up ? "up" : "DOWN"}`]);
    el.innerHTML = "<tbody>" + rows.map(([k, v]) => `<tr><td>${esc(k)}</td><td class="v">${esc(v)}</td></tr>`).join("") + "</tbody>";
  }

  function renderEvents() {
    const el = document.getElementById("events");
    el.innerHTML = state.events.map((e) => {
      const t = e.time.replace("T", " ").replace("Z", "").slice(0, 19);
      const what = e.type === "geofence" ? `${e.what} ${e.ref_name || e.ref}` : `${e.what} (${e.ref}, score ${Number(e.score).toFixed(2)})`;
      return `<li class="${e.type}"><span class="t">${esc(t)}</span> ${esc(e.device_id)} <b>${esc(what)}</b></li>`;
    }).join("") || "<li>none yet</li>";
    document.getElementById("ndev").textContent = `(${state.devices.length})`;
  }

  async function getJSON(url) {
    const r = await fetch(url, { cache: "no-store" });
    const body = await r.json();
    if (!r.ok) throw new Error(`${url}: ${body.error || r.status}`);
    return body;
  }

  async function poll() {
    try {
      if (state.tiles === null) state.tiles = (await getJSON("api/config")).tiles || "";
      const [fences, pos, ev, rates] = await Promise.all([getJSON("api/fences"),
        getJSON(`api/positions?minutes=${TRACK_MINUTES}`), getJSON("api/events?limit=40"), getJSON("api/rates")]);
      state.fences = fences; state.devices = pos.devices; state.events = ev.events;
      state.prev = state.rates; state.rates = rates;
      render(); renderRates(); renderEvents();
      statusEl.className = "";
      statusEl.textContent = `${pos.devices.length} devices, ${fences.features.length} fences, updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      statusEl.className = "err";
      statusEl.textContent = `error: ${err.message}`;
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }
  window.addEventListener("resize", render);
  poll();
})();
