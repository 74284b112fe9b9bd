// Hocuspocus 4 (@hocuspocus/server) as the benchmark's reference server: no extensions, so it
// keeps documents in memory only and stores nothing (yserve commits every update to SQLite
// with fsync before relaying it). Loopback only.
//
//   HOST=127.0.0.1 PORT=1298 PEERS=target/peers/hocuspocus node scripts/hocuspocus-server.cjs
//
// PEERS is the folder where scripts/bench-hocuspocus.sh installs the pinned packages (npm);
// the module is resolved from there, so nothing is installed next to this script. Prints
// `listening on HOST:PORT` once it accepts connections.
"use strict";
const path = require("node:path");

const host = process.env.HOST || "127.0.0.1";
const port = Number(process.env.PORT || 1298);
const peers = path.resolve(process.env.PEERS || "target/peers/hocuspocus");
if (!["127.", "localhost", "::1"].some((p) => host.startsWith(p))) {
  throw new Error(`loopback only: ${host}`);
}

const { Server } = require(require.resolve("@hocuspocus/server", { paths: [peers] }));
const server = new Server({ address: host, port, quiet: true, extensions: [] });
server.listen().then(() => console.log(`listening on ${host}:${port}`));
