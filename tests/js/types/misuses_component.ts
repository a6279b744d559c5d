/// <reference path="../../../static/herald-inbox.d.ts" />
// What the <herald-inbox> declarations must reject (test_types counts the errors).
const inbox = document.createElement("herald-inbox");
inbox.token = 42;                                                   // TS2322: not a token
inbox.addEventListener("herald-unread", (e) => e.detail.notification);  // TS2339
inbox.unread = 3;                                                   // TS2540: read-only
