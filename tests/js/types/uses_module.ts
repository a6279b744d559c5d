// herald.mjs as a host page's module would use it; `tsc` checks it against herald.d.mts.
import HeraldDefault, { HeraldClient, shardOf, type Notification, type State } from "../../../static/herald.mjs";

const seen: Notification[] = [];
let state: State = "offline";
const client = new HeraldClient({
  token: async () => "jwt",
  user: "alice",
  lastSeq: null,
  confirmWithinMs: 3000,
  onNotification(n) { seen.push(n); client.ack(n.seq); },
  onChange(c) { if (c.all) console.log(c.seq, c.unread); },
  onState(s, detail) { state = s; console.log(detail.retryAt); },
  onPending(count) { console.log(count); },
});
const sent: boolean = client.markRead([1, 2]);
client.archive([3]);
const waiting: number = client.pending();
const shard: number = shardOf("alice") + HeraldDefault.shardOf("bob");
console.log(sent, waiting, shard, state, seen.length);
