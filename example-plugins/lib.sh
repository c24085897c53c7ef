# Shared by the example plugins' build scripts (sourced, not run): where the build puts
# things, how a guest toolchain is installed on first use, and how a built plugin enters the
# plugin directory.
#
# Toolchains live under target/tools (ignored by git, kept between builds), so only the first
# build pays for installing them; `rm -rf target/tools` starts over.

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
tools="$target_dir/tools"
wit="$root/wit"

say() { echo "example-plugins: $*" >&2; }
die() {
    say "$*"
    exit 1
}

# took STARTED WHAT: says how long WHAT took, from STARTED (a value of $SECONDS).
took() { say "$2 took $((SECONDS - $1)) s"; }

# quiet COMMAND...: runs COMMAND, showing its output only if it fails.
quiet() {
    local output
    if ! output="$("$@" 2>&1)"; then
        echo "$output" >&2
        die "failed: $*"
    fi
}

# fresh STAMP OUTPUT INPUT...: true if OUTPUT exists and STAMP holds the hash of the INPUTs
# (files, or directories taken whole) from the last build of OUTPUT.
fresh() {
    local stamp="$1" output="$2"
    shift 2
    [[ -e "$output" && -e "$stamp" ]] && [[ "$(inputs_hash "$@")" == "$(cat "$stamp")" ]]
}

# record STAMP INPUT...: remembers the INPUTs' hash once their output is built.
record() {
    local stamp="$1"
    shift
    mkdir -p "$(dirname "$stamp")"
    inputs_hash "$@" >"$stamp"
}

# The hash covers names relative to the repository, so that how a script was called (by a
# relative or an absolute path) does not matter.
inputs_hash() {
    local relative=() input
    for input in "$@"; do relative+=("$(realpath --relative-to="$root" "$input")"); done
    (cd "$root" && find "${relative[@]}" -type f ! -name '*.pyc' -print0 | sort -z \
        | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}

# install_plugin BUILT DEST: puts a built component into the plugin directory, only if its
# bytes changed, and by rename so that a runner watching the directory never sees half a file.
install_plugin() {
    local built="$1" dest="$2"
    if ! cmp -s "$built" "$dest"; then
        cp "$built" "$dest.tmp.$$"
        mv "$dest.tmp.$$" "$dest"
    fi
}

# apt_install PACKAGE...: installs the Debian packages that are missing (as root, or with
# passwordless sudo); otherwise says what to run.
apt_install() {
    local missing=() package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$package")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        sudo -n true 2>/dev/null || die "missing Debian packages; run: sudo apt-get install ${missing[*]}"
        sudo=(sudo -n)
    fi
    say "installing ${missing[*]} (apt, first build only)"
    local started=$SECONDS
    quiet "${sudo[@]}" apt-get update -qq
    quiet "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
    took "$started" "apt-get install"
}

# cargo_tool BINARY CRATE VERSION [CARGO INSTALL FLAGS...]: installs a Rust tool from crates.io
# into target/tools/bin at exactly VERSION (with its own lockfile), unless it is there.
cargo_tool() {
    local binary="$1" crate="$2" version="$3"
    shift 3
    local have
    have="$("$tools/bin/$binary" --version 2>/dev/null | awk '{print $2}')" || true
    [[ "$have" == "$version" ]] && return 0
    say "installing $crate $version into $tools/bin (cargo install, first build only; minutes)"
    local started=$SECONDS
    "${CARGO:-cargo}" install --quiet --locked --force --root "$tools" \
        --target-dir "$tools/cargo-target" "$crate@$version" "$@" >&2
    took "$started" "cargo install $crate"
}

# fetch URL SHA256 DEST: downloads URL to DEST unless DEST is there, and checks its sha256.
fetch() {
    local url="$1" sha256="$2" dest="$3"
    [[ -e "$dest" ]] && return 0
    say "downloading $url"
    mkdir -p "$(dirname "$dest")"
    curl -fsSL --retry 3 "$url" -o "$dest.part" || die "cannot download $url"
    echo "$sha256  $dest.part" | sha256sum -c --quiet - >&2 || die "$url: unexpected sha256"
    mv "$dest.part" "$dest"
}

# build_plugins DIR OUT BUILD_DIR BUILD [INPUT...]: builds each plugin directory in DIR (one
# per plugin, named by its job type; a directory whose name starts with _ is not a plugin) with `BUILD PLUGIN BUILT`, BUILT being where the
# component goes under BUILD_DIR, and puts it in OUT as <plugin>.wasm. A plugin whose
# sources, the WIT contract, the calling build script and the INPUTs (the toolchain's pins)
# are unchanged since it was built is not built again.
build_plugins() {
    local dir="$1" out="$2" build_dir="$3" build="$4"
    shift 4
    local plugin
    for plugin in "$dir"/*/; do
        plugin="$(basename "$plugin")"
        [[ "$plugin" == _* ]] && continue  # shared sources, not a plugin
        # shellcheck disable=SC2053  # a pattern, on purpose
        [[ -n "${EXAMPLE_PLUGINS_ONLY:-}" && "$plugin" != $EXAMPLE_PLUGINS_ONLY ]] && continue
        local built="$build_dir/$plugin.wasm"
        local inputs=("$dir/$plugin" "$wit" "$0" "$@")
        if ! fresh "$built.stamp" "$built" "${inputs[@]}"; then
            say "building $plugin"
            local started=$SECONDS
            mkdir -p "$build_dir"
            "$build" "$plugin" "$built"
            record "$built.stamp" "${inputs[@]}"
            took "$started" "$plugin"
        fi
        install_plugin "$built" "$out/$plugin.wasm"
    done
}
