// Mistakes the declarations must catch (tests/test_types.py expects these errors).
import { HeraldClient } from "../../../static/herald.mjs";

const client = new HeraldClient({ onNotification: (n) => n.seq.toUpperCase() });
client.markRead("101");
client.ack();
client.mute(["marketing"]);
client.readGroup();
new HeraldClient({ onPreferences: (p) => p.muted.toFixed() });
new HeraldClient({ onRefused: (change) => change.ref.toUpperCase() });
