/*! wsgate.js: the browser client of the wsgate gateway. No dependencies.
 *
 * Load it either way:
 *   <script src="/wsgate.js"></script>           classic script: sets window.WsGate
 *   import '/wsgate.js'; const { WsGate } = globalThis;   from an ES module
 *   const { WsGate } = require('./wsgate.js');   CommonJS (bundlers, Node)
 *
 *   const gate = new WsGate({ user: 'alice' });
 *   const sub = gate.subscribe('room:lobby', {
 *     onPublication(data, pub) {}, onSubscribed(info) {}, onRecoveryFailed(info) {},
 *     onJoin(member) {}, onLeave(member) {}, onError(err) {},
 *     delta: 'fossil',   // optional: publications after the first may travel as deltas
 *     data: { invite: 'x1' },   // optional: sent to the gateway's subscribe proxy
 *   });
 *   await gate.publish('room:lobby', { text: 'hi' });   // → { epoch, offset }
 *   await gate.publish('room:lobby', msg, { idempotencyKey: 'm-81', excludeSelf: true, skipHistory: false });
 *   await gate.history('room:lobby', { since: { epoch, offset }, limit: 50 });  // or { limit: 20, reverse: true }
 *   await gate.presence('room:lobby');                   // → { clients, users, members }
 *   await gate.rpc('getPrice', { symbol: 'X' });          // → the backend's data (needs the gateway's rpc proxy)
 *
 * Tokens: `getToken: () => fetch('/token').then(r => r.text())` is called
 * before connecting and again before the token's `exp` (a `refresh` op on
 * the open WebSocket; SSE and long-poll use the new token from their next
 * request); a close 4501 (token expired) fetches a new one and reconnects
 * instead of ending. A getToken that fails is retried with the reconnect
 * backoff; one that resolves to '' or null ends the client (state
 * 'closed'). Errors reject with a WsGateError {code, message, temporary}:
 * code 14 (the backend could not decide) is always temporary (retry).
 *   gate.on('state', s => …); gate.on('transport', name => …);
 *   sub.unsubscribe(); gate.close();
 *
 * Transports, tried in order: WebSocket (`/ws`), then Server-Sent Events
 * (`/sse`, ops over `POST /send`), then long-poll (`/poll`, ops over
 * `POST /send`). Every transport resumes each channel where it stopped: over
 * WebSocket with `since` {epoch, offset}, over SSE with the last event id,
 * over long-poll with the cursor. Publications are de-duplicated by offset,
 * so each is delivered at most once and in order; when the server cannot
 * replay a gap it says so (`recovered: false` on resuming, or a `resync` on
 * a live stream), and `onRecoveryFailed` is called.
 */
(function (root) {
  'use strict';

  var DEFAULTS = {
    url: '', // gateway base URL ('' = this page's origin), e.g. 'https://gate.example.com'
    user: undefined, // user name (open mode: sent as ?user=)
    params: undefined, // extra query parameters for every request, e.g. { token: '…' }
    transports: ['websocket', 'sse', 'poll'],
    backoff: { base: 500, cap: 30000, stable: 5000 },
    heartbeat: 20000, // WebSocket: send {"op":"ping"} this often (0: off)
    heartbeatTimeout: 10000, // … and reconnect when no frame arrives this long after it
    sseKeepalive: 15000, // the server's SSE keepalive interval; silence for 2x + 5 s: reconnect (0: off)
    openTimeout: 10000, // a transport that has not opened by then has failed
    fallbackAfter: 2, // failed opens of a transport that never worked before moving to the next
    pollWait: 25, // long-poll hold, seconds (the server caps it)
    requestTimeout: 10000, // publish / presence / history / ping
    autoConnect: true,
    getToken: undefined, // () => Promise<string>: a connection token (JWT), fetched when needed
    name: undefined, // this client's name, for the gateway's connect proxy (?name=)
    version: undefined, // its version (?version=)
    data: undefined, // JSON for the connect proxy (?data=, at most 4 KiB encoded as JSON)
    tokenRefreshBefore: 10000, // ms before the token's exp to fetch the next one
  };

  /** The `exp` (ms) of a JWT, or null when it has none or is not a JWT. */
  function jwtExpiry(token) {
    try {
      var exp = JSON.parse(b64urlDecode(String(token).split('.')[1])).exp;
      return typeof exp === 'number' ? exp * 1000 : null;
    } catch (e) {
      return null;
    }
  }

  var TRANSPORT_NAMES = ['websocket', 'sse', 'poll'];

  /**
   * An error reply of the gateway ({code, message}, plus the HTTP status over
   * POST /send). `temporary`: retrying may work (error 14, the backend could
   * not decide; or a backend's refusal it marked temporary).
   */
  function WsGateError(message, code, status, temporary) {
    var e = new Error(message);
    Object.setPrototypeOf(e, WsGateError.prototype);
    e.name = 'WsGateError';
    e.code = code;
    e.temporary = temporary === true || code === 14;
    if (status !== undefined) e.status = status;
    return e;
  }
  WsGateError.prototype = Object.create(Error.prototype);
  WsGateError.prototype.constructor = WsGateError;

  function now() {
    return Date.now();
  }

  function merge(a, b) {
    var out = {};
    var k;
    for (k in a) out[k] = a[k];
    for (k in b || {}) if (b[k] !== undefined) out[k] = b[k];
    return out;
  }

  function safeCall(fn, self, args) {
    if (typeof fn !== 'function') return;
    try {
      fn.apply(self, args);
    } catch (e) {
      setTimeout(function () {
        throw e;
      });
    }
  }

  // --- resume tokens -------------------------------------------------------
  // The server's SSE ids and poll cursors are used verbatim. Only when the
  // client moves from WebSocket to SSE or long-poll does it build one from
  // the {epoch, offset} it holds, in the format the server documents
  // (src/http/resume.rs: base64url, no padding, of a JSON array of
  // [channel, epoch, offset] triples). It reads a poll cursor only to learn
  // each channel's epoch and position (a poll answer's messages carry
  // offsets only).
  function b64urlEncode(str) {
    var bytes = new TextEncoder().encode(str);
    var bin = '';
    for (var i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
    return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }
  function b64urlDecode(str) {
    var b = str.replace(/-/g, '+').replace(/_/g, '/');
    while (b.length % 4) b += '=';
    var bin = atob(b);
    var bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new TextDecoder().decode(bytes);
  }
  /** channel → {epoch, offset} of a token ({} if it is not one). */
  function decodeToken(token) {
    var out = {};
    try {
      var triples = JSON.parse(b64urlDecode(token));
      for (var i = 0; i < triples.length; i++) {
        var t = triples[i];
        if (Array.isArray(t) && t.length === 3 && typeof t[2] === 'number') out[t[0]] = { epoch: String(t[1]), offset: t[2] };
      }
    } catch (e) {}
    return out;
  }
  function encodeToken(positions) {
    var triples = [];
    for (var ch in positions) triples.push([ch, positions[ch].epoch, positions[ch].offset]);
    return triples.length ? b64urlEncode(JSON.stringify(triples)) : undefined;
  }

  // --- Fossil deltas --------------------------------------------------------
  // A subscription with `delta: 'fossil'` (over WebSocket) may get, after a
  // whole publication, the next ones as
  //   {"channel":"c","offset":43,"data":"<delta>","delta":true}
  // where `data` is a Fossil delta (fossil-scm.org, www/delta_format.wiki)
  // of the previous publication's `data` bytes, as a JSON string whose
  // characters are the delta's UTF-8 bytes. The client keeps, per channel,
  // the `data` bytes of the last publication the connection sent it (a whole
  // one's as they appear in the frame's text), applies each delta to them
  // and hands the application the data as if it had come whole.

  var B64 = new Int8Array(128).fill(-1);
  (function () {
    var d = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~';
    for (var i = 0; i < d.length; i++) B64[d.charCodeAt(i)] = i;
  })();
  var MAX_DELTA_OUTPUT = 1 << 28;

  /** The delta checksum: the sum of the big-endian 32-bit words (the last padded with zeros), mod 2^32. */
  function fossilChecksum(z) {
    var sum = 0;
    var n = z.length & ~3;
    var i = 0;
    for (; i < n; i += 4) sum = (sum + ((z[i] << 24) | (z[i + 1] << 16) | (z[i + 2] << 8) | z[i + 3])) >>> 0;
    var t = 0;
    for (var s = 24; i < z.length; i++, s -= 8) t |= z[i] << s;
    return (sum + t) >>> 0;
  }

  /**
   * Apply a Fossil delta (Uint8Array) to `source` (Uint8Array); returns the
   * target as a Uint8Array. Throws on anything that is not a delta made
   * against this source: a malformed command, a copy outside the source, a
   * size or checksum that does not match, bytes after the checksum, or a
   * declared size over `maxOutput` (default 256 MiB).
   */
  function fossilApply(source, delta, maxOutput) {
    var pos = 0;
    var n = delta.length;
    function fail(what) {
      throw new Error('delta: ' + what);
    }
    function int() {
      var v = 0;
      var c;
      while (pos < n && delta[pos] < 128 && (c = B64[delta[pos]]) >= 0) {
        v = v * 64 + c;
        if (v > 0xffffffff) fail('number over 32 bits');
        pos++;
      }
      return v;
    }
    var size = int();
    if (pos >= n || delta[pos++] !== 10) fail('size not terminated by a newline');
    if (size > (maxOutput || MAX_DELTA_OUTPUT)) fail('declared size ' + size + ' over the limit');
    var out = new Uint8Array(size);
    var len = 0;
    for (;;) {
      var cnt = int();
      if (pos >= n) fail('unterminated');
      var op = delta[pos++];
      if (op === 64) {
        // '@': copy cnt bytes of the source from ofst
        var ofst = int();
        if (pos >= n || delta[pos++] !== 44) fail("copy not terminated by ','");
        if (cnt > size - len) fail('output larger than declared');
        if (ofst + cnt > source.length) fail('copy past the end of the source');
        out.set(source.subarray(ofst, ofst + cnt), len);
        len += cnt;
      } else if (op === 58) {
        // ':': insert the cnt bytes that follow
        if (cnt > size - len) fail('output larger than declared');
        if (cnt > n - pos) fail('insert past the end of the delta');
        out.set(delta.subarray(pos, pos + cnt), len);
        len += cnt;
        pos += cnt;
      } else if (op === 59) {
        // ';': the checksum, last
        if (len !== size) fail('output smaller than declared');
        if (cnt !== fossilChecksum(out)) fail('bad checksum');
        if (pos !== n) fail('bytes after the checksum');
        return out;
      } else fail('unknown command ' + op);
    }
  }

  var utf8Encoder = typeof TextEncoder !== 'undefined' ? new TextEncoder() : null;
  var utf8Decoder = typeof TextDecoder !== 'undefined' ? new TextDecoder('utf-8', { fatal: true }) : null;

  /** The `data` of a whole publication frame's text, as bytes: `{"channel":…,"offset":…,"data":<data>}`. */
  function rawPublicationData(text) {
    if (typeof text !== 'string' || text.charCodeAt(text.length - 1) !== 125) return null;
    var i = text.indexOf(',"data":');
    return i < 0 ? null : utf8Encoder.encode(text.slice(i + 8, -1));
  }

  // --- Subscription ----------------------------------------------------------

  /**
   * One channel. `state`: 'pending' (not confirmed by the current
   * connection), 'subscribed', 'unsubscribed' or 'failed' (the server refused
   * it; see the error passed to onError). `position` is {epoch, offset} of the
   * last publication delivered, or of the subscription point.
   */
  function Subscription(gate, channel, handlers) {
    this.channel = channel;
    this.handlers = handlers || {};
    this.state = 'pending';
    this.epoch = null;
    this.offset = null;
    this._allowEq = false; // the next publication may carry `offset` itself (deliver_latest)
    this._gate = gate;
    // `delta: 'fossil'`: ask for deltas (WebSocket); _base is the last
    // publication's data bytes on this connection, _deltaBroken is set from
    // a delta that did not apply until the resubscribe is answered.
    this.delta = this.handlers.delta === 'fossil' && utf8Encoder && utf8Decoder ? 'fossil' : null;
    this._base = null;
    this._deltaBroken = false;
  }
  Object.defineProperty(Subscription.prototype, 'position', {
    get: function () {
      return this.epoch != null && this.offset != null ? { epoch: this.epoch, offset: this.offset } : null;
    },
  });
  Subscription.prototype.unsubscribe = function () {
    this._gate._unsubscribe(this);
  };
  Subscription.prototype._call = function (name, args) {
    safeCall(this.handlers[name], this, args);
  };

  // --- WsGate ----------------------------------------------------------------

  function WsGate(options) {
    if (!(this instanceof WsGate)) return new WsGate(options);
    var o = merge(DEFAULTS, options);
    o.backoff = merge(DEFAULTS.backoff, options && options.backoff);
    o.transports = (o.transports || TRANSPORT_NAMES).filter(function (t) {
      return TRANSPORT_NAMES.indexOf(t) >= 0 && transportAvailable(t);
    });
    if (!o.transports.length) throw new Error('WsGate: no usable transport');
    this.options = o;
    this._base = baseUrl(o.url);
    this._subs = new Map(); // channel → Subscription
    this._listeners = {};
    this._state = 'disconnected';
    this._transportIndex = 0;
    this._transportName = null;
    this._t = null; // the current transport connection
    this._everOpened = {}; // transport name → opened at least once
    this._openFailures = 0;
    this._attempt = 0;
    this._retryTimer = null;
    this._stableTimer = null;
    this._closed = false;
    this._queue = []; // requests waiting for a connection
    this._jwt = undefined; // the connection token from getToken
    this._refreshTimer = null;
    this._fetchingToken = false;
    this._token = undefined; // SSE last event id / poll cursor
    this._tokenChannels = []; // the channels it covers
    this._opens = 0;
    this.stats = {
      received: 0, // publications delivered to the application
      duplicates: 0, // publications dropped as already seen
      sent: 0, // ops sent (publish, presence, ping)
      reconnects: 0, // connections opened after the first one
      recoveryFailures: 0,
      deltas: 0, // publications that arrived as deltas
      deltaFailures: 0, // deltas that did not apply (the channel was resubscribed)
      transport: null,
      state: 'disconnected',
      connectedAt: null,
    };
    var self = this;
    this._onOnline = function () {
      if (self._retryTimer && !self._closed) {
        clearTimeout(self._retryTimer);
        self._retryTimer = null;
        self._connect();
      }
    };
    if (typeof addEventListener === 'function') addEventListener('online', this._onOnline);
    // Connect on the next turn, so listeners added right after `new` see every event.
    if (o.autoConnect) this._schedule(0);
  }

  function baseUrl(url) {
    var loc = typeof location !== 'undefined' ? location.href : 'http://localhost/';
    var u = new URL(url || '/', loc);
    return u.origin + u.pathname.replace(/\/+$/, '');
  }

  function transportAvailable(name) {
    if (name === 'websocket') return typeof WebSocket !== 'undefined';
    if (name === 'sse')
      return (
        typeof fetch === 'function' &&
        typeof ReadableStream !== 'undefined' &&
        typeof TextDecoder !== 'undefined' &&
        typeof AbortController !== 'undefined'
      );
    return typeof fetch === 'function' && typeof AbortController !== 'undefined';
  }

  WsGate.WsGateError = WsGateError;
  WsGate.Subscription = Subscription;
  WsGate.fossilApply = fossilApply;
  WsGate.version = '0.1.0';

  var P = WsGate.prototype;

  Object.defineProperty(P, 'state', {
    get: function () {
      return this._state;
    },
  });
  Object.defineProperty(P, 'transport', {
    get: function () {
      return this._transportName;
    },
  });

  /** Listen: 'state', 'transport', 'publication', 'presence', 'error', 'recoveryFailed'. Returns an unsubscribe function. */
  P.on = function (event, fn) {
    (this._listeners[event] = this._listeners[event] || []).push(fn);
    var self = this;
    return function () {
      self.off(event, fn);
    };
  };
  P.off = function (event, fn) {
    var l = this._listeners[event];
    if (l) this._listeners[event] = l.filter(function (f) {
      return f !== fn;
    });
  };
  P._emit = function (event) {
    var args = Array.prototype.slice.call(arguments, 1);
    var l = (this._listeners[event] || []).slice();
    for (var i = 0; i < l.length; i++) safeCall(l[i], this, args);
  };

  P._url = function (path, query) {
    var parts = [];
    var add = function (k, v) {
      if (v !== undefined && v !== null) parts.push(encodeURIComponent(k) + '=' + encodeURIComponent(v));
    };
    var q = query || [];
    for (var i = 0; i < q.length; i++) add(q[i][0], q[i][1]);
    add('user', this.options.user);
    add('token', this._jwt);
    // What the connect proxy is told of this client (Centrifugo's connect
    // command's name, version and data, as its unidirectional transports
    // take them).
    add('name', this.options.name);
    add('version', this.options.version);
    if (this.options.data !== undefined) add('data', JSON.stringify(this.options.data));
    var extra = this.options.params || {};
    for (var k in extra) if (!(k === 'token' && this._jwt)) add(k, extra[k]);
    return this._base + path + (parts.length ? '?' + parts.join('&') : '');
  };

  /** Channels to stream: every subscription not refused or left. */
  P._channels = function () {
    var out = [];
    this._subs.forEach(function (s) {
      if (s.state === 'pending' || s.state === 'subscribed') out.push(s.channel);
    });
    return out;
  };

  P.subscribe = function (channel, handlers) {
    if (typeof channel !== 'string' || !channel) throw new TypeError('WsGate.subscribe: channel name required');
    var existing = this._subs.get(channel);
    if (existing && existing.state !== 'failed') throw new Error('WsGate.subscribe: already subscribed to ' + channel);
    var sub = new Subscription(this, channel, handlers);
    this._subs.set(channel, sub);
    if (this._closed) return sub;
    if (!this._t && !this._retryTimer && this.options.autoConnect) this._connect();
    else if (this._t) this._t.subscribe(sub);
    return sub;
  };

  P._unsubscribe = function (sub) {
    if (this._subs.get(sub.channel) !== sub) return;
    var wasActive = sub.state === 'pending' || sub.state === 'subscribed';
    this._subs.delete(sub.channel);
    sub.state = 'unsubscribed';
    if (wasActive && this._t) this._t.unsubscribe(sub);
  };

  /**
   * Publish `data` (any JSON) to a channel. Resolves to {epoch, offset}.
   * opts: idempotencyKey (a retry with the same key within 5 minutes is
   * answered with the first result), excludeSelf (not delivered back to this
   * connection), skipHistory (live only, no offset).
   */
  P.publish = function (channel, data, opts) {
    var op = { op: 'publish', channel: channel, data: data === undefined ? null : data };
    opts = opts || {};
    if (opts.idempotencyKey != null) op.idempotency_key = String(opts.idempotencyKey);
    if (opts.excludeSelf) op.exclude_client = true;
    if (opts.skipHistory) op.skip_history = true;
    return this._request(op).then(function (r) {
      return { epoch: r.epoch, offset: r.offset };
    });
  };

  /**
   * A page of a channel's history. opts: since ({epoch, offset}: what came
   * after it, oldest first), limit (default 100, at most 1000; 0: the
   * position only), reverse (newest first; not with since). Resolves to
   * {epoch, offset, recovered, publications: [{channel, offset, data}]}.
   */
  P.history = function (channel, opts) {
    var op = { op: 'history', channel: channel };
    opts = opts || {};
    if (opts.since) op.since = { epoch: opts.since.epoch, offset: opts.since.offset };
    if (opts.limit != null) op.limit = opts.limit;
    if (opts.reverse) op.reverse = true;
    return this._request(op).then(function (r) {
      return { epoch: r.epoch, offset: r.offset, recovered: r.recovered, publications: r.publications || [] };
    });
  };

  /** The channel's members: {clients, users, members: [{client, user}]}. */
  P.presence = function (channel) {
    return this._request({ op: 'presence', channel: channel }).then(function (r) {
      return { clients: r.clients, users: r.users, members: r.members || [] };
    });
  };

  /**
   * Call `method` on the application's backend (the gateway's rpc proxy),
   * with `data` (any JSON). Resolves to the backend's `data` (null when it
   * gave none); rejects with its error code, 14 when it could not decide
   * (temporary: the call may have run; make methods idempotent), 2 when the
   * gateway has no rpc proxy.
   */
  P.rpc = function (method, data) {
    var op = { op: 'rpc', method: String(method), data: data === undefined ? null : data };
    return this._request(op).then(function (r) {
      return r.data === undefined ? null : r.data;
    });
  };

  /** A round trip to the gateway; resolves to the time it took in ms. */
  P.ping = function () {
    var t0 = now();
    return this._request({ op: 'ping' }).then(function () {
      return now() - t0;
    });
  };

  /** Connect now (also cuts a reconnection delay short). */
  P.connect = function () {
    this._closed = false;
    if (!this._t) {
      clearTimeout(this._retryTimer);
      this._connect();
    }
    return this;
  };

  /** Close for good: no reconnect; pending requests are rejected. */
  P.close = function () {
    this._closed = true;
    clearTimeout(this._retryTimer);
    clearTimeout(this._stableTimer);
    this._retryTimer = this._stableTimer = null;
    var t = this._t;
    this._t = null;
    if (t) t.close();
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    this._failQueue(new Error('WsGate closed'));
    if (typeof removeEventListener === 'function') removeEventListener('online', this._onOnline);
    this._setState('closed');
  };

  /** The token from getToken: fetched (true when there is one to connect with). */
  P._fetchToken = function () {
    var self = this;
    return Promise.resolve()
      .then(function () {
        return self.options.getToken();
      })
      .then(
        function (token) {
          if (self._closed) return false;
          if (!token) {
            // The application has no token for us (logged out): stop.
            var e = WsGateError('getToken gave no token', 4501);
            self._emit('error', e);
            self._failQueue(e);
            self.close();
            return false;
          }
          self._jwt = String(token);
          self._scheduleRefresh();
          return true;
        },
        function (e) {
          if (self._closed) return false;
          self._emit('error', e);
          return false;
        },
      );
  };

  /** Fetch the next token `tokenRefreshBefore` ms before this one's exp. */
  P._scheduleRefresh = function () {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    var exp = jwtExpiry(this._jwt);
    if (exp === null) return;
    var self = this;
    var delay = Math.max(0, exp - this.options.tokenRefreshBefore - Date.now());
    this._refreshTimer = setTimeout(function () {
      self._refreshTimer = null;
      self._fetchToken().then(function (ok) {
        if (!ok) {
          // Try again shortly; a close 4501 reconnects with a new one anyway.
          if (!self._closed && !self._refreshTimer) self._refreshTimer = setTimeout(function () {
            self._refreshTimer = null;
            self._scheduleRefresh();
          }, Math.min(5000, self.options.tokenRefreshBefore / 2));
          return;
        }
        var t = self._t;
        if (t && t.name === 'websocket' && t.canSend()) {
          self._request({ op: 'refresh', token: self._jwt }).catch(function (e) {
            self._emit('error', e);
          });
        }
      });
    }, delay);
  };

  P._setState = function (s) {
    if (this._state === s) return;
    this._state = s;
    this.stats.state = s;
    this._emit('state', s);
  };

  P._connect = function () {
    this._retryTimer = null;
    if (this._closed || this._t || this._fetchingToken) return;
    var o = this.options;
    if (o.getToken) {
      var exp = this._jwt && jwtExpiry(this._jwt);
      if (!this._jwt || (exp && exp - Date.now() < o.tokenRefreshBefore / 2)) {
        var self = this;
        this._fetchingToken = true;
        this._setState('connecting');
        this._fetchToken().then(function (ok) {
          self._fetchingToken = false;
          if (ok) self._connect();
          else if (!self._closed) self._ended({ name: 'token' }, { opened: true, tokenFailed: true });
        });
        return;
      }
    }
    var name = this.options.transports[this._transportIndex];
    if (name !== this._transportName) {
      this._transportName = name;
      this.stats.transport = name;
      this._emit('transport', name);
    }
    this._setState('connecting');
    var T = name === 'websocket' ? WsTransport : name === 'sse' ? SseTransport : PollTransport;
    var t = new T(this);
    this._t = t;
    t.open();
  };

  // Called by transports ------------------------------------------------------

  P._opened = function (t) {
    if (t !== this._t) return;
    this._openFailures = 0;
    this._everOpened[t.name] = true;
    if (this._opens++ > 0) this.stats.reconnects++;
    this.stats.connectedAt = now();
    var self = this;
    clearTimeout(this._stableTimer);
    this._stableTimer = setTimeout(function () {
      self._attempt = 0;
    }, this.options.backoff.stable);
    this._setState('connected');
    var q = this._queue;
    this._queue = [];
    for (var i = 0; i < q.length; i++) t.request(q[i]);
  };

  /** The connection ended. info: {opened, fatal, code, reason, immediate}. */
  P._ended = function (t, info) {
    if (t !== this._t && !info.tokenFailed) return;
    this._t = null;
    if (info.tokenExpired) this._jwt = undefined; // fetch a new one before reconnecting
    clearTimeout(this._stableTimer);
    this._stableTimer = null;
    this.stats.connectedAt = null;
    this._subs.forEach(function (s) {
      if (s.state === 'subscribed') s.state = 'pending';
    });
    if (info.error) this._emit('error', info.error);
    if (this._closed) return;
    if (info.fatal) {
      this._failQueue(info.error || new Error('connection refused by the gateway'));
      this._setState('closed');
      this._closed = true;
      return;
    }
    this._setState('disconnected');
    var o = this.options;
    if (!info.opened) {
      this._openFailures++;
      if (!this._everOpened[t.name] && this._openFailures >= o.fallbackAfter && this._transportIndex < o.transports.length - 1) {
        // This transport never worked here: try the next one at once.
        this._transportIndex++;
        this._openFailures = 0;
        this._attempt = 0;
        this._schedule(0);
        return;
      }
    }
    if (info.immediate) return this._schedule(0);
    var cap = Math.min(o.backoff.cap, o.backoff.base * Math.pow(2, this._attempt));
    this._attempt = Math.min(this._attempt + 1, 30);
    this._schedule(Math.random() * cap); // full jitter
  };

  P._schedule = function (ms) {
    var self = this;
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(function () {
      self._connect();
    }, ms);
  };

  P._failQueue = function (err) {
    var q = this._queue;
    this._queue = [];
    for (var i = 0; i < q.length; i++) q[i].fail(err);
  };

  /** A request {op, resolve, reject}; waits for a connection when there is none. */
  P._request = function (op) {
    var self = this;
    return new Promise(function (resolve, reject) {
      if (self._closed) return reject(new Error('WsGate closed'));
      var done = false;
      var req = {
        op: op,
        ok: function (v) {
          if (done) return;
          done = true;
          clearTimeout(timer);
          resolve(v);
        },
        fail: function (e) {
          if (done) return;
          done = true;
          clearTimeout(timer);
          var i = self._queue.indexOf(req);
          if (i >= 0) self._queue.splice(i, 1);
          reject(e);
        },
      };
      var timer = setTimeout(function () {
        req.fail(new Error('WsGate: ' + op.op + ' timed out'));
      }, self.options.requestTimeout);
      self.stats.sent++;
      if (self._t && self._t.canSend()) self._t.request(req);
      else {
        self._queue.push(req);
        if (!self._t && !self._retryTimer) self._connect();
      }
    });
  };

  /** A subscribe answer (WebSocket reply, SSE `subscribed` event, poll `recovered`). */
  P._subscribed = function (channel, info) {
    var sub = this._subs.get(channel);
    if (!sub) return;
    // A new subscription: the server sends its first publication whole.
    sub._base = null;
    sub._deltaBroken = false;
    var prev = sub.position;
    var failed = false;
    if (info.recovered === true) {
      // The gap is replayed next, in order: keep our offset.
      if (info.epoch != null) sub.epoch = info.epoch;
    } else {
      if (info.recovered === false) failed = true;
      else if (prev && info.epoch != null && (info.epoch !== prev.epoch || info.offset !== prev.offset)) failed = true; // resumed without a position
      if (info.epoch != null) sub.epoch = info.epoch;
      sub.offset = info.offset != null ? info.offset : null;
      sub._allowEq = info.recovered === undefined && !failed; // deliver_latest sends the latest first
    }
    var wasSubscribed = prev != null;
    sub.state = 'subscribed';
    var out = { channel: channel, epoch: sub.epoch, offset: sub.offset, transport: this._transportName, resubscribed: wasSubscribed };
    if (info.recovered !== undefined) out.recovered = info.recovered;
    if (failed) {
      this.stats.recoveryFailures++;
      var f = { channel: channel, previous: prev, epoch: sub.epoch, offset: sub.offset, transport: this._transportName };
      sub._call('onRecoveryFailed', [f]);
      this._emit('recoveryFailed', f);
    }
    sub._call('onSubscribed', [out]);
  };

  /**
   * The gateway's first message when a connect proxy admitted the
   * connection: `{"connected":{client, user, data?}}` (WebSocket: the first
   * message; SSE: the first event, `event: connected`; long-poll: the first
   * message of the transport's first answer). Kept as
   * gate.clientId, gate.userId and gate.connectData (the backend's `data`,
   * undefined without one), and emitted as a `connected` event.
   */
  P._connectedMsg = function (c, t) {
    if (t !== this._t) return;
    this.clientId = typeof c.client === 'string' ? c.client : null;
    this.userId = typeof c.user === 'string' ? c.user : '';
    this.connectData = c.data;
    this._emit('connected', { client: this.clientId, user: this.userId, data: c.data });
  };

  P._subscribeError = function (channel, err) {
    var sub = this._subs.get(channel);
    if (!sub) return;
    if (err.code === 6) {
      // already subscribed on this connection (e.g. the personal channel)
      sub.state = 'subscribed';
      sub._base = null;
      sub._deltaBroken = false;
      return;
    }
    sub.state = 'failed';
    var e = WsGateError(err.message || 'subscribe failed', err.code);
    e.channel = channel;
    sub._call('onError', [e]);
    this._emit('error', e);
  };

  P._publication = function (pub, t, raw) {
    var sub = this._subs.get(pub.channel);
    if (pub.delta === true || (sub && sub.delta && t && t.name === 'websocket')) {
      if (!sub || !this._undelta(sub, pub, t, raw)) return;
    }
    if (sub && sub.state !== 'failed') {
      if (sub.offset != null && (pub.offset < sub.offset || (pub.offset === sub.offset && !sub._allowEq))) {
        this.stats.duplicates++;
        return;
      }
      sub._allowEq = false;
      sub.offset = pub.offset;
      this.stats.received++;
      sub._call('onPublication', [pub.data, pub]);
    } else {
      this.stats.received++;
    }
    this._emit('publication', pub);
  };

  /**
   * Keep the data bytes of a publication on a delta subscription, and turn
   * a delta back into the publication's data. False when it is to be
   * dropped: a delta that does not apply (no base, another base, a bad
   * checksum) resubscribes the channel from the last publication delivered,
   * whose answer replays what follows whole; until then the channel's
   * publications are dropped (they come again in the replay).
   */
  P._undelta = function (sub, pub, t, raw) {
    if (sub._deltaBroken) return false;
    try {
      if (pub.delta === true) {
        if (!sub._base) throw new Error('delta: no previous publication');
        if (typeof pub.data !== 'string') throw new Error('delta: data is not a string');
        var bytes = fossilApply(sub._base, utf8Encoder.encode(pub.data));
        var data = JSON.parse(utf8Decoder.decode(bytes));
        sub._base = bytes;
        pub.data = data;
        delete pub.delta;
        this.stats.deltas++;
      } else {
        sub._base = rawPublicationData(raw);
      }
      return true;
    } catch (e) {
      this.stats.deltaFailures++;
      sub._base = null;
      sub._deltaBroken = true;
      sub.state = 'pending';
      var err = WsGateError(e.message + ' (' + sub.channel + ' at offset ' + pub.offset + '): resubscribing', 0);
      err.channel = sub.channel;
      this._emit('error', err);
      if (t && t === this._t) (t.restart || t.resubscribe).call(t, sub);
      return false;
    }
  };

  P._presenceEvent = function (msg) {
    var sub = this._subs.get(msg.channel);
    if (sub) {
      if (msg.join) sub._call('onJoin', [msg.join, msg]);
      if (msg.leave) sub._call('onLeave', [msg.leave, msg]);
    }
    this._emit('presence', msg);
  };

  /**
   * A `resync` (every transport): the channel's stream broke (the broker lost
   * publications, or the channel's history and a new epoch began) and goes on
   * after {epoch, offset}. Like `recovered: false`: onRecoveryFailed, then the
   * publications after the new position are delivered (a new epoch's offsets
   * start again from 1, so the position must move before they come).
   */
  P._resync = function (channel, r) {
    var sub = this._subs.get(channel);
    if (!sub || sub.state === 'failed' || !r || typeof r.offset !== 'number') return;
    var prev = sub.position;
    var epoch = r.epoch != null ? String(r.epoch) : sub.epoch;
    if (prev && prev.epoch === epoch && prev.offset >= r.offset) return; // nothing skipped
    sub.epoch = epoch;
    sub.offset = r.offset;
    sub._allowEq = false;
    sub._base = null; // the server starts the channel whole again
    if (!prev) return; // not positioned yet: nothing it had could be lost
    this.stats.recoveryFailures++;
    var f = { channel: channel, previous: prev, epoch: sub.epoch, offset: sub.offset, transport: this._transportName, resync: true };
    sub._call('onRecoveryFailed', [f]);
    this._emit('recoveryFailed', f);
  };

  /** Any message pushed by the server (publication, presence event, resync, drop notice). */
  P._push = function (msg, t, raw) {
    if (!msg || typeof msg !== 'object' || typeof msg.channel !== 'string') return;
    if (msg.resync && typeof msg.resync === 'object') return this._resync(msg.channel, msg.resync);
    if (msg.join || msg.leave) return this._presenceEvent(msg);
    if (msg.dropped) {
      var sub = this._subs.get(msg.channel);
      if (sub) {
        sub.state = 'pending';
        sub._call('onDropped', [msg.dropped]);
        // Subscribe again from the last offset delivered: the rest is replayed.
        if (t && t === this._t) t.resubscribe(sub);
      }
      return;
    }
    if (typeof msg.offset === 'number') this._publication(msg, t, raw);
    else if ('data' in msg) this._unsaved(msg);
  };

  /** A publication kept out of the history (skip_history): no offset to track. */
  P._unsaved = function (pub) {
    var sub = this._subs.get(pub.channel);
    this.stats.received++;
    if (sub && sub.state !== 'failed') sub._call('onPublication', [pub.data, pub]);
    this._emit('publication', pub);
  };

  /** Positions of the streamed channels, for a token when none came from the server. */
  P._positions = function () {
    var pos = {};
    this._subs.forEach(function (s) {
      if (s.position && (s.state === 'pending' || s.state === 'subscribed')) pos[s.channel] = s.position;
    });
    return pos;
  };

  /** The token to resume with: the server's last one, else one built from our positions. */
  P._resumeToken = function () {
    if (this._token !== undefined) return this._token;
    var pos = this._positions();
    this._tokenChannels = Object.keys(pos);
    return encodeToken(pos);
  };

  // --- WebSocket ---------------------------------------------------------------

  function WsTransport(gate) {
    this.gate = gate;
    this.name = 'websocket';
    this.ws = null;
    this.isOpen = false;
    this.done = false;
    this.seq = 0;
    this.pending = new Map(); // id → {kind, req | channel}
    this.timers = [];
  }
  WsTransport.prototype.open = function () {
    var self = this;
    var g = this.gate;
    var url = g._url('/ws').replace(/^http/, 'ws');
    var ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      return setTimeout(function () {
        self.end({ opened: false, error: e });
      });
    }
    this.ws = ws;
    this.openTimer = setTimeout(function () {
      self.end({ opened: false, error: new Error('WebSocket open timed out') });
    }, g.options.openTimeout);
    ws.onopen = function () {
      clearTimeout(self.openTimer);
      self.isOpen = true;
      self.alive();
      g._subs.forEach(function (s) {
        if (s.state === 'pending' || s.state === 'subscribed') self.subscribe(s);
      });
      g._opened(self);
    };
    ws.onmessage = function (ev) {
      self.alive();
      var msg;
      try {
        msg = JSON.parse(ev.data);
      } catch (e) {
        return;
      }
      self.onMessage(msg, ev.data);
    };
    ws.onclose = function (ev) {
      var code = ev.code;
      // 1002, 1007, 1009, 1003, 1008 and 4500-4999: reconnecting will not help.
      // 4501 (token expired) with getToken: a new token, then reconnect.
      var expired = code === 4501 && !!g.options.getToken;
      var fatal = !expired && self.isOpen && (code === 1002 || code === 1003 || code === 1007 || code === 1008 || code === 1009 || (code >= 4500 && code <= 4999));
      var err = fatal ? WsGateError('connection closed: ' + code + ' ' + ev.reason, code) : undefined;
      self.end({ opened: self.isOpen, code: code, reason: ev.reason, fatal: fatal, error: err, tokenExpired: expired });
    };
    ws.onerror = function () {}; // onclose follows
  };
  /** Heartbeat: a ping every `heartbeat` ms; no frame within `heartbeatTimeout` after it: dead. */
  WsTransport.prototype.alive = function () {
    var self = this;
    var o = this.gate.options;
    clearTimeout(this.deadTimer);
    clearTimeout(this.pingTimer);
    if (!o.heartbeat || this.done) return;
    this.pingTimer = setTimeout(function () {
      self.send({ id: self.nextId({ kind: 'ping' }), op: 'ping' });
      self.deadTimer = setTimeout(function () {
        self.end({ opened: true, error: new Error('heartbeat timeout') });
      }, o.heartbeatTimeout);
    }, o.heartbeat);
  };
  WsTransport.prototype.nextId = function (entry) {
    var id = ++this.seq;
    this.pending.set(id, entry);
    return id;
  };
  WsTransport.prototype.send = function (obj) {
    if (this.ws && this.ws.readyState === 1) this.ws.send(JSON.stringify(obj));
  };
  WsTransport.prototype.canSend = function () {
    return this.isOpen && !this.done;
  };
  WsTransport.prototype.subscribe = function (sub) {
    if (!this.isOpen) return; // subscribed on open
    sub.state = 'pending';
    var msg = { id: this.nextId({ kind: 'subscribe', channel: sub.channel }), op: 'subscribe', channel: sub.channel };
    if (sub.delta) msg.delta = sub.delta;
    if (sub.position) msg.since = sub.position;
    if (sub.handlers.data !== undefined) msg.data = sub.handlers.data;
    this.send(msg);
  };
  WsTransport.prototype.resubscribe = WsTransport.prototype.subscribe;
  /** Subscribe again while subscribed: unsubscribe, then subscribe from the last position (pipelined). */
  WsTransport.prototype.restart = function (sub) {
    this.unsubscribe(sub);
    this.subscribe(sub);
  };
  WsTransport.prototype.unsubscribe = function (sub) {
    if (!this.isOpen) return;
    this.send({ id: this.nextId({ kind: 'unsubscribe' }), op: 'unsubscribe', channel: sub.channel });
  };
  WsTransport.prototype.request = function (req) {
    var msg = { id: this.nextId({ kind: 'request', req: req }) };
    for (var k in req.op) msg[k] = req.op[k];
    this.send(msg);
  };
  WsTransport.prototype.onMessage = function (msg, raw) {
    if (!msg || typeof msg !== 'object') return;
    if (msg.id !== undefined && (msg.ok || msg.error)) {
      var entry = this.pending.get(msg.id);
      this.pending.delete(msg.id);
      if (!entry) return;
      if (entry.kind === 'ping') clearTimeout(this.deadTimer);
      else if (entry.kind === 'subscribe') {
        if (msg.error) this.gate._subscribeError(entry.channel, msg.error);
        else this.gate._subscribed(entry.channel, msg);
      } else if (entry.kind === 'request') {
        if (msg.error) entry.req.fail(WsGateError(msg.error.message, msg.error.code, undefined, msg.error.temporary));
        else entry.req.ok(msg);
      }
      return;
    }
    if (msg.ok || msg.error) return; // answers without id (personal channel, ?channel= in the URL)
    if (msg.connected && typeof msg.connected === 'object') return this.gate._connectedMsg(msg.connected, this);
    this.gate._push(msg, this, raw);
  };
  WsTransport.prototype.end = function (info) {
    if (this.done) return;
    this.done = true;
    clearTimeout(this.openTimer);
    clearTimeout(this.deadTimer);
    clearTimeout(this.pingTimer);
    var lost = new Error('connection lost');
    this.pending.forEach(function (e) {
      if (e.kind === 'request') e.req.fail(lost);
    });
    this.pending.clear();
    if (this.ws) {
      this.ws.onopen = this.ws.onmessage = this.ws.onclose = this.ws.onerror = null;
      try {
        this.ws.close(1000);
      } catch (e) {}
    }
    this.gate._ended(this, info);
  };
  WsTransport.prototype.close = function () {
    this.end({ opened: this.isOpen });
  };

  // --- HTTP helpers (SSE and long-poll) -------------------------------------------

  /** POST /send with one op; resolves to the reply, rejects with WsGateError. */
  function postSend(gate, req) {
    var ctrl = new AbortController();
    var timer = setTimeout(function () {
      ctrl.abort();
    }, gate.options.requestTimeout);
    fetch(gate._url('/send'), {
      method: 'POST',
      // text/plain: a "simple" request, no CORS preflight when cross-origin
      headers: { 'Content-Type': 'text/plain;charset=UTF-8' },
      body: JSON.stringify(req.op),
      signal: ctrl.signal,
      cache: 'no-store',
    })
      .then(function (res) {
        return res.text().then(function (text) {
          var body;
          try {
            body = JSON.parse(text);
          } catch (e) {
            throw WsGateError('POST /send: HTTP ' + res.status + ' ' + text.slice(0, 200), 0, res.status);
          }
          if (!res.ok || body.error) {
            var err = body.error || {};
            throw WsGateError(err.message || 'HTTP ' + res.status, err.code, res.status, err.temporary);
          }
          return body;
        });
      })
      .then(
        function (body) {
          clearTimeout(timer);
          req.ok(body);
        },
        function (e) {
          clearTimeout(timer);
          req.fail(e);
        },
      );
  }

  function channelQuery(channels) {
    return channels.map(function (c) {
      return ['channel', c];
    });
  }

  // --- SSE ---------------------------------------------------------------------------
  // Read with fetch and a stream reader rather than EventSource: the client then
  // sees the keepalive comments (dead-connection detection), controls its own
  // backoff and transport fallback, and can reopen the stream with a new channel
  // set. The resume token goes in ?last_event_id= (a Last-Event-ID header would
  // need a CORS preflight).

  function SseTransport(gate) {
    this.gate = gate;
    this.name = 'sse';
    this.isOpen = false;
    this.done = false;
    this.ctrl = null;
    this.gen = 0;
    this.reopenTimer = null;
  }
  SseTransport.prototype.canSend = function () {
    return !this.done;
  };
  SseTransport.prototype.request = function (req) {
    postSend(this.gate, req);
  };
  /** Open (or reopen, after a change of channels) the stream. */
  SseTransport.prototype.open = function () {
    var self = this;
    var g = this.gate;
    var gen = ++this.gen;
    if (this.ctrl) this.ctrl.abort();
    this.ctrl = null;
    clearTimeout(this.openTimer);
    clearTimeout(this.deadTimer);
    var channels = g._channels();
    if (!channels.length) {
      // Nothing to stream: ops still work over POST /send.
      if (!this.isOpen) {
        this.isOpen = true;
        g._opened(this);
      }
      return;
    }
    var ctrl = (this.ctrl = new AbortController());
    var token = g._resumeToken();
    var q = channelQuery(channels);
    q.push(['last_event_id', token]);
    var stale = function () {
      return self.done || gen !== self.gen;
    };
    var streamOpen = false;
    this.openTimer = setTimeout(function () {
      if (!stale()) self.end({ opened: self.isOpen, error: new Error('SSE open timed out') });
    }, g.options.openTimeout);
    fetch(g._url('/sse', q), { headers: { Accept: 'text/event-stream' }, signal: ctrl.signal, cache: 'no-store' })
      .then(function (res) {
        if (stale()) return;
        var type = res.headers.get('content-type') || '';
        if (!res.ok || type.indexOf('text/event-stream') !== 0) {
          return res.text().then(function (t) {
            if (stale()) return;
            var err;
            try {
              err = JSON.parse(t).error;
            } catch (e) {}
            // A token the server refuses would be refused forever: drop it.
            if (res.status === 400 && token !== undefined && token === g._token) g._token = undefined;
            self.end({ opened: false, error: WsGateError('SSE: HTTP ' + res.status + (err ? ' ' + err.message : ''), err ? err.code : 0, res.status) });
          });
        }
        return self.read(res.body.getReader(), stale, function () {
          if (streamOpen) return;
          streamOpen = true;
          clearTimeout(self.openTimer);
          if (!self.isOpen) {
            self.isOpen = true;
            g._opened(self);
          }
        });
      })
      .catch(function (e) {
        if (!stale()) self.end({ opened: self.isOpen, error: e });
      });
  };
  SseTransport.prototype.read = function (reader, stale, onFirstBytes) {
    var self = this;
    var decoder = new TextDecoder();
    var buf = '';
    var ev = { type: '', data: [], id: null };
    function line(l) {
      if (l === '') {
        if (ev.data.length) self.dispatch(ev.type || 'message', ev.data.join('\n'), ev.id);
        else if (ev.id !== null) self.setId(ev.id);
        ev = { type: '', data: [], id: null };
        return;
      }
      if (l.charCodeAt(0) === 58) return; // ':' comment (keepalive)
      var i = l.indexOf(':');
      var field = i < 0 ? l : l.slice(0, i);
      var value = i < 0 ? '' : l.slice(i + 1);
      if (value.charCodeAt(0) === 32) value = value.slice(1);
      if (field === 'data') ev.data.push(value);
      else if (field === 'event') ev.type = value;
      else if (field === 'id' && value.indexOf('\0') < 0) ev.id = value;
    }
    function pump() {
      return reader.read().then(function (r) {
        if (stale()) return reader.cancel().catch(function () {});
        if (r.done) return self.end({ opened: self.isOpen, error: self.isOpen ? undefined : new Error('SSE stream ended') });
        onFirstBytes();
        self.alive();
        buf += decoder.decode(r.value, { stream: true });
        var m;
        var re = /\r\n|\r(?!$)|\n/g;
        var start = 0;
        while ((m = re.exec(buf))) {
          line(buf.slice(start, m.index));
          if (stale()) return reader.cancel().catch(function () {});
          start = re.lastIndex;
        }
        buf = buf.slice(start);
        if (buf.length > 1 << 24) return self.end({ opened: true, error: new Error('SSE line too long') });
        return pump();
      });
    }
    return pump();
  };
  /** Any bytes (events or keepalive comments) count as life. */
  SseTransport.prototype.alive = function () {
    var self = this;
    var k = this.gate.options.sseKeepalive;
    clearTimeout(this.deadTimer);
    if (!k) return;
    var gen = this.gen;
    this.deadTimer = setTimeout(function () {
      if (gen === self.gen) self.end({ opened: true, error: new Error('SSE keepalive timeout') });
    }, 2 * k + 5000);
  };
  SseTransport.prototype.setId = function (id) {
    this.gate._token = id || undefined;
    this.gate._tokenChannels = this.gate._channels();
  };
  SseTransport.prototype.dispatch = function (type, data, id) {
    var g = this.gate;
    var msg;
    try {
      msg = JSON.parse(data);
    } catch (e) {
      msg = null;
    }
    if (msg && typeof msg === 'object') {
      if (type === 'message') {
        g._push(msg, this);
      } else if (type === 'connected') {
        // The connect proxy admitted the stream (the first event).
        if (msg.connected && typeof msg.connected === 'object') g._connectedMsg(msg.connected, this);
      } else if (type === 'subscribed') {
        g._subscribed(msg.channel, msg);
      } else if (type === 'presence') {
        g._presenceEvent(msg);
      } else if (type === 'resync') {
        g._push(msg, this);
      } else if (type === 'error') {
        if (msg.channel) g._subscribeError(msg.channel, msg.error || {});
        else g._emit('error', WsGateError((msg.error && msg.error.message) || 'SSE error', msg.error && msg.error.code));
      } else if (type === 'dropped') {
        g._push({ channel: msg.channel, dropped: msg.dropped || {} }, this);
      }
    }
    // The id is recorded after the event was handled: the token never runs
    // ahead of what the application was given.
    if (id !== null) this.setId(id);
  };
  /** Reopen the stream soon (several subscribes in a row make one reopen). */
  SseTransport.prototype.reopen = function () {
    var self = this;
    if (this.reopenTimer || this.done) return;
    this.reopenTimer = setTimeout(function () {
      self.reopenTimer = null;
      if (!self.done) self.open();
    }, 10);
  };
  SseTransport.prototype.subscribe = function (sub) {
    sub.state = 'pending';
    this.reopen();
  };
  SseTransport.prototype.resubscribe = SseTransport.prototype.subscribe;
  SseTransport.prototype.unsubscribe = function () {
    this.reopen();
  };
  SseTransport.prototype.end = function (info) {
    if (this.done) return;
    this.done = true;
    this.gen++;
    clearTimeout(this.openTimer);
    clearTimeout(this.deadTimer);
    clearTimeout(this.reopenTimer);
    if (this.ctrl) this.ctrl.abort();
    this.gate._ended(this, info);
  };
  SseTransport.prototype.close = function () {
    this.end({ opened: this.isOpen });
  };

  // --- long-poll ---------------------------------------------------------------------------

  function PollTransport(gate) {
    this.gate = gate;
    this.name = 'poll';
    this.isOpen = false;
    this.done = false;
    this.ctrl = null;
    this.gen = 0;
    this.greeted = false; // its `connected` message handled
  }
  PollTransport.prototype.canSend = function () {
    return !this.done;
  };
  PollTransport.prototype.request = function (req) {
    postSend(this.gate, req);
  };
  PollTransport.prototype.open = function () {
    this.poll();
  };
  PollTransport.prototype.poll = function () {
    var self = this;
    var g = this.gate;
    if (this.done) return;
    var gen = ++this.gen;
    if (this.ctrl) this.ctrl.abort();
    this.ctrl = null;
    var channels = g._channels();
    if (!channels.length) {
      if (!this.isOpen) {
        this.isOpen = true;
        g._opened(this);
      }
      return; // polls again on subscribe
    }
    var token = g._resumeToken();
    var covered = g._tokenChannels || [];
    // A channel the cursor does not cover yet: ask at once, to learn its position.
    var fresh = token === undefined || channels.some(function (c) {
      return covered.indexOf(c) < 0;
    });
    var wait = fresh ? 0 : g.options.pollWait;
    var q = channelQuery(channels);
    q.push(['cursor', token], ['wait', wait]);
    var ctrl = (this.ctrl = new AbortController());
    var timer = setTimeout(function () {
      ctrl.abort();
    }, wait * 1000 + g.options.openTimeout);
    var stale = function () {
      return self.done || gen !== self.gen;
    };
    var t0 = now();
    fetch(g._url('/poll', q), { signal: ctrl.signal, cache: 'no-store' })
      .then(function (res) {
        return res.text().then(function (text) {
          var body;
          try {
            body = JSON.parse(text);
          } catch (e) {}
          if (!res.ok || !body || body.error) {
            var err = (body && body.error) || {};
            if (res.status === 400 && token !== undefined && token === g._token) {
              g._token = undefined; // refused cursor: start afresh (recovery failure is reported)
              g._tokenChannels = [];
            }
            throw WsGateError('poll: HTTP ' + res.status + (err.message ? ' ' + err.message : ''), err.code || 0, res.status);
          }
          return body;
        });
      })
      .then(
        function (body) {
          clearTimeout(timer);
          if (stale()) return;
          self.ctrl = null;
          if (!self.isOpen) {
            self.isOpen = true;
            g._opened(self);
          }
          self.answer(body, channels, covered);
          if (stale()) return;
          // A long poll that comes back at once with nothing, again and again,
          // would spin: slow down (a proxy cutting requests short, or a server
          // that answers early).
          var quick = wait > 0 && !(body.messages && body.messages.length) && now() - t0 < 1000;
          self.quick = quick ? (self.quick || 0) + 1 : 0;
          if (self.quick > 2) {
            self.spinTimer = setTimeout(function () {
              if (!stale()) self.poll();
            }, Math.min(5000, 250 * self.quick));
          } else self.poll();
        },
        function (e) {
          clearTimeout(timer);
          if (!stale()) self.end({ opened: self.isOpen, error: e });
        },
      );
  };
  PollTransport.prototype.answer = function (body, channels, covered) {
    var g = this.gate;
    var rec = body.recovered || {};
    var msgs = body.messages || [];
    // The cursor says each channel's epoch, and where it stands after this answer.
    var at = body.cursor ? decodeToken(body.cursor) : {};
    // Where this answer starts for channel c: before its first publication,
    // else the cursor's position (null: unknown, accept what follows).
    var startOf = function (c) {
      for (var j = 0; j < msgs.length; j++) {
        if (msgs[j].channel !== c) continue;
        return typeof msgs[j].offset === 'number' && !msgs[j].resync ? msgs[j].offset - 1 : null;
      }
      return at[c] ? at[c].offset : null;
    };
    for (var i = 0; i < channels.length; i++) {
      var c = channels[i];
      var sub = g._subs.get(c);
      if (!sub) continue;
      // The cursor's epoch is the one the answer starts in, unless a resync in it moves on.
      var epoch = at[c] && !msgs.some(function (m) { return m.channel === c && m.resync; }) ? at[c].epoch : undefined;
      if (sub.state === 'subscribed') {
        // Resumed from the cursor: a lost gap is reported on any answer.
        if (rec[c] === false) g._subscribed(c, { recovered: false, epoch: epoch, offset: startOf(c) });
        continue;
      }
      // First answer for this channel on this connection: it is subscribed.
      var info = { epoch: epoch };
      if (rec[c] !== undefined) info.recovered = rec[c];
      if (info.recovered === false) info.offset = startOf(c);
      else if (info.recovered === undefined && covered.indexOf(c) < 0) {
        // Fresh: everything in this answer is new.
        info.offset = startOf(c);
      } else if (info.recovered === undefined) {
        info.recovered = true; // resumed from the cursor (no gap reported)
      }
      g._subscribed(c, info);
    }
    var errors = body.errors || [];
    for (var e = 0; e < errors.length; e++) {
      if (errors[e] && errors[e].channel) g._subscribeError(errors[e].channel, errors[e].error || {});
    }
    for (var k = 0; k < msgs.length; k++) {
      var m = msgs[k];
      if (m && m.connected && typeof m.connected === 'object') {
        // The connect proxy admitted the poll (its answer's first message):
        // every poll is admitted anew, the first one on this transport is
        // the connection's `connected`.
        if (!this.greeted) {
          this.greeted = true;
          g._connectedMsg(m.connected, this);
        }
        continue;
      }
      g._push(m, this);
    }
    if (body.cursor) {
      g._token = body.cursor;
      g._tokenChannels = channels;
    }
  };
  /** Restart the poll with the new channel set (the cursor keeps the others' place). */
  PollTransport.prototype.again = function () {
    var self = this;
    if (this.done || this.againTimer) return;
    this.gen++;
    if (this.ctrl) this.ctrl.abort();
    this.ctrl = null;
    this.againTimer = setTimeout(function () {
      self.againTimer = null;
      self.poll();
    }, 10);
  };
  PollTransport.prototype.subscribe = function (sub) {
    sub.state = 'pending';
    this.again();
  };
  PollTransport.prototype.resubscribe = PollTransport.prototype.subscribe;
  PollTransport.prototype.unsubscribe = function () {
    this.again();
  };
  PollTransport.prototype.end = function (info) {
    if (this.done) return;
    this.done = true;
    this.gen++;
    clearTimeout(this.againTimer);
    clearTimeout(this.spinTimer);
    if (this.ctrl) this.ctrl.abort();
    this.gate._ended(this, info);
  };
  PollTransport.prototype.close = function () {
    this.end({ opened: this.isOpen });
  };

  root.WsGate = WsGate;
  if (typeof module === 'object' && module && module.exports) {
    module.exports = WsGate;
    module.exports.WsGate = WsGate;
    module.exports.default = WsGate;
  }
})(typeof globalThis !== 'undefined' ? globalThis : typeof self !== 'undefined' ? self : this);
