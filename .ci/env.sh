# Sourced by .ci/test and .ci/demo. Installs what the build needs, once, and
# points it at PyTorch 2.11.0's libtorch (the version tch 0.24.0 is built for).
#
# Everything heavy lives in a cache outside the checkout, so a fresh clone (as
# CI makes every time) reuses it: $CXR_LED_CACHE, default ~/.cache/cxr-led,
# holds the torch venv (~4.6 GB) and cargo's target dir.

CXR_LED_CACHE="${CXR_LED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cxr-led}"
CXR_LED_TORCH_VERSION=2.11.0
CXR_LED_VENV="$CXR_LED_CACHE/torch-venv"
# The reference side of the parity tests (tests/reference), pinned.
CXR_LED_REFERENCE_PACKAGES="diffusers==0.42.1 numpy==2.4.6 safetensors==0.8.0"

# Installs the named Debian packages that are not installed yet.
cxr_led_apt() {
    local missing=()
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "cxr-led: installing Debian packages: ${missing[*]}" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# A venv with torch==2.11.0 from PyPI; created or repaired only when needed.
cxr_led_torch() {
    mkdir -p "$CXR_LED_CACHE"
    command -v g++ >/dev/null || cxr_led_apt g++
    python3 -m venv --help >/dev/null 2>&1 || cxr_led_apt python3-venv
    (
        # One installer at a time, even with two checkouts building at once.
        flock 9
        if ! "$CXR_LED_VENV/bin/python" -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$CXR_LED_TORCH_VERSION')" 2>/dev/null; then
            echo "cxr-led: installing torch==$CXR_LED_TORCH_VERSION into $CXR_LED_VENV (once, ~4.6 GB)" >&2
            [ -x "$CXR_LED_VENV/bin/pip" ] || python3 -m venv "$CXR_LED_VENV"
            "$CXR_LED_VENV/bin/pip" install --quiet --no-input --disable-pip-version-check "torch==$CXR_LED_TORCH_VERSION"
        fi
        if ! "$CXR_LED_VENV/bin/python" -c "import diffusers, numpy, safetensors, sys; sys.exit(diffusers.__version__ != '0.42.1')" 2>/dev/null; then
            echo "cxr-led: installing the reference packages: $CXR_LED_REFERENCE_PACKAGES" >&2
            # shellcheck disable=SC2086
            "$CXR_LED_VENV/bin/pip" install --quiet --no-input --disable-pip-version-check $CXR_LED_REFERENCE_PACKAGES
        fi
    ) 9>"$CXR_LED_CACHE/.torch.lock"
}

# The environment every cargo command of this project needs.
cxr_led_env() {
    cxr_led_torch
    # charls-sys (JPEG-LS decoding for dicom-pixeldata) builds CharLS with CMake.
    command -v cmake >/dev/null || cxr_led_apt cmake
    # lettre's TLS (alert mail) links the system's OpenSSL.
    cxr_led_apt pkg-config libssl-dev
    export VIRTUAL_ENV="$CXR_LED_VENV"
    export PATH="$CXR_LED_VENV/bin:$PATH"
    # torch-sys asks the venv's python where libtorch is; binaries get an rpath to it.
    export LIBTORCH_USE_PYTORCH=1
    unset LIBTORCH
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CXR_LED_CACHE/target}"
    # The checked queries (sqlx::query!) compile against .sqlx/, never a live
    # database: builds work before PostgreSQL runs, and the same everywhere.
    # `cxr_led_sqlx_check` checks that .sqlx/ matches the migrations.
    export SQLX_OFFLINE=true
}

# sqlx-cli 0.8.6 (the sqlx of Cargo.lock), for `cargo sqlx prepare`.
cxr_led_sqlx_cli() {
    local root="$CXR_LED_CACHE/sqlx-cli"
    if ! "$root/bin/sqlx" --version 2>/dev/null | grep -q " 0\.8\.6$"; then
        echo "cxr-led: installing sqlx-cli 0.8.6 into $root (once)" >&2
        CARGO_TARGET_DIR="$CXR_LED_CACHE/sqlx-cli-build" cargo install --quiet --locked sqlx-cli --version 0.8.6 \
            --no-default-features --features rustls,postgres --root "$root"
    fi
    export PATH="$root/bin:$PATH"
}

# Fails when .sqlx/ (the query descriptions the build compiles against) does
# not match the queries and the schema of migrations/: the queries are
# described afresh against a throw-away database migrated from scratch.
# After changing a query or a migration, run it with CXR_LED_SQLX_WRITE=1
# to rewrite .sqlx/, and commit that. Needs cxr_led_test_services.
cxr_led_sqlx_check() {
    cxr_led_sqlx_cli
    local name="cxrled_sqlx_check_$$"
    local url="${DATABASE_URL%/*}/$name"
    psql "$DATABASE_URL" -qc "CREATE DATABASE $name"
    local status=0
    DATABASE_URL="$url" sqlx migrate run --source migrations >/dev/null || status=$?
    if [ "$status" -eq 0 ]; then
        if [ -n "${CXR_LED_SQLX_WRITE:-}" ]; then
            DATABASE_URL="$url" cargo sqlx prepare --workspace || status=$?
        else
            DATABASE_URL="$url" cargo sqlx prepare --workspace --check || status=$?
        fi
    fi
    psql "$DATABASE_URL" -qc "DROP DATABASE $name WITH (FORCE)"
    return "$status"
}

# What the daemon's tests need: dcmtk (echoscu, storescu, storescp, dcmdump),
# dicom3tools (dciodvfy, the IOD validator of the derived instances), an SMTP
# sink for the alert mail tests (Debian's aiosmtpd, run by the tests as
# /usr/bin/python3 -m aiosmtpd) and a running PostgreSQL that trusts local
# connections of user postgres. Exports DATABASE_URL (tests create and drop
# their own databases on that server). systemd provides systemd-analyze for
# the unit test; openssl makes the throw-away CA and certificates of the
# DICOM TLS tests. Orthanc is the real PACS of the end-to-end tests (tests/),
# which start private instances of it; Debian's package also enables a system
# service, which stays off where systemd does not run (containers, CI).
cxr_led_test_services() {
    cxr_led_apt dcmtk dicom3tools python3-aiosmtpd systemd orthanc openssl
    export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
    if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
        return 0
    fi
    cxr_led_apt postgresql postgresql-client
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    local version
    version="$(ls /etc/postgresql | sort -V | tail -n 1)"
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    # Trust local and loopback connections (a throwaway CI machine).
    if ! $sudo grep -q "cxr-led trust" "$hba"; then
        $sudo sed -i '1i # cxr-led trust\nlocal all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    fi
    $sudo pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null \
        || $sudo pg_ctlcluster --skip-systemctl-redirect "$version" main reload
    local i
    for i in $(seq 1 30); do
        pg_isready -q -h 127.0.0.1 -p 5432 && return 0
        sleep 1
    done
    echo "cxr-led: PostgreSQL did not start" >&2
    return 1
}
