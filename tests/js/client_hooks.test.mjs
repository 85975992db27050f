// The JavaScript client's issue 15 additions (web/wsgate.js), in node on a
// fake WebSocket: getToken before connecting and before the token's exp (a
// `refresh` op), a close 4501 answered with a new token and a reconnect,
// getToken giving no token ends the client; publish options, history(),
// and publications kept out of the history (no offset); rpc() and its
// errors (14 temporary).
// Run with `node --test tests/js/` (scripts/test.sh).

import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const { WsGate } = require(join(here, '..', '..', 'web', 'wsgate.js'));

class FakeWebSocket {
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeWebSocket.all.push(this);
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
    this.onmessage({ data: JSON.stringify(obj) });
  }
  /** The server closes the connection. */
  serverClose(code, reason = '') {
    this.readyState = 3;
    this.onclose && this.onclose({ code, reason });
  }
  /** Answer op `pred` with `fields`. */
  answer(pred, fields) {
    const op = this.sent.find(pred);
    assert.ok(op, 'the op was sent');
    this.deliver({ id: op.id, ok: true, ...fields });
    return op;
  }
}
FakeWebSocket.all = [];
globalThis.WebSocket = FakeWebSocket;
const last = () => FakeWebSocket.all[FakeWebSocket.all.length - 1];

async function until(what, cond, ms = 5000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

const b64url = (s) => Buffer.from(s).toString('base64url');
/** An (unsigned: the fake server does not check) JWT expiring in `ms`. */
const jwt = (sub, ms) => `${b64url('{"alg":"HS256"}')}.${b64url(JSON.stringify({ sub, exp: Math.floor((Date.now() + ms) / 1000) }))}.sig`;

const gates = [];
afterEach(() => {
  for (const g of gates.splice(0)) g.close();
  FakeWebSocket.all = [];
});

function gate(opts) {
  const g = new WsGate({ url: 'http://127.0.0.1:9', transports: ['websocket'], heartbeat: 0, backoff: { base: 10, cap: 20 }, ...opts });
  gates.push(g);
  return g;
}

test('a token is fetched before connecting and refreshed before its exp', async () => {
  // `exp` is in whole seconds (floored): 4.5 s leaves at least 3.5 s, so
  // the refresh (2 s before exp) is due 1.5 s or more after connecting,
  // never at once (2.5 s could leave 1.5 s: a refresh before the first check).
  const tokens = [jwt('ann', 4500), jwt('ann', 60000)];
  let calls = 0;
  const g = gate({ getToken: () => Promise.resolve(tokens[calls++]), tokenRefreshBefore: 2000 });
  const states = [];
  g.on('state', (s) => states.push(s));
  await until('connected', () => g.state === 'connected');
  assert.equal(calls, 1);
  assert.equal(new URL(last().url).searchParams.get('token'), tokens[0]);
  // 1.5–2.5 s later, at exp - 2 s: a refresh op with the next token.
  await until('the refresh op', () => last().sent.some((m) => m.op === 'refresh'));
  const op = last().answer((m) => m.op === 'refresh', { exp: 1 });
  assert.equal(op.token, tokens[1]);
  assert.equal(calls, 2);
  assert.equal(FakeWebSocket.all.length, 1, 'no reconnect');
  assert.ok(!states.includes('closed'), states.join());
});

test('close 4501 fetches a new token and reconnects instead of ending', async () => {
  const issued = [];
  const g = gate({
    getToken: () => {
      issued.push(jwt('ann', 60000 + issued.length * 1000));
      return Promise.resolve(issued[issued.length - 1]);
    },
  });
  const errors = [];
  g.on('error', (e) => errors.push(e));
  g.subscribe('room:1', {});
  await until('subscribe op', () => last()?.sent.some((m) => m.op === 'subscribe'));
  last().answer((m) => m.op === 'subscribe', { channel: 'room:1', epoch: 'E', offset: 3 });
  const first = last();
  first.serverClose(4501, 'token expired');
  await until('a second connection', () => FakeWebSocket.all.length === 2 && g.state === 'connected');
  assert.equal(issued.length, 2, 'a new token for the new connection');
  assert.equal(new URL(last().url).searchParams.get('token'), issued[1]);
  // The channel resumes where it was.
  await until('resubscribe', () => last().sent.some((m) => m.op === 'subscribe'));
  assert.deepEqual(last().sent.find((m) => m.op === 'subscribe').since, { epoch: 'E', offset: 3 });
  assert.deepEqual(errors, []);
});

test('getToken giving no token ends the client; one that fails is retried', async () => {
  let n = 0;
  const g = gate({ getToken: () => (n++ === 0 ? Promise.reject(new Error('token service down')) : Promise.resolve('')) });
  const errors = [];
  g.on('error', (e) => errors.push(e.message));
  g.connect();
  await until('closed', () => g.state === 'closed');
  assert.equal(n, 2, 'the failure was retried');
  assert.deepEqual(errors, ['token service down', 'getToken gave no token']);
  assert.equal(FakeWebSocket.all.length, 0, 'never connected without a token');
  await assert.rejects(g.publish('c', 1), /closed/);
});

test('publish options, history() and publications without an offset', async () => {
  const g = gate({});
  const got = [];
  g.subscribe('feed', { onPublication: (data, pub) => got.push([data, pub.offset]) });
  await until('subscribe op', () => last()?.sent.some((m) => m.op === 'subscribe'));
  last().answer((m) => m.op === 'subscribe', { channel: 'feed', epoch: 'E', offset: 0 });

  const p = g.publish('feed', { a: 1 }, { idempotencyKey: 'k-1', excludeSelf: true, skipHistory: true });
  await until('publish op', () => last().sent.some((m) => m.op === 'publish'));
  const op = last().answer((m) => m.op === 'publish', { epoch: 'E', offset: 0 });
  assert.deepEqual(
    { key: op.idempotency_key, ex: op.exclude_client, skip: op.skip_history, data: op.data },
    { key: 'k-1', ex: true, skip: true, data: { a: 1 } },
  );
  assert.deepEqual(await p, { epoch: 'E', offset: 0 });
  const plain = g.publish('feed', 2);
  await until('second publish', () => last().sent.filter((m) => m.op === 'publish').length === 2);
  const op2 = last().sent.filter((m) => m.op === 'publish')[1];
  assert.ok(!('idempotency_key' in op2) && !('exclude_client' in op2) && !('skip_history' in op2), JSON.stringify(op2));
  last().deliver({ id: op2.id, ok: true, epoch: 'E', offset: 1 });
  await plain;

  const h = g.history('feed', { since: { epoch: 'E', offset: 4 }, limit: 2 });
  await until('history op', () => last().sent.some((m) => m.op === 'history'));
  const pubs = [
    { channel: 'feed', offset: 5, data: 'x' },
    { channel: 'feed', offset: 6, data: 'y' },
  ];
  const hop = last().answer((m) => m.op === 'history', { epoch: 'E', offset: 9, recovered: true, publications: pubs });
  assert.deepEqual({ since: hop.since, limit: hop.limit, reverse: hop.reverse }, { since: { epoch: 'E', offset: 4 }, limit: 2, reverse: undefined });
  assert.deepEqual(await h, { epoch: 'E', offset: 9, recovered: true, publications: pubs });
  const r = g.history('feed', { limit: 3, reverse: true });
  await until('second history op', () => last().sent.filter((m) => m.op === 'history').length === 2);
  const hop2 = last().sent.filter((m) => m.op === 'history')[1];
  assert.deepEqual({ limit: hop2.limit, reverse: hop2.reverse, since: hop2.since }, { limit: 3, reverse: true, since: undefined });
  last().deliver({ id: hop2.id, error: { code: 8, message: 'permission denied' } });
  await assert.rejects(r, (e) => e.code === 8);

  // A live-only publication (no offset) is delivered and leaves the position alone.
  last().deliver({ channel: 'feed', offset: 1, data: 'kept' });
  last().deliver({ channel: 'feed', data: 'live' });
  last().deliver({ channel: 'feed', offset: 2, data: 'next' });
  last().deliver({ channel: 'feed', offset: 2, data: 'duplicate' });
  assert.deepEqual(got, [
    ['kept', 1],
    ['live', undefined],
    ['next', 2],
  ]);
  assert.equal(g._subs.get('feed').offset, 2);
});

test('rpc() sends the method and data and resolves to the backend data', async () => {
  const g = gate({});
  const r = g.rpc('getPrice', { symbol: 'X' });
  await until('rpc op', () => last()?.sent.some((m) => m.op === 'rpc'));
  const op = last().answer((m) => m.op === 'rpc', { data: { price: 7 } });
  assert.deepEqual({ method: op.method, data: op.data }, { method: 'getPrice', data: { symbol: 'X' } });
  assert.deepEqual(await r, { price: 7 });

  const none = g.rpc('noData');
  await until('second rpc', () => last().sent.filter((m) => m.op === 'rpc').length === 2);
  const op2 = last().sent.filter((m) => m.op === 'rpc')[1];
  assert.equal(op2.data, null);
  last().deliver({ id: op2.id, ok: true });
  assert.equal(await none, null);

  const down = g.rpc('m', 1);
  await until('third rpc', () => last().sent.filter((m) => m.op === 'rpc').length === 3);
  const op3 = last().sent.filter((m) => m.op === 'rpc')[2];
  last().deliver({ id: op3.id, error: { code: 14, message: 'backend unavailable: timeout', temporary: true } });
  await assert.rejects(down, (e) => e.code === 14 && e.temporary === true);

  const refused = g.rpc('m', 2);
  await until('fourth rpc', () => last().sent.filter((m) => m.op === 'rpc').length === 4);
  const op4 = last().sent.filter((m) => m.op === 'rpc')[3];
  last().deliver({ id: op4.id, error: { code: 404, message: 'no such method' } });
  await assert.rejects(refused, (e) => e.code === 404 && e.temporary === false && e.message === 'no such method');
});

test('the connected message sets connectData and emits connected', async () => {
  const g = gate({});
  const seen = [];
  g.on('connected', (c) => seen.push(c));
  const pubs = [];
  g.on('publication', (p) => pubs.push(p));
  await until('connected', () => g.state === 'connected');
  assert.equal(g.connectData, undefined, 'nothing before the message');
  last().deliver({ connected: { client: 'c-1', user: 'ann', data: { hi: 1 } } });
  assert.deepEqual(seen, [{ client: 'c-1', user: 'ann', data: { hi: 1 } }]);
  assert.equal(g.clientId, 'c-1');
  assert.equal(g.userId, 'ann');
  assert.deepEqual(g.connectData, { hi: 1 });
  // A reconnect's message replaces it; a message without data clears it.
  last().serverClose(4000, 'shutdown');
  await until('a second connection', () => FakeWebSocket.all.length === 2 && g.state === 'connected');
  last().deliver({ connected: { client: 'c-2', user: '' } });
  assert.equal(seen.length, 2);
  assert.deepEqual(seen[1], { client: 'c-2', user: '', data: undefined });
  assert.equal(g.connectData, undefined);
  // A message from the first, ended connection is not this one's.
  FakeWebSocket.all[0].onmessage && FakeWebSocket.all[0].deliver({ connected: { client: 'old', user: 'x' } });
  assert.equal(g.clientId, 'c-2');
  assert.equal(pubs.length, 0, 'never taken for a publication');
});

test('name, version and data go in the connection URL; a subscription data in its subscribe op', async () => {
  const data = { room: 'a b&c=d', n: [1, 2] };
  const g = gate({ name: 'web-app', version: '1.2.3', data });
  g.subscribe('room:1', { data: { invite: 'x1' } });
  g.subscribe('room:2', {});
  await until('subscribe ops', () => last()?.sent.filter((m) => m.op === 'subscribe').length === 2);
  const q = new URL(last().url).searchParams;
  assert.deepEqual([q.get('name'), q.get('version'), JSON.parse(q.get('data'))], ['web-app', '1.2.3', data]);
  const ops = last().sent.filter((m) => m.op === 'subscribe');
  assert.deepEqual(ops.find((m) => m.channel === 'room:1').data, { invite: 'x1' });
  assert.ok(!('data' in ops.find((m) => m.channel === 'room:2')));
  // None given: none sent.
  const plain = gate({});
  plain.connect();
  await until('a second connection', () => FakeWebSocket.all.length === 2);
  const p = new URL(last().url).searchParams;
  assert.deepEqual([p.has('name'), p.has('version'), p.has('data')], [false, false, false]);
});

/** A fetch that answers /sse with `sse` (a stream kept open) and /poll with `poll()`'s JSON. */
function fakeFetch({ sse, poll }) {
  const calls = [];
  const f = (url, init = {}) => {
    calls.push(url);
    const path = new URL(url).pathname;
    if (path === '/sse') {
      const body = new ReadableStream({
        start(c) {
          c.enqueue(new TextEncoder().encode(sse));
          init.signal?.addEventListener('abort', () => c.error(new Error('aborted')));
        },
      });
      return Promise.resolve(new Response(body, { status: 200, headers: { 'content-type': 'text/event-stream' } }));
    }
    if (path === '/poll') {
      const answer = poll(calls.filter((u) => new URL(u).pathname === '/poll').length);
      if (!answer) return new Promise(() => {}); // held
      return Promise.resolve(new Response(JSON.stringify(answer), { status: 200, headers: { 'content-type': 'application/json' } }));
    }
    return Promise.resolve(new Response('{}', { status: 404 }));
  };
  f.calls = calls;
  return f;
}

test('SSE and long-poll emit connected from their first event or answer', async () => {
  const saved = globalThis.fetch;
  try {
    const hello = { client: 'c-sse', user: 'sam', data: { hi: 1 } };
    globalThis.fetch = fakeFetch({
      sse: `retry: 2000\n\nevent: connected\ndata: ${JSON.stringify({ connected: hello })}\n\n` +
        `event: subscribed\nid: t1\ndata: ${JSON.stringify({ channel: 'news', epoch: 'E', offset: 0 })}\n\n`,
    });
    const g = gate({ transports: ['sse'], name: 'web', data: { a: 1 } });
    const seen = [];
    g.on('connected', (c) => seen.push(c));
    g.subscribe('news', {});
    await until('connected over SSE', () => seen.length === 1);
    assert.deepEqual(seen, [hello]);
    assert.deepEqual([g.clientId, g.userId, g.connectData], ['c-sse', 'sam', { hi: 1 }]);
    const q = new URL(globalThis.fetch.calls[0]).searchParams;
    assert.deepEqual([q.get('name'), JSON.parse(q.get('data'))], ['web', { a: 1 }]);
    g.close();

    // Long-poll: the first answer's first message; later answers' are not emitted again.
    let cursor = 0;
    const answer = (user, msgs) => ({ cursor: `k${++cursor}`, messages: [{ connected: { client: `c-${cursor}`, user } }, ...msgs] });
    globalThis.fetch = fakeFetch({
      poll: (n) =>
        n === 1 ? answer('pat', []) : n === 2 ? answer('pat', [{ channel: 'news', offset: 1, data: 'x' }]) : null,
    });
    const p = gate({ transports: ['poll'] });
    const pseen = [];
    const pubs = [];
    p.on('connected', (c) => pseen.push(c));
    p.subscribe('news', { onPublication: (d) => pubs.push(d) });
    await until('the second poll answered', () => pubs.length === 1);
    assert.deepEqual(pseen, [{ client: 'c-1', user: 'pat', data: undefined }]);
    assert.deepEqual(pubs, ['x'], 'a connected message is never a publication');
    p.close();
  } finally {
    globalThis.fetch = saved;
  }
});
