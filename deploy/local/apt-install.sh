#!/usr/bin/env bash
# Install the Debian packages the scans and the tests need (the Makefile's APT_PACKAGES,
# given as arguments), those not installed yet; idempotent.
#
# The servers the tests start themselves (nginx, vsftpd, mosquitto, snmpd, xrdp...) are
# installed for their binaries only: started by apt on a systemd host, their Debian
# defaults take 127.0.0.1:1883, udp/161, *:80, *:21, *:3389, and the tests that need those
# ports could not run. So while apt runs, a policy-rc.d forbids starting services
# (Debian's documented switch, what container images use), and on a systemd host the
# units of the packages installed here are disabled, so a reboot does not start them
# either. Services of packages that were already installed are left as they are.
set -euo pipefail

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

missing=()
for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"

systemd=""
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemd=1
fi
enabled_units() {
    systemctl list-unit-files --state=enabled,generated --type=service,socket --no-legend \
        2>/dev/null | awk '{print $1}'
}
enabled_before=()
if [ -n "${systemd}" ]; then
    mapfile -t enabled_before < <(enabled_units)
fi

policy=/usr/sbin/policy-rc.d
own_policy=""
if [ ! -e "${policy}" ]; then
    printf '#!/bin/sh\n# portwatch: no service starts while its test servers are installed\nexit 101\n' \
        | $SUDO tee "${policy}" >/dev/null
    $SUDO chmod 755 "${policy}"
    own_policy=1
fi
cleanup() {
    if [ -n "${own_policy}" ]; then $SUDO rm -f "${policy}"; fi
}
trap cleanup EXIT

$SUDO apt-get update -qq
if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null; then
    # inn2's postinst needs a domain name this host may lack
    if [ -f /etc/news/inn.conf ]; then
        echo "configuring inn2 with domain localdomain (its postinst needs a domain this host lacks)"
        $SUDO sed -i 's/^#domain:.*/domain:                      localdomain/' /etc/news/inn.conf
        DEBIAN_FRONTEND=noninteractive $SUDO dpkg --configure -a >/dev/null
    else
        exit 1
    fi
fi
for p in "${missing[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || { echo "Debian package $p did not install" >&2; exit 1; }
done

if [ -n "${systemd}" ]; then
    # The units enabled by this install (nginx.service comes with nginx-common, slapd's
    # from its init.d script: what was enabled after, not before, whatever the package)
    mapfile -t added < <(comm -13 <(printf '%s\n' "${enabled_before[@]}" | sort) \
                                 <(enabled_units | sort))
    if [ ${#added[@]} -gt 0 ]; then
        echo "disabling the services installed for the tests: ${added[*]}"
        $SUDO systemctl disable --now --quiet "${added[@]}" || true
    fi
fi
