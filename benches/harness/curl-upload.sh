#!/usr/bin/env bash
# Baseline for scripts/bench: uploads every regular file of DIR in name order with curl, one
# POST (creation) and one PATCH of the whole file (streamed by `curl -T`) per file: two curl
# processes per file, a new connection each.
# Usage: curl-upload.sh ENDPOINT DIR
set -euo pipefail
endpoint=$1
dir=$2
for f in "$dir"/*; do
    [[ -f $f ]] || continue
    size=$(stat -c %s "$f")
    loc=$(curl -sS --noproxy '*' -X POST -H 'Tus-Resumable: 1.0.0' -H "Upload-Length: $size" \
        -D - -o /dev/null "$endpoint" | tr -d '\r' | sed -n 's/^[Ll]ocation: *//p')
    [[ -n $loc ]] || { echo "curl-upload: $f: no Location from POST" >&2; exit 1; }
    code=$(curl -sS --noproxy '*' -X PATCH -T "$f" -H 'Tus-Resumable: 1.0.0' -H 'Upload-Offset: 0' \
        -H 'Content-Type: application/offset+octet-stream' -o /dev/null -w '%{http_code}' "$loc")
    [[ $code == 204 ]] || { echo "curl-upload: $f: PATCH answered $code" >&2; exit 1; }
done
