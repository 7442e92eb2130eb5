// rackvault web console: a single-page app on the REST API (/api/v1), no framework, no build.
//
// Served by the appliance itself under a strict CSP (default-src 'self'): no inline scripts,
// no inline style attributes, no external assets. Everything is built with DOM calls (never
// innerHTML with data), styles come from classes in style.css; only the widths and positions
// of bars (task progress, the capacity bar and its watermark marks) are set through the
// CSSOM, which CSP allows.
//
// Routing is on the location hash (#/dashboard, #/tasks/12, ...). Each page render gets a
// context whose timers are cleared when the route changes, so polling stops with its page.
// Stable ids and data-test attributes are part of the browser test's contract
// (tests/e2e/tests/browser.rs): keep them when changing the markup.
'use strict';

(function () {
  const API = '/api/v1';
  const ROLE_RANK = { metrics: 0, auditor: 1, operator: 2, admin: 3 };
  const ROLE_LABEL = { admin: 'Administrator', operator: 'Operator', auditor: 'Auditor', metrics: 'Metrics', replication: 'Replication', pull: 'Pull' };
  const ROLE_HELP = {
    admin: 'everything, including users, sources, jobs and certificates',
    operator: 'run backups, restores and verifications, cancel tasks',
    auditor: 'read-only: dashboards, tasks, logs and the audit log',
    metrics: 'only /metrics: for a Prometheus scraper',
    replication: 'only receiving replicated restore points from another appliance, into the namespace that is this token’s name (a-z, 0-9, -)',
    pull: 'only handing this appliance’s own restore points to an offsite appliance that pulls them',
  };
  const ACTIVE_STATES = new Set(['queued', 'running']);
  const KIND_LABEL = { backup: 'Backup', restore: 'Restore', verify: 'Verify', destage: 'Destage to tape', 'tape-restore': 'Restore from tape', 'tape-verify': 'Verify cartridge', gc: 'Garbage collection', maintenance: 'Maintenance', replicate: 'Replicate', pull: 'Pull from remote' };

  const state = {
    setup: null, // GET /setup
    session: null, // GET /session or POST /login
    gen: 0, // bumped on every route change; stale async work checks it
    timers: [],
    flash: null, // {kind, text} shown after the next navigation
    afterLogin: null, // where to go after signing in
    shell: null, // the layout's elements once built
    testAfterLoad: null, // source id whose edit page should run a connection test at once
  };

  // -------------------------------------------------------------------------------------------
  // DOM helpers

  function append(el, kids) {
    for (const k of kids) {
      if (k == null || k === false) continue;
      if (Array.isArray(k)) append(el, k);
      else if (k instanceof Node) el.appendChild(k);
      else el.appendChild(document.createTextNode(String(k)));
    }
    return el;
  }

  // h('button', {class: 'btn', onclick: fn, test: 'x'}, 'Label'): `test` becomes data-test,
  // `on*` become listeners, `text` sets textContent, true/false toggle boolean attributes.
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    return append(el, kids);
  }

  function setAttrs(el, attrs) {
    if (!attrs) return;
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k === 'class') el.setAttribute('class', v);
      else if (k === 'test') el.setAttribute('data-test', v);
      else if (k === 'text') el.textContent = v;
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'value' && 'value' in el && tagIsField(el)) el.value = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }

  function tagIsField(el) {
    return el.tagName === 'INPUT' || el.tagName === 'TEXTAREA' || el.tagName === 'SELECT';
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, ...kids) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v != null) el.setAttribute(k, String(v));
    return append(el, kids);
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
    return el;
  }

  function $(sel, root) {
    return (root || document).querySelector(sel);
  }

  // -------------------------------------------------------------------------------------------
  // Formatting

  function fmtBytes(n) {
    if (n == null || !isFinite(n)) return '—';
    n = Number(n);
    if (Math.abs(n) < 1024) return `${n} B`;
    const units = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];
    let v = n;
    let i = -1;
    do {
      v /= 1024;
      i++;
    } while (Math.abs(v) >= 1024 && i < units.length - 1);
    return `${v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${units[i]}`;
  }

  function fmtRate(bps) {
    if (bps == null || !isFinite(bps) || bps <= 0) return '—';
    return `${fmtBytes(Math.round(bps))}/s`;
  }

  function pad(n) {
    return String(n).padStart(2, '0');
  }

  function fmtDate(unix, withSeconds) {
    if (unix == null || unix === 0) return '—';
    const d = new Date(Number(unix) * 1000);
    const date = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
    const time = `${pad(d.getHours())}:${pad(d.getMinutes())}${withSeconds ? ':' + pad(d.getSeconds()) : ''}`;
    return `${date} ${time}`;
  }

  function fmtAgo(unix) {
    if (!unix) return '';
    const s = Math.round(Date.now() / 1000 - Number(unix));
    if (s < 0) return 'in ' + fmtDuration(-s);
    if (s < 60) return 'just now';
    return fmtDuration(s) + ' ago';
  }

  function dateCell(unix, withSeconds) {
    return h('time', { class: 'date', title: unix ? `${new Date(unix * 1000).toString()} (${fmtAgo(unix)})` : null }, fmtDate(unix, withSeconds));
  }

  function fmtDuration(sec) {
    if (sec == null || !isFinite(sec) || sec < 0) return '—';
    sec = Math.round(sec);
    if (sec < 60) return `${sec} s`;
    const m = Math.floor(sec / 60);
    if (m < 60) return `${m} min ${pad(sec % 60)} s`;
    const hrs = Math.floor(m / 60);
    if (hrs < 48) return `${hrs} h ${pad(m % 60)} min`;
    return `${Math.floor(hrs / 24)} d ${hrs % 24} h`;
  }

  function fmtPercent(p) {
    if (p == null || !isFinite(p)) return '—';
    const v = Math.max(0, Math.min(100, Number(p)));
    return `${v >= 99.95 || v === 0 ? v.toFixed(0) : v.toFixed(1)}%`;
  }

  function fmtFingerprint(fp) {
    if (!fp) return '—';
    const hex = String(fp).replace(/[^0-9a-fA-F]/g, '');
    if (hex.length !== 64) return String(fp);
    return hex.toUpperCase().match(/../g).join(':');
  }

  function taskDuration(t) {
    if (!t.started_unix) return null;
    const end = t.finished_unix || Date.now() / 1000;
    return end - t.started_unix;
  }

  // Garbage collection and maintenance count items (points, chunks, packs), not bytes.
  const COUNTED_KINDS = new Set(['gc', 'maintenance']);

  function taskAmount(t) {
    if (COUNTED_KINDS.has(t.kind)) return `${Number(t.bytes_done || 0).toLocaleString('en-US')} of ${Number(t.bytes_total || 0).toLocaleString('en-US')} items`;
    return `${fmtBytes(t.bytes_done)} of ${fmtBytes(t.bytes_total)}`;
  }

  function taskRate(t, rate) {
    return COUNTED_KINDS.has(t.kind) ? '—' : fmtRate(rate);
  }

  // The store's messages give times as unix seconds ("immutable until 1767225600 (unix
  // time"): add the date, in the browser's time zone.
  function withDates(text) {
    return String(text).replace(/until (\d{9,11}) \(unix time/g, (m, n) => `until ${fmtDate(Number(n))} (${n} unix time`);
  }

  function taskTitle(t) {
    return `${KIND_LABEL[t.kind] || t.kind} · ${t.subject || ''}`;
  }

  // -------------------------------------------------------------------------------------------
  // API

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body, opts) {
    opts = opts || {};
    const init = { method, credentials: 'same-origin', cache: 'no-store', headers: { Accept: 'application/json' } };
    if (method !== 'GET') {
      init.headers['Content-Type'] = 'application/json';
      if (state.session && state.session.csrf) init.headers['X-CSRF-Token'] = state.session.csrf;
      init.body = JSON.stringify(body === undefined ? {} : body);
    }
    let res;
    try {
      res = await fetch(API + path, init);
    } catch (e) {
      throw new ApiError(0, 'network', `Cannot reach the appliance (${e.message}). Check the network connection and that rackvault is running.`);
    }
    const text = res.status === 204 ? '' : await res.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (e) {
        if (res.ok) throw new ApiError(res.status, 'bad_response', `The appliance sent an unreadable answer to ${method} ${path}.`);
      }
    }
    if (res.ok) return data;

    let msg = data && typeof data.error === 'string' && data.error ? data.error : `${res.status} ${res.statusText || 'error'}`;
    const code = data && data.code;
    if (res.status === 429) {
      const ra = res.headers.get('Retry-After');
      if (ra) msg += ` Try again in ${fmtDuration(Number(ra))}.`;
    }
    // A stale CSRF token (the session was renewed in another tab): fetch the current one, retry once.
    if (res.status === 403 && method !== 'GET' && !opts.retried && /csrf/i.test(`${code || ''} ${msg}`) && state.session) {
      try {
        state.session = await api('GET', '/session', undefined, { noRedirect: true });
        return await api(method, path, body, Object.assign({}, opts, { retried: true }));
      } catch (e) {
        /* fall through to the original error */
      }
    }
    const err = new ApiError(res.status, code, msg);
    if (res.status === 401 && !opts.noRedirect) {
      const wasSignedIn = !!state.session;
      state.session = null;
      state.shell = null;
      state.afterLogin = location.hash && !/^#\/(login|setup)/.test(location.hash) ? location.hash : null;
      state.flash = { kind: 'error', text: wasSignedIn ? 'Your session has ended. Sign in again.' : msg };
      err.handled = true;
      go('#/login');
    }
    throw err;
  }

  // Upload a file as a streamed body (an update bundle): the answer or an ApiError, as `api`.
  // A file upload with progress: `onProgress(sent, total)` while the body goes out, then
  // `onProgress(total, total)` once the appliance has it all and is working on it.
  function apiUpload(path, file, contentType, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open('POST', API + path);
      xhr.setRequestHeader('Accept', 'application/json');
      xhr.setRequestHeader('Content-Type', contentType);
      if (state.session && state.session.csrf) xhr.setRequestHeader('X-CSRF-Token', state.session.csrf);
      xhr.withCredentials = true;
      if (onProgress) {
        xhr.upload.onprogress = (ev) => { if (ev.lengthComputable) onProgress(ev.loaded, ev.total); };
        xhr.upload.onload = () => onProgress(file.size, file.size);
      }
      xhr.onerror = () => reject(new ApiError(0, 'network', 'The upload did not reach the appliance (the connection failed); nothing was installed. Try again.'));
      xhr.onload = () => {
        let data = null;
        try { data = xhr.responseText ? JSON.parse(xhr.responseText) : null; } catch (e) { /* an unreadable answer */ }
        if (xhr.status >= 200 && xhr.status < 300) resolve(data);
        else reject(new ApiError(xhr.status, data && data.code, (data && data.error) || `${xhr.status} ${xhr.statusText || 'error'}`));
      };
      xhr.send(file);
    });
  }

  function can(role) {
    return !!state.session && (ROLE_RANK[state.session.role] || 0) >= ROLE_RANK[role];
  }

  // -------------------------------------------------------------------------------------------
  // What a failed task's error kind means for the operator (see web/API.md, "Error kinds").
  function errorKindNote(t) {
    const notes = {
      transient: 'A passing fault (network, busy device): a job retries it; running it again may succeed.',
      permanent: 'Running it again will fail the same way until the cause named above is fixed; jobs do not retry it.',
    };
    const text = t.state === 'failed' && notes[t.error_kind];
    return text ? h('p', { class: 'task-error-kind', id: 'task-error-kind', 'data-kind': t.error_kind }, text) : null;
  }

  // Banner (errors) and notices

  let banner = null;
  function bannerEl() {
    if (!banner) {
      banner = h('div', { id: 'banner', class: 'banner', role: 'alert', hidden: true });
    }
    return banner;
  }

  function showBanner(kind, text, source) {
    const b = bannerEl();
    clear(b);
    b.className = `banner banner-${kind}`;
    b.dataset.source = source || '';
    append(b, [
      h('span', { class: 'banner-icon', 'aria-hidden': 'true' }, kind === 'error' ? '!' : kind === 'warning' ? '!' : '✓'),
      h('span', { class: 'banner-text', id: 'banner-text' }, text),
      h('button', { class: 'banner-close', type: 'button', title: 'Dismiss', 'aria-label': 'Dismiss', onclick: hideBanner }, '×'),
    ]);
    b.hidden = false;
    if (kind === 'success') {
      const gen = state.gen;
      setTimeout(() => {
        if (state.gen === gen && b.dataset.source === (source || '') && b.classList.contains('banner-success')) hideBanner();
      }, 6000);
    }
  }

  function showError(err, source) {
    if (err && err.handled) return;
    const text = err instanceof ApiError || (err && err.message) ? err.message : String(err);
    showBanner('error', text, source);
  }

  function notice(text) {
    showBanner('success', text, 'notice');
  }

  function hideBanner() {
    const b = bannerEl();
    b.hidden = true;
    clear(b);
  }

  // -------------------------------------------------------------------------------------------
  // Routing

  function go(hash) {
    if (location.hash === hash) route();
    else location.hash = hash;
  }

  function clearTimers() {
    for (const t of state.timers) clearTimeout(t);
    state.timers = [];
  }

  // The per-render context: `alive()` is false once the user navigated away.
  function makeCtx(content) {
    const gen = state.gen;
    const ctx = {
      content,
      alive: () => state.gen === gen,
      later(fn, ms) {
        if (!ctx.alive()) return;
        const t = setTimeout(() => {
          state.timers = state.timers.filter((x) => x !== t);
          if (ctx.alive()) fn();
        }, ms);
        state.timers.push(t);
      },
      // Errors while polling: show them, and clear them once polling works again.
      pollError(err) {
        if (ctx.alive()) showError(err, 'poll');
      },
      pollOk() {
        const b = bannerEl();
        if (!b.hidden && b.dataset.source === 'poll') hideBanner();
      },
    };
    return ctx;
  }

  const ROUTES = [
    { re: /^#\/dashboard$/, page: pageDashboard, title: 'Dashboard', nav: 'dashboard' },
    { re: /^#\/sources$/, page: pageSources, title: 'Sources', nav: 'sources' },
    { re: /^#\/sources\/new$/, page: pageSourceForm, title: 'Add source', nav: 'sources', role: 'admin' },
    { re: /^#\/sources\/([^/]+)$/, page: pageSourceForm, title: 'Source', nav: 'sources' },
    { re: /^#\/jobs$/, page: pageJobs, title: 'Jobs', nav: 'jobs' },
    { re: /^#\/jobs\/new$/, page: pageJobForm, title: 'Add job', nav: 'jobs', role: 'admin' },
    { re: /^#\/jobs\/([^/]+)$/, page: pageJobForm, title: 'Job', nav: 'jobs' },
    { re: /^#\/points$/, page: pagePoints, title: 'Restore points', nav: 'points' },
    { re: /^#\/points\/([^/]+)$/, page: pagePoint, title: 'Restore point', nav: 'points' },
    { re: /^#\/tasks$/, page: pageTasks, title: 'Tasks', nav: 'tasks' },
    { re: /^#\/tasks\/(\d+)$/, page: pageTask, title: 'Task', nav: 'tasks' },
    { re: /^#\/tape$/, page: pageTape, title: 'Tape library', nav: 'tape' },
    { re: /^#\/remotes$/, page: pageRemotes, title: 'Remotes', nav: 'remotes' },
    { re: /^#\/users$/, page: pageUsers, title: 'Users', nav: 'users', role: 'admin' },
    { re: /^#\/tokens$/, page: pageTokens, title: 'API tokens', nav: 'tokens', role: 'admin' },
    { re: /^#\/audit$/, page: pageAudit, title: 'Audit log', nav: 'audit' },
    { re: /^#\/settings$/, page: pageSettings, title: 'Settings', nav: 'settings' },
  ];

  const NAV = [
    { id: 'dashboard', label: 'Dashboard', hash: '#/dashboard' },
    { id: 'tasks', label: 'Tasks', hash: '#/tasks' },
    { id: 'points', label: 'Restore points', hash: '#/points' },
    { group: 'Configuration' },
    { id: 'sources', label: 'Sources', hash: '#/sources' },
    { id: 'jobs', label: 'Jobs', hash: '#/jobs' },
    { id: 'tape', label: 'Tape library', hash: '#/tape' },
    { id: 'remotes', label: 'Remotes', hash: '#/remotes' },
    { group: 'Administration' },
    { id: 'users', label: 'Users', hash: '#/users', role: 'admin' },
    { id: 'tokens', label: 'API tokens', hash: '#/tokens', role: 'admin' },
    { id: 'audit', label: 'Audit log', hash: '#/audit' },
    { id: 'settings', label: 'Settings', hash: '#/settings' },
  ];

  function route() {
    clearTimers();
    state.gen++;
    const hash = location.hash || '';
    if (state.setup && state.setup.needs_setup) {
      if (hash !== '#/setup') return replaceHash('#/setup');
      return renderStandalone(pageSetup);
    }
    if (!state.session) {
      if (hash !== '#/login') {
        if (hash && hash !== '#/setup' && hash !== '#/') state.afterLogin = hash;
        return replaceHash('#/login');
      }
      return renderStandalone(pageLogin);
    }
    if (hash === '' || hash === '#/' || hash === '#/login' || hash === '#/setup') return replaceHash('#/dashboard');
    for (const r of ROUTES) {
      const m = hash.match(r.re);
      if (!m) continue;
      renderInShell(r, m.slice(1).map(decodeURIComponent));
      return;
    }
    renderInShell({ title: 'Not found', nav: null, page: pageNotFound }, []);
  }

  function replaceHash(hash) {
    // location.replace keeps the bad hash out of the history; hashchange calls route again.
    location.replace(location.pathname + location.search + hash);
  }

  function consumeFlash() {
    const f = state.flash;
    state.flash = null;
    if (f) showBanner(f.kind, f.text, 'flash');
    else hideBanner();
  }

  function renderStandalone(page) {
    state.shell = null;
    const app = clear($('#app'));
    app.className = 'standalone';
    const content = h('main', { class: 'auth-main', id: 'content' });
    append(app, [
      h('div', { class: 'auth-wrap' },
        h('div', { class: 'auth-brand' }, brandMark(), h('span', { class: 'brand-name' }, 'rackvault')),
        bannerEl(),
        content,
        h('p', { class: 'auth-foot' }, versionText())),
    ]);
    consumeFlash();
    page(makeCtx(content));
  }

  function versionText() {
    const v = state.setup && state.setup.appliance && state.setup.appliance.version;
    return v ? `rackvault ${v}` : 'rackvault';
  }

  function brandMark() {
    return s('svg', { class: 'brand-mark', viewBox: '0 0 24 24', width: 24, height: 24, 'aria-hidden': 'true' },
      s('rect', { x: 3, y: 3, width: 18, height: 5, rx: 1 }),
      s('rect', { x: 3, y: 10, width: 18, height: 5, rx: 1 }),
      s('rect', { x: 3, y: 17, width: 18, height: 4, rx: 1 }),
      s('circle', { cx: 17.5, cy: 5.5, r: 1, class: 'led' }),
      s('circle', { cx: 17.5, cy: 12.5, r: 1, class: 'led' }));
  }

  function buildShell() {
    const app = clear($('#app'));
    app.className = 'shell';
    const nav = h('nav', { class: 'nav', 'aria-label': 'Main' });
    for (const item of NAV) {
      if (item.group) {
        nav.appendChild(h('div', { class: 'nav-group' }, item.group));
        continue;
      }
      if (item.role && !can(item.role)) continue;
      nav.appendChild(h('a', { class: 'nav-link', href: item.hash, id: `nav-${item.id}`, 'data-nav': item.id }, item.label));
    }
    const title = h('h1', { id: 'page-title', class: 'page-title' });
    const user = h('span', { id: 'current-user', class: 'user' },
      h('span', { class: 'user-name' }, state.session.user),
      h('span', { class: `role role-${state.session.role}`, id: 'current-role' }, ROLE_LABEL[state.session.role] || state.session.role));
    const logout = h('button', { id: 'logout', class: 'btn btn-quiet', type: 'button', onclick: doLogout }, 'Sign out');
    const content = h('main', { id: 'content', class: 'content' });
    append(app, [
      h('aside', { class: 'sidebar' },
        h('a', { class: 'brand', href: '#/dashboard' }, brandMark(), h('span', { class: 'brand-name' }, 'rackvault')),
        nav,
        h('div', { class: 'sidebar-foot' }, versionText())),
      h('div', { class: 'main' },
        h('header', { class: 'topbar' }, title, h('div', { class: 'topbar-right' }, user, logout)),
        bannerEl(),
        content),
    ]);
    state.shell = { title, content, nav };
  }

  function renderInShell(r, params) {
    if (!state.shell || !document.body.contains(state.shell.content)) buildShell();
    const { title, content, nav } = state.shell;
    title.textContent = r.title;
    document.title = `${r.title} · rackvault`;
    for (const a of nav.querySelectorAll('.nav-link')) a.classList.toggle('active', a.dataset.nav === r.nav);
    clear(content);
    consumeFlash();
    const ctx = makeCtx(content);
    ctx.setTitle = (t) => {
      if (ctx.alive()) {
        title.textContent = t;
        document.title = `${t} · rackvault`;
      }
    };
    if (r.role && !can(r.role)) {
      content.appendChild(emptyState('Not allowed', `This page needs the ${ROLE_LABEL[r.role]} role; you are signed in as ${ROLE_LABEL[state.session.role] || state.session.role}.`));
      return;
    }
    Promise.resolve(r.page(ctx, ...params)).catch((e) => {
      if (ctx.alive()) showError(e);
    });
  }

  async function doLogout() {
    try {
      await api('POST', '/logout', {}, { noRedirect: true });
    } catch (e) {
      /* the session may already be gone; sign out locally anyway */
    }
    state.session = null;
    state.shell = null;
    state.flash = { kind: 'success', text: 'Signed out.' };
    go('#/login');
  }

  // -------------------------------------------------------------------------------------------
  // Shared building blocks

  function emptyState(title, text, action) {
    return h('div', { class: 'empty', test: 'empty' }, h('p', { class: 'empty-title' }, title), text ? h('p', { class: 'empty-text' }, text) : null, action || null);
  }

  function card(title, opts, ...kids) {
    opts = opts || {};
    return h('section', { class: `card ${opts.class || ''}`, id: opts.id, test: opts.test },
      title || opts.actions ? h('header', { class: 'card-head' }, h('h2', null, title || ''), opts.actions ? h('div', { class: 'card-actions' }, opts.actions) : null) : null,
      h('div', { class: 'card-body' }, kids));
  }

  function button(label, attrs, onclick) {
    return h('button', Object.assign({ type: 'button', class: 'btn' }, attrs || {}, { onclick }), label);
  }

  function linkButton(label, hash, attrs) {
    return h('a', Object.assign({ class: 'btn', href: hash }, attrs || {}), label);
  }

  // Run an async action from a button: disable it while running, show errors in the banner.
  async function busy(btn, fn) {
    if (btn) btn.disabled = true;
    try {
      return await fn();
    } catch (e) {
      showError(e);
      return undefined;
    } finally {
      if (btn) btn.disabled = false;
    }
  }

  function table(columns, rows, opts) {
    opts = opts || {};
    const thead = h('thead', null, h('tr', null, columns.map((c) => h('th', { class: c.num ? 'num' : c.class || null, scope: 'col' }, c.label))));
    const tbody = h('tbody');
    for (const row of rows) {
      const tr = h('tr', opts.rowAttrs ? opts.rowAttrs(row) : null);
      for (const c of columns) {
        const v = c.cell(row);
        tr.appendChild(h('td', { class: c.num ? 'num' : c.class || null, 'data-col': c.key || null }, v));
      }
      tbody.appendChild(tr);
    }
    return h('div', { class: 'table-wrap' }, h('table', { class: 'table', id: opts.id, test: opts.test }, thead, tbody));
  }

  function stateBadge(st, attrs) {
    return h('span', Object.assign({ class: `badge state-${st}` }, attrs || {}), st);
  }

  function progressBar(percent, st, attrs) {
    const p = Math.max(0, Math.min(100, Number(percent) || 0));
    const fill = h('div', { class: 'progress-fill' });
    fill.style.width = `${p}%`; // CSSOM, allowed by the CSP
    return h('div', Object.assign({
      class: `progress state-${st || 'running'}${p >= 55 ? ' over-half' : ''}`,
      role: 'progressbar',
      'aria-valuemin': 0,
      'aria-valuemax': 100,
      'aria-valuenow': p.toFixed(1),
      'data-percent': p.toFixed(1),
    }, attrs || {}), fill, h('span', { class: 'progress-label' }, fmtPercent(p)));
  }

  function field(label, input, help) {
    return h('div', { class: 'field' }, h('label', { for: input.id }, label), input, help ? h('p', { class: 'help' }, help) : null);
  }

  function input(id, attrs) {
    return h('input', Object.assign({ id, name: id, class: 'input' }, attrs || {}));
  }

  function select(id, options, value, attrs) {
    const el = h('select', Object.assign({ id, name: id, class: 'input' }, attrs || {}));
    for (const o of options) {
      const opt = h('option', { value: o.value }, o.label);
      if (String(o.value) === String(value)) opt.selected = true;
      el.appendChild(opt);
    }
    return el;
  }

  function roleSelect(id, value, roles) {
    const el = select(id, (roles || ['auditor', 'operator', 'admin']).map((r) => ({ value: r, label: ROLE_LABEL[r] })), value || 'operator');
    return el;
  }

  // The role field with a line saying what the chosen role may do.
  function roleField(label, sel) {
    const help = h('p', { class: 'help', id: `${sel.id}-help` }, ROLE_HELP[sel.value]);
    sel.addEventListener('change', () => {
      help.textContent = ROLE_HELP[sel.value];
    });
    return h('div', { class: 'field' }, h('label', { for: sel.id }, label), sel, help);
  }

  // A generic, readable rendering of JSON the UI has no specific view for (probe reports, task
  // results): objects as key/value lists, arrays of objects as tables, sizes in bytes humanised.
  function renderValue(v, key, depth) {
    depth = depth || 0;
    if (v == null) return h('span', { class: 'muted' }, '—');
    if (typeof v === 'boolean') return v ? 'yes' : 'no';
    if (typeof v === 'number') {
      if (key && /(size|bytes)/i.test(key) && !/(per|count)/i.test(key)) return h('span', { class: 'num', title: `${v} bytes` }, fmtBytes(v));
      if (key && /_unix$/.test(key)) return fmtDate(v, true);
      if (key && /(_s|seconds)$/.test(key)) return fmtDuration(v);
      return String(Number.isInteger(v) ? v : v.toFixed(2));
    }
    if (typeof v === 'string') return v;
    if (Array.isArray(v)) {
      if (v.length === 0) return h('span', { class: 'muted' }, 'none');
      if (v.every((x) => x && typeof x === 'object' && !Array.isArray(x)) && depth < 3) {
        const keys = [];
        for (const row of v) for (const k of Object.keys(row)) if (!keys.includes(k)) keys.push(k);
        return table(keys.map((k) => ({
          label: humanKey(k), key: k,
          num: v.some((r) => typeof r[k] === 'number' && !/_unix$/.test(k)),
          cell: (r) => renderValue(r[k], k, depth + 1),
        })), v);
      }
      return v.map((x) => (typeof x === 'object' ? JSON.stringify(x) : String(x))).join(', ');
    }
    if (depth >= 3) return h('code', null, JSON.stringify(v));
    const dl = h('dl', { class: 'kv' });
    for (const [k, x] of Object.entries(v)) {
      append(dl, [h('dt', null, humanKey(k)), h('dd', null, renderValue(x, k, depth + 1))]);
    }
    return dl;
  }

  function humanKey(k) {
    const s = String(k).replace(/_(unix|s)$/, '').replace(/_bps$/, ' rate').replace(/_/g, ' ');
    return s.charAt(0).toUpperCase() + s.slice(1);
  }

  // -------------------------------------------------------------------------------------------
  // First-run setup and sign-in

  function fingerprintBlock(fp) {
    return h('div', { class: 'fingerprint' },
      h('div', { class: 'fingerprint-label' }, 'TLS certificate fingerprint (SHA-256)'),
      h('code', { id: 'setup-fingerprint', test: 'fingerprint' }, fmtFingerprint(fp)),
      h('p', { class: 'help' }, 'Compare it with the fingerprint your browser shows for this connection (and with the appliance console) before you enter a password.'));
  }

  function pageSetup(ctx) {
    const fp = state.setup.appliance && state.setup.appliance.fingerprint_sha256;
    const code = input('setup-code', { autocomplete: 'one-time-code', required: true, placeholder: 'XXXX-XXXX-XXXX-XXXX', maxlength: 40, spellcheck: 'false' });
    const user = input('setup-user', { autocomplete: 'username', required: true, value: 'admin', maxlength: 64 });
    const pw = input('setup-password', { type: 'password', autocomplete: 'new-password', required: true, minlength: 10 });
    const pw2 = input('setup-confirm', { type: 'password', autocomplete: 'new-password', required: true, minlength: 10 });
    const submit = h('button', { id: 'setup-submit', class: 'btn btn-primary btn-block', type: 'submit' }, 'Create administrator');
    const form = h('form', { id: 'setup-form', class: 'auth-card', novalidate: true },
      h('h1', null, 'Welcome to rackvault'),
      h('p', { class: 'lead' }, 'This appliance has no users yet. Create the first administrator account; you can add more users afterwards.'),
      fingerprintBlock(fp),
      field('Setup code', code, 'The one-time code the appliance printed on its console when it started (also in the file setup-code of its data directory).'),
      field('Administrator user name', user),
      field('Password', pw, 'At least 10 characters.'),
      field('Confirm password', pw2),
      submit);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const name = user.value.trim();
      if (!code.value.trim()) return showBanner('error', 'Enter the setup code the appliance printed on its console.');
      if (!name) return showBanner('error', 'Enter a user name.');
      if (pw.value.length < 10) return showBanner('error', 'The password must have at least 10 characters.');
      if (pw.value !== pw2.value) return showBanner('error', 'The two passwords do not match.');
      await busy(submit, async () => {
        await api('POST', '/setup', { user: name, password: pw.value, setup_code: code.value.trim() }, { noRedirect: true });
        state.setup.needs_setup = false;
        state.flash = { kind: 'success', text: `Administrator ${name} created. Sign in to continue.` };
        state.loginUser = name;
        go('#/login');
      });
    });
    ctx.content.appendChild(form);
    code.focus();
  }

  function pageLogin(ctx) {
    const user = input('login-user', { autocomplete: 'username', required: true, value: state.loginUser || '' });
    const pw = input('login-password', { type: 'password', autocomplete: 'current-password', required: true });
    const submit = h('button', { id: 'login-submit', class: 'btn btn-primary btn-block', type: 'submit' }, 'Sign in');
    const fp = state.setup && state.setup.appliance && state.setup.appliance.fingerprint_sha256;
    const form = h('form', { id: 'login-form', class: 'auth-card', novalidate: true },
      h('h1', null, 'Sign in'),
      field('User name', user),
      field('Password', pw),
      submit,
      fp ? h('details', { class: 'fp-details' }, h('summary', null, 'Certificate fingerprint'), h('code', { id: 'login-fingerprint' }, fmtFingerprint(fp))) : null);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (!user.value.trim() || !pw.value) return showBanner('error', 'Enter your user name and password.');
      await busy(submit, async () => {
        const sess = await api('POST', '/login', { user: user.value.trim(), password: pw.value }, { noRedirect: true });
        state.session = sess;
        state.loginUser = null;
        const next = state.afterLogin;
        state.afterLogin = null;
        go(next && next !== '#/login' ? next : '#/dashboard');
      });
    });
    ctx.content.appendChild(form);
    (user.value ? pw : user).focus();
  }

  // -------------------------------------------------------------------------------------------
  // Dashboard

  async function pageDashboard(ctx) {
    const root = h('div', { id: 'dashboard', class: 'dashboard' });
    ctx.content.appendChild(root);
    const load = async () => {
      let d;
      try {
        d = await api('GET', '/dashboard');
      } catch (e) {
        ctx.pollError(e);
        ctx.later(load, 5000);
        return;
      }
      if (!ctx.alive()) return;
      ctx.pollOk();
      renderDashboard(root, d);
      const active = (d.tasks || []).some((t) => ACTIVE_STATES.has(t.state));
      ctx.later(load, active ? 1000 : 5000);
    };
    await load();
  }

  function renderDashboard(root, d) {
    const usage = d.usage || {};
    const tasks = d.tasks || [];
    const running = tasks.filter((t) => ACTIVE_STATES.has(t.state));
    const last = d.last_results || [];
    const alerts = d.alerts || [];
    clear(root);

    const stats = h('div', { class: 'stats' },
      stat('Stored on disk', fmtBytes(usage.bytes_stored), 'stat-stored', usage.bytes_pending_compression
        ? `after deduplication; ${fmtBytes(usage.bytes_pending_compression)} of it is compressed by the nightly maintenance`
        : 'after compression and deduplication'),
      stat('Protected data', fmtBytes(usage.bytes_logical), 'stat-logical', 'the restore points’ full size'),
      stat('Space saving', usage.dedup_ratio ? `${Number(usage.dedup_ratio).toFixed(2)}×` : '—', 'stat-dedup', 'logical ÷ stored'),
      stat('Restore points', usage.restore_points != null ? String(usage.restore_points) : '—', 'stat-points'));

    let runningBody;
    if (running.length) {
      runningBody = h('div', { class: 'task-list' }, running.map(taskRow));
    } else if (!usage.restore_points && !last.length) {
      runningBody = emptyState('No backups yet — add a source',
        'A source is a disk image, an NFS share or an iSCSI LUN. Add one, then back it up now or on a schedule with a job.',
        can('admin') ? linkButton('Add a source', '#/sources/new', { class: 'btn btn-primary', id: 'dash-add-source' }) : linkButton('View sources', '#/sources'));
    } else {
      runningBody = h('p', { class: 'muted quiet-state' }, 'Nothing is running. ', h('a', { href: '#/jobs' }, 'Jobs'), ' start backups on their schedule; ', h('a', { href: '#/sources' }, 'sources'), ' can be backed up now.');
    }

    const lastBody = last.length
      ? table([
        { label: 'Task', cell: (t) => h('a', { href: `#/tasks/${t.id}` }, taskTitle(t)) },
        { label: 'Result', cell: (t) => stateBadge(t.state) },
        { label: 'Finished', cell: (t) => dateCell(t.finished_unix || t.created_unix) },
        { label: 'Duration', num: true, cell: (t) => fmtDuration(taskDuration(t)) },
        { label: 'Data', num: true, cell: (t) => (COUNTED_KINDS.has(t.kind) ? '—' : fmtBytes(t.bytes_total || t.bytes_done)) },
      ], last, { id: 'last-results' })
      : h('p', { class: 'muted quiet-state' }, 'No finished tasks yet.');

    const alertBody = alerts.length
      ? h('ul', { class: 'alerts', id: 'alerts' }, alerts.map((a) => h('li', { class: `alert alert-${a.level}` },
        h('span', { class: `badge level-${a.level}` }, a.level), h('span', { class: 'alert-msg' }, a.message), dateCell(a.unix))))
      : h('p', { class: 'muted quiet-state', id: 'alerts-empty' }, 'No alerts. Everything looks fine.');

    append(root, [
      stats,
      h('div', { class: 'grid-2' },
        card(`Running tasks${running.length ? ` (${running.length})` : ''}`, { id: 'dash-running', actions: linkButton('All tasks', '#/tasks', { class: 'btn btn-quiet' }) }, runningBody),
        card('Alerts', { id: 'dash-alerts' }, alertBody)),
      h('div', { class: 'grid-2' },
        capacityCard(d.capacity),
        card('Store usage over time', { id: 'dash-usage' }, usageChart(usage.history || []))),
      card('Last results', { id: 'dash-last' }, lastBody),
    ]);
  }

  // The staging tier's filesystem: used of total on a bar with the low and high watermarks,
  // free space, deduplication and the forecast.
  function capacityCard(c) {
    if (!c) {
      return card('Capacity', { id: 'dash-capacity' }, h('p', { class: 'muted quiet-state' }, 'The staging tier’s filesystem cannot be read right now.'));
    }
    const used = Math.max(0, Math.min(100, Number(c.used_pct) || 0));
    const fill = h('div', { class: 'cap-fill' });
    fill.style.width = `${used}%`; // CSSOM, allowed by the CSP
    const mark = (pct, cls, label) => {
      const m = h('div', { class: `cap-mark ${cls}`, title: label });
      m.style.left = `${Math.max(0, Math.min(100, pct))}%`;
      return m;
    };
    const level = c.above_high ? 'cap-high' : used >= c.low_pct ? 'cap-mid' : 'cap-ok';
    const bar = h('div', {
      class: `cap-bar ${level}`, id: 'cap-bar', test: 'cap-bar', role: 'meter',
      'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': used.toFixed(1),
      'aria-label': `Staging tier ${fmtPercent(used)} full; low watermark ${c.low_pct}%, high watermark ${c.high_pct}%`,
    }, fill, mark(c.low_pct, 'cap-mark-low', `Low watermark ${c.low_pct}%`), mark(c.high_pct, 'cap-mark-high', `High watermark ${c.high_pct}%`));
    const legend = h('div', { class: 'legend cap-legend', id: 'cap-legend' },
      h('span', { class: 'legend-item' }, h('span', { class: `swatch cap-swatch-used ${level}` }), `used ${fmtPercent(used)}`),
      h('span', { class: 'legend-item' }, h('span', { class: 'swatch cap-swatch-low' }), `low watermark ${c.low_pct}%`),
      h('span', { class: 'legend-item' }, h('span', { class: 'swatch cap-swatch-high' }), `high watermark ${c.high_pct}%`));
    return card('Capacity', { id: 'dash-capacity', class: c.above_high ? 'card-alert' : '' },
      h('div', { class: 'cap-head' },
        h('span', { class: 'cap-used', id: 'cap-used' }, `${fmtBytes(c.used_bytes)} of ${fmtBytes(c.total_bytes)} used`),
        h('span', { class: `cap-pct ${level}` }, fmtPercent(used))),
      bar,
      legend,
      c.above_high
        ? h('p', { class: 'cap-warning', id: 'cap-warning', role: 'alert' }, `Above the high watermark (${c.high_pct}%): the maintenance prunes what retention allows and removes from disk what is safely on tape, down to ${c.low_pct}%. A backup that nothing can make room for is refused.`)
        : null,
      h('dl', { class: 'kv cap-facts' },
        fact('Free', fmtBytes(c.free_bytes), 'cap-free'),
        fact('Store', `${fmtBytes(c.bytes_stored)}${c.dedup_ratio ? ` · ${Number(c.dedup_ratio).toFixed(2)}× space saving` : ''}`, 'cap-store'),
        fact('Forecast', capacityForecast(c), 'cap-forecast')),
      c.above_high ? null : h('p', { class: 'help cap-help' }, `Above ${c.high_pct}% the appliance prunes what retention allows and removes from disk what is safely on tape, down to ${c.low_pct}%; the nightly maintenance collects the garbage.`));
  }

  function capacityForecast(c) {
    const g = c.growth_bytes_per_day;
    if (g == null) return h('span', { class: 'muted' }, 'no forecast yet (it needs an hour of usage history)');
    if (g <= 0 || c.days_until_full == null) return `not growing (${fmtBytes(Math.round(g))}/day)`;
    const d = c.days_until_full;
    const when = d < 1 ? 'less than a day until full' : d > 3650 ? 'more than ten years until full' : `about ${Math.round(d)} day${Math.round(d) === 1 ? '' : 's'} until full`;
    return `${when} (growing ${fmtBytes(Math.round(g))}/day)`;
  }

  function stat(label, value, id, help) {
    return h('div', { class: 'stat', id }, h('div', { class: 'stat-label' }, label), h('div', { class: 'stat-value' }, value), help ? h('div', { class: 'stat-help' }, help) : null);
  }

  // A running task: title, state, progress, throughput and ETA.
  function taskRow(t) {
    return h('a', { class: 'task-row', href: `#/tasks/${t.id}`, 'data-task-id': t.id, test: 'task-row' },
      h('div', { class: 'task-row-head' },
        h('span', { class: 'task-row-title' }, taskTitle(t)),
        stateBadge(t.state, { test: 'task-state' })),
      progressBar(t.percent, t.state, { test: 'task-progress' }),
      h('div', { class: 'task-row-meta' },
        h('span', null, t.phase || ''),
        h('span', { class: 'num' }, taskAmount(t)),
        h('span', { class: 'num', test: 'task-throughput' }, taskRate(t, t.throughput_bps)),
        h('span', { class: 'num', test: 'task-eta' }, t.eta_s != null && t.state === 'running' ? `${fmtDuration(t.eta_s)} left` : '')));
  }

  // Stored vs logical bytes over time, as two lines on a small SVG chart.
  function usageChart(history) {
    const pts = history.filter((p) => p && p.unix != null).slice().sort((a, b) => a.unix - b.unix);
    if (pts.length < 2) {
      return h('p', { class: 'muted quiet-state', id: 'usage-chart-empty' }, pts.length ? 'The chart appears after the next backup.' : 'No usage history yet.');
    }
    const W = 440;
    const H = 180;
    const L = 60;
    const R = 12;
    const T = 12;
    const B = 28;
    const t0 = pts[0].unix;
    const t1 = pts[pts.length - 1].unix;
    const maxY = Math.max(1, ...pts.map((p) => Math.max(p.bytes_logical || 0, p.bytes_stored || 0)));
    const nice = niceMax(maxY);
    const x = (u) => L + ((u - t0) / Math.max(1, t1 - t0)) * (W - L - R);
    const y = (v) => T + (1 - v / nice) * (H - T - B);
    const line = (key) => pts.map((p, i) => `${i ? 'L' : 'M'}${x(p.unix).toFixed(1)},${y(p[key] || 0).toFixed(1)}`).join(' ');
    const area = (key) => `${line(key)} L${x(t1).toFixed(1)},${y(0)} L${x(t0).toFixed(1)},${y(0)} Z`;
    const svg = s('svg', { class: 'chart', id: 'usage-chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'Stored and logical bytes over time' });
    for (let i = 0; i <= 4; i++) {
      const v = (nice * i) / 4;
      append(svg, [
        s('line', { x1: L, x2: W - R, y1: y(v), y2: y(v), class: 'grid' }),
        s('text', { x: L - 6, y: y(v) + 4, class: 'axis', 'text-anchor': 'end' }, fmtBytes(v)),
      ]);
    }
    append(svg, [
      s('path', { d: area('bytes_logical'), class: 'area-logical' }),
      s('path', { d: line('bytes_logical'), class: 'line-logical' }),
      s('path', { d: area('bytes_stored'), class: 'area-stored' }),
      s('path', { d: line('bytes_stored'), class: 'line-stored' }),
      s('text', { x: L, y: H - 8, class: 'axis', 'text-anchor': 'start' }, fmtDate(t0)),
      s('text', { x: W - R, y: H - 8, class: 'axis', 'text-anchor': 'end' }, fmtDate(t1)),
    ]);
    const lastP = pts[pts.length - 1];
    return h('div', { class: 'chart-wrap' }, svg,
      h('div', { class: 'legend' },
        h('span', { class: 'legend-item' }, h('span', { class: 'swatch swatch-logical' }), `Protected data (${fmtBytes(lastP.bytes_logical)})`),
        h('span', { class: 'legend-item' }, h('span', { class: 'swatch swatch-stored' }), `Stored (${fmtBytes(lastP.bytes_stored)})`)));
  }

  function niceMax(v) {
    const exp = Math.pow(1024, Math.floor(Math.log(v) / Math.log(1024)));
    const m = v / exp;
    const steps = [1, 2, 4, 8, 10, 16, 20, 40, 50, 80, 100, 200, 400, 500, 800, 1000, 1024];
    for (const st of steps) if (m <= st) return st * exp;
    return v;
  }

  // -------------------------------------------------------------------------------------------
  // Tasks

  async function pageTasks(ctx) {
    const root = h('div', { id: 'tasks' });
    ctx.content.appendChild(root);
    const load = async () => {
      let list;
      try {
        list = await api('GET', '/tasks');
      } catch (e) {
        ctx.pollError(e);
        ctx.later(load, 5000);
        return;
      }
      if (!ctx.alive()) return;
      ctx.pollOk();
      clear(root);
      if (!list.length) {
        root.appendChild(card(null, {}, emptyState('No tasks yet', 'Backups, restores and verifications appear here while they run and after they finish.', linkButton('Go to sources', '#/sources'))));
      } else {
        root.appendChild(card(null, {}, table([
          { label: 'ID', num: true, cell: (t) => h('a', { href: `#/tasks/${t.id}` }, `#${t.id}`) },
          { label: 'Task', cell: (t) => h('a', { href: `#/tasks/${t.id}` }, taskTitle(t)) },
          { label: 'State', cell: (t) => stateBadge(t.state, { test: 'task-state' }) },
          { label: 'Progress', class: 'col-progress', cell: (t) => progressBar(t.percent, t.state, { test: 'task-progress' }) },
          { label: 'Throughput', num: true, cell: (t) => (ACTIVE_STATES.has(t.state) ? taskRate(t, t.throughput_bps) : '') },
          { label: 'Started', cell: (t) => dateCell(t.started_unix || t.created_unix) },
          { label: 'Duration', num: true, cell: (t) => fmtDuration(taskDuration(t)) },
          { label: 'User', cell: (t) => t.user || '' },
        ], list, { id: 'tasks-table', rowAttrs: (t) => ({ 'data-task-id': t.id }) })));
      }
      ctx.later(load, list.some((t) => ACTIVE_STATES.has(t.state)) ? 1000 : 5000);
    };
    await load();
  }

  async function pageTask(ctx, id) {
    const head = h('div', { id: 'task-summary' });
    const logPre = h('pre', { id: 'task-log', class: 'log', test: 'task-log', tabindex: 0 });
    const follow = h('input', { type: 'checkbox', id: 'log-follow', checked: true });
    follow.checked = true;
    logPre.addEventListener('scroll', () => {
      const atEnd = logPre.scrollTop + logPre.clientHeight >= logPre.scrollHeight - 24;
      follow.checked = atEnd;
    });
    append(ctx.content, [
      head,
      card('Log', {
        id: 'task-log-card',
        actions: h('label', { class: 'check', for: 'log-follow' }, follow, ' Follow'),
      }, logPre),
    ]);
    let next = 0;
    let lines = 0;
    let finished = false;
    let drained = false;

    const readLog = async () => {
      // Read until the server has no more lines, so a finished task's log is complete.
      for (let i = 0; i < 20; i++) {
        const r = await api('GET', `/tasks/${encodeURIComponent(id)}/log?from=${next}`);
        if (!ctx.alive()) return;
        const got = (r && r.lines) || [];
        if (got.length) {
          const frag = document.createDocumentFragment();
          for (const l of got) frag.appendChild(h('span', { class: `log-line ${logClass(l)}` }, l + '\n'));
          logPre.appendChild(frag);
          lines += got.length;
          if (follow.checked) logPre.scrollTop = logPre.scrollHeight;
        }
        const prev = next;
        next = r && r.next != null ? r.next : next + got.length;
        if (!got.length || next === prev) break;
      }
      logPre.dataset.lines = String(lines);
    };

    const load = async () => {
      let t;
      try {
        t = await api('GET', `/tasks/${encodeURIComponent(id)}`);
        if (!ctx.alive()) return;
        renderTaskSummary(ctx, head, t);
        finished = !ACTIVE_STATES.has(t.state);
        await readLog();
        if (finished) drained = true;
        ctx.pollOk();
      } catch (e) {
        if (e.status === 404) {
          clear(head).appendChild(emptyState(`Task #${id} not found`, 'It may have been removed from the task history.', linkButton('All tasks', '#/tasks')));
          return;
        }
        ctx.pollError(e);
        ctx.later(load, 3000);
        return;
      }
      if (!ctx.alive()) return;
      if (!lines && drained) logPre.appendChild(h('span', { class: 'muted' }, 'This task wrote no log lines.'));
      logPre.dataset.complete = drained ? 'true' : 'false';
      if (!drained) ctx.later(load, 1000);
    };
    await load();
  }

  function logClass(line) {
    if (/\b(error|failed|fatal)\b/i.test(line)) return 'log-error';
    if (/\bwarn(ing)?\b/i.test(line)) return 'log-warn';
    return '';
  }

  function renderTaskSummary(ctx, head, t) {
    ctx.setTitle(`Task #${t.id}`);
    clear(head);
    const active = ACTIVE_STATES.has(t.state);
    const actions = [];
    if (active && can('operator')) {
      actions.push(button('Cancel task', { id: 'task-cancel', class: 'btn btn-danger' }, async (ev) => {
        if (!window.confirm(`Cancel ${taskTitle(t)}? Work done so far is kept only where it is complete and consistent.`)) return;
        await busy(ev.currentTarget, async () => {
          await api('POST', `/tasks/${t.id}/cancel`, {});
          notice(`Cancellation of task #${t.id} requested.`);
        });
      }));
    }
    if (t.kind === 'backup' && t.state === 'succeeded') actions.push(linkButton('Restore points', '#/points', { id: 'task-points' }));
    const facts = h('dl', { class: 'facts' },
      fact('Kind', KIND_LABEL[t.kind] || t.kind),
      fact('Subject', t.subject),
      fact('Phase', t.phase || '—'),
      fact('Progress', taskAmount(t), 'task-bytes'),
      fact('Throughput', COUNTED_KINDS.has(t.kind) ? '—' : active ? fmtRate(t.throughput_bps) : t.started_unix && t.finished_unix && t.bytes_done ? `${fmtRate(t.bytes_done / Math.max(1, t.finished_unix - t.started_unix))} average` : '—', 'task-throughput'),
      fact('Time left', active && t.eta_s != null ? fmtDuration(t.eta_s) : '—', 'task-eta'),
      fact('Created', fmtDate(t.created_unix, true)),
      fact('Started', fmtDate(t.started_unix, true)),
      fact('Finished', fmtDate(t.finished_unix, true)),
      fact('Duration', fmtDuration(taskDuration(t))),
      fact('Started by', t.user || '—'));
    append(head, [
      card(taskTitle(t), { id: 'task-card', actions: [stateBadge(t.state, { test: 'task-state', id: 'task-state' }), ...actions] },
        progressBar(t.percent, t.state, { test: 'task-progress', id: 'task-progress' }),
        t.error ? h('div', { class: `task-error${t.state === 'cancelled' ? ' task-cancelled' : ''}`, id: 'task-error', role: 'alert' },
          h('strong', null, t.state === 'cancelled' ? 'Cancelled: ' : 'Error: '), t.error.replace(/^cancelled: /, ''),
          errorKindNote(t)) : null,
        facts,
        t.result != null ? h('details', { class: 'result', id: 'task-result', open: t.state === 'succeeded' }, h('summary', null, 'Result'),
          t.kind === 'gc' || t.kind === 'maintenance' ? upkeepResult(t.result) : renderValue(t.result, 'result')) : null),
    ]);
  }

  // The result of a garbage collection or maintenance task, from the fields it is known to
  // have (store::GcReport, the maintenance's `pruned` and `relief`).
  function upkeepResult(r) {
    const out = [];
    const gc = r.gc;
    const count = (n) => (n == null ? '—' : Number(n).toLocaleString('en-US'));
    if (r.pruned != null || r.relief) {
      const rel = r.relief || {};
      const pct = (v) => (v == null ? '—' : fmtPercent(v));
      out.push(h('dl', { class: 'kv kv-wide', id: 'maintenance-result' },
        fact('Restore points pruned', count(r.pruned), 'result-pruned'),
        fact('Staging tier full', `${pct(rel.used_pct_before)} before, ${pct(rel.used_pct_after)} after`, 'result-capacity'),
        fact('Removed from disk (complete on tape)', rel.deleted_on_tape && rel.deleted_on_tape.length ? rel.deleted_on_tape.join(', ') : 'none', 'result-deleted-on-tape'),
        rel.stuck ? fact('Could not free more', h('span', { class: 'warn-text' }, rel.stuck), 'result-stuck') : null));
    }
    if (gc) {
      const dry = !!gc.dry_run;
      out.push(h('h3', { class: 'result-head' }, dry ? 'Garbage collection (dry run: nothing was deleted)' : 'Garbage collection'));
      out.push(h('dl', { class: 'kv kv-wide', id: 'gc-result' },
        dry
          ? fact('Could be freed', `${fmtBytes(gc.bytes_condemned)} in ${count(gc.chunks_condemned)} unreferenced chunk${gc.chunks_condemned === 1 ? '' : 's'}`, 'result-bytes-freed')
          : fact('Space freed', fmtBytes(gc.bytes_freed), 'result-bytes-freed'),
        dry ? null : fact('Store size', `${fmtBytes(gc.bytes_before)} before, ${fmtBytes(gc.bytes_after)} after`, 'result-store-size'),
        dry ? null : fact('Unreferenced chunks', `${count(gc.chunks_condemned)} condemned (${fmtBytes(gc.bytes_condemned)}), ${count(gc.chunks_freed)} freed`),
        gc.chunks_held ? fact('Held for running backups', `${count(gc.chunks_held)} chunk${gc.chunks_held === 1 ? '' : 's'} (the next collection frees them)`) : null,
        dry ? null : fact('Packs', `${count(gc.packs_deleted)} deleted, ${count(gc.packs_repacked)} rewritten`, 'result-packs'),
        gc.packs_skipped_damaged ? fact('Packs skipped', h('span', { class: 'warn-text' }, `${count(gc.packs_skipped_damaged)} damaged pack${gc.packs_skipped_damaged === 1 ? '' : 's'} left alone: run a repair`)) : null,
        fact('Still referenced', `${count(gc.chunks_live)} chunks of ${count(gc.points_marked)} restore point${gc.points_marked === 1 ? '' : 's'}`),
        fact('Took', `${fmtDuration(gc.duration_s)} (mark set ${fmtBytes(gc.mark_set_bytes)})`),
        gc.complete === false ? fact('Complete', h('span', { class: 'warn-text' }, 'no: cancelled during the sweep; what was done is consistent and the next collection continues')) : null));
    }
    return out.length ? h('div', { class: 'upkeep-result' }, out) : h('p', { class: 'muted' }, 'No report.');
  }

  function fact(label, value, test) {
    return [h('dt', null, label), h('dd', { test: test || null }, value == null ? '—' : value)];
  }

  // -------------------------------------------------------------------------------------------
  // Sources

  async function pageSources(ctx) {
    const list = await api('GET', '/sources');
    if (!ctx.alive()) return;
    const result = h('div', { id: 'source-test-result' });
    const actions = can('admin') ? linkButton('Add source', '#/sources/new', { class: 'btn btn-primary', id: 'source-add' }) : null;
    if (!list.length) {
      ctx.content.appendChild(card(null, {}, emptyState('No sources yet — add one',
        'A source is what rackvault backs up: a disk image path, an NFS URL (nfs://server/export/disk.vmdk or a VM folder ending in /) or an iSCSI LUN (iscsi://host/iqn/lun).',
        actions)));
      return;
    }
    append(ctx.content, [
      result,
      card(`${list.length} source${list.length === 1 ? '' : 's'}`, { actions }, table([
        { label: 'Name', cell: (x) => h('a', { href: `#/sources/${encodeURIComponent(x.id)}` }, x.name) },
        { label: 'URL', cell: (x) => h('code', { class: 'url' }, x.url) },
        { label: 'Host', cell: (x) => x.host || h('span', { class: 'muted' }, 'local') },
        { label: 'Read limit', num: true, cell: (x) => (x.max_read_mbps != null ? `${x.max_read_mbps} MB/s` : h('span', { class: 'muted' }, 'none')) },
        { label: 'CHAP', cell: (x) => (x.chap_user ? `${x.chap_user}${x.has_mutual_secret ? ' (mutual)' : ''}` : h('span', { class: 'muted' }, 'none')) },
        { label: '', class: 'actions', cell: (x) => sourceActions(x, result) },
      ], list, { id: 'sources-table', rowAttrs: (x) => ({ 'data-source-id': x.id, 'data-source-name': x.name }) })),
    ]);
  }

  function sourceActions(x, resultBox) {
    const out = [];
    if (can('operator')) {
      out.push(button('Test', { class: 'btn btn-small', test: 'source-test' }, (ev) => testSource(ev.currentTarget, x, resultBox)));
      out.push(button('Back up now', { class: 'btn btn-small', test: 'source-backup' }, (ev) => busy(ev.currentTarget, async () => {
        const t = await api('POST', '/backups', { source: x.id });
        state.flash = { kind: 'success', text: `Backup of ${x.name} started.` };
        go(`#/tasks/${t.id}`);
      })));
    }
    if (can('admin')) {
      out.push(linkButton('Edit', `#/sources/${encodeURIComponent(x.id)}`, { class: 'btn btn-small', test: 'source-edit' }));
      out.push(button('Delete', { class: 'btn btn-small btn-danger-quiet', test: 'source-delete' }, (ev) => {
        if (!window.confirm(`Delete the source ${x.name}? Its restore points are kept; jobs that use it must be changed first.`)) return;
        busy(ev.currentTarget, async () => {
          await api('DELETE', `/sources/${encodeURIComponent(x.id)}`);
          state.flash = { kind: 'success', text: `Source ${x.name} deleted.` };
          go('#/sources');
        });
      }));
    }
    return h('div', { class: 'row-actions' }, out);
  }

  async function testSource(btn, x, box) {
    clear(box).appendChild(card(`Testing ${x.name}…`, { id: 'probe-card' }, h('p', { class: 'muted' }, 'Connecting to the source; this can take a few seconds.')));
    const gen = state.gen;
    const r = await busy(btn, () => api('POST', `/sources/${encodeURIComponent(x.id)}/test`, {}));
    if (state.gen !== gen) return;
    clear(box);
    if (!r) return;
    box.appendChild(card(`Connection test: ${x.name}`, {
      id: 'probe-card',
      class: r.ok ? 'probe-ok' : 'probe-failed',
      actions: button('Close', { class: 'btn btn-quiet' }, () => clear(box)),
    },
    h('p', { class: `probe-status ${r.ok ? 'ok' : 'failed'}`, id: 'probe-status', test: 'probe-status' }, r.ok ? '✓ Connection OK' : `✗ Connection failed${r.error ? ': ' + r.error : ''}`),
    r.report != null ? renderValue(r.report, 'report') : null));
  }

  async function pageSourceForm(ctx, id) {
    const editing = id != null;
    let src = {};
    if (editing) {
      const list = await api('GET', '/sources');
      if (!ctx.alive()) return;
      src = list.find((x) => String(x.id) === String(id));
      if (!src) {
        ctx.content.appendChild(emptyState('Source not found', `There is no source with id ${id}.`, linkButton('All sources', '#/sources')));
        return;
      }
      ctx.setTitle(can('admin') ? `Edit source: ${src.name}` : `Source: ${src.name}`);
    }
    const ro = !can('admin');
    const name = input('source-name', { value: src.name || '', required: true, maxlength: 128, disabled: ro, placeholder: 'web-01' });
    const url = input('source-url', { value: src.url || '', required: true, disabled: ro, placeholder: '/var/lib/images/web-01.qcow2 or nfs://filer/vms/web-01/ or iscsi://san/iqn.2024-01.com.example:web/0', class: 'input mono' });
    const chapUser = input('source-chap-user', { value: src.chap_user || '', disabled: ro, autocomplete: 'off' });
    const chapSecret = input('source-chap-secret', { type: 'password', disabled: ro, autocomplete: 'new-password', placeholder: src.has_chap_secret ? 'stored — leave empty to keep' : '' });
    const mutualUser = input('source-mutual-user', { value: src.mutual_user || '', disabled: ro, autocomplete: 'off' });
    const mutualSecret = input('source-mutual-secret', { type: 'password', disabled: ro, autocomplete: 'new-password', placeholder: src.has_mutual_secret ? 'stored — leave empty to keep' : '' });
    const limit = input('source-read-limit', { type: 'number', min: 1, max: 100000, value: src.max_read_mbps != null ? String(src.max_read_mbps) : '', disabled: ro, placeholder: 'unlimited', class: 'input input-narrow' });
    const result = h('div', { id: 'source-test-result' });
    const save = h('button', { id: 'source-save', class: 'btn btn-primary', type: 'submit' }, editing ? 'Save changes' : 'Add source');
    const testBtn = can('operator') ? button(editing ? 'Test connection' : 'Save and test connection', { id: 'source-test' }, null) : null;

    const body = () => {
      const b = { name: name.value.trim(), url: url.value.trim() };
      if (chapUser.value.trim()) b.chap_user = chapUser.value.trim();
      if (chapSecret.value) b.chap_secret = chapSecret.value;
      if (mutualUser.value.trim()) b.mutual_user = mutualUser.value.trim();
      if (mutualSecret.value) b.mutual_secret = mutualSecret.value;
      if (limit.value !== '') b.max_read_mbps = Number(limit.value);
      return b;
    };
    const validate = () => {
      if (!name.value.trim()) return 'Enter a name for the source.';
      if (!url.value.trim()) return 'Enter the source URL or path.';
      if (chapSecret.value && !chapUser.value.trim()) return 'A CHAP secret needs a CHAP user name.';
      if (limit.value !== '' && !(Number(limit.value) >= 1)) return 'The read limit is in MB/s and at least 1; leave it empty for no limit.';
      return null;
    };
    const saveNow = async () => {
      const err = validate();
      if (err) {
        showBanner('error', err);
        return null;
      }
      return editing ? api('PUT', `/sources/${encodeURIComponent(id)}`, body()) : api('POST', '/sources', body());
    };

    const form = h('form', { id: 'source-form', class: 'form', novalidate: true },
      field('Name', name, 'Also the name of its restore points.'),
      field('URL or path', url, 'A disk image or block device path, nfs://server/export/path (a VM folder ends with /), or iscsi://[user@]host[:port]/<target iqn>/<lun>.'),
      field('Read limit (MB/s)', limit, 'Caps how fast backups read this source, so production VMs on the same datastore keep their I/O. Empty: no limit.'),
      h('fieldset', { class: 'fieldset' }, h('legend', null, 'iSCSI CHAP (optional)'),
        h('div', { class: 'grid-2 tight' }, field('CHAP user', chapUser), field('CHAP secret', chapSecret, 'Stored sealed on the appliance; never shown again.'))),
      h('details', { class: 'fieldset', open: !!(src.mutual_user || src.has_mutual_secret) }, h('summary', null, 'Mutual CHAP (optional)'),
        h('div', { class: 'grid-2 tight' }, field('Target user', mutualUser), field('Target secret', mutualSecret))),
      ro ? null : h('div', { class: 'form-actions' }, save, testBtn, linkButton('Cancel', '#/sources', { class: 'btn btn-quiet' })),
      ro && testBtn ? h('div', { class: 'form-actions' }, testBtn) : null);

    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      await busy(save, async () => {
        const saved = await saveNow();
        if (!saved) return;
        state.flash = { kind: 'success', text: `Source ${saved.name} saved.` };
        go('#/sources');
      });
    });
    if (testBtn) {
      testBtn.addEventListener('click', async () => {
        if (editing && ro) return testSource(testBtn, src, result);
        if (editing) {
          const saved = await busy(testBtn, saveNow);
          if (saved) testSource(testBtn, saved, result);
          return;
        }
        const saved = await busy(testBtn, saveNow);
        if (!saved) return;
        state.testAfterLoad = saved.id;
        state.flash = { kind: 'success', text: `Source ${saved.name} saved.` };
        go(`#/sources/${encodeURIComponent(saved.id)}`);
      });
    }
    append(ctx.content, [result, card(editing ? null : 'New source', {}, form)]);
    if (editing && state.testAfterLoad === src.id && testBtn) {
      state.testAfterLoad = null;
      testSource(testBtn, src, result);
    }
    if (!ro) name.focus();
  }

  // -------------------------------------------------------------------------------------------
  // Jobs

  async function pageJobs(ctx) {
    const [jobs, sources] = await Promise.all([api('GET', '/jobs'), api('GET', '/sources')]);
    if (!ctx.alive()) return;
    const srcName = (sid) => {
      const x = sources.find((s2) => String(s2.id) === String(sid));
      return x ? x.name : `(missing source ${sid})`;
    };
    const add = can('admin') && sources.length ? linkButton('Add job', '#/jobs/new', { class: 'btn btn-primary', id: 'job-add' }) : null;
    if (!jobs.length) {
      ctx.content.appendChild(card(null, {}, sources.length
        ? emptyState('No jobs yet', 'A job backs up a source on a schedule, e.g. every weekday at 22:00.', add)
        : emptyState('No sources yet — add a source first', 'Jobs back up sources on a schedule.', can('admin') ? linkButton('Add a source', '#/sources/new', { class: 'btn btn-primary' }) : null)));
      return;
    }
    const pruneBox = h('div', { id: 'prune-box' });
    append(ctx.content, [pruneBox, card(`${jobs.length} job${jobs.length === 1 ? '' : 's'}`, { actions: add }, table([
      { label: 'Name', cell: (j) => h('a', { href: `#/jobs/${encodeURIComponent(j.id)}` }, j.name) },
      { label: 'Source', cell: (j) => srcName(j.source) },
      { label: 'Schedule', cell: (j) => h('code', null, j.schedule) },
      { label: 'Copies', cell: (j) => {
        const to = [j.destage_pool ? `pool ${j.destage_pool}` : null, j.replicate_to ? 'offsite' : null].filter(Boolean);
        return to.length ? to.join(', ') : h('span', { class: 'muted' }, 'disk only');
      } },
      { label: 'Keeps', key: 'retention', class: 'col-keeps', cell: (j) => retentionCell(j) },
      { label: 'Status', cell: (j) => (j.enabled ? h('span', { class: 'badge state-enabled' }, 'enabled') : h('span', { class: 'badge state-disabled' }, 'paused')) },
      { label: 'Next run', cell: (j) => (j.enabled && j.next_run_unix ? dateCell(j.next_run_unix) : '—') },
      { label: 'Last task', cell: (j) => (j.last_task != null ? h('a', { href: `#/tasks/${j.last_task}` }, `#${j.last_task}`) : '—') },
      { label: '', class: 'actions', cell: (j) => jobActions(j, pruneBox, srcName(j.source)) },
    ], jobs, { id: 'jobs-table', rowAttrs: (j) => ({ 'data-job-id': j.id, 'data-job-name': j.name }) }))]);
  }

  // "7 last, 14 daily, 8 weekly, 12 monthly, 2 yearly, 30 days", or "keep all".
  function retentionSummary(r) {
    if (!r) return null;
    const parts = [];
    for (const [k, word] of [['keep_last', 'last'], ['keep_daily', 'daily'], ['keep_weekly', 'weekly'], ['keep_monthly', 'monthly'], ['keep_yearly', 'yearly']]) {
      if (r[k]) parts.push(`${r[k]} ${word}`);
    }
    if (r.keep_within_s) parts.push(`all of the last ${fmtDays(r.keep_within_s / 86400)}`);
    return parts.length ? parts.join(', ') : null;
  }

  function fmtDays(d) {
    const v = Math.round(d * 100) / 100;
    return `${v} day${v === 1 ? '' : 's'}`;
  }

  function retentionCell(j) {
    const summary = retentionSummary(j.retention);
    return h('div', { class: 'retention', test: 'job-retention' },
      summary ? h('span', null, summary) : h('span', { class: 'muted' }, 'keep all'),
      j.immutable_days ? h('div', { class: 'small', test: 'job-immutable' }, h('span', { class: 'badge flag flag-immutable' }, `immutable ${fmtDays(j.immutable_days)}`)) : null);
  }

  // The prune preview (a dry run, for everyone) and, for admins, "Prune now".
  async function showPrune(btn, j, source, box, dryRun) {
    const report = await busy(btn, () => api('POST', '/prune', { job: j.id, dry_run: dryRun }));
    if (!report) return;
    if (!dryRun) notice(`Job ${j.name}: ${report.pruned} restore point${report.pruned === 1 ? '' : 's'} pruned. A garbage collection frees their space.`);
    const again = dryRun && can('admin') && report.pruned > 0
      ? button('Prune now', { class: 'btn btn-danger', id: 'prune-now' }, (ev) => {
        if (!window.confirm(`Prune ${report.pruned} restore point${report.pruned === 1 ? '' : 's'} of ${source} now, as job ${j.name}’s retention says? They are deleted from disk; this cannot be undone.`)) return;
        showPrune(ev.currentTarget, j, source, box, false);
      })
      : null;
    const counts = [
      `${report.kept} kept`,
      `${report.pruned} ${dryRun ? 'to prune' : 'pruned'}`,
      report.kept_immutable ? `${report.kept_immutable} kept as immutable` : null,
      report.kept_awaiting_tape ? `${report.kept_awaiting_tape} kept until on tape` : null,
    ].filter(Boolean).join(' · ');
    clear(box).appendChild(card(`${dryRun ? 'Prune preview' : 'Pruned'}: job ${j.name} (${report.name})`, {
      id: 'prune-card',
      actions: [again, button('Close', { class: 'btn btn-quiet', id: 'prune-close' }, () => clear(box))],
    },
    h('p', { class: 'prune-summary', id: 'prune-summary' }, counts,
      h('span', { class: 'muted' }, ` — by the store’s clock at ${fmtDate(report.trusted_unix, true)}.${dryRun ? ' Nothing has been deleted.' : ''}`)),
    report.items.length ? table([
      { label: 'Restore point', cell: (i) => h('a', { href: `#/points/${encodeURIComponent(i.point)}` }, i.point) },
      { label: 'Created', cell: (i) => dateCell(i.created_unix) },
      { label: 'Action', cell: (i) => h('span', { class: `badge flag action-${i.action}`, test: 'prune-action' }, PRUNE_ACTION[i.action] || i.action) },
      { label: 'Why', class: 'col-wrap', cell: (i) => withDates(i.why) },
      { label: 'On tape', cell: (i) => (i.on_tape ? 'yes' : h('span', { class: 'muted' }, 'no')) },
    ], report.items, { id: 'prune-table', rowAttrs: (i) => ({ 'data-point': i.point, 'data-action': i.action }) })
      : emptyState('No restore points', `There are no restore points of ${report.name} yet.`)));
    box.scrollIntoView({ block: 'nearest' });
  }

  const PRUNE_ACTION = { keep: 'keep', prune: 'prune', 'keep-immutable': 'keep: immutable', 'keep-awaiting-tape': 'keep: awaiting tape' };

  function jobActions(j, pruneBox, source) {
    const out = [];
    if (j.retention) {
      out.push(button('Prune preview', { class: 'btn btn-small', test: 'job-prune-preview' }, (ev) => showPrune(ev.currentTarget, j, source, pruneBox, true)));
    }
    if (can('operator')) {
      out.push(button('Run now', { class: 'btn btn-small', test: 'job-run' }, (ev) => busy(ev.currentTarget, async () => {
        const t = await api('POST', `/jobs/${encodeURIComponent(j.id)}/run`, {});
        state.flash = { kind: 'success', text: `Job ${j.name} started.` };
        go(`#/tasks/${t.id}`);
      })));
    }
    if (can('admin')) {
      out.push(linkButton('Edit', `#/jobs/${encodeURIComponent(j.id)}`, { class: 'btn btn-small', test: 'job-edit' }));
      out.push(button('Delete', { class: 'btn btn-small btn-danger-quiet', test: 'job-delete' }, (ev) => {
        if (!window.confirm(`Delete the job ${j.name}? Its restore points are kept.`)) return;
        busy(ev.currentTarget, async () => {
          await api('DELETE', `/jobs/${encodeURIComponent(j.id)}`);
          state.flash = { kind: 'success', text: `Job ${j.name} deleted.` };
          go('#/jobs');
        });
      }));
    }
    return h('div', { class: out.length > 2 ? 'row-actions row-actions-wrap row-actions-2' : 'row-actions' }, out);
  }

  async function pageJobForm(ctx, id) {
    const editing = id != null;
    const [jobs, sources, tape] = await Promise.all([editing ? api('GET', '/jobs') : Promise.resolve([]), api('GET', '/sources'), tapeConfigured()]);
    const pools = tape ? (await api('GET', '/tape/pools')).map((p) => p.name) : [];
    const remotes = (await api('GET', '/remotes')).filter((r) => !r.pull);
    if (!ctx.alive()) return;
    let job = { enabled: true, schedule: 'mon..fri 22:00' };
    if (editing) {
      job = jobs.find((j) => String(j.id) === String(id));
      if (!job) {
        ctx.content.appendChild(emptyState('Job not found', `There is no job with id ${id}.`, linkButton('All jobs', '#/jobs')));
        return;
      }
      ctx.setTitle(can('admin') ? `Edit job: ${job.name}` : `Job: ${job.name}`);
    }
    if (!sources.length) {
      ctx.content.appendChild(emptyState('No sources yet — add a source first', 'A job backs up one source.', linkButton('Add a source', '#/sources/new', { class: 'btn btn-primary' })));
      return;
    }
    const ro = !can('admin');
    const name = input('job-name', { value: job.name || '', required: true, disabled: ro, placeholder: 'nightly web-01' });
    const source = select('job-source', sources.map((x) => ({ value: x.id, label: `${x.name} — ${x.url}` })), job.source, { disabled: ro });
    const schedule = input('job-schedule', { value: job.schedule || '', required: true, disabled: ro, class: 'input mono', placeholder: 'mon..fri 22:00' });
    const windowH = input('job-window', { type: 'number', min: 1, max: 168, value: job.window_hours != null ? String(job.window_hours) : '', disabled: ro, placeholder: 'none' });
    const retries = input('job-retries', { type: 'number', min: 0, max: 10, value: job.retries != null ? String(job.retries) : '', disabled: ro, placeholder: '0' });
    const destage = tape ? select('job-destage-pool', [{ value: '', label: 'No — keep on disk only' }].concat(pools.map((n) => ({ value: n, label: `Yes, to pool ${n}` }))), job.destage_pool || '', { disabled: ro }) : null;
    const replicate = remotes.length ? select('job-replicate-to', [{ value: '', label: 'No' }].concat(remotes.map((x) => ({ value: x.id, label: `Yes, to ${x.name} (${x.s3 ? `bucket ${x.s3.bucket}` : x.url})` }))), job.replicate_to || '', { disabled: ro }) : null;
    const enabled = h('input', { type: 'checkbox', id: 'job-enabled', disabled: ro });
    enabled.checked = !!job.enabled;
    const r = job.retention || {};
    const keep = (id, v, placeholder) => input(id, { type: 'number', min: 1, step: 1, value: v != null ? String(v) : '', disabled: ro, placeholder: placeholder || '—', class: 'input' });
    const keepLast = keep('job-keep-last', r.keep_last);
    const keepDaily = keep('job-keep-daily', r.keep_daily);
    const keepWeekly = keep('job-keep-weekly', r.keep_weekly);
    const keepMonthly = keep('job-keep-monthly', r.keep_monthly);
    const keepYearly = keep('job-keep-yearly', r.keep_yearly);
    const keepWithin = input('job-keep-within', { type: 'number', min: 0, step: 'any', value: r.keep_within_s ? String(Math.round((r.keep_within_s / 86400) * 100) / 100) : '', disabled: ro, placeholder: '—' });
    const immutable = input('job-immutable-days', { type: 'number', min: 0, max: 3650, step: 1, value: job.immutable_days ? String(job.immutable_days) : '', disabled: ro, placeholder: 'not immutable', class: 'input input-narrow' });
    const save = h('button', { id: 'job-save', class: 'btn btn-primary', type: 'submit' }, editing ? 'Save changes' : 'Add job');
    const form = h('form', { id: 'job-form', class: 'form', novalidate: true },
      field('Name', name),
      field('Source', source),
      field('Schedule', schedule, h('span', null, 'A calendar event: ', h('code', null, 'mon..fri 22:00'), ', ', h('code', null, 'daily'), ', ', h('code', null, 'sat 03:30'), ', ', h('code', null, '*:0/15'), ' (every 15 minutes). Times are the appliance’s local time.')),
      h('div', { class: 'grid-2 tight' },
        field('Window (hours)', windowH, 'A run that cannot start within this many hours of its time is skipped.'),
        field('Retries', retries, 'How often a failed run is retried.')),
      destage ? field('Then copy to tape', destage, 'After each successful backup, destage the new restore point to this pool’s media set (disk to disk to tape).') : null,
      replicate ? field('Then replicate offsite', replicate, 'After each successful backup, send the new restore point to this remote appliance (only what it lacks travels).') : null,
      h('fieldset', { class: 'fieldset', id: 'job-retention' }, h('legend', null, 'Retention'),
        h('p', { class: 'help retention-hint', id: 'job-retention-hint' }, 'Which restore points of this source to keep; applied after each successful backup and by the nightly maintenance. Empty fields are unset, and with no rule set the job keeps every restore point. A point is kept when any rule keeps it; pinned and immutable points are never pruned, and when the job copies to tape a point leaves the disk only once its tape copy is complete.'),
        h('div', { class: 'grid-6 tight' },
          field('Keep last', keepLast),
          field('Daily', keepDaily),
          field('Weekly', keepWeekly),
          field('Monthly', keepMonthly),
          field('Yearly', keepYearly),
          field('Within (days)', keepWithin)),
        h('p', { class: 'help' }, 'Last: the newest N points. Daily, weekly, monthly, yearly: the newest point of each of the last N days, weeks, months or years that have points (in the appliance’s time zone, see Settings). Within: every point of the last N days.')),
      field('Immutable for (days)', immutable, 'Each new restore point of this job cannot be deleted or pruned by anyone, administrators included, for this many days. Empty or 0: not immutable.'),
      h('label', { class: 'check', for: 'job-enabled' }, enabled, ' Enabled (runs on its schedule)'),
      ro ? null : h('div', { class: 'form-actions' }, save, linkButton('Cancel', '#/jobs', { class: 'btn btn-quiet' })));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (!name.value.trim()) return showBanner('error', 'Enter a name for the job.');
      if (!schedule.value.trim()) return showBanner('error', 'Enter a schedule, e.g. mon..fri 22:00.');
      const b = { name: name.value.trim(), source: source.value, schedule: schedule.value.trim(), enabled: enabled.checked };
      if (windowH.value !== '') b.window_hours = Number(windowH.value);
      if (retries.value !== '') b.retries = Number(retries.value);
      if (destage && destage.value) b.destage_pool = destage.value;
      if (replicate && replicate.value) b.replicate_to = replicate.value;
      const policy = {};
      for (const [k, el, label] of [['keep_last', keepLast, 'Keep last'], ['keep_daily', keepDaily, 'Daily'], ['keep_weekly', keepWeekly, 'Weekly'], ['keep_monthly', keepMonthly, 'Monthly'], ['keep_yearly', keepYearly, 'Yearly']]) {
        if (el.value === '') continue;
        const n = Number(el.value);
        if (!(Number.isInteger(n) && n >= 1)) return showBanner('error', `Retention “${label}” is a whole number of at least 1; leave it empty to unset it.`);
        policy[k] = n;
      }
      if (keepWithin.value !== '') {
        const d = Number(keepWithin.value);
        if (!(d > 0)) return showBanner('error', 'Retention “Within (days)” is a number of days above 0; leave it empty to unset it.');
        policy.keep_within_s = Math.round(d * 86400);
      }
      b.retention = Object.keys(policy).length ? policy : null;
      if (immutable.value !== '') {
        const d = Number(immutable.value);
        if (!(Number.isInteger(d) && d >= 0 && d <= 3650)) return showBanner('error', 'Immutable for (days) is a whole number from 0 to 3650.');
        b.immutable_days = d || null;
      } else {
        b.immutable_days = null;
      }
      await busy(save, async () => {
        const saved = editing ? await api('PUT', `/jobs/${encodeURIComponent(id)}`, b) : await api('POST', '/jobs', b);
        state.flash = { kind: 'success', text: `Job ${saved.name} saved.${saved.next_run_unix ? ' Next run: ' + fmtDate(saved.next_run_unix) + '.' : ''}` };
        go('#/jobs');
      });
    });
    ctx.content.appendChild(card(editing ? null : 'New job', {}, form));
    if (!ro) name.focus();
  }

  // -------------------------------------------------------------------------------------------
  // Restore points

  async function pagePoints(ctx) {
    const [points, tape, remotes] = await Promise.all([api('GET', '/points'), tapeConfigured(), api('GET', '/remotes').then((l) => l.filter((r) => !r.pull))]);
    if (!ctx.alive()) return;
    if (!points.length) {
      ctx.content.appendChild(card(null, {}, emptyState('No restore points yet',
        'Each backup creates a restore point: a full image of every disk, stored by reference.',
        linkButton('Back up a source', '#/sources', { class: 'btn btn-primary' }))));
      return;
    }
    points.sort((a, b) => (b.created_unix || 0) - (a.created_unix || 0));
    const onDisk = points.filter((p) => !p.tape_only);
    const formBox = h('div', { id: 'restore-box' });
    const filter = input('points-filter', { type: 'search', placeholder: 'Filter by name', class: 'input input-inline' });
    const listBox = h('div');
    const render = () => {
      const q = filter.value.trim().toLowerCase();
      const shown = q ? points.filter((p) => p.name.toLowerCase().includes(q)) : points;
      clear(listBox).appendChild(shown.length ? table([
        { label: 'Name', cell: (p) => h('a', { class: 'strong', href: `#/points/${encodeURIComponent(`${p.name}@${p.id}`)}`, test: 'point-link' }, p.name) },
        { label: 'ID', num: true, cell: (p) => String(p.id) },
        { label: 'Created', cell: (p) => dateCell(p.created_unix) },
        { label: 'Disks', cell: (p) => diskList(p) },
        { label: 'State', key: 'state', cell: (p) => pointFlags(p) },
        { label: 'Size', num: true, cell: (p) => fmtBytes((p.disks || []).reduce((a, d) => a + (d.size || 0), 0)) },
        { label: 'New data', num: true, cell: (p) => (p.stats && p.stats.bytes_written != null ? fmtBytes(p.stats.bytes_written) : '—') },
        { label: '', class: 'actions', cell: (p) => pointActions(p, formBox, tape ? onDisk : null, remotes) },
      ], shown, { id: 'points-table', rowAttrs: (p) => ({ 'data-point': `${p.name}@${p.id}`, 'data-tape-only': p.tape_only ? 'true' : null }) }) : h('p', { class: 'muted quiet-state' }, 'No restore point matches the filter.'));
    };
    filter.addEventListener('input', render);
    render();
    append(ctx.content, [formBox, card(`${points.length} restore point${points.length === 1 ? '' : 's'}`, { actions: filter }, listBox)]);
  }

  // One restore point: its disks, configuration files, backup figures and copies on tape.
  async function pagePoint(ctx, spec) {
    const [points, tape, remotes] = await Promise.all([api('GET', '/points'), tapeConfigured(), api('GET', '/remotes').then((l) => l.filter((r) => !r.pull))]);
    const copies = tape ? (await api('GET', '/tape/copies')).filter((c) => `${c.point.name}@${c.point.id}` === spec) : [];
    if (!ctx.alive()) return;
    const listed = points.find((x) => `${x.name}@${x.id}` === spec);
    const p = listed && !listed.tape_only ? listed : null;
    if (!p && !copies.length) {
      ctx.content.appendChild(emptyState('Restore point not found', `There is no restore point ${spec} on disk or on tape.`, linkButton('All restore points', '#/points')));
      return;
    }
    const point = p || copies[0].point;
    ctx.setTitle(`Restore point ${spec}`);
    const st = point.stats || {};
    const formBox = h('div', { id: 'restore-box' });
    const size = (point.disks || []).reduce((a, d) => a + (d.size || 0), 0);
    const actions = listed ? pointActions(listed, formBox, tape ? points.filter((x) => !x.tape_only) : null, remotes) : null;
    append(ctx.content, [
      formBox,
      card(spec, { id: 'point-card', actions }, h('dl', { class: 'kv kv-wide' },
        fact('Created', dateCell(point.created_unix, true)),
        fact('Where', (p ? (copies.length ? 'on disk and on tape' : 'on disk') : 'on tape only (it left the disk tier)') + ((listed && (listed.remote_copies || []).length) ? `; offsite on ${listed.remote_copies.map((c) => c.remote).join(', ')}` : ''), 'point-where'),
        listed ? fact('State', pointFlags(listed, true), 'point-state') : null,
        fact('Size', fmtBytes(size)),
        fact('Read at backup', fmtBytes(st.bytes_read)),
        fact('New data stored', fmtBytes(st.bytes_written)),
        fact('Chunks', st.chunks_total != null ? `${st.chunks_total} (${st.chunks_new || 0} new, ${st.chunks_zero || 0} all-zero)` : '—'),
        fact('Backup took', st.duration_s != null ? fmtDuration(st.duration_s) : '—'))),
      card('Disks', { id: 'point-disks' }, table([
        { label: 'Disk', cell: (d) => h('code', null, d.label) },
        { label: 'Format', cell: (d) => d.format },
        { label: 'Size', num: true, cell: (d) => fmtBytes(d.size) },
        { label: 'Chunk size', num: true, cell: (d) => fmtBytes(d.chunk_size) },
        { label: 'Read from', cell: (d) => h('code', { class: 'url' }, d.source) },
      ], point.disks || [], { id: 'point-disks-table' })),
      (point.files || []).length ? card('Configuration files', { id: 'point-files' }, table([
        { label: 'File', cell: (f) => h('code', null, f.name) },
        { label: 'Size', num: true, cell: (f) => fmtBytes(f.size) },
      ], point.files)) : null,
      listed && (listed.remote_copies || []).length ? card('Copies offsite', { id: 'point-remote-copies' }, table([
        { label: 'Remote', cell: (c) => c.remote },
        { label: 'There as', cell: (c) => h('code', null, c.delivered_as) },
        { label: 'Replicated', cell: (c) => dateCell(c.unix) },
      ], listed.remote_copies, { id: 'point-remote-copies-table' })) : null,
      tape ? card('Copies on tape', { id: 'point-copies' }, copies.length ? table([
        { label: 'Written', cell: (c) => dateCell(c.written_unix) },
        { label: 'Starts on', cell: (c) => h('code', null, `${c.barcode} file ${c.file}`) },
        { label: 'Media set', cell: (c) => h('code', { title: c.set_id }, c.set_id.slice(0, 8)) },
      ], copies, { id: 'point-copies-table' }) : emptyState('Not on tape yet', can('operator') && p ? 'Use “To tape…” above to destage it.' : null)) : null,
    ]);
  }

  function diskList(p) {
    const disks = p.disks || [];
    const files = p.files || [];
    return h('div', { class: 'disks' },
      disks.map((d) => h('div', { class: 'disk' }, h('code', null, d.label), ' ', h('span', { class: 'muted' }, `${d.format || ''} · ${fmtBytes(d.size)}`))),
      files.length ? h('div', { class: 'muted small' }, `+ ${files.length} configuration file${files.length === 1 ? '' : 's'}`) : null);
  }

  // Badges: pinned, immutable (until when), on tape, on tape only. `long`: say "not protected"
  // when there is nothing to show.
  function pointFlags(p, long) {
    const out = [];
    if (p.tape_only) out.push(h('span', { class: 'badge flag flag-tape-only', test: 'flag-tape-only', title: 'No longer on disk: restore it from tape' }, 'on tape only'));
    else if (p.on_tape) out.push(h('span', { class: 'badge flag flag-tape', test: 'flag-on-tape', title: 'A complete copy exists on tape' }, 'on tape'));
    if (p.pinned) out.push(h('span', { class: 'badge flag flag-pinned', test: 'flag-pinned', title: 'Protected from prune and delete until unpinned' }, 'pinned'));
    if (p.origin && p.origin.without_key) out.push(h('span', { class: 'badge flag flag-sealed', test: 'flag-sealed', title: `Replicated from ${p.origin.namespace} and kept without that store's key: verified by checksum; restoring it needs that store's recovery key (rackvault key add-replica)` }, 'sealed: source key needed'));
    for (const c of p.remote_copies || []) out.push(h('span', { class: 'badge flag flag-remote', test: 'flag-remote', title: `Replicated to ${c.remote} as ${c.delivered_as} (${fmtDate(c.unix)})` }, `offsite: ${c.remote}`));
    if (p.immutable) {
      const until = p.immutable_until_unix;
      out.push(h('span', { class: 'badge flag flag-immutable', test: 'flag-immutable', title: until ? `Nobody can delete or prune it before ${new Date(until * 1000).toString()}` : null },
        until ? `immutable until ${fmtDate(until).slice(0, 10)}` : 'immutable'));
    }
    if (!out.length) return long ? h('span', { class: 'muted' }, 'on disk; not pinned or immutable') : '';
    return h('div', { class: 'flags' }, out);
  }

  // `tapePoints`: the points on disk, when a tape library is configured (for the destage form);
  // `remotes`: the appliances it may be replicated to (no button without one).
  function pointActions(p, formBox, tapePoints, remotes) {
    if (!can('operator')) return '';
    const spec = `${p.name}@${p.id}`;
    if (p.tape_only) {
      return h('div', { class: 'row-actions' },
        button('Restore from tape…', { class: 'btn btn-small', test: 'point-tape-restore' }, (ev) => busy(ev.currentTarget, async () => {
          const copy = (await api('GET', '/tape/copies')).find((c) => `${c.point.name}@${c.point.id}` === spec);
          if (!copy) throw new Error(`The tape catalog has no copy of ${spec} any more.`);
          clear(formBox).appendChild(card(`Restore ${spec} from tape`, { id: 'tape-restore-card' }, tapeRestoreForm(copy)));
          formBox.scrollIntoView({ block: 'nearest' });
        })));
    }
    const admin = can('admin') ? [
      button(p.pinned ? 'Unpin' : 'Pin', { class: 'btn btn-small', test: p.pinned ? 'point-unpin' : 'point-pin', title: p.pinned ? 'Let retention and delete apply again' : 'Protect it from retention, capacity relief and delete' }, (ev) => busy(ev.currentTarget, async () => {
        await api('PUT', `/points/${encodeURIComponent(spec)}/pin`, { pinned: !p.pinned });
        state.flash = { kind: 'success', text: `${spec} ${p.pinned ? 'unpinned' : 'pinned'}.` };
        go(location.hash);
      })),
      button('Delete', { class: 'btn btn-small btn-danger-quiet', test: 'point-delete' }, (ev) => deletePoint(ev.currentTarget, p)),
    ] : [];
    return h('div', { class: `row-actions${admin.length ? ' row-actions-wrap' : ''}` },
      button('Restore…', { class: 'btn btn-small', test: 'point-restore' }, () => openRestoreForm(p, formBox)),
      tapePoints ? button('To tape…', { class: 'btn btn-small', test: 'point-destage' }, (ev) => busy(ev.currentTarget, async () => {
        const pools = await api('GET', '/tape/pools');
        clear(formBox).appendChild(card(`Destage ${spec} to tape`, { id: 'tape-destage-card' }, destageForm(tapePoints, pools.map((x) => x.name), spec)));
        formBox.scrollIntoView({ block: 'nearest' });
      })) : null,
      remotes && remotes.length ? button('Replicate…', { class: 'btn btn-small', test: 'point-replicate' }, () => {
        clear(formBox).appendChild(card(`Replicate ${spec}`, { id: 'replicate-card' }, replicateForm(spec, remotes)));
        formBox.scrollIntoView({ block: 'nearest' });
      }) : null,
      button('Verify', { class: 'btn btn-small', test: 'point-verify' }, (ev) => busy(ev.currentTarget, async () => {
        const t = await api('POST', '/verifications', { point: spec });
        state.flash = { kind: 'success', text: `Verification of ${spec} started.` };
        go(`#/tasks/${t.id}`);
      })),
      admin);
  }

  // Send a point to another appliance: only what the remote lacks travels.
  function replicateForm(spec, remotes) {
    if (!remotes.length) {
      return emptyState('No remote appliance yet', 'Add the appliance to replicate to under Remotes first.', linkButton('Remotes', '#/remotes'));
    }
    const remote = select('replicate-remote', remotes.map((r) => ({ value: r.id, label: `${r.name} — ${r.url} (namespace ${r.namespace})` })), remotes[0].id);
    const submit = h('button', { id: 'replicate-submit', class: 'btn btn-primary', type: 'submit' }, 'Start replication');
    const form = h('form', { id: 'replicate-form', class: 'form', novalidate: true },
      field('To', remote, 'Only the chunks the remote lacks are sent; a stopped run resumes where it stopped. The point appears there as <namespace>.<name>.'),
      h('div', { class: 'form-actions' }, submit));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      await busy(submit, async () => {
        const t = await api('POST', `/points/${encodeURIComponent(spec)}/replicate`, { remote: remote.value });
        state.flash = { kind: 'success', text: `Replication of ${spec} started.` };
        go(`#/tasks/${t.id}`);
      });
    });
    return form;
  }

  // Delete one point (admin), after a confirmation naming it. The store refuses pinned and
  // immutable points (409): say so plainly.
  async function deletePoint(btn, p) {
    const spec = `${p.name}@${p.id}`;
    const extra = p.pinned ? ' It is pinned, so the appliance will refuse until it is unpinned.' : p.immutable ? ' It is immutable, so the appliance will refuse.' : '';
    if (!window.confirm(`Delete the restore point ${spec} (created ${fmtDate(p.created_unix)}) from disk? ${p.on_tape ? 'Its copy on tape stays.' : 'It is not on tape: this cannot be undone.'}${extra}`)) return;
    btn.disabled = true;
    try {
      await api('DELETE', `/points/${encodeURIComponent(spec)}`);
      state.flash = { kind: 'success', text: `Restore point ${spec} deleted. The next garbage collection frees its space.` };
      go('#/points');
    } catch (e) {
      if (e.status === 409) showBanner('error', `${spec} was not deleted: ${withDates(e.message)}`, 'delete-refused');
      else showError(e);
    } finally {
      btn.disabled = false;
    }
  }

  function openRestoreForm(p, box) {
    const spec = `${p.name}@${p.id}`;
    const disks = p.disks || [];
    const disk = select('restore-disk', [{ value: '', label: disks.length > 1 ? 'All disks and configuration files' : `All (${disks.length} disk)` }]
      .concat(disks.map((d) => ({ value: d.label, label: `${d.label} — ${d.format}, ${fmtBytes(d.size)}` }))), '');
    const target = input('restore-target', { value: `${p.name}-${p.id}`.replace(/[^A-Za-z0-9._-]/g, '_'), required: true, class: 'input mono', maxlength: 128 });
    const submit = h('button', { id: 'restore-submit', class: 'btn btn-primary', type: 'submit' }, 'Start restore');
    const form = h('form', { id: 'restore-form', class: 'form', novalidate: true },
      h('p', null, 'Restore ', h('strong', null, spec), ` (created ${fmtDate(p.created_unix)}) to the appliance’s restore area.`),
      h('div', { class: 'grid-2 tight' },
        field('Disk', disk),
        field('Target name', target, 'Written into <data>/restores/<target>/ on the appliance; an existing target is not overwritten.')),
      h('div', { class: 'form-actions' }, submit, button('Cancel', { class: 'btn btn-quiet' }, () => clear(box))));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const name = target.value.trim();
      if (!name) return showBanner('error', 'Enter a target name.');
      if (/[/\\]|^\.\.?$/.test(name)) return showBanner('error', 'The target name must be a plain name, without / or \\.');
      const b = { point: spec, target: name };
      if (disk.value) b.disk = disk.value;
      await busy(submit, async () => {
        const t = await api('POST', '/restores', b);
        state.flash = { kind: 'success', text: `Restore of ${spec} to ${name} started.` };
        go(`#/tasks/${t.id}`);
      });
    });
    clear(box).appendChild(card(`Restore ${spec}`, { id: 'restore-card' }, form));
    box.scrollIntoView({ block: 'nearest' });
    target.focus();
    target.select();
  }

  // -------------------------------------------------------------------------------------------
  // Tape

  // Whether a tape library is configured (cheap: no library I/O).
  async function tapeConfigured() {
    const st = await api('GET', '/settings');
    return !!(st && st.tape_changer);
  }

  async function pageTape(ctx) {
    let inv;
    try {
      inv = await api('GET', '/tape/inventory');
    } catch (e) {
      if (e.status === 404) {
        ctx.content.appendChild(card(null, {}, emptyState('No tape library configured',
          'Connect a tape library (SAS/FC or iSCSI) and enter its changer’s address in the settings to destage restore points to tape.',
          can('admin') ? linkButton('Open settings', '#/settings', { class: 'btn btn-primary' }) : null)));
        return;
      }
      if (e.status === 409) {
        // A tape task holds the library; show that instead of a stale inventory.
        ctx.content.appendChild(card(null, {}, emptyState('The library is busy', e.message, linkButton('Show tasks', '#/tasks', { class: 'btn' }))));
        ctx.later(() => route(), 3000);
        return;
      }
      throw e;
    }
    const [pools, copies, allPoints] = await Promise.all([api('GET', '/tape/pools'), api('GET', '/tape/copies'), api('GET', '/points')]);
    const points = allPoints.filter((p) => !p.tape_only);
    if (!ctx.alive()) return;
    const rows = inv.elements || [];
    const count = (f) => rows.filter(f).length;
    const slots = rows.filter((r) => r.element === 'slot');
    const drives = rows.filter((r) => r.element === 'drive');
    const formBox = h('div', { id: 'tape-form-box' });
    const open = (title, id, form) => {
      clear(formBox).appendChild(card(title, { id }, form));
      formBox.scrollIntoView({ block: 'nearest' });
    };
    const poolNames = pools.map((p) => p.name);
    const tapeActions = (r) => {
      const out = [];
      if (r.element === 'drive' && r.full && can('operator')) {
        out.push(button('Unload', { class: 'btn btn-small', test: 'tape-unload' }, (ev) => busy(ev.currentTarget, async () => {
          const u = await api('POST', '/tape/unload', { drive: r.drive_index });
          state.flash = { kind: 'success', text: `Cartridge ${u.barcode || ''} unloaded from drive ${u.drive}.` };
          go('#/tape');
        })));
      }
      if (r.element !== 'drive' && r.full && r.barcode && !r.cleaning && can('operator')) {
        out.push(button('Load', { class: 'btn btn-small', test: 'tape-load' }, (ev) => busy(ev.currentTarget, async () => {
          const l = await api('POST', '/tape/load', { barcode: r.barcode });
          state.flash = { kind: 'success', text: `Cartridge ${l.barcode} loaded into drive ${l.drive}${l.drive_serial ? ' (' + l.drive_serial + ')' : ''}.` };
          go('#/tape');
        })));
      }
      if (r.full && r.barcode && !r.cleaning && can('admin')) {
        out.push(button(r.medium_id ? 'Relabel…' : 'Label…', { class: 'btn btn-small', test: 'tape-label' }, () => open(`Label cartridge ${r.barcode}`, 'tape-label-card', labelForm(r, poolNames))));
      }
      if (r.full && r.barcode && r.medium_id && can('operator')) {
        out.push(button('Verify', { class: 'btn btn-small', test: 'tape-verify' }, (ev) => busy(ev.currentTarget, async () => {
          const t = await api('POST', '/tape/verifications', { barcode: r.barcode });
          state.flash = { kind: 'success', text: `Verification of cartridge ${r.barcode} started.` };
          go(`#/tasks/${t.id}`);
        })));
      }
      return h('div', { class: 'row-actions' }, out);
    };
    const destageBtn = can('operator') && points.length
      ? button('Destage to tape…', { class: 'btn btn-primary', id: 'tape-destage-open' }, () => open('Destage a restore point to tape', 'tape-destage-card', destageForm(points, poolNames, null)))
      : null;
    append(ctx.content, [
      h('div', { class: 'stats' },
        stat('Drives', `${count((r) => drives.includes(r) && r.full)} loaded / ${drives.length}`, 'tape-drives'),
        stat('Slots', `${count((r) => slots.includes(r) && r.full)} full / ${slots.length}`, 'tape-slots'),
        stat('Cartridges', String(count((r) => r.full && r.barcode && !r.cleaning)), 'tape-cartridges', `${count((r) => !!r.medium_id)} labelled`),
        stat('Written', fmtBytes(rows.reduce((a, r) => a + (r.bytes_written || 0), 0)), 'tape-written')),
      formBox,
      card(`Inventory${inv.library ? ' — ' + inv.library : ''}`, { id: 'tape-inventory', actions: destageBtn }, rows.length ? table([
        { label: 'Element', cell: (r) => (r.element === 'drive' ? `drive ${r.drive_index != null ? r.drive_index : ''}` : r.element) },
        { label: 'Address', num: true, cell: (r) => String(r.address) },
        { label: 'Barcode', cell: (r) => (r.barcode ? h('code', null, r.barcode) : r.full ? h('span', { class: 'muted' }, 'no barcode') : '') },
        { label: 'Pool', cell: (r) => r.pool || '' },
        { label: 'Media set', cell: (r) => (r.media_set ? h('code', { title: r.media_set }, `${r.media_set.slice(0, 8)}${r.set_seq != null ? ' #' + r.set_seq : ''}`) : '') },
        { label: 'Written', num: true, cell: (r) => (r.bytes_written ? fmtBytes(r.bytes_written) : '') },
        { label: 'Status', cell: (r) => tapeStatus(r) },
        { label: 'Drive serial', cell: (r) => r.drive_serial || '' },
        { label: '', class: 'actions', cell: tapeActions },
      ], rows, { id: 'tape-table', rowAttrs: (r) => ({ 'data-element': r.element, 'data-barcode': r.barcode || '', 'data-address': r.address }) }) : emptyState('The library reports no elements', null)),
      poolsCard(pools, open),
      copiesCard(copies, open),
    ]);
  }

  function labelForm(r, poolNames) {
    const names = poolNames.length ? poolNames : ['default'];
    const pool = input('label-pool', { value: r.pool || names[0], required: true, class: 'input mono', list: 'label-pool-names', maxlength: 100 });
    const list = h('datalist', { id: 'label-pool-names' }, names.map((n) => h('option', { value: n })));
    const force = h('input', { type: 'checkbox', id: 'label-force' });
    const submit = h('button', { id: 'label-submit', class: 'btn btn-primary', type: 'submit' }, 'Write label');
    const form = h('form', { id: 'label-form', class: 'form', novalidate: true },
      h('p', null, 'Writes a rackvault label at the start of ', h('code', null, r.barcode), ' and assigns it to a pool. A cartridge that holds data is refused unless you force it.'),
      field('Pool', pool, 'An existing pool, or a new name (it gets the default policy: continue, 30 days retention).'), list,
      h('label', { class: 'check', for: 'label-force' }, force, ' Overwrite a cartridge that holds data (its content is lost)'),
      h('div', { class: 'form-actions' }, submit));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (!pool.value.trim()) return showBanner('error', 'Enter a pool name.');
      if (force.checked && !window.confirm(`Overwrite cartridge ${r.barcode}? Everything on it is lost.`)) return;
      await busy(submit, async () => {
        const l = await api('POST', '/tape/label', { barcode: r.barcode, pool: pool.value.trim(), force: force.checked });
        state.flash = { kind: 'success', text: `Cartridge ${l.barcode} labelled for pool ${l.pool}.` };
        go('#/tape');
      });
    });
    return form;
  }

  function destageForm(points, poolNames, preselect) {
    const sorted = points.slice().sort((a, b) => (b.created_unix || 0) - (a.created_unix || 0));
    const point = select('destage-point', sorted.map((p) => ({ value: `${p.name}@${p.id}`, label: `${p.name}@${p.id} — ${fmtDate(p.created_unix)}` })), preselect || '');
    const names = poolNames.length ? poolNames : ['default'];
    const pool = select('destage-pool', names.map((n) => ({ value: n, label: n })), names[0]);
    const submit = h('button', { id: 'destage-submit', class: 'btn btn-primary', type: 'submit' }, 'Start destage');
    const form = h('form', { id: 'destage-form', class: 'form', novalidate: true },
      h('p', null, 'Copies the restore point to the pool’s current media set; chunks already on that set are not written again.'),
      h('div', { class: 'grid-2 tight' }, field('Restore point', point), field('Pool', pool, 'The pool needs labelled cartridges.')),
      h('div', { class: 'form-actions' }, submit));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      await busy(submit, async () => {
        const t = await api('POST', '/tape/destages', { point: point.value, pool: pool.value });
        state.flash = { kind: 'success', text: `Destage of ${point.value} to pool ${pool.value} started.` };
        go(`#/tasks/${t.id}`);
      });
    });
    return form;
  }

  const ALLOCATION_LABEL = { continue: 'Continue the current set', 'per-job': 'New set per job', daily: 'New set each day', weekly: 'New set each week' };

  function poolsCard(pools, open) {
    const add = can('admin') ? button('Add pool', { class: 'btn', id: 'pool-add' }, () => open('New pool', 'pool-card', poolForm(null))) : null;
    return card('Pools', { id: 'tape-pools', actions: add }, pools.length ? table([
      { label: 'Name', cell: (p) => h('span', { class: 'strong' }, p.name) },
      { label: 'Media sets', cell: (p) => ALLOCATION_LABEL[p.allocation] || p.allocation },
      { label: 'Retention', num: true, cell: (p) => `${p.retention_days} d` },
      { label: 'Tapes per restore', num: true, cell: (p) => (p.max_restore_tapes != null ? `≤ ${p.max_restore_tapes}` : 'unbounded') },
      { label: '', class: 'actions', cell: (p) => (can('admin') ? button('Edit', { class: 'btn btn-small', test: 'pool-edit' }, () => open(`Pool ${p.name}`, 'pool-card', poolForm(p))) : '') },
    ], pools, { id: 'pools-table', rowAttrs: (p) => ({ 'data-pool': p.name }) })
      : emptyState('No pools yet', 'A pool groups cartridges with one policy: how media sets are started, how long they are kept, and how many tapes a restore may need. Labelling a cartridge for a new pool name creates it.', add));
  }

  function poolForm(p) {
    const name = input('pool-name', { value: p ? p.name : '', required: true, class: 'input mono', disabled: !!p, maxlength: 100, placeholder: 'offsite-weekly' });
    const alloc = select('pool-allocation', Object.entries(ALLOCATION_LABEL).map(([value, label]) => ({ value, label })), p ? p.allocation : 'continue');
    const retention = input('pool-retention', { type: 'number', min: 0, value: String(p ? p.retention_days : 30) });
    const bound = input('pool-max-tapes', { type: 'number', min: 1, value: p && p.max_restore_tapes != null ? String(p.max_restore_tapes) : '', placeholder: 'unbounded' });
    const submit = h('button', { id: 'pool-save', class: 'btn btn-primary', type: 'submit' }, p ? 'Save pool' : 'Add pool');
    const form = h('form', { id: 'pool-form', class: 'form', novalidate: true },
      h('div', { class: 'grid-2 tight' }, field('Name', name), field('Media sets', alloc)),
      h('div', { class: 'grid-2 tight' },
        field('Retention (days)', retention, 'A set may be overwritten this many days after it was last written.'),
        field('Tapes per restore', bound, 'Rewrite a restore point whole when restoring it would need more cartridges than this. Empty: no bound.')),
      h('div', { class: 'form-actions' }, submit));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const n = name.value.trim();
      if (!n) return showBanner('error', 'Enter a pool name.');
      const b = { allocation: alloc.value, retention_days: Number(retention.value || 0) };
      if (bound.value !== '') b.max_restore_tapes = Number(bound.value);
      await busy(submit, async () => {
        await api('PUT', `/tape/pools/${encodeURIComponent(n)}`, b);
        state.flash = { kind: 'success', text: `Pool ${n} saved.` };
        go('#/tape');
      });
    });
    return form;
  }

  function copiesCard(copies, open) {
    return card('Restore points on tape', { id: 'tape-copies' }, copies.length ? table([
      { label: 'Restore point', cell: (c) => h('span', { class: 'strong' }, `${c.point.name}@${c.point.id}`) },
      { label: 'Written', cell: (c) => dateCell(c.written_unix) },
      { label: 'Starts on', cell: (c) => h('code', null, `${c.barcode} file ${c.file}`) },
      { label: 'Media set', cell: (c) => h('code', { title: c.set_id }, c.set_id.slice(0, 8)) },
      { label: 'Size', num: true, cell: (c) => fmtBytes((c.point.disks || []).reduce((a, d) => a + (d.size || 0), 0)) },
      { label: '', class: 'actions', cell: (c) => (can('operator') ? button('Restore from tape…', { class: 'btn btn-small', test: 'tape-restore' }, () => open(`Restore ${c.point.name}@${c.point.id} from tape`, 'tape-restore-card', tapeRestoreForm(c))) : '') },
    ], copies, { id: 'copies-table', rowAttrs: (c) => ({ 'data-point': `${c.point.name}@${c.point.id}` }) })
      : emptyState('Nothing on tape yet', 'Destage a restore point to copy it to tape; it can then be restored from tape even after it has left the disk tier.'));
  }

  function tapeRestoreForm(c) {
    const spec = `${c.point.name}@${c.point.id}`;
    const disks = c.point.disks || [];
    const disk = select('tape-restore-disk', [{ value: '', label: 'All disks and configuration files' }].concat(disks.map((d) => ({ value: d.label, label: `${d.label} — ${fmtBytes(d.size)}` }))), '');
    const target = input('tape-restore-target', { value: `${c.point.name}-${c.point.id}-tape`.replace(/[^A-Za-z0-9._-]/g, '_'), required: true, class: 'input mono', maxlength: 100 });
    const submit = h('button', { id: 'tape-restore-submit', class: 'btn btn-primary', type: 'submit' }, 'Start restore from tape');
    const form = h('form', { id: 'tape-restore-form', class: 'form', novalidate: true },
      h('p', null, 'Reads ', h('strong', null, spec), ' from its media set (starting on ', h('code', null, c.barcode), ') into the appliance’s restore area. Every chunk is checked against its digest.'),
      h('div', { class: 'grid-2 tight' }, field('Disk', disk), field('Target name', target, 'Written into <data>/restores/<target>/.')),
      h('div', { class: 'form-actions' }, submit));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const name = target.value.trim();
      if (!name) return showBanner('error', 'Enter a target name.');
      const b = { point: spec, target: name };
      if (disk.value) b.disk = disk.value;
      await busy(submit, async () => {
        const t = await api('POST', '/tape/restores', b);
        state.flash = { kind: 'success', text: `Restore of ${spec} from tape started.` };
        go(`#/tasks/${t.id}`);
      });
    });
    return form;
  }

  function tapeStatus(r) {
    if (r.cleaning) return h('span', { class: 'badge state-queued' }, 'cleaning');
    if (!r.full) return h('span', { class: 'muted' }, 'empty');
    if (r.full_tape) return h('span', { class: 'badge state-interrupted' }, 'tape full');
    if (r.medium_id) return h('span', { class: 'badge state-succeeded' }, 'labelled');
    return h('span', { class: 'badge state-disabled' }, 'unlabelled');
  }

  // -------------------------------------------------------------------------------------------
  // Users, tokens, audit, settings

  async function pageUsers(ctx) {
    const users = await api('GET', '/users');
    if (!ctx.alive()) return;
    const name = input('user-name', { required: true, autocomplete: 'off', maxlength: 64 });
    const pw = input('user-password', { type: 'password', required: true, autocomplete: 'new-password', minlength: 10 });
    const pw2 = input('user-confirm', { type: 'password', required: true, autocomplete: 'new-password', minlength: 10 });
    const role = roleSelect('user-role', 'operator');
    const submit = h('button', { id: 'user-add', class: 'btn btn-primary', type: 'submit' }, 'Add user');
    const form = h('form', { id: 'user-form', class: 'form', novalidate: true },
      h('div', { class: 'grid-2 tight' }, field('User name', name), roleField('Role', role)),
      h('div', { class: 'grid-2 tight' }, field('Password', pw, 'At least 10 characters.'), field('Confirm password', pw2)),
      h('div', { class: 'form-actions' }, submit));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (!name.value.trim()) return showBanner('error', 'Enter a user name.');
      if (pw.value.length < 10) return showBanner('error', 'The password must have at least 10 characters.');
      if (pw.value !== pw2.value) return showBanner('error', 'The two passwords do not match.');
      await busy(submit, async () => {
        await api('POST', '/users', { name: name.value.trim(), password: pw.value, role: role.value });
        state.flash = { kind: 'success', text: `User ${name.value.trim()} added.` };
        go('#/users');
      });
    });
    append(ctx.content, [
      card(`${users.length} user${users.length === 1 ? '' : 's'}`, {}, table([
        { label: 'Name', cell: (u) => h('span', { class: 'strong' }, u.name, u.name === state.session.user ? h('span', { class: 'muted' }, ' (you)') : null) },
        { label: 'Role', cell: (u) => h('span', { class: `role role-${u.role}` }, ROLE_LABEL[u.role] || u.role) },
        { label: 'Created', cell: (u) => dateCell(u.created_unix) },
        { label: '', class: 'actions', cell: (u) => (u.name === state.session.user ? '' : button('Delete', { class: 'btn btn-small btn-danger-quiet', test: 'user-delete' }, (ev) => {
          if (!window.confirm(`Delete the user ${u.name}? Their sessions end at once.`)) return;
          busy(ev.currentTarget, async () => {
            await api('DELETE', `/users/${encodeURIComponent(u.name)}`);
            state.flash = { kind: 'success', text: `User ${u.name} deleted.` };
            go('#/users');
          });
        })) },
      ], users, { id: 'users-table', rowAttrs: (u) => ({ 'data-user': u.name }) })),
      card('Add a user', {}, form),
    ]);
  }

  async function pageTokens(ctx) {
    const tokens = await api('GET', '/tokens');
    if (!ctx.alive()) return;
    const secretBox = h('div', { id: 'token-secret-box' });
    const name = input('token-name', { required: true, autocomplete: 'off', placeholder: 'monitoring', maxlength: 64 });
    const role = roleSelect('token-role', 'auditor', ['metrics', 'auditor', 'operator', 'admin', 'replication', 'pull']);
    const submit = h('button', { id: 'token-create', class: 'btn btn-primary', type: 'submit' }, 'Create token');
    const form = h('form', { id: 'token-form', class: 'form', novalidate: true },
      h('div', { class: 'grid-2 tight' }, field('Name', name, 'What the token is for, e.g. the script or system that uses it.'), roleField('Role', role)),
      h('div', { class: 'form-actions' }, submit));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (!name.value.trim()) return showBanner('error', 'Enter a name for the token.');
      await busy(submit, async () => {
        const t = await api('POST', '/tokens', { name: name.value.trim(), role: role.value });
        const code = h('code', { id: 'token-secret', class: 'secret' }, t.token);
        const copy = button('Copy', { id: 'token-copy' }, async () => {
          try {
            await navigator.clipboard.writeText(t.token);
            copy.textContent = 'Copied';
          } catch (e) {
            const r = document.createRange();
            r.selectNodeContents(code);
            const sel = window.getSelection();
            sel.removeAllRanges();
            sel.addRange(r);
            copy.textContent = 'Selected — press Ctrl+C';
          }
        });
        clear(secretBox).appendChild(card(`Token “${t.name}” created`, { class: 'secret-card' },
          h('p', null, h('strong', null, 'Copy the secret now: it will not be shown again.'), ' Use it as ', h('code', null, 'Authorization: Bearer <token>'), '.'),
          h('div', { class: 'secret-row' }, code, copy),
          button('Done', { class: 'btn btn-quiet' }, () => go('#/tokens'))));
        name.value = '';
        refresh();
      });
    });
    const listBox = h('div');
    const refresh = async () => {
      const list = await api('GET', '/tokens').catch((e) => {
        showError(e);
        return null;
      });
      if (list && ctx.alive()) renderList(list);
    };
    const renderList = (list) => {
      clear(listBox).appendChild(list.length ? table([
        { label: 'ID', cell: (t) => h('code', null, String(t.id)) },
        { label: 'Name', cell: (t) => t.name },
        { label: 'Role', cell: (t) => h('span', { class: `role role-${t.role}` }, ROLE_LABEL[t.role] || t.role) },
        { label: 'Created', cell: (t) => dateCell(t.created_unix) },
        { label: '', class: 'actions', cell: (t) => button('Revoke', { class: 'btn btn-small btn-danger-quiet', test: 'token-delete' }, (ev) => {
          if (!window.confirm(`Revoke the token ${t.name}? Scripts using it stop working at once.`)) return;
          busy(ev.currentTarget, async () => {
            await api('DELETE', `/tokens/${encodeURIComponent(t.id)}`);
            notice(`Token ${t.name} revoked.`);
            refresh();
          });
        }) },
      ], list, { id: 'tokens-table' }) : emptyState('No API tokens', 'Tokens let scripts and monitoring use the API without a password.'));
    };
    renderList(tokens);
    append(ctx.content, [secretBox, card('Tokens', {}, listBox), card('Create a token', {}, form)]);
  }

  // Other appliances and S3 buckets this one replicates to. Adding an appliance pins its
  // certificate: the admin reads the fingerprint it presents, compares it with the remote's
  // own, and confirms. A bucket's points can be listed and pulled back here to restore them.
  async function pageRemotes(ctx) {
    const remotes = await api('GET', '/remotes');
    if (!ctx.alive()) return;
    const listBox = h('div');
    const pointsBox = h('div');
    const trust = (r) => (r.kind === 's3'
      ? h('code', null, `${r.s3.bucket}/${r.s3.prefix}/${r.namespace}`)
      : h('code', { class: 'fingerprint', title: r.fingerprint }, `${r.fingerprint.slice(0, 23)}…`));
    const renderList = (list) => {
      clear(listBox).appendChild(list.length ? table([
        { label: 'Name', cell: (r) => r.name },
        { label: 'Kind', cell: (r) => (r.kind === 's3' ? 'S3 bucket' : (r.pull ? `Pull from${r.schedule ? ` (${r.schedule})` : ''}` : 'Appliance')) },
        { label: 'Address', cell: (r) => h('code', null, r.url) },
        { label: 'Where / certificate', cell: trust },
        { label: 'Limits', cell: (r) => [r.max_mbps ? `${r.max_mbps} MB/s` : null, r.window ? `${r.window} UTC` : null].filter(Boolean).join(', ') || 'none' },
        { label: '', class: 'actions', cell: (r) => h('div', { class: 'row-actions' },
          can('operator') ? button('Test', { class: 'btn btn-small', test: 'remote-test' }, (ev) => busy(ev.currentTarget, async () => {
            const t = await api('POST', `/remotes/${encodeURIComponent(r.id)}/test`);
            notice(t.message);
          })) : null,
          r.kind === 's3' || r.pull ? button('Points', { class: 'btn btn-small', test: 'remote-points' }, (ev) => busy(ev.currentTarget, async () => {
            renderPoints(r, await api('GET', `/remotes/${encodeURIComponent(r.id)}/points`));
          })) : null,
          r.pull && can('operator') ? button('Pull new', { class: 'btn btn-small', test: 'remote-pull-new' }, (ev) => busy(ev.currentTarget, async () => {
            const t = await api('POST', `/remotes/${encodeURIComponent(r.id)}/pull`);
            notice(`Pulling every new point from ${r.name} (task ${t.id}).`);
          })) : null,
          can('admin') ? button('Delete', { class: 'btn btn-small btn-danger-quiet', test: 'remote-delete' }, (ev) => {
            if (!window.confirm(`Forget the remote ${r.name}? What it received stays there.`)) return;
            busy(ev.currentTarget, async () => {
              await api('DELETE', `/remotes/${encodeURIComponent(r.id)}`);
              notice(`Remote ${r.name} deleted.`);
              renderList(await api('GET', '/remotes'));
            });
          }) : null) },
      ], list, { id: 'remotes-table' }) : emptyState('No remotes', 'Replicate restore points offsite to another rackvault appliance or to an S3 bucket.'));
    };
    // The points a bucket holds: pull one back to restore it here.
    const renderPoints = (r, points) => {
      const body = points.length ? table([
        { label: 'Point', cell: (p) => h('code', null, p.point) },
        { label: 'Made', cell: (p) => fmtDate(p.created_unix) },
        { label: 'Size', cell: (p) => fmtBytes(p.bytes_logical) },
        { label: 'Locked until', cell: (p) => (p.locked_until_unix ? fmtDate(p.locked_until_unix) : 'not locked') },
        { label: 'Here', class: 'actions', cell: (p) => (p.here
          ? h('a', { href: `#/points/${encodeURIComponent(p.here)}` }, p.here)
          : (can('operator') ? button('Pull to restore', { class: 'btn btn-small', test: 'remote-pull' }, (ev) => busy(ev.currentTarget, async () => {
            const t = await api('POST', `/remotes/${encodeURIComponent(r.id)}/points/${encodeURIComponent(p.point)}/pull`);
            notice(`Pulling ${p.point} from ${r.name} (task ${t.id}); when it is done, the point is listed under Restore points.`);
          })) : '')) },
      ], points, { id: 'remote-points-table' }) : emptyState('Nothing there yet', r.s3 ? `No restore point of this appliance is in ${r.s3.bucket} under ${r.s3.prefix}/${r.namespace}/.` : `${r.name} offers no restore point yet.`);
      clear(pointsBox).appendChild(card(`Points in ${r.name}`, { id: 'remote-points-card' }, body));
    };
    renderList(remotes);
    const parts = [card('Remotes', {}, listBox), pointsBox];
    if (can('admin')) {
      parts.push(card('Add a remote appliance', {}, remoteForm(renderList)));
      parts.push(card('Add an S3 bucket', {}, s3RemoteForm(renderList)));
    }
    append(ctx.content, parts);
  }

  // An S3 bucket as a remote: packs go there as objects, encrypted when the store is; with
  // object lock, points stay undeletable for their immutability window.
  function s3RemoteForm(renderList) {
    const url = input('s3-endpoint', { required: true, placeholder: 'https://s3.example.com', class: 'input mono' });
    const bucket = input('s3-bucket', { required: true, placeholder: 'backups', class: 'input mono', maxlength: 63 });
    const region = input('s3-region', { placeholder: 'us-east-1', class: 'input mono' });
    const prefix = input('s3-prefix', { placeholder: 'rackvault', class: 'input mono' });
    const access = input('s3-access-key', { required: true, autocomplete: 'off', class: 'input mono' });
    const secret = input('s3-secret-key', { required: true, type: 'password', autocomplete: 'off', class: 'input mono' });
    const name = input('s3-name', { required: true, placeholder: 'cloud', maxlength: 64 });
    const namespace = input('s3-namespace', { required: true, placeholder: 'site-a', class: 'input mono', maxlength: 32 });
    const lockMode = select('s3-lock', [{ value: '', label: 'No object lock' }, { value: 'governance', label: 'Governance' }, { value: 'compliance', label: 'Compliance' }], '');
    const keep = input('s3-keep-last', { type: 'number', min: 1, placeholder: 'empty: keep all' });
    const s3Window = input('s3-window', { placeholder: 'e.g. 22:00-06:00 (empty: any time)', class: 'input mono' });
    const s3Mbps = input('s3-max-mbps', { type: 'number', min: 1, placeholder: 'empty: no limit' });
    const submit = h('button', { id: 's3-submit', class: 'btn btn-primary', type: 'submit' }, 'Add bucket');
    const form = h('form', { id: 's3-form', class: 'form', novalidate: true },
      h('div', { class: 'grid-2 tight' },
        field('Endpoint', url, 'https://host[:port] of the S3 service.'),
        field('Bucket', bucket)),
      h('div', { class: 'grid-2 tight' },
        field('Region', region, 'Empty: us-east-1.'),
        field('Prefix', prefix, 'Empty: rackvault.')),
      h('div', { class: 'grid-2 tight' },
        field('Access key', access),
        field('Secret key', secret, 'Stored sealed, never shown again.')),
      h('div', { class: 'grid-2 tight' },
        field('Name', name, 'How this appliance calls it.'),
        field('Namespace', namespace, 'This appliance’s folder in the bucket; give the same one on a new appliance to restore from it.')),
      h('div', { class: 'grid-2 tight' },
        field('Object lock', lockMode, 'For points with an immutability window: the bucket itself refuses deleting them before it ends (the bucket needs object lock on).'),
        field('Keep in the bucket', keep, 'The newest this many points of each name; older ones are deleted after each push once their lock ends.')),
      h('div', { class: 'grid-2 tight' },
        field('Transfer window (UTC)', s3Window, 'Transfers run only inside it; outside it they wait, and pause between batches.'),
        field('Bandwidth limit (MB/s)', s3Mbps)),
      h('div', { class: 'form-actions' }, submit));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (!url.value.trim() || !bucket.value.trim() || !access.value.trim() || !secret.value) return showBanner('error', 'Enter the endpoint, the bucket, the access key and the secret key.');
      if (!name.value.trim() || !namespace.value.trim()) return showBanner('error', 'Enter a name and the namespace.');
      await busy(submit, async () => {
        const s3 = { bucket: bucket.value.trim(), access_key: access.value.trim(), secret_key: secret.value };
        if (region.value.trim()) s3.region = region.value.trim();
        if (prefix.value.trim()) s3.prefix = prefix.value.trim();
        if (lockMode.value) s3.lock = lockMode.value;
        if (keep.value) s3.keep_last = Number(keep.value);
        const body = { name: name.value.trim(), url: url.value.trim(), namespace: namespace.value.trim(), s3 };
        if (s3Window.value.trim()) body.window = s3Window.value.trim();
        if (s3Mbps.value) body.max_mbps = Number(s3Mbps.value);
        await api('POST', '/remotes', body);
        notice(`Bucket ${s3.bucket} added as remote ${body.name}.`);
        secret.value = '';
        renderList(await api('GET', '/remotes'));
      });
    });
    return form;
  }

  function remoteForm(renderList) {
    const url = input('remote-url', { required: true, placeholder: 'https://offsite.example:8443', class: 'input mono' });
    const read = button('Read its certificate', { id: 'remote-read-fingerprint' }, (ev) => busy(ev.currentTarget, async () => {
      const r = await api('POST', '/remotes/fingerprint', { url: url.value.trim() });
      fingerprint.value = r.fingerprint;
      confirmBox.checked = false;
    }));
    const fingerprint = input('remote-fingerprint', { required: true, class: 'input mono', placeholder: 'AB:CD:…' });
    const confirmBox = h('input', { id: 'remote-confirm', type: 'checkbox' });
    const name = input('remote-name', { required: true, placeholder: 'offsite', maxlength: 64 });
    const namespace = input('remote-namespace', { required: true, placeholder: 'site-a', class: 'input mono', maxlength: 32 });
    const token = input('remote-token', { required: true, type: 'password', autocomplete: 'off', class: 'input mono' });
    const mbps = input('remote-max-mbps', { type: 'number', min: 1, placeholder: 'empty: no limit' });
    const direction = select('remote-direction', [{ value: 'push', label: 'Push: this appliance sends its points there' }, { value: 'pull', label: 'Pull: this appliance fetches that one’s points' }], 'push');
    const schedule = input('remote-schedule', { placeholder: 'e.g. 03:00 (empty: by hand)', class: 'input mono' });
    const window_ = input('remote-window', { placeholder: 'e.g. 22:00-06:00 (empty: any time)', class: 'input mono' });
    const submit = h('button', { id: 'remote-submit', class: 'btn btn-primary', type: 'submit' }, 'Add remote');
    const form = h('form', { id: 'remote-form', class: 'form', novalidate: true },
      h('div', { class: 'grid-2 tight' },
        field('Address', url, 'The other appliance’s https://host:port.'),
        h('div', { class: 'field' }, h('label', null, '\u00a0'), read)),
      field('Certificate fingerprint (SHA-256)', fingerprint, 'Compare it with the fingerprint the remote printed at its first start or shows in its settings. It is pinned: a remote presenting another certificate is refused.'),
      h('label', { class: 'check' }, confirmBox, ' I compared this fingerprint with the remote’s own'),
      h('div', { class: 'grid-2 tight' },
        field('Direction', direction, 'Pull keeps the offsite copies out of reach of the source: it holds no credential to this appliance.'),
        field('Pull schedule', schedule, 'Pull only: when to fetch every point not here yet, as a job’s schedule.')),
      h('div', { class: 'grid-2 tight' },
        field('Name', name, 'How this appliance calls it.'),
        field('Namespace', namespace, 'Push: the name of the replication token made on the remote; points arrive there as <namespace>.<name>. Pull: points arrive here as <namespace>.<name>.')),
      h('div', { class: 'grid-2 tight' },
        field('Token', token, 'Made on the remote under API tokens: role Replication to push there, role Pull to pull from it. Stored sealed, never shown again.'),
        field('Bandwidth limit (MB/s)', mbps)),
      field('Transfer window (UTC)', window_, 'Transfers run only inside it; outside it they wait, and pause between batches.'),
      h('div', { class: 'form-actions' }, submit));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (!url.value.trim() || !fingerprint.value.trim()) return showBanner('error', 'Enter the address and read its certificate fingerprint.');
      if (!confirmBox.checked) return showBanner('error', 'Compare the fingerprint with the remote’s own and tick the box to confirm it.');
      if (!name.value.trim() || !namespace.value.trim() || !token.value) return showBanner('error', 'Enter a name, the namespace and the token.');
      await busy(submit, async () => {
        const body = { name: name.value.trim(), url: url.value.trim(), fingerprint: fingerprint.value.trim(), namespace: namespace.value.trim(), token: token.value };
        if (mbps.value) body.max_mbps = Number(mbps.value);
        if (window_.value.trim()) body.window = window_.value.trim();
        if (direction.value === 'pull') {
          body.pull = true;
          if (schedule.value.trim()) body.schedule = schedule.value.trim();
        }
        await api('POST', '/remotes', body);
        notice(`Remote ${body.name} added; its certificate is pinned.`);
        token.value = '';
        renderList(await api('GET', '/remotes'));
      });
    });
    return form;
  }

  async function pageAudit(ctx) {
    const PAGE = 200;
    const entries = await api('GET', `/audit?limit=${PAGE}`);
    let complete = entries.length < PAGE;
    if (!ctx.alive()) return;
    if (!entries.length) {
      ctx.content.appendChild(card(null, {}, emptyState('The audit log is empty', 'Sign-ins and every change to the appliance are recorded here.')));
      return;
    }
    const filter = input('audit-filter', { type: 'search', placeholder: 'Filter by user, action or detail', class: 'input input-inline' });
    const box = h('div');
    const render = () => {
      const q = filter.value.trim().toLowerCase();
      const match = q ? entries.filter((e) => `${e.user} ${e.action} ${e.detail}`.toLowerCase().includes(q)) : entries;
      clear(box);
      box.appendChild(table([
        { label: 'Time', cell: (e) => dateCell(e.unix, true) },
        { label: 'User', cell: (e) => e.user || '—' },
        { label: 'Action', cell: (e) => h('code', null, e.action) },
        { label: 'Detail', cell: (e) => (typeof e.detail === 'string' ? e.detail : JSON.stringify(e.detail)) },
      ], match, { id: 'audit-table' }));
      if (!complete) {
        const more = button('Show older entries', { id: 'audit-more' }, async () => {
          await busy(more, async () => {
            const older = await api('GET', `/audit?limit=${PAGE}&before=${entries[entries.length - 1].id}`);
            entries.push(...older);
            complete = older.length < PAGE;
            render();
          });
        });
        box.appendChild(h('div', { class: 'more' }, more));
      }
    };
    filter.addEventListener('input', render);
    render();
    ctx.content.appendChild(card(`${entries.length} entr${entries.length === 1 ? 'y' : 'ies'}`, { actions: filter }, box));
  }

  async function pageSettings(ctx) {
    const st = await api('GET', '/settings');
    if (!ctx.alive()) return;
    const fp = h('code', { id: 'settings-fingerprint', test: 'fingerprint' }, fmtFingerprint(st.tls_fingerprint_sha256));
    const usage = st.store || {};
    const parts = [
      card('Appliance', {}, h('dl', { class: 'kv kv-wide' },
        fact('Version', (state.setup && state.setup.appliance && state.setup.appliance.version) || '—'),
        fact('Data directory', h('code', null, st.data_dir || '—')),
        fact('TLS fingerprint (SHA-256)', fp),
        fact('Stored', fmtBytes(usage.bytes_stored)),
        fact('Protected data', fmtBytes(usage.bytes_logical)),
        fact('Space saving', usage.dedup_ratio ? `${Number(usage.dedup_ratio).toFixed(2)}×` : '—'),
        fact('Restore points', usage.restore_points != null ? String(usage.restore_points) : '—'))),
    ];
    parts.push(await systemCard());
    parts.push(await networkCard());
    if (!ctx.alive()) return;
    if (can('admin')) parts.push(settingsCard(st));
    else {
      const lim = st.settings || {};
      parts.push(card('Tasks, tape library and store upkeep', { id: 'limits-card' }, h('dl', { class: 'kv kv-wide' },
        fact('Tasks at once', `${lim.max_tasks} in all, ${lim.max_tasks_per_host} per host, ${lim.max_tasks_per_datastore} per datastore`),
        fact('Tape library', st.tape_changer ? h('code', null, st.tape_changer) : 'none'),
        fact('Time zone (retention)', lim.time_zone || 'the system’s', 'settings-time-zone-ro'),
        fact('Capacity watermarks', `high ${lim.capacity_high_pct}%, low ${lim.capacity_low_pct}%`),
        fact('Maintenance', h('span', null, h('code', null, lim.maintenance_schedule || '—'), ' UTC')),
        fact('Scheduled verify', lim.verify_schedule ? h('span', null, h('code', null, lim.verify_schedule), ` UTC, each pack every ${lim.verify_skip_days} days`) : 'only on request'))));
    }
    if (can('operator')) parts.push(gcCard(st.settings || {}));
    if (can('admin')) {
      const cert = h('textarea', { id: 'cert-pem', class: 'input mono', rows: 6, placeholder: '-----BEGIN CERTIFICATE-----', spellcheck: 'false' });
      const key = h('textarea', { id: 'key-pem', class: 'input mono', rows: 6, placeholder: '-----BEGIN PRIVATE KEY-----', spellcheck: 'false' });
      const certFile = h('input', { type: 'file', id: 'cert-file', accept: '.pem,.crt,.cer,text/plain' });
      const keyFile = h('input', { type: 'file', id: 'key-file', accept: '.pem,.key,text/plain' });
      const fill = (fileInput, area) => fileInput.addEventListener('change', () => {
        const f = fileInput.files && fileInput.files[0];
        if (!f) return;
        if (f.size > 256 * 1024) return showBanner('error', `${f.name} is too large for a PEM file.`);
        f.text().then((t) => {
          area.value = t;
        }, (e) => showError(e));
      });
      fill(certFile, cert);
      fill(keyFile, key);
      const submit = h('button', { id: 'cert-upload', class: 'btn btn-primary', type: 'submit' }, 'Install certificate');
      const form = h('form', { id: 'cert-form', class: 'form', novalidate: true },
        h('p', { class: 'help' }, 'Replace the self-signed certificate with one your browsers trust. The certificate chain and its private key, both PEM. The new certificate is used for new connections.'),
        h('div', { class: 'grid-2 tight' },
          h('div', { class: 'field' }, h('label', { for: 'cert-pem' }, 'Certificate chain (PEM)'), cert, certFile),
          h('div', { class: 'field' }, h('label', { for: 'key-pem' }, 'Private key (PEM)'), key, keyFile)),
        h('div', { class: 'form-actions' }, submit));
      form.addEventListener('submit', async (ev) => {
        ev.preventDefault();
        if (!/-----BEGIN [A-Z ]*CERTIFICATE-----/.test(cert.value)) return showBanner('error', 'The certificate must be PEM text starting with -----BEGIN CERTIFICATE-----.');
        if (!/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(key.value)) return showBanner('error', 'The key must be a PEM private key (-----BEGIN PRIVATE KEY-----).');
        await busy(submit, async () => {
          const r = await api('PUT', '/settings/certificate', { cert_pem: cert.value, key_pem: key.value });
          fp.textContent = fmtFingerprint(r.tls_fingerprint_sha256);
          key.value = '';
          keyFile.value = '';
          notice('Certificate installed. New connections use it; check the new fingerprint when your browser asks.');
        });
      });
      parts.push(card('TLS certificate', { id: 'cert-card' }, form));
      parts.push(await notificationsCard());
    }
    append(ctx.content, parts);
  }

  // Webhook and e-mail notifications (admin): save, then "Send test".
  async function notificationsCard() {
    const n = await api('GET', '/settings/notifications');
    const w = n.webhook || {};
    const m = n.smtp || {};
    const check = (id, on, text) => {
      const c = h('input', { type: 'checkbox', id });
      c.checked = !!on;
      return [c, h('label', { class: 'check', for: id }, c, ` ${text}`)];
    };
    const hookUrl = input('notify-webhook-url', { value: w.url || '', class: 'input mono', placeholder: 'https://hooks.example.com/rackvault — empty: no webhook' });
    const hookSecret = input('notify-webhook-secret', { type: 'password', autocomplete: 'new-password', placeholder: w.has_secret ? 'stored — leave empty to keep, enter "-" to remove' : 'optional: signs each body (HMAC-SHA256)' });
    const hookCa = h('textarea', { id: 'notify-webhook-ca', class: 'input mono', rows: 3, placeholder: 'optional: an internal CA certificate (PEM)', spellcheck: 'false' });
    hookCa.value = w.ca_pem || '';
    const host = input('notify-smtp-host', { value: m.host || '', class: 'input mono', placeholder: 'mail.example.com — empty: no e-mail' });
    const port = input('notify-smtp-port', { type: 'number', min: 1, max: 65535, value: m.port ? String(m.port) : '', class: 'input input-narrow', placeholder: 'default' });
    const tls = select('notify-smtp-tls', [
      { value: 'starttls', label: 'STARTTLS (587), required' },
      { value: 'implicit', label: 'TLS (465)' },
      { value: 'none', label: 'None: trusted relay, no sign-in' },
    ], m.tls || 'starttls');
    const user = input('notify-smtp-user', { value: m.user || '', autocomplete: 'off', placeholder: 'optional' });
    const password = input('notify-smtp-password', { type: 'password', autocomplete: 'new-password', placeholder: m.has_password ? 'stored — leave empty to keep' : '' });
    const from = input('notify-smtp-from', { value: m.from || '', placeholder: 'rackvault@example.com' });
    const to = input('notify-smtp-to', { value: (m.to || []).join(', '), placeholder: 'ops@example.com, oncall@example.com' });
    const smtpCa = h('textarea', { id: 'notify-smtp-ca', class: 'input mono', rows: 3, placeholder: 'optional: an internal CA certificate (PEM)', spellcheck: 'false' });
    smtpCa.value = m.ca_pem || '';
    const [failed, failedLabel] = check('notify-job-failed', n.job_failed, 'A task fails or is interrupted');
    const [damage, damageLabel] = check('notify-verify-damage', n.verify_damage, 'Verify finds damage');
    const [capacity, capacityLabel] = check('notify-capacity', n.capacity, 'Store capacity crosses a watermark');
    const results = h('div', { id: 'notify-results', class: 'help' });
    const submit = h('button', { id: 'notify-save', class: 'btn btn-primary', type: 'submit' }, 'Save notifications');
    const test = h('button', { id: 'notify-test', class: 'btn', type: 'button' }, 'Send test');
    const form = h('form', { id: 'notify-form', class: 'form', novalidate: true },
      h('p', { class: 'help' }, 'Tell someone when something needs attention. Save, then send a test. Every delivery, sent or failed, is written to the audit log.'),
      h('div', { class: 'grid-2 tight' },
        field('Webhook URL', hookUrl, 'Receives a JSON POST per event; any 2xx answer is success.'),
        field('Webhook secret', hookSecret, 'Sent as X-Rackvault-Signature: sha256=<HMAC of the body>. Never shown again.')),
      field('Webhook CA certificate', hookCa, null),
      h('div', { class: 'grid-3 tight' },
        field('SMTP server', host, null),
        field('Port', port, 'Empty: 587, 465 or 25 by TLS mode.'),
        field('TLS', tls, 'Credentials never travel without TLS.')),
      h('div', { class: 'grid-2 tight' },
        field('User', user, 'Empty: no sign-in.'),
        field('Password', password, 'Never shown again.')),
      h('div', { class: 'grid-2 tight' },
        field('From', from, null),
        field('To', to, 'Comma-separated, up to 20.')),
      field('SMTP CA certificate', smtpCa, null),
      h('div', { class: 'field' }, h('label', null, 'Send when'), failedLabel, damageLabel, capacityLabel),
      h('div', { class: 'form-actions' }, submit, test),
      results);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const b = { job_failed: failed.checked, verify_damage: damage.checked, capacity: capacity.checked, webhook: null, smtp: null };
      if (hookUrl.value.trim()) {
        b.webhook = { url: hookUrl.value.trim(), ca_pem: hookCa.value.trim() || null };
        if (hookSecret.value === '-') b.webhook.secret = '';
        else if (hookSecret.value) b.webhook.secret = hookSecret.value;
      }
      if (host.value.trim()) {
        const rcpts = to.value.split(',').map((s) => s.trim()).filter(Boolean);
        if (!from.value.trim() || !rcpts.length) return showBanner('error', 'E-mail needs a From address and at least one To address.');
        b.smtp = {
          host: host.value.trim(),
          port: port.value ? Number(port.value) : null,
          tls: tls.value,
          user: user.value.trim() || null,
          from: from.value.trim(),
          to: rcpts,
          ca_pem: smtpCa.value.trim() || null,
        };
        if (password.value) b.smtp.password = password.value;
      }
      await busy(submit, async () => {
        const r = await api('PUT', '/settings/notifications', b);
        hookSecret.value = '';
        password.value = '';
        hookSecret.placeholder = r.webhook && r.webhook.has_secret ? 'stored — leave empty to keep, enter "-" to remove' : 'optional: signs each body (HMAC-SHA256)';
        password.placeholder = r.smtp && r.smtp.has_password ? 'stored — leave empty to keep' : '';
        notice('Notifications saved.');
      });
    });
    test.addEventListener('click', () => busy(test, async () => {
      clear(results);
      const out = await api('POST', '/notifications/test');
      for (const o of out) {
        results.appendChild(h('p', { class: o.ok ? 'probe-status ok' : 'probe-status failed', test: `notify-result-${o.channel}` },
          `${o.channel === 'email' ? 'E-mail' : 'Webhook'} to ${o.target}: ${o.ok ? 'sent' : `failed — ${o.error}`}`));
      }
    }));
    return card('Notifications', { id: 'notify-card' }, form);
  }

  // The appliance's address (DHCP or static) and time servers; admins change them.
  async function networkCard() {
    const n = await api('GET', '/system/network');
    const st = n.settings;
    const stateText = { applied: 'applied', pending: 'saved, not applied yet', failed: 'not applied', 'not-applicable': 'not the appliance image' };
    const facts = h('dl', { class: 'kv kv-wide' },
      fact('Addresses now', h('span', { id: 'network-addresses', class: 'mono' }, n.addresses.length ? n.addresses.join(', ') : 'none')),
      fact('Settings', h('span', { id: 'network-state', class: `network-${n.state}` }, `${stateText[n.state] || n.state} — ${n.message}`)));
    if (!can('admin')) return card('Network and time', { id: 'network-card' }, facts);
    const mode = select('network-mode', [{ value: 'dhcp', label: 'DHCP' }, { value: 'static', label: 'Static address' }], st.mode);
    const address = input('network-address', { value: st.address || '', class: 'input mono', placeholder: '192.0.2.10/24', autocomplete: 'off' });
    const gateway = input('network-gateway', { value: st.gateway || '', class: 'input mono', placeholder: '192.0.2.1 — optional', autocomplete: 'off' });
    const dns = input('network-dns', { value: (st.dns || []).join(', '), class: 'input mono', placeholder: '192.0.2.53, 192.0.2.54', autocomplete: 'off' });
    const ntp = input('network-ntp', { value: (st.ntp || []).join(', '), class: 'input mono', placeholder: 'empty: the DHCP server’s or the defaults — e.g. ntp.example.net', autocomplete: 'off' });
    const staticFields = h('div', { class: 'grid-3 tight', id: 'network-static' },
      field('Address / prefix', address, 'The appliance’s address and prefix length.'),
      field('Gateway', gateway, 'In the same subnet.'),
      field('DNS servers', dns, 'Addresses, separated by commas.'));
    const sync = () => { staticFields.hidden = mode.value !== 'static'; };
    mode.addEventListener('change', sync);
    sync();
    const submit = h('button', { id: 'network-save', class: 'btn btn-primary', type: 'submit' }, 'Save network');
    const form = h('form', { id: 'network-form', class: 'form', novalidate: true },
      field('Address', mode, 'DHCP by default.'), staticFields,
      field('Time servers (NTP)', ntp, 'Host names or addresses, separated by commas.'),
      h('div', { class: 'form-actions' }, submit));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const list = (el) => el.value.split(',').map((x) => x.trim()).filter(Boolean);
      const b = { mode: mode.value, ntp: list(ntp) };
      if (mode.value === 'static') {
        b.address = address.value.trim();
        b.gateway = gateway.value.trim() || null;
        b.dns = list(dns);
        if (!b.address.includes('/')) return showBanner('error', 'Enter the static address with its prefix length, e.g. 192.0.2.10/24.');
        if (!window.confirm(`Move the appliance to ${b.address}? This page then answers only at https://${b.address.split('/')[0]}/.`)) return;
      }
      await busy(submit, async () => {
        const r = await api('PUT', '/system/network', b);
        $('#network-state').textContent = `${stateText[r.state] || r.state} — ${r.message}`;
        notice(mode.value === 'static' ? `Saved. Open the appliance at https://${b.address.split('/')[0]}/ once it has moved.` : 'Network settings saved.');
      });
    });
    return card('Network and time', { id: 'network-card' }, facts, form);
  }

  // Task limits and the tape library (admin).
  // The system: image version, root slot, the last update (a rollback shows as an error), and
  // for admins on the appliance image the update upload and the reboot.
  async function systemCard() {
    const sys = await api('GET', '/system');
    const u = sys.update;
    const facts = h('dl', { class: 'kv kv-wide' },
      fact('Image version', h('span', { id: 'system-version' }, sys.version)),
      fact('Root slot', sys.slot ? h('code', { id: 'system-slot' }, sys.slot) : 'not the appliance image'),
      u ? fact('Last update', h('span', { id: 'system-update', class: `update-${u.state}` }, `${u.message} (${fmtDate(u.applied_unix)})`)) : null);
    const kids = [];
    if (u && u.state === 'rolled-back') {
      kids.push(h('div', { class: 'banner banner-error', role: 'alert', id: 'system-rollback' }, h('span', { class: 'banner-text' }, u.message)));
    }
    kids.push(facts);
    if (can('admin') && sys.appliance) {
      const file = h('input', { type: 'file', id: 'update-file', accept: '.rvu,application/octet-stream' });
      const force = h('input', { type: 'checkbox', id: 'update-force' });
      const reboot = button('Reboot now', { id: 'system-reboot', class: 'btn', hidden: !(u && u.state === 'reboot-pending') }, async () => {
        if (!window.confirm('Reboot the appliance now? Running tasks are stopped; the UI comes back in a minute or two.')) return;
        await busy(reboot, async () => {
          await api('POST', '/system/reboot');
          notice('The appliance is rebooting. Reload this page in a minute or two.');
        });
      });
      const apply = button('Upload and apply', { id: 'update-apply', class: 'btn btn-primary' }, async () => {
        const f = file.files && file.files[0];
        if (!f) { showError(new Error('Choose an update bundle (.rvu) first.')); return; }
        await busy(apply, async () => {
          progress.hidden = false;
          const r = await apiUpload(`/system/update${force.checked ? '?force=true' : ''}`, f, 'application/vnd.rackvault.bundle', (sent, total) => {
            progress.max = total;
            progress.value = sent;
            progressText.textContent = sent < total
              ? `Uploading ${f.name}: ${fmtBytes(sent)} of ${fmtBytes(total)} (${Math.floor((100 * sent) / total)} %)`
              : `Uploaded. Checking the signature and contents, then writing the other root slot (about a minute)…`;
          }).finally(() => { progress.hidden = true; });
          progressText.textContent = '';
          notice(r.message);
          reboot.hidden = false;
        });
      });
      const progress = h('progress', { id: 'update-progress', hidden: true });
      const progressText = h('span', { id: 'update-progress-text', class: 'muted small', role: 'status' });
      kids.push(h('div', { class: 'form-row' },
        h('label', { for: 'update-file' }, 'Update bundle '), file, ' ',
        h('label', null, force, ' allow an older version'), ' ', apply, ' ', reboot),
      h('div', { class: 'form-row' }, progress, ' ', progressText),
      h('p', { class: 'muted small' }, 'The bundle is checked whole (signature, contents, version) before anything is written; it then goes to the other root slot, and the appliance tries it three times after the reboot. If it does not come up healthy, the appliance goes back to this version by itself.'));
    }
    return card('System and updates', { id: 'system-card' }, kids);
  }

  function settingsCard(st) {
    const lim = st.settings || {};
    const num = (id, v) => input(id, { type: 'number', min: 1, max: 64, value: String(v != null ? v : 1), class: 'input input-narrow' });
    const total = num('settings-max-tasks', lim.max_tasks);
    const perHost = num('settings-max-per-host', lim.max_tasks_per_host);
    const perStore = num('settings-max-per-datastore', lim.max_tasks_per_datastore);
    const changer = input('settings-tape-changer', { value: st.tape_changer || '', class: 'input mono', placeholder: 'iscsi://vtl.example:3260/iqn.2024-01.com.example:tape/3 or /dev/sg4 — empty: no tape library' });
    const tz = input('settings-time-zone', { value: lim.time_zone || '', class: 'input mono', placeholder: 'the system’s — e.g. Europe/Berlin', autocomplete: 'off' });
    const pct = (id, v, min) => input(id, { type: 'number', min, max: 99, step: 1, value: v != null ? String(v) : '', class: 'input input-narrow' });
    const high = pct('settings-capacity-high', lim.capacity_high_pct, 1);
    const low = pct('settings-capacity-low', lim.capacity_low_pct, 0);
    const maint = input('settings-maintenance', { value: lim.maintenance_schedule || '', class: 'input mono', placeholder: '03:00' });
    const verifyWhen = input('settings-verify-schedule', { value: lim.verify_schedule || '', class: 'input mono', placeholder: 'empty: only on request — e.g. 02:00' });
    const verifySkip = input('settings-verify-skip-days', { type: 'number', min: 0, max: 3650, step: 1, value: lim.verify_skip_days != null ? String(lim.verify_skip_days) : '30', class: 'input input-narrow' });
    const submit = h('button', { id: 'settings-save', class: 'btn btn-primary', type: 'submit' }, 'Save settings');
    const form = h('form', { id: 'settings-form', class: 'form', novalidate: true },
      h('div', { class: 'grid-3 tight' },
        field('Tasks at once', total, 'In all.'),
        field('Per source host', perHost, 'So one hypervisor or NAS is not swamped.'),
        field('Per datastore', perStore, 'Per NFS export or iSCSI target.')),
      field('Tape library', changer, 'The changer’s address. The appliance opens it and reads its inventory before saving, so a wrong address is refused.'),
      h('fieldset', { class: 'fieldset', id: 'settings-upkeep' }, h('legend', null, 'Store upkeep'),
        h('div', { class: 'grid-2 tight' },
          field('Time zone', tz, 'IANA name. Retention counts days, weeks, months and years in it. Empty: the system’s.'),
          field('Maintenance schedule (UTC)', maint, h('span', null, 'When the nightly maintenance prunes every job, frees space and collects garbage: a calendar event such as ', h('code', null, '03:00'), ' or ', h('code', null, 'sun 04:30'), '.'))),
        h('div', { class: 'grid-2 tight' },
          field('Verify schedule (UTC)', verifyWhen, 'When the store is verified, incrementally: packs checked recently are left out. Empty: only when you start a verify.'),
          field('Re-check each pack every (days)', verifySkip, 'A scheduled verify re-reads a pack this long after it last checked it clean.')),
        h('div', { class: 'grid-2 tight' },
          field('High watermark (%)', high, 'Above it the appliance prunes what retention allows and removes from disk what is safely on tape; a backup it cannot make room for is refused.'),
          field('Low watermark (%)', low, 'Freeing space stops below it. Must be below the high watermark.'))),
      h('div', { class: 'form-actions' }, submit));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const b = {
        max_tasks: Number(total.value),
        max_tasks_per_host: Number(perHost.value),
        max_tasks_per_datastore: Number(perStore.value),
        tape_changer: changer.value.trim() || null,
        time_zone: tz.value.trim(),
        capacity_high_pct: Number(high.value),
        capacity_low_pct: Number(low.value),
        maintenance_schedule: maint.value.trim(),
        verify_schedule: verifyWhen.value.trim(),
        verify_skip_days: Number(verifySkip.value || '30'),
      };
      for (const [k, v] of Object.entries(b)) {
        if (k.startsWith('max_') && !(Number.isInteger(v) && v >= 1 && v <= 64)) return showBanner('error', 'Task limits are whole numbers from 1 to 64.');
      }
      if (!(Number.isInteger(b.verify_skip_days) && b.verify_skip_days >= 0)) return showBanner('error', 'Re-check days is a whole number of days.');
      if (!(Number.isInteger(b.capacity_high_pct) && b.capacity_high_pct >= 1 && b.capacity_high_pct <= 99) || !(Number.isInteger(b.capacity_low_pct) && b.capacity_low_pct >= 0 && b.capacity_low_pct < b.capacity_high_pct)) {
        return showBanner('error', 'The watermarks are whole percentages: the high one from 1 to 99, the low one from 0 to below the high one.');
      }
      if (!b.maintenance_schedule) return showBanner('error', 'Enter when the maintenance runs, e.g. 03:00.');
      await busy(submit, async () => {
        const saved = await api('PUT', '/settings', b);
        const when = $('#gc-maintenance-time');
        if (when && saved && saved.settings) when.textContent = saved.settings.maintenance_schedule;
        notice('Settings saved.');
      });
    });
    return card('Tasks, tape library and store upkeep', { id: 'limits-card' }, form);
  }

  // "Run garbage collection now" (operator and up): starts the task and links to it.
  function gcCard(lim) {
    const out = h('div', { id: 'gc-started', class: 'gc-started' });
    const run = button('Run garbage collection now', { class: 'btn', id: 'gc-run' }, (ev) => busy(ev.currentTarget, async () => {
      const t = await api('POST', '/gc', {});
      clear(out).appendChild(h('p', { class: 'probe-status ok' }, 'Garbage collection started: ',
        h('a', { href: `#/tasks/${t.id}`, id: 'gc-task-link' }, `task #${t.id}`), '.'));
    }));
    return card('Garbage collection', { id: 'gc-card', actions: run },
      h('p', { class: 'help' }, 'Pruned and deleted restore points leave chunks nothing references; a garbage collection deletes them and returns their space to the filesystem. It runs every night in the maintenance (',
        h('code', { id: 'gc-maintenance-time' }, lim.maintenance_schedule || '03:00'), ' UTC); run it now after deleting restore points to free their space at once. Backups keep running meanwhile.'),
      out);
  }

  function pageNotFound(ctx) {
    ctx.content.appendChild(emptyState('Page not found', `There is no page at ${location.hash}.`, linkButton('Dashboard', '#/dashboard')));
  }

  // -------------------------------------------------------------------------------------------
  // Start

  async function boot() {
    window.addEventListener('hashchange', route);
    const app = $('#app');
    try {
      state.setup = await api('GET', '/setup', undefined, { noRedirect: true });
      if (!state.setup.needs_setup) {
        try {
          state.session = await api('GET', '/session', undefined, { noRedirect: true });
        } catch (e) {
          if (e.status !== 401) throw e;
        }
      }
    } catch (e) {
      clear(app).className = 'standalone';
      append(app, [h('div', { class: 'auth-wrap' },
        h('div', { class: 'auth-brand' }, brandMark(), h('span', { class: 'brand-name' }, 'rackvault')),
        h('div', { class: 'banner banner-error', role: 'alert', id: 'banner' }, h('span', { class: 'banner-text' }, e.message)),
        h('div', { class: 'auth-card' }, h('p', null, 'The console could not load.'), button('Retry', { class: 'btn btn-primary', id: 'boot-retry' }, () => location.reload())))]);
      return;
    }
    route();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
  else boot();
})();
