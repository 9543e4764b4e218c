# shellcheck shell=bash
# Shared helpers for scripts/test.sh and scripts/demo.sh. Source it; do not run it.

# Debian packages the project needs to build and test.
QCOW2D_DEB_PACKAGES=(
	libuv1-dev liburing-dev libjansson-dev libcmocka-dev libmicrohttpd-dev
	meson ninja-build zlib1g-dev libzstd-dev pkg-config
	qemu-utils qemu-system-common fio gcc g++ python3
	clang libclang-rt-14-dev cppcheck
	python3-jsonschema python3-prometheus-client systemd
)

# The repository root (the parent of scripts/).
qcow2d_root() {
	local here
	here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
	dirname "$here"
}

# True if the Debian package is fully installed.
deb_installed() {
	local status
	status=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) || return 1
	[[ $status == "install ok installed" ]]
}

# Install the missing packages of QCOW2D_DEB_PACKAGES (apt-get update and
# install only when something is missing). Returns non-zero on failure.
ensure_deps() {
	local missing=() p sudo=()
	if ! command -v dpkg-query >/dev/null 2>&1; then
		echo "ensure_deps: not a Debian system (no dpkg-query); skipping package check" >&2
		return 0
	fi
	for p in "${QCOW2D_DEB_PACKAGES[@]}"; do
		deb_installed "$p" || missing+=("$p")
	done
	if ((${#missing[@]} == 0)); then
		return 0
	fi
	echo "==> installing missing packages: ${missing[*]}"
	if ((EUID != 0)); then
		if command -v sudo >/dev/null 2>&1; then
			sudo=(sudo)
		else
			echo "ensure_deps: need root (or sudo) to install: ${missing[*]}" >&2
			return 1
		fi
	fi
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q || return 1
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" || return 1
}

# meson_setup DIR ARGS...: configure DIR with ARGS, reusing an existing build
# directory (--reconfigure) and wiping it when that fails.
meson_setup() {
	local dir=$1
	shift
	if [[ -f $dir/meson-private/coredata.dat ]]; then
		if meson setup --reconfigure "$dir" "$@"; then
			return 0
		fi
		echo "==> reconfiguring $dir failed; wiping it" >&2
		meson setup --wipe "$dir" "$@" && return 0
	fi
	rm -rf "$dir"
	meson setup "$dir" "$@"
}

# section TITLE: a visible header.
section() {
	printf '\n======== %s ========\n' "$*"
}
