/*
 * The inbox page, built on herald.js.
 *
 * Start-up: load the newest page of history over HTTP, then open the socket with
 * last_seq = the user's newest seq as of that page (the history answer's last_seq, read
 * in the same snapshot), so the socket delivers exactly what came after it (no
 * duplicate, no gap). Older pages load as the user scrolls.
 *
 * Views: the inbox (not archived) or the archive, optionally one category (chips appear
 * for the categories seen). Switching reloads the first page of that view; the socket
 * goes on. Each item can be marked unread again and archived (or moved back); every
 * tab and device of the user follows through the server's pushes. An item disappears
 * when its expires_at passes.
 *
 * Authentication: the login cookie (set by the host application, or /login in dev), or
 * a token handed over in the URL fragment (#token=...), which browsers never send to
 * any server; it is moved to sessionStorage and removed from the address bar at once.
 *
 * Every piece of notification text goes through textContent: never parsed as HTML.
 */
(function () {
  "use strict";

  var PAGE = 30;
  var app = document.getElementById("app");
  var list = document.getElementById("list");
  var badge = document.getElementById("badge");
  var statusBox = document.getElementById("status");
  var statusText = document.getElementById("status-text");
  var live = document.getElementById("live");
  var empty = document.getElementById("empty");
  var signedOut = document.getElementById("signed-out");
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

  function takeFragmentToken() {
    var match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
    if (match) {
      sessionStorage.setItem("herald.token", decodeURIComponent(match[1]));
      history.replaceState(null, "", window.location.pathname + window.location.search);
    }
    return sessionStorage.getItem("herald.token");
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
    var units = [["year", 31536000], ["month", 2592000], ["day", 86400], ["hour", 3600],
                 ["minute", 60]];
    for (var i = 0; i < units.length; i++) {
      if (Math.abs(seconds) >= units[i][1]) {
        return relative.format(Math.round(seconds / units[i][1]), units[i][0]);
      }
    }
    return "just now";
  }

  function expiresLabel(iso) {
    var left = (new Date(iso).getTime() - Date.now()) / 1000;
    return left < 60 ? "Expires in less than a minute" : "Expires " + ago(iso);
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
    var main = n.link ? el("a", "item-main") : el("button", "item-main");
    if (n.link) main.href = n.link; else main.type = "button";
    main.appendChild(el("span", "dot", ""));
    var content = el("span", "content");
    var state = el("span", "sr-only state", n.read ? "" : "Unread: ");
    content.appendChild(state);
    content.appendChild(el("span", "title", n.title));
    if (n.body) content.appendChild(el("span", "body", n.body));
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
    content.appendChild(meta);
    main.appendChild(content);
    main.addEventListener("click", function (event) { open(n, li, event); });
    li.appendChild(main);
    var actions = el("span", "actions");
    actions.appendChild(actionButton("act-unread", "Mark unread", n.title, function () {
      change("unread", n.id);
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
  }

  function markShownRead(ids) { setShownRead(ids, true); }

  function removeShown(id) {
    var li = items[id];
    if (!li) return;
    delete items[id];
    if (li.parentNode) li.parentNode.removeChild(li);
    refreshEmpty();
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
    emptyText.textContent = archived ? "Nothing archived." : "You're all caught up.";
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

  function refreshEmpty() {
    empty.hidden = list.children.length > 0;
  }

  var STATES = {connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…",
                offline: "Offline"};

  function setState(state) {
    statusBox.dataset.state = state;
    statusText.textContent = STATES[state] || state;
  }

  // --- actions ----------------------------------------------------------------------

  function markRead(ids, keepalive) {
    markShownRead(ids);
    if (!keepalive && client && client.markRead(ids)) return;
    api("/api/notifications/read", {method: "POST", body: {ids: ids}, keepalive: true});
  }

  function open(n, li, event) {
    if (li.classList.contains("unread")) {
      // The read frame updates the count; this only makes the click feel instant.
      // A link navigates away at once, so that request must survive the unload.
      markRead([n.id], !!n.link);
      if (!view.archived) setUnread(unread - 1);  // archived rows are not counted
    }
    if (!n.link) event.preventDefault();
  }

  /** Mark unread, archive or unarchive one item: on screen at once, then over the
   * socket (or HTTP when it is down); the server's push brings every tab in line. */
  function change(kind, id) {
    if (kind === "unread") setShownRead([id], false);
    else removeShown(id);
    var methods = {unread: "markUnread", archive: "archive", unarchive: "unarchive"};
    if (client && client[methods[kind]]([id])) return;
    api("/api/notifications/" + kind, {method: "POST", body: {ids: [id]}})
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (body) { if (body) setUnread(body.unread); })
      .catch(function () {});
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
  viewArchived.addEventListener("click", function () { showView(true, view.category); });

  readAll.addEventListener("click", function () {
    markShownRead(Object.keys(items));
    setUnread(0);
    if (!(client && client.markAllRead())) {
      api("/api/notifications/read", {method: "POST", body: {all: true}});
    }
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
      onWelcome: function (w) {
        welcomeSeq = w.last_seq;
        setUnread(w.unread);
        who.textContent = "Signed in as " + w.user;
      },
      onNotification: arrived,
      onChange: changed,
      onAuthError: function () { showSignedOut(); }
    });
  }

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

  function showSignedOut() {
    if (client) client.close();
    sessionStorage.removeItem("herald.token");
    list.textContent = "";
    empty.hidden = true;
    toolbar.hidden = true;
    filters.hidden = true;
    signedOut.hidden = false;
    setState("offline");
  }

  function start() {
    showDesktopButton();
    page(null).then(function (body) {
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
      if (err.message === "unauthorized") showSignedOut();
      else setState("offline");
    });
    setInterval(function () {
      Array.prototype.forEach.call(list.querySelectorAll("time"), function (t) {
        t.textContent = t.classList.contains("expires") ? expiresLabel(t.dateTime)
          : ago(t.dateTime);
      });
    }, 30000);
  }

  // --- dev: send a notification -----------------------------------------------------

  var form = document.getElementById("send-form");
  if (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var data = {};
      new FormData(form).forEach(function (value, key) { if (value) data[key] = value; });
      var result = document.getElementById("send-result");
      api("/dev/send", {method: "POST", body: data}).then(function (response) {
        return response.json().then(function (body) {
          result.textContent = response.ok
            ? "Sent (seq " + body.notifications[0].seq + ")"
            : body.error.message;
        });
      });
    });
  }

  // A host application may hand over a (fresh) token later by setting the fragment.
  window.addEventListener("hashchange", function () {
    if (/(?:^#|&)token=/.test(window.location.hash)) window.location.reload();
  });

  app.dataset.ready = "true";
  start();
})();
