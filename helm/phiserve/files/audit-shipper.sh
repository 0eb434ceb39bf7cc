#!/bin/bash
# Ships this pod's encrypted audit segments to S3 (an Object Lock bucket): every
# AUDIT_INTERVAL_S seconds, and once more on SIGTERM, which a native sidecar receives only after
# the server has exited, so the segment the server sealed on shutdown is shipped too.
# Segments are already encrypted (AES-256-GCM, data keys wrapped by the KEK); S3 adds SSE-KMS.
# A segment still being written is uploaded again on each sync; Object Lock keeps every version.
set -u
dest="${AUDIT_DEST%/}/${POD_NAME}/"
sse=()
if [[ -n "${AUDIT_KMS_KEY_ID:-}" ]]; then
  sse=(--sse aws:kms --sse-kms-key-id "$AUDIT_KMS_KEY_ID")
fi

ship() {
  aws s3 sync "$AUDIT_DIR" "$dest" --only-show-errors --no-progress \
    --exclude "*.lock" --exclude "*.tmp" "${sse[@]}" ||
    echo "audit-shipper: sync to $dest failed (retrying next round)" >&2
}

stop() {
  ship
  echo "audit-shipper: final sync done"
  exit 0
}
trap stop TERM INT

echo "audit-shipper: $AUDIT_DIR -> $dest every ${AUDIT_INTERVAL_S}s"
while true; do
  ship
  sleep "$AUDIT_INTERVAL_S" &
  wait $!
done
