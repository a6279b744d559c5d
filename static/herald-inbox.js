/*
 * <herald-inbox>: Herald's inbox as a custom element, for any page.
 *
 *   <script src="https://push.example.com/static/herald-inbox.js"></script>
 *   <herald-inbox mode="bell"></herald-inbox>
 *
 * The script finds Herald at the address it was loaded from (or the element's `server`
 * attribute), loads herald.js from there when the page has not, and renders in a shadow
 * root. The page's origin must be listed in HERALD_ALLOWED_ORIGINS (the socket and the
 * HTTP calls check it).
 *
 * Attributes:
 *   mode      "inline" (default: the list in the page) or "bell" (a button with the
 *             unread count that opens the list as a panel)
 *   token     a user JWT (HS256, or the identity provider's); or set the `token`
 *             property, which may be a function returning a token or a promise of one.
 *             Without one, the `herald_token` cookie (shared domain) is used.
 *   server    Herald's base URL, when not the script's own
 *   lang      "en" or "fr" (else the closest ancestor's lang, else English); the
 *             `strings` property overrides any text: el.strings = {heading: "Alerts"}
 *   theme     "auto" (default: follows the system), "light" or "dark"
 *   heading-level  the heading's level (default 2)
 *
 * Properties and methods: token, strings, renderItem (a hook: function (notification,
 * defaultContent) returning the Node to show in place of the default content, or null),
 * unread, state, open(), close(), toggle(), retryNow(), refresh(), signOut().
 *
 * Events (bubbling, composed): herald-notification {notification, muted} for each live
 * arrival; herald-click {notification} when an item is activated (cancelable: the host
 * then handles the link itself); herald-unread {unread}; herald-state {state};
 * herald-welcome {user, node, …the welcome frame}; herald-auth-error {reason} when the
 * token is refused (set a fresh `token`, and the inbox resumes in place).
 *
 * Behaviour (as Herald's own page, which is built on this element): the newest page of
 * history over HTTP, then the socket from that page's last_seq (nothing falls between);
 * older pages as the user scrolls; inbox, archive, one category, unread only; read,
 * unread, archive and move back, from any tab or node in sync; items go when they
 * expire; changes wait in herald.js's outbox until the server confirms them ("1 change
 * waiting", never "Live" with an unconfirmed change); a truthful connection line with
 * "Retry now"; muted categories (the settings panel) stay listed but neither count nor
 * alert; unread rows sharing a group_key show as one item ("3 new") and reading it
 * reads the group. Notification text only ever goes through textContent; a link is
 * followed only if it is http(s), and a path only if it stays on the page's site.
 */
(function (global) {
  "use strict";

  var PAGE = 30;
  var DAY_MS = 86400000;
  var SCRIPT_SRC = document.currentScript ? document.currentScript.src : "";

  var STRINGS = {
    en: {
      heading: "Inbox", bell: "Notifications", bellUnread: "Notifications, {n} unread",
      badge: "{n} unread notifications", connecting: "Connecting…", live: "Live",
      reconnecting: "Reconnecting…", reconnectingIn: "Reconnecting in {s} s",
      offline: "Offline", "signed-out": "Signed out", saving: "Saving…",
      retry: "Retry now", pendingOne: "1 change waiting", pendingMany: "{n} changes waiting",
      markAllRead: "Mark all read", desktopOn: "Desktop alerts: on",
      desktopOff: "Desktop alerts: off", settings: "Settings", viewLabel: "View",
      viewInbox: "Inbox", viewArchived: "Archived", unreadOnly: "Unread only",
      categoryLabel: "Category", all: "All", notifications: "Notifications",
      emptyInbox: "You're all caught up.", emptyArchived: "Nothing archived.",
      emptyUnread: "No unread notifications.",
      emptyHint: "New notifications appear here the moment they are sent.",
      end: "That's everything.", markRead: "Mark read", markUnread: "Mark unread",
      archive: "Archive", unarchive: "Move to inbox", actionOn: "{action}: {title}",
      unreadPrefix: "Unread: ",
      newNotification: "New notification: {title}", opens: "Opens {host}",
      expiresSoon: "Expires in less than a minute", expires: "Expires {when}",
      justNow: "just now", today: "Today", yesterday: "Yesterday", earlier: "Earlier",
      groupNew: "{n} new", muted: "Muted", mutedCategories: "Muted categories",
      settingsHint: "A muted category stays in your inbox but neither counts as unread " +
        "nor alerts you.", noCategories: "No categories yet.", mute: "Mute {category}",
      tooManyMuted: "{category} was not muted: at most 100 categories can be muted.",
      muteRefused: "{category} could not be changed: {message}"
    },
    fr: {
      heading: "Boîte de réception", bell: "Notifications",
      bellUnread: "Notifications, {n} non lues", badge: "{n} notifications non lues",
      connecting: "Connexion…", live: "En direct", reconnecting: "Reconnexion…",
      reconnectingIn: "Reconnexion dans {s} s", offline: "Hors ligne",
      "signed-out": "Déconnecté", saving: "Enregistrement…", retry: "Réessayer",
      pendingOne: "1 modification en attente", pendingMany: "{n} modifications en attente",
      markAllRead: "Tout marquer comme lu", desktopOn: "Alertes du bureau : activées",
      desktopOff: "Alertes du bureau : désactivées", settings: "Réglages",
      viewLabel: "Vue", viewInbox: "Réception", viewArchived: "Archivées",
      unreadOnly: "Non lues seulement", categoryLabel: "Catégorie", all: "Toutes",
      notifications: "Notifications", emptyInbox: "Vous êtes à jour.",
      emptyArchived: "Rien d'archivé.", emptyUnread: "Aucune notification non lue.",
      emptyHint: "Les nouvelles notifications apparaissent ici dès leur envoi.",
      end: "C'est tout.", markRead: "Marquer comme lu", markUnread: "Marquer non lu",
      archive: "Archiver", unarchive: "Remettre dans la réception",
      actionOn: "{action} : {title}",
      unreadPrefix: "Non lu : ", newNotification: "Nouvelle notification : {title}",
      opens: "Ouvre {host}", expiresSoon: "Expire dans moins d'une minute",
      expires: "Expire {when}", justNow: "à l'instant", today: "Aujourd'hui",
      yesterday: "Hier", earlier: "Plus tôt", groupNew: "{n} nouvelles", muted: "Muet",
      mutedCategories: "Catégories en sourdine",
      settingsHint: "Une catégorie en sourdine reste dans la réception mais ne compte " +
        "pas comme non lue et ne vous alerte pas.",
      noCategories: "Aucune catégorie pour l'instant.", mute: "Mettre {category} en sourdine",
      tooManyMuted: "{category} n'a pas été mise en sourdine : 100 catégories au plus " +
        "peuvent l'être.",
      muteRefused: "{category} n'a pas pu être modifiée : {message}"
    }
  };

  // The shadow root's markup: constant (every text is filled in through textContent).
  var BELL_ICON = '<svg aria-hidden="true" viewBox="0 0 24 24" fill="none" ' +
    'stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round">' +
    '<path d="M18 8a6 6 0 1 0-12 0c0 7-3 9-3 9h18s-3-2-3-9"/>' +
    '<path d="M13.7 21a2 2 0 0 1-3.4 0"/></svg>';
  var TEMPLATE =
    '<button type="button" class="bell" id="bell" part="bell" aria-expanded="false" ' +
    'aria-controls="panel" hidden>' + BELL_ICON +
    '<span class="badge" id="bell-badge" part="badge" aria-hidden="true" hidden>0</span>' +
    '</button>' +
    '<div class="panel" id="panel" part="panel">' +
    '<div class="bar" part="header"><div class="heading">' +
    '<span id="heading" role="heading" part="heading" data-text="heading"></span>' +
    '<span id="badge" class="badge" part="badge" role="img" hidden>0</span></div>' +
    '<div class="status" id="status" data-state="connecting" part="status">' +
    '<span class="led" aria-hidden="true"></span>' +
    '<span id="status-text" role="status"></span>' +
    '<span id="pending" class="pending" hidden></span>' +
    '<button type="button" id="retry" class="ghost small" data-text="retry" hidden>' +
    '</button></div></div>' +
    '<div class="toolbar" id="toolbar" part="toolbar" hidden>' +
    '<slot name="toolbar"></slot><span class="spacer"></span>' +
    '<button type="button" id="desktop" class="ghost" hidden></button>' +
    '<button type="button" id="settings-toggle" class="ghost" aria-expanded="false" ' +
    'aria-controls="settings" data-text="settings"></button>' +
    '<button type="button" id="read-all" class="ghost" data-text="markAllRead"></button>' +
    '</div>' +
    '<div class="settings" id="settings" part="settings" hidden>' +
    '<span class="settings-title" role="heading" id="settings-title" ' +
    'data-text="mutedCategories"></span><p data-text="settingsHint"></p>' +
    '<div class="mutes" id="mutes" role="group" aria-labelledby="settings-title"></div>' +
    '<p id="no-categories" data-text="noCategories"></p>' +
    '<p id="settings-error" class="settings-error" role="alert" hidden></p></div>' +
    '<div class="filters" id="filters" part="filters" hidden>' +
    '<div class="tabs" role="group" data-label="viewLabel">' +
    '<button type="button" class="tab" id="view-inbox" aria-pressed="true" ' +
    'data-text="viewInbox"></button>' +
    '<button type="button" class="tab" id="view-archived" aria-pressed="false" ' +
    'data-text="viewArchived"></button>' +
    '<button type="button" class="tab" id="unread-only" aria-pressed="false" ' +
    'data-text="unreadOnly"></button></div>' +
    '<div class="chips" id="chips" role="group" data-label="categoryLabel" hidden>' +
    '<button type="button" class="chip" data-category="" aria-pressed="true" ' +
    'data-text="all"></button></div></div>' +
    '<p id="live" class="sr-only" aria-live="polite" aria-atomic="true"></p>' +
    '<section id="section" data-label="notifications">' +
    '<ul id="list" class="list" part="list" data-label="notifications"></ul>' +
    '<div id="empty" class="empty" part="empty" hidden>' +
    '<div class="empty-icon" aria-hidden="true">✓</div>' +
    '<p><strong id="empty-text"></strong></p>' +
    '<p class="muted-text" data-text="emptyHint"></p></div>' +
    '<p id="end" class="end" data-text="end" hidden></p>' +
    '<div id="more" class="more" aria-hidden="true"></div></section></div>';

  /** Herald's base URL from a script address: everything before "/static/". */
  function baseOf(src) {
    if (!src) return global.location.origin;
    var url = new URL(src, global.location.href);
    var at = url.pathname.lastIndexOf("/static/");
    return url.origin + (at > 0 ? url.pathname.slice(0, at) : "");
  }

  var clientLoaded = null;

  /** HeraldClient: the page's, or herald.js loaded once from Herald. */
  function loadClient(base) {
    if (global.HeraldClient) return Promise.resolve(global.HeraldClient);
    if (!clientLoaded) {
      clientLoaded = new Promise(function (resolve, reject) {
        var script = document.createElement("script");
        script.src = base + "/static/herald.js";
        script.onload = function () { resolve(global.HeraldClient); };
        script.onerror = function () {
          clientLoaded = null;
          reject(new Error("herald-inbox: could not load " + script.src));
        };
        document.head.appendChild(script);
      });
    }
    return clientLoaded;
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  /**
   * One element's inbox: its state, its rendering and its client. ``host`` is the
   * <herald-inbox>, ``root`` its shadow root (already holding TEMPLATE).
   */
  function createInbox(host, root) {
    function $(id) { return root.getElementById(id); }
    var panel = $("panel"), bell = $("bell"), bellBadge = $("bell-badge");
    var list = $("list"), badge = $("badge"), statusBox = $("status");
    var statusText = $("status-text"), retry = $("retry"), pendingText = $("pending");
    var live = $("live"), empty = $("empty"), end = $("end"), toolbar = $("toolbar");
    var more = $("more"), readAll = $("read-all"), desktop = $("desktop");
    var filters = $("filters"), chips = $("chips"), viewInbox = $("view-inbox");
    var viewArchived = $("view-archived"), emptyText = $("empty-text");
    var unreadOnly = $("unread-only"), settings = $("settings");
    var settingsToggle = $("settings-toggle"), mutes = $("mutes");
    var noCategories = $("no-categories"), settingsError = $("settings-error");

    var base = (host.getAttribute("server") || baseOf(SCRIPT_SRC)).replace(/\/+$/, "");
    var sameOrigin = new URL(base).origin === global.location.origin;
    var unread = 0;
    var welcomeSeq = 0;       // notifications up to here are counted in welcome.unread
    var oldestSeq = null;     // for paging back
    var exhausted = false;
    var loadingMore = false;
    var items = {};           // id -> its <li> (a collapsed group's <li> under each id)
    var groups = {};          // group_key -> the <li> of its unread group in this view
    var seqOf = {};           // id -> seq, for read-all's bound
    var client = null;
    var view = {archived: false, category: null};
    var generation = 0;       // bumped on every view change: late pages are dropped
    var counted = 0;          // bumped on every change of the badge
    var prefsChanged = 0;     // bumped on every mute or unmute: a page read before is stale
    var recent = {};          // id -> notification that arrived live (the last ones)
    var known = {};           // category -> its chip
    var muted = {};           // category -> true, the user's muted categories
    var started = false;
    var stopped = false;
    var signedInAs = null;    // the user of the first welcome
    var observer = null;
    var timers = [];

    // --- strings ------------------------------------------------------------------

    function lang() {
      var holder = host.closest("[lang]");
      var code = (host.getAttribute("lang") || (holder && holder.getAttribute("lang")) ||
                  document.documentElement.lang || "en").toLowerCase();
      return STRINGS[code] ? code : STRINGS[code.split("-")[0]] ? code.split("-")[0] : "en";
    }

    /** The text for ``key`` in the element's language, ``{name}`` filled from vars. */
    function t(key, vars) {
      var own = host._strings || {};
      var text = own[key] !== undefined ? own[key]
        : STRINGS[lang()][key] !== undefined ? STRINGS[lang()][key] : STRINGS.en[key];
      return String(text).replace(/\{(\w+)\}/g, function (_, name) {
        return vars && vars[name] !== undefined ? vars[name] : "";
      });
    }

    /** Fill every constant text and label (again when the language or strings change). */
    function applyStrings() {
      Array.prototype.forEach.call(root.querySelectorAll("[data-text]"), function (node) {
        node.textContent = t(node.dataset.text);
      });
      Array.prototype.forEach.call(root.querySelectorAll("[data-label]"), function (node) {
        node.setAttribute("aria-label", t(node.dataset.label));
      });
      $("heading").setAttribute("aria-level", host.getAttribute("heading-level") || "2");
      $("settings-title").setAttribute("aria-level",
                                       String(+(host.getAttribute("heading-level") || 2) + 1));
      emptyText.textContent = emptyMessage();
      showUnread();
      showState(statusBox.dataset.state);
      showPending();
      showDesktopButton();
      relabelItems();
    }

    // --- HTTP -----------------------------------------------------------------------

    function currentToken() {
      var token = host._token;
      return Promise.resolve(typeof token === "function" ? token() : token);
    }

    function api(path, options) {
      options = options || {};
      return currentToken().then(function (token) {
        var headers = {"Content-Type": "application/json"};
        if (token) headers.Authorization = "Bearer " + token;
        return fetch(base + path, {
          method: options.method || "GET",
          headers: headers,
          body: options.body ? JSON.stringify(options.body) : undefined,
          // The cookie only when it is the credential: another origin then needs
          // HERALD_ALLOWED_ORIGINS (Herald answers CORS for those).
          credentials: token ? "omit" : sameOrigin ? "same-origin" : "include",
          keepalive: !!options.keepalive
        });
      });
    }

    // --- rendering --------------------------------------------------------------------

    function relative() {
      return global.Intl && Intl.RelativeTimeFormat
        ? new Intl.RelativeTimeFormat(lang(), {numeric: "auto"}) : null;
    }

    function ago(iso) {
      var seconds = (new Date(iso).getTime() - Date.now()) / 1000;
      var format = relative();
      if (!format) return new Date(iso).toLocaleString();
      if (Math.abs(seconds) < 45) return t("justNow");
      var units = [["year", 31536000], ["month", 2592000], ["day", 86400], ["hour", 3600],
                   ["minute", 60]];
      for (var i = 0; i < units.length; i++) {
        if (Math.abs(seconds) >= units[i][1] || units[i][0] === "minute") {
          return format.format(Math.round(seconds / units[i][1]), units[i][0]);
        }
      }
      return t("justNow");
    }

    function expiresLabel(iso) {
      var left = (new Date(iso).getTime() - Date.now()) / 1000;
      return left < 60 ? t("expiresSoon") : t("expires", {when: ago(iso)});
    }

    /** The address a click may go to, or null: http(s) only, and a path (or anything
     * else relative) only if it resolves to the page's own site; "/\host" and "//host"
     * are other sites dressed as paths. */
    function safeLink(link) {
      if (!link || /[\s\\]/.test(link)) return null;
      var url;
      try { url = new URL(link, global.location.href); } catch (e) { return null; }
      if (url.protocol !== "http:" && url.protocol !== "https:") return null;
      if (!/^https?:\/\//i.test(link) && url.origin !== global.location.origin) return null;
      return url.href;
    }

    function isMuted(category) { return !!category && muted[category] === true; }

    /** An item's unread ids (a collapsed group has several). */
    function unreadIds(li) { return li._unread.slice(); }

    function actionButton(className, key, li, handler) {
      var button = el("button", "act " + className);
      button.type = "button";
      button.dataset.key = key;
      button.addEventListener("click", function () { handler(li); });
      return button;
    }

    /** The item's texts that depend on the language or its state. */
    function relabel(li) {
      var n = li._n;
      var unreadNow = li._unread.length > 0;
      Array.prototype.forEach.call(li.querySelectorAll(".act"), function (button) {
        button.textContent = t(button.dataset.key);
        button.setAttribute("aria-label", t("actionOn", {action: t(button.dataset.key),
                                                         title: n.title}));
      });
      var state = li.querySelector(".state");
      if (state) state.textContent = unreadNow ? t("unreadPrefix") : "";
      var count = li.querySelector(".count");
      if (count) {
        count.hidden = li._unread.length < 2;
        count.textContent = t("groupNew", {n: li._unread.length});
      }
      var tag = li.querySelector(".muted-tag");
      if (tag) {
        tag.hidden = !isMuted(n.category);
        tag.textContent = t("muted");
      }
      var hint = li.querySelector(".link-hint");
      if (hint) hint.textContent = t("opens", {host: hint.dataset.host});
      var expires = li.querySelector(".expires");
      if (expires) expires.textContent = expiresLabel(expires.dateTime);
      var time = li.querySelector(".time");
      if (time) time.textContent = ago(time.dateTime);
      // "Mark read" and "Mark unread" swap places with the item's state, whoever changed
      // it (a click, another tab, or the late echo of an earlier click), and focus goes
      // with them instead of falling to the page.
      var focused = li.contains(root.activeElement) ? root.activeElement : null;
      li.classList.toggle("unread", unreadNow);
      if (focused && focused.classList.contains(unreadNow ? "act-unread" : "act-read")) {
        li.querySelector(unreadNow ? ".act-read" : ".act-unread").focus();
      }
      li.classList.toggle("muted", isMuted(n.category));
      li.setAttribute("part", unreadNow ? "item item-unread" : "item");
    }

    function relabelItems() {
      Array.prototype.forEach.call(list.children, relabel);
    }

    /** The default content of an item: title, body, time, category, expiry, link. */
    function defaultContent(n, href) {
      var content = el("span", "content");
      content.appendChild(el("span", "sr-only state"));
      var title = el("span", "title", n.title);
      title.dir = "auto";  // right-to-left titles read right to left
      title.setAttribute("part", "title");
      content.appendChild(title);
      if (n.body) {
        var body = el("span", "body", n.body);
        body.dir = "auto";
        body.setAttribute("part", "body");
        content.appendChild(body);
      }
      var meta = el("span", "meta");
      meta.setAttribute("part", "meta");
      meta.appendChild(el("span", "count"));
      var time = el("time", "time");
      time.dateTime = n.created_at;
      time.title = new Date(n.created_at).toLocaleString(lang());
      meta.appendChild(time);
      if (n.category) meta.appendChild(el("span", "category", n.category));
      meta.appendChild(el("span", "muted-tag"));
      if (n.expires_at) {
        var expires = el("time", "expires");
        expires.dateTime = n.expires_at;
        meta.appendChild(expires);
      }
      if (href && new URL(href).origin !== global.location.origin) {
        // Where a click leads, when it leaves the page's site.
        var hint = el("span", "link-hint");
        hint.dataset.host = new URL(href).host;
        meta.appendChild(hint);
      }
      content.appendChild(meta);
      return content;
    }

    /** (Re)build ``li``'s content from notification ``n`` (a group shows its newest). */
    function fill(li, n) {
      li._n = n;
      li.textContent = "";
      li.dataset.id = n.id;
      li.dataset.seq = n.seq;
      li.dataset.category = n.category || "";
      li.dataset.created = n.created_at;
      if (n.group_key) li.dataset.group = n.group_key;
      var href = safeLink(n.link);
      var main = href ? el("a", "item-main") : el("button", "item-main");
      if (href) main.href = href; else main.type = "button";
      main.appendChild(el("span", "dot"));
      var content = defaultContent(n, href);
      if (typeof host.renderItem === "function") {
        var custom = host.renderItem(n, content);
        if (custom && custom.nodeType) {
          // The host's markup; the state line stays for screen readers.
          var wrapper = el("span", "content");
          wrapper.appendChild(el("span", "sr-only state"));
          wrapper.appendChild(custom);
          content = wrapper;
        }
      }
      main.appendChild(content);
      main.addEventListener("click", function (event) { activate(li, href, event); });
      li.appendChild(main);
      var actions = el("span", "actions");
      actions.setAttribute("part", "actions");
      // Read without following the link (relabel swaps the two, and focus with them).
      actions.appendChild(actionButton("act-read", "markRead", li, function () {
        readItem(li);
      }));
      actions.appendChild(actionButton("act-unread", "markUnread", li, function () {
        change("unread", li);
      }));
      actions.appendChild(n.archived
        ? actionButton("act-unarchive", "unarchive", li, function () { change("unarchive", li); })
        : actionButton("act-archive", "archive", li, function () { change("archive", li); }));
      li.appendChild(actions);
      relabel(li);
    }

    function render(n) {
      var li = el("li", "item");
      li._ids = [n.id];
      li._unread = n.read ? [] : [n.id];
      fill(li, n);
      if (collapsible(n)) groups[n.group_key] = li;
      return li;
    }

    /** Unread inbox rows with a group_key collapse into one item per group. */
    function collapsible(n) { return !!n.group_key && !n.read && !n.archived; }

    /** Place ``n`` in the list: into its group's item if it has one (true), else not. */
    function joinGroup(n, newest) {
      var li = collapsible(n) ? groups[n.group_key] : null;
      if (!li || !li.parentNode || !li._unread.length) return false;
      li._ids.push(n.id);
      li._unread.push(n.id);
      items[n.id] = li;
      seqOf[n.id] = n.seq;
      watchExpiry(n);
      if (newest) {
        fill(li, n);  // the group shows its newest member, at the top
        list.insertBefore(li, list.firstChild);
      } else {
        relabel(li);
      }
      return true;
    }

    function add(n, atTop) {
      if (items[n.id]) return null;
      seqOf[n.id] = n.seq;
      noteCategory(n.category);
      if (joinGroup(n, atTop)) return items[n.id];
      var li = render(n);
      items[n.id] = li;
      watchExpiry(n);
      if (atTop) list.insertBefore(li, list.firstChild); else list.appendChild(li);
      return li;
    }

    function setShownRead(ids, read) {
      ids.forEach(function (id) {
        var li = items[id];
        if (!li) return;
        id = Number(id);
        var at = li._unread.indexOf(id);
        if (read && at >= 0) li._unread.splice(at, 1);
        if (!read && at < 0 && li._ids.indexOf(id) >= 0) li._unread.push(id);
        if (!li._unread.length && li._n.group_key && groups[li._n.group_key] === li) {
          delete groups[li._n.group_key];  // read: the next arrival starts a new group
        }
        relabel(li);
      });
      refreshEmpty();
    }

    /** Take ``id`` off the list (a group's item goes with its last member). */
    function removeShown(id) {
      var li = items[id];
      if (!li) return;
      id = Number(id);
      delete items[id];
      li._ids = li._ids.filter(function (other) { return other !== id; });
      li._unread = li._unread.filter(function (other) { return other !== id; });
      if (li._ids.length) { relabel(li); return; }
      if (li.contains(root.activeElement)) {
        // Keep keyboard users in the list: the next item, else the previous one, else
        // the view's tab.
        var near = li.nextElementSibling || li.previousElementSibling;
        (near ? near.querySelector(".item-main")
          : (view.archived ? viewArchived : viewInbox)).focus();
      }
      if (li._n.group_key && groups[li._n.group_key] === li) delete groups[li._n.group_key];
      if (li.parentNode) li.parentNode.removeChild(li);
      forgetCategory(li.dataset.category);
      refreshEmpty();
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
      showMutes();
    }

    // --- views: inbox or archive, one category or all -----------------------------------

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
      showMutes();
    }

    /** Show the list of ``archived`` or not, of one ``category`` or all (null). */
    function showView(archived, category) {
      markView(archived, category);
      reload();
    }

    /** The buttons and the empty text for a view; the list itself is not touched. */
    function markView(archived, category) {
      view = {archived: archived, category: category};
      viewInbox.setAttribute("aria-pressed", archived ? "false" : "true");
      viewArchived.setAttribute("aria-pressed", archived ? "true" : "false");
      Array.prototype.forEach.call(chips.querySelectorAll(".chip"), function (chip) {
        var mine = (chip.dataset.category || null) === category;
        chip.setAttribute("aria-pressed", mine ? "true" : "false");
      });
      emptyText.textContent = emptyMessage();
    }

    function clearList() {
      list.textContent = "";
      items = {};
      groups = {};
      seqOf = {};
      oldestSeq = null;
      exhausted = false;
    }

    function reload() {
      var mine = ++generation;
      var countedBefore = counted;
      var prefsBefore = prefsChanged;
      return page(null).then(function (body) {
        if (mine !== generation) return;
        clearList();
        // A mute or unmute since this page was read (here or pushed) knows better.
        if (prefsBefore === prefsChanged) setMuted(body.muted);
        append(body.notifications);
        // Rows that arrived on the socket after this page was read are not in it.
        Object.keys(recent).map(function (id) { return recent[id]; })
          .filter(function (n) { return n.seq > body.last_seq && matches(n) && !items[n.id]; })
          .sort(function (a, b) { return a.seq - b.seq; })
          .forEach(function (n) { add(n, true); });
        refreshEmpty();
        // A push that came meanwhile knows better than this page.
        if (countedBefore === counted) setUnread(body.unread);
      }).catch(function () {});
    }

    // --- expiry: an item goes when its time is up ---------------------------------------

    var recount = null;

    function watchExpiry(n) {
      if (!n.expires_at) return;
      var left = Date.parse(n.expires_at) - Date.now();
      if (left > 2147483647) return;  // beyond what setTimeout takes (~24 days)
      timers.push(setTimeout(function () { expire(n.id); }, Math.max(0, left) + 50));
    }

    function expire(id) {
      var li = items[id];
      if (!li) return;
      if (li._unread.indexOf(Number(id)) >= 0 && !view.archived &&
          !isMuted(li.dataset.category)) setUnread(unread - 1);
      removeShown(id);
      // Rows this element does not show may have expired too: ask for the true count.
      clearTimeout(recount);
      recount = setTimeout(function () {
        api("/api/notifications?limit=1").then(function (response) {
          return response.ok ? response.json() : null;
        }).then(function (body) { if (body) setUnread(body.unread); }).catch(function () {});
      }, 1000);
    }

    function setUnread(count) {
      counted += 1;
      var before = unread;
      unread = Math.max(0, count);
      showUnread();
      if (unread !== before || counted === 1) emit("herald-unread", {unread: unread});
    }

    function showUnread() {
      var label = t("badge", {n: unread});
      badge.textContent = unread > 99 ? "99+" : String(unread);
      badge.hidden = unread === 0;
      badge.setAttribute("aria-label", label);
      bellBadge.textContent = badge.textContent;
      bellBadge.hidden = unread === 0;
      bell.setAttribute("aria-label", unread ? t("bellUnread", {n: unread}) : t("bell"));
    }

    /** Whether "Unread only" is on. */
    function onlyUnread() { return unreadOnly.getAttribute("aria-pressed") === "true"; }

    function emptyMessage() {
      return onlyUnread() ? t("emptyUnread") : view.archived ? t("emptyArchived") : t("emptyInbox");
    }

    function refreshEmpty() {
      var shown = onlyUnread()
        ? list.querySelectorAll(".item.unread").length : list.children.length;
      empty.hidden = shown > 0 || !started;
      end.hidden = !(exhausted && shown > 0);
      markDays();
    }

    // --- date groups: "Today", "Yesterday", "Earlier" -----------------------------------

    function dayLabel(iso) {
      var now = new Date();
      var midnight = new Date(now.getFullYear(), now.getMonth(), now.getDate()).getTime();
      var then = Date.parse(iso);
      return then >= midnight ? t("today") : then >= midnight - DAY_MS ? t("yesterday")
        : t("earlier");
    }

    /** A heading on the first shown item of each day group (the list is newest first);
     * run after every change of the list, and as the clock passes midnight. */
    function markDays() {
      var only = onlyUnread();
      var previous = null;
      var level = String(+(host.getAttribute("heading-level") || 2) + 1);
      Array.prototype.forEach.call(list.children, function (li) {
        var heading = li.querySelector(".day");
        var shown = !only || li.classList.contains("unread");
        var label = shown ? dayLabel(li.dataset.created) : null;
        if (label !== null && label !== previous) {
          if (!heading) {
            heading = el("span", "day");
            heading.setAttribute("role", "heading");
            li.insertBefore(heading, li.firstChild);
          }
          heading.setAttribute("aria-level", level);
          heading.textContent = label;
        } else if (heading) {
          li.removeChild(heading);
        }
        if (label !== null) previous = label;
      });
    }

    // --- the connection's state, shown as one truthful line ------------------------------

    var retryAt = null;
    var countdown = null;

    function setState(state, detail) {
      statusBox.dataset.state = state;
      retryAt = state === "reconnecting" && detail && detail.retryAt ? detail.retryAt : null;
      retry.hidden = !(state === "reconnecting" || state === "offline") || !client;
      clearInterval(countdown);
      showState(state);
      if (retryAt) countdown = setInterval(function () { showState(state); }, 500);
      if (host.getAttribute("state") !== state) {
        host.setAttribute("state", state);
        emit("herald-state", {state: state});
      }
    }

    function showState(state) {
      var text = t(state) || state;
      if (state === "live" && pendingCount > 0) text = t("saving");
      if (retryAt) {
        var seconds = Math.ceil((retryAt - Date.now()) / 1000);
        text = seconds > 0 ? t("reconnectingIn", {s: seconds}) : t("reconnecting");
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
      pendingText.textContent = pendingCount === 1 ? t("pendingOne")
        : t("pendingMany", {n: pendingCount});
    }

    // --- actions ------------------------------------------------------------------------

    /** How many of ``ids`` the badge counts (not archived, not muted). */
    function counting(li, ids) {
      return view.archived || isMuted(li.dataset.category) ? 0 : ids.length;
    }

    /** Mark an item read (a group: the whole group): on screen at once, then queued until
     * the server confirms it. False when it was read already. */
    function readItem(li) {
      var ids = unreadIds(li);
      if (!ids.length) return false;
      // An unread group's item reads the whole group, members not loaded yet included.
      var group = li._n.group_key && groups[li._n.group_key] === li ? li._n.group_key : null;
      setUnread(unread - counting(li, ids));
      setShownRead(ids, true);
      if (client) {
        if (group) {
          client.readGroup(group);
        } else {
          client.markRead(ids);
        }
      }
      return true;
    }

    function activate(li, href, event) {
      var n = li._n;
      var clicked = emit("herald-click", {notification: n}, true);
      var readBody = n.group_key && groups[n.group_key] === li ? {group_key: n.group_key}
        : {ids: li._ids.slice()};
      if (readItem(li)) {
        // Queued until the server confirms it, whatever the socket's state: a click that
        // opens the link in another tab (Ctrl, Shift, middle button) leaves this page here.
        var leaving = href && clicked && !(event.ctrlKey || event.metaKey ||
                                           event.shiftKey || event.button === 1);
        if (leaving) {
          // The page is about to go away with the socket, before the change's "done" can
          // come back: a keepalive request carries it out too (changes are idempotent).
          api("/api/notifications/read", {method: "POST", body: readBody, keepalive: true})
            .catch(function () {});
        }
      }
      if (!href || !clicked) event.preventDefault();
    }

    /** Mark unread, archive or unarchive an item (a group: all of it): on screen at once,
     * then over the socket (kept in the outbox while it is down). */
    function change(kind, li) {
      var ids = li._ids.slice();
      var wasUnread = unreadIds(li);
      // The badge counts unread rows that are neither archived nor muted.
      if (kind === "unread") setUnread(unread + counting(li, ids) - counting(li, wasUnread));
      if (kind === "archive") setUnread(unread - counting(li, wasUnread));
      if (kind === "unarchive" && !isMuted(li.dataset.category)) {
        setUnread(unread + wasUnread.length);
      }
      if (kind === "unread") setShownRead(ids, false);
      else ids.forEach(removeShown);
      var methods = {unread: "markUnread", archive: "archive", unarchive: "unarchive"};
      if (client) client[methods[kind]](ids);
    }

    function changed(c) {
      var ids = c.ids;
      if (c.all) {
        ids = Object.keys(items).filter(function (id) { return seqOf[id] <= c.seq; });
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
    unreadOnly.addEventListener("click", function () { setUnreadOnly(!onlyUnread()); });

    function setUnreadOnly(on) {
      unreadOnly.setAttribute("aria-pressed", on ? "true" : "false");
      list.classList.toggle("unread-only", on);
      emptyText.textContent = emptyMessage();
      refreshEmpty();
    }

    readAll.addEventListener("click", function () {
      if (!view.category) {
        Object.keys(items).forEach(function (id) { setShownRead([id], true); });
        setUnread(0);
        if (client) client.markAllRead();
        return;
      }
      // One category shown: read its rows, not every category's. What is on screen at
      // once; then its unread rows not loaded yet, found page by page.
      var ids = [];
      Array.prototype.forEach.call(list.children, function (li) {
        ids = ids.concat(unreadIds(li));
      });
      if (ids.length) {
        if (!view.archived && !isMuted(view.category)) setUnread(unread - ids.length);
        setShownRead(ids, true);
        if (client) client.markRead(ids);  // herald.js splits it into frames of 1,000
      }
      var sent = {};
      ids.forEach(function (id) { sent[id] = true; });
      unreadOf(view.category, view.archived, null, 0).then(function (all) {
        var rest = all.filter(function (id) { return !sent[id]; });
        if (rest.length && client) client.markRead(rest);
      }).catch(function () {});
    });

    var READ_PAGE = 200;  // the history's largest page
    var READ_PAGES = 50;  // 10,000 rows: the unread count's own ceiling

    /** The ids of the unread rows of ``category`` (in the archive or not), newest first,
     * from ``beforeSeq`` on. */
    function unreadOf(category, archived, beforeSeq, pages) {
      var query = "?unread=true&limit=" + READ_PAGE + "&category=" +
        encodeURIComponent(category) + (archived ? "&archived=true" : "") +
        (beforeSeq ? "&before_seq=" + beforeSeq : "");
      return api("/api/notifications" + query).then(function (response) {
        if (!response.ok) throw new Error("history: HTTP " + response.status);
        return response.json();
      }).then(function (body) {
        var rows = body.notifications;
        var ids = rows.map(function (n) { return n.id; });
        if (rows.length < READ_PAGE || pages + 1 >= READ_PAGES) return ids;
        return unreadOf(category, archived, rows[rows.length - 1].seq, pages + 1)
          .then(function (more) { return ids.concat(more); });
      });
    }

    // --- preferences: muted categories --------------------------------------------------

    function setMuted(list) {
      if (!Array.isArray(list)) return;
      muted = {};
      list.forEach(function (category) { muted[category] = true; });
      list.forEach(noteCategory);
      showMutes();
      relabelItems();
    }

    /** The settings panel: one toggle per category seen or muted. */
    function showMutes() {
      var categories = Object.keys(known).concat(Object.keys(muted).filter(function (c) {
        return !known[c];
      })).sort();
      // Buttons are kept, not rebuilt: the one a keyboard user just toggled keeps focus.
      var buttons = {};
      // A copy: removing from the live collection while walking it would skip every other.
      Array.prototype.slice.call(mutes.children).forEach(function (button) {
        if (categories.indexOf(button.dataset.category) < 0) mutes.removeChild(button);
        else buttons[button.dataset.category] = button;
      });
      categories.forEach(function (category, at) {
        var button = buttons[category];
        if (!button) {
          button = el("button", "mute", category);
          button.type = "button";
          button.dataset.category = category;
          button.addEventListener("click", function () { toggleMute(category); });
        }
        if (mutes.children[at] !== button) mutes.insertBefore(button, mutes.children[at] || null);
        button.setAttribute("aria-pressed", isMuted(category) ? "true" : "false");
        button.setAttribute("aria-label", t("mute", {category: category}));
      });
      noCategories.hidden = categories.length > 0;
    }

    /** The server dropped a change for good (herald.js's onRefused): take back what the
     * screen showed at once. A mute beyond the limit goes back to unmuted, with a word
     * why; any other change: the list is read again (another user's changes: the new
     * user's welcome starts the inbox over anyway). */
    function refused(change, error) {
      if (error.code === "other_user") return;
      if (change.type === "mute" || change.type === "unmute") {
        prefsChanged += 1;
        if (change.type === "mute") delete muted[change.category];
        else muted[change.category] = true;
        showMutes();
        relabelItems();
        settingsError.textContent = error.code === "too_many_muted"
          ? t("tooManyMuted", {category: change.category})
          : t("muteRefused", {category: change.category, message: error.message});
        settingsError.hidden = false;
        return;
      }
      reload();
    }

    function toggleMute(category) {
      prefsChanged += 1;
      settingsError.hidden = true;
      var on = !isMuted(category);
      if (on) muted[category] = true; else delete muted[category];
      showMutes();
      relabelItems();
      if (client && client.mute) {
        if (on) client.mute(category); else client.unmute(category);
      }
    }

    settingsToggle.addEventListener("click", function () {
      var open = settings.hidden;
      settings.hidden = !open;
      settingsToggle.setAttribute("aria-expanded", open ? "true" : "false");
    });

    // --- desktop alerts: opt-in, only while the tab is hidden ---------------------------

    var wantDesktop = false;
    try { wantDesktop = localStorage.getItem("herald.desktop") === "on"; } catch (err) {}

    function showDesktopButton() {
      if (!("Notification" in global)) return;
      desktop.hidden = false;
      var on = wantDesktop && Notification.permission === "granted";
      desktop.textContent = on ? t("desktopOn") : t("desktopOff");
      desktop.setAttribute("aria-pressed", on ? "true" : "false");
    }

    function rememberDesktop(on) {
      wantDesktop = on;
      try { localStorage.setItem("herald.desktop", on ? "on" : "off"); } catch (err) {}
      showDesktopButton();
    }

    desktop.addEventListener("click", function () {
      if (wantDesktop && Notification.permission === "granted") {
        rememberDesktop(false);
        return;
      }
      Notification.requestPermission().then(function (permission) {
        rememberDesktop(permission === "granted");
      });
    });

    function desktopAlert(n) {
      if (!wantDesktop || !document.hidden || !("Notification" in global)) return;
      if (Notification.permission !== "granted") return;
      var alert = new Notification(n.title, {body: n.body || "", tag: "herald-" + n.id});
      alert.onclick = function () { global.focus(); alert.close(); };
    }

    // --- live ---------------------------------------------------------------------------

    function arrived(n) {
      client.ack(n.seq);
      noteCategory(n.category);
      recent[n.id] = n;
      var ids = Object.keys(recent);
      if (ids.length > 200) delete recent[ids[0]];
      var quiet = isMuted(n.category);
      if (!n.read && !n.archived && n.seq > welcomeSeq && !quiet) setUnread(unread + 1);
      if (!n.archived) emit("herald-notification", {notification: n, muted: quiet});
      if (items[n.id] || !matches(n)) return;  // another view's: counted, not shown
      var li = add(n, true);
      if (oldestSeq === null) oldestSeq = n.seq;
      refreshEmpty();
      if (n.archived || quiet || !li) return;  // replayed into the archive, or muted
      li.classList.remove("new");
      void li.offsetWidth;  // restart the highlight for a group that got a new member
      li.classList.add("new");
      setTimeout(function () { li.classList.remove("new"); }, 4000);
      live.textContent = t("newNotification", {title: n.title});
      desktopAlert(n);
    }

    function connect(lastSeq) {
      client = new global.HeraldClient({
        url: base.replace(/^http/, "ws") + "/ws",
        // A fixed token (or null: the cookie) goes as it is, so that herald.js reports a
        // refused one (onAuthError) instead of retrying it; a function is asked again.
        token: host._token === undefined ? null : host._token,
        lastSeq: lastSeq,
        onState: setState,
        onPending: setPending,
        onWelcome: function (w) {
          if (signedInAs !== null && w.user !== signedInAs) {
            // Another user's session now (a cookie or token of someone else took
            // over): nothing on screen is theirs. Start again from scratch.
            signedInAs = null;
            fresh();
            return;
          }
          signedInAs = w.user;
          welcomeSeq = w.last_seq;
          setMuted(w.muted);
          setUnread(w.unread);
          toolbar.hidden = false;
          emit("herald-welcome", w);
        },
        onNotification: arrived,
        onChange: changed,
        onPreferences: function (p) {
          prefsChanged += 1;
          setMuted(p.muted);
          setUnread(p.unread);
        },
        onRefused: refused,
        onAuthError: function (reason) {
          toolbar.hidden = true;
          emit("herald-auth-error", {reason: reason});
        }
      });
    }

    // --- history ------------------------------------------------------------------------

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
        add(n, false);
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

    var starts = 0;

    function start() {
      if (stopped) return;
      var mine = ++starts;  // a later start (a new token) makes this one moot
      page(null).then(function (body) {
        if (stopped || mine !== starts) return;
        started = true;
        filters.hidden = false;
        setMuted(body.muted);
        append(body.notifications);
        setUnread(body.unread);
        // The user's newest seq as of this page: the socket continues right after it.
        welcomeSeq = body.last_seq;
        return loadClient(base).then(function () {
          if (!stopped && mine === starts) connect(body.last_seq);
        });
      }).catch(function (err) {
        if (mine !== starts) return;
        if (err.message === "unauthorized") {
          setState("signed-out");
          emit("herald-auth-error", {reason: "unauthorized"});
          // A token function (an identity provider's getter) may have a fresh one soon.
          if (typeof host._token === "function") scheduleRestart();
        } else if (!started) {
          scheduleRestart();
        }
      });
    }

    /** Forget everything shown and start again (another user, or signed out and in). */
    function fresh() {
      forget();
      stopped = false;
      start();
    }

    /** Close the socket and show nothing of the user: no items, chips, mutes or count. */
    function forget() {
      if (client) client.close();
      client = null;
      // A page, a recount or a restart still on its way belongs to the old session.
      generation += 1;
      starts += 1;
      [recount, restartTimer].forEach(clearTimeout);
      loadingMore = false;
      clearList();
      // The next session starts on the inbox, unfiltered: its chips are not there yet.
      markView(false, null);
      setUnreadOnly(false);
      setPending(0);
      recent = {};
      Object.keys(known).forEach(function (category) {
        known[category].parentNode.removeChild(known[category]);
      });
      known = {};
      muted = {};
      chips.hidden = true;
      settingsError.hidden = true;
      showMutes();
      started = false;
      toolbar.hidden = true;
      filters.hidden = true;
      refreshEmpty();
      setUnread(0);
    }

    var tick = setInterval(function () {
      markDays();
      Array.prototype.forEach.call(list.querySelectorAll("time"), function (time) {
        time.textContent = time.classList.contains("expires") ? expiresLabel(time.dateTime)
          : ago(time.dateTime);
      });
    }, 15000);

    // --- bell mode ----------------------------------------------------------------------

    function setMode() {
      var isBell = host.getAttribute("mode") === "bell";
      bell.hidden = !isBell;
      panel.hidden = isBell && bell.getAttribute("aria-expanded") !== "true";
      if (isBell) {
        panel.setAttribute("role", "dialog");
        panel.setAttribute("aria-label", t("bell"));
      } else {
        panel.removeAttribute("role");
        panel.removeAttribute("aria-label");
      }
    }

    function openPanel(open) {
      if (host.getAttribute("mode") !== "bell") return;
      bell.setAttribute("aria-expanded", open ? "true" : "false");
      if (open) {
        // Open towards the middle of the screen: a bell near the left edge would push
        // a right-aligned panel off it.
        var box = host.getBoundingClientRect();
        panel.classList.toggle("from-left",
                               box.left + box.width / 2 < global.innerWidth / 2);
      }
      panel.hidden = !open;
      if (open) {
        var first = list.querySelector(".item-main") || viewInbox;
        (first.offsetParent ? first : retry).focus();
      }
    }

    bell.addEventListener("click", function () {
      openPanel(bell.getAttribute("aria-expanded") !== "true");
    });
    // Escape closes an open panel wherever focus is (it may have fallen to the page's
    // body: a click on the panel's background, a button that hid itself).
    function escape(event) {
      if (event.key !== "Escape" || host.getAttribute("mode") !== "bell" || panel.hidden) {
        return;
      }
      openPanel(false);
      bell.focus();
    }
    document.addEventListener("keydown", escape);
    // Tabbing out of the panel to the rest of the page closes it.
    panel.addEventListener("focusout", function (event) {
      var to = event.relatedTarget;
      if (to && to !== host && !host.contains(to) && !root.contains(to)) openPanel(false);
    });
    function outside(event) {
      if (host.getAttribute("mode") !== "bell" || panel.hidden) return;
      if (event.composedPath().indexOf(host) < 0) openPanel(false);
    }
    document.addEventListener("click", outside);

    function emit(name, detail, cancelable) {
      return host.dispatchEvent(new CustomEvent(name, {
        detail: detail, bubbles: true, composed: true, cancelable: !!cancelable
      }));
    }

    applyStrings();
    setMode();
    if ("IntersectionObserver" in global) {
      observer = new IntersectionObserver(function (entries) {
        if (entries[0].isIntersecting) loadMore();
      }, {rootMargin: "200px"});
      observer.observe(more);
    }

    return {
      start: start,
      applyStrings: applyStrings,
      setMode: setMode,
      open: function () { openPanel(true); },
      close: function () { openPanel(false); },
      toggle: function () { openPanel(panel.hidden); },
      refresh: function () { return reload(); },
      retryNow: function () { if (client) client.retryNow(); else restart(); },
      /** A new token (or none: the cookie): resume in place, or start (again). */
      tokenChanged: function () {
        if (client) {
          client.setToken(host._token === undefined ? null : host._token);
        } else {
          stopped = false;  // signed out, then a token: a new session
          restart();
        }
      },
      /** Signed out: close the socket, show nothing. */
      signOut: function () {
        stopped = true;
        forget();
        setState("signed-out");
      },
      fresh: function () { stopped = false; signedInAs = null; fresh(); },
      unread: function () { return unread; },
      state: function () { return statusBox.dataset.state; },
      destroy: function () {
        stopped = true;
        if (client) client.close();
        clearInterval(tick);
        clearInterval(countdown);
        [restartTimer, pendingTimer, recount].concat(timers).forEach(clearTimeout);
        if (observer) observer.disconnect();
        document.removeEventListener("click", outside);
        document.removeEventListener("keydown", escape);
      }
    };
  }

  class HeraldInbox extends HTMLElement {
    static get observedAttributes() { return ["token", "lang", "mode", "heading-level"]; }

    constructor() {
      super();
      this._token = undefined;
      this._strings = null;
      this._inbox = null;
      this.attachShadow({mode: "open"});
    }

    /** A fresh shadow root: the stylesheet and the constant markup. */
    _build() {
      var root = this.shadowRoot;
      root.textContent = "";  // a moved element: none of the old listeners survive
      var style = document.createElement("link");
      style.rel = "stylesheet";
      style.href = baseOf(SCRIPT_SRC) + "/static/herald-inbox.css";
      root.appendChild(style);
      var holder = document.createElement("div");
      holder.innerHTML = TEMPLATE;  // constant markup, no data in it
      while (holder.firstChild) root.appendChild(holder.firstChild);
    }

    connectedCallback() {
      if (this._inbox) return;
      this._build();  // again after a move: the old inbox's DOM had its listeners
      // Properties a page set before this script defined the element are own
      // properties hiding the accessors: take them through the accessors.
      var self = this;
      ["token", "strings"].forEach(function (name) {
        if (!Object.prototype.hasOwnProperty.call(self, name)) return;
        var value = self[name];
        delete self[name];
        self["_" + name] = value || null;
      });
      if (this._token === undefined && this.hasAttribute("token")) {
        this._token = this.getAttribute("token");
      }
      var inbox = this._inbox = createInbox(this, this.shadowRoot);
      function start() { if (self._inbox === inbox) inbox.start(); }
      // After the script that inserted the element, which may still set the token; an
      // element in the page's markup, once the page is parsed (a later script sets it).
      if (document.readyState === "loading") {
        document.addEventListener("DOMContentLoaded", start, {once: true});
      } else {
        Promise.resolve().then(start);
      }
    }

    disconnectedCallback() {
      if (!this._inbox) return;
      this._inbox.destroy();
      this._inbox = null;
    }

    attributeChangedCallback(name, before, after) {
      if (!this._inbox || before === after) return;
      if (name === "token") this.token = after;
      else if (name === "mode") this._inbox.setMode();
      else this._inbox.applyStrings();
    }

    /** The user's token, a function returning one (or a promise), or null: the cookie. */
    get token() { return this._token === undefined ? null : this._token; }
    set token(value) {
      this._token = value || null;
      if (this._inbox) this._inbox.tokenChanged();
    }

    /** Texts replacing the built-in ones, by key (see STRINGS.en in herald-inbox.js). */
    get strings() { return this._strings; }
    set strings(value) {
      this._strings = value || null;
      if (this._inbox) this._inbox.applyStrings();
    }

    get unread() { return this._inbox ? this._inbox.unread() : 0; }
    get state() { return this._inbox ? this._inbox.state() : "offline"; }
    open() { if (this._inbox) this._inbox.open(); }
    close() { if (this._inbox) this._inbox.close(); }
    toggle() { if (this._inbox) this._inbox.toggle(); }
    retryNow() { if (this._inbox) this._inbox.retryNow(); }
    refresh() { return this._inbox ? this._inbox.refresh() : Promise.resolve(); }
    /** Close the socket and show nothing (the user signed out). */
    signOut() { if (this._inbox) this._inbox.signOut(); }
    /** Start again from nothing (after signing in, maybe as someone else). */
    restart() { if (this._inbox) this._inbox.fresh(); }
  }

  HeraldInbox.strings = STRINGS;  // the built-in languages, for reference
  if (!global.customElements.get("herald-inbox")) {
    global.customElements.define("herald-inbox", HeraldInbox);
  }
  global.HeraldInbox = HeraldInbox;
})(window);
