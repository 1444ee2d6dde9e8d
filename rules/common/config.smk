# Config checks, before any job: unknown keys (with the closest valid one), the JSON schema, then
# vislib.config.check_config (names, layers, parameter declarations). Also the wildcard constraints.
import math
import os

import yaml
from snakemake.utils import validate

from vislib.config import check_config, check_keys
from vislib.errors import VislibError


try:
    # Unknown keys first: the schema's own message for one names no valid alternative.
    with open(os.path.join(workflow.basedir, "config", "schema.yaml")) as _schema:
        check_keys(config, yaml.safe_load(_schema))
    validate(config, "../../config/schema.yaml")
    check_config(config)
except VislibError as exc:
    raise WorkflowError(f"invalid config: {exc}")


wildcard_constraints:
    experiment=r"[^/]+",
    dataset=r"[^/]+",
    model=r"[^/]+",
    layer=r"[^/]+",
    method=r"[^/]+",
    shard=r"\d+",
    group=r"\d+",


GPU = 0 if config["device"] == "cpu" else 1
DATA = config["data_root"]
