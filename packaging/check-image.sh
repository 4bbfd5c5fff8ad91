#!/bin/sh
# Build the broker image and check it end to end (docs/operations.md, "A container"):
# healthy under its HEALTHCHECK, serving a client on the published port as a non-root
# user, a clean `docker stop -t 90` (exit status 0), and a published message still there
# after a restart on the same volume. Needs docker, and brokerctl on PATH (or $BROKERCTL).
#
#   sh packaging/check-image.sh            # from the repository's top directory
set -eu
image=lockgate-check
name=lockgate-check-$$
volume=lockgate-check-$$
port=${PORT:-17878}
brokerctl=${BROKERCTL:-brokerctl}
ctl() { $brokerctl --addr "127.0.0.1:$port" "$@"; }
cleanup() { docker rm -f "$name" >/dev/null 2>&1 || true; docker volume rm "$volume" >/dev/null 2>&1 || true; }
trap cleanup EXIT
healthy() {
    i=0
    until [ "$(docker inspect -f '{{.State.Health.Status}}' "$name")" = healthy ]; do
        i=$((i + 1)); [ "$i" -le 60 ] || { docker logs "$name"; echo "not healthy after 120 s" >&2; exit 1; }
        sleep 2
    done
}
docker build -q -f packaging/Dockerfile -t "$image" . >/dev/null
docker run -d --name "$name" -p "127.0.0.1:$port:7878" -v "$volume:/var/lib/lockgate" "$image" >/dev/null
healthy
[ "$(docker exec "$name" id -u)" = 7878 ] || { echo "the broker does not run as uid 7878" >&2; exit 1; }
ctl create-queue check-image >/dev/null
ctl publish check-image "kept across a restart" >/dev/null
docker stop -t 90 "$name" >/dev/null
[ "$(docker inspect -f '{{.State.ExitCode}}' "$name")" = 0 ] || { docker logs "$name"; echo "unclean stop" >&2; exit 1; }
docker logs "$name" 2>&1 | grep -q '"stopped cleanly"' || { echo "no clean shutdown logged" >&2; exit 1; }
docker start "$name" >/dev/null
healthy
ctl consume check-image | grep -q "kept across a restart" || { echo "the message was lost" >&2; exit 1; }
echo "image $image: healthy, non-root, clean stop, data kept across a restart"
