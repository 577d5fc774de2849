#!/usr/bin/env node
// The reference tus server (@tus/server + @tus/file-store) as a test peer for ferry.
//
// Usage: node tus-node-server.mjs --dir DIR [--port N] [--host ADDR] [--relative-location] [--expire-ms N]
//
// Listens on 127.0.0.1 only (or --host, an address of a test's network namespace), tus
// endpoint at /files. Once listening it prints exactly one line to stdout,
// `LISTENING http://<host>:<port>/files/`, and nothing more (diagnostics
// go to stderr). It exits when stdin closes, so a test process that dies cannot leave it
// running, and on SIGTERM/SIGINT.
//
// The FileStore keeps each upload's bytes in DIR/<upload id> (the last path segment of the
// upload URL) and its metadata in DIR/<upload id>.json.

import process from 'node:process';
import { Server } from '@tus/server';
import { FileStore } from '@tus/file-store';

function usage(msg) {
  process.stderr.write(
    `tus-node-server: ${msg}\n` +
      'usage: tus-node-server.mjs --dir DIR [--port N] [--host ADDR] [--relative-location] [--expire-ms N]\n',
  );
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { port: 0, host: '127.0.0.1', dir: null, relativeLocation: false, expireMs: 0 };
  const int = (name, v) => {
    if (v === undefined || !/^\d+$/.test(v)) usage(`${name} needs a non-negative integer`);
    return Number.parseInt(v, 10);
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    switch (a) {
      case '--port':
        opts.port = int(a, argv[++i]);
        break;
      case '--host':
        opts.host = argv[++i];
        if (!opts.host) usage('--host needs an address');
        break;
      case '--dir':
        opts.dir = argv[++i];
        if (!opts.dir) usage('--dir needs a directory');
        break;
      case '--relative-location':
        opts.relativeLocation = true;
        break;
      case '--expire-ms':
        opts.expireMs = int(a, argv[++i]);
        break;
      default:
        usage(`unknown argument ${a}`);
    }
  }
  if (!opts.dir) usage('--dir is required');
  return opts;
}

const opts = parseArgs(process.argv.slice(2));

const server = new Server({
  path: '/files',
  // Off by default: Location is then absolute, built from the request's Host header.
  relativeLocation: opts.relativeLocation,
  datastore: new FileStore({
    directory: opts.dir,
    // 0 = uploads never expire. Expired uploads answer HEAD/PATCH with 410 Gone;
    // nothing deletes them, so their bytes stay readable for the tests.
    expirationPeriodInMilliseconds: opts.expireMs,
  }),
});

const http = server.listen({ host: opts.host, port: opts.port }, () => {
  const { port } = http.address();
  process.stdout.write(`LISTENING http://${opts.host}:${port}/files/\n`);
});
http.on('error', (err) => {
  process.stderr.write(`tus-node-server: ${err.stack ?? err}\n`);
  process.exit(1);
});

// Exit when the parent goes away (stdin closes) or asks us to stop.
process.stdin.on('data', () => {});
process.stdin.on('end', () => process.exit(0));
process.stdin.on('close', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
