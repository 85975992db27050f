// Publications whose JSON holds raw CR, LF, CRLF or tabs between tokens
// (legal JSON whitespace) reach a browser intact on every transport:
// Chromium's own EventSource, and the JavaScript client over WebSocket, SSE
// and long-poll. Such a byte used to end the SSE `data:` field in the middle
// of the publication: EventSource got invalid JSON, and the client dropped
// the publication while its position moved past it. A bystander channel,
// published after, must still be served on every transport.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, launchBrowser, clientPage, until, roomName, noPageErrors } from './helpers.mjs';

let gw, br;
before(async () => {
  gw = await startGateway();
  br = await launchBrowser();
});
after(async () => {
  await br?.close();
  await gw?.stop();
});

// `data` as a publisher may send it (the raw text matters, so it is not
// built with JSON.stringify).
const CASES = [
  '{\r\n  "text": "hi there",\r\n  "n": [1,\n 2]\r\n}',
  '["a",\r\r"b"]',
  '{"x":\n\n{"y":\t"tab\\tinside"}}',
  '"data: forged\\n\\nid: x\\r\\nevent: resync"',
  '{"emoji" : "é 😀",\r\n"z"\t:\tnull}',
];

async function publishRaw(base, channel, dataText) {
  const body = `{\r\n"channel": ${JSON.stringify(channel)},\r\n"data":\r\n${dataText}\r\n}`;
  const r = await fetch(`${base}/api/publish`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body });
  if (!r.ok) throw new Error(`publish: HTTP ${r.status} ${await r.text()}`);
  return r.json();
}

test('publications with raw line breaks reach EventSource and the client on every transport intact', async () => {
  const channel = roomName('framing');
  const bystander = roomName('bystander');
  const page = await clientPage(br.browser, gw.url);
  try {
    await page.evaluate(
      ([channel, bystander]) => {
        window.got = { eventsource: [], bad: [], bystander: {} };
        // The browser's own EventSource: every `message` event's data must be JSON.
        const es = (window.es = new EventSource(`/sse?channel=${channel}&channel=${bystander}`));
        window.esReady = false;
        es.addEventListener('subscribed', () => (window.esReady = true));
        es.onmessage = (ev) => {
          try {
            const m = JSON.parse(ev.data);
            if (m.channel === channel) got.eventsource.push(m.data);
            else (got.bystander.eventsource = got.bystander.eventsource || []).push(m.data);
          } catch (e) {
            got.bad.push(ev.data);
          }
        };
        window.gates = {};
        for (const t of ['websocket', 'sse', 'poll']) {
          const gate = (gates[t] = new WsGate({ transports: [t], pollWait: 2 }));
          got[t] = [];
          gate.subscribe(channel, { onPublication: (data) => got[t].push(data) });
          gate.subscribe(bystander, { onPublication: (data) => (got.bystander[t] = got.bystander[t] || []).push(data) });
        }
      },
      [channel, bystander],
    );
    await until('every reader subscribed', () =>
      page.evaluate(
        (c) => window.esReady && Object.values(gates).every((g) => g._subs.get(c).state === 'subscribed' && g._subs.get(c).position),
        channel,
      ),
    );
    for (const text of CASES) await publishRaw(gw.url, channel, text);
    await publishRaw(gw.url, bystander, '{ "still" :\r\n"served" }');
    const want = CASES.map((t) => JSON.parse(t));
    const readers = ['eventsource', 'websocket', 'sse', 'poll'];
    await until('every reader got every publication and the bystander one', () =>
      page.evaluate(
        ([n, readers]) => readers.every((r) => got[r].length >= n && (got.bystander[r] || []).length >= 1),
        [want.length, readers],
      ),
    );
    const got = await page.evaluate(() => window.got);
    assert.deepEqual(got.bad, [], 'EventSource got data that is not JSON');
    for (const r of readers) {
      assert.deepEqual(got[r], want, `${r} got every publication, intact`);
      assert.deepEqual(got.bystander[r], [{ still: 'served' }], `${r}: the bystander channel is served`);
    }
    const stats = await page.evaluate(() => Object.fromEntries(Object.entries(gates).map(([t, g]) => [t, g.stats])));
    for (const [t, s] of Object.entries(stats)) assert.equal(s.recoveryFailures, 0, `${t}: nothing lost`);
    noPageErrors(page);
  } finally {
    await page.context().close();
  }
});
