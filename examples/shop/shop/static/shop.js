/*
 * The shop's notification panel: herald.js (served by Herald) on the customer's page.
 * The socket authenticates with the herald_token cookie the shop set at sign-in (token
 * null). On every page load it shows the customer's last few notifications again (it
 * resumes RECENT seqs before the last one this browser showed, kept in localStorage), so
 * a reload never leaves the panel empty; what is new since the last visit is
 * highlighted. It acknowledges what it shows and keeps the unread count.
 */
(function () {
  "use strict";
  var root = document.getElementById("herald-widget");
  var list = document.getElementById("herald-list");
  var status = document.getElementById("herald-status");
  var badge = document.getElementById("herald-unread");
  var key = "shop.herald.lastSeq." + root.dataset.user;
  var base = root.dataset.heraldUrl;
  var RECENT = 10;
  var stored = localStorage.getItem(key);
  var seen = stored === null ? null : Number(stored);  // the newest seq shown before
  var newest = 0;  // the user's newest seq at the welcome: counted in its unread

  function setUnread(n) {
    badge.hidden = n === 0;
    badge.textContent = String(n);
  }

  var client = new HeraldClient({
    url: base.replace(/^http/, "ws") + "/ws",
    token: null,  // the herald_token cookie
    lastSeq: seen === null ? null : Math.max(0, seen - RECENT),
    onWelcome: function (w) {
      newest = w.last_seq;
      root.dataset.node = w.node;
      status.textContent = "Live (Herald node " + w.node + ")";
      setUnread(w.unread);
    },
    onState: function (state) {
      root.dataset.state = state;
      if (state !== "live") status.textContent = state.charAt(0).toUpperCase() + state.slice(1);
    },
    onNotification: function (n) {
      client.ack(n.seq);
      if (seen === null || n.seq > seen) {
        seen = n.seq;
        localStorage.setItem(key, String(n.seq));
      }
      if (n.archived) return;  // put away in the inbox: not on the panel
      var li = document.createElement("li");
      if (n.seq > Number(stored === null ? -1 : stored)) li.className = "fresh";
      li.textContent = n.title + (n.body ? " — " + n.body : "");
      list.insertBefore(li, list.firstChild);
      // The welcome's count has every row up to its seq; only later ones add to it.
      if (!n.read && n.seq > newest) setUnread(Number(badge.textContent || 0) + 1);
      var order = n.data && n.data.order_id;
      var row = order && document.querySelector('[data-order="' + order + '"] .status');
      if (row) { row.textContent = "shipped"; row.className = "status shipped"; }
    },
    onChange: function (c) { setUnread(c.unread); }
  });
})();
