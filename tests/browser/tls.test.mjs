// The demo and the JS client over wss:// (issue 14): the gateway serves TLS
// itself with a certificate signed by a test CA made by openssl at test
// time. Chromium trusts that leaf's key alone through
// --ignore-certificate-errors-spki-list (no NSS database, no certutil, no
// HOME of its own: the flag pins exactly this key and nothing else; the
// README tells how to trust the CA itself with an NSS database). Two pages
// chat, then one page is dropped and recovers what was published while it
// was away. Every page must be on https: and its WebSocket on wss:, and
// the gateway must count TLS handshakes and open TLS connections, so a
// broken TLS path fails here instead of silently falling back.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTlsGateway, launchBrowser, openDemo, messageTexts, memberNames, until, roomName, publish, disconnect, sleep, noPageErrors } from './helpers.mjs';

const TOML = `demo = true
[namespaces.room]
join_leave = true
deliver_latest = false
`;

// Records the URL of every WebSocket the page opens.
const RECORD_WS = () => {
  window.__wsUrls = [];
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(url, protocols) {
      super(url, protocols);
      window.__wsUrls.push(String(url));
    }
  };
};

let gw, br;
before(async () => {
  gw = await startTlsGateway(TOML);
  br = await launchBrowser({ args: [`--ignore-certificate-errors-spki-list=${gw.spki}`] });
});
after(async () => {
  await br?.close();
  await gw?.stop();
});

async function metric(line) {
  const text = await (await fetch(`${gw.api}/metrics`)).text();
  const m = text.split('\n').filter((l) => l.startsWith(line + ' ') || l.startsWith(line + '{'));
  return m.reduce((sum, l) => sum + Number(l.split(' ').pop()), 0);
}

/** The page is on https:, every WebSocket it opened is wss: to the gateway. */
async function assertOverTls(page) {
  assert.equal(await page.evaluate(() => location.protocol), 'https:');
  assert.equal(await page.evaluate(() => window.isSecureContext), true);
  const urls = await page.evaluate(() => window.__wsUrls);
  assert.ok(urls.length >= 1, 'a WebSocket was opened');
  for (const u of urls) assert.ok(u.startsWith(`wss://127.0.0.1:${new URL(gw.url).port}/`), `WebSocket URL ${u}`);
}

async function send(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

test('two pages chat over wss://', async () => {
  const room = roomName('tls-chat');
  const handshakes0 = await metric('wsgate_tls_handshakes_total');
  const alice = await openDemo(br.browser, gw.url, { user: 'alice', room, transport: 'websocket', init: RECORD_WS });
  const bob = await openDemo(br.browser, gw.url, { user: 'bob', room, transport: 'websocket', init: RECORD_WS });
  try {
    for (const p of [alice, bob]) {
      assert.equal(await p.textContent('#transport'), 'websocket');
      await until(`room #${room} subscribed`, () => p.evaluate((r) => window.demo.gate._subs.get('room:' + r)?.state === 'subscribed', room));
      await assertOverTls(p);
    }
    await send(alice, 'hello over wss');
    await until('bob sees alice', async () => (await messageTexts(bob)).includes('hello over wss'));
    await send(bob, 'hi alice, tls here');
    const want = ['hello over wss', 'hi alice, tls here'];
    await until('both conversations complete', async () => {
      const [a, b] = [await messageTexts(alice), await messageTexts(bob)];
      return JSON.stringify(a) === JSON.stringify(want) && JSON.stringify(b) === JSON.stringify(want);
    });
    for (const p of [alice, bob]) {
      await until('member list shows alice and bob', async () => {
        const m = await memberNames(p);
        return m.includes('alice') && m.includes('bob') ? m : false;
      }, 20000);
    }
    // The gateway did the TLS: handshakes counted, both sockets open as TLS.
    // (Workers publish their counts now and then: waited for.)
    await until('TLS handshakes counted', async () => (await metric('wsgate_tls_handshakes_total')) >= handshakes0 + 2);
    await until('two open TLS connections', async () => (await metric('wsgate_tls_connections')) >= 2);
    noPageErrors(alice, bob);
  } finally {
    await alice.context().close();
    await bob.context().close();
  }
});

test('the JS client recovers over wss:// what was published while it was away', async () => {
  const room = roomName('tls-drop');
  const channel = 'room:' + room;
  const user = 'carol-tls';
  const page = await openDemo(br.browser, gw.url, { user, room, transport: 'websocket', init: RECORD_WS });
  try {
    await until('subscribed', () => page.evaluate((c) => window.demo.gate._subs.get(c)?.state === 'subscribed', channel));
    await assertOverTls(page);
    const before = ['before 1', 'before 2'];
    for (const text of before) await publish(gw.api, channel, { user: 'backend', text });
    await until('the messages before the drop', async () => (await messageTexts(page)).length === 2);
    const reconnects0 = await page.evaluate(() => window.demo.gate.stats.reconnects);
    // Offline first: the five messages can only come from the history.
    await page.context().setOffline(true);
    const answer = await disconnect(gw.api, user);
    if ('disconnected' in answer) assert.ok(answer.disconnected >= 1, JSON.stringify(answer));
    await until('the page notices the drop', () => page.evaluate(() => window.demo.gate.state !== 'connected'), 10000);
    const during = [1, 2, 3, 4, 5].map((i) => `while away ${i}`);
    for (const text of during) await publish(gw.api, channel, { user: 'backend', text });
    await page.context().setOffline(false);
    const want = [...before, ...during];
    await until('the five messages after the reconnection', async () => (await messageTexts(page)).length >= want.length, 20000);
    await sleep(1500); // anything duplicated would show up by now
    assert.deepEqual(await messageTexts(page), want);
    const stats = await page.evaluate(() => window.demo.gate.stats);
    assert.equal(stats.recoveryFailures, 0);
    assert.ok(stats.reconnects > reconnects0, `reconnected (${reconnects0} → ${stats.reconnects})`);
    // The new connection is wss: too.
    await assertOverTls(page);
    assert.ok((await page.evaluate(() => window.__wsUrls.length)) >= 2, 'a second WebSocket');
    noPageErrors(page);
  } finally {
    await page.context().close();
  }
});
