/*
 * The inbox page, built on herald.js.
 *
 * Start-up: load the newest page of history over HTTP, then open the socket with
 * last_seq = the user's newest seq as of that page (the history answer's last_seq, read
 * in the same snapshot), so the socket delivers exactly what came after it (no
 * duplicate, no gap). Older pages load as the user scrolls; "That's everything" marks
 * the end.
 *
 * Views: the inbox (not archived) or the archive, optionally one category (chips appear
 * for the categories seen). Switching reloads the first page of that view; the socket
 * goes on. Each item can be marked unread again and archived (or moved back); every
 * tab and device of the user follows through the server's pushes. An item disappears
 * when its expires_at passes.
 *
 * Changes made while the connection is down (read, unread, archive, read-all) show on
 * screen at once and wait in herald.js's outbox, visibly ("1 change waiting"), until a
 * socket is back: they are never lost silently, and the page never claims "Live" with
 * an action that did not reach the server.
 *
 * States, one at a time: Connecting, Live, Reconnecting (with when the next try is and
 * "Retry now"), Offline, Signed out. A session whose token expires keeps its list and
 * says how to sign in again; a fresh token in the URL fragment resumes it in place.
 *
 * Authentication: the login cookie (set by the host application, or /login in dev), or
 * a token handed over in the URL fragment (#token=...), which browsers never send to
 * any server; it is moved to sessionStorage and removed from the address bar at once.
 *
 * Every piece of notification text goes through textContent: never parsed as HTML. A
 * link is followed only if it is http(s), and a path only if it stays on this site.
 */
(function () {
  "use strict";

  var PAGE = 30;
  var app = document.getElementById("app");
  var list = document.getElementById("list");
  var badge = document.getElementById("badge");
  var statusBox = document.getElementById("status");
  var statusText = document.getElementById("status-text");
  var retry = document.getElementById("retry");
  var pendingText = document.getElementById("pending");
  var live = document.getElementById("live");
  var empty = document.getElementById("empty");
  var end = document.getElementById("end");
  var signedOut = document.getElementById("signed-out");
  var ended = document.getElementById("session-ended");
  var endedRetry = document.getElementById("session-retry");
  var toolbar = document.getElementById("toolbar");
  var who = document.getElementById("who");
  var more = document.getElementById("more");
  var readAll = document.getElementById("read-all");
  var desktop = document.getElementById("desktop");
  var filters = document.getElementById("filters");
  var chips = document.getElementById("chips");
  var viewInbox = document.getElementById("view-inbox");
  var viewArchived = document.getElementById("view-archived");
  var emptyText = document.getElementById("empty-text");
  var unreadOnly = document.getElementById("unread-only");

  var token = takeFragmentToken();
  var unread = 0;
  var welcomeSeq = 0;       // notifications up to here are counted in welcome.unread
  var oldestSeq = null;     // for paging back
  var exhausted = false;
  var loadingMore = false;
  var items = {};           // id -> <li>, for what the current view shows
  var client = null;
  var view = {archived: false, category: null};
  var generation = 0;       // bumped on every view change: late pages are dropped
  var counted = 0;          // bumped on every change of the badge
  var recent = {};          // id -> notification that arrived live (the last ones)
  var known = {};           // category -> its chip
  var started = false;      // the first page was shown and the socket opened
  var signedInAs = null;    // the user of the first welcome

  function takeFragmentToken() {
    var match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
    if (match) {
      sessionStorage.setItem("herald.token", decodeURIComponent(match[1]));
      history.replaceState(null, "", window.location.pathname + window.location.search);
    }
    return sessionStorage.getItem("herald.token");
  }

  /** The handed-over token was refused: forget it, so the login cookie (which may be
   * fresher: another tab signed in again) is what the next attempt uses. */
  function forgetToken() {
    sessionStorage.removeItem("herald.token");
    token = null;
  }

  function api(path, options) {
    options = options || {};
    var headers = {"Content-Type": "application/json"};
    if (token) headers.Authorization = "Bearer " + token;
    return fetch(path, {
      method: options.method || "GET",
      headers: headers,
      body: options.body ? JSON.stringify(options.body) : undefined,
      credentials: "same-origin",
      keepalive: !!options.keepalive
    });
  }

  // --- rendering --------------------------------------------------------------------

  var relative = window.Intl && Intl.RelativeTimeFormat
    ? new Intl.RelativeTimeFormat(undefined, {numeric: "auto"}) : null;

  function ago(iso) {
    var seconds = (new Date(iso).getTime() - Date.now()) / 1000;
    if (!relative) return new Date(iso).toLocaleString();
    if (Math.abs(seconds) < 45) return "just now";
    var units = [["year", 31536000], ["month", 2592000], ["day", 86400], ["hour", 3600],
                 ["minute", 60]];
    for (var i = 0; i < units.length; i++) {
      if (Math.abs(seconds) >= units[i][1] || units[i][0] === "minute") {
        return relative.format(Math.round(seconds / units[i][1]), units[i][0]);
      }
    }
    return "just now";
  }

  function expiresLabel(iso) {
    var left = (new Date(iso).getTime() - Date.now()) / 1000;
    return left < 60 ? "Expires in less than a minute" : "Expires " + ago(iso);
  }

  /** The address a click may go to, or null: http(s) only, and a path (or anything
   * else relative) only if the browser resolves it to this very site; "/\host" and
   * "//host" are other sites dressed as paths. */
  function safeLink(link) {
    if (!link || /[\s\\]/.test(link)) return null;
    var url;
    try { url = new URL(link, window.location.href); } catch (e) { return null; }
    if (url.protocol !== "http:" && url.protocol !== "https:") return null;
    if (!/^https?:\/\//i.test(link) && url.origin !== window.location.origin) return null;
    return url.href;
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function actionButton(className, label, title, handler) {
    var button = el("button", "act " + className, label);
    button.type = "button";
    button.setAttribute("aria-label", label + ": " + title);
    button.addEventListener("click", handler);
    return button;
  }

  function render(n) {
    var li = el("li", "item" + (n.read ? "" : " unread"));
    li.dataset.id = n.id;
    li.dataset.seq = n.seq;
    li.dataset.category = n.category || "";
    li.dataset.created = n.created_at;
    var href = safeLink(n.link);
    var main = href ? el("a", "item-main") : el("button", "item-main");
    if (href) main.href = href; else main.type = "button";
    main.appendChild(el("span", "dot", ""));
    var content = el("span", "content");
    var state = el("span", "sr-only state", n.read ? "" : "Unread: ");
    content.appendChild(state);
    var title = el("span", "title", n.title);
    title.dir = "auto";  // right-to-left titles read right to left
    content.appendChild(title);
    if (n.body) {
      var body = el("span", "body", n.body);
      body.dir = "auto";
      content.appendChild(body);
    }
    var meta = el("span", "meta");
    var time = el("time", "time", ago(n.created_at));
    time.dateTime = n.created_at;
    time.title = new Date(n.created_at).toLocaleString();
    meta.appendChild(time);
    if (n.category) meta.appendChild(el("span", "category", n.category));
    if (n.expires_at) {
      var expires = el("time", "expires", expiresLabel(n.expires_at));
      expires.dateTime = n.expires_at;
      meta.appendChild(expires);
    }
    if (href) {
      var hint = el("span", "link-hint", "Opens " + new URL(href).host);
      meta.appendChild(hint);
    }
    content.appendChild(meta);
    main.appendChild(content);
    main.addEventListener("click", function (event) { open(n, li, href, event); });
    li.appendChild(main);
    var actions = el("span", "actions");
    // Read without following the link; the two swap places, and focus with them.
    actions.appendChild(actionButton("act-read", "Mark read", n.title, function () {
      readOne(n, li);
      refocus(li, ".act-unread");
    }));
    actions.appendChild(actionButton("act-unread", "Mark unread", n.title, function () {
      change("unread", n.id);
      refocus(li, ".act-read");
    }));
    actions.appendChild(n.archived
      ? actionButton("act-unarchive", "Move to inbox", n.title, function () {
        change("unarchive", n.id);
      })
      : actionButton("act-archive", "Archive", n.title, function () {
        change("archive", n.id);
      }));
    li.appendChild(actions);
    items[n.id] = li;
    watchExpiry(n);
    noteCategory(n.category);
    return li;
  }

  function setShownRead(ids, read) {
    ids.forEach(function (id) {
      var li = items[id];
      if (!li) return;
      li.classList.toggle("unread", !read);
      var state = li.querySelector(".state");
      if (state) state.textContent = read ? "" : "Unread: ";
    });
    refreshEmpty();
  }

  function markShownRead(ids) { setShownRead(ids, true); }

  function removeShown(id) {
    var li = items[id];
    if (!li) return;
    if (li.contains(document.activeElement)) {
      // Keep keyboard users in the list: the next item, else the previous one, else
      // the view's tab (focus would otherwise fall to the page's body).
      var near = li.nextElementSibling || li.previousElementSibling;
      (near ? near.querySelector(".item-main")
        : (view.archived ? viewArchived : viewInbox)).focus();
    }
    delete items[id];
    if (li.parentNode) li.parentNode.removeChild(li);
    forgetCategory(li.dataset.category);
    refreshEmpty();
  }

  /** ``li``'s button that a click just hid hands focus to the one that took its place. */
  function refocus(li, selector) {
    var target = li.querySelector(selector);
    if (target && li.contains(document.activeElement)) target.focus();
  }

  /** A category chip goes with the last item shown in it (not while it is chosen). */
  function forgetCategory(category) {
    if (!category || !known[category] || view.category === category) return;
    for (var id in items) {
      if (items[id].dataset.category === category) return;
    }
    known[category].parentNode.removeChild(known[category]);
    delete known[category];
    chips.hidden = Object.keys(known).length === 0;
  }

  // --- views: inbox or archive, one category or all -------------------------------------

  function matches(n) {
    return !!n.archived === view.archived && (!view.category || n.category === view.category);
  }

  function noteCategory(category) {
    if (!category || known[category]) return;
    var chip = el("button", "chip", category);
    chip.type = "button";
    chip.dataset.category = category;
    chip.setAttribute("aria-pressed", view.category === category ? "true" : "false");
    chip.addEventListener("click", function () {
      showView(view.archived, view.category === category ? null : category);
    });
    known[category] = chip;
    chips.appendChild(chip);
    chips.hidden = false;
  }

  function showView(archived, category) {
    view = {archived: archived, category: category};
    viewInbox.setAttribute("aria-pressed", archived ? "false" : "true");
    viewArchived.setAttribute("aria-pressed", archived ? "true" : "false");
    Array.prototype.forEach.call(chips.querySelectorAll(".chip"), function (chip) {
      var mine = (chip.dataset.category || null) === category;
      chip.setAttribute("aria-pressed", mine ? "true" : "false");
    });
    emptyText.textContent = emptyMessage();
    reload();
  }

  function reload() {
    var mine = ++generation;
    var countedBefore = counted;
    return page(null).then(function (body) {
      if (mine !== generation) return;
      list.textContent = "";
      items = {};
      oldestSeq = null;
      exhausted = false;
      append(body.notifications);
      // Rows that arrived on the socket after this page was read are not in it.
      Object.keys(recent).map(function (id) { return recent[id]; })
        .filter(function (n) { return n.seq > body.last_seq && matches(n) && !items[n.id]; })
        .sort(function (a, b) { return a.seq - b.seq; })
        .forEach(function (n) { list.insertBefore(render(n), list.firstChild); });
      refreshEmpty();
      // A push that came meanwhile knows better than this page.
      if (countedBefore === counted) setUnread(body.unread);
    }).catch(function () {});
  }

  // --- expiry: an item goes when its time is up -----------------------------------------

  var recount = null;

  function watchExpiry(n) {
    if (!n.expires_at) return;
    var left = Date.parse(n.expires_at) - Date.now();
    if (left > 2147483647) return;  // beyond what setTimeout takes (~24 days)
    setTimeout(function () { expire(n.id); }, Math.max(0, left) + 50);
  }

  function expire(id) {
    var li = items[id];
    if (!li) return;
    if (li.classList.contains("unread") && !view.archived) setUnread(unread - 1);
    removeShown(id);
    // Items this page does not show may have expired too: ask for the true count.
    clearTimeout(recount);
    recount = setTimeout(function () {
      api("/api/notifications?limit=1").then(function (response) {
        return response.ok ? response.json() : null;
      }).then(function (body) { if (body) setUnread(body.unread); }).catch(function () {});
    }, 1000);
  }

  function setUnread(count) {
    counted += 1;
    unread = Math.max(0, count);
    badge.textContent = unread > 99 ? "99+" : String(unread);
    badge.hidden = unread === 0;
    badge.setAttribute("aria-label", unread + " unread notifications");
    document.title = (unread ? "(" + unread + ") " : "") + "Inbox · Herald";
  }

  /** Whether "Unread only" is on. */
  function onlyUnread() { return unreadOnly.getAttribute("aria-pressed") === "true"; }

  function emptyMessage() {
    return onlyUnread() ? "No unread notifications."
      : view.archived ? "Nothing archived." : "You're all caught up.";
  }

  function refreshEmpty() {
    var shown = onlyUnread()
      ? list.querySelectorAll(".item.unread").length : list.children.length;
    empty.hidden = shown > 0;
    end.hidden = !(exhausted && shown > 0);
    markDays();
  }

  // --- date groups: "Today", "Yesterday", "Earlier" ---------------------------------

  var DAY_MS = 86400000;

  function dayLabel(iso) {
    var now = new Date();
    var midnight = new Date(now.getFullYear(), now.getMonth(), now.getDate()).getTime();
    var then = Date.parse(iso);
    return then >= midnight ? "Today" : then >= midnight - DAY_MS ? "Yesterday" : "Earlier";
  }

  /** A heading on the first shown item of each day group (the list is newest first);
   * run after every change of the list, and as the clock passes midnight. */
  function markDays() {
    var only = onlyUnread();
    var previous = null;
    Array.prototype.forEach.call(list.children, function (li) {
      var heading = li.querySelector(".day");
      var shown = !only || li.classList.contains("unread");
      var label = shown ? dayLabel(li.dataset.created) : null;
      if (label !== null && label !== previous) {
        if (!heading) {
          heading = el("span", "day");
          heading.setAttribute("role", "heading");
          heading.setAttribute("aria-level", "2");
          li.insertBefore(heading, li.firstChild);
        }
        heading.textContent = label;
      } else if (heading) {
        li.removeChild(heading);
      }
      if (label !== null) previous = label;
    });
  }

  // --- the connection's state, shown as one truthful line ----------------------------

  var STATES = {connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…",
                offline: "Offline", "signed-out": "Signed out"};
  var retryAt = null;
  var countdown = null;

  function setState(state, detail) {
    statusBox.dataset.state = state;
    retryAt = state === "reconnecting" && detail && detail.retryAt ? detail.retryAt : null;
    retry.hidden = !(state === "reconnecting" || state === "offline") || !client;
    clearInterval(countdown);
    showState(state);
    if (retryAt) countdown = setInterval(function () { showState(state); }, 500);
  }

  function showState(state) {
    var text = STATES[state] || state;
    if (state === "live" && pendingCount > 0) text = "Saving…";
    if (retryAt) {
      var seconds = Math.ceil((retryAt - Date.now()) / 1000);
      text = seconds > 0 ? "Reconnecting in " + seconds + " s" : "Reconnecting…";
    }
    statusText.textContent = text;
  }

  retry.addEventListener("click", function () {
    if (client) client.retryNow();
    else restart();
  });

  // Changes the server has not confirmed yet (herald.js keeps them until it does). On a
  // live socket that takes milliseconds: the status line says "Saving…" at once (never
  // "Live" while a change is unconfirmed), the count only once it takes longer.
  var pendingCount = 0;
  var pendingTimer = null;

  function setPending(count) {
    pendingCount = count;
    clearTimeout(pendingTimer);
    if (count === 0) showPending();
    else pendingTimer = setTimeout(showPending, 400);
    showState(statusBox.dataset.state);
  }

  function showPending() {
    pendingText.hidden = pendingCount === 0;
    pendingText.textContent = pendingCount === 1 ? "1 change waiting"
      : pendingCount + " changes waiting";
  }

  // --- actions ----------------------------------------------------------------------

  /** Mark one item read: on screen at once, then queued until the server confirms. */
  function readOne(n, li) {
    if (!li.classList.contains("unread")) return false;
    markShownRead([n.id]);
    if (!view.archived) setUnread(unread - 1);  // archived rows are not counted
    if (client) client.markRead([n.id]);
    refreshEmpty();
    return true;
  }

  function open(n, li, href, event) {
    if (readOne(n, li)) {
      // Queued until the server confirms it, whatever the socket's state: a click that
      // opens the link in another tab (Ctrl, Shift, middle button) leaves this page here.
      var leaving = href && !(event.ctrlKey || event.metaKey || event.shiftKey ||
                              event.button === 1);
      if (leaving) {
        // The page is about to go away with the socket, before the change's "done" can
        // come back: a keepalive request carries it out too (changes are idempotent).
        api("/api/notifications/read", {method: "POST", body: {ids: [n.id]},
                                        keepalive: true}).catch(function () {});
      }
    }
    if (!href) event.preventDefault();
  }

  /** Mark unread, archive or unarchive one item: on screen at once, then over the
   * socket (kept in the outbox while it is down); the server's push brings every tab
   * in line. */
  function change(kind, id) {
    var li = items[id];
    var wasUnread = !!li && li.classList.contains("unread");
    // The badge counts unread rows that are not archived: move it as the server will.
    if (kind === "unread" && !wasUnread && !view.archived) setUnread(unread + 1);
    if (kind === "archive" && wasUnread) setUnread(unread - 1);
    if (kind === "unarchive" && wasUnread) setUnread(unread + 1);
    if (kind === "unread") setShownRead([id], false);
    else removeShown(id);
    var methods = {unread: "markUnread", archive: "archive", unarchive: "unarchive"};
    if (client) client[methods[kind]]([id]);
  }

  function changed(c) {
    var ids = c.ids;
    if (c.all) {
      ids = Object.keys(items).filter(function (id) { return +items[id].dataset.seq <= c.seq; });
    }
    ids.forEach(function (id) {  // keep the live arrivals' state current for reloads
      var n = recent[id];
      if (!n) return;
      if (c.type === "read" || c.type === "unread") n.read = c.type === "read";
      else n.archived = c.type === "archive";
    });
    if (c.type === "read" || c.type === "unread") {
      setShownRead(ids, c.type === "read");
    } else if ((c.type === "archive") === view.archived) {
      // Rows entering this view: their content is not here, fetch the page again.
      if (ids.some(function (id) { return !items[id]; })) reload();
    } else {
      ids.forEach(removeShown);
    }
    setUnread(c.unread);
  }

  chips.querySelector(".chip").addEventListener("click", function () {  // "All"
    showView(view.archived, null);
  });
  viewInbox.addEventListener("click", function () { showView(false, view.category); });
  unreadOnly.addEventListener("click", function () {
    var on = !onlyUnread();
    unreadOnly.setAttribute("aria-pressed", on ? "true" : "false");
    list.classList.toggle("unread-only", on);
    emptyText.textContent = emptyMessage();
    refreshEmpty();
  });
  viewArchived.addEventListener("click", function () { showView(true, view.category); });

  readAll.addEventListener("click", function () {
    if (!view.category) {
      markShownRead(Object.keys(items));
      setUnread(0);
      if (client) client.markAllRead();
      return;
    }
    // One category shown: read what it shows, not every category's rows.
    var ids = Object.keys(items).filter(function (id) {
      return items[id].classList.contains("unread");
    }).map(Number);
    if (!ids.length) return;
    markShownRead(ids);
    if (!view.archived) setUnread(unread - ids.length);
    if (client) client.markRead(ids);  // herald.js splits it into frames of 1,000
  });

  // Desktop alerts are opt-in, and only while this tab is hidden.
  var wantDesktop = localStorage.getItem("herald.desktop") === "on";
  function showDesktopButton() {
    if (!("Notification" in window)) return;
    desktop.hidden = false;
    var on = wantDesktop && Notification.permission === "granted";
    desktop.textContent = "Desktop alerts: " + (on ? "on" : "off");
    desktop.setAttribute("aria-pressed", on ? "true" : "false");
  }
  desktop.addEventListener("click", function () {
    if (wantDesktop && Notification.permission === "granted") {
      wantDesktop = false;
      localStorage.setItem("herald.desktop", "off");
      showDesktopButton();
      return;
    }
    Notification.requestPermission().then(function (permission) {
      wantDesktop = permission === "granted";
      localStorage.setItem("herald.desktop", wantDesktop ? "on" : "off");
      showDesktopButton();
    });
  });

  function desktopAlert(n) {
    if (!wantDesktop || !document.hidden || !("Notification" in window)) return;
    if (Notification.permission !== "granted") return;
    var alert = new Notification(n.title, {body: n.body || "", tag: "herald-" + n.id});
    alert.onclick = function () { window.focus(); alert.close(); };
  }

  // --- live -------------------------------------------------------------------------

  function arrived(n) {
    client.ack(n.seq);
    noteCategory(n.category);
    recent[n.id] = n;
    var ids = Object.keys(recent);
    if (ids.length > 200) delete recent[ids[0]];
    if (!n.read && !n.archived && n.seq > welcomeSeq) setUnread(unread + 1);
    if (items[n.id] || !matches(n)) return;  // another view's: counted, not shown
    var li = render(n);
    li.classList.add("new");
    list.insertBefore(li, list.firstChild);
    setTimeout(function () { li.classList.remove("new"); }, 4000);
    refreshEmpty();
    if (oldestSeq === null) oldestSeq = n.seq;
    if (n.archived) return;  // an old row replayed into the archive: no fanfare
    live.textContent = "New notification: " + n.title;
    desktopAlert(n);
  }

  function connect(lastSeq) {
    client = new HeraldClient({
      token: token,
      lastSeq: lastSeq,
      onState: setState,
      onPending: setPending,
      onWelcome: function (w) {
        if (signedInAs !== null && w.user !== signedInAs) {
          // Another user's session now (the login cookie took over from a refused
          // token): nothing on screen is theirs.
          window.location.reload();
          return;
        }
        signedInAs = w.user;
        welcomeSeq = w.last_seq;
        setUnread(w.unread);
        who.textContent = "Signed in as " + w.user;
        ended.hidden = true;
        toolbar.hidden = false;
      },
      onNotification: arrived,
      onChange: changed,
      onAuthError: sessionEnded
    });
  }

  // --- signed out: never signed in, or the session ended ----------------------------

  /** No credentials at all: nothing to show but how to sign in. */
  function showSignedOut() {
    if (client) client.close();
    sessionStorage.removeItem("herald.token");
    who.textContent = "";
    list.textContent = "";
    empty.hidden = true;
    end.hidden = true;
    toolbar.hidden = true;
    filters.hidden = true;
    ended.hidden = true;
    signedOut.hidden = false;
    setState("signed-out");
  }

  /** The token was refused mid-session (it expired): keep what is on screen, say so,
   * and resume in place once a fresh token arrives. */
  function sessionEnded() {
    if (token) {  // a stale handed-over token: try the login cookie before giving up
      forgetToken();
      if (client) client.setToken(null);
      return;
    }
    who.textContent = "";
    toolbar.hidden = true;
    ended.hidden = false;
  }

  endedRetry.addEventListener("click", function () {
    // The login cookie may have been renewed meanwhile (another tab signed in again).
    token = sessionStorage.getItem("herald.token");
    if (client) client.setToken(token);
  });

  // A host application hands over a fresh token by setting the fragment again.
  window.addEventListener("hashchange", function () {
    if (!/(?:^#|&)token=/.test(window.location.hash)) return;
    token = takeFragmentToken();
    if (client) client.setToken(token);
    else restart();
  });

  // --- history ----------------------------------------------------------------------

  function page(beforeSeq) {
    var query = "?limit=" + PAGE + (beforeSeq ? "&before_seq=" + beforeSeq : "");
    if (view.archived) query += "&archived=true";
    if (view.category) query += "&category=" + encodeURIComponent(view.category);
    return api("/api/notifications" + query).then(function (response) {
      if (response.status === 401) throw new Error("unauthorized");
      if (!response.ok) throw new Error("history: HTTP " + response.status);
      return response.json();
    });
  }

  function append(notifications) {
    notifications.forEach(function (n) {
      if (!items[n.id]) list.appendChild(render(n));
      oldestSeq = oldestSeq === null ? n.seq : Math.min(oldestSeq, n.seq);
    });
    if (notifications.length < PAGE) exhausted = true;
    refreshEmpty();
  }

  function loadMore() {
    if (loadingMore || exhausted || oldestSeq === null) return;
    loadingMore = true;
    var mine = generation;
    page(oldestSeq).then(function (body) {
      if (mine === generation) append(body.notifications);
    })
      .catch(function () {})
      .then(function () { loadingMore = false; });
  }

  var restartTimer = null;
  var restartDelay = 1000;

  /** The first page could not be loaded (server unreachable): try again, sooner if
   * asked, and say when. */
  function scheduleRestart() {
    clearTimeout(restartTimer);
    var at = Date.now() + restartDelay;
    restartTimer = setTimeout(restart, restartDelay);
    restartDelay = Math.min(restartDelay * 2, 5000);
    setState("reconnecting", {retryAt: at});
    retry.hidden = false;
  }

  function restart() {
    clearTimeout(restartTimer);
    start();
  }

  function start() {
    page(null).then(function (body) {
      started = true;
      signedOut.hidden = true;
      toolbar.hidden = false;
      filters.hidden = false;
      append(body.notifications);
      setUnread(body.unread);
      // The user's newest seq as of this page: the socket continues right after it.
      welcomeSeq = body.last_seq;
      connect(body.last_seq);
      if ("IntersectionObserver" in window) {
        new IntersectionObserver(function (entries) {
          if (entries[0].isIntersecting) loadMore();
        }, {rootMargin: "200px"}).observe(more);
      }
    }).catch(function (err) {
      if (err.message === "unauthorized" && token) {
        forgetToken();  // a stale handed-over token: the login cookie may do
        restart();
      } else if (err.message === "unauthorized") {
        showSignedOut();
      } else if (!started) {
        scheduleRestart();
      }
    });
  }

  setInterval(function () {
    markDays();
    Array.prototype.forEach.call(list.querySelectorAll("time"), function (t) {
      t.textContent = t.classList.contains("expires") ? expiresLabel(t.dateTime)
        : ago(t.dateTime);
    });
  }, 15000);

  // --- dev: send a notification -----------------------------------------------------

  var form = document.getElementById("send-form");
  if (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var data = {};
      new FormData(form).forEach(function (value, key) { if (value) data[key] = value; });
      var result = document.getElementById("send-result");
      result.classList.remove("error");
      result.textContent = "Sending…";
      api("/dev/send", {method: "POST", body: data}).then(function (response) {
        return response.json().then(function (body) {
          if (!response.ok) throw new Error(body.error.message);
          result.textContent = "Sent (seq " + body.notifications[0].seq + ")";
          ["send-title", "send-body", "send-link", "send-category"].forEach(function (id) {
            var input = document.getElementById(id);
            if (input) input.value = "";
          });
        }, function () { throw new Error("the server answered " + response.status); });
      }).catch(function (err) {
        result.classList.add("error");
        result.textContent = "Not sent: " + (err.message === "Failed to fetch"
          ? "the server is unreachable" : err.message);
      });
    });
  }

  // Signing out ends the session in every tab of this browser, not only this one.
  var signOut = document.querySelector('a[href="/logout"]');
  if (signOut) {
    signOut.addEventListener("click", function () {
      sessionStorage.removeItem("herald.token");
      try { localStorage.setItem("herald.signed-out", String(Date.now())); } catch (err) {}
    });
  }
  window.addEventListener("storage", function (event) {
    if (event.key === "herald.signed-out" && event.newValue) showSignedOut();
  });

  showDesktopButton();
  app.dataset.ready = "true";
  start();
})();
