#!/bin/sh
# Lattice installer: puts lattice-ctl and lattice-daemon in a private virtualenv and
# links them into ~/.local/bin. No root needed; never touches an existing config.
#
#   curl -fsSL https://<gateway>/install.sh | sh                       # install / upgrade
#   curl -fsSL https://<gateway>/install.sh | sh -s -- --uninstall [--purge]
#   sh install.sh                                     # from a checkout: installs the checkout
#
# A gateway serves this script at /install.sh with SERVED_PACKAGE set to a wheel of its
# own version, which it serves too: the daemon then matches the gateway it pairs with.
#
# Environment:
#   LATTICE_PYTHON       the Python 3.10+ to use (default: the newest python3.x on PATH)
#   LATTICE_INSTALL_DIR  the virtualenv (default: <user data dir>/lattice/venv)
#   LATTICE_BIN_DIR      where the commands are linked (default: ~/.local/bin)
#   LATTICE_PACKAGE      what pip installs: a version (==0.1.0), a wheel file, a URL or a
#                        source directory (default: the gateway's wheel when a gateway
#                        served this script; the checkout when run from one; else the
#                        package lattice-runtimes from the package index)
#                        The daemon extra is added unless it names its extras, e.g. pkg[daemon]
#   LATTICE_PIP_ARGS     extra pip arguments, e.g. "--no-index --find-links DIR"
#
# Everything happens in main(), called on the very last line: a download cut short
# defines functions at most and runs nothing.

PACKAGE_NAME="lattice-runtimes"
EXTRA="daemon" # lattice-ctl and lattice-daemon need it; the package alone is the SDK
# Set by the gateway that serves this script (GET /install.sh): its own wheel's URL.
SERVED_PACKAGE=""
MARKER_FILE=".lattice-install"  # marks a virtualenv this script created (safe to remove)

say() {
    printf 'lattice: %s\n' "$*"
}

warn() {
    printf 'lattice: warning: %s\n' "$*" >&2
}

die() {
    printf 'lattice: error: %s\n' "$*" >&2
    exit 1
}

usage() {
    cat <<'EOF'
Usage: install.sh [--uninstall [--purge]]

  (no option)   install Lattice, or upgrade an existing install in place
  --uninstall   remove the install, the command links and the user service;
                config, keys, logs and the daemon's data (activity) are kept
  --purge       with --uninstall: also remove the daemon's config, keys, logs and data
EOF
}

detect_platform() {
    os_name=$(uname -s 2>/dev/null || echo unknown)
    arch=$(uname -m 2>/dev/null || echo unknown)
    case "$os_name" in
        Linux) platform=linux ;;
        Darwin) platform=macos ;;
        *) die "unsupported operating system: $os_name. Lattice runs on Linux and macOS." ;;
    esac
    case "$arch" in
        x86_64 | amd64 | aarch64 | arm64) ;;
        *) warn "untested architecture $arch: pip may need a compiler for PyNaCl and psutil" ;;
    esac
}

set_locations() {
    case "$platform" in
        macos) data_home="$HOME/Library/Application Support" ;;
        *) data_home="${XDG_DATA_HOME:-$HOME/.local/share}" ;;
    esac
    venv_dir="${LATTICE_INSTALL_DIR:-$data_home/lattice/venv}"
    bin_dir="${LATTICE_BIN_DIR:-$HOME/.local/bin}"
}

python_is_usable() {
    # 3.10 or newer, with venv and ensurepip (Debian ships them as python3-venv).
    "$1" -c 'import sys, venv, ensurepip; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
        >/dev/null 2>&1
}

python_help() {
    case "$platform" in
        macos)
            echo "Install one with Homebrew (brew install python@3.12) or from" \
                "https://www.python.org/downloads/macos/, or set LATTICE_PYTHON=/path/to/python3."
            ;;
        *)
            echo "Install one: Debian/Ubuntu: sudo apt install python3 python3-venv;" \
                "Fedora: sudo dnf install python3; Arch: sudo pacman -S python;" \
                "or https://www.python.org/downloads/ - or set LATTICE_PYTHON=/path/to/python3."
            ;;
    esac
}

find_python() {
    if [ -n "${LATTICE_PYTHON:-}" ]; then
        if ! command -v "$LATTICE_PYTHON" >/dev/null 2>&1; then
            die "LATTICE_PYTHON=$LATTICE_PYTHON is not an executable program. $(python_help)"
        fi
        if ! python_is_usable "$LATTICE_PYTHON"; then
            die "LATTICE_PYTHON=$LATTICE_PYTHON is not Python 3.10+ with the venv module. $(python_help)"
        fi
        python="$LATTICE_PYTHON"
        return
    fi
    for candidate in python3.13 python3.12 python3.11 python3.10 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && python_is_usable "$candidate"; then
            python=$(command -v "$candidate")
            return
        fi
    done
    if command -v python3 >/dev/null 2>&1; then
        found=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo "?")
        die "python3 ($found) is older than 3.10 or lacks the venv module. $(python_help)"
    fi
    die "no Python 3.10+ found on PATH. $(python_help)"
}

checkout_dir() {
    # The source checkout this script was run from (`sh install.sh`), if any. Piped
    # (`curl ... | sh`), $0 is the shell and there is none.
    case "$0" in
        install.sh | */install.sh) ;;
        *) return 0 ;;
    esac
    dir=$(cd "$(dirname "$0")" 2>/dev/null && pwd) || return 0
    if [ -f "$dir/pyproject.toml" ] && grep -q "^name = \"$PACKAGE_NAME\"" "$dir/pyproject.toml"; then
        printf '%s\n' "$dir"
    fi
}

package_spec() {
    # The package with its `daemon` extra: lattice-ctl's and the daemon's dependencies
    # (the package alone is the Python SDK's, for app backends).
    default_spec="$SERVED_PACKAGE"
    if [ -z "$default_spec" ]; then
        default_spec=$(checkout_dir)
    fi
    spec="${LATTICE_PACKAGE:-${default_spec:-$PACKAGE_NAME}}"
    case "$spec" in
        *\[*) ;; # names its extras itself
        # a bare version constraint applies to the published package
        ==* | \>=* | \<=* | ~=* | !=*) spec="${PACKAGE_NAME}[$EXTRA]$spec" ;;
        *" @ "*) with_extra_after_name ;; # name @ URL
        *://*) spec="${PACKAGE_NAME}[$EXTRA] @ $spec" ;;
        # a wheel, an sdist or a source directory: pip's PATH[extra] form
        */* | *.whl | *.tar.gz | *.zip) spec="${spec}[$EXTRA]" ;;
        *) with_extra_after_name ;; # name, maybe with a version constraint
    esac
}

with_extra_after_name() {
    name="${spec%%[<>=!~;@ ]*}"
    spec="${name}[$EXTRA]${spec#"$name"}"
}

installed_version() {
    if [ -x "$venv_dir/bin/lattice-ctl" ]; then
        "$venv_dir/bin/lattice-ctl" --version 2>/dev/null | awk '{print $NF}'
    fi
}

create_venv() {
    if [ -x "$venv_dir/bin/python" ] && "$venv_dir/bin/python" -c 'import sys' >/dev/null 2>&1; then
        return
    fi
    if [ -e "$venv_dir" ]; then
        # An existing directory: reuse only our own (broken) venv, never someone's folder.
        if [ ! -f "$venv_dir/$MARKER_FILE" ]; then
            die "$venv_dir exists and is not a Lattice install; move it away or set LATTICE_INSTALL_DIR."
        fi
        say "the virtualenv in $venv_dir is broken (Python moved or upgraded?); recreating it"
        rm -rf "$venv_dir"
    fi
    say "creating a virtualenv in $venv_dir"
    mkdir -p "$(dirname "$venv_dir")"
    venv_created=1
    "$python" -m venv "$venv_dir" || {
        remove_new_venv
        die "could not create a virtualenv in $venv_dir. $(python_help)"
    }
    : >"$venv_dir/$MARKER_FILE"
}

remove_new_venv() {
    # A first install that failed leaves nothing behind; an upgrade keeps the old install.
    [ "${venv_created:-0}" = 1 ] || return 0
    rm -rf "$venv_dir"
    rmdir "$(dirname "$venv_dir")" 2>/dev/null || true # the data dir, if now empty
}

pip_install() {
    say "installing $spec"
    # LATTICE_PIP_ARGS is split into words on purpose (several pip options).
    # shellcheck disable=SC2086
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv_dir/bin/python" -m pip install --quiet \
        --upgrade ${LATTICE_PIP_ARGS:-} "$spec" || {
        remove_new_venv
        die "pip could not install $spec (see the pip output above)."
    }
}

link_commands() {
    mkdir -p "$bin_dir"
    for command in lattice-ctl lattice-daemon; do
        target="$venv_dir/bin/$command"
        [ -x "$target" ] || die "the package did not provide $command ($target is missing)."
        link="$bin_dir/$command"
        if [ -e "$link" ] && [ ! -L "$link" ]; then
            warn "$link exists and is not a link; left as is (run $target directly)"
            continue
        fi
        ln -sf "$target" "$link"
    done
}

path_advice() {
    case ":$PATH:" in
        *":$bin_dir:"*) return ;;
    esac
    case "${SHELL:-}" in
        */zsh) rc_file="$HOME/.zshrc" ;;
        */bash) rc_file="$HOME/.bashrc" ;;
        */fish) rc_file="" ;;
        *) rc_file="$HOME/.profile" ;;
    esac
    say "$bin_dir is not on your PATH. Add it:"
    if [ -n "$rc_file" ]; then
        # shellcheck disable=SC2016  # printed for the user to paste, not expanded here
        printf '    echo '\''export PATH="%s:$PATH"'\'' >> %s && export PATH="%s:$PATH"\n' \
            "$bin_dir" "$rc_file" "$bin_dir"
    else
        printf '    fish_add_path %s\n' "$bin_dir"
    fi
}

restart_service_if_installed() {
    # $1: "upgraded" when the version changed
    ctl="$venv_dir/bin/lattice-ctl"
    if "$ctl" --json service status 2>/dev/null | grep -q '"installed": true'; then
        say "restarting the Lattice service"
        "$ctl" service install ||
            warn "could not restart the service; run: lattice-ctl service install"
    elif [ "$1" = upgraded ] && "$ctl" --json ping >/dev/null 2>&1; then
        say "a Lattice daemon is running the old version; restart it: lattice-ctl daemon restart"
    fi
}

do_install() {
    find_python
    say "installing Lattice for $os_name/$arch with $python"
    package_spec
    before=$(installed_version)
    create_venv
    pip_install
    after=$(installed_version)
    [ -n "$after" ] || {
        remove_new_venv
        die "the install finished but $venv_dir/bin/lattice-ctl does not run."
    }
    link_commands
    if [ -z "$before" ]; then
        say "installed lattice-ctl and lattice-daemon $after in $bin_dir"
    elif [ "$before" = "$after" ]; then
        say "Lattice $after is already installed and up to date"
        restart_service_if_installed same
    else
        say "upgraded Lattice from $before to $after"
        restart_service_if_installed upgraded
    fi
    path_advice
    if [ -z "$before" ]; then
        say "next: pair this machine with the command your app shows you:"
        say "    lattice-ctl relay connect --gateway '<url>' --bootstrap-token '<token>'"
        say "then run the daemon at login: lattice-ctl service install (or: lattice-ctl daemon start)"
    fi
}

state_dirs() {
    # The daemon's own answer (platformdirs, LATTICE_HOME) when it is still installed.
    "$venv_dir/bin/python" -c '
from lattice_daemon.paths import get_paths
p = get_paths()
for d in (p.config_dir, p.data_dir, p.log_dir, p.runtime_dir):
    print(d)' 2>/dev/null && return
    if [ -n "${LATTICE_HOME:-}" ]; then
        printf '%s\n' "$LATTICE_HOME/config" "$LATTICE_HOME/data" "$LATTICE_HOME/logs" \
            "$LATTICE_HOME/run"
    elif [ "$platform" = macos ]; then
        printf '%s\n' "$HOME/Library/Application Support/lattice" "$HOME/Library/Logs/lattice"
    else
        printf '%s\n' "${XDG_CONFIG_HOME:-$HOME/.config}/lattice" \
            "${XDG_DATA_HOME:-$HOME/.local/share}/lattice" \
            "${XDG_STATE_HOME:-$HOME/.local/state}/lattice"
    fi
}

purge_dir() {
    # Earlier gateways kept their default database (gateway.db) in the daemon's data dir:
    # a gateway's records are not the daemon's to delete.
    if [ -e "$1/gateway.db" ]; then
        find "$1" -mindepth 1 -maxdepth 1 ! -name gateway.db ! -name gateway.db-wal \
            ! -name gateway.db-shm -exec rm -rf {} +
        say "kept $1/gateway.db: a gateway's database, not the daemon's"
        return
    fi
    rm -rf "$1"
    say "removed $1"
    rmdir "$(dirname "$1")" 2>/dev/null || true # e.g. ~/.local/state/lattice
}

do_uninstall() {
    ctl="$venv_dir/bin/lattice-ctl"
    purge_list=""
    # Ask the installed code where its files are before that code is removed.
    if [ "$purge" = 1 ]; then
        purge_list=$(state_dirs)
    fi
    if [ -x "$ctl" ]; then
        "$ctl" service uninstall >/dev/null 2>&1 || warn "could not remove the user service"
        "$ctl" daemon stop >/dev/null 2>&1 || true
    fi
    for command in lattice-ctl lattice-daemon; do
        link="$bin_dir/$command"
        if [ -L "$link" ]; then
            case "$(readlink "$link")" in
                "$venv_dir"/*) rm -f "$link" ;;
                *) warn "$link points elsewhere; left as is" ;;
            esac
        fi
    done
    rmdir "$bin_dir" 2>/dev/null || true # only if nothing else lives there
    if [ -e "$venv_dir" ]; then
        [ -f "$venv_dir/$MARKER_FILE" ] ||
            die "$venv_dir is not a Lattice install (no $MARKER_FILE); not removing it."
        rm -rf "$venv_dir"
        say "removed $venv_dir"
        rmdir "$(dirname "$venv_dir")" 2>/dev/null || true # the data dir, if now empty
    else
        say "no install found in $venv_dir"
    fi
    if [ "$purge" = 1 ]; then
        printf '%s\n' "$purge_list" | while IFS= read -r dir; do
            [ -n "$dir" ] && [ -e "$dir" ] || continue
            purge_dir "$dir"
        done
        say "Lattice is uninstalled; config, keys, logs and data are removed"
    else
        say "Lattice is uninstalled; your config, keys, logs and activity are kept (remove them too: --uninstall --purge)"
    fi
}

main() {
    set -eu
    action=install
    purge=0
    for argument in "$@"; do
        case "$argument" in
            --uninstall) action=uninstall ;;
            --purge) purge=1 ;;
            -h | --help)
                usage
                return 0
                ;;
            *)
                usage >&2
                printf 'lattice: error: unknown option: %s\n' "$argument" >&2
                exit 2
                ;;
        esac
    done
    if [ "$purge" = 1 ] && [ "$action" != uninstall ]; then
        die "--purge only goes with --uninstall"
    fi
    [ -n "${HOME:-}" ] || die "HOME is not set"
    detect_platform
    set_locations
    if [ "$action" = uninstall ]; then
        do_uninstall
    else
        do_install
    fi
}

main "$@"
