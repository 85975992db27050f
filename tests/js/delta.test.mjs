// The JavaScript client's Fossil deltas (web/wsgate.js), in node, no
// browser and no gateway: run with `node --test tests/js/` (scripts/test.sh).
//
// - WsGate.fossilApply against Fossil's own encoder (tests/data/fossil/*,
//   written by `fossil test-delta-create`) and against ours (the `codec`
//   cases of tests/js/delta_vectors.json, made by tests/delta_vectors.rs);
//   garbage and truncated deltas are refused.
// - The client on a fake WebSocket fed the publication frames our
//   DeltaChannels makes (the `streams` of the same file): the application
//   sees every publication's data, whole, in order; a delta that does not
//   apply resubscribes the channel from the last publication delivered.

import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const require = createRequire(import.meta.url);
const { WsGate } = require(join(root, 'web', 'wsgate.js'));
const vectors = JSON.parse(readFileSync(join(here, 'delta_vectors.json'), 'utf8'));
const utf8 = (s) => new TextEncoder().encode(s);

test('applies the deltas Fossil itself made', () => {
  const dir = join(root, 'tests', 'data', 'fossil');
  const cases = readdirSync(dir, { withFileTypes: true }).filter((e) => e.isDirectory());
  assert.ok(cases.length >= 16, `vectors: ${cases.length}`);
  for (const c of cases) {
    const read = (f) => new Uint8Array(readFileSync(join(dir, c.name, f)));
    const out = WsGate.fossilApply(read('source'), read('delta'));
    assert.deepEqual(Buffer.from(out), Buffer.from(read('target')), c.name);
  }
});

test("applies our encoder's deltas as they arrive in a JSON string", () => {
  assert.ok(vectors.codec.length >= 10);
  for (const c of vectors.codec) {
    const out = WsGate.fossilApply(utf8(c.source), utf8(c.delta));
    assert.equal(new TextDecoder().decode(out), c.target, c.name);
  }
});

test('refuses what is not a delta of this source', () => {
  const c = vectors.codec.find((x) => x.name === 'dashboard-tick');
  const src = utf8(c.source);
  const delta = utf8(c.delta);
  // Every truncation, and anything appended.
  for (let i = 0; i < delta.length; i++) {
    assert.throws(() => WsGate.fossilApply(src, delta.subarray(0, i)), /delta:/, `cut at ${i}`);
  }
  assert.throws(() => WsGate.fossilApply(src, utf8(c.delta + 'x')), /after the checksum/);
  // Another source: a copy outside it, or a bad checksum.
  assert.throws(() => WsGate.fossilApply(src.subarray(0, 100), delta), /past the end of the source/);
  const other = utf8(c.source.replace(/[0-9]/g, '7'));
  assert.throws(() => WsGate.fossilApply(other, delta), /bad checksum/);
  // A huge declared size is refused before anything is allocated.
  assert.throws(() => WsGate.fossilApply(src, utf8('~~~~~\n0;')), /over the limit/);
  assert.throws(() => WsGate.fossilApply(src, utf8('~~~~~~~\n')), /32 bits/);
  // Random bytes: an error, never a hang or another kind of exception.
  let seed = 12345;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) & 0xff;
  for (let n = 0; n < 2000; n++) {
    const junk = new Uint8Array(3 + (rnd() % 40)).map(() => rnd());
    if (n % 2) junk.set(utf8('1f\n'), 0); // a plausible header
    try {
      WsGate.fossilApply(src, junk);
    } catch (e) {
      assert.match(e.message, /^delta: /);
    }
  }
});

// --- the client on a fake WebSocket -------------------------------------------

class FakeWebSocket {
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeWebSocket.last = this;
    setTimeout(() => {
      this.readyState = 1;
      this.onopen && this.onopen();
    });
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close() {
    this.readyState = 3;
  }
  deliver(obj) {
    this.onmessage({ data: typeof obj === 'string' ? obj : JSON.stringify(obj) });
  }
}
globalThis.WebSocket = FakeWebSocket;

async function until(what, cond, ms = 5000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** A gate subscribed to `channel` on a fresh fake socket; returns what the application received. */
const gates = [];
afterEach(() => {
  // A failed test leaves no gate behind to disturb the next one.
  for (const g of gates.splice(0)) g.close();
});

async function subscribed(channel, opts) {
  FakeWebSocket.last = null;
  const gate = new WsGate({ url: 'http://127.0.0.1:9', transports: ['websocket'], heartbeat: 0 });
  gates.push(gate);
  const got = [];
  const errors = [];
  gate.on('error', (e) => errors.push(e));
  gate.subscribe(channel, { ...opts, onPublication: (data, pub) => got.push({ data, pub }) });
  await until('the subscribe op', () => FakeWebSocket.last?.sent.some((m) => m.op === 'subscribe' && m.channel === channel));
  const ws = FakeWebSocket.last;
  const op = ws.sent.find((m) => m.op === 'subscribe');
  ws.deliver({ id: op.id, ok: true, channel, epoch: 'E', offset: 0 });
  return { gate, ws, got, errors, op };
}

/** A whole publication frame's text, as the gateway writes it. */
const whole = (channel, offset, data) => `{"channel":"${channel}","offset":${offset},"data":${data}}`;

test('a delta subscription asks for deltas and sees every publication whole', async () => {
  for (const s of vectors.streams) {
    const { gate, ws, got, errors, op } = await subscribed(s.channel, { delta: 'fossil' });
    assert.equal(op.delta, 'fossil');
    for (const [i, f] of s.frames.entries()) {
      ws.deliver(f);
      // What it keeps is the data's bytes exactly: the next delta's source.
      assert.deepEqual(Buffer.from(gate._subs.get(s.channel)._base), Buffer.from(utf8(s.data[i])), `${s.channel} ${i}`);
    }
    assert.deepEqual(
      got.map((g) => g.data),
      s.data.map((d) => JSON.parse(d)),
      s.channel,
    );
    assert.deepEqual(
      got.map((g) => g.pub.offset),
      s.data.map((_, i) => i + 1),
    );
    assert.ok(got.every((g) => g.pub.delta === undefined), 'the delta flag is not shown');
    assert.equal(gate.stats.deltas, s.kinds.filter((k) => k === 'delta').length);
    assert.deepEqual(errors, []);
  }
});

test('a delta that does not apply resubscribes from the last publication delivered', async () => {
  const s = vectors.streams.find((x) => x.channel === 'dash:eu');
  assert.ok(s.kinds.slice(1).every((k) => k === 'delta'));
  const { gate, ws, got, errors } = await subscribed(s.channel, { delta: 'fossil' });
  for (const f of s.frames.slice(0, 10)) ws.deliver(f); // offsets 1..10
  // Offset 11 is lost on the way: offset 12's delta is against it.
  ws.sent.length = 0;
  ws.deliver(s.frames[11]);
  assert.equal(got.length, 10, 'nothing delivered for it');
  assert.equal(errors.length, 1);
  assert.match(errors[0].message, /delta: .*dash:eu at offset 12/);
  assert.equal(gate.stats.deltaFailures, 1);
  // Unsubscribe, then subscribe from offset 10, pipelined.
  assert.deepEqual(
    ws.sent.map((m) => [m.op, m.channel, m.since, m.delta]),
    [
      ['unsubscribe', 'dash:eu', undefined, undefined],
      ['subscribe', 'dash:eu', { epoch: 'E', offset: 10 }, 'fossil'],
    ],
  );
  // What was already on its way is dropped, deltas or not: the replay has it.
  ws.deliver(s.frames[12]);
  ws.deliver(whole(s.channel, 14, s.data[13]));
  assert.equal(got.length, 10);
  const [unsub, sub] = ws.sent;
  ws.deliver({ id: unsub.id, ok: true, channel: s.channel });
  ws.deliver({ id: sub.id, ok: true, channel: s.channel, epoch: 'E', offset: 10, recovered: true });
  // The replay is whole; live deltas apply on top of it.
  for (let o = 11; o <= 15; o++) ws.deliver(whole(s.channel, o, s.data[o - 1]));
  for (const f of s.frames.slice(15)) ws.deliver(f);
  assert.deepEqual(
    got.map((g) => g.data),
    s.data.map((d) => JSON.parse(d)),
  );
  assert.equal(errors.length, 1);
  assert.equal(gate.stats.deltas, 9 + 15); // offsets 2..10 and 16..30
});

test('without the option nothing changes', async () => {
  const s = vectors.streams.find((x) => x.channel === 'esc');
  const { gate, ws, got, op } = await subscribed(s.channel, {});
  assert.equal(op.delta, undefined);
  ws.deliver(whole(s.channel, 1, s.data[0]));
  assert.equal(gate._subs.get(s.channel)._base, null, 'no bytes kept');
  // A delta it did not ask for cannot apply: resubscribed, not delivered.
  ws.deliver(s.frames[1]);
  assert.deepEqual(
    got.map((g) => g.data),
    [JSON.parse(s.data[0])],
  );
  assert.equal(gate.stats.deltaFailures, 1);
});
