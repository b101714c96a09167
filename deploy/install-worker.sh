#!/usr/bin/env bash
# Install the salvage agent on this PC as a systemd service that joins the
# cluster at ADDRESS on every boot.
#
#   sudo deploy/install-worker.sh ADDRESS --token-file FILE [--ca-fingerprint FP]
#                                 [--name NAME] [--source SRC] [--python PYTHON] [--dry-run]
#
#   ADDRESS              the head's API, HOST:PORT, as its join line shows it
#   --token-file FILE    the cluster's token: a copy of the head's STATE_DIR/token,
#                        or - to read it from standard input (never an argument)
#   --ca-fingerprint FP  the head's CA (sha256:HEX), from its join line; needed for
#                        a head on a LAN, which speaks only TLS
#   --name NAME          name this PC reports to the head (default: its hostname)
#   --source SRC         what pip installs: a checkout, a wheel, or a URL
#                        (default: the checkout this script is in)
#   --python PYTHON      interpreter for the venv, 3.11 or newer, that the salvage user
#                        can run (default: python3)
#   --dry-run            print what would be written and run; change nothing
#
# The token goes to /etc/salvage/worker.token (mode 600, owned by the `salvage`
# user the agent runs as), the head's address and fingerprint to
# /etc/salvage/worker.env, so the unit file is the same on every PC and the
# token is never on a command line, where any user of the PC could read it.
set -euo pipefail

readonly VENV=/opt/salvage/venv
readonly ENV_FILE=/etc/salvage/worker.env
readonly TOKEN_FILE=/etc/salvage/worker.token
readonly UNIT_FILE=/etc/systemd/system/salvage-worker.service
readonly SERVICE_USER=salvage
readonly STATE_DIR=/var/lib/salvage
readonly MIN_TOKEN_CHARS=32

usage() {
    sed -n '2,23s/^# \{0,1\}//p' "$0" >&2
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
# metrics. Installed by deploy/install-worker.sh, which writes the head's
# address and CA fingerprint to /etc/salvage/worker.env and the cluster's
# token to /etc/salvage/worker.token (mode 600, owned by the salvage user):
# the token never appears on a command line.
#
# Every `salvage worker join` option can be set in worker.env as
# SALVAGE_<OPTION> (see `salvage worker join --help`), the head's address as
# SALVAGE_HEAD; deploy/systemd/worker.env is an example.
[Unit]
Description=salvage worker (volunteer compute agent)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=salvage
Group=salvage
Environment=HOME=/var/lib/salvage
Environment=SALVAGE_TOKEN_FILE=/etc/salvage/worker.token
EnvironmentFile=/etc/salvage/worker.env
StateDirectory=salvage
WorkingDirectory=/var/lib/salvage
ExecStart=/opt/salvage/venv/bin/salvage worker join
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

# write_file PATH MODE [OWNER] [SECRET]: write stdin to PATH with MODE (and
# OWNER), never leaving it readable by others in between. A dry run shows
# the content, unless SECRET is set: then only its length.
write_file() {
    local path=$1 mode=$2 owner=${3:-root} secret=${4:-} content
    content=$(cat)
    if ((dry_run)); then
        printf 'would write %s (mode %s, owner %s):\n' "$path" "$mode" "$owner"
        if [[ -n $secret ]]; then
            printf '<%s: %d characters, not shown>\n' "$secret" "${#content}"
        else
            printf '%s\n' "$content"
        fi
        return
    fi
    install -d -m 755 "$(dirname "$path")"
    local tmp
    tmp=$(mktemp "$path.XXXXXX")
    chmod "$mode" "$tmp"
    chown "$owner:" "$tmp"
    printf '%s\n' "$content" >"$tmp"
    mv -f "$tmp" "$path"
}

# read_token FILE: the token in FILE (- for standard input), first line, trimmed.
read_token() {
    local file=$1 token
    if [[ $file == - ]]; then
        IFS= read -r token || [[ -n ${token:-} ]] || die "--token-file: nothing on standard input"
    else
        [[ -r $file ]] || die "--token-file: cannot read '$file'"
        IFS= read -r token <"$file" || [[ -n ${token:-} ]] || die "--token-file: '$file' is empty"
    fi
    token=${token//[[:space:]]/}
    if ((${#token} < MIN_TOKEN_CHARS)) || [[ ! $token =~ ^[A-Za-z0-9._~+/=-]+$ ]]; then
        die "--token-file: expected the cluster's token (one word of at least $MIN_TOKEN_CHARS letters, digits or ._~+/=-), as in the head's STATE_DIR/token"
    fi
    printf '%s' "$token"
}

env_text() {
    local address=$1 fingerprint=$2 name=$3
    echo "# Written by install-worker.sh; any \`salvage worker join\` option may be added as SALVAGE_<OPTION>."
    echo "SALVAGE_HEAD=$address"
    if [[ -n $fingerprint ]]; then
        echo "SALVAGE_CA_FINGERPRINT=$fingerprint"
    fi
    if [[ -n $name ]]; then
        echo "SALVAGE_NAME=$name"
    fi
}

main() {
    local address="" token_file="" fingerprint="" name="" source="" python=python3
    local -a positional=()
    while (($#)); do
        case $1 in
            --token-file) (($# >= 2)) || die "--token-file: expected a file (or - for standard input)"; token_file=$2; shift 2 ;;
            --ca-fingerprint) (($# >= 2)) || die "--ca-fingerprint: expected a value"; fingerprint=$2; shift 2 ;;
            --name) (($# >= 2)) || die "--name: expected a value"; name=$2; shift 2 ;;
            --source) (($# >= 2)) || die "--source: expected a value"; source=$2; shift 2 ;;
            --python) (($# >= 2)) || die "--python: expected a value"; python=$2; shift 2 ;;
            --dry-run) dry_run=1; shift ;;
            -h | --help) usage ;;
            -) positional+=("$1"); shift ;;
            -*) die "$1: unknown option (expected --token-file, --ca-fingerprint, --name, --source, --python or --dry-run)" ;;
            *) positional+=("$1"); shift ;;
        esac
    done
    ((${#positional[@]} == 1)) \
        || die "expected one ADDRESS (the token comes in --token-file, never as an argument), got ${#positional[@]} arguments (see --help)"
    address=${positional[0]}
    [[ -n $token_file ]] || die "--token-file: expected a copy of the head's STATE_DIR/token (or - to read it from standard input)"

    # Values end up in an EnvironmentFile: keep them to characters that need
    # no quoting there.
    local address_re='^[][A-Za-z0-9.:_-]+:[0-9]+$'
    [[ $address =~ $address_re ]] \
        || die "ADDRESS: expected HOST:PORT of the head's API (e.g. 192.168.1.10:8470), got '$address'"
    [[ -z $fingerprint || $fingerprint =~ ^sha256:[0-9a-fA-F]{64}$ ]] \
        || die "--ca-fingerprint: expected sha256: and 64 hex digits, as the head's join line shows"
    [[ -z $name || $name =~ ^[A-Za-z0-9._-]+$ ]] \
        || die "--name: expected letters, digits or ._- only, got '$name'"
    local token
    token=$(read_token "$token_file")

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
        # Checked before anything changes (as sd_booted does): a container has systemctl
        # without systemd, and would otherwise end up half installed.
        [[ -d /run/systemd/system ]] \
            || die "systemd is not running here (no /run/systemd/system); run the agent by hand: salvage worker join --help"
        "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || die "--python: expected Python 3.11 or newer, got $("$python" --version 2>&1)"
    fi

    if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
        run useradd --system --home-dir "$STATE_DIR" --shell /usr/sbin/nologin "$SERVICE_USER"
    fi
    run "$python" -m venv "$VENV"
    if ((!dry_run)) && ! runuser -u "$SERVICE_USER" -- "$VENV/bin/python" -c '' 2>/dev/null; then
        die "--python: the $SERVICE_USER user cannot run $python (under root's home?); give the system's, e.g. --python /usr/bin/python3"
    fi
    run "$VENV/bin/pip" install --upgrade "$source"
    printf '%s' "$token" | write_file "$TOKEN_FILE" 600 "$SERVICE_USER" "the cluster's token"
    env_text "$address" "$fingerprint" "$name" | write_file "$ENV_FILE" 644
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
