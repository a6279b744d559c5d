/*
 * The shop's notification panel: herald.js (served by Herald) on the customer's page.
 * The socket authenticates with the herald_token cookie the shop set at sign-in (token
 * null), resumes after the last seq this browser showed (kept in localStorage), shows
 * each notification once, acknowledges it and keeps the unread count.
 */
(function () {
  "use strict";
  var root = document.getElementById("herald-widget");
  var list = document.getElementById("herald-list");
  var status = document.getElementById("herald-status");
  var badge = document.getElementById("herald-unread");
  var key = "shop.herald.lastSeq." + root.dataset.user;
  var base = root.dataset.heraldUrl;

  function setUnread(n) {
    badge.hidden = n === 0;
    badge.textContent = String(n);
  }

  var client = new HeraldClient({
    url: base.replace(/^http/, "ws") + "/ws",
    token: null,  // the herald_token cookie
    lastSeq: localStorage.getItem(key) === null ? null : Number(localStorage.getItem(key)),
    onWelcome: function (w) {
      root.dataset.node = w.node;
      status.textContent = "Live (Herald node " + w.node + ")";
      setUnread(w.unread);
    },
    onState: function (state) {
      root.dataset.state = state;
      if (state !== "live") status.textContent = state.charAt(0).toUpperCase() + state.slice(1);
    },
    onNotification: function (n) {
      var li = document.createElement("li");
      li.className = "fresh";
      li.textContent = n.title + (n.body ? " — " + n.body : "");
      list.insertBefore(li, list.firstChild);
      localStorage.setItem(key, String(n.seq));
      client.ack(n.seq);
      if (!n.read && !n.archived) setUnread(Number(badge.textContent || 0) + 1);
      var order = n.data && n.data.order_id;
      var row = order && document.querySelector('[data-order="' + order + '"] .status');
      if (row) { row.textContent = "shipped"; row.className = "status shipped"; }
    },
    onChange: function (c) { setUnread(c.unread); }
  });
})();
