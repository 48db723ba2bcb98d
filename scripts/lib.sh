# Shared by scripts/*.sh: pinned versions and the cache of installed tools.
LITELLM_VERSION="1.106.2"
CARGO_FUZZ_VERSION="0.13.2"
CACHE_DIR="${TOKENGATE_CACHE_DIR:-$HOME/.cache/tokengate}"
LITELLM_VENV="$CACHE_DIR/litellm-$LITELLM_VERSION"
# LibreChat's own packages, for the deployment tests: its config schema and its
# chat client, the newest published (librechat-data-provider 0.8.524 is the package
# of LibreChat v0.8.8-rc4, the release the stack pins).
NPM_PACKAGES="librechat-data-provider@0.8.524 @librechat/agents@3.9.2 js-yaml@4.1.0"
NPM_DIR="$CACHE_DIR/npm-$(printf '%s' "$NPM_PACKAGES" | sha256sum | cut -c1-12)"

# The release before this one: the commit every migration of this one must keep
# working (docs/upgrades.md). Move it to this release's last commit once it lands.
PREVIOUS_RELEASE="cc1ac28e29e13438dd6698d7c3dba65933e8db73"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Installs litellm[proxy] (which brings the openai SDK) into a cached venv.
ensure_litellm() {
  if [ -x "$LITELLM_VENV/bin/litellm" ] && "$LITELLM_VENV/bin/python" -c 'import openai, litellm' 2>/dev/null; then
    return 0
  fi
  log "installing litellm[proxy]==$LITELLM_VERSION into $LITELLM_VENV (about a minute, cached afterwards)"
  rm -rf "$LITELLM_VENV"
  python3 -m venv "$LITELLM_VENV" || die "python3 -m venv failed: install python3-venv"
  # No wheel cache: the venv is the cache, and CI's disk is small.
  "$LITELLM_VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir \
    "litellm[proxy]==$LITELLM_VERSION" \
    || die "could not install litellm[proxy]==$LITELLM_VERSION from PyPI"
}

# cargo-fuzz from crates.io (libFuzzer itself is built by the libfuzzer-sys crate,
# with the machine's C++ compiler).
ensure_cargo_fuzz() {
  if cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then return 0; fi
  command -v c++ >/dev/null || apt_install g++
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION (about a minute, once)"
  cargo install --quiet --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION" \
    || die "could not install cargo-fuzz $CARGO_FUZZ_VERSION from crates.io"
}

# Installs Debian packages (as root; otherwise says what is missing).
apt_install() {
  [ "$(id -u)" = 0 ] || die "missing Debian packages ($*) and this user cannot apt-get install them"
  log "installing Debian packages: $*"
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2 \
    || die "could not install $* with apt-get"
  # The downloaded .deb files are not needed once installed.
  apt-get clean
}

# The tests' real SMTP server is aiosmtpd on Debian's python3; openssl makes the
# certificate for the STARTTLS and implicit-TLS tests.
ensure_smtp_tools() {
  local missing=()
  /usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null || missing+=(python3-aiosmtpd)
  command -v openssl >/dev/null || missing+=(openssl)
  if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
  /usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null || die "python3-aiosmtpd is still missing after install"
}

# Debian's Chromium and chromedriver for the dashboard's browser test (no browser
# download works on the closed network).
ensure_browser() {
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then return 0; fi
  apt_install chromium chromium-driver
}

# Installs LibreChat's npm packages into a cached folder (about a minute the first time).
ensure_npm_packages() {
  command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
  if [ -f "$NPM_DIR/.complete" ]; then return 0; fi
  log "installing $NPM_PACKAGES into $NPM_DIR (about a minute, cached afterwards)"
  rm -rf "$NPM_DIR" && mkdir -p "$NPM_DIR"
  printf '{"private": true}\n' > "$NPM_DIR/package.json"
  # npm's download cache goes in the folder and is removed after: node_modules is
  # the cache that matters, and CI's disk is small.
  # shellcheck disable=SC2086
  (cd "$NPM_DIR" && npm install --no-audit --no-fund --loglevel=error \
      --cache "$NPM_DIR/.npm-cache" $NPM_PACKAGES) >&2 \
    || die "could not install $NPM_PACKAGES from npm"
  rm -rf "$NPM_DIR/.npm-cache"
  touch "$NPM_DIR/.complete"
}

# A Compose implementation to validate docker-compose.yml (Debian's docker-compose
# parses and checks files without a container engine).
ensure_compose() {
  command -v docker-compose >/dev/null || apt_install docker-compose
}

# Finds PostgreSQL's server binaries, installing Debian's packages where missing.
pg_bindir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$dir" ] || [ ! -x "$dir/initdb" ]; then
    log "PostgreSQL server binaries not found"
    apt_install postgresql
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  fi
  [ -x "$dir/initdb" ] || die "PostgreSQL's initdb is still missing after install"
  echo "$dir"
}

# Starts a throwaway PostgreSQL cluster under $1 (a fresh folder) on a free port and
# sets PG_URL; stop_throwaway_postgres stops it. initdb and postgres refuse to run
# as root, so as root they run as the postgres system user.
start_throwaway_postgres() {
  PG_WORK=$1
  PGBIN=$(pg_bindir)
  PGDATA="$PG_WORK/pgdata"
  PGPORT=$(free_port)
  mkdir -p "$PGDATA"
  chmod 755 "$PG_WORK"
  [ "$(id -u)" = 0 ] && chown postgres "$PGDATA" "$PG_WORK"
  log "starting a throwaway PostgreSQL on 127.0.0.1:$PGPORT"
  as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --no-locale >"$PG_WORK/initdb.log" 2>&1 \
    || { cat "$PG_WORK/initdb.log" >&2; die "initdb failed"; }
  as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PG_WORK/postgres.log" -w \
    -o "-p $PGPORT -k $PG_WORK -c listen_addresses=127.0.0.1 -c max_connections=400" start >/dev/null \
    || { cat "$PG_WORK/postgres.log" >&2; die "PostgreSQL did not start"; }
  PG_URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
}

stop_throwaway_postgres() {
  [ -n "${PGDATA:-}" ] && as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1 || true
}

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Podman (Debian's) builds and runs the container image in the tests. No registry is
# reachable, so the image's base is made from Debian's packages with debootstrap,
# once per machine; the sandbox cannot raise ulimits, so containers get none.
PODMAN_BASE="localhost/tokengate-test-base:bookworm"
ensure_podman() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
  mkdir -p "$CACHE_DIR"
  CONTAINERS_CONF="$CACHE_DIR/containers.conf"
  printf '[containers]\ndefault_ulimits = []\n' > "$CONTAINERS_CONF"
  export CONTAINERS_CONF
  if podman image exists "$PODMAN_BASE" 2>/dev/null; then return 0; fi
  log "making a Debian bookworm base image with debootstrap (about 30 s, once)"
  local root
  root=$(mktemp -d /tmp/tokengate-rootfs.XXXXXX)
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$root.log" 2>&1 \
    || { tail -20 "$root.log" >&2; rm -rf "$root" "$root.log"; die "debootstrap failed"; }
  tar -C "$root" -c . | podman import --quiet - "$PODMAN_BASE" >/dev/null \
    || { rm -rf "$root" "$root.log"; die "podman import of the base image failed"; }
  rm -rf "$root" "$root.log"
}

# Builds the previous release's binary (PREVIOUS_RELEASE) into PREVIOUS_BIN, once per
# commit. It is built from `git archive` of that commit, renamed (package, library
# and binary tokengate-previous) so that it shares this checkout's target folder,
# and with it every compiled dependency, without replacing any of this checkout's
# own files.
ensure_previous_release() {
  local root cache src
  root=$(pwd)
  cache="$CACHE_DIR/previous-release-$PREVIOUS_RELEASE"
  PREVIOUS_BIN="$cache/tokengate"
  [ -x "$PREVIOUS_BIN" ] && return 0
  git cat-file -e "$PREVIOUS_RELEASE^{commit}" 2>/dev/null \
    || die "the previous release $PREVIOUS_RELEASE is not in this clone (a shallow clone? git fetch --unshallow)"
  log "building the previous release ${PREVIOUS_RELEASE:0:12} (for the upgrade test; cached afterwards)"
  src=$(mktemp -d /tmp/tokengate-previous.XXXXXX)
  git archive "$PREVIOUS_RELEASE" | tar -x -C "$src"
  python3 - "$src/Cargo.toml" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
text = text.replace('name = "tokengate"', 'name = "tokengate-previous"', 1)
text = text.replace('[lib]\n', '[lib]\nname = "tokengate_previous"\n', 1)
text = re.sub(r'\[\[bin\]\]\nname = "tokengate"', '[[bin]]\nname = "tokengate-previous"', text, count=1)
open(path, "w").write(text)
main = path.replace("Cargo.toml", "src/main.rs")
code = open(main).read().replace("tokengate::", "tokengate_previous::")
open(main, "w").write(code)
PY
  (cd "$src" && CARGO_TARGET_DIR="$root/target" cargo build --quiet --bin tokengate-previous) \
    || { rm -rf "$src"; die "the previous release did not build"; }
  mkdir -p "$cache"
  cp "$root/target/debug/tokengate-previous" "$PREVIOUS_BIN"
  rm -rf "$src"
}

