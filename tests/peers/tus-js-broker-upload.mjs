#!/usr/bin/env node
// A browser-style client of `ferry broker`: tus-js-client with the broker as its `endpoint`.
// The broker answers the creation POST with a one-time Cloudflare Stream URL in `Location`,
// and tus-js-client sends the data there directly.
//
// Usage: BROKER_DEVICE_TOKEN=<token> node tus-js-broker-upload.mjs --endpoint URL --file PATH
//
// The device token comes from the environment, not the command line (where `ps` shows it).
// chunkSize is 5 MiB (Stream's minimum, a multiple of 256 KiB); retryDelays as a web app
// would use them. `onAfterResponse` reads `Stream-Media-ID` from the broker's answer.
// Prints one line of JSON on stdout, {"mediaId":"…","bytes":N}; exits 1 if the upload fails.

import fs from 'node:fs';
import path from 'node:path';
import process from 'node:process';
import { Upload } from 'tus-js-client';

function usage(msg) {
  process.stderr.write(
    `tus-js-broker-upload: ${msg}\n` +
      'usage: BROKER_DEVICE_TOKEN=... tus-js-broker-upload.mjs --endpoint URL --file PATH\n',
  );
  process.exit(2);
}

const opts = { endpoint: null, file: null };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const key = argv[i].replace(/^--/, '');
  if (!(key in opts) || argv[i + 1] === undefined) usage(`bad argument ${argv[i]}`);
  opts[key] = argv[++i];
}
for (const [k, v] of Object.entries(opts)) if (!v) usage(`--${k} is required`);
const token = process.env.BROKER_DEVICE_TOKEN;
if (!token) usage('BROKER_DEVICE_TOKEN is not set');

const size = fs.statSync(opts.file).size;
const name = path.basename(opts.file);
let mediaId = null;

const done = new Promise((resolve, reject) => {
  const upload = new Upload(fs.createReadStream(opts.file), {
    endpoint: opts.endpoint,
    uploadSize: size,
    chunkSize: 5 * 1024 * 1024,
    retryDelays: [0, 3000, 5000, 10000, 20000],
    headers: { Authorization: `Bearer ${token}` },
    metadata: { name, filename: name, filetype: 'video/mp4' },
    // One upload per run: nothing to resume from a previous one.
    storeFingerprintForResuming: false,
    removeFingerprintOnSuccess: false,
    onAfterResponse: (req, res) => {
      const id = res.getHeader('Stream-Media-ID');
      if (req.getMethod() === 'POST' && id) mediaId = id;
    },
    onError: reject,
    onSuccess: () => resolve(),
  });
  upload.start();
});

try {
  await done;
} catch (err) {
  process.stderr.write(`tus-js-broker-upload: ${err?.message ?? err}\n`);
  process.exit(1);
}
if (!mediaId) {
  process.stderr.write('tus-js-broker-upload: the broker gave no Stream-Media-ID\n');
  process.exit(1);
}
process.stdout.write(`${JSON.stringify({ mediaId, bytes: size })}\n`);
