#!/usr/bin/env bash
# Start Mosquitto for real with a copy of a shipped config (default
# deploy/mosquitto/mosquitto.conf) on a free loopback port with a temporary
# persistence folder, and fail if it does not come up cleanly.
#   scripts/check-mosquitto-conf.sh [CONF]      (mosquitto binary: $BEIFLOW_MOSQUITTO)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONF=${1:-$REPO/deploy/mosquitto/mosquitto.conf}
BIN=${BEIFLOW_MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}
[[ -x $BIN ]] || { echo "check-mosquitto-conf: no mosquitto binary ($BIN): run scripts/setup.sh" >&2; exit 1; }

tmp=$(mktemp -d)
pid=""
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

port=""
for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then port=$p; break; fi
done
[[ -n $port ]] || { echo "check-mosquitto-conf: no free port found" >&2; exit 1; }

# Same config, with only the listener, persistence folder and log target moved.
sed -E -e "s|^listener[[:space:]]+1883([[:space:]].*)?$|listener $port 127.0.0.1|" \
       -e "s|^persistence_location[[:space:]].*|persistence_location $tmp/data/|" \
       -e "s|^log_dest[[:space:]].*|log_dest file $tmp/mosquitto.log|" \
       "$CONF" >"$tmp/mosquitto.conf"
grep -q "^listener $port 127.0.0.1$" "$tmp/mosquitto.conf" ||
    { echo "check-mosquitto-conf: $CONF has no 'listener 1883' line" >&2; exit 1; }
mkdir -p "$tmp/data"
# mosquitto running as root drops to user `mosquitto`, which must be able to write there
chmod 777 "$tmp" "$tmp/data"

"$BIN" -c "$tmp/mosquitto.conf" >"$tmp/stderr" 2>&1 &
pid=$!
up=0
for _ in $(seq 1 20); do
    sleep 0.1
    kill -0 "$pid" 2>/dev/null || break
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then up=1; break; fi
done
sleep 0.5
if ((up)) && kill -0 "$pid" 2>/dev/null && ! grep -qi 'error' "$tmp/stderr" "$tmp/mosquitto.log" 2>/dev/null; then
    echo "check-mosquitto-conf: $(basename "$CONF") OK ($("$BIN" -h 2>/dev/null | head -n1 | sed 's/ is an MQTT.*//'), listened on 127.0.0.1:$port)"
    exit 0
fi
echo "check-mosquitto-conf: mosquitto did not start cleanly with $CONF:" >&2
cat "$tmp/stderr" "$tmp/mosquitto.log" >&2 2>/dev/null || true
exit 1
