// A screenshot of the demo with a short conversation: reports/browser/demo.png.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { statSync } from 'node:fs';
import { startGateway, launchBrowser, openDemo, messageTexts, memberNames, until, publish, reportsDir, sleep, noPageErrors } from './helpers.mjs';

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

test('screenshot of the demo', async () => {
  const room = 'general-' + Date.now().toString(36).slice(-4);
  const alice = await openDemo(br.browser, gw.url, { user: 'alice', room, viewport: { width: 1280, height: 760 } });
  const bob = await openDemo(br.browser, gw.url, { user: 'bob', room });
  try {
    for (const p of [alice, bob]) {
      await until('subscribed', () => p.evaluate((r) => window.demo.gate._subs.get('room:' + r)?.state === 'subscribed', room));
    }
    // A second room for alice, with a message waiting in it.
    await alice.fill('#room-input', 'random');
    await alice.press('#room-input', 'Enter');
    await until('alice in #random', () => alice.evaluate(() => window.demo.gate._subs.get('room:random')?.state === 'subscribed'));
    await alice.click(`#rooms button[data-room="${room}"]`);

    await send(alice, 'Hi bob! Is the new gateway up?');
    await until('bob got it', async () => (await messageTexts(bob)).length === 1);
    await send(bob, 'Yes: two workers, and WebSocket, SSE and long-poll all answer.');
    await until('alice got it', async () => (await messageTexts(alice)).length === 2);
    await publish(gw.url, 'room:' + room, { user: 'deploy-bot', text: 'wsgate 0.1.0 rolled out to 3 nodes ✔' });
    await publish(gw.url, 'room:random', { user: 'carol', text: 'anyone for lunch?' });
    await until('alice got the bot', async () => (await messageTexts(alice)).length === 3);
    await send(alice, 'Nice. I will drop my connection and see what I missed :-)');
    await until('all four', async () => (await messageTexts(alice)).length === 4);
    await until('members', async () => (await memberNames(alice)).length === 2);
    await alice.evaluate(() => window.demo.gate.ping()); // fills the round-trip figure
    await until('server figures', () => alice.evaluate(() => Number(document.getElementById('server-subscriptions')?.textContent) >= 4), 10000);
    await sleep(1200); // the stats panel refreshes every second

    const file = join(reportsDir(), 'demo.png');
    await alice.screenshot({ path: file });
    assert.ok(statSync(file).size > 10000, 'a non-trivial PNG');
    noPageErrors(alice, bob);
  } finally {
    await alice.context().close();
    await bob.context().close();
  }
});
