// Redis is killed under traffic and comes back empty: the channel's history
// is lost and a new epoch begins, whose offsets start again from 1. The
// gateway tells every stream (`resync`); the JavaScript client on each
// transport must report it (onRecoveryFailed) and then deliver every
// publication of the new epoch, although their offsets are at or below the
// ones it had already seen. Every accepted publication is delivered or
// reported, and every one of the new epoch delivered.
//
// Its own redis-server and gateway (the Redis broker), whatever WSGATE_URL
// says.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startGatewayWith, startRedis, launchBrowser, clientPage, until, sleep, noPageErrors } from './helpers.mjs';

let redis, gw, br;
before(async () => {
  redis = await startRedis();
  gw = await startGatewayWith(
    [
      '[broker]',
      'kind = "redis"',
      `redis_url = "${redis.url}"`,
      'command_timeout = "1s"',
      'reconnect_min = "50ms"',
      'reconnect_max = "500ms"',
      'presence_ttl = "2s"',
      'presence_refresh = "500ms"',
      '',
    ].join('\n'),
  );
  br = await launchBrowser();
});
after(async () => {
  await br?.close();
  await gw?.stop();
  await redis?.stop();
});

const TRANSPORTS = ['websocket', 'sse', 'poll'];

/** Publish {n} to "live" until stop(); accepted: [epoch, offset, n]. */
function publisher(base) {
  const s = { accepted: [], failed: 0, stopped: false };
  s.done = (async () => {
    for (let n = 1; !s.stopped; n++) {
      try {
        const r = await fetch(`${base}/api/publish`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ channel: 'live', data: { n } }),
        });
        const body = await r.json();
        if (r.ok) s.accepted.push([body.epoch, body.offset, n]);
        else s.failed++;
      } catch {
        s.failed++;
      }
      await sleep(5);
    }
  })();
  return s;
}

/**
 * Which accepted publications a client neither got nor was told about: a
 * recovery failure reports everything between its `previous` position and
 * its new one (epochs in the order they were first accepted).
 */
function unaccounted(accepted, got, failures, start) {
  const epochs = [...new Set(accepted.map((a) => a[0]))];
  const rank = (e, o) => {
    const k = epochs.indexOf(e);
    if (k < 0) return 0;
    return accepted.filter(([pe, po]) => epochs.indexOf(pe) < k || (pe === e && po <= o)).length;
  };
  const covered = accepted.map(([e, o]) => got.some(([ge, go]) => ge === e && go === o));
  for (const f of failures) {
    if (!f.previous) continue;
    for (let i = rank(f.previous.epoch, f.previous.offset); i < rank(f.epoch, f.offset); i++) covered[i] = true;
  }
  return accepted.filter((_, i) => i >= rank(start.epoch, start.offset) && !covered[i]);
}

test('after Redis comes back empty, the client on every transport reports the resync and gets every publication of the new epoch', async () => {
  const page = await clientPage(br.browser, gw.url);
  try {
    await page.evaluate((transports) => {
      window.runs = {};
      for (const t of transports) {
        const r = (window.runs[t] = { got: [], failures: [], start: null });
        r.gate = new WsGate({ transports: [t], pollWait: 2 });
        r.sub = r.gate.subscribe('live', {
          onSubscribed(info) {
            if (!r.start) r.start = { epoch: info.epoch, offset: info.offset };
          },
          onPublication(data, pub) {
            r.got.push([this.epoch, pub.offset, data.n]);
          },
          onRecoveryFailed(info) {
            r.failures.push(info);
          },
        });
      }
    }, TRANSPORTS);
    await until('subscribed on every transport, at a position', () =>
      page.evaluate(() => Object.values(runs).every((r) => r.sub.state === 'subscribed' && r.start && r.start.epoch && r.start.offset === 0)),
    );

    const pub = publisher(gw.url);
    await until('traffic before the outage', () => pub.accepted.length >= 150, 30000);
    await redis.kill();
    const failedBefore = pub.failed;
    await until('publishes fail while Redis is down', () => pub.failed >= failedBefore + 10, 15000);
    const before = pub.accepted.length;
    await redis.start();
    await until('healthy again', async () => (await fetch(`${gw.url}/healthz`)).ok, 15000);
    // The new epoch's offsets pass the old epoch's last: a client that
    // kept the old position would take them for duplicates.
    await until('traffic after the outage', () => pub.accepted.length >= 2 * before + 30, 30000);
    pub.stopped = true;
    await pub.done;
    const accepted = pub.accepted;
    const [lastEpoch, lastOffset] = accepted[accepted.length - 1];
    const firstEpoch = accepted[0][0];
    assert.notEqual(lastEpoch, firstEpoch, 'Redis came back empty: a new epoch');

    await until(
      'every client at the last accepted publication',
      () =>
        page.evaluate(
          ([e, o]) => Object.values(runs).every((r) => r.sub.epoch === e && r.sub.offset === o),
          [lastEpoch, lastOffset],
        ),
      20000,
    );
    await sleep(500); // a duplicate would show by now
    const runs = await page.evaluate(() =>
      Object.fromEntries(Object.entries(window.runs).map(([t, r]) => [t, { got: r.got, failures: r.failures, start: r.start, stats: r.gate.stats }])),
    );
    const newEpoch = accepted.filter((a) => a[0] === lastEpoch);
    for (const t of TRANSPORTS) {
      const r = runs[t];
      const seen = new Set(r.got.map(([e, o]) => `${e}/${o}`));
      assert.equal(seen.size, r.got.length, `${t}: no publication twice`);
      const missing = unaccounted(accepted, r.got, r.failures, r.start);
      assert.deepEqual(missing.slice(0, 5), [], `${t}: ${missing.length} accepted publications neither delivered nor reported`);
      assert.ok(
        r.failures.some((f) => f.epoch === lastEpoch),
        `${t}: the application was told of the new epoch (${JSON.stringify(r.failures)})`,
      );
      // Every publication of the new epoch: by the live stream after its
      // resync, or, to a poll whose cursor was still in the old epoch,
      // replayed from the new epoch's start.
      const lost = newEpoch.filter(([e, o]) => !seen.has(`${e}/${o}`));
      assert.deepEqual(lost.slice(0, 5), [], `${t}: ${lost.length} of ${newEpoch.length} publications of the new epoch not delivered`);
      if (t === 'poll') continue; // told by a resync or, between two polls, by recovered:false
      assert.ok(
        r.failures.some((f) => f.resync === true && f.epoch === lastEpoch),
        `${t}: onRecoveryFailed with resync (${JSON.stringify(r.failures)})`,
      );
      assert.equal(r.stats.state, 'connected', `${t}: still connected`);
    }
    noPageErrors(page);
  } finally {
    await page.context().close();
  }
});
