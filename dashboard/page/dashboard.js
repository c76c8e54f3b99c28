// dashboard/page/dashboard.js — the dashboard page: polls the server's incremental endpoints every 2 s
// and draws each chart with uPlot (one series per run and metric; several runs overlaid on a shared step
// axis). Every chart's container carries data-series, data-points (the non-null points given to uPlot)
// and data-ink (coloured canvas pixels: the drawn curves), which the browser test reads.
(function () {
  'use strict';
  const POLL_MS = 2000;
  const token = new URLSearchParams(location.search).get('token');
  const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22'];
  const DASHES = [[], [8, 4], [2, 3], [10, 3, 2, 3]];
  // What to draw: metric names of metrics.jsonl (regular expressions) and fields of eval.jsonl.
  const CHARTS = [
    { id: 'reward', title: 'Reward (total and per source)', keys: [/^reward\/mean$/, /^reward\/[^/]+\/mean$/] },
    { id: 'pass_rate', title: 'Pass rate (training samples)', keys: [/^pass_rate$/] },
    { id: 'eval', title: 'Held-out evaluation (eval.jsonl)', evalKeys: ['pass_rate', 'reward_mean'], keys: [/^eval\//] },
    { id: 'kl', title: 'KL (k1, behaviour vs reference)', keys: [/^kl$/] },
    { id: 'entropy', title: 'Entropy', keys: [/^entropy$/] },
    { id: 'is_ratio', title: 'Importance ratio', keys: [/^is_ratio\/(mean|max|clip_frac)$/, /^behav_weight\/(mean|max)$/] },
    { id: 'staleness', title: 'Staleness (versions)', keys: [/^staleness\/(mean|max|token_mean)$/] },
    { id: 'throughput', title: 'Tokens/s (generation, training)', keys: [/^gen\/tokens_per_s$/, /^train\/tokens_per_s$/] },
    { id: 'queue', title: 'Queue depth', keys: [/^queue\/depth$/] },
    { id: 'dropped', title: 'Dropped groups per step, by reason', keys: [/^groups\/dropped_(stale|zero_var|unscored)$/, /^groups\/skipped$/] },
    { id: 'processes', title: 'Processes: restarts, CPU seconds', keys: [/^supervision\/restarts$/, /cpu/] },
    { id: 'loss', title: 'Loss, gradient norm', keys: [/^loss$/, /^grad_norm$/] },
  ];

  const state = { runs: [], data: [], charts: {}, pollErrors: 0 };

  function api(path) {
    const headers = token ? { Authorization: 'Bearer ' + token } : {};
    return fetch(path, { headers: headers, cache: 'no-store' }).then(function (r) {
      return r.json().then(function (j) {
        if (!r.ok) throw new Error(path + ': ' + (j.error || r.status));
        return j;
      });
    });
  }

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    if (attrs) for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function setStatus(text, error) {
    const s = document.getElementById('status');
    s.textContent = text;
    s.className = error ? 'error' : '';
  }

  // ------------------------------------------------------------ runs and what is missing
  function renderRuns() {
    const box = document.getElementById('runs');
    box.textContent = '';
    state.runs.forEach(function (run, i) {
      const d = el('div', { class: 'run', 'data-run': i });
      // runs are told apart by their line style (the same in every chart); colours tell the metrics apart
      const svgNS = 'http://www.w3.org/2000/svg';
      const sw = document.createElementNS(svgNS, 'svg');
      sw.setAttribute('width', '36');
      sw.setAttribute('height', '8');
      sw.setAttribute('class', 'swatch');
      const line = document.createElementNS(svgNS, 'line');
      [['x1', 0], ['y1', 4], ['x2', 36], ['y2', 4], ['stroke', '#333'], ['stroke-width', 2],
        ['stroke-dasharray', DASHES[i % DASHES.length].join(',') || 'none']].forEach(function (a) { line.setAttribute(a[0], a[1]); });
      sw.appendChild(line);
      d.appendChild(sw);
      d.appendChild(el('b', null, run.name));
      d.appendChild(el('span', { class: 'dir' }, '  ' + run.dir + '  ·  ' + (state.data[i] ? state.data[i].metrics.length : 0) + ' steps'));
      const missing = (state.data[i] && state.data[i].missing) || run.missing || [];
      const notes = (state.data[i] && state.data[i].notes) || run.notes || [];
      missing.forEach(function (m) {
        d.appendChild(el('div', { class: 'missing', 'data-missing': m.file }, 'missing: ' + m.file + ' — ' + m.what));
      });
      notes.forEach(function (n) { d.appendChild(el('div', { class: 'missing note' }, n)); });
      box.appendChild(d);
    });
  }

  function fillRunSelect(id) {
    const s = document.getElementById(id);
    s.textContent = '';
    state.runs.forEach(function (run, i) { s.appendChild(el('option', { value: i }, run.name)); });
  }

  // ------------------------------------------------------------ charts
  function chartBox(def) {
    let box = document.getElementById('chart-' + def.id);
    if (box) return box;
    box = el('div', { class: 'chart', id: 'chart-' + def.id, 'data-points': '0', 'data-series': '0', 'data-ink': '0' });
    box.appendChild(el('h3', null, def.title));
    box.appendChild(el('div', { class: 'plot' }));
    document.getElementById('charts').appendChild(box);
    return box;
  }

  // Series of a chart: [{run, key, label, from: 'metrics'|'eval'}]
  function seriesOf(def) {
    const out = [];
    state.data.forEach(function (d, ri) {
      const prefix = state.runs.length > 1 ? state.runs[ri].name + ': ' : '';
      d.keys.forEach(function (k) {
        if (def.keys && def.keys.some(function (re) { return re.test(k); }))
          out.push({ run: ri, key: k, label: prefix + k, from: 'metrics' });
      });
      (def.evalKeys || []).forEach(function (k) {
        if (d.eval.some(function (row) { return typeof row[k] === 'number'; }))
          out.push({ run: ri, key: k, label: prefix + 'held-out ' + k, from: 'eval' });
      });
    });
    out.sort(function (a, b) { return a.run - b.run || (a.label < b.label ? -1 : 1); });
    return out;
  }

  function chartData(series) {
    const steps = new Set();
    const maps = series.map(function (s) {
      const m = new Map();
      state.data[s.run][s.from].forEach(function (row) {
        const v = row[s.key];
        if (typeof row.step === 'number' && typeof v === 'number' && isFinite(v)) { m.set(row.step, v); steps.add(row.step); }
      });
      return m;
    });
    const xs = Array.from(steps).sort(function (a, b) { return a - b; });
    let points = 0;
    const ys = maps.map(function (m) {
      return xs.map(function (x) { if (m.has(x)) { points++; return m.get(x); } return null; });
    });
    return { data: [xs].concat(ys), points: points };
  }

  // a flat series (KL 0 all along) gets a small range around its value, not 0..100
  function yRange(u, min, max) {
    if (min === null || max === null) return [0, 1];
    if (min === max) { const d = Math.abs(min) * 0.1 || 1; return [min - d, max + d]; }
    return uPlot.rangeNum(min, max, 0.1, true);
  }

  // axis labels that fit: 12k, 1.5M, 0.25
  function shortNumber(v) {
    if (v === null || v === undefined) return '';
    const a = Math.abs(v);
    if (a >= 1e6) return +(v / 1e6).toFixed(1) + 'M';
    if (a >= 1e4) return +(v / 1e3).toFixed(0) + 'k';
    if (a >= 1e3) return +(v / 1e3).toFixed(1) + 'k';
    return String(+v.toPrecision(3));
  }

  function inkOf(u) {
    try {
      const c = u.ctx.canvas;
      const px = u.ctx.getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      // coloured pixels only: the series' strokes, not the grey axes and grid
      for (let i = 0; i < px.length; i += 4) {
        if (px[i + 3] === 0) continue;
        const hi = Math.max(px[i], px[i + 1], px[i + 2]), lo = Math.min(px[i], px[i + 1], px[i + 2]);
        if (hi - lo > 40) n++;
      }
      return n;
    } catch (e) { return -1; }
  }

  function drawChart(def) {
    const box = chartBox(def);
    const plot = box.querySelector('.plot');
    const series = seriesOf(def);
    const sig = series.map(function (s) { return s.label; }).join('|');
    const cd = chartData(series);
    box.setAttribute('data-series', String(series.length));
    box.setAttribute('data-points', String(cd.points));
    let c = state.charts[def.id];
    if (!series.length) {
      if (c && c.u) c.u.destroy();
      state.charts[def.id] = null;
      plot.textContent = '';
      plot.appendChild(el('div', { class: 'empty' }, 'no data yet'));
      box.setAttribute('data-ink', '0');
      return;
    }
    if (!c || c.sig !== sig) {
      if (c && c.u) c.u.destroy();
      plot.textContent = '';
      const width = Math.max(300, box.clientWidth - 14);
      // one colour per metric, the same for every run (whose line style differs)
      const keyIndex = {};
      series.forEach(function (s) { const k = s.key + '|' + s.from; if (!(k in keyIndex)) keyIndex[k] = Object.keys(keyIndex).length; });
      const opts = {
        width: width, height: 220,
        scales: { x: { time: false }, y: { range: yRange } },
        axes: [{ label: 'step' }, { size: 56, values: function (u, vals) { return vals.map(shortNumber); } }],
        legend: { live: true },
        series: [{ label: 'step' }].concat(series.map(function (s, i) {
          return {
            label: s.label, stroke: COLORS[keyIndex[s.key + '|' + s.from] % COLORS.length],
            dash: DASHES[s.run % DASHES.length], width: 1.5, spanGaps: true,
            points: { show: cd.data[0].length < 40 },
          };
        })),
        hooks: { draw: [function (u) { box.setAttribute('data-ink', String(inkOf(u))); }] },
      };
      c = state.charts[def.id] = { sig: sig, u: new uPlot(opts, cd.data, plot) };
    } else {
      c.u.setData(cd.data);
    }
  }

  function drawAll() { CHARTS.forEach(drawChart); drawProcChart(); }

  // ------------------------------------------------------------ processes (CPU sampled while the page is open)
  const PROC_CHART = { id: 'proc_cpu', title: 'CPU % per process (sampled by this page; x: seconds)' };
  const procHistory = { t: [], series: {} }; // label -> [values aligned with t]
  const pageStart = Date.now();

  function recordProcesses(answers) {
    const t = (Date.now() - pageStart) / 1000;
    procHistory.t.push(+t.toFixed(1));
    const n = procHistory.t.length;
    answers.forEach(function (a, ri) {
      const prefix = state.runs.length > 1 ? state.runs[ri].name + ': ' : '';
      a.processes.forEach(function (p) {
        if (typeof p.cpu_pct !== 'number') return;
        const label = prefix + p.name;
        if (!procHistory.series[label]) procHistory.series[label] = new Array(n - 1).fill(null);
        procHistory.series[label].push(p.cpu_pct);
      });
    });
    for (const k in procHistory.series) while (procHistory.series[k].length < n) procHistory.series[k].push(null);
    if (n > 300) { procHistory.t.shift(); for (const k in procHistory.series) procHistory.series[k].shift(); }
  }

  function drawProcChart() {
    const def = PROC_CHART;
    const box = chartBox(def);
    const plot = box.querySelector('.plot');
    const labels = Object.keys(procHistory.series).sort();
    let points = 0;
    labels.forEach(function (l) { procHistory.series[l].forEach(function (v) { if (v !== null) points++; }); });
    box.setAttribute('data-series', String(labels.length));
    box.setAttribute('data-points', String(points));
    const data = [procHistory.t.slice()].concat(labels.map(function (l) { return procHistory.series[l].slice(); }));
    const sig = labels.join('|');
    let c = state.charts[def.id];
    if (!labels.length) {
      if (!c) { plot.textContent = ''; plot.appendChild(el('div', { class: 'empty' }, 'no process of these runs is running here')); }
      return;
    }
    if (!c || c.sig !== sig) {
      if (c && c.u) c.u.destroy();
      plot.textContent = '';
      const opts = {
        width: Math.max(300, box.clientWidth - 14), height: 220,
        scales: { x: { time: false } },
        axes: [{ label: 'seconds' }, { size: 56, values: function (u, vals) { return vals.map(shortNumber); } }],
        series: [{ label: 's' }].concat(labels.map(function (l, i) {
          return { label: l, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true };
        })),
        hooks: { draw: [function (u) { box.setAttribute('data-ink', String(inkOf(u))); }] },
      };
      state.charts[def.id] = { sig: sig, u: new uPlot(opts, data, plot) };
    } else {
      c.u.setData(data);
    }
  }

  function renderProcesses(answers) {
    const body = document.querySelector('#processes tbody');
    body.textContent = '';
    const notes = document.getElementById('processes-notes');
    notes.textContent = '';
    answers.forEach(function (a, ri) {
      const name = state.runs[ri].name;
      a.notes.forEach(function (n) { notes.appendChild(el('div', null, name + ': ' + n)); });
      const seen = {};
      a.processes.forEach(function (p) {
        seen[p.name] = 1;
        const sup = a.supervision[p.name];
        const tr = el('tr', { 'data-process': p.name });
        [name, p.name, p.pid, fmt(p.cpu_pct), fmt(p.cpu_s), fmt(p.rss_mb), p.threads,
          sup ? sup.events + ' event(s), restarts ' + sup.restarts + ', last: ' + sup.last_action + ' (' + sup.last_class + ')' : 'no restart']
          .forEach(function (v) { tr.appendChild(el('td', null, v)); });
        body.appendChild(tr);
      });
      Object.keys(a.supervision).forEach(function (pn) {
        if (seen[pn]) return;
        const sup = a.supervision[pn];
        const tr = el('tr', { 'data-process': pn });
        [name, pn, '—', '—', '—', '—', '—', sup.events + ' event(s), restarts ' + sup.restarts + ', last: ' + sup.last_action + ' (' + sup.last_class + ')']
          .forEach(function (v) { tr.appendChild(el('td', null, v)); });
        body.appendChild(tr);
      });
    });
    document.getElementById('processes').setAttribute('data-rows', String(body.children.length));
  }

  function pollProcesses() {
    return Promise.all(state.runs.map(function (_, i) { return api('/api/processes?run=' + i); }))
      .then(function (answers) { recordProcesses(answers); renderProcesses(answers); });
  }

  // ------------------------------------------------------------ polling
  function pollRun(i) {
    const d = state.data[i];
    return Promise.all([
      api('/api/metrics?run=' + i + '&since=' + d.mnext + '&generation=' + d.mgen),
      api('/api/eval?run=' + i + '&since=' + d.enext + '&generation=' + d.egen),
    ]).then(function (r) {
      const m = r[0], e = r[1];
      if (m.reset || m.generation !== d.mgen) d.metrics = [];
      if (e.reset || e.generation !== d.egen) d.eval = [];
      if (!d.metrics.length) d.keys = new Set();
      m.rows.forEach(function (row) { for (const k in row) if (typeof row[k] === 'number') d.keys.add(k); });
      d.metrics = d.metrics.concat(m.rows);
      d.eval = d.eval.concat(e.rows);
      d.mnext = m.next; d.mgen = m.generation;
      d.enext = e.next; d.egen = e.generation;
      d.missing = m.missing.concat(e.missing);
      d.notes = m.notes.concat(e.notes);
    });
  }

  function poll() {
    Promise.all(state.runs.map(function (_, i) { return pollRun(i); }).concat([pollProcesses()])).then(function () {
      drawAll();
      renderRuns();
      state.pollErrors = 0;
      const steps = state.data.map(function (d) { return d.metrics.length; });
      setStatus('updated ' + new Date().toLocaleTimeString() + ' · steps ' + steps.join(', '));
      document.body.setAttribute('data-ready', '1');
      document.body.setAttribute('data-polls', String(Number(document.body.getAttribute('data-polls') || 0) + 1));
    }).catch(function (err) {
      state.pollErrors++;
      setStatus('cannot reach the server: ' + err.message, true);
    }).then(function () { setTimeout(poll, POLL_MS); });
  }

  // ------------------------------------------------------------ rollouts
  function fmt(v) { return typeof v === 'number' ? (Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(3)) : '—'; }

  function renderRollouts(j) {
    const body = document.querySelector('#rollouts tbody');
    body.textContent = '';
    const notes = document.getElementById('rollouts-notes');
    notes.textContent = '';
    j.missing.forEach(function (m) { notes.appendChild(el('div', { 'data-missing': m.file }, 'missing: ' + m.file + ' — ' + m.what)); });
    j.notes.forEach(function (n) { notes.appendChild(el('div', null, n)); });
    j.rollouts.forEach(function (g) {
      const tr = el('tr', { class: 'group', 'data-generator': g.generator, 'data-seq': g.seq });
      tr.appendChild(el('td', null, g.step === null || g.step === undefined ? '—' : g.step));
      tr.appendChild(el('td', null, g.policy_version));
      tr.appendChild(el('td', null, g.generator + ' · ' + g.seq));
      tr.appendChild(el('td', null, g.fate || 'not scored yet'));
      tr.appendChild(el('td', { class: 'prompt' }, g.prompt));
      const td = el('td');
      const ol = el('ol');
      g.completions.forEach(function (c) {
        const li = el('li');
        li.appendChild(el('span', { class: 'completion' }, c.text === null ? '[' + c.tokens + ' tokens, no text recorded]' : c.text));
        if (c.decoded) li.appendChild(el('span', { class: 'score', title: 'not recorded by the generator: decoded from its tokens with the run\'s tokenizer' }, '(decoded)'));
        let s = 'reward ' + fmt(c.reward);
        const per = Object.keys(c.rewards || {}).map(function (k) { return k + ' ' + fmt(c.rewards[k]); });
        if (per.length) s += ' · ' + per.join(', ');
        const sc = el('span', { class: 'score' }, s + ' · adv ');
        const adv = el('span', { class: typeof c.advantage === 'number' ? (c.advantage >= 0 ? 'pos' : 'neg') : '' }, fmt(c.advantage));
        sc.appendChild(adv);
        sc.appendChild(document.createTextNode(' · ' + c.finish + ', ' + c.tokens + ' tok'));
        li.appendChild(sc);
        ol.appendChild(li);
      });
      td.appendChild(ol);
      tr.appendChild(td);
      body.appendChild(tr);
    });
    document.getElementById('rollouts').setAttribute('data-rows', String(j.rollouts.length));
  }

  let rolloutTimer = null;
  function loadRollouts() {
    clearTimeout(rolloutTimer);
    const run = document.getElementById('rollout-run').value || 0;
    const limit = document.getElementById('rollout-limit').value;
    const filter = document.getElementById('rollout-filter').value;
    api('/api/rollouts?run=' + run + '&limit=' + limit + '&filter=' + encodeURIComponent(filter))
      .then(renderRollouts)
      .catch(function (err) { document.getElementById('rollouts-notes').textContent = err.message; })
      .then(function () { rolloutTimer = setTimeout(loadRollouts, 3 * POLL_MS); });
  }

  function loadConfig() {
    const run = document.getElementById('config-run').value || 0;
    api('/api/config?run=' + run).then(function (j) {
      const notes = document.getElementById('config-notes');
      notes.textContent = '';
      j.missing.forEach(function (m) { notes.appendChild(el('div', { 'data-missing': m.file }, 'missing: ' + m.file + ' — ' + m.what)); });
      j.notes.forEach(function (n) { notes.appendChild(el('div', null, n)); });
      document.getElementById('config').textContent = j.config ? JSON.stringify(j.config, null, 2) : '';
    }).catch(function (err) { document.getElementById('config-notes').textContent = err.message; });
  }

  function start() {
    if (typeof uPlot === 'undefined') {
      setStatus('the charting library (uPlot.iife.min.js) did not load', true);
      return;
    }
    api('/api/runs').then(function (j) {
      state.runs = j.runs;
      // per run: rows so far, the numeric metric names seen in them, where the next poll starts
      state.data = j.runs.map(function () { return { metrics: [], keys: new Set(), eval: [], mnext: 0, mgen: 0, enext: 0, egen: 0 }; });
      renderRuns();
      fillRunSelect('rollout-run');
      fillRunSelect('config-run');
      let filterTimer = null;
      document.getElementById('rollout-filter').addEventListener('input', function () {
        clearTimeout(filterTimer);
        filterTimer = setTimeout(loadRollouts, 250);
      });
      document.getElementById('rollout-run').addEventListener('change', loadRollouts);
      document.getElementById('rollout-limit').addEventListener('change', loadRollouts);
      document.getElementById('config-run').addEventListener('change', loadConfig);
      const f = new URLSearchParams(location.search).get('filter');
      if (f) document.getElementById('rollout-filter').value = f;
      poll();
      loadRollouts();
      loadConfig();
    }).catch(function (err) { setStatus(err.message, true); });
  }
  start();
})();
