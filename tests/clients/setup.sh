#!/usr/bin/env bash
# Installs the real clients the integration tests drive, once per checkout (idempotent):
#   - Python packages into a virtualenv at target/clients/venv: the OpenTelemetry Python
#     SDK with its OTLP/HTTP and OTLP/gRPC exporters, and Python `deltalake` (another Delta
#     reader, to check that tracelake's tables stay standard) with `pyarrow`, and the ADBC
#     Flight SQL driver with its driver manager;
#   - npm packages under target/clients/node: the OpenTelemetry JavaScript SDK with its
#     OTLP/HTTP (JSON) exporter, and playwright-core (drives the system's Chromium).
#   - Debian's chromium (apt-get, as root or with sudo), when it is missing.
# Needs python3 (with venv) and npm, and the package registries. The tests run it themselves
# the first time they need a client; .ci/run runs it up front.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=target/clients
mkdir -p "$root"

python_packages=(
  "opentelemetry-api==1.45.2"
  "opentelemetry-sdk==1.45.2"
  "opentelemetry-exporter-otlp-proto-http==1.45.2"
  "opentelemetry-exporter-otlp-proto-grpc==1.45.2"
  "deltalake==1.6.6"
  "pyarrow==26.0.1"
  # The independent protobuf decoder of tests/clients/tempo_client.py (also an exporter
  # dependency; pinned here because the Tempo API tests use it directly).
  "protobuf==7.36.2"
  # Flight SQL clients of tests/clients/flight_sql_client.py: the ADBC driver manager and
  # the ADBC Flight SQL driver (a Go implementation shipped in the wheel).
  "adbc-driver-manager==1.13.0"
  "adbc-driver-flightsql==1.13.0"
)
node_packages=(
  "@opentelemetry/api@1.10.0"
  "@opentelemetry/sdk-trace@3.1.0"
  "@opentelemetry/resources@3.1.1"
  "@opentelemetry/exporter-trace-otlp-http@0.301.0"
  # Drives Debian's Chromium (/usr/bin/chromium; .ci/run installs it) for the trace view's
  # tests (tests/clients/trace_view.js). playwright-core downloads no browser.
  "playwright-core@1.65.2"
)

# One installer at a time (test binaries run in parallel).
exec 9>"$root/.lock"
flock 9

# Debian's Chromium for the trace view's browser test (tests/it/ui.rs), when missing and this
# user may install packages.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "tests/clients/setup.sh: installing Debian's chromium" >&2
  if [[ "$(id -u)" == 0 ]]; then
    (apt-get install -y chromium || (apt-get update && apt-get install -y chromium)) >/dev/null 2>&1 || true
  elif sudo -n true 2>/dev/null; then
    (sudo apt-get install -y chromium || (sudo apt-get update && sudo apt-get install -y chromium)) \
      >/dev/null 2>&1 || true
  fi
fi

stamp="$root/.installed"
want="$(printf '%s\n' "${python_packages[@]}" "${node_packages[@]}" | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi

echo "tests/clients/setup.sh: installing the Python and npm clients under $root" >&2
rm -rf "$root/venv" "$root/node"
python3 -m venv "$root/venv"
"$root/venv/bin/pip" install --quiet --disable-pip-version-check "${python_packages[@]}"

mkdir -p "$root/node"
(
  cd "$root/node"
  printf '{"name":"tracelake-test-clients","private":true}\n' > package.json
  npm install --silent --no-audit --no-fund "${node_packages[@]}"
)
echo "$want" > "$stamp"
