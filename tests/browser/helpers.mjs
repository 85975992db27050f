// Shared helpers of the browser tests: the gateway under test, Chromium
// (Debian's, driven by playwright-core; never a downloaded browser), and the
// backend API.
//
// WSGATE_URL: a running gateway (scripts/browser_test.sh starts one with
// tests/browser/gateway.toml). Without it each test file starts its own from
// WSGATE_BIN (default target/release/wsgate) on a free port.
// CHROMIUM: the browser binary (default: `chromium` on PATH).
// WSGATE_API_KEY: sent as X-API-Key to /api/* when the gateway needs one.

import { spawn, execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium } from 'playwright-core';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const REPORTS = join(ROOT, 'reports', 'browser');
const API_KEY = process.env.WSGATE_API_KEY || '';

export { sleep };

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

/** The gateway under test: {url, stop()}. */
export async function startGateway() {
  if (process.env.WSGATE_URL) return { url: process.env.WSGATE_URL.replace(/\/+$/, ''), stop: async () => {} };
  return spawnGateway(join(ROOT, 'tests', 'browser', 'gateway.toml'));
}

/**
 * A gateway of the test's own, whatever WSGATE_URL says, configured by the
 * TOML text `toml` (`listen` comes from the command line): {url, stop()}.
 */
export async function startGatewayWith(toml) {
  const dir = mkdtempSync(join(tmpdir(), 'wsgate-browser-'));
  const file = join(dir, 'gateway.toml');
  writeFileSync(file, toml);
  const gw = await spawnGateway(file);
  return {
    url: gw.url,
    stop: async () => {
      await gw.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A test CA and a leaf it signs for 127.0.0.1 and localhost (ECDSA P-256),
 * made by `openssl` in `dir`: {ca, cert, key, spki}. `spki` is the base64
 * SHA-256 of the leaf's public key, for Chromium's
 * --ignore-certificate-errors-spki-list.
 */
export function makeTestCa(dir) {
  const ossl = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  ossl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=wsgate browser test CA');
  ossl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'leaf.key', '-out', 'leaf.csr', '-subj', '/CN=127.0.0.1');
  writeFileSync(join(dir, 'leaf.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n');
  ossl('x509', '-req', '-in', 'leaf.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'leaf.pem', '-days', '2', '-extfile', 'leaf.ext');
  const pub = ossl('x509', '-in', 'leaf.pem', '-pubkey', '-noout');
  const der = execFileSync('openssl', ['pkey', '-pubin', '-outform', 'der'], { input: pub });
  const spki = execFileSync('openssl', ['dgst', '-sha256', '-binary'], { input: der }).toString('base64');
  return { ca: join(dir, 'ca.pem'), cert: join(dir, 'leaf.pem'), key: join(dir, 'leaf.key'), spki };
}

/**
 * A gateway serving wss:// and https:// with a test CA of its own (see
 * makeTestCa), configured by the TOML text `toml`, whatever WSGATE_URL
 * says: {url (https://127.0.0.1:port, for the browser), api (the plain
 * listener beside it, http://, for node's fetch of the backend API),
 * spki, stop()}.
 */
export async function startTlsGateway(toml) {
  const dir = mkdtempSync(join(tmpdir(), 'wsgate-browser-tls-'));
  const certs = makeTestCa(dir);
  const file = join(dir, 'gateway.toml');
  writeFileSync(file, toml);
  const port = await freePort();
  const plain = await freePort();
  const gw = await spawnGateway(file, port, plain, ['--tls-cert', certs.cert, '--tls-key', certs.key, '--listen-plain', `127.0.0.1:${plain}`]);
  return {
    url: `https://127.0.0.1:${port}`,
    api: gw.url,
    spki: certs.spki,
    stop: async () => {
      await gw.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Start WSGATE_BIN with `config` on `port` (a free one by default); `ready`
 * is the port whose /healthz (plain HTTP) says it is up.
 */
async function spawnGateway(config, port, ready, extra = []) {
  const bin = process.env.WSGATE_BIN || join(ROOT, 'target', 'release', 'wsgate');
  port = port || (await freePort());
  ready = ready || port;
  const url = `http://127.0.0.1:${ready}`;
  const proc = spawn(bin, ['-c', config, '--listen', `127.0.0.1:${port}`, '--workers', '2', ...extra], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const exited = new Promise((ok) => proc.once('exit', ok));
  for (let i = 0; ; i++) {
    try {
      const r = await fetch(url + '/healthz');
      if (r.ok) break;
    } catch {}
    if (proc.exitCode !== null || i > 100) throw new Error(`gateway ${bin} did not start`);
    await sleep(100);
  }
  return {
    url,
    stop: async () => {
      proc.kill('SIGTERM');
      await Promise.race([exited, sleep(5000)]);
      if (proc.exitCode === null) proc.kill('SIGKILL');
    },
  };
}

/**
 * A redis-server of the test's own on a free port, without persistence:
 * {url, kill() (SIGKILL: its data is lost), start() (again, empty, same
 * port), stop()}.
 */
export async function startRedis() {
  const port = await freePort();
  let proc = null;
  const up = async () => {
    proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'no', '--loglevel', 'warning'], {
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    proc.once('error', (e) => {
      throw new Error(`cannot start redis-server (${e.message}): apt-get install redis-server`);
    });
    for (let i = 0; !(await redisAnswers(port)); i++) {
      if (proc.exitCode !== null || i > 100) throw new Error('redis-server did not start');
      await sleep(100);
    }
  };
  const kill = async () => {
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((ok) => proc.once('exit', ok));
    proc.kill('SIGKILL');
    await exited;
  };
  await up();
  return { url: `redis://127.0.0.1:${port}/0`, kill, start: up, stop: kill };
}

function redisAnswers(port) {
  return new Promise((ok) => {
    const s = connect(port, '127.0.0.1');
    let got = '';
    s.setTimeout(1000, () => s.destroy());
    s.on('connect', () => s.write('PING\r\n'));
    s.on('data', (d) => {
      got += d;
      if (got.includes('\r\n')) {
        s.destroy();
        ok(got.startsWith('+PONG'));
      }
    });
    s.on('error', () => ok(false));
    s.on('close', () => ok(got.startsWith('+PONG')));
  });
}

function chromiumPath() {
  if (process.env.CHROMIUM) return process.env.CHROMIUM;
  for (const name of ['chromium', 'chromium-browser']) {
    try {
      return execFileSync('which', [name], { encoding: 'utf8' }).trim();
    } catch {}
  }
  throw new Error('chromium not found (apt-get install chromium, or set CHROMIUM)');
}

/**
 * A headless Chromium: {browser, close()}. playwright-core gives it a fresh
 * temporary profile (--user-data-dir) of its own and removes it on close; it
 * refuses a --user-data-dir argument with launch(). Each page then gets its
 * own context (cookies, storage) from newPage().
 */
export async function launchBrowser({ args = [] } = {}) {
  const browser = await chromium.launch({
    executablePath: chromiumPath(),
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      ...args,
    ],
  });
  return {
    browser,
    close: async () => {
      await browser.close().catch(() => {});
    },
  };
}

/** A page in its own context (own storage), with console errors collected. */
export async function newPage(browser, opts = {}) {
  const context = await browser.newContext({ viewport: opts.viewport || { width: 1280, height: 800 } });
  if (process.env.WEB_FROM_DISK) {
    // Development: serve the scripts and styles of web/ from the work tree
    // instead of the copies compiled into the gateway, so edits need no
    // rebuild. (Not the page itself: a page fulfilled by the test is not in
    // the loopback address space, and Chromium's Local Network Access checks
    // then block its WebSocket to 127.0.0.1.)
    const types = { js: 'text/javascript', css: 'text/css' };
    await context.route(/\/(wsgate\.js|demo\.js|demo\.css)(\?.*)?$/, (route) => {
      if (route.request().isNavigationRequest()) return route.continue();
      const path = new URL(route.request().url()).pathname.slice(1);
      route.fulfill({ path: join(ROOT, 'web', path), contentType: types[path.split('.').pop()] + '; charset=utf-8' });
    });
  }
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(String(e)));
  page.on('console', (m) => {
    if (m.type() === 'error') page.errors.push(m.text());
  });
  return page;
}

/**
 * Open the demo as `user` in `room` (transport: websocket | sse | poll |
 * undefined for auto); `init` runs before any script of the page.
 */
export async function openDemo(browser, base, { user, room, transport, viewport, init } = {}) {
  const page = await newPage(browser, { viewport });
  if (init) await page.addInitScript(init);
  const q = new URLSearchParams();
  if (user) q.set('user', user);
  if (room) q.set('room', room);
  if (transport) q.set('transport', transport);
  await page.goto(`${base}/?${q}`);
  await page.waitForFunction(() => window.demo && window.demo.gate && window.demo.gate.state === 'connected', null, { timeout: 15000 });
  return page;
}

/**
 * A page at the gateway's origin with only wsgate.js loaded (window.WsGate),
 * for tests of the client itself. `init` runs before any script of the page.
 */
export async function clientPage(browser, base, init) {
  const page = await newPage(browser);
  if (init) await page.addInitScript(init);
  await page.goto(`${base}/healthz`);
  await page.addScriptTag({ url: `${base}/wsgate.js` });
  return page;
}

/** Texts of the messages shown in the current room, in order. */
export function messageTexts(page) {
  return page.$$eval('#messages li.msg .text', (els) => els.map((e) => e.textContent));
}

/** Users in the member list. */
export function memberNames(page) {
  return page.$$eval('#members li.member', (els) => els.map((e) => e.dataset.user));
}

/** Wait until fn() is truthy (polling), else fail with a description of the last value. */
export async function until(what, fn, timeout = 15000) {
  const t0 = Date.now();
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() - t0 > timeout) throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
    await sleep(100);
  }
}

function apiHeaders() {
  const h = { 'Content-Type': 'application/json' };
  if (API_KEY) h['X-API-Key'] = API_KEY;
  return h;
}

/** POST /api/publish; returns {epoch, offset}. */
export async function publish(base, channel, data) {
  const r = await fetch(`${base}/api/publish`, { method: 'POST', headers: apiHeaders(), body: JSON.stringify({ channel, data }) });
  if (!r.ok) throw new Error(`publish: HTTP ${r.status} ${await r.text()}`);
  return r.json();
}

/** POST /api/disconnect {"user"}; returns the answer ({"disconnected": N} by the contract). */
export async function disconnect(base, user) {
  const r = await fetch(`${base}/api/disconnect`, { method: 'POST', headers: apiHeaders(), body: JSON.stringify({ user }) });
  if (!r.ok) throw new Error(`disconnect: HTTP ${r.status} ${await r.text()}`);
  return r.json();
}

export async function presence(base, channel) {
  const r = await fetch(`${base}/api/presence?channel=${encodeURIComponent(channel)}`, { headers: apiHeaders() });
  if (!r.ok) throw new Error(`presence: HTTP ${r.status} ${await r.text()}`);
  return r.json();
}

/** A unique room name per test run. */
export function roomName(prefix) {
  return `${prefix}-${Date.now().toString(36)}${Math.floor(Math.random() * 1e4)}`;
}

export function reportsDir() {
  mkdirSync(REPORTS, { recursive: true });
  return REPORTS;
}

/** Fail on errors the pages logged (uncaught exceptions, console.error). */
export function noPageErrors(...pages) {
  const errs = pages.flatMap((p) => p.errors.filter((e) => !/Failed to load resource|net::ERR_/.test(e)));
  if (errs.length) throw new Error('page errors: ' + errs.join('\n'));
}
