// herald.mjs as a host page's module would use it; `tsc` checks it against herald.d.mts.
import HeraldDefault, { HeraldClient, shardOf, type Notification, type Preferences, type State, type SentChange, type Refusal } from "../../../static/herald.mjs";

const seen: Notification[] = [];
let muted: string[] = [];
let state: State = "offline";
const client = new HeraldClient({
  token: async () => "jwt",
  user: "alice",
  lastSeq: null,
  confirmWithinMs: 3000,
  onNotification(n) {
    seen.push(n);
    client.ack(n.seq);
    if (n.group_key !== null && n.category !== null && !muted.includes(n.category)) client.readGroup(n.group_key);
  },
  onWelcome(w) { muted = w.muted; },
  onPreferences(p: Preferences) { muted = p.muted; console.log(p.unread); },
  onChange(c) { if (c.all) console.log(c.seq, c.unread); },
  onState(s, detail) { state = s; console.log(detail.retryAt); },
  onPending(count) { console.log(count); },
  onRefused(change: SentChange, error: Refusal) {
    if (change.type === "mute" && error.code === "too_many_muted") console.log(change.category);
  },
});
const sent: boolean = client.markRead([1, 2]);
client.archive([3]);
const queued: boolean = client.mute("marketing") && client.unmute("marketing");
console.log(queued);
const waiting: number = client.pending();
const shard: number = shardOf("alice") + HeraldDefault.shardOf("bob");
console.log(sent, waiting, shard, state, seen.length);
