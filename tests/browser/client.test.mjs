// The JavaScript client on its own (web/wsgate.js in a page of the gateway's
// origin): transport fallback, heartbeat, recovery failure; and the SSE
// contract as a plain EventSource sees it.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, launchBrowser, clientPage, until, publish, disconnect, sleep, noPageErrors } from './helpers.mjs';

let gw, br;
before(async () => {
  gw = await startGateway();
  br = await launchBrowser();
});
after(async () => {
  await br?.close();
  await gw?.stop();
});

const uniq = (p) => `${p}-${Date.now().toString(36)}${Math.floor(Math.random() * 1e4)}`;

test('falls back from WebSocket to SSE to long-poll', async () => {
  // A network where the WebSocket upgrade and the SSE stream both fail.
  const page = await clientPage(br.browser, gw.url, () => {
    window.WebSocket = class {
      constructor() {
        this.readyState = 0;
        setTimeout(() => {
          this.readyState = 3;
          this.onerror && this.onerror({});
          this.onclose && this.onclose({ code: 1006, reason: '' });
        }, 10);
      }
      send() {}
      close() {}
    };
    const realFetch = window.fetch.bind(window);
    window.fetch = (url, opts) => (String(url).includes('/sse?') ? Promise.reject(new TypeError('blocked by the test')) : realFetch(url, opts));
  });
  const channel = uniq('fb');
  await publish(gw.url, channel, 'seed'); // the channel has history from now on
  try {
    await page.evaluate((channel) => {
      const gate = (window.gate = new WsGate({ user: 'fallback', backoff: { base: 50, cap: 200 } }));
      window.transports = [];
      window.got = [];
      gate.on('transport', (t) => window.transports.push(t));
      gate.subscribe(channel, { onPublication: (d) => window.got.push(d) });
    }, channel);
    await until('long-poll subscribed', () => page.evaluate((c) => gate.transport === 'poll' && gate._subs.get(c).state === 'subscribed', channel));
    assert.deepEqual(await page.evaluate(() => window.transports), ['websocket', 'sse', 'poll']);
    await publish(gw.url, channel, 'over long-poll');
    await until('the publication', () => page.evaluate(() => window.got.includes('over long-poll')));
    // Ops go over POST /send.
    const r = await page.evaluate((c) => gate.publish(c, 'from the page'), channel);
    assert.equal(typeof r.offset, 'number');
    await until('its own publication', () => page.evaluate(() => window.got.includes('from the page')));
    assert.deepEqual(await page.evaluate(() => window.got), ['over long-poll', 'from the page']);
  } finally {
    await page.context().close();
  }
});

test('heartbeat: a WebSocket that goes silent is replaced', async () => {
  const page = await clientPage(br.browser, gw.url);
  try {
    await page.evaluate(() => {
      window.gate = new WsGate({ transports: ['websocket'], heartbeat: 300, heartbeatTimeout: 1500, backoff: { base: 50, cap: 100 } });
    });
    await until('connected', () => page.evaluate(() => gate.state === 'connected'));
    // Several heartbeats answered: no reconnect. (A client that ignored the
    // answers would have reconnected after 1.8 s.)
    await sleep(3000);
    assert.equal(await page.evaluate(() => gate.stats.reconnects), 0);
    // The connection stops delivering anything (a dead NAT path, say).
    await page.evaluate(() => {
      gate._t.ws.onmessage = null;
    });
    await until('reconnected', () => page.evaluate(() => gate.stats.reconnects === 1 && gate.state === 'connected'), 15000);
    noPageErrors(page);
  } finally {
    await page.context().close();
  }
});

test('recovery failure is reported, then the channel goes on', async () => {
  // Namespace "tiny" keeps 3 publications (tests/browser/gateway.toml).
  const channel = uniq('tiny:lost');
  const user = uniq('rec');
  const page = await clientPage(br.browser, gw.url);
  try {
    await page.evaluate(
      ([channel, user]) => {
        window.gate = new WsGate({ user, transports: ['websocket'], backoff: { base: 50, cap: 100 } });
        window.got = [];
        window.failed = [];
        gate.subscribe(channel, { onPublication: (d) => got.push(d), onRecoveryFailed: (i) => failed.push(i) });
      },
      [channel, user],
    );
    await until('subscribed', () => page.evaluate((c) => gate._subs.get(c).state === 'subscribed', channel));
    await publish(gw.url, channel, 1);
    await until('first', () => page.evaluate(() => got.length === 1));
    await page.context().setOffline(true);
    await disconnect(gw.url, user);
    await until('dropped', () => page.evaluate(() => gate.state !== 'connected'));
    for (let i = 2; i <= 6; i++) await publish(gw.url, channel, i); // 5 > the 3 kept
    await page.context().setOffline(false);
    await until('recovery failure reported', () => page.evaluate(() => failed.length === 1));
    const f = await page.evaluate(() => failed[0]);
    assert.equal(f.channel, channel);
    assert.equal(f.previous.offset, 1);
    assert.equal(f.offset, 6);
    await publish(gw.url, channel, 7);
    await until('live again', () => page.evaluate(() => got.includes(7)));
    assert.deepEqual(await page.evaluate(() => got), [1, 7]);
  } finally {
    await page.context().close();
  }
});

test('plain EventSource resumes with Last-Event-ID after the server ends the stream', async () => {
  // The contract for clients other than wsgate.js: the first request names
  // its position in ?last_event_id=; when the stream ends, EventSource
  // reconnects to the same URL and sends the last id it saw in the
  // Last-Event-ID header, which must win over the query's older token.
  const channel = uniq('es');
  const user = uniq('es-user');
  await publish(gw.url, channel, 'a');
  const cursor = (await (await fetch(`${gw.url}/poll?channel=${channel}&wait=0`)).json()).cursor; // position: after 'a'
  const page = await clientPage(br.browser, gw.url);
  try {
    await page.evaluate(
      ([channel, user, cursor]) => {
        window.got = [];
        window.subscribed = [];
        const es = (window.es = new EventSource(`/sse?channel=${channel}&user=${user}&last_event_id=${cursor}`));
        es.onmessage = (e) => got.push(JSON.parse(e.data).data);
        // The stream also carries the user's personal channel ($user:…):
        // keep this channel's events only.
        es.addEventListener('subscribed', (e) => {
          const d = JSON.parse(e.data);
          if (d.channel === channel) subscribed.push(d);
        });
      },
      [channel, user, cursor],
    );
    await until('subscribed', () => page.evaluate(() => subscribed.length === 1));
    assert.equal((await page.evaluate(() => subscribed[0])).recovered, true);
    await publish(gw.url, channel, 'b');
    await until('b', () => page.evaluate(() => got.includes('b')));
    await disconnect(gw.url, user);
    await publish(gw.url, channel, 'c');
    await until('resumed (EventSource retries after the retry: hint)', () => page.evaluate(() => got.includes('c') && subscribed.length === 2), 10000);
    await sleep(300);
    assert.deepEqual(await page.evaluate(() => got), ['b', 'c']);
  } finally {
    await page.context().close();
  }
});

test('loads as a classic script and from an ES module', async () => {
  const page = await clientPage(br.browser, gw.url); // classic <script src>
  try {
    assert.equal(await page.evaluate(() => typeof window.WsGate), 'function');
    const fresh = await page.context().newPage();
    await fresh.goto(`${gw.url}/healthz`);
    const t = await fresh.evaluate(async () => {
      await import('/wsgate.js');
      const { WsGate } = globalThis;
      return typeof WsGate === 'function' && typeof WsGate.prototype.subscribe;
    });
    assert.equal(t, 'function');
  } finally {
    await page.context().close();
  }
});
