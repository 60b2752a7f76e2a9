#!/usr/bin/env bash
# Validates the Kubernetes manifests offline, for Kubernetes 1.33: renders `kubectl kustomize
# deploy/` (and once more with the optional components deploy/components/*), then
#  - every object of a built-in kind with `kubernetes-validate --strict -k 1.33.0` (PyPI);
#    kubernetes-validate only *warns* about a kind it has no schema for and passes it, so any
#    warning counts as a failure here: an object nobody validated is not a valid one;
#  - every object of a kind defined by a rendered CustomResourceDefinition (and the egret.dev
#    objects of examples/) against that CRD's openAPIV3Schema, strictly (unknown fields
#    rejected, as `kubectl apply --validate=strict` does), with the jsonschema library that
#    kubernetes-validate brings.
# Fails on any invalid manifest. Installs kubectl (Debian's kubernetes-client) and
# kubernetes-validate (into a venv under target/) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=1.33.0

apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "error: $* missing; run as root to have it installed with apt-get" >&2
    exit 1
  fi
  echo "installing: $*"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v kubectl >/dev/null || apt_install kubernetes-client
command -v python3 >/dev/null || apt_install python3
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || apt_install python3-venv

venv=target/manifest-check-venv
if ! "$venv/bin/kubernetes-validate" --version >/dev/null 2>&1; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

kubectl kustomize deploy/ >"$work/base.yaml"
# The optional components, rendered on top of the base (kustomize takes only relative paths,
# so this kustomization lives inside the tree, under target/).
all=target/manifest-check-all
rm -rf "$all" && mkdir -p "$all"
{
  echo "apiVersion: kustomize.config.k8s.io/v1beta1"
  echo "kind: Kustomization"
  echo "resources: [../../deploy]"
  echo "components:"
  for c in deploy/components/*/; do echo "- ../../${c%/}"; done
} >"$all/kustomization.yaml"
kubectl kustomize "$all" >"$work/all.yaml"

"$venv/bin/python" - "$K8S_VERSION" "$work" "$work/base.yaml" "$work/all.yaml" <<'EOF'
import glob, json, subprocess, sys, os
import jsonschema, yaml

version, work, renders = sys.argv[1], sys.argv[2], sys.argv[3:]
failures = []

def docs(path):
    out = []
    def add(d):
        if isinstance(d, list):
            for x in d:
                add(x)
        elif isinstance(d, dict) and d.get("kind") == "List":
            add(d.get("items") or [])
        elif d:
            out.append(d)
    with open(path) as f:
        for d in yaml.safe_load_all(f):
            add(d)
    return out

def strict(schema):
    """Rejects unknown fields like the API server's strict field validation does, except
    where the schema says to keep them."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
    elif isinstance(schema, list):
        schema = [strict(s) for s in schema]
    return schema

def crd_schemas(objs):
    out = {}
    for o in objs:
        if o.get("kind") != "CustomResourceDefinition":
            continue
        spec = o["spec"]
        for v in spec["versions"]:
            s = strict(v["schema"]["openAPIV3Schema"])
            # apiVersion, kind and metadata are checked by the API server itself.
            for k in ("apiVersion", "kind", "metadata"):
                s.setdefault("properties", {}).setdefault(k, {})
            out[(spec["group"] + "/" + v["name"], spec["names"]["kind"])] = s
    return out

def name(o):
    return "%s %s/%s" % (o.get("apiVersion"), o.get("kind"), (o.get("metadata") or {}).get("name"))

def check_custom(o, schema, where):
    errs = sorted(jsonschema.Draft7Validator(schema).iter_errors(o), key=lambda e: list(e.path))
    for e in errs:
        failures.append("%s: %s: %s: %s" % (where, name(o), ".".join(map(str, e.path)) or "(root)", e.message))
    return not errs

total = 0
for render in renders:
    objs = docs(render)
    schemas = crd_schemas(objs)
    builtin = []
    for o in objs:
        key = (o.get("apiVersion"), o.get("kind"))
        if key in schemas:
            total += check_custom(o, schemas[key], render)
        elif "." in o.get("apiVersion", "").split("/")[0] and not o["apiVersion"].split("/")[0].endswith(".k8s.io"):
            failures.append("%s: %s: no CustomResourceDefinition in the render defines this kind" % (render, name(o)))
        else:
            builtin.append(o)
    path = os.path.join(work, "builtin.yaml")
    with open(path, "w") as f:
        yaml.safe_dump_all(builtin, f)
    r = subprocess.run(["kubernetes-validate", "--strict", "--quiet", "-k", version, path],
                       capture_output=True, text=True, env=dict(os.environ, PATH=os.path.dirname(sys.executable) + ":" + os.environ["PATH"]))
    out = (r.stdout + r.stderr).strip()
    # Any line at all is a warning (no schema: not validated), an error or a fatal problem.
    if r.returncode != 0 or out:
        failures.append("%s: kubernetes-validate (exit %d):\n%s" % (render, r.returncode, out))
    else:
        total += len(builtin)
    # The egret.dev examples must be valid for the CRDs that deploy/ installs.
    if render == renders[0]:
        for f in sorted(glob.glob("examples/**/*.yaml", recursive=True)):
            for o in docs(f):
                key = (o.get("apiVersion"), o.get("kind"))
                if str(key[0]).startswith("egret.dev/"):
                    if key not in schemas:
                        failures.append("%s: %s: no CRD for it in deploy/" % (f, name(o)))
                    else:
                        total += check_custom(o, schemas[key], f)

for f in failures:
    print("INVALID " + f)
if failures:
    print("manifests: %d invalid (Kubernetes %s)" % (len(failures), version))
    sys.exit(1)
print("manifests: %d objects valid for Kubernetes %s (deploy/ with and without its components, egret.dev examples)" % (total, version))
EOF
