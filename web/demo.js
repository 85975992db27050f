/* The wsgate chat demo: rooms are channels `room:<name>`; messages are
 * {user, text} publications; members come from presence (join/leave events,
 * plus a presence query now and then). URL parameters: ?user=NAME,
 * ?room=NAME, ?transport=websocket|sse|poll, ?gateway=URL (another origin).
 */
(function () {
  'use strict';

  var WsGate = window.WsGate;
  var params = new URLSearchParams(location.search);
  var $ = function (id) {
    return document.getElementById(id);
  };

  var TRANSPORTS = ['websocket', 'sse', 'poll'];
  var forced = params.get('transport');
  var transports = TRANSPORTS.indexOf(forced) >= 0 ? [forced] : TRANSPORTS;
  var gatewayUrl = params.get('gateway') || '';
  var MAX_MESSAGES = 500;
  var LEAVE_GRACE = 3000; // ms before a member that left is shown as gone

  var state = {
    user: cleanName(params.get('user') || storage('wsgate-demo-user') || 'guest-' + Math.floor(1000 + Math.random() * 9000)),
    rooms: new Map(), // name → {sub, messages: [], members: Map(client → user), unread, status}
    current: null,
    gate: null,
    serverStats: null,
    serverNote: '',
    rtt: null,
  };

  function storage(key, value) {
    try {
      if (value === undefined) return localStorage.getItem(key);
      localStorage.setItem(key, value);
    } catch (e) {}
    return null;
  }

  function cleanName(s) {
    return String(s || '')
      .trim()
      .replace(/[^A-Za-z0-9_.\-]/g, '')
      .slice(0, 32);
  }
  function cleanRoom(s) {
    return String(s || '')
      .trim()
      .toLowerCase()
      .replace(/^#/, '')
      .replace(/[^a-z0-9_.\-]/g, '-')
      .replace(/^-+|-+$/g, '')
      .slice(0, 48);
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function hue(name) {
    var h = 0;
    for (var i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) % 360;
    return h;
  }

  function avatar(name) {
    var a = el('span', 'avatar', (name || '?').charAt(0).toUpperCase());
    a.style.background = 'hsl(' + hue(name || '?') + ' 55% 46%)';
    a.setAttribute('aria-hidden', 'true');
    return a;
  }

  function clock(t) {
    var d = new Date(t);
    return String(d.getHours()).padStart(2, '0') + ':' + String(d.getMinutes()).padStart(2, '0') + ':' + String(d.getSeconds()).padStart(2, '0');
  }

  // --- event log -------------------------------------------------------------
  function log(text, kind) {
    var li = el('li', kind || '');
    li.appendChild(el('time', '', clock(Date.now())));
    li.appendChild(document.createTextNode(' ' + text));
    var l = $('log');
    l.insertBefore(li, l.firstChild);
    while (l.children.length > 40) l.removeChild(l.lastChild);
  }

  // --- the gateway -----------------------------------------------------------
  function connect() {
    if (state.gate) state.gate.close();
    var gate = new WsGate({ url: gatewayUrl, user: state.user, transports: transports });
    state.gate = gate;
    window.demo.gate = gate;
    gate.on('state', function (s) {
      if (gate !== state.gate) return;
      var p = $('state');
      p.textContent = s;
      p.dataset.state = s;
      log('connection ' + s, s === 'connected' ? 'good' : s === 'connecting' ? '' : 'bad');
      renderStats();
    });
    gate.on('transport', function (name) {
      if (gate !== state.gate) return;
      $('transport').textContent = name;
      log('transport: ' + name);
      renderStats();
    });
    gate.on('error', function (e) {
      if (gate !== state.gate) return;
      log('error: ' + e.message, 'bad');
    });
    $('transport').textContent = gate.transport || transports[0];
    $('me').textContent = state.user;
    $('name').value = state.user;
    state.rooms.forEach(function (room, name) {
      room.members = new Map();
      room.leaving.forEach(clearTimeout);
      room.leaving = new Map();
      room.sub = subscribeRoom(name);
    });
  }

  function subscribeRoom(name) {
    var channel = 'room:' + name;
    return state.gate.subscribe(channel, {
      onSubscribed: function (info) {
        var room = state.rooms.get(name);
        if (!room) return;
        room.status = 'live';
        if (info.resubscribed) {
          log('#' + name + ' resumed over ' + info.transport + (info.recovered === true ? ' (recovered)' : ''), 'good');
        } else log('joined #' + name + ' over ' + info.transport, 'good');
        refreshPresence(name);
        renderRooms();
        soonServerStats();
      },
      onPublication: function (data, pub) {
        addMessage(name, data, pub);
      },
      onRecoveryFailed: function (info) {
        addNotice(name, 'Some messages could not be recovered after the reconnection (the gateway no longer holds them).', 'warn');
        log('#' + name + ': recovery failed', 'bad');
      },
      onJoin: function (m) {
        var room = state.rooms.get(name);
        if (!room) return;
        var had = userPresent(room, m.user);
        room.members.set(m.client, m.user || m.client);
        var u = m.user || m.client;
        if (room.leaving.has(u)) {
          // back within the grace period (a long-poll client between two polls): no notice
          clearTimeout(room.leaving.get(u));
          room.leaving.delete(u);
        } else if (!had && m.user !== state.user) addNotice(name, u + ' joined', 'presence');
        renderMembers();
      },
      onLeave: function (m) {
        var room = state.rooms.get(name);
        if (!room) return;
        var u = m.user || m.client;
        room.members.delete(m.client);
        if (userPresent(room, m.user) || m.user === state.user || room.leaving.has(u)) return renderMembers();
        // Shown as leaving only if not back soon: long-poll clients leave and
        // join again around every poll.
        room.leaving.set(
          u,
          setTimeout(function () {
            room.leaving.delete(u);
            if (!userPresent(room, u)) addNotice(name, u + ' left', 'presence');
            renderMembers();
          }, LEAVE_GRACE),
        );
      },
      onDropped: function () {
        log('#' + name + ': dropped by the gateway (slow consumer), recovering', 'bad');
      },
      onError: function (e) {
        addNotice(name, 'Cannot join: ' + e.message, 'warn');
        log('#' + name + ': ' + e.message, 'bad');
      },
    });
  }

  function userPresent(room, user) {
    var found = false;
    room.members.forEach(function (u) {
      if (u === user) found = true;
    });
    return found;
  }

  function refreshPresence(name) {
    var gate = state.gate;
    gate.presence('room:' + name).then(
      function (p) {
        var room = state.rooms.get(name);
        if (!room || gate !== state.gate) return;
        room.members = new Map();
        p.members.forEach(function (m) {
          room.members.set(m.client, m.user || m.client);
        });
        renderMembers();
      },
      function (e) {
        log('presence #' + name + ': ' + e.message, 'bad');
      },
    );
  }

  // --- rooms -------------------------------------------------------------------
  function joinRoom(name, select) {
    name = cleanRoom(name);
    if (!name) return;
    if (!state.rooms.has(name)) {
      state.rooms.set(name, { messages: [], members: new Map(), leaving: new Map(), unread: 0, status: 'joining', sub: null });
      state.rooms.get(name).sub = subscribeRoom(name);
    }
    if (select !== false) selectRoom(name);
    saveRooms();
    renderRooms();
  }

  function leaveRoom(name) {
    var room = state.rooms.get(name);
    if (!room) return;
    room.sub.unsubscribe();
    state.rooms.delete(name);
    log('left #' + name);
    if (state.current === name) {
      var next = state.rooms.keys().next();
      state.current = null;
      if (!next.done) selectRoom(next.value);
      else renderAll();
    }
    saveRooms();
    renderRooms();
  }

  function selectRoom(name) {
    state.current = name;
    var room = state.rooms.get(name);
    if (room) room.unread = 0;
    var u = new URL(location.href);
    u.searchParams.set('room', name);
    history.replaceState(null, '', u);
    renderAll();
    $('text').focus();
  }

  function saveRooms() {
    storage('wsgate-demo-rooms', Array.from(state.rooms.keys()).join(','));
  }

  // --- messages ----------------------------------------------------------------
  function addMessage(name, data, pub) {
    var room = state.rooms.get(name);
    if (!room) return;
    var isObj = data && typeof data === 'object';
    var m = {
      kind: 'msg',
      user: isObj && typeof data.user === 'string' ? data.user : 'backend',
      text: isObj && typeof data.text === 'string' ? data.text : JSON.stringify(data),
      offset: pub.offset,
      at: isObj && typeof data.ts === 'number' ? data.ts : Date.now(),
    };
    push(room, m);
    if (name === state.current) appendMessage(m, true);
    else {
      room.unread++;
      renderRooms();
    }
    renderStats();
  }

  function addNotice(name, text, kind) {
    var room = state.rooms.get(name);
    if (!room) return;
    var m = { kind: 'notice ' + (kind || ''), text: text, at: Date.now() };
    push(room, m);
    if (name === state.current) appendMessage(m, true);
  }

  function push(room, m) {
    room.messages.push(m);
    if (room.messages.length > MAX_MESSAGES) room.messages.splice(0, room.messages.length - MAX_MESSAGES);
  }

  function messageNode(m) {
    if (m.kind !== 'msg') {
      var n = el('li', m.kind);
      n.appendChild(el('span', 'text', m.text));
      return n;
    }
    var li = el('li', 'msg' + (m.user === state.user ? ' mine' : ''));
    li.dataset.offset = m.offset;
    li.appendChild(avatar(m.user));
    var body = el('div', 'body');
    var head = el('div', 'head');
    head.appendChild(el('span', 'author', m.user));
    head.appendChild(el('time', 'time', clock(m.at)));
    head.appendChild(el('span', 'offset', '#' + m.offset));
    body.appendChild(head);
    body.appendChild(el('div', 'text', m.text));
    li.appendChild(body);
    return li;
  }

  function appendMessage(m, scroll) {
    var list = $('messages');
    var atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 60;
    var empty = list.querySelector('.empty');
    if (empty) empty.remove();
    list.appendChild(messageNode(m));
    while (list.children.length > MAX_MESSAGES) list.removeChild(list.firstChild);
    if (scroll && atBottom) list.scrollTop = list.scrollHeight;
  }

  // --- rendering -----------------------------------------------------------------
  function renderAll() {
    var room = state.current ? state.rooms.get(state.current) : null;
    $('room-title').textContent = room ? '#' + state.current : 'no room';
    $('text').placeholder = room ? 'Message #' + state.current : 'Join a room first';
    $('text').disabled = $('send').disabled = !room;
    $('leave').hidden = !room;
    var list = $('messages');
    list.textContent = '';
    if (room) {
      if (!room.messages.length) list.appendChild(el('li', 'empty', 'No messages yet. Say hello!'));
      room.messages.forEach(function (m) {
        appendMessage(m, false);
      });
      list.scrollTop = list.scrollHeight;
    }
    renderRooms();
    renderMembers();
    renderStats();
  }

  function renderRooms() {
    var ul = $('rooms');
    ul.textContent = '';
    state.rooms.forEach(function (room, name) {
      var li = el('li', name === state.current ? 'active' : '');
      var b = el('button', 'room', '#' + name);
      b.type = 'button';
      b.dataset.room = name;
      b.addEventListener('click', function () {
        selectRoom(name);
      });
      if (room.unread) b.appendChild(el('span', 'badge', String(room.unread)));
      if (room.status !== 'live') b.appendChild(el('span', 'sub-state', room.status));
      li.appendChild(b);
      ul.appendChild(li);
    });
  }

  function renderMembers() {
    var ul = $('members');
    ul.textContent = '';
    var room = state.current ? state.rooms.get(state.current) : null;
    if (!room) {
      $('member-count').textContent = '';
      return;
    }
    var users = new Map(); // user → connections
    room.members.forEach(function (u) {
      users.set(u, (users.get(u) || 0) + 1);
    });
    room.leaving.forEach(function (_, u) {
      if (!users.has(u)) users.set(u, 1);
    });
    var names = Array.from(users.keys()).sort(function (a, b) {
      return a === state.user ? -1 : b === state.user ? 1 : a.localeCompare(b);
    });
    names.forEach(function (u) {
      var li = el('li', 'member' + (u === state.user ? ' me' : ''));
      li.dataset.user = u;
      li.appendChild(avatar(u));
      li.appendChild(el('span', 'name', u));
      if (u === state.user) li.appendChild(el('span', 'tag', 'you'));
      if (users.get(u) > 1) li.appendChild(el('span', 'tag', '×' + users.get(u)));
      ul.appendChild(li);
    });
    $('member-count').textContent = names.length ? String(names.length) : '';
  }

  function kv(dl, rows) {
    dl.textContent = '';
    rows.forEach(function (r) {
      dl.appendChild(el('dt', '', r[0]));
      var dd = el('dd', '', String(r[1]));
      if (r[2]) dd.id = r[2];
      dl.appendChild(dd);
    });
  }

  function uptime(since) {
    if (!since) return '–';
    var s = Math.floor((Date.now() - since) / 1000);
    return s < 60 ? s + ' s' : Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
  }

  function renderStats() {
    var g = state.gate;
    if (!g) return;
    var s = g.stats;
    kv($('client-stats'), [
      ['transport', s.transport || '–', 'stat-transport'],
      ['state', s.state, 'stat-state'],
      ['connected for', uptime(s.connectedAt)],
      ['messages received', s.received, 'stat-received'],
      ['ops sent', s.sent, 'stat-sent'],
      ['reconnects', s.reconnects, 'stat-reconnects'],
      ['duplicates dropped', s.duplicates],
      ['recovery failures', s.recoveryFailures],
      ['round trip', state.rtt == null ? '–' : state.rtt + ' ms', 'stat-rtt'],
    ]);
    var ss = state.serverStats;
    if (ss) {
      kv($('server-stats'), [
        ['connections', ss.connections, 'server-connections'],
        ['subscriptions', ss.subscriptions, 'server-subscriptions'],
        ['channels', ss.broker && ss.broker.channels != null ? ss.broker.channels : '–'],
        ['messages in', ss.messages_in],
        ['messages out', ss.messages_out],
        ['deliveries', ss.deliveries],
        ['workers', ss.workers ? ss.workers.length : '–'],
      ]);
    } else $('server-stats').textContent = '';
    $('server-note').textContent = state.serverNote;
  }

  var statsTimer = null;
  function pollServerStats() {
    fetch((gatewayUrl || '') + '/api/stats', { cache: 'no-store' })
      .then(function (res) {
        if (res.status === 401 || res.status === 403) {
          state.serverStats = null;
          state.serverNote = 'Server figures need the API key (/api/stats answered ' + res.status + '): showing this page only.';
          clearInterval(statsTimer);
          return;
        }
        if (!res.ok) throw new Error('HTTP ' + res.status);
        return res.json().then(function (j) {
          state.serverStats = j;
          state.serverNote = '';
        });
      })
      .catch(function (e) {
        state.serverStats = null;
        state.serverNote = 'Server figures unavailable (' + e.message + ').';
      })
      .then(renderStats);
  }

  var soonTimer = null;
  function soonServerStats() {
    if (state.serverNote && !state.serverStats) return; // no access
    clearTimeout(soonTimer);
    soonTimer = setTimeout(pollServerStats, 300);
  }

  function heartbeat() {
    var g = state.gate;
    if (!g || g.state !== 'connected') return;
    g.ping().then(
      function (ms) {
        state.rtt = ms;
        renderStats();
      },
      function () {},
    );
  }

  // --- forms -------------------------------------------------------------------------
  $('send-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var input = $('text');
    var text = input.value.trim();
    var name = state.current;
    if (!text || !name) return;
    input.value = '';
    state.gate.publish('room:' + name, { user: state.user, text: text, ts: Date.now() }).then(
      function () {
        renderStats();
      },
      function (e) {
        addNotice(name, 'Not sent (' + e.message + '): ' + text, 'warn');
      },
    );
  });

  $('join-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var name = cleanRoom($('room-input').value);
    $('room-input').value = '';
    if (name) joinRoom(name);
  });

  $('name-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var name = cleanName($('name').value);
    if (!name || name === state.user) {
      $('name').value = state.user;
      return;
    }
    state.user = name;
    storage('wsgate-demo-user', name);
    var u = new URL(location.href);
    u.searchParams.set('user', name);
    history.replaceState(null, '', u);
    log('name: ' + name);
    connect();
    renderAll();
  });

  $('leave').addEventListener('click', function () {
    if (state.current) leaveRoom(state.current);
  });

  // --- start ---------------------------------------------------------------------------
  window.demo = { state: state, gate: null };
  connect();
  var first = cleanRoom(params.get('room')) || 'lobby';
  var saved = (storage('wsgate-demo-rooms') || '').split(',').map(cleanRoom).filter(Boolean);
  if (!params.get('room')) saved.forEach(function (r) {
    joinRoom(r, false);
  });
  joinRoom(first);
  pollServerStats();
  statsTimer = setInterval(pollServerStats, 5000);
  setInterval(heartbeat, 10000);
  setTimeout(heartbeat, 1000);
  // Join/leave events keep the member list current; a presence query now and
  // then covers what events cannot (long-poll pages receive none).
  var lastRefresh = 0;
  setInterval(function () {
    var g = state.gate;
    var every = g && g.transport === 'poll' ? 3000 : 15000;
    if (state.current && g && g.state === 'connected' && Date.now() - lastRefresh >= every) {
      lastRefresh = Date.now();
      refreshPresence(state.current);
    }
  }, 1000);
  setInterval(renderStats, 1000);
})();
