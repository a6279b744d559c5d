/*
 * The shop's use of Herald's <herald-inbox> (loaded from Herald in base.html): the bell
 * in the header does the inbox (the socket authenticates with the herald_token cookie
 * the shop set at sign-in, on the domain both share). The shop only listens to it: a
 * notification about an order updates that order's row on the page at once.
 */
(function () {
  "use strict";
  var inbox = document.getElementById("herald");
  if (!inbox) return;

  inbox.addEventListener("herald-welcome", function (event) {
    inbox.dataset.node = event.detail.node;  // which Herald node serves this page
  });

  inbox.addEventListener("herald-notification", function (event) {
    var n = event.detail.notification;
    var order = n.data && n.data.order_id;
    var row = order && document.querySelector('[data-order="' + order + '"] .status');
    if (row && /shipped$/.test(n.title)) {
      row.textContent = "shipped";
      row.className = "status shipped";
    }
  });
})();
