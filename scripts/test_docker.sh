#!/usr/bin/env bash
# The Docker deployment, run for real (issue 27): build the cpu image, start the README's compose
# profile, enroll and identify real faces through the published port, restart, and check what the
# image promises (non-root, read-only root filesystem, SIGTERM flushes the index, no download at
# run time). Prints one JSON line of figures at the end ("docker_test": ...).
#   bash scripts/test_docker.sh                 # exit 0 passed, 1 failed, 77 skipped (no daemon)
# It works on a copy of the tracked (and untracked, not ignored) files: a fresh clone, without
# the weights or venvs of this checkout. Where Docker Hub cannot be reached (the dev/CI machines)
# it builds against the stand-in base of scripts/docker_base.sh; everything runs with host
# networking (the only kind these machines' daemon has: dockerd --bridge=none), so the API
# listens on a free loopback port instead of a published container port.
# Env: DOCKER_TEST_BASE (default: marginface-base:bookworm, built when missing; set
#      python:3.11-slim-bookworm where Docker Hub is reachable), DOCKER_TEST_KEEP=1 (leave the
#      containers, volumes and copy behind), DOCKER_TEST_PORT, SHARED_DATA (../shared/data),
#      DOCKER_TEST_DEFAULT=0 / DOCKER_TEST_DISTRIBUTED=0 (leave out one part, while developing),
#      DOCKER_TEST_HOST_PYTHON (a python with MarginFace installed: the same identify figure on
#      the host, default .venv/bin/python when it exists).
set -uo pipefail
main() {  # the whole script is read before it runs: an edit during a run cannot derail it
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=${SHARED_DATA:-$ROOT/../shared/data}
BASE=${DOCKER_TEST_BASE:-marginface-base:bookworm}
export COMPOSE_PROJECT_NAME=marginfacetest   # never the user's own "marginface" project
T0=$(date +%s)
STARTED_DOCKERD=""
WORK=""
FILES=()
step() { echo "== docker test: $* ($(( $(date +%s) - T0 )) s)"; }
fail() { echo "FAIL docker test: $*" >&2; exit 1; }
skip() {
    echo "############################################################################" >&2
    echo "SKIPPED docker deployment test: $*" >&2
    echo "(not run, so not passed: start a Docker daemon to run it)" >&2
    echo "############################################################################" >&2
    exit 77
}
jq_py() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# ------------------------------------------------------------------ the daemon
# a fresh machine (CI) as root: Debian's engine, compose v1 and debootstrap (for the base)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    && ! { command -v dockerd && command -v debootstrap \
           && { docker compose version || command -v docker-compose; }; } >/dev/null 2>&1; then
    step "apt-get install docker.io docker-compose debootstrap"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        docker.io docker-compose debootstrap; } >/tmp/marginface-docker-apt.log 2>&1 \
        || { tail -n 5 /tmp/marginface-docker-apt.log >&2; skip "could not install Docker"; }
fi
command -v docker >/dev/null || skip "no docker client on PATH"
if ! docker info >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v dockerd >/dev/null; then
        step "starting dockerd (no bridge, no iptables: host networking only)"
        dockerd --bridge=none --iptables=false --ip-masq=false >/tmp/marginface-dockerd.log 2>&1 &
        STARTED_DOCKERD=$!
        for _ in $(seq 60); do
            docker info >/dev/null 2>&1 && break
            kill -0 "$STARTED_DOCKERD" 2>/dev/null || break   # it gave up
            sleep 1
        done
        docker info >/dev/null 2>&1 || {
            tail -n 5 /tmp/marginface-dockerd.log >&2
            kill "$STARTED_DOCKERD" 2>/dev/null; skip "dockerd did not start (log above)"; }
    else
        skip "no Docker daemon answers and none can be started here (not root, or no dockerd)"
    fi
fi
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then COMPOSE=(docker-compose)
else skip "neither 'docker compose' nor docker-compose is installed"; fi

cleanup() {
    local rc=$?
    if [ -n "$WORK" ] && [ "${DOCKER_TEST_KEEP:-0}" != 1 ]; then
        (cd "$WORK/marginface" && [ -f "$WORK/compose-distributed.yml" ] && "${COMPOSE[@]}" \
            -f "$WORK/compose-distributed.yml" --project-directory . --profile distributed down -v
         cd "$WORK/marginface" && "${COMPOSE[@]}" "${FILES[@]}" down -v --remove-orphans) >/dev/null 2>&1
        docker rm -f marginfacetest-offline >/dev/null 2>&1
        rm -rf "$WORK"
    fi
    if [ -n "$STARTED_DOCKERD" ]; then kill "$STARTED_DOCKERD"; wait "$STARTED_DOCKERD" 2>/dev/null; fi
    exit $rc
}
trap cleanup EXIT

# ------------------------------------------------------------------ base and a fresh copy
step "base image $BASE"
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    if [ "$BASE" = marginface-base:bookworm ]; then
        t=$(date +%s); bash "$ROOT/scripts/docker_base.sh" || fail "scripts/docker_base.sh"
        BASE_SECONDS=$(( $(date +%s) - t ))
    else
        docker pull "$BASE" || fail "cannot pull $BASE"
    fi
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/marginface-docker.XXXXXX")
mkdir "$WORK/marginface"
(cd "$ROOT" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) \
    | tar -C "$WORK/marginface" -xf - || fail "copying the checkout"
cd "$WORK/marginface" || fail "no copy"
PORT=${DOCKER_TEST_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
# What differs from the README's plain `docker compose up -d`: the base image and the host
# network (deploy/compose.hostnet.yml); everything else is the project's own files. Compose v1
# refuses published ports on the host network and cannot drop a list in an override file, so
# the two files are merged by `compose config` and the ports of host-network services dropped.
export PYTHON_IMAGE=$BASE MARGINFACE_PORT=$PORT
YAML_PY=$(for py in /usr/bin/python3 python3; do "$py" -c 'import yaml' 2>/dev/null && echo "$py" && break; done)
[ -n "$YAML_PY" ] || skip "no python3 with PyYAML to merge the compose files"
render() {  # $1: the merged file to write; the rest: compose's -f/--profile arguments
    local out=$1; shift
    # compose v1 checks env_file even for `config`, and its `config` writes the .env of the
    # moment into the merged file: render again after every change of .env
    [ -f .env ] || cp .env.example .env
    "${COMPOSE[@]}" "$@" config > "$out.raw" || fail "compose config $*"
    "$YAML_PY" - "$out.raw" "$out" <<'PY' || fail "merging the compose files"
import sys

import yaml

config = yaml.safe_load(open(sys.argv[1]))
for service in config["services"].values():
    if service.get("network_mode") == "host":
        service.pop("ports", None)
yaml.safe_dump(config, open(sys.argv[2], "w"), sort_keys=False)
PY
}
render "$WORK/compose.yml" -f docker-compose.yml -f deploy/compose.hostnet.yml
FILES=(-f "$WORK/compose.yml" --project-directory .)
URL=http://127.0.0.1:$PORT

# ------------------------------------------------------------------ build
step "cp .env.example .env; build the cpu image (docker compose build api)"
cp .env.example .env
t=$(date +%s)
"${COMPOSE[@]}" "${FILES[@]}" build api > "$WORK/build.log" 2>&1 \
    || { tail -n 40 "$WORK/build.log" >&2; fail "the image does not build"; }
BUILD_SECONDS=$(( $(date +%s) - t ))
IMAGE_BYTES=$(docker image inspect -f '{{.Size}}' marginface:cpu)

# ------------------------------------------------------------------ the README's steps
LFW=$DATA/lfw/images
identify() {  # $1 photo -> subject id of the first face's match (or "unknown")
    curl -sf -H "$H" "$URL/v1/identify" -F "image=@$1" \
        | jq_py '(d["faces"][0].get("match") or {}).get("subject_id", "unknown")'
}
identify_p50() {  # $1 base URL, $2 photo: median of 30 sequential identifies (curl's total), ms
    for _ in $(seq 30); do
        curl -sf -o /dev/null -w '%{time_total}\n' -H "$H" "$1/v1/identify" -F "image=@$2" || return 1
    done | python3 -c 'import statistics,sys; print(round(1000*statistics.median(map(float,sys.stdin)),1))'
}

if [ "${DOCKER_TEST_DEFAULT:-1}" = 1 ]; then
step "docker compose up -d"
t=$(date +%s)
"${COMPOSE[@]}" "${FILES[@]}" up -d > "$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; fail "up"; }
cid() { "${COMPOSE[@]}" "${FILES[@]}" ps -q api; }
wait_healthy() {  # the container's own HEALTHCHECK, as docker reports it
    local c status
    for _ in $(seq 240); do
        c=$(cid)
        status=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$c" 2>/dev/null)
        [ "$status" = healthy ] && return 0
        [ "$status" = none ] && fail "the container has no healthcheck"
        if [ "$(docker inspect -f '{{.State.Running}}' "$c")" != true ]; then
            docker logs --tail 40 "$c" >&2; fail "the container stopped"; fi
        sleep 0.5
    done
    docker logs --tail 40 "$c" >&2; docker inspect -f '{{json .State.Health}}' "$c" >&2
    fail "the container never became healthy"
}
wait_healthy
READY_SECONDS=$(( $(date +%s) - t ))
curl -sf "$URL/readyz" | jq_py 'd["recognizer"]["model"]' >/dev/null || fail "/readyz after healthy"

step "a scoped key, made the README's way (docker compose exec api marginface keys create)"
KEY=$("${COMPOSE[@]}" "${FILES[@]}" exec -T api marginface keys create --id deploy-test \
    --scopes read,write --json | jq_py 'd["key"]') || fail "keys create in the container"
H="X-API-Key: $KEY"
for _ in $(seq 20); do  # the server re-reads the keys file within a second
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H "$H" "$URL/v1/subjects")" = 200 ] && break
    sleep 0.25
done
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "$H" "$URL/v1/subjects")" = 200 ] \
    || fail "the key made in the container is not accepted"

step "enroll two people and identify them through the port"
for who in Colin_Powell George_W_Bush; do
    id=$(echo "$who" | tr 'A-Z' 'a-z')
    code=$(curl -s -o "$WORK/r.json" -w '%{http_code}' -H "$H" -H 'content-type: application/json' \
        "$URL/v1/subjects" -d "{\"id\": \"$id\", \"name\": \"$who\"}")
    [ "$code" = 201 ] || { cat "$WORK/r.json" >&2; fail "create $id: $code"; }
    code=$(curl -s -o "$WORK/r.json" -w '%{http_code}' -H "$H" "$URL/v1/subjects/$id/faces" \
        -F "files=@$LFW/$who/${who}_0001.jpg")
    [ "$code" = 201 ] || { cat "$WORK/r.json" >&2; fail "enroll $id: $code"; }
done
[ "$(identify "$LFW/Colin_Powell/Colin_Powell_0002.jpg")" = colin_powell ] || fail "identify Powell"
[ "$(identify "$LFW/George_W_Bush/George_W_Bush_0002.jpg")" = george_w_bush ] || fail "identify Bush"
P50_MS=$(identify_p50 "$URL" "$LFW/Colin_Powell/Colin_Powell_0003.jpg") || fail "identify p50"

HOST_PY=${DOCKER_TEST_HOST_PYTHON:-$ROOT/.venv/bin/python}
if [ -x "$HOST_PY" ] && ls "$ROOT"/models/sface-2021dec/*.onnx >/dev/null 2>&1; then
    step "the same identify on the host, outside docker (for the figure beside the container's)"
    HPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    (cd "$WORK" && set -a && . "$WORK/marginface/.env" && set +a \
        && PYTHONPATH=$ROOT MARGINFACE_MODELS_DIR=$ROOT/models MARGINFACE_GALLERY__PATH=$WORK/host/gallery \
           MARGINFACE_JOBS__WORK_DIR=$WORK/host/jobs MARGINFACE_AUTH__KEYS_FILE=$WORK/host/keys.json \
           exec "$HOST_PY" -m service.cli serve --host 127.0.0.1 --port "$HPORT") > "$WORK/host.log" 2>&1 &
    HOST_PID=$!
    HKEY=$(sed -n 's/.*\["\(.*\)"\].*/\1/p' .env)
    for _ in $(seq 240); do curl -sf -o /dev/null "http://127.0.0.1:$HPORT/readyz" && break; sleep 0.5; done
    curl -sf -o /dev/null -H "X-API-Key: $HKEY" -H 'content-type: application/json' \
        "http://127.0.0.1:$HPORT/v1/subjects" -d '{"id": "colin_powell", "name": "Colin Powell"}' \
        && curl -sf -o /dev/null -H "X-API-Key: $HKEY" "http://127.0.0.1:$HPORT/v1/subjects/colin_powell/faces" \
            -F "files=@$LFW/Colin_Powell/Colin_Powell_0001.jpg" \
        && HOST_P50_MS=$(H="X-API-Key: $HKEY" identify_p50 "http://127.0.0.1:$HPORT" "$LFW/Colin_Powell/Colin_Powell_0003.jpg") \
        || { tail -n 20 "$WORK/host.log" >&2; echo "note: the host figure could not be measured" >&2; }
    kill "$HOST_PID"; wait "$HOST_PID" 2>/dev/null
fi

step "non-root, read-only root filesystem, only /data writable"
C=$(cid)
[ "$(docker inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$C")" = true ] || fail "root filesystem is writable"
uid=$(docker exec "$C" id -u); [ "$uid" != 0 ] || fail "runs as root"
docker exec "$C" sh -c 'touch /app/x' 2>/dev/null && fail "/app is writable"
docker exec "$C" sh -c 'touch /data/x && rm /data/x' || fail "/data is not writable for uid $uid"

step "SIGTERM (docker compose stop) flushes the index; down and up again: gallery intact"
"${COMPOSE[@]}" "${FILES[@]}" stop api >/dev/null 2>&1 || fail "stop"
code=$(docker inspect -f '{{.State.ExitCode}}' "$C")
case $code in 0|143) ;; *) docker logs --tail 30 "$C" >&2; fail "exit code $code after SIGTERM";; esac
# (the logs are read whole first: with pipefail, `docker logs | grep -q` fails when grep stops
# reading at its match and docker logs gets SIGPIPE on a longer log)
logs=$(docker logs "$C" 2>&1)
grep -q '"signal\|SIGTERM\|Shutting down\|shutdown' <<<"$logs" \
    || echo "note: no shutdown line in the logs" >&2
"${COMPOSE[@]}" "${FILES[@]}" down >/dev/null 2>&1 || fail "down"
"${COMPOSE[@]}" "${FILES[@]}" up -d >/dev/null 2>&1 || fail "up again"
wait_healthy
n=$(curl -sf -H "$H" "$URL/v1/subjects" | jq_py 'len(d["items"]) if isinstance(d, dict) else len(d)')
[ "$n" = 2 ] || fail "after down/up the gallery has $n subjects, not 2"
[ "$(identify "$LFW/Colin_Powell/Colin_Powell_0002.jpg")" = colin_powell ] || fail "identify after up"
logs=$(docker logs "$(cid)" 2>&1)
grep -q 'gallery index loaded (2 vectors)' <<<"$logs" || {
    docker logs "$(cid)" 2>&1 | grep -i index >&2; fail "the index was not saved at SIGTERM (rebuilt at start)"; }

step "no download at run time: the image serves with --network none"
"${COMPOSE[@]}" "${FILES[@]}" stop api >/dev/null 2>&1
docker run -d --name marginfacetest-offline --network none --read-only --tmpfs /tmp \
    -v "${COMPOSE_PROJECT_NAME}_gallery:/data" -e MARGINFACE_LOG_FORMAT=json marginface:cpu >/dev/null \
    || fail "docker run --network none"
for _ in $(seq 240); do
    s=$(docker inspect -f '{{.State.Health.Status}}' marginfacetest-offline)
    [ "$s" = healthy ] && break
    [ "$(docker inspect -f '{{.State.Running}}' marginfacetest-offline)" = true ] || break
    sleep 0.5
done
[ "$s" = healthy ] || { docker logs --tail 40 marginfacetest-offline >&2; fail "offline: $s"; }
docker exec marginfacetest-offline python -c "import json, urllib.request as u; \
d = json.load(u.urlopen('http://127.0.0.1:8000/readyz')); assert d['gallery']['faces'] == 2, d" \
    || fail "offline /readyz"
docker rm -f marginfacetest-offline >/dev/null

fi  # DOCKER_TEST_DEFAULT

# ------------------------------------------------------------------ distributed profile (stand-ins)
if [ "${DOCKER_TEST_DISTRIBUTED:-1}" = 1 ]; then
"${COMPOSE[@]}" "${FILES[@]}" down -v >/dev/null 2>&1
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export STANDIN_PG_PORT=$(free_port) STANDIN_MILVUS_PORT=$(free_port) \
    STANDIN_REPLICA_PORT_1=$(free_port) STANDIN_REPLICA_PORT_2=$(free_port) \
    MARGINFACE_DISTRIBUTED_PORT=$(free_port) STANDIN_NGINX_CONF=$WORK/nginx.conf
# deploy/nginx.conf with Docker's DNS swapped for an upstream of the two loopback replicas
sed -e '/resolver 127.0.0.11/d' -e "s/listen 8080;/listen $MARGINFACE_DISTRIBUTED_PORT;/" \
    -e 's|set $api http://api-replica:8000;|set $api http://replicas;|' \
    -e "s|^http {|http {\n    upstream replicas { server 127.0.0.1:$STANDIN_REPLICA_PORT_1; server 127.0.0.1:$STANDIN_REPLICA_PORT_2; }|" \
    deploy/nginx.conf > "$STANDIN_NGINX_CONF"
grep -q 'set $api http://replicas;' "$STANDIN_NGINX_CONF" || fail "deploy/nginx.conf changed shape"
render "$WORK/compose-distributed.yml" -f docker-compose.yml -f deploy/compose.standin.yml --profile distributed
DFILES=(-f "$WORK/compose-distributed.yml" --project-directory . --profile distributed)
step "distributed: build the stand-ins (PostgreSQL, milvus-lite, nginx: NOT the production images)"
t=$(date +%s)
"${COMPOSE[@]}" "${DFILES[@]}" build postgres milvus proxy > "$WORK/build-standin.log" 2>&1 \
    || { tail -n 30 "$WORK/build-standin.log" >&2; fail "stand-ins do not build"; }
STANDIN_BUILD_SECONDS=$(( $(date +%s) - t ))

step "distributed: up without POSTGRES_PASSWORD (serve.sh's .env) fails at once, and says why"
grep -v '^POSTGRES_PASSWORD=' .env.example > .env
render "$WORK/compose-distributed.yml" -f docker-compose.yml -f deploy/compose.standin.yml --profile distributed
t=$(date +%s)
timeout 600 "${COMPOSE[@]}" "${DFILES[@]}" up -d proxy > "$WORK/up-nopw.log" 2>&1 && fail "up without POSTGRES_PASSWORD succeeded"
"${COMPOSE[@]}" "${DFILES[@]}" logs db-upgrade >> "$WORK/up-nopw.log" 2>&1
NOPW_SECONDS=$(( $(date +%s) - t ))
grep -q 'POSTGRES_PASSWORD is not set' "$WORK/up-nopw.log" || {
    cat "$WORK/up-nopw.log" >&2; fail "up without POSTGRES_PASSWORD failed after ${NOPW_SECONDS}s without naming it"; }
"${COMPOSE[@]}" "${DFILES[@]}" down -v >/dev/null 2>&1

step "distributed: up -d proxy (PostgreSQL, milvus-lite, db-upgrade, 2 replicas, nginx)"
cp .env.example .env
render "$WORK/compose-distributed.yml" -f docker-compose.yml -f deploy/compose.standin.yml --profile distributed
"${COMPOSE[@]}" "${DFILES[@]}" up -d proxy > "$WORK/up-dist.log" 2>&1 \
    || { cat "$WORK/up-dist.log" >&2; "${COMPOSE[@]}" "${DFILES[@]}" logs --tail 30 >&2; fail "distributed up"; }
for svc in api-replica api-replica-2; do
    c=$("${COMPOSE[@]}" "${DFILES[@]}" ps -q $svc)
    for _ in $(seq 240); do
        [ "$(docker inspect -f '{{.State.Health.Status}}' "$c")" = healthy ] && break; sleep 0.5; done
    [ "$(docker inspect -f '{{.State.Health.Status}}' "$c")" = healthy ] \
        || { docker logs --tail 30 "$c" >&2; fail "$svc never became healthy"; }
done
PROXY=http://127.0.0.1:$MARGINFACE_DISTRIBUTED_PORT
for _ in $(seq 40); do curl -sf -o /dev/null "$PROXY/healthz" && break; sleep 0.5; done
DKEY=$(sed -n 's/.*\["\(.*\)"\].*/\1/p' .env)   # the plain key of .env: the replicas share no keys file
H="X-API-Key: $DKEY"
rid=$(curl -s -o /dev/null -D - -H 'X-Request-ID: deploy-test-0042' "$PROXY/healthz" \
    | tr -d '\r' | sed -n 's/^[Xx]-[Rr]equest-[Ii][Dd]: //p')
[ "$rid" = deploy-test-0042 ] || fail "the proxy replaced the client's X-Request-ID with '$rid'"
code=$(curl -s -o "$WORK/r.json" -w '%{http_code}' -H "$H" -H 'content-type: application/json' \
    "$PROXY/v1/subjects" -d '{"id": "colin_powell", "name": "Colin Powell"}')
[ "$code" = 201 ] || { cat "$WORK/r.json" >&2; fail "distributed create: $code"; }
code=$(curl -s -o "$WORK/r.json" -w '%{http_code}' -H "$H" "$PROXY/v1/subjects/colin_powell/faces" \
    -F "files=@$LFW/Colin_Powell/Colin_Powell_0001.jpg")
[ "$code" = 201 ] || { cat "$WORK/r.json" >&2; fail "distributed enroll: $code"; }
for p in "$STANDIN_REPLICA_PORT_1" "$STANDIN_REPLICA_PORT_2" "$MARGINFACE_DISTRIBUTED_PORT"; do
    URL=http://127.0.0.1:$p
    [ "$(identify "$LFW/Colin_Powell/Colin_Powell_0002.jpg")" = colin_powell ] \
        || fail "identify through :$p (replica or proxy) does not see the shared gallery"
done
"${COMPOSE[@]}" "${DFILES[@]}" down -v >/dev/null 2>&1
fi

python3 - "$IMAGE_BYTES" "$BUILD_SECONDS" "${BASE_SECONDS:-0}" "${READY_SECONDS:-0}" "${P50_MS:-0}" \
    "$(( $(date +%s) - T0 ))" "$BASE" "${COMPOSE[*]}" "${STANDIN_BUILD_SECONDS:-0}" \
    "${NOPW_SECONDS:-0}" "${HOST_P50_MS:-null}" <<'EOF'
import json, sys
a = sys.argv[1:]
print(json.dumps({"docker_test": "passed", "image": "marginface:cpu", "base": a[6],
                  "compose": a[7], "image_mb": round(int(a[0]) / 1e6), "build_s": int(a[1]),
                  "base_build_s": int(a[2]), "up_to_healthy_s": int(a[3]),
                  "identify_p50_ms": float(a[4]), "host_identify_p50_ms": json.loads(a[10]),
                  "standin_build_s": int(a[8]),
                  "no_password_fails_after_s": int(a[9]), "total_s": int(a[5])}))
EOF
}
main "$@"
