#!/usr/bin/env bash
# beiflow set-up: everything `make test` and `make demo` need on a Debian machine.
#
#   scripts/setup.sh [all|python|system] [--dry-run] [--release 12|13]
#                    [--assume-timescale-binary yes|no] [--pg-version N]
#
#   all      (default) system set-up, then the Python venv
#   python   only the venv at .venv/ (pip install -e '.[dev]')
#   system   only packages (promtool too), PostgreSQL + TimescaleDB, database `beiflow`,
#            .beiflow/env
#
#   --dry-run                    print the plan (one `plan:` line per step), change nothing
#   --release 12|13              pretend /etc/debian_version says this release
#   --assume-timescale-binary    pretend apt-cache does (yes) / does not (no) have a
#                                postgresql-17-timescaledb candidate
#   --pg-version N               the local PostgreSQL major version to build against
#
# The same overrides can come from BEIFLOW_SETUP_RELEASE, BEIFLOW_ASSUME_TIMESCALE_BINARY
# and BEIFLOW_SETUP_PG_VERSION. Idempotent: when everything is in place it only checks.
#
# TimescaleDB (see shared SERVICES.md):
#   Debian 12  no package: build the Apache edition from Debian 13's source package
#              `timescaledb` against the local PostgreSQL, using an apt source list of
#              its own under $BEIFLOW_CACHE_DIR (default /var/cache/beiflow), so the
#              machine's own apt configuration is never touched.
#   Debian 13  use postgresql-17 + postgresql-17-timescaledb when the archive has them,
#              in a cluster of their own (17/beiflow, first free port from 5433);
#              otherwise build from source as on Debian 12.
#   Then shared_preload_libraries gets 'timescaledb' (restart only when needed) and a
#   scratch database proves CREATE EXTENSION + create_hypertable work.
set -euo pipefail

T0=$EPOCHREALTIME
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${BEIFLOW_CACHE_DIR:-/var/cache/beiflow}

TSDB_SRC_SUITE=trixie           # Debian release whose source package we build
TSDB_SRC_VERSION=2.19.3         # upstream version trixie ships (2.19.3+dfsg, Apache edition)
BIN_PG=17                       # Debian 13: PostgreSQL major with a timescaledb binary package
BIN_CLUSTER=beiflow             # ... and the cluster we create for it
BIN_PORT_BASE=5433
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

MODE=all
DRY=0
RELEASE=${BEIFLOW_SETUP_RELEASE:-}
ASSUME_BIN=${BEIFLOW_ASSUME_TIMESCALE_BINARY:-}
PGV_OVERRIDE=${BEIFLOW_SETUP_PG_VERSION:-}

say()  { printf 'setup: %s\n' "$*"; }
plan() { printf 'plan: %s\n' "$*"; }
die()  { printf 'setup: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; }

while (($#)); do
    case $1 in
        all|python|system) MODE=$1 ;;
        -n|--dry-run) DRY=1 ;;
        --release) RELEASE=${2:?--release needs a value}; shift ;;
        --release=*) RELEASE=${1#*=} ;;
        --assume-timescale-binary) ASSUME_BIN=${2:?--assume-timescale-binary needs yes|no}; shift ;;
        --assume-timescale-binary=*) ASSUME_BIN=${1#*=} ;;
        --pg-version) PGV_OVERRIDE=${2:?--pg-version needs a value}; shift ;;
        --pg-version=*) PGV_OVERRIDE=${1#*=} ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument: $1 (try --help)" ;;
    esac
    shift
done
case $ASSUME_BIN in ''|yes|no) ;; *) die "--assume-timescale-binary takes yes or no, not '$ASSUME_BIN'" ;; esac
case $RELEASE in ''|[0-9]*) ;; *) die "--release takes a Debian major number (12, 13), not '$RELEASE'" ;; esac

IS_ROOT=0; [[ $(id -u) == 0 ]] && IS_ROOT=1
HAVE_APT=0; command -v apt-get >/dev/null 2>&1 && HAVE_APT=1

# ---------------------------------------------------------------- helpers

detect_release() {
    local v
    v=$(cat /etc/debian_version 2>/dev/null || true)
    case $v in
        [0-9]*) echo "${v%%.*}" ;;
        bookworm*) echo 12 ;;
        trixie*) echo 13 ;;
        forky*) echo 14 ;;
        *) echo unknown ;;
    esac
}

pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }

# Explain what is missing and how to get it, then stop (not root / no apt-get).
cannot_install() {
    local what=$1; shift
    printf 'setup: missing: %s\n' "$what" >&2
    if ((HAVE_APT)); then
        printf 'setup: get it with (as root): apt-get update && apt-get install -y %s\n' "$*" >&2
        printf 'setup: then re-run scripts/setup.sh (as root it does this itself)\n' >&2
    else
        printf 'setup: no apt-get here: install the equivalent of the Debian packages: %s\n' "$*" >&2
    fi
    exit 1
}

APT_UPDATED=0
apt_update_once() {
    ((APT_UPDATED)) && return 0
    say "apt-get update"
    apt-get -qq update >/dev/null || die "apt-get update failed"
    APT_UPDATED=1
}

# apt_install PKG... : install whichever of PKG are not installed yet.
apt_install() {
    local p missing=()
    for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
    ((${#missing[@]})) || return 0
    if ((!IS_ROOT || !HAVE_APT)); then cannot_install "Debian packages ${missing[*]}" "${missing[@]}"; fi
    apt_update_once
    say "apt-get install ${missing[*]}"
    local log; log=$(mktemp)
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"$log" 2>&1 9>&-; then
        tail -n 30 "$log" >&2; rm -f "$log"
        die "apt-get install ${missing[*]} failed"
    fi
    rm -f "$log"
}

# Candidate version of a Debian package ("" if none).
apt_candidate() {
    local c
    c=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')
    [[ $c == "(none)" ]] && c=""
    printf '%s' "$c"
}

port_busy() {  # a PostgreSQL cluster is configured on it, or something listens on it
    local p=$1
    if command -v pg_lsclusters >/dev/null 2>&1 &&
        pg_lsclusters -h 2>/dev/null | awk -v p="$p" '$3 == p {f=1} END {exit !f}'; then
        return 0
    fi
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null
}

cluster_line() { pg_lsclusters -h 2>/dev/null | awk -v v="$1" -v c="$2" '$1 == v && $2 == c'; }
cluster_exists() { [[ -n $(cluster_line "$1" "$2") ]]; }
cluster_port() { cluster_line "$1" "$2" | awk '{print $3}'; }
cluster_online() { cluster_line "$1" "$2" | awk '{f = ($4 ~ /^online/)} END {exit !f}'; }
control_file() { echo "/usr/share/postgresql/$1/extension/timescaledb.control"; }

# The local PostgreSQL major to build TimescaleDB against.
local_pg_version() {
    if [[ -n $PGV_OVERRIDE ]]; then echo "$PGV_OVERRIDE"; return; fi
    local v
    if command -v pg_lsclusters >/dev/null 2>&1; then
        # the cluster on the standard port first, else the newest one
        v=$(pg_lsclusters -h 2>/dev/null | awk '$3 == 5432 {print $1; exit}')
        [[ -n $v ]] || v=$(pg_lsclusters -h 2>/dev/null | awk '{print $1}' | sort -n | tail -n1)
        [[ -n $v ]] && { echo "$v"; return; }
    fi
    v=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' 2>/dev/null |
        awk -F/ '{print $5}' | sort -n | tail -n1)
    [[ -n $v ]] && { echo "$v"; return; }
    case $REL in 12) echo 15 ;; 13) echo 17 ;; *) echo 15 ;; esac  # what `postgresql` brings
}

# ---------------------------------------------------------------- python venv

find_python() {
    local c p
    for c in ${PYTHON:-} python3 python3.13 python3.12 python3.11 /usr/bin/python3; do
        p=$(command -v "$c" 2>/dev/null) || continue
        if "$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$p"; return 0
        fi
    done
    return 1
}

step_python() {
    local py ver want have=""
    if ! py=$(find_python); then
        local found; found=$(python3 -V 2>&1 || echo "no python3 on PATH")
        die "Python >= 3.11 is required (found: $found). Install python3 (>= 3.11) with venv support, e.g. 'apt-get install -y python3 python3-venv' on Debian 12+, or set PYTHON=/path/to/python3.11"
    fi
    ver=$("$py" -c 'import sys; print(".".join(map(str, sys.version_info[:3])))')
    want=$({ sha256sum "$REPO/pyproject.toml"; echo "$py $ver"; } | sha256sum | cut -d' ' -f1)
    [[ -f $REPO/.venv/.beiflow-stamp ]] && have=$(<"$REPO/.venv/.beiflow-stamp")
    local venv_ok=0
    [[ -x $REPO/.venv/bin/python ]] && "$REPO/.venv/bin/python" -c '' 2>/dev/null && venv_ok=1
    if ((venv_ok)) && [[ $have == "$want" ]]; then
        ((DRY)) && plan "python venv .venv is up to date (python $ver, stamp matches pyproject.toml)"
        ((DRY)) || say "venv .venv up to date (python $ver)"
        return 0
    fi
    if ((DRY)); then
        ((venv_ok)) || plan "create venv .venv with $py (python $ver)"
        plan "pip install -e '.[dev]' into .venv"
        return 0
    fi
    if ((!venv_ok)); then
        say "creating venv .venv with $py (python $ver)"
        rm -rf "$REPO/.venv"
        "$py" -m venv "$REPO/.venv" ||
            die "'$py -m venv' failed: install venv support (Debian: apt-get install -y python3-venv)"
    fi
    say "pip install -e '.[dev]' (quiet)"
    rm -f "$REPO/.venv/.beiflow-stamp"
    # pip here may be configured with extra local indexes that warn about missing
    # folders; keep the log, show it (minus those warnings) only if pip fails.
    local log=$REPO/.beiflow/pip.log
    if ! (cd "$REPO" && .venv/bin/python -m pip install -q -e '.[dev]') >"$log" 2>&1; then
        grep -v "^WARNING: Location 'file:.*' is ignored" "$log" | tail -n 40 >&2
        die "pip install -e '.[dev]' failed (full log: .beiflow/pip.log)"
    fi
    echo "$want" >"$REPO/.venv/.beiflow-stamp"
}

# ---------------------------------------------------------------- system packages

MOSQUITTO_BIN=""
step_packages() {
    local missing=() why=()
    MOSQUITTO_BIN=$(command -v mosquitto 2>/dev/null || true)
    [[ -n $MOSQUITTO_BIN ]] || { [[ -x /usr/sbin/mosquitto ]] && MOSQUITTO_BIN=/usr/sbin/mosquitto; }
    [[ -n $MOSQUITTO_BIN ]] || { missing+=(mosquitto); why+=("the mosquitto broker binary"); }
    command -v mosquitto_pub >/dev/null 2>&1 || { missing+=(mosquitto-clients); why+=("mosquitto_pub/mosquitto_sub"); }
    if ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
        missing+=(postgresql); why+=("a PostgreSQL server")
    fi
    command -v psql >/dev/null 2>&1 || { missing+=(postgresql-client); why+=("psql"); }
    command -v pg_lsclusters >/dev/null 2>&1 || { missing+=(postgresql-common); why+=("pg_lsclusters/pg_ctlcluster"); }
    if ((DRY)); then
        if ((${#missing[@]})); then plan "apt-get install ${missing[*]}"; else plan "system packages present (mosquitto, mosquitto-clients, postgresql)"; fi
        return 0
    fi
    if ((${#missing[@]})); then
        if ((!IS_ROOT || !HAVE_APT)); then
            local w=""; printf -v w '%s, ' "${why[@]}"
            cannot_install "${w%, }" "${missing[@]}"
        fi
        apt_install "${missing[@]}"
        MOSQUITTO_BIN=$(command -v mosquitto 2>/dev/null || echo /usr/sbin/mosquitto)
        [[ -x $MOSQUITTO_BIN ]] || die "mosquitto installed but no mosquitto binary found"
    fi
    say "packages present: mosquitto ($MOSQUITTO_BIN), postgresql $(local_pg_version)"
}

# ---------------------------------------------------------------- promtool

# The test suite checks deploy/prometheus/ (config, alert rules and their unit tests) with
# promtool, which Debian ships in the `prometheus` package. Only the tool is wanted: the
# server is installed without being started (a policy-rc.d that refuses service starts,
# for the duration of the install, and only when the machine has none of its own).
step_promtool() {
    local bin; bin=$(command -v promtool 2>/dev/null || true)
    if [[ -n $bin ]]; then
        if ((DRY)); then plan "promtool present ($bin)"; else say "promtool present ($bin)"; fi
        return 0
    fi
    if ((DRY)); then plan "apt-get install prometheus (for promtool; the server is not started)"; return 0; fi
    local guard=/usr/sbin/policy-rc.d own=0
    if ((IS_ROOT && HAVE_APT)) && [[ ! -e $guard ]]; then
        printf '#!/bin/sh\n# scripts/setup.sh (beiflow): no service starts while it installs prometheus\nexit 101\n' >"$guard"
        chmod 755 "$guard"; own=1
        trap 'rm -f "'"$guard"'"' EXIT
    fi
    apt_install prometheus
    if ((own)); then rm -f "$guard"; trap - EXIT; fi
    command -v promtool >/dev/null 2>&1 || die "prometheus installed but no promtool on PATH"
}

step_chromium() {
    # Debian's chromium for the live-map test (tests/test_web.py: headless screenshot)
    if [[ -x /usr/bin/chromium ]]; then
        if ((DRY)); then plan "chromium present (/usr/bin/chromium)"; else say "chromium present (/usr/bin/chromium)"; fi
        return 0
    fi
    if ((DRY)); then plan "apt-get install chromium fonts-liberation (headless browser for the live-map test)"; return 0; fi
    apt_install chromium fonts-liberation  # fonts are only recommended; we install without
    [[ -x /usr/bin/chromium ]] || die "chromium installed but no /usr/bin/chromium"
}

# ---------------------------------------------------------------- branch choice

# Sets BRANCH (binary|build), PGV (major used by beiflow), CLUSTER, CPORT.
choose_branch() {
    local lpv; lpv=$(local_pg_version)
    BRANCH=build
    if [[ $REL != 12 ]]; then
        if [[ $ASSUME_BIN == yes ]]; then BRANCH=binary
        elif [[ $ASSUME_BIN == no ]]; then BRANCH=build
        elif cluster_exists "$BIN_PG" "$BIN_CLUSTER" && [[ -f $(control_file "$BIN_PG") ]]; then
            BRANCH=binary                                   # done on an earlier run
        elif [[ -f $(control_file "$lpv") ]]; then
            BRANCH=build                                    # done on an earlier run
        else
            ((DRY || !IS_ROOT || !HAVE_APT)) || apt_update_once
            if [[ -n $(apt_candidate "postgresql-$BIN_PG-timescaledb") ]]; then BRANCH=binary; fi
        fi
    fi
    if [[ $BRANCH == binary ]]; then
        PGV=$BIN_PG; CLUSTER=$BIN_CLUSTER
        CPORT=$(cluster_port "$PGV" "$CLUSTER")
        if [[ -z $CPORT ]]; then
            CPORT=$BIN_PORT_BASE
            while port_busy "$CPORT"; do CPORT=$((CPORT + 1)); done
        fi
    else
        PGV=$lpv
        CLUSTER=$(pg_lsclusters -h 2>/dev/null | awk -v v="$PGV" '$1 == v {print $2}' |
            awk '$1 == "main" {m=1} {a[NR]=$1} END {if (m) print "main"; else if (NR) print a[1]}' || true)
        [[ -n $CLUSTER ]] || CLUSTER=main
        CPORT=$(cluster_port "$PGV" "$CLUSTER")
        [[ -n $CPORT ]] || CPORT=5432
    fi
}

# ---------------------------------------------------------------- timescaledb

APT_OPTS=()
SRC_DIR=""
fetch_source() {  # -> SRC_DIR: the extracted source tree
    local d=$CACHE/timescaledb
    mkdir -p "$d/lists/partial" "$d/aptcache/archives/partial" "$d/src"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $TSDB_SRC_SUITE main" >"$d/sources.list"
    APT_OPTS=(-q -oDir::Etc::SourceList="$d/sources.list" -oDir::Etc::SourceParts=/dev/null
              -oDir::State::Lists="$d/lists" -oDir::Cache="$d/aptcache" -oAPT::Sandbox::User=root)
    if ! compgen -G "$d/src/timescaledb_*.dsc" >/dev/null; then
        say "fetching timescaledb source from Debian $TSDB_SRC_SUITE (own apt lists in $d)"
        apt-get "${APT_OPTS[@]}" update >"$d/apt.log" 2>&1 || { cat "$d/apt.log" >&2; die "apt-get update ($TSDB_SRC_SUITE deb-src) failed"; }
        (cd "$d/src" && apt-get "${APT_OPTS[@]}" source --download-only timescaledb) >>"$d/apt.log" 2>&1 ||
            { cat "$d/apt.log" >&2; die "apt-get source --download-only timescaledb failed"; }
    fi
    local dsc; dsc=$(compgen -G "$d/src/timescaledb_*.dsc" | sort -V | tail -n1)
    local ver; ver=$(awk '/^Version:/ {print $2; exit}' "$dsc")
    local upstream=${ver%-*}
    rm -rf "$d/build"; mkdir -p "$d/build"
    dpkg-source -x "$dsc" "$d/build/timescaledb-$upstream" >"$d/dpkg-source.log" 2>&1 ||
        { cat "$d/dpkg-source.log" >&2; die "dpkg-source -x $dsc failed"; }
    SRC_DIR=$d/build/timescaledb-$upstream
}

build_timescaledb() {
    local ctl; ctl=$(control_file "$PGV")
    if [[ -f $ctl ]]; then say "timescaledb already installed for PostgreSQL $PGV"; return 0; fi
    local deps=("postgresql-server-dev-$PGV" libssl-dev cmake dpkg-dev gcc make xz-utils)
    if ((!IS_ROOT || !HAVE_APT)); then
        printf 'setup: missing: the TimescaleDB extension for PostgreSQL %s (%s)\n' "$PGV" "$(control_file "$PGV")" >&2
        if ((HAVE_APT)); then
            printf 'setup: run this script as root once (sudo scripts/setup.sh): it installs %s\n' "${deps[*]}" >&2
            printf 'setup: and builds TimescaleDB %s from Debian %s source against PostgreSQL %s\n' "$TSDB_SRC_VERSION" "$TSDB_SRC_SUITE" "$PGV" >&2
        else
            printf 'setup: no apt-get here: install TimescaleDB for PostgreSQL %s (https://docs.timescale.com/self-hosted/latest/install/), then re-run\n' "$PGV" >&2
        fi
        exit 1
    fi
    if [[ -z $(apt_candidate "postgresql-server-dev-$PGV") ]] && ! pkg_installed "postgresql-server-dev-$PGV"; then
        apt_update_once
        [[ -n $(apt_candidate "postgresql-server-dev-$PGV") ]] ||
            die "cannot build TimescaleDB: this machine's archive has no postgresql-server-dev-$PGV (and no postgresql-$BIN_PG-timescaledb binary package)"
    fi
    apt_install "${deps[@]}"
    fetch_source
    local src=$SRC_DIR
    local log=$CACHE/timescaledb/build.log t; t=$EPOCHREALTIME
    say "building timescaledb $(basename "$src" | sed 's/^timescaledb-//') (Apache edition) against PostgreSQL $PGV in $src (log: $log)"
    if ! (cd "$src" &&
          ./bootstrap -DPG_CONFIG="/usr/lib/postgresql/$PGV/bin/pg_config" -DAPACHE_ONLY=1 \
              -DUSE_TELEMETRY=OFF -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DCMAKE_BUILD_TYPE=Release &&
          make -C build -j"$(nproc)" && make -C build install) >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        die "timescaledb build failed (full log: $log)"
    fi
    [[ -f $ctl ]] || die "timescaledb build finished but $ctl is missing (log: $log)"
    say "timescaledb built and installed in $(awk -v t="$t" -v n="$EPOCHREALTIME" 'BEGIN {printf "%.0f s", n - t}')"
}

install_binary_timescaledb() {
    local pkgs=("postgresql-$BIN_PG" "postgresql-$BIN_PG-timescaledb")
    local p need=0
    for p in "${pkgs[@]}"; do pkg_installed "$p" || need=1; done
    if ((need)); then
        ((IS_ROOT && HAVE_APT)) || cannot_install "PostgreSQL $BIN_PG with TimescaleDB" "${pkgs[@]}"
        # keep postgresql-common from creating (and starting) a 17/main cluster as well
        local dropin=/etc/postgresql-common/createcluster.d/zz-beiflow-no-main.conf
        if grep -qs "include_dir.*createcluster.d" /etc/postgresql-common/createcluster.conf &&
            [[ ! -d /etc/postgresql/$BIN_PG ]]; then
            mkdir -p /etc/postgresql-common/createcluster.d
            echo "create_main_cluster = off" >"$dropin"
            trap 'rm -f "'"$dropin"'"' EXIT
        fi
        apt_install "${pkgs[@]}"
        rm -f "$dropin"; trap - EXIT
    else
        say "postgresql-$BIN_PG and postgresql-$BIN_PG-timescaledb installed"
    fi
    if ! cluster_exists "$PGV" "$CLUSTER"; then
        ((IS_ROOT)) || cannot_install "PostgreSQL cluster $PGV/$CLUSTER" "${pkgs[@]}"
        while port_busy "$CPORT"; do CPORT=$((CPORT + 1)); done   # e.g. taken by a new 17/main
        say "creating cluster $PGV/$CLUSTER on port $CPORT (trust auth for local and 127.0.0.1)"
        pg_createcluster "$PGV" "$CLUSTER" --port "$CPORT" -- --auth-local=trust --auth-host=trust >/dev/null 9>&- ||
            die "pg_createcluster $PGV $CLUSTER --port $CPORT failed"
    fi
}

ensure_running() {
    if ! cluster_exists "$PGV" "$CLUSTER"; then
        ((IS_ROOT)) || die "no PostgreSQL cluster $PGV/$CLUSTER; create it as root: pg_createcluster $PGV $CLUSTER --start"
        say "creating cluster $PGV/$CLUSTER on port $CPORT"
        pg_createcluster "$PGV" "$CLUSTER" --port "$CPORT" -- --auth-local=trust --auth-host=trust >/dev/null 9>&-
    fi
    CPORT=$(cluster_port "$PGV" "$CLUSTER")
    if ! cluster_online "$PGV" "$CLUSTER"; then
        ((IS_ROOT)) || die "PostgreSQL $PGV/$CLUSTER is down; start it as root: pg_ctlcluster --skip-systemctl-redirect $PGV $CLUSTER start"
        say "starting PostgreSQL $PGV/$CLUSTER"
        pg_ctlcluster --skip-systemctl-redirect "$PGV" "$CLUSTER" start 9>&- ||
            die "could not start PostgreSQL $PGV/$CLUSTER (see /var/log/postgresql/postgresql-$PGV-$CLUSTER.log)"
    fi
}

# psql as the cluster's bootstrap superuser over TCP (trust auth for 127.0.0.1)
pgq() {
    PGOPTIONS='-c client_min_messages=warning' \
        psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$CPORT" -U postgres "$@"
}

wait_ready() {
    local _
    for _ in $(seq 1 50); do pgq -d postgres -c 'select 1' >/dev/null 2>&1 && return 0; sleep 0.2; done
    pgq -d postgres -c 'select 1' >/dev/null || die "PostgreSQL $PGV/$CLUSTER on port $CPORT does not answer"
}

ensure_preload() {
    local cur; cur=$(pgq -d postgres -c 'SHOW shared_preload_libraries')
    if [[ ",${cur// /}," == *,timescaledb,* ]]; then
        say "timescaledb preloaded in $PGV/$CLUSTER"
    else
        ((IS_ROOT)) || die "timescaledb is not in shared_preload_libraries of $PGV/$CLUSTER; run scripts/setup.sh as root"
        local list="" e
        IFS=, read -ra parts <<<"$cur"
        for e in "${parts[@]}"; do
            e=${e//\"/}; e=${e#"${e%%[![:space:]]*}"}; e=${e%"${e##*[![:space:]]}"}
            [[ -n $e ]] && list+="'${e//\'/\'\'}', "
        done
        list+="'timescaledb'"
        say "shared_preload_libraries = $list for $PGV/$CLUSTER; restarting it"
        pgq -d postgres -c "ALTER SYSTEM SET shared_preload_libraries = $list"
        pg_ctlcluster --skip-systemctl-redirect "$PGV" "$CLUSTER" restart 9>&- ||
            die "restart of PostgreSQL $PGV/$CLUSTER failed (see /var/log/postgresql/postgresql-$PGV-$CLUSTER.log)"
        wait_ready
        cur=$(pgq -d postgres -c 'SHOW shared_preload_libraries')
        [[ ",${cur// /}," == *,timescaledb,* ]] ||
            die "after restart shared_preload_libraries of $PGV/$CLUSTER is '$cur' (another config file overrides it?)"
    fi
    # Telemetry off (the source build has none at all; packaged builds may)
    local tl; tl=$(pgq -d postgres -c "SELECT setting FROM pg_settings WHERE name = 'timescaledb.telemetry_level'")
    if [[ -n $tl && $tl != off ]]; then
        say "timescaledb.telemetry_level = off"
        pgq -d postgres -c "ALTER SYSTEM SET timescaledb.telemetry_level = 'off'" -c 'SELECT pg_reload_conf()' >/dev/null
    fi
}

ensure_roles_and_db() {
    local r; r=$(pgq -d postgres -c "SELECT rolsuper FROM pg_roles WHERE rolname = 'root'")
    if [[ -z $r ]]; then
        say "creating superuser role root in $PGV/$CLUSTER"
        pgq -d postgres -c 'CREATE ROLE root SUPERUSER LOGIN'
    elif [[ $r != t ]]; then
        die "role root exists in $PGV/$CLUSTER but is not a superuser (the tests need one): ALTER ROLE root SUPERUSER"
    fi
    if [[ -z $(pgq -d postgres -c "SELECT 1 FROM pg_database WHERE datname = 'beiflow'") ]]; then
        say "creating database beiflow"
        pgq -d postgres -c 'CREATE DATABASE beiflow OWNER root'
    fi
}

verify_timescaledb() {
    local db=beiflow_setup_check_$$ out
    pgq -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
    if ! out=$(pgq -d "$db" 2>&1 <<'SQL'
CREATE EXTENSION timescaledb;
CREATE TABLE setup_check (time timestamptz NOT NULL, device_id text, v double precision);
SELECT create_hypertable('setup_check', by_range('time'));
INSERT INTO setup_check VALUES (now(), 'd1', 1.0), (now() - interval '1 day', 'd1', 2.0);
SELECT count(*) FROM (SELECT time_bucket('1 hour', time) FROM setup_check GROUP BY 1) b;
SELECT extversion FROM pg_extension WHERE extname = 'timescaledb';
DROP TABLE setup_check;
SQL
    ); then
        pgq -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
        printf '%s\n' "$out" >&2
        die "TimescaleDB check failed in $PGV/$CLUSTER (CREATE EXTENSION / create_hypertable)"
    fi
    pgq -d postgres -c "DROP DATABASE $db WITH (FORCE)"
    say "timescaledb $(tail -n1 <<<"$out") works in $PGV/$CLUSTER (port $CPORT): extension, hypertable, time_bucket"
}

write_env() {
    local f=$REPO/.beiflow/env tmp
    mkdir -p "$REPO/.beiflow"
    tmp=$(mktemp "$REPO/.beiflow/env.XXXXXX")
    cat >"$tmp" <<EOF
# written by scripts/setup.sh; re-run it (or make setup) instead of editing
BEIFLOW_PG_VERSION=$PGV
BEIFLOW_PG_CLUSTER=$CLUSTER
BEIFLOW_PG_PORT=$CPORT
BEIFLOW_PG_BINDIR=/usr/lib/postgresql/$PGV/bin
BEIFLOW_ADMIN_DSN=postgresql://root@127.0.0.1:$CPORT/postgres
BEIFLOW_DEMO_DSN=postgresql://root@127.0.0.1:$CPORT/beiflow
BEIFLOW_MOSQUITTO=$MOSQUITTO_BIN
EOF
    chmod 644 "$tmp"
    if cmp -s "$tmp" "$f"; then rm -f "$tmp"; else mv "$tmp" "$f"; say "wrote .beiflow/env"; fi
}

step_database() {
    choose_branch
    if ((DRY)); then
        if [[ $BRANCH == binary ]]; then
            plan "install postgresql-$BIN_PG postgresql-$BIN_PG-timescaledb; cluster $PGV/$CLUSTER on port $CPORT"
            if pkg_installed "postgresql-$BIN_PG-timescaledb" && cluster_exists "$PGV" "$CLUSTER"; then
                plan "postgresql-$BIN_PG-timescaledb and cluster $PGV/$CLUSTER already there: skip install"
            fi
        else
            plan "build timescaledb $TSDB_SRC_VERSION from $TSDB_SRC_SUITE source against PG $PGV"
            if [[ -f $(control_file "$PGV") ]]; then
                plan "timescaledb already installed for PG $PGV ($(control_file "$PGV")): skip build"
            else
                plan "apt-get install postgresql-server-dev-$PGV libssl-dev cmake dpkg-dev (those missing); deb-src $TSDB_SRC_SUITE in $CACHE/timescaledb; bootstrap -DAPACHE_ONLY=1; make -C build install"
            fi
        fi
        plan "ensure PostgreSQL $PGV/$CLUSTER is running; shared_preload_libraries includes timescaledb (restart only if not yet); telemetry off"
        plan "verify CREATE EXTENSION timescaledb + create_hypertable(by_range('time')) in a scratch database"
        plan "ensure superuser role root and database beiflow in $PGV/$CLUSTER"
        plan "write .beiflow/env (BEIFLOW_ADMIN_DSN=postgresql://root@127.0.0.1:$CPORT/postgres)"
        return 0
    fi
    say "TimescaleDB branch: $BRANCH (Debian $REL, PostgreSQL $PGV, cluster $PGV/$CLUSTER)"
    if [[ $BRANCH == binary ]]; then install_binary_timescaledb; else build_timescaledb; fi
    ensure_running
    wait_ready
    ensure_preload
    ensure_roles_and_db
    verify_timescaledb
    write_env
}

# ---------------------------------------------------------------- main

REL=${RELEASE:-$(detect_release)}
if ((DRY)); then
    plan "dry run: Debian release $REL$([[ -n $RELEASE ]] && echo ' (from --release)'), mode $MODE, $([[ -n $ASSUME_BIN ]] && echo "timescale binary assumed $ASSUME_BIN" || echo 'timescale binary from apt-cache')"
else
    mkdir -p "$REPO/.beiflow"
    # One run at a time per machine. Commands that may leave a daemon behind (pg_ctlcluster,
    # pg_createcluster, apt-get install) run with fd 9 closed, or the daemon would hold the lock.
    if ((IS_ROOT)); then lock=/run/lock/beiflow/setup.lock; mkdir -p /run/lock/beiflow; else lock=$REPO/.beiflow/setup.lock; fi
    exec 9>"$lock"
    flock -n 9 || { say "waiting for another scripts/setup.sh run ($lock)"; flock 9; }
fi

case $MODE in
    all) step_packages; step_promtool; step_chromium; step_database; step_python ;;
    system) step_packages; step_promtool; step_chromium; step_database ;;
    python) step_python ;;
esac

if ((!DRY)); then
    say "done in $(awk -v t="$T0" -v n="$EPOCHREALTIME" 'BEGIN {printf "%.1f s", n - t}')"
fi
