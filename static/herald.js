/*
 * herald.js — the browser client for Herald's WebSocket protocol. No dependencies.
 *
 *   const client = new HeraldClient({
 *     token: () => fetch("/my/herald-token").then(r => r.text()), // or a string, or null
 *     lastSeq: 41,                       // resume after this seq (null: undelivered)
 *     onNotification(n) { ... },         // each notification once, in seq order
 *     onRead(r) { ... },                 // {ids, all, seq, unread} from any tab or device
 *     onChange(c) { ... },               // every change: {type: "read" | "unread" |
 *                                        //   "archive" | "unarchive", ids, unread}
 *     onWelcome(w) { ... },              // {user, node, last_seq, unread, muted}
 *     onPreferences(p) { ... },          // {muted: [sorted categories], unread} after
 *                                        //   a mute or unmute from anywhere
 *     onState(state, detail) { ... },    // "connecting" | "live" | "reconnecting" |
 *                                        //   "offline" | "signed-out"; while
 *                                        //   reconnecting, detail.retryAt (epoch ms)
 *     onPending(count) { ... },          // changes not yet confirmed by the server
 *     onAuthError(message) { ... },      // the token was refused (close 4401)
 *     onRefused(change, error) { ... },  // a change dropped for good: {code, message}
 *     user: "alice",                     // optional: routes the socket (see below)
 *     confirmWithinMs: 5000,             // a change unconfirmed this long: the socket
 *                                        //   is taken for dead and replaced
 *     welcomeWithinMs: 10000,            // a socket not welcomed this long (a handshake
 *                                        //   that hangs) is given up and retried
 *   });
 *   client.markRead([101, 102]); client.markAllRead(); client.markUnread([101]);
 *   client.archive([101]); client.unarchive([101]); client.ack(42);
 *   client.readGroup("pr-12"); client.mute("marketing"); client.unmute("marketing");
 *   client.retryNow(); client.setToken(freshJwt); client.close();
 *
 * A read-all push says {all: true, seq: S}: every notification up to seq S is read (one
 * that arrived after S may not be). Notifications carry category, expires_at and
 * archived; an archived one may arrive on replay (archived: true).
 *
 * Groups: a notification's group_key (null or a string) is its collapse key. An inbox
 * shows one item per unread group (its newest notification, with the count) and
 * readGroup(key) marks every unread notification of the group read (the push is an
 * ordinary "read" with the ids it changed). Muting: the welcome's muted list, then
 * onPreferences, say which categories the user muted; the unread counts already leave
 * them out, and notifications of a muted category still arrive (decide about toasts
 * from the list).
 *
 * The client says "batch": true in its hello, so a burst arrives as several messages in
 * one WebSocket frame, one JSON object per line; acks are cumulative and sent at most
 * every 100 ms.
 *
 * Changes (read, unread, archive, unarchive, read-all, read-group, mute, unmute) are kept, in order, until the
 * server confirms each one ("ref" in the change, "done" in the answer): made while the
 * socket is down, they are sent as soon as a socket is welcomed; sent on a socket that
 * closes (or dies silently: no "done" within confirmWithinMs makes the client drop it
 * and reconnect) before their "done", they are sent again on the next one (changes are
 * idempotent). They are never dropped silently; onPending says how many are waiting
 * for their confirmation, and pending() too. ids must be a non-empty array of
 * notification ids (else a TypeError, at once); more than 1,000 go in several frames.
 * A change the server refuses as malformed (close 4400) is dropped; one it cannot
 * apply for now (error "unavailable") is sent again a second later, with every change
 * sent after it, in order; one it refuses for good without closing (error
 * "too_many_muted": 100 categories are muted already) is dropped. A dropped change
 * goes to onRefused(change, {code, message}) (and a console warning), so a page that
 * showed it at once can take it back. Sockets dropped for want of a
 * confirmation back off like failed connections until a confirmation arrives.
 *
 * Another user: when a welcome names another user than the previous welcome did (a
 * token or login cookie of someone else took over), the previous user's cursor and
 * unconfirmed changes are not theirs: the changes go to onRefused with code
 * "other_user", and the client reconnects at once without a cursor (a new device), so
 * the new user's notifications are neither skipped nor changed by the old user's
 * clicks. onWelcome then names the new user: a page clears what it showed.
 *
 * A connection attempt that gets no welcome within welcomeWithinMs (a proxy or network
 * that accepts the connection and then says nothing; Node.js's WebSocket never reports
 * a connection closed before the handshake's answer) is given up and counts as a
 * failed attempt.
 *
 * Reconnects with jittered exponential backoff (0.5 s, doubling, at most 5 s; at once
 * after a node's 1001 "going away", when the browser comes back online, or on
 * retryNow()) and resumes from the last seq it delivered, so a notification is never
 * shown twice nor skipped. A token given as a function is called for every connection,
 * so an expired token is refreshed there and then. A string token that is refused ends
 * in "signed-out" until setToken() hands over a fresh one (the session's cursor, and so
 * the page's list, are kept). With token null the server uses the login cookie (same
 * origin only).
 *
 * Routing: the socket's URL carries ?shard=N, the user's shard (HeraldClient.shardOf:
 * the first four bytes of the MD5 of the user id's UTF-8 bytes, big-endian, mod 64, as
 * the database computes it), from options.user, else the token's "sub", else the user
 * a previous welcome named. A load balancer that hashes on it sends all of a shard's
 * users to one node, which then hears only its own shards' notifications; a wrong or
 * missing shard costs the cluster some work, never a notification.
 */
(function (global) {
  "use strict";

  var CLOSE_UNAUTHORIZED = 4401;
  var CLOSE_GOING_AWAY = 1001;
  var PING_EVERY_MS = 20000;
  var PONG_WITHIN_MS = 10000;
  var ACK_EVERY_MS = 100;
  var BACKOFF_FIRST_MS = 500;
  var SWITCH_CALM_MS = 30000;  // user switches further apart are not a fight
  var BACKOFF_MAX_MS = 5000;
  var CONFIRM_WITHIN_MS = 5000;
  var WELCOME_WITHIN_MS = 10000;
  var RETRY_CHANGE_MS = 1000;
  var CLOSE_MALFORMED = 4400;
  var MAX_IDS = 1000;  // ids per change frame (the server's limit)
  var MAX_GROUP_KEY = 200;
  var MAX_CATEGORY = 64;

  /** A change's ids, checked here: a frame the server refuses closes the socket. */
  function checkIds(ids) {
    var ok = Array.isArray(ids) && ids.length > 0 && ids.every(function (id) {
      return typeof id === "number" && id >= 1 && id <= 9007199254740991 &&
        Math.floor(id) === id;
    });
    if (!ok) throw new TypeError("herald: ids must be a non-empty array of notification ids");
  }

  /** A string of 1 to ``max`` characters (code points, as the server counts), or a
   * TypeError at once: a frame the server refuses closes the socket. */
  function checkLabel(value, what, max) {
    if (typeof value !== "string" || value.length === 0 || Array.from(value).length > max) {
      throw new TypeError("herald: " + what + " must be a string of 1-" + max + " characters");
    }
  }

  function defaultUrl() {
    var scheme = global.location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + global.location.host + "/ws";
  }

  function noop() {}

  var SHARDS = 64;
  // MD5 (RFC 1321) round constants and shifts.
  var MD5_K = [];
  for (var k = 0; k < 64; k++) MD5_K[k] = Math.floor(Math.abs(Math.sin(k + 1)) * 4294967296) | 0;
  var MD5_S = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21];

  function utf8(text) {
    if (typeof TextEncoder !== "undefined") return Array.from(new TextEncoder().encode(text));
    var binary = unescape(encodeURIComponent(text)), bytes = [];
    for (var i = 0; i < binary.length; i++) bytes.push(binary.charCodeAt(i));
    return bytes;
  }

  /** The user's shard: the database's herald.shard_of(user_id), app/shards.py's too. */
  function shardOf(user) {
    var bytes = utf8(String(user)), n = bytes.length;
    var len = (((n + 8) >>> 6) + 1) * 16, words = [], i;
    for (i = 0; i < len; i++) words[i] = 0;
    for (i = 0; i < n; i++) words[i >> 2] |= bytes[i] << ((i % 4) * 8);
    words[n >> 2] |= 0x80 << ((n % 4) * 8);
    words[len - 2] = (n * 8) | 0;
    words[len - 1] = Math.floor(n / 536870912);
    var a0 = 0x67452301, b0 = 0xefcdab89 | 0, c0 = 0x98badcfe | 0, d0 = 0x10325476;
    for (var block = 0; block < len; block += 16) {
      var a = a0, b = b0, c = c0, d = d0;
      for (var j = 0; j < 64; j++) {
        var f, g;
        if (j < 16) { f = (b & c) | (~b & d); g = j; }
        else if (j < 32) { f = (d & b) | (~d & c); g = (5 * j + 1) % 16; }
        else if (j < 48) { f = b ^ c ^ d; g = (3 * j + 5) % 16; }
        else { f = c ^ (b | ~d); g = (7 * j) % 16; }
        var sum = (a + f + MD5_K[j] + words[block + g]) | 0;
        var shift = MD5_S[(j >> 4) * 4 + (j % 4)];
        a = d; d = c; c = b;
        b = (b + ((sum << shift) | (sum >>> (32 - shift)))) | 0;
      }
      a0 = (a0 + a) | 0; b0 = (b0 + b) | 0; c0 = (c0 + c) | 0; d0 = (d0 + d) | 0;
    }
    // The digest's first four bytes are a0's, little-endian: big-endian, the value's
    // low six bits are those of a0's top byte.
    return (a0 >>> 24) % SHARDS;
  }

  /** The "sub" of a JWT, or null (the signature is the server's business). */
  function tokenSubject(token) {
    if (typeof token !== "string") return null;
    try {
      var part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      var claims = JSON.parse(decodeURIComponent(escape(atob(part))));
      return typeof claims.sub === "string" ? claims.sub : null;
    } catch (err) {
      return null;
    }
  }

  function routed(url, shard) {
    if (shard === null) return url;
    return url + (url.indexOf("?") < 0 ? "?" : "&") + "shard=" + shard;
  }

  function HeraldClient(options) {
    options = options || {};
    this.url = options.url || defaultUrl();
    this.token = options.token === undefined ? null : options.token;
    this.lastSeq = options.lastSeq === undefined ? null : options.lastSeq;
    this.onNotification = options.onNotification || noop;
    this.onRead = options.onRead || noop;
    this.onChange = options.onChange || noop;
    this.onWelcome = options.onWelcome || noop;
    this.onPreferences = options.onPreferences || noop;
    this.onState = options.onState || noop;
    this.onPending = options.onPending || noop;
    this.onAuthError = options.onAuthError || noop;
    this.onRefused = options.onRefused || noop;
    this._shard = options.user ? shardOf(options.user) : null;  // the routing key
    this._confirmWithin = options.confirmWithinMs || CONFIRM_WITHIN_MS;
    this._welcomeWithin = options.welcomeWithinMs || WELCOME_WITHIN_MS;
    this.state = "offline";
    this.retryAt = null;   // while reconnecting: when the next attempt starts (epoch ms)
    this._ws = null;
    this._live = false;    // the current socket was welcomed
    this._attempt = 0;
    this._timer = null;
    this._pingTimer = null;
    this._pongTimer = null;
    this._welcomeTimer = null;  // gives up on a connection attempt that hangs
    this._closed = false;
    this._acked = 0;       // highest seq acknowledged on the current socket
    this._ackTimer = null;
    this._outbox = [];     // changes waiting for a live socket, in order
    this._sent = [];       // changes sent on the current socket, awaiting their "done"
    this._ref = 0;         // the last change's ref
    this._confirmTimer = null;
    this._retryTimer = null;
    this._strikes = 0;     // sockets dropped in a row for want of a "done"
    this._switchedAt = null;  // when a welcome last named another user
    this._user = null;     // the user the last welcome named: whose cursor and changes
    var self = this;
    this._online = function () { self.retryNow(); };
    global.addEventListener("online", this._online);
    if (options.connect !== false) this.connect();
  }

  HeraldClient.prototype._setState = function (state) {
    var detail = state === "reconnecting" ? {retryAt: this.retryAt} : {};
    if (this.state === state && state !== "reconnecting") return;
    this.state = state;
    this.onState(state, detail);
  };

  HeraldClient.prototype._token = function () {
    var self = this;
    return new Promise(function (resolve) {
      resolve(typeof self.token === "function" ? self.token() : self.token);
    });
  };

  HeraldClient.prototype.connect = function () {
    var self = this;
    if (this._closed) return;
    this.retryAt = null;
    this._setState(this._attempt === 0 ? "connecting" : "reconnecting");
    this._token().then(function (token) {
      if (self._closed) return;
      var sub = tokenSubject(token);
      if (sub !== null) self._shard = shardOf(sub);
      var ws = new WebSocket(routed(self.url, self._shard));
      self._ws = ws;
      self._live = false;
      clearTimeout(self._welcomeTimer);
      self._welcomeTimer = setTimeout(function () { self._drop(ws); }, self._welcomeWithin);
      ws.onopen = function () {
        var hello = {type: "hello", last_seq: self.lastSeq, batch: true};
        if (token) hello.token = token;
        self._acked = 0;
        ws.send(JSON.stringify(hello));
      };
      ws.onmessage = function (event) {
        // One message per line: a JSON text never contains a raw newline.
        var lines = event.data.split("\n");
        for (var i = 0; i < lines.length; i++) self._frame(ws, JSON.parse(lines[i]));
      };
      ws.onclose = function (event) { self._closedSocket(ws, event); };
    }, function () { self._schedule(); });
  };

  HeraldClient.prototype._frame = function (ws, frame) {
    // After close() the rest of a batched message is not for anyone.
    if (ws !== this._ws || this._closed) return;
    switch (frame.type) {
      case "welcome":
        if (this._user !== null && typeof frame.user === "string" && frame.user !== this._user) {
          this._otherUser(ws, frame.user);
          return;
        }
        // A socket dropped for want of a "done" (a database too slow to answer, maybe)
        // keeps its backoff growing: reconnecting at once would only add to the load.
        this._attempt = this._strikes;
        this._live = true;
        clearTimeout(this._welcomeTimer);
        this._setState("live");
        this._startPings(ws);
        if (typeof frame.user === "string") {
          this._user = frame.user;
          this._shard = shardOf(frame.user);
        }
        this.onWelcome(frame);
        this._flush();
        break;
      case "notification":
        // The server never repeats a seq on one socket; this guards the seam between
        // two sockets (a late frame from a socket being replaced).
        if (this.lastSeq !== null && frame.seq <= this.lastSeq) return;
        this.lastSeq = frame.seq;
        this.onNotification(frame);
        break;
      case "read":
        this.onRead(frame);
        this.onChange(frame);
        break;
      case "unread":
      case "archive":
      case "unarchive":
        this.onChange(frame);
        break;
      case "preferences":
        this.onPreferences(frame);
        break;
      case "pong":
        clearTimeout(this._pongTimer);
        break;
      case "done":
        this._confirmed(frame.ref, false);
        break;
      case "error":
        // "unavailable": sent again shortly; any other (too_many_muted): dropped, and
        // _refuse warns about it (once).
        var ref = typeof frame.ref === "number" ? frame.ref : null;
        var retry = frame.code === "unavailable";
        if (global.console && (ref === null || retry)) {
          console.warn("herald:", frame.code, frame.message);
        }
        if (ref !== null) this._confirmed(ref, retry, {code: frame.code, message: frame.message});
        break;
    }
  };

  HeraldClient.prototype._startPings = function (ws) {
    var self = this;
    clearInterval(this._pingTimer);
    // A socket can die silently (laptop sleep, Wi-Fi change): without a pong in time,
    // drop it and reconnect instead of showing "live" on a dead line.
    this._pingTimer = setInterval(function () {
      if (ws.readyState !== WebSocket.OPEN) return;
      ws.send('{"type":"ping"}');
      clearTimeout(self._pongTimer);
      self._pongTimer = setTimeout(function () { self._drop(ws); }, PONG_WITHIN_MS);
    }, PING_EVERY_MS);
  };

  HeraldClient.prototype._closedSocket = function (ws, event) {
    if (ws !== this._ws) return;
    this._ws = null;
    this._live = false;
    clearInterval(this._pingTimer);
    clearTimeout(this._pongTimer);
    clearTimeout(this._welcomeTimer);
    clearTimeout(this._ackTimer);
    this._ackTimer = null;
    if (event.code === CLOSE_MALFORMED && this._sent.length) {
      // The server answers each change in order and closed at the first it could not
      // take: sending it again would only close the next socket too.
      this._refuse(this._sent.shift(), {code: "malformed", message: event.reason || "malformed"});
    }
    this._requeue();
    if (this._closed) { this._setState("offline"); return; }
    if (event.code === CLOSE_UNAUTHORIZED && typeof this.token !== "function") {
      // A fixed token was refused (expired, revoked): retrying with it cannot help.
      // setToken() resumes with a fresh one.
      this._setState("signed-out");
      this.onAuthError(event.reason || "unauthorized");
      return;
    }
    if (event.code === CLOSE_GOING_AWAY) {
      this._attempt = 0; // the node is shutting down: another node is up right now
    }
    this._schedule();
  };

  HeraldClient.prototype._schedule = function () {
    var self = this;
    clearTimeout(this._timer);
    var base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * Math.pow(2, this._attempt));
    var delay = this._attempt === 0 ? Math.random() * 250 : base / 2 + Math.random() * base / 2;
    this._attempt += 1;
    this.retryAt = Date.now() + delay;
    this._timer = setTimeout(function () { self.connect(); }, delay);
    this._setState(global.navigator.onLine === false ? "offline" : "reconnecting");
  };

  /** Try to connect now instead of waiting for the next scheduled attempt. */
  HeraldClient.prototype.retryNow = function () {
    if (this._closed || this._ws || this.state === "signed-out") return;
    this._attempt = 0;
    clearTimeout(this._timer);
    this.connect();
  };

  /** Hand over a fresh token (after "signed-out", or before the old one expires): the
   * client reconnects with it and resumes from its cursor. */
  HeraldClient.prototype.setToken = function (token) {
    this.token = token;
    if (this._closed) return;
    if (this._ws) { this._ws.close(); return; }  // reconnects with the new token
    this._attempt = 0;
    clearTimeout(this._timer);
    this.connect();
  };

  HeraldClient.prototype._send = function (frame) {
    if (this._ws && this._ws.readyState === WebSocket.OPEN) {
      this._ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  };

  /** A change: numbered, queued, and sent at once on a live socket; kept until the
   * server's "done" for it arrives. Returns true when sent now, false when queued. */
  HeraldClient.prototype._change = function (frame) {
    this._ref += 1;
    frame.ref = this._ref;
    this._outbox.push(frame);
    this._flush();
    return this._sent.indexOf(frame) >= 0;
  };

  /** Send what waits, in order, on a welcomed socket. */
  HeraldClient.prototype._flush = function () {
    var self = this;
    while (this._live && this._outbox.length && this._send(this._outbox[0])) {
      this._sent.push(this._outbox.shift());
    }
    if (this._sent.length && !this._confirmTimer) {
      var ws = this._ws;
      this._confirmTimer = setTimeout(function () {
        self._confirmTimer = null;
        // Bytes written into a dead connection vanish without an error: no answer in
        // time means this socket is gone, whatever its readyState says.
        if (ws === self._ws && self._sent.length) {
          self._strikes += 1;
          self._drop(ws);
        }
      }, this._confirmWithin);
    }
    this.onPending(this.pending());
  };

  /** The server answered change ``ref``: done, or refused for now (database down: it
   * goes back to the queue and is sent again shortly). */
  HeraldClient.prototype._confirmed = function (ref, retry, error) {
    var self = this;
    this._strikes = 0;
    for (var i = 0; i < this._sent.length; i++) {
      if (this._sent[i].ref !== ref) continue;
      if (retry) {
        // It and every change sent after it go back, in order: one of those may
        // already be applied, and is applied again after it (changes are idempotent),
        // so the last word stays the last.
        this._unsend(i);
        clearTimeout(this._retryTimer);
        this._retryTimer = setTimeout(function () { self._flush(); }, RETRY_CHANGE_MS);
      } else {
        var change = this._sent.splice(i, 1)[0];
        if (error) this._refuse(change, error);
      }
      break;
    }
    clearTimeout(this._confirmTimer);
    this._confirmTimer = null;
    if (retry) this.onPending(this.pending());
    else this._flush();  // restarts the timer for what is still unconfirmed
  };

  /** A change dropped for good: the page hears of it. */
  HeraldClient.prototype._refuse = function (change, error) {
    if (global.console) console.warn("herald: change refused:", error.code, change);
    try { this.onRefused(change, error); } catch (err) { setTimeout(function () { throw err; }); }
  };

  /** The socket ``ws`` was welcomed for ``user``, not the user of the previous welcome:
   * drop the old user's cursor and changes and start again on a new socket. */
  HeraldClient.prototype._otherUser = function (ws, user) {
    var dropped = this._sent.concat(this._outbox);
    this._sent = [];
    this._outbox = [];
    this.lastSeq = null;
    this._user = user;
    this._shard = shardOf(user);
    var self = this;
    dropped.forEach(function (change) {
      self._refuse(change, {code: "other_user", message: "made as another user"});
    });
    // onRefused may have queued changes as the new user: they wait for its socket.
    if (dropped.length) this.onPending(this.pending());
    // A switch reconnects at once; one soon after another (two sessions fighting over
    // one client) keeps the backoff growing rather than reconnect in a tight loop.
    var now = Date.now();
    if (this._switchedAt === null || now - this._switchedAt > SWITCH_CALM_MS) this._attempt = 0;
    this._switchedAt = now;
    this._drop(ws);  // reconnects without a cursor
  };

  /** The socket closed: its unconfirmed changes go back to the front of the queue. */
  HeraldClient.prototype._requeue = function () {
    clearTimeout(this._confirmTimer);
    this._confirmTimer = null;
    if (!this._sent.length) return;
    this._unsend(0);
    this.onPending(this.pending());
  };

  /** Sent changes from index ``from`` on go back to the front of the queue, in order. */
  HeraldClient.prototype._unsend = function (from) {
    this._outbox = this._sent.splice(from).concat(this._outbox);
  };

  /** Give up on ``ws`` now (a silently dead line may take minutes to report its close)
   * and reconnect. */
  HeraldClient.prototype._drop = function (ws) {
    ws.onopen = null;
    ws.onmessage = null;
    ws.onclose = null;
    try { ws.close(); } catch (err) { /* already closing */ }
    this._closedSocket(ws, {code: 1006, reason: "no answer"});
  };

  /** Changes not yet confirmed by the server: queued, or sent and awaiting "done". */
  HeraldClient.prototype.pending = function () {
    return this._outbox.length + this._sent.length;
  };

  /** Acknowledge everything up to seq as shown (sets delivered_at). Acks are cumulative,
   * so a burst is acknowledged once, at most ACK_EVERY_MS later. */
  HeraldClient.prototype.ack = function (seq) {
    var self = this;
    if (seq <= this._acked) return true;
    this._acked = seq;
    if (!this._ackTimer) {
      this._ackTimer = setTimeout(function () {
        self._ackTimer = null;
        self._send({type: "ack", seq: self._acked});
      }, ACK_EVERY_MS);
    }
    return true;
  };
  /** A change of ``ids`` (checked; in frames of at most MAX_IDS); true when all sent. */
  HeraldClient.prototype._changeIds = function (type, ids) {
    checkIds(ids);
    var sent = true;
    for (var i = 0; i < ids.length; i += MAX_IDS) {
      sent = this._change({type: type, ids: ids.slice(i, i + MAX_IDS)}) && sent;
    }
    return sent;
  };
  /** Mark notifications read; every open client of the user gets a "read" frame. */
  HeraldClient.prototype.markRead = function (ids) { return this._changeIds("read", ids); };
  HeraldClient.prototype.markAllRead = function () { return this._change({type: "read", all: true}); };
  /** Mark notifications unread again; every open client gets an "unread" frame. */
  HeraldClient.prototype.markUnread = function (ids) { return this._changeIds("unread", ids); };
  /** Archive (or bring back) notifications; every open client gets the frame. */
  HeraldClient.prototype.archive = function (ids) { return this._changeIds("archive", ids); };
  HeraldClient.prototype.unarchive = function (ids) { return this._changeIds("unarchive", ids); };
  /** Mark every unread notification of a group read (its group_key); every open client
   * gets a "read" frame with the ids it changed. */
  HeraldClient.prototype.readGroup = function (groupKey) {
    checkLabel(groupKey, "groupKey", MAX_GROUP_KEY);
    return this._change({type: "read", group_key: groupKey});
  };
  /** Mute (or unmute) a category: its notifications no longer count as unread; every
   * open client gets a "preferences" frame. */
  HeraldClient.prototype.mute = function (category) {
    checkLabel(category, "category", MAX_CATEGORY);
    return this._change({type: "mute", category: category});
  };
  HeraldClient.prototype.unmute = function (category) {
    checkLabel(category, "category", MAX_CATEGORY);
    return this._change({type: "unmute", category: category});
  };

  /** Close for good (no reconnect). */
  HeraldClient.prototype.close = function () {
    this._closed = true;
    clearTimeout(this._timer);
    clearTimeout(this._retryTimer);
    global.removeEventListener("online", this._online);
    if (this._ws) this._ws.close(1000);
    this._setState("offline");
  };

  HeraldClient.shardOf = shardOf;
  global.HeraldClient = HeraldClient;
})(window);
