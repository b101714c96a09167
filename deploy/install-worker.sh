#!/usr/bin/env bash
# Install the salvage agent on this PC as a systemd service that joins the
# cluster at ADDRESS with TOKEN on every boot.
#
#   sudo deploy/install-worker.sh ADDRESS TOKEN [--name NAME] [--source SRC]
#                                 [--python PYTHON] [--dry-run]
#
#   --name NAME      name this PC reports to the head (default: its hostname)
#   --source SRC     what pip installs: a checkout, a wheel, or a URL
#                    (default: the checkout this script is in)
#   --python PYTHON  interpreter for the venv, 3.11 or newer (default: python3)
#   --dry-run        print what would be written and run; change nothing
#
# The head address and the token go to /etc/salvage/worker.env (mode 600,
# readable by root only; systemd reads it before dropping to the `salvage`
# user), so the unit file is the same on every PC.
set -euo pipefail

readonly VENV=/opt/salvage/venv
readonly ENV_FILE=/etc/salvage/worker.env
readonly UNIT_FILE=/etc/systemd/system/salvage-worker.service
readonly SERVICE_USER=salvage
readonly STATE_DIR=/var/lib/salvage

usage() {
    sed -n '2,16s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

die() {
    echo "install-worker.sh: $*" >&2
    exit 1
}

# The unit, kept identical to deploy/systemd/salvage-worker.service (a test
# checks) so this script also works when copied to a PC on its own.
unit_text() {
    cat <<'UNIT'
# The salvage agent on a volunteer PC: joins the cluster, runs work, exports
# metrics. Installed by deploy/install-worker.sh, which writes the head
# address and join token to /etc/salvage/worker.env (mode 600, root only).
[Unit]
Description=salvage worker (volunteer compute agent)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=salvage
Group=salvage
EnvironmentFile=/etc/salvage/worker.env
Environment=HOME=/var/lib/salvage
StateDirectory=salvage
WorkingDirectory=/var/lib/salvage
ExecStart=/opt/salvage/venv/bin/salvage worker join ${SALVAGE_HEAD_ADDRESS} $SALVAGE_WORKER_ARGS
Restart=on-failure
RestartSec=10
# The owner's own programs come first on a donated PC.
Nice=10
IOSchedulingClass=idle
# Let the agent pause its work and leave the cluster before it is killed.
TimeoutStopSec=60

[Install]
WantedBy=multi-user.target
UNIT
}

env_text() {
    local address=$1 token=$2 name=$3
    echo "SALVAGE_HEAD_ADDRESS=$address"
    echo "SALVAGE_TOKEN=$token"
    if [[ -n $name ]]; then
        echo "SALVAGE_WORKER_ARGS=--name $name"
    else
        echo "SALVAGE_WORKER_ARGS="
    fi
}

dry_run=0

# Run a command, or only show it under --dry-run.
run() {
    if ((dry_run)); then
        printf 'would run:'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# write_file PATH MODE: write stdin to PATH with MODE, never leaving it
# readable by others in between (the env file holds the token).
write_file() {
    local path=$1 mode=$2 content
    content=$(cat)
    if ((dry_run)); then
        printf 'would write %s (mode %s):\n%s\n' "$path" "$mode" "$content"
        return
    fi
    install -d -m 755 "$(dirname "$path")"
    local tmp
    tmp=$(mktemp "$path.XXXXXX")
    chmod "$mode" "$tmp"
    printf '%s\n' "$content" >"$tmp"
    mv -f "$tmp" "$path"
}

main() {
    local address="" token="" name="" source="" python=python3
    local -a positional=()
    while (($#)); do
        case $1 in
            --name) (($# >= 2)) || die "--name: expected a value"; name=$2; shift 2 ;;
            --source) (($# >= 2)) || die "--source: expected a value"; source=$2; shift 2 ;;
            --python) (($# >= 2)) || die "--python: expected a value"; python=$2; shift 2 ;;
            --dry-run) dry_run=1; shift ;;
            -h | --help) usage ;;
            -*) die "$1: unknown option (expected --name, --source, --python or --dry-run)" ;;
            *) positional+=("$1"); shift ;;
        esac
    done
    ((${#positional[@]} == 2)) || die "expected ADDRESS and TOKEN, got ${#positional[@]} arguments (see --help)"
    address=${positional[0]}
    token=${positional[1]}

    # Values end up in an EnvironmentFile and on a command line: keep them
    # to characters that need no quoting in either.
    local address_re='^[][A-Za-z0-9.:_-]+:[0-9]+$'
    [[ $address =~ $address_re ]] \
        || die "ADDRESS: expected HOST:PORT, got '$address'"
    [[ $token =~ ^[A-Za-z0-9._~+/=-]+$ ]] \
        || die "TOKEN: expected letters, digits or ._~+/=- only"
    [[ -z $name || $name =~ ^[A-Za-z0-9._-]+$ ]] \
        || die "--name: expected letters, digits or ._- only, got '$name'"

    if [[ -z $source ]]; then
        local repo
        repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
        [[ -f $repo/pyproject.toml ]] \
            || die "--source: expected a checkout, wheel or URL to install salvage from (no pyproject.toml in $repo)"
        source=$repo
    fi

    if ((!dry_run)); then
        ((EUID == 0)) || die "must run as root (it installs a system service); try --dry-run"
        command -v systemctl >/dev/null || die "systemctl not found: this PC does not run systemd"
        "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || die "--python: expected Python 3.11 or newer, got $("$python" --version 2>&1)"
    fi

    if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
        run useradd --system --home-dir "$STATE_DIR" --shell /usr/sbin/nologin "$SERVICE_USER"
    fi
    run "$python" -m venv "$VENV"
    run "$VENV/bin/pip" install --upgrade "$source"
    env_text "$address" "$token" "$name" | write_file "$ENV_FILE" 600
    unit_text | write_file "$UNIT_FILE" 644
    run systemctl daemon-reload
    run systemctl enable salvage-worker.service
    # restart rather than start, so re-running with a new address or token
    # takes effect on a PC that is already a worker.
    run systemctl restart salvage-worker.service
    if ((!dry_run)); then
        echo "salvage-worker is running; follow it with: journalctl -u salvage-worker -f"
    fi
}

main "$@"
