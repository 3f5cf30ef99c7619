// The TickStock dashboard: one page, plain JavaScript, no dependency. It is a client like any
// other: it speaks the WebSocket protocol of /stocks (docs/protocol.md) with first-message
// auth, and polls /health and /metrics. Rendering is bounded: messages only update state,
// and the DOM is touched once per animation frame, with a capped tape.
"use strict";

const TAPE_ROWS_MAX = 200; // rows in the tape's table
const TAPE_KEPT_MAX = 2000; // tape events kept, so a filter change can refill the table
// Redraw periods: nobody reads a tape at 60 rows a second, and each redraw is layout and
// paint of the whole table, so the tape and the chart are drawn a few times a second.
const TAPE_EVERY_MS = 100;
const CHART_EVERY_MS = 250;
const MOVERS_N = 10; // gainers and losers shown
const MOVERS_EVERY_MS = 1000; // how often the movers are re-ranked
const POLL_MS = 2000; // /health and /metrics
const ACT_POINTS_MAX = 300; // five minutes of ACT (one a second)
const CHART_BARS_MAX = { A: 600, AM: 390 }; // ten minutes of second bars, a day of minute bars
const CHART_HISTORY_MS = 3600 * 1000; // the chart asks for the last hour (resume by time)
const RESUME_MARGIN_SEQ = 5000; // after resume_failed, start this far inside the history
const RECONNECT_MS = [500, 1000, 2000, 5000, 10000];
const KEY_STORAGE = "tickstock.key";
const SYMBOL_STORAGE = "tickstock.symbol";
// The token sent when no key was typed: a server with no keys accepts any token on
// loopback; one with keys refuses it, and the page asks for a key.
const ANY_TOKEN = "dashboard";
const STRENGTH = { weak: 1, moderate: 2, strong: 3 };
const STREAM_URL = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/stocks`;

const $ = (id) => document.getElementById(id);
const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const num = (x) => (Number.isFinite(x) ? integer.format(x) : "–");
const signed = (x, digits = 2) => `${x >= 0 ? "+" : ""}${x.toFixed(digits)}`;
const price = (p) => (p >= 1000 ? p.toFixed(0) : p >= 10 ? p.toFixed(2) : p.toFixed(p >= 1 ? 3 : 4));

function clock(ms) {
  const d = new Date(ms);
  const two = (n) => String(n).padStart(2, "0");
  return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}.${String(d.getMilliseconds()).padStart(3, "0")}`;
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function currentKey() {
  return sessionStorage.getItem(KEY_STORAGE) || ANY_TOKEN;
}

// What the page knows; message handlers change it, `frame` draws it.
const state = {
  latestT: 0, // newest event time seen (ms): the chart's resume by time counts back from it
  tapePending: [], // tape events not drawn yet
  tapeKept: [], // the newest tape events, drawn or not
  tapeDirty: false, // the filter changed: redraw the table from tapeKept
  tapeAt: 0,
  paused: false, // the pause button
  held: new Set(), // tables under the pointer: they hold still so a symbol can be clicked
  kindCounts: { HL: 0, TR: 0, SV: 0 },
  movers: new Map(), // symbol -> its latest second bar
  moversAt: 0,
  act: null,
  actPoints: [],
  actDirty: false,
  slow: { conflated: 0, shed: [] },
  chart: {
    symbol: "",
    freq: "AM",
    bars: { A: new Map(), AM: new Map() },
    trade: null, // the symbol's latest trade
    stream: null,
    dirty: true,
    at: 0,
  },
};

// One WebSocket to /stocks: authenticates with the first message, hands events and statuses
// on, and reconnects with back-off unless the server refused the key.
class Stream {
  constructor(handlers) {
    this.handlers = handlers;
    this.attempt = 0;
    this.stopped = false;
    this.connect();
  }

  connect() {
    const ws = new WebSocket(STREAM_URL);
    this.ws = ws;
    this.refused = false;
    ws.onopen = () => ws.send(JSON.stringify({ action: "auth", params: currentKey() }));
    ws.onmessage = (message) => {
      let batch;
      try {
        batch = JSON.parse(message.data);
      } catch (error) {
        console.warn("tickstock: a message that is not JSON", error);
        return;
      }
      for (const ev of batch) {
        if (ev.ev === "status") this.status(ev);
        else this.handlers.event(ev);
      }
    };
    ws.onclose = (close) => {
      if (this.ws !== ws || this.stopped) return;
      if (this.refused) return;
      const wait = RECONNECT_MS[Math.min(this.attempt, RECONNECT_MS.length - 1)];
      this.attempt += 1;
      if (this.handlers.closed) this.handlers.closed(close, wait);
      setTimeout(() => this.stopped || this.connect(), wait);
    };
  }

  status(ev) {
    if (ev.status === "auth_success") {
      this.attempt = 0;
      this.handlers.authed(this);
    } else if (ev.status === "auth_failed" || ev.status === "token_expired") {
      this.refused = true;
      if (this.handlers.refused) this.handlers.refused(ev.message || ev.status);
    } else if (this.handlers.status) {
      this.handlers.status(ev, this);
    }
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  close() {
    this.stopped = true;
    if (this.ws) this.ws.close(1000);
  }
}

// The main stream: the tape, the movers and market activity.
let main = null;

function connectMain() {
  if (main) main.close();
  setConn("connecting", "connecting");
  main = new Stream({
    authed(stream) {
      setConn("live", "live");
      $("key-form").hidden = true;
      // A slow browser gets the latest of each symbol, never a backlog (docs/protocol.md).
      stream.send({ action: "options", params: { slow_consumer: "conflate" } });
      // Snapshots fill the movers and the activity at once; the tape starts from now.
      stream.send({ action: "subscribe", params: "A.*,ACT.*", snapshot: true });
      stream.send({ action: "subscribe", params: "HL.*,TR.*,SV.*" });
    },
    event: onMainEvent,
    status(ev) {
      if (ev.status === "conflated") {
        state.slow.conflated += ev.dropped || 0;
        showSlow();
      } else if (ev.status === "shed" || ev.status === "unshed") {
        state.slow.shed = ev.status === "shed" ? ev.channels : [];
        showSlow();
      } else if (ev.status === "error") {
        console.warn("tickstock:", ev.message);
      }
    },
    refused(why) {
      setConn("auth", "key refused");
      askForKey(sessionStorage.getItem(KEY_STORAGE)
        ? `The server refused this key (${why}).`
        : "This server needs an API key.");
      if (state.chart.stream) state.chart.stream.close();
    },
    closed(close, wait) {
      setConn("down", `disconnected (${close.code}); again in ${(wait / 1000).toFixed(1)} s`);
    },
  });
}

function onMainEvent(ev) {
  switch (ev.ev) {
    case "HL":
    case "TR":
    case "SV":
      state.kindCounts[ev.ev] += 1;
      state.latestT = Math.max(state.latestT, ev.t);
      state.tapePending.push(ev);
      // While the tab is hidden no frame is drawn: keep only what a frame could show.
      if (state.tapePending.length > 2 * TAPE_KEPT_MAX) {
        state.tapePending = state.tapePending.slice(-TAPE_KEPT_MAX);
      }
      break;
    case "A":
      state.latestT = Math.max(state.latestT, ev.e);
      state.movers.set(ev.sym, ev);
      break;
    case "ACT": {
      state.latestT = Math.max(state.latestT, ev.t);
      state.act = ev;
      const points = state.actPoints;
      if (points.length && points[points.length - 1].t >= ev.t) break;
      points.push({ t: ev.t, rate: ev.trades_10s / 10 });
      if (points.length > ACT_POINTS_MAX) points.shift();
      state.actDirty = true;
      break;
    }
    default:
  }
}

function setConn(kind, text) {
  const pill = $("conn");
  pill.dataset.state = kind;
  pill.textContent = text;
}

function showSlow() {
  const { conflated, shed } = state.slow;
  const parts = [];
  if (conflated) parts.push(`${num(conflated)} events conflated while this page fell behind`);
  if (shed.length) parts.push(`shed: ${shed.join(", ")}`);
  $("slow").textContent = parts.length ? `Here: ${parts.join("; ")}.` : "";
}

// The key form: shown when the server refuses the token, or on demand.
function askForKey(why) {
  $("key-why").textContent = why;
  $("key-form").hidden = false;
  $("key").focus();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = $("key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORAGE, key);
  $("key").value = "";
  connectMain();
  if (state.chart.symbol) select(state.chart.symbol);
});
$("key-forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORAGE);
  $("key").value = "";
  connectMain();
});
$("key-button").addEventListener("click", () => {
  if ($("key-form").hidden) askForKey("The key this page authenticates with (kept in this tab only).");
  else $("key-form").hidden = true;
});

// The tape: HL, TR and SV, filtered here by kind, strength and symbol.
function tapeFilter() {
  const kinds = new Set();
  for (const box of document.querySelectorAll("input[data-kind]")) {
    if (box.checked) kinds.add(box.dataset.kind);
  }
  const minStrength = Number($("f-strength").value);
  const symbols = new Set($("f-symbols").value.toUpperCase().split(/[\s,]+/).filter(Boolean));
  return (ev) => kinds.has(ev.ev)
    && (ev.ev === "HL" || (STRENGTH[ev.strength] || 0) >= minStrength)
    && (symbols.size === 0 || symbols.has(ev.sym));
}
let passes = tapeFilter();
for (const id of ["f-strength", "f-symbols"]) {
  $(id).addEventListener("input", () => { passes = tapeFilter(); state.tapeDirty = true; });
}
for (const box of document.querySelectorAll("input[data-kind]")) {
  box.addEventListener("change", () => { passes = tapeFilter(); state.tapeDirty = true; });
}
// A table under the pointer holds still (a busy tape moves faster than a click).
for (const [id, name] of [["tape", "tape"], ["gainers", "movers"], ["losers", "movers"]]) {
  $(id).addEventListener("mouseenter", () => state.held.add(name));
  $(id).addEventListener("mouseleave", () => {
    state.held.delete(name);
    if (name === "tape") state.tapeDirty = true;
  });
}
$("tape-pause").addEventListener("click", () => {
  state.paused = !state.paused;
  $("tape-pause").textContent = state.paused ? "resume" : "pause";
  if (!state.paused) state.tapeDirty = true;
});

function describe(ev) {
  switch (ev.ev) {
    case "HL":
      return [`new session ${ev.kind} ${price(ev.p)} · ${signed(ev.pct)} % from open · #${ev.count}`, ev.kind === "high" ? "up" : "down"];
    case "TR":
      return [`trend ${ev.dir}, ${ev.strength} · score ${ev.score.toFixed(2)} · price ${ev.vwap_pos} VWAP`, ev.dir === "up" ? "up" : "down"];
    case "SV":
      return [`${ev.trigger} surge ${ev.dir} ${signed(ev.pct)} % · volume ×${ev.vol_mult.toFixed(1)} · ${ev.strength}`, ev.dir === "up" ? "up" : "down"];
    default:
      return [JSON.stringify(ev), ""];
  }
}

function tapeRow(ev) {
  const [what, dir] = describe(ev);
  const row = document.createElement("tr");
  row.append(el("td", clock(ev.t), "muted"));
  const kind = el("td");
  kind.append(el("span", ev.ev, `kind ${dir}`));
  row.append(kind);
  row.append(el("td", ev.sym, "sym"));
  row.append(el("td", what, dir));
  return row;
}

function keep(events) {
  const kept = state.tapeKept;
  for (const ev of events) kept.push(ev);
  if (kept.length > TAPE_KEPT_MAX) kept.splice(0, kept.length - TAPE_KEPT_MAX);
}

function drawTape(now) {
  if (now - state.tapeAt < TAPE_EVERY_MS) return;
  state.tapeAt = now;
  const body = $("tape").tBodies[0];
  const pending = state.tapePending;
  state.tapePending = [];
  keep(pending);
  if (state.paused || state.held.has("tape")) return;
  let shown;
  if (state.tapeDirty) {
    state.tapeDirty = false;
    body.replaceChildren();
    shown = state.tapeKept.filter(passes).slice(-TAPE_ROWS_MAX);
  } else {
    // Only the newest rows a capped table can show are built at all.
    shown = [];
    for (let i = pending.length - 1; i >= 0 && shown.length < TAPE_ROWS_MAX; i -= 1) {
      if (passes(pending[i])) shown.push(pending[i]);
    }
    shown.reverse();
  }
  if (!shown.length) return;
  const rows = document.createDocumentFragment();
  for (let i = shown.length - 1; i >= 0; i -= 1) rows.append(tapeRow(shown[i]));
  body.prepend(rows);
  while (body.rows.length > TAPE_ROWS_MAX) body.deleteRow(-1);
}

// Top movers: percent from the day's open, from every symbol's latest second bar.
function drawMovers(now) {
  if (now - state.moversAt < MOVERS_EVERY_MS || state.held.has("movers")) return;
  state.moversAt = now;
  const ranked = [];
  for (const bar of state.movers.values()) {
    if (bar.op > 0) ranked.push({ sym: bar.sym, c: bar.c, pct: ((bar.c - bar.op) / bar.op) * 100 });
  }
  ranked.sort((a, b) => b.pct - a.pct);
  const fill = (id, list) => {
    const body = $(id).tBodies[0];
    body.replaceChildren(...list.map((m) => {
      const row = document.createElement("tr");
      row.append(el("td", m.sym, "sym"), el("td", price(m.c)), el("td", `${signed(m.pct)} %`, m.pct >= 0 ? "up" : "down"));
      return row;
    }));
  };
  fill("gainers", ranked.slice(0, MOVERS_N).filter((m) => m.pct > 0));
  fill("losers", ranked.slice(-MOVERS_N).reverse().filter((m) => m.pct < 0));
  const { HL, TR, SV } = state.kindCounts;
  const seconds = MOVERS_EVERY_MS / 1000;
  $("tape-rate").textContent = `HL ${num(HL / seconds)}/s · TR ${num(TR / seconds)}/s · SV ${num(SV / seconds)}/s`;
  state.kindCounts = { HL: 0, TR: 0, SV: 0 };
}

// A canvas sized to its box in device pixels; the context is in CSS pixels.
function surface(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  return { g, width, height };
}

function drawActivity() {
  if (!state.actDirty) return;
  state.actDirty = false;
  const act = state.act;
  const level = $("act-level");
  level.dataset.level = act.level;
  level.textContent = act.level;
  $("act-text").textContent = `${num(act.trades_10s / 10)} trades/s over 10 s · ${num(act.trades_60s)} in 60 s · ${num(act.symbols_60s)} symbols traded in 60 s`;
  const { g, width, height } = surface($("act-spark"));
  const points = state.actPoints;
  if (points.length < 2) return;
  const top = Math.max(...points.map((p) => p.rate)) * 1.1 || 1;
  const step = width / (ACT_POINTS_MAX - 1);
  const x0 = width - (points.length - 1) * step;
  g.beginPath();
  points.forEach((p, i) => {
    const x = x0 + i * step;
    const y = height - 2 - (p.rate / top) * (height - 4);
    if (i === 0) g.moveTo(x, y);
    else g.lineTo(x, y);
  });
  g.strokeStyle = "#4aa3ff";
  g.lineWidth = 1.5;
  g.stroke();
  g.fillStyle = "#7d8a97";
  g.font = "11px system-ui, sans-serif";
  g.fillText(`${num(top / 1.1)}/s`, 4, 12);
}

// The chart: its own connection, subscribed to the symbol's A and AM with a snapshot, and
// resumed by time so it starts with the history the server still holds.
function select(symbol) {
  const sym = symbol.trim().toUpperCase();
  if (!/^[A-Z0-9.*-]{1,16}$/.test(sym) || sym.includes("*")) return;
  const chart = state.chart;
  if (chart.stream) chart.stream.close();
  chart.symbol = sym;
  chart.bars = { A: new Map(), AM: new Map() };
  chart.trade = null;
  chart.dirty = true;
  sessionStorage.setItem(SYMBOL_STORAGE, sym);
  $("chart-symbol").value = sym;
  let resumes = 0;
  chart.stream = new Stream({
    authed(stream) {
      resumes = 0;
      stream.send({ action: "subscribe", params: `AM.${sym},A.${sym}`, snapshot: true });
      const from = (state.latestT || Date.now()) - CHART_HISTORY_MS;
      stream.send({ action: "resume", params: { from_t: Math.floor(from) } });
    },
    event(ev) {
      if (ev.sym !== chart.symbol) return;
      if (ev.ev === "T") {
        chart.trade = ev;
        chart.dirty = true;
        return;
      }
      if (ev.ev !== "A" && ev.ev !== "AM") return;
      const bars = chart.bars[ev.ev];
      bars.set(ev.s, ev);
      const max = CHART_BARS_MAX[ev.ev];
      if (bars.size > max + max / 4) {
        const starts = [...bars.keys()].sort((a, b) => a - b);
        for (const s of starts.slice(0, bars.size - max)) bars.delete(s);
      }
      chart.dirty = true;
    },
    status(ev, stream) {
      // Older than the history: take what it holds (a few tries, since it moves on).
      if (ev.status === "resume_failed" && resumes < 3 && Number.isFinite(ev.oldest_seq)) {
        resumes += 1;
        stream.send({ action: "resume", params: { from_seq: ev.oldest_seq + RESUME_MARGIN_SEQ } });
      } else if (ev.status === "resumed" || ev.status === "resume_failed") {
        // The bars are in; now the symbol's trades, live only (an hour of a busy symbol's
        // trades is too many to replay for a price line).
        stream.send({ action: "subscribe", params: `T.${sym}` });
      }
    },
  });
}

$("chart-symbol").addEventListener("keydown", (event) => {
  if (event.key === "Enter") select(event.target.value);
});
for (const radio of document.querySelectorAll("input[name=freq]")) {
  radio.addEventListener("change", () => {
    state.chart.freq = radio.value;
    state.chart.dirty = true;
  });
}
// Any symbol cell, in the tape or the movers, opens its chart.
document.addEventListener("click", (event) => {
  const cell = event.target.closest("td.sym");
  if (cell) select(cell.textContent);
});

function drawChart(now) {
  const chart = state.chart;
  if (!chart.dirty || now - chart.at < CHART_EVERY_MS) return;
  chart.dirty = false;
  chart.at = now;
  const canvas = $("chart");
  const { g, width, height } = surface(canvas);
  const all = [...chart.bars[chart.freq].values()].sort((a, b) => a.s - b.s);
  const slot = 7;
  const pad = { left: 8, right: 64, top: 10, bottom: 18 };
  const fit = Math.max(1, Math.floor((width - pad.left - pad.right) / slot));
  const bars = all.slice(-fit);
  canvas.dataset.symbol = chart.symbol;
  canvas.dataset.bars = String(bars.length);
  $("chart-title").textContent = chart.symbol ? `${chart.symbol} · ${chart.freq === "AM" ? "1-minute" : "1-second"} bars` : "Chart";
  g.font = "11px system-ui, sans-serif";
  if (!bars.length) {
    g.fillStyle = "#7d8a97";
    const wait = chart.freq === "AM" ? " (minute bars come once a minute: try 1 s)" : "";
    g.fillText(chart.symbol ? `waiting for bars of ${chart.symbol}${wait}` : "click a symbol in the tape or the movers", 12, 24);
    $("chart-info").textContent = chart.symbol ? "" : "click a symbol";
    return;
  }
  const last = bars[bars.length - 1];
  const trade = chart.trade;
  const quote = trade && trade.t >= last.e - 1000 ? trade.p : last.c;
  const change = last.op > 0 ? ` · ${signed(((quote - last.op) / last.op) * 100)} % from open` : "";
  const traded = trade ? ` · last trade ${price(trade.p)} × ${num(trade.s)} at ${clock(trade.t)}` : "";
  $("chart-info").textContent = `${price(quote)}${change} · day volume ${num(last.av)}${traded} · ${bars.length} bars`;
  let lo = Infinity;
  let hi = -Infinity;
  let vmax = 0;
  for (const b of bars) {
    lo = Math.min(lo, b.l);
    hi = Math.max(hi, b.h);
    vmax = Math.max(vmax, b.v);
  }
  if (hi === lo) { hi += hi * 0.001 || 0.01; lo -= lo * 0.001 || 0.01; }
  const priceH = (height - pad.top - pad.bottom) * 0.76;
  const volTop = pad.top + priceH + 8;
  const volH = height - pad.bottom - volTop;
  const y = (p) => pad.top + ((hi - p) / (hi - lo)) * priceH;
  g.strokeStyle = "#26303b";
  g.fillStyle = "#7d8a97";
  for (let i = 0; i <= 4; i += 1) {
    const p = lo + ((hi - lo) * i) / 4;
    const yy = Math.round(y(p)) + 0.5;
    g.beginPath();
    g.moveTo(pad.left, yy);
    g.lineTo(width - pad.right, yy);
    g.stroke();
    g.fillText(price(p), width - pad.right + 6, yy + 4);
  }
  bars.forEach((b, i) => {
    // The newest bar at the right edge, as charts are read.
    const x = width - pad.right - (bars.length - i) * slot + slot / 2;
    const color = b.c >= b.o ? "#2fbf71" : "#ef5350";
    g.strokeStyle = color;
    g.fillStyle = color;
    g.beginPath();
    g.moveTo(Math.round(x) + 0.5, y(b.h));
    g.lineTo(Math.round(x) + 0.5, y(b.l));
    g.stroke();
    const top = y(Math.max(b.o, b.c));
    g.fillRect(x - 2.5, top, 5, Math.max(1, y(Math.min(b.o, b.c)) - top));
    const vh = vmax > 0 ? (b.v / vmax) * volH : 0;
    g.globalAlpha = 0.45;
    g.fillRect(x - 2.5, volTop + volH - vh, 5, vh);
    g.globalAlpha = 1;
  });
  g.fillStyle = "#7d8a97";
  const end = clock(last.s).slice(0, 8);
  const endWidth = g.measureText(end).width;
  g.fillText(end, width - pad.right - endWidth, height - 4);
  const startX = width - pad.right - bars.length * slot;
  if (startX + 2 * endWidth + 16 < width - pad.right) {
    g.fillText(clock(bars[0].s).slice(0, 8), startX, height - 4);
  }
}

// The server: /health every POLL_MS, and the p99 of tick_to_client over the same interval
// from the /metrics histogram (as Prometheus' histogram_quantile does over a rate).
let previous = null;
let previousBuckets = null;

function feedWords(feed) {
  if (!feed) return "feed: unknown";
  if (feed.source === "upstream") {
    const failure = feed.last_failure ? ` · last failure: ${feed.last_failure}` : "";
    const breaker = feed.breaker && feed.breaker !== "closed" ? ` · circuit breaker ${feed.breaker}` : "";
    return feed.state === "streaming"
      ? `Upstream feed streaming${breaker}${failure}`
      : `Upstream feed DOWN${breaker || " · reconnecting"}${failure}`;
  }
  const names = { synthetic: "Synthetic market", "journal replay": "Journal replay" };
  return `${names[feed.source] || feed.source} · ${feed.state}`;
}

function duration(s) {
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
}

// The cumulative buckets of histogram `name` in a Prometheus text exposition: [[le, count]].
function buckets(text, name) {
  const out = [];
  const prefix = `tickstock_${name}_bucket{le="`;
  for (const line of text.split("\n")) {
    if (!line.startsWith(prefix)) continue;
    const [le, count] = line.slice(prefix.length).split(/"\} /);
    out.push([le === "+Inf" ? Infinity : Number(le), Number(count)]);
  }
  return out.sort((a, b) => a[0] - b[0]);
}

function quantile(q, now, before) {
  if (!before || before.length !== now.length) return null;
  const counts = now.map(([le, n], i) => [le, n - before[i][1]]);
  const total = counts[counts.length - 1][1];
  if (!(total > 0)) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const [le, n] of counts) {
    if (n >= rank) {
      if (le === Infinity) return lower;
      return lower + (le - lower) * ((rank - below) / Math.max(1, n - below));
    }
    lower = le;
    below = n;
  }
  return lower;
}

function latency(seconds) {
  if (seconds === null) return "–";
  return seconds < 0.001 ? `${(seconds * 1e6).toFixed(0)} µs` : seconds < 1 ? `${(seconds * 1e3).toFixed(1)} ms` : `${seconds.toFixed(2)} s`;
}

async function poll() {
  const at = performance.now();
  try {
    const [healthResponse, metricsResponse] = await Promise.all([
      fetch("/health", { cache: "no-store" }),
      fetch("/metrics", { cache: "no-store" }),
    ]);
    const health = await healthResponse.json();
    const text = await metricsResponse.text();
    const metrics = {
      client: buckets(text, "tick_to_client_seconds"),
      engine: buckets(text, "ring_to_frame_seconds"),
    };
    const pill = $("health");
    // "degraded": serving, with a part away (the database sink); "unhealthy": 503.
    pill.dataset.state = health.status;
    pill.textContent = "server " + health.status;
    const problem = $("problem");
    problem.hidden = !health.problem;
    problem.textContent = health.problem || "";
    $("feed").textContent = feedWords(health.feed);
    $("s-clients").textContent = num(health.clients);
    $("s-uptime").textContent = duration(health.uptime_s);
    const drops = health.drops || {};
    const dropped = (drops.mfbuf || 0) + (drops.slow_consumer_closes || 0) + (drops.journal || 0);
    $("s-drops").textContent = num(dropped);
    $("s-drops").title = `engine buffer ${num(drops.mfbuf)}, slow consumers closed ${num(drops.slow_consumer_closes)}, journal ${num(drops.journal)}`;
    if (previous) {
      const dt = (at - previous.at) / 1000;
      $("s-ticks").textContent = num(Math.max(0, health.ticks_in - previous.health.ticks_in) / dt);
      $("s-events").textContent = num(Math.max(0, health.events_out - previous.health.events_out) / dt);
      // tick_to_client has samples only while some client takes trades (T); without
      // them, the engine's share (ring to encoded frame) is what there is to show.
      const client = quantile(0.99, metrics.client, previousBuckets.client);
      const engine = quantile(0.99, metrics.engine, previousBuckets.engine);
      $("s-p99").textContent = client !== null ? latency(client) : engine !== null ? `${latency(engine)} (engine)` : "–";
    }
    previous = { at, health };
    previousBuckets = metrics;
  } catch (error) {
    const pill = $("health");
    pill.dataset.state = "down";
    pill.textContent = "server unreachable";
    $("feed").textContent = `cannot reach the server: ${error.message}`;
    previous = null;
  }
}

function frame(now) {
  drawTape(now);
  drawMovers(now);
  drawActivity();
  drawChart(now);
  requestAnimationFrame(frame);
}

addEventListener("resize", () => { state.chart.dirty = true; state.actDirty = state.act !== null; });
connectMain();
const remembered = sessionStorage.getItem(SYMBOL_STORAGE);
if (remembered) select(remembered);
poll();
setInterval(poll, POLL_MS);
requestAnimationFrame(frame);
