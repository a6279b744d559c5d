/// <reference path="../../../static/herald.d.ts" />
// herald.js as a classic script: the global HeraldClient.
const inbox = new HeraldClient({ token: null, onWelcome: (w) => console.log(w.user, w.unread, w.muted.join()) });
inbox.markAllRead();
inbox.readGroup("pr-12");
inbox.setToken("fresh");
const where: number = HeraldClient.shardOf("carol");
console.log(where, inbox.state === "signed-out");
