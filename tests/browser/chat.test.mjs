// Two pages (alice, bob) chat in one room of the demo, over each transport:
// each sees the other's message, and the member list shows both.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startGateway, launchBrowser, openDemo, messageTexts, memberNames, until, roomName, noPageErrors } from './helpers.mjs';

let gw, br;
before(async () => {
  gw = await startGateway();
  br = await launchBrowser();
});
after(async () => {
  await br?.close();
  await gw?.stop();
});

async function send(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

for (const transport of ['websocket', 'sse', 'poll']) {
  test(`two pages chat over ${transport}`, async () => {
    const room = roomName('chat-' + transport);
    const alice = await openDemo(br.browser, gw.url, { user: 'alice', room, transport });
    const bob = await openDemo(br.browser, gw.url, { user: 'bob', room, transport });
    try {
      for (const p of [alice, bob]) {
        assert.equal(await p.textContent('#transport'), transport);
        await until(`room #${room} subscribed`, () => p.evaluate((r) => window.demo.gate._subs.get('room:' + r)?.state === 'subscribed', room));
      }

      await send(alice, 'hello from alice');
      await until('bob sees alice', async () => (await messageTexts(bob)).includes('hello from alice'));
      await send(bob, 'hi alice, bob here');
      await until('alice sees bob', async () => (await messageTexts(alice)).includes('hi alice, bob here'));

      // Both pages show the same conversation, in the same order, once each.
      const want = ['hello from alice', 'hi alice, bob here'];
      await until('both conversations complete', async () => {
        const [a, b] = [await messageTexts(alice), await messageTexts(bob)];
        return JSON.stringify(a) === JSON.stringify(want) && JSON.stringify(b) === JSON.stringify(want);
      });
      const authors = await alice.$$eval('#messages li.msg .author', (els) => els.map((e) => e.textContent));
      assert.deepEqual(authors, ['alice', 'bob']);

      // Member lists: both users (join/leave events or presence queries).
      for (const p of [alice, bob]) {
        await until('member list shows alice and bob', async () => {
          const m = await memberNames(p);
          return m.includes('alice') && m.includes('bob') ? m : false;
        }, 20000);
      }
      noPageErrors(alice, bob);
    } finally {
      await alice.context().close();
      await bob.context().close();
    }
  });
}
