#!/usr/bin/env bash
# Install localdns on a node: binary, profile, systemd units and user.
#
#   sudo deploy/install.sh [--enable]
#
# DESTDIR=/some/root installs into a tree instead of / (packaging, tests);
# then nothing is started. Run from a checkout after `make build`.
set -euo pipefail
cd "$(dirname "$0")/.."
root="${DESTDIR:-}"
enable=false
[[ "${1:-}" == "--enable" ]] && enable=true

bin="${LOCALDNS_BIN:-bin/localdns}"
[[ -x "$bin" ]] || { echo "install: $bin missing: run 'make build' first" >&2; exit 1; }

install -D -m 0755 "$bin" "$root/usr/bin/localdns"
if [[ -e "$root/etc/localdns/localdns.yaml" ]]; then
  echo "install: keeping the existing /etc/localdns/localdns.yaml"
else
  install -D -m 0644 deploy/localdns.yaml "$root/etc/localdns/localdns.yaml"
fi
for unit in localdns.service localdns.socket localdns.slice; do
  install -D -m 0644 "systemd/$unit" "$root/etc/systemd/system/$unit"
done
install -D -m 0644 systemd/localdns.sysusers "$root/usr/lib/sysusers.d/localdns.conf"

# The profile must be valid before systemd ever starts the service.
"$root/usr/bin/localdns" validate --config "$root/etc/localdns/localdns.yaml"

if [[ -z "$root" ]]; then
  systemd-sysusers /usr/lib/sysusers.d/localdns.conf
  systemctl daemon-reload
  if $enable; then
    systemctl enable --now localdns.socket localdns.service
    localdns probe --config /etc/localdns/localdns.yaml
  else
    echo "install: done; start with: systemctl enable --now localdns.socket localdns.service"
  fi
fi
