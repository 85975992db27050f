// The gateway drops a page's connection (POST /api/disconnect); five messages
// are published while the page reconnects; the page ends up showing exactly
// those five, once each, in order: no gap, no duplicate. For each transport.
// The page is kept offline while they are published, so they can only come
// from the gateway's history (the resume path), not from the live stream.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, launchBrowser, openDemo, messageTexts, until, roomName, publish, disconnect, sleep, noPageErrors } from './helpers.mjs';

let gw, br;
before(async () => {
  gw = await startGateway();
  br = await launchBrowser();
});
after(async () => {
  await br?.close();
  await gw?.stop();
});

for (const transport of ['websocket', 'sse', 'poll']) {
  test(`reconnect over ${transport} shows exactly the messages published meanwhile`, async () => {
    const room = roomName('drop-' + transport);
    const channel = 'room:' + room;
    const user = 'alice-' + transport;
    const page = await openDemo(br.browser, gw.url, { user, room, transport });
    try {
      await until('subscribed', () => page.evaluate((c) => window.demo.gate._subs.get(c)?.state === 'subscribed', channel));
      // Messages before the drop.
      const before = ['before 1', 'before 2'];
      for (const text of before) await publish(gw.url, channel, { user: 'backend', text });
      await until('the messages before the drop', async () => (await messageTexts(page)).length === 2);
      const reconnects0 = await page.evaluate(() => window.demo.gate.stats.reconnects);

      // Offline first, so that the page cannot come back before the five
      // messages are published: they must come from the gateway's history.
      await page.context().setOffline(true);
      const answer = await disconnect(gw.url, user);
      // The contract says {"disconnected": N}; the gateway may answer {"ok": true}
      // (the workers close the connections asynchronously).
      if ('disconnected' in answer) assert.ok(answer.disconnected >= 1, `POST /api/disconnect: ${JSON.stringify(answer)}`);
      else assert.equal(answer.ok, true, `POST /api/disconnect: ${JSON.stringify(answer)}`);
      const during = [1, 2, 3, 4, 5].map((i) => `while away ${i}`);
      if (transport !== 'poll') {
        await until('the page notices the drop', () => page.evaluate(() => window.demo.gate.state !== 'connected'), 10000);
      }
      for (const text of during) await publish(gw.url, channel, { user: 'backend', text });
      await sleep(300);
      await page.context().setOffline(false);

      const want = [...before, ...during];
      await until('the five messages after the reconnection', async () => (await messageTexts(page)).length >= want.length, 20000);
      await sleep(1500); // anything duplicated would show up by now
      assert.deepEqual(await messageTexts(page), want);
      const offsets = await page.$$eval('#messages li.msg', (els) => els.map((e) => Number(e.dataset.offset)));
      for (let i = 1; i < offsets.length; i++) assert.equal(offsets[i], offsets[i - 1] + 1, `offsets ${offsets}`);
      const stats = await page.evaluate(() => window.demo.gate.stats);
      assert.equal(stats.recoveryFailures, 0, `recovery failures: ${stats.recoveryFailures} (none expected: the room's history holds every message)`);
      if (transport !== 'poll') {
        // A poll is simply answered early: no connection to lose.
        assert.ok(stats.reconnects > reconnects0, `reconnected (${reconnects0} → ${stats.reconnects})`);
      }
      assert.equal(stats.state, 'connected');
      noPageErrors(page);
    } finally {
      await page.context().close();
    }
  });
}
