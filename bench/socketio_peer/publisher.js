// Publishes through the adapter from a non-listening Server (the emitter package 0.1.1
// drops every message with adapter 0.5.0: its documents lack `nsp`).
// args: prefix users count rate(0 = as fast as possible, bounded in flight)
// stdout: one "user seq" line per emit, then "cpu SECONDS" (its own), then "done".
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/postgres-adapter");
const { Pool } = require("pg");

const [prefix, users, count, rate] = process.argv.slice(2);
const pool = new Pool({ connectionString: process.env.DATABASE_URL, max: 16 });
const io = new Server({ adapter: createAdapter(pool) });
const seqs = new Map();
const out = [];

async function main() {
  await new Promise((r) => setTimeout(r, 500)); // let the adapter LISTEN
  const started = Date.now();
  for (let i = 0; i < Number(count); i++) {
    if (Number(rate) > 0) {
      const due = started + (i * 1000) / Number(rate);
      const wait = due - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    } else if (i % 16 === 0) {
      await new Promise((r) => setImmediate(r));
      while (pool.waitingCount > 64) await new Promise((r) => setTimeout(r, 1));
    }
    const user = `${prefix}-u${Math.floor(Math.random() * Number(users))}`;
    const seq = (seqs.get(user) || 0) + 1;
    seqs.set(user, seq);
    io.to(user).emit("notification", { seq, sent: Date.now() / 1000 });
    out.push(`${user} ${seq}`);
  }
  // One pool client stays checked out for the adapter's own LISTEN.
  while (pool.waitingCount > 0 || pool.totalCount - pool.idleCount > 1) {
    await new Promise((r) => setTimeout(r, 10));
  }
  const cpu = process.cpuUsage();
  out.push(`cpu ${(cpu.user + cpu.system) / 1e6}`);
  // Exit only once the pipe took everything: a busy reader must not lose the tail.
  process.stdout.write(out.join("\n") + "\ndone\n", () => process.exit(0));
}
main();
