// One Socket.IO node: each client joins the room named after its user (?user=...).
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/postgres-adapter");
const { Pool } = require("pg");

const pool = new Pool({ connectionString: process.env.DATABASE_URL, max: 4 });
const io = new Server({ transports: ["websocket"], adapter: createAdapter(pool) });
io.on("connection", (socket) => socket.join(String(socket.handshake.query.user)));
io.listen(Number(process.env.PORT));
console.log("ready");
