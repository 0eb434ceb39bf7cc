#!/bin/bash
# Ships this pod's encrypted audit segments to S3 (an Object Lock bucket): every
# AUDIT_INTERVAL_S seconds, and once more on SIGTERM, which a native sidecar receives only after
# the server has exited, so the segment the server sealed on shutdown is shipped too.
# Segments are already encrypted (AES-256-GCM, data keys wrapped by the KEK); S3 adds SSE-KMS.
# A segment still being written is uploaded again on each sync; Object Lock keeps every version.
#
# Layout in the bucket mirrors the trail, so `phiserve audit verify` runs on a download:
#   shared claim (AUDIT_SHARED=true): one trail, a stream per pod
#     <dest>/audit-key.json  <dest>/<pod>/seg-*.pal
#   emptyDir: one trail per pod
#     <dest>/<pod>/audit-key.json  <dest>/<pod>/<pod>/seg-*.pal
set -u
base="${AUDIT_DEST%/}"
sse=()
if [[ -n "${AUDIT_KMS_KEY_ID:-}" ]]; then
  sse=(--sse aws:kms --sse-kms-key-id "$AUDIT_KMS_KEY_ID")
fi
if [[ "${AUDIT_SHARED:-false}" == "true" ]]; then
  src="$AUDIT_DIR/$POD_NAME"
  dest="$base/$POD_NAME/"
  key_dest="$base/audit-key.json"
else
  src="$AUDIT_DIR"
  dest="$base/$POD_NAME/"
  key_dest=""
fi

ship() {
  if [[ -d "$src" ]]; then
    aws s3 sync "$src" "$dest" --only-show-errors --no-progress \
      --exclude "*.lock" --exclude "*.tmp" "${sse[@]}" ||
      echo "audit-shipper: sync to $dest failed (retrying next round)" >&2
  fi
  if [[ -n "$key_dest" && -f "$AUDIT_DIR/audit-key.json" ]]; then
    aws s3 cp "$AUDIT_DIR/audit-key.json" "$key_dest" --only-show-errors --no-progress "${sse[@]}" ||
      echo "audit-shipper: copy of audit-key.json failed (retrying next round)" >&2
  fi
}

stop() {
  ship
  echo "audit-shipper: final sync done"
  exit 0
}
trap stop TERM INT

echo "audit-shipper: $src -> $dest every ${AUDIT_INTERVAL_S}s"
while true; do
  ship
  sleep "$AUDIT_INTERVAL_S" &
  wait $!
done
