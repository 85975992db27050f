// permessage-deflate as Chromium speaks it: a plain `new WebSocket(...)` to
// the gateway negotiates the extension (ws.extensions, and the 101 seen
// through the DevTools protocol), messages come back byte-identical, and the
// gateway's /metrics shows they crossed compressed both ways and shrank.
// Needs compression on in the gateway under test (tests/browser/gateway.toml:
// `[compression] mode = "shared"`).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, launchBrowser, newPage, publish, roomName, noPageErrors } from './helpers.mjs';

let gw, br;
before(async () => {
  gw = await startGateway();
  br = await launchBrowser();
});
after(async () => {
  await br?.close();
  await gw?.stop();
});

/** The permessage-deflate series of GET /metrics. */
async function deflateMetrics(base) {
  const r = await fetch(`${base}/metrics`);
  assert.equal(r.status, 200, 'GET /metrics');
  const text = await r.text();
  const get = (series) => {
    const line = text.split('\n').find((l) => l.startsWith(series + ' '));
    assert.ok(line, `${series} in /metrics`);
    return Number(line.slice(series.length + 1));
  };
  return {
    connections: get('wsgate_deflate_connections_total'),
    messagesIn: get('wsgate_deflate_messages_total{direction="in"}'),
    messagesOut: get('wsgate_deflate_messages_total{direction="out"}'),
    inPayload: get('wsgate_deflate_bytes_total{direction="in",stage="payload"}'),
    inWire: get('wsgate_deflate_bytes_total{direction="in",stage="wire"}'),
    outPayload: get('wsgate_deflate_bytes_total{direction="out",stage="payload"}'),
    outWire: get('wsgate_deflate_bytes_total{direction="out",stage="wire"}'),
  };
}

function delta(after, before) {
  return Object.fromEntries(Object.keys(after).map((k) => [k, after[k] - before[k]]));
}

/** A compressible JSON text of about `size` bytes, with some non-ASCII text. */
function chatJson(size, seed) {
  const items = [];
  let s = '';
  for (let i = 0; s.length < size; i++) {
    items.push({ user: `u${seed}`, text: `message ${i} of batch ${seed}: héllo wörld — ✓ 🚀`, ts: 1712000000000 + seed * 1000 + i });
    s = JSON.stringify({ seq: seed, items });
  }
  return s;
}

const header = (headers, name) => Object.entries(headers || {}).find(([k]) => k.toLowerCase() === name)?.[1];

test('Chromium negotiates permessage-deflate and its messages cross compressed', async (t) => {
  const page = await newPage(br.browser);
  // Handshakes as the browser saw them.
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Network.enable');
  const sockets = new Map(); // requestId -> {url, offer, status, answer}
  const entry = (id) => sockets.get(id) || sockets.set(id, {}).get(id);
  cdp.on('Network.webSocketCreated', (e) => (entry(e.requestId).url = e.url));
  cdp.on('Network.webSocketWillSendHandshakeRequest', (e) => (entry(e.requestId).offer = header(e.request.headers, 'sec-websocket-extensions')));
  cdp.on('Network.webSocketHandshakeResponseReceived', (e) => {
    const s = entry(e.requestId);
    s.status = e.response.status;
    s.answer = header(e.response.headers, 'sec-websocket-extensions');
  });
  try {
    // A page of the gateway's origin (loopback: Chromium's Local Network
    // Access checks allow its WebSockets to 127.0.0.1).
    await page.goto(`${gw.url}/healthz`);
    const wsBase = gw.url.replace(/^http/, 'ws');
    const before = await deflateMetrics(gw.url);

    // /echo: several 1–4 KB JSON texts, each echo byte-identical.
    const texts = [1000, 1500, 2000, 2500, 3000, 3500, 4000, 1200].map((n, i) => chatJson(n, i));
    const echo = await page.evaluate(
      async ({ wsBase, texts }) => {
        const ws = new WebSocket(`${wsBase}/echo`);
        await new Promise((ok, fail) => {
          ws.onopen = ok;
          ws.onerror = () => fail(new Error('WebSocket error on /echo'));
        });
        const echoes = [];
        for (const m of texts) {
          const got = new Promise((ok) => (ws.onmessage = (e) => ok(e.data)));
          ws.send(m);
          echoes.push(await got);
        }
        const extensions = ws.extensions;
        ws.close(1000);
        return { extensions, echoes };
      },
      { wsBase, texts },
    );
    assert.match(echo.extensions, /^permessage-deflate\b/, `ws.extensions on /echo: ${echo.extensions}`);
    assert.equal(echo.echoes.length, texts.length);
    texts.forEach((m, i) => assert.ok(echo.echoes[i] === m, `echo #${i} (${m.length} chars) is identical`));

    // /ws: a publication from the backend API and one from the page itself.
    const channel = roomName('deflate');
    const fromApi = JSON.parse(chatJson(3000, 100));
    const fromPage = JSON.parse(chatJson(2000, 200));
    await page.evaluate(
      async ({ wsBase, channel }) => {
        const ws = (window.gws = new WebSocket(`${wsBase}/ws`));
        window.gotMsgs = [];
        window.waiters = [];
        ws.onmessage = (e) => {
          const m = JSON.parse(e.data);
          window.gotMsgs.push(m);
          for (const w of window.waiters.splice(0)) w();
        };
        window.next = (pred) =>
          new Promise((ok) => {
            const look = () => {
              const m = window.gotMsgs.find(pred);
              if (m) return ok(m);
              window.waiters.push(look);
            };
            look();
          });
        await new Promise((ok, fail) => {
          ws.onopen = ok;
          ws.onerror = () => fail(new Error('WebSocket error on /ws'));
        });
        ws.send(JSON.stringify({ id: 1, op: 'subscribe', channel }));
        const r = await window.next((m) => m.id === 1);
        if (!r.ok) throw new Error('subscribe: ' + JSON.stringify(r));
      },
      { wsBase, channel },
    );
    await publish(gw.url, channel, fromApi);
    const ws = await page.evaluate(
      async ({ channel, fromPage }) => {
        const api = await window.next((m) => m.channel === channel && m.offset !== undefined && m.data?.seq === 100);
        window.gws.send(JSON.stringify({ id: 2, op: 'publish', channel, data: fromPage }));
        const reply = await window.next((m) => m.id === 2);
        const own = await window.next((m) => m.channel === channel && m.offset !== undefined && m.data?.seq === 200);
        const extensions = window.gws.extensions;
        window.gws.close(1000);
        return { api, reply, own, extensions };
      },
      { channel, fromPage },
    );
    assert.match(ws.extensions, /^permessage-deflate\b/, `ws.extensions on /ws: ${ws.extensions}`);
    assert.equal(ws.reply.ok, true, JSON.stringify(ws.reply));
    assert.deepEqual(ws.api.data, fromApi);
    assert.deepEqual(ws.own.data, fromPage);
    assert.equal(ws.own.offset, ws.api.offset + 1);

    // The 101s carried the extension (DevTools protocol).
    const handshakes = [...sockets.values()].filter((s) => s.url && s.url.startsWith(wsBase));
    assert.equal(handshakes.length, 2, JSON.stringify(handshakes));
    for (const s of handshakes) {
      assert.equal(s.status, 101, JSON.stringify(s));
      assert.match(s.offer || '', /permessage-deflate/, `offered: ${JSON.stringify(s)}`);
      assert.match(s.answer || '', /^permessage-deflate\b/, `answered: ${JSON.stringify(s)}`);
    }

    // Counted compressed both ways, and smaller on the wire.
    const d = delta(await deflateMetrics(gw.url), before);
    const sentBig = texts.length + 1; // echoes and the page's publish
    const gotBig = texts.length + 2; // echoes and both publications
    t.diagnostic(`offered: ${handshakes[0].offer}; answered: ${handshakes[0].answer}`);
    t.diagnostic(`deflate metrics delta: ${JSON.stringify(d)}`);
    t.diagnostic(`in (Chromium -> gateway): ${d.inWire}/${d.inPayload} bytes, ratio ${(d.inPayload / d.inWire).toFixed(2)}`);
    t.diagnostic(`out (gateway -> Chromium): ${d.outWire}/${d.outPayload} bytes, ratio ${(d.outPayload / d.outWire).toFixed(2)}`);
    assert.ok(d.connections >= 2, `deflate connections +${d.connections}`);
    assert.ok(d.messagesIn >= sentBig, `compressed in +${d.messagesIn} >= ${sentBig}`);
    assert.ok(d.messagesOut >= gotBig, `compressed out +${d.messagesOut} >= ${gotBig}`);
    const echoed = texts.reduce((n, m) => n + Buffer.byteLength(m), 0);
    assert.ok(d.inPayload >= echoed && d.outPayload >= echoed, JSON.stringify(d));
    assert.ok(d.inWire > 0 && d.inWire < d.inPayload, `in: ${d.inWire} wire < ${d.inPayload} payload`);
    assert.ok(d.outWire > 0 && d.outWire < d.outPayload, `out: ${d.outWire} wire < ${d.outPayload} payload`);
    noPageErrors(page);
  } finally {
    await cdp.detach().catch(() => {});
    await page.context().close();
  }
});
