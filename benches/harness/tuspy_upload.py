"""Baseline for scripts/bench: uploads every regular file of a directory, one after another in
name order, with tuspy (PyPI `tuspy`, installed by scripts/bench into a venv under target/).

Usage: python tuspy_upload.py --endpoint URL --dir DIR [--retries N]

tuspy's synchronous Uploader with its default chunk_size (one PATCH per file: it reads the
whole file into memory for that PATCH), no URL storage, metadata filename and filetype as ferry
sends by default. `--retries N` retries a failed PATCH N times, 0.1 s apart (tuspy resumes from
the server's offset). Prints one line of JSON, {"files":N,"bytes":B,"ms":T}; exits 1 at the
first failed upload.
"""

import argparse
import json
import os
import sys
import time

from tusclient import client


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--retries", type=int, default=0)
    args = ap.parse_args()
    tus = client.TusClient(args.endpoint)
    start = time.monotonic()
    files = size = 0
    for name in sorted(os.listdir(args.dir)):
        path = os.path.join(args.dir, name)
        if not os.path.isfile(path) or os.path.islink(path):
            continue
        try:
            uploader = tus.uploader(
                file_path=path,
                metadata={"filename": name, "filetype": "application/octet-stream"},
                retries=args.retries,
                retry_delay=0.1,
            )
            uploader.upload()
        except Exception as err:  # noqa: BLE001 (report any failure and stop)
            print(f"tuspy_upload: {path}: {err!r}", file=sys.stderr)
            return 1
        files += 1
        size += os.path.getsize(path)
    ms = (time.monotonic() - start) * 1000.0
    print(json.dumps({"files": files, "bytes": size, "ms": ms}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
