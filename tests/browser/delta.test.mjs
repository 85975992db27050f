// The JavaScript client's `delta: 'fossil'` option in Chromium, against the
// gateway (issue 16): on a namespace with `delta = "fossil"` a dashboard
// stream arrives as one whole publication then Fossil deltas, which the
// client applies transparently: the application sees exactly the data
// published. Elsewhere a delta subscription gets whole publications and
// works as before. The decoding itself is tested in node
// (tests/js/delta.test.mjs).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, launchBrowser, clientPage, until, publish, noPageErrors } from './helpers.mjs';

let gw, br;
before(async () => {
  gw = await startGateway();
  br = await launchBrowser();
});
after(async () => {
  await br?.close();
  await gw?.stop();
});

const unique = (p) => `${p}${Date.now().toString(36)}${Math.floor(Math.random() * 1e4)}`;

/** A dashboard of 200 metrics, 3 of which change per tick. */
function dashboard(ticks) {
  const m = {};
  for (let i = 0; i < 200; i++) m[`svc${String(i >> 3).padStart(2, '0')}.m${i & 7}`] = Math.round(i * 137.31) / 100;
  const out = [];
  for (let t = 1; t <= ticks; t++) {
    for (let k = 0; k < 3; k++) {
      const keys = Object.keys(m);
      m[keys[(t * 7 + k * 61) % 200]] = Math.round(t * 1000 + k * 17.5) / 100;
    }
    out.push(t % 5 === 0 ? { ...m, note: 'naïve 😀 ' + t } : { ...m });
  }
  return out;
}

async function subscribePage(channel) {
  const page = await clientPage(br.browser, gw.url);
  await page.evaluate((channel) => {
    window.gate = new WsGate({ transports: ['websocket'] });
    window.got = [];
    gate.subscribe(channel, { delta: 'fossil', onPublication: (d) => got.push(d) });
  }, channel);
  await until('subscribed', () => page.evaluate((c) => gate._subs.get(c).state === 'subscribed', channel));
  return page;
}

test('a dashboard stream arrives as deltas and the application sees exactly the data published', async () => {
  const channel = unique('dash:');
  const page = await subscribePage(channel);
  try {
    const sent = dashboard(25);
    for (const d of sent) await publish(gw.url, channel, d);
    await until('25 publications', () => page.evaluate(() => got.length === 25));
    assert.deepEqual(await page.evaluate(() => got), sent);
    // One whole publication, then deltas; none failed.
    assert.deepEqual(await page.evaluate(() => [gate.stats.deltas, gate.stats.deltaFailures]), [24, 0]);
    noPageErrors(page);
  } finally {
    await page.context().close();
  }
});

test('a delta subscription where the namespace has no deltas gets whole publications', async () => {
  const channel = unique('plain-');
  const page = await subscribePage(channel);
  try {
    const sent = [{ cpu: 1.5, mem: 2048 }, { cpu: 1.75, mem: 2048, note: 'naïve 😀' }, [1, 2, 3]];
    for (const d of sent) await publish(gw.url, channel, d);
    await until('three publications', () => page.evaluate(() => got.length === 3));
    assert.deepEqual(await page.evaluate(() => got), sent);
    // The bytes kept are the last publication's data as the gateway sent it.
    const kept = await page.evaluate((c) => new TextDecoder().decode(gate._subs.get(c)._base), channel);
    assert.equal(kept, '[1,2,3]');
    assert.deepEqual(await page.evaluate(() => [gate.stats.deltas, gate.stats.deltaFailures]), [0, 0]);
    noPageErrors(page);
  } finally {
    await page.context().close();
  }
});
