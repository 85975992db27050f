// The JavaScript client's `delta: 'fossil'` option in Chromium, against the
// gateway: today's gateway sends whole publications (deltas are not wired
// into fan-out yet), and a delta subscription must then work exactly as
// before, keeping each publication's data bytes for the deltas to come.
// The decoding itself is tested in node (tests/js/delta.test.mjs).

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

test('a delta subscription on a gateway that sends whole publications', async () => {
  const channel = `dash-${Date.now().toString(36)}${Math.floor(Math.random() * 1e4)}`;
  const page = await clientPage(br.browser, gw.url);
  try {
    await page.evaluate((channel) => {
      window.gate = new WsGate({ transports: ['websocket'] });
      window.got = [];
      gate.subscribe(channel, { delta: 'fossil', onPublication: (d) => got.push(d) });
    }, channel);
    await until('subscribed', () => page.evaluate((c) => gate._subs.get(c).state === 'subscribed', channel));
    // The bytes kept are the last publication's data as the gateway sent it.
    const sent = [{ cpu: 1.5, mem: 2048 }, { cpu: 1.75, mem: 2048, note: 'naïve 😀' }, [1, 2, 3]];
    for (const d of sent) await publish(gw.url, channel, d);
    await until('three publications', () => page.evaluate(() => got.length === 3));
    assert.deepEqual(await page.evaluate(() => got), sent);
    const kept = await page.evaluate((c) => new TextDecoder().decode(gate._subs.get(c)._base), channel);
    assert.equal(kept, '[1,2,3]');
    assert.deepEqual(await page.evaluate(() => [gate.stats.deltas, gate.stats.deltaFailures]), [0, 0]);
    noPageErrors(page);
  } finally {
    await page.context().close();
  }
});
