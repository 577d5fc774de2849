#!/usr/bin/env node
// Baseline for `cargo bench --bench daemon`: uploads every regular file of a directory, one
// after another in name order, with tus-js-client's Node API.
//
// Usage: node tus-js-upload.mjs --endpoint URL --dir DIR --modules NODE_MODULES_DIR [--retries N]
//
// Each file is passed as an fs.ReadStream (tus-js-client then reads it by path). chunkSize is
// left unset (one PATCH per file), and no fingerprint is computed or stored, so there is no
// resume storage. `--retries N` (default 0, none) retries a failed request N times, 100 ms apart,
// resuming from the server's offset (scripts/bench's cut and shaped-link runs). Metadata: filename and filetype, as ferry sends by default. Prints one line
// of JSON on stdout, {"files":N,"bytes":B,"ms":T}; exits 1 at the first failed upload.

import fs from 'node:fs';
import path from 'node:path';
import process from 'node:process';
import { createRequire } from 'node:module';

function usage(msg) {
  process.stderr.write(
    `tus-js-upload: ${msg}\n` +
      'usage: tus-js-upload.mjs --endpoint URL --dir DIR --modules NODE_MODULES_DIR [--retries N]\n',
  );
  process.exit(2);
}

const opts = { endpoint: null, dir: null, modules: null, retries: '0' };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const key = argv[i].replace(/^--/, '');
  if (!(key in opts) || argv[i + 1] === undefined) usage(`bad argument ${argv[i]}`);
  opts[key] = argv[++i];
}
for (const [k, v] of Object.entries(opts)) if (!v) usage(`--${k} is required`);
if (!/^\d+$/.test(opts.retries)) usage('--retries needs a whole number');
const retries = Number.parseInt(opts.retries, 10);

// tus-js-client is installed beside @tus/server (tests/peers), not next to this script.
const require = createRequire(path.join(path.resolve(opts.modules), 'noop.js'));
const tus = require('tus-js-client');

function uploadOne(file, size) {
  return new Promise((resolve, reject) => {
    const upload = new tus.Upload(fs.createReadStream(file), {
      endpoint: opts.endpoint,
      uploadSize: size,
      metadata: { filename: path.basename(file), filetype: 'application/octet-stream' },
      fingerprint: () => Promise.resolve(null),
      storeFingerprintForResuming: false,
      removeFingerprintOnSuccess: false,
      retryDelays: retries > 0 ? Array(retries).fill(100) : null,
      onError: reject,
      onSuccess: () => resolve(),
    });
    upload.start();
  });
}

const names = fs.readdirSync(opts.dir).sort();
const start = process.hrtime.bigint();
let files = 0;
let bytes = 0;
for (const name of names) {
  const file = path.join(opts.dir, name);
  const st = fs.lstatSync(file);
  if (!st.isFile()) continue;
  try {
    await uploadOne(file, st.size);
  } catch (err) {
    process.stderr.write(`tus-js-upload: ${file}: ${err?.stack ?? err}\n`);
    process.exit(1);
  }
  files += 1;
  bytes += st.size;
}
const ms = Number(process.hrtime.bigint() - start) / 1e6;
process.stdout.write(`${JSON.stringify({ files, bytes, ms })}\n`);
