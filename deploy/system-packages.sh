#!/usr/bin/env bash
# The one installer of the system packages estop needs, called by `make demo`, `make test` and
# `.ci/run` (through the Makefile). Idempotent: a package whose program is already there is not
# touched, so a second run prints one line and costs nothing.
#
#   bash deploy/system-packages.sh demo   # what the demo needs: Java, Maven, Postfix
#   bash deploy/system-packages.sh test   # and the servers the tests run privately: Prometheus,
#                                         # PostgreSQL, Postfix, Chromium; the compose client
#                                         # that checks deploy/compose (no engine needed); kcat,
#                                         # the consumer docs/consumers.md reads events with;
#                                         # Node.js and npm, which install and run the
#                                         # web push peer web-push-testing (deploy/web-push-testing)
#
# It installs with apt-get when it can (root on Debian/Ubuntu). No package may start a system
# service: estop starts its own private instances on their own ports and data folders, so a
# policy-rc.d that exits 101 is in place while apt-get runs. Elsewhere it prints the one command
# to run and exits 1.
set -euo pipefail

purpose="${1:-test}"

# "program-or-glob package" pairs: the package is needed when the program is not on PATH (or,
# for a path with '*', when nothing matches it).
needs_demo=(
    "java openjdk-17-jre-headless"
    "mvn maven"
    "/usr/sbin/postfix postfix"
    "/usr/sbin/smtp-sink postfix"
)
needs_test=(
    "${needs_demo[@]}"
    "promtool prometheus"
    "prometheus prometheus"
    "/usr/lib/postgresql/*/bin/postgres postgresql"
    "chromium chromium"
    "docker-compose docker-compose"
    "kcat kcat"
    "node nodejs"
    "npm npm"
)

case "$purpose" in
    demo) needs=("${needs_demo[@]}") ;;
    test) needs=("${needs_test[@]}") ;;
    *) echo "usage: $0 demo|test (got '$purpose')" >&2; exit 2 ;;
esac

present() {
    local what="$1"
    if [[ "$what" == *"*"* ]]; then
        compgen -G "$what" >/dev/null
    elif [[ "$what" == /* ]]; then
        [ -x "$what" ]
    else
        command -v "$what" >/dev/null 2>&1
    fi
}

missing=()
for pair in "${needs[@]}"; do
    read -r what package <<<"$pair"
    if ! present "$what" && [[ " ${missing[*]-} " != *" $package "* ]]; then
        missing+=("$package")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "system packages for '$purpose': all present"
    exit 0
fi

if [ "$EUID" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "missing system packages for '$purpose': ${missing[*]}. Install them, without starting" \
         "their services, with: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

echo "installing system packages for '$purpose' with apt-get (no service is started): ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Postfix asks how to configure the system's mail: "No configuration" (estop runs its own instance).
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections

own_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    own_policy=1
fi
cleanup() { if [ -n "$own_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT

apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"

# A service that came up anyway (a machine whose init ignores policy-rc.d) is stopped: the tests
# start their own instances on free ports.
if command -v systemctl >/dev/null 2>&1; then
    for service in prometheus postgresql postfix; do
        if systemctl is-active --quiet "$service" 2>/dev/null; then systemctl stop "$service" || true; fi
    done
fi

still=()
for pair in "${needs[@]}"; do
    read -r what package <<<"$pair"
    present "$what" || still+=("$what")
done
if [ "${#still[@]}" -gt 0 ]; then
    echo "after apt-get, still missing: ${still[*]}" >&2
    exit 1
fi
echo "system packages for '$purpose': installed"
