#!/usr/bin/env bash
# Validates the deployment files with checkers installed from PyPI:
#   deploy/kubernetes/maskpipe.yaml       kubernetes-validate --strict (the Kubernetes OpenAPI schemas it ships)
#   deploy/kubernetes/keda-*.yaml         check-jsonschema, deploy/schemas/keda-scaledobject.schema.json
#   deploy/ecs/task-definition.json       botocore's RegisterTaskDefinition input model
#   docker-compose.yml                    check-jsonschema --builtin-schema vendor.compose-spec
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.data/validate-venv"
if ! "$venv/bin/python" -c 'import kubernetes_validate, check_jsonschema, botocore' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check kubernetes-validate check-jsonschema botocore
fi
cd "$root"
"$venv/bin/kubernetes-validate" --strict --quiet deploy/kubernetes/maskpipe.yaml
"$venv/bin/python" - deploy/kubernetes/keda-scaledobject.yaml >"$root/.data/keda.json" <<'PY'
import json, sys, yaml
print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))
PY
"$venv/bin/python" - "$root/.data/keda.json" deploy/schemas/keda-scaledobject.schema.json <<'PY'
import json, sys, jsonschema
documents, schema = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
for document in documents:
    jsonschema.validate(document, schema)
print(f"ok -- {len(documents)} KEDA resources valid")
PY
"$venv/bin/python" - deploy/ecs/task-definition.json <<'PY'
import json, sys
import botocore.session
from botocore.validate import ParamValidator
model = botocore.session.get_session().get_service_model("ecs")
shape = model.operation_model("RegisterTaskDefinition").input_shape
report = ParamValidator().validate(json.load(open(sys.argv[1])), shape)
if report.has_errors():
    sys.exit(report.generate_report())
print("ok -- ECS task definition matches RegisterTaskDefinition")
PY
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml
