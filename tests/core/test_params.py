"""Parameter declarations: one check for methods, featvis methods, metrics and dataset kinds, and the config
check that rejects unknown keys anywhere with the closest valid one."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vislib import catalog, featvis, methods, metrics
from vislib.config import check_config, check_keys
from vislib.data import DATASETS
from vislib.errors import ConfigError
from vislib.params import NoParams, describe, param, parse, with_defaults

REPO = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Toy:
    steps: int = param(4, "how many", minimum=1)
    rate: float = param(0.5, "how fast", exclusive_minimum=0, maximum=1)
    mode: str = param("fast", "which", choices=("fast", "slow"))
    tags: list[str] = param(["a"], "labels")
    limit: int | None = param(None, "cap")
    flag: bool = param(False, "switch")


def test_parse_fills_defaults_and_converts_ints_for_floats():
    toy = parse("toy", Toy, {"rate": 1, "limit": 3})
    assert toy == Toy(steps=4, rate=1.0, mode="fast", tags=["a"], limit=3, flag=False)
    assert isinstance(toy.rate, float)
    parse("toy", Toy, None).tags.append("b")
    assert Toy().tags == ["a"], "a list default must not be shared between instances"


@pytest.mark.parametrize("given,message", [
    ({"stpes": 2}, "toy has no parameter 'stpes'. Did you mean 'steps'?"),
    ({"steps": 2.5}, "parameter 'steps' must be int, got 2.5"),
    ({"steps": True}, "parameter 'steps' must be int"),
    ({"flag": 1}, "parameter 'flag' must be bool"),
    ({"steps": 0}, "parameter 'steps' must be >= 1, got 0"),
    ({"rate": 0}, "parameter 'rate' must be > 0"),
    ({"rate": 1.5}, "parameter 'rate' must be <= 1"),
    ({"mode": "fsat"}, "parameter 'mode' must be one of 'fast', 'slow', got 'fsat' \\(did you mean 'fast'\\?\\)"),
    ({"tags": "a"}, "parameter 'tags' must be list\\[str\\]"),
    ({"tags": ["a", 1]}, "parameter 'tags' must be list\\[str\\]"),
    ({"limit": "3"}, "parameter 'limit' must be int \\| null"),
])
def test_parse_rejects_with_a_message_naming_the_parameter(given, message):
    with pytest.raises(ConfigError, match=message):
        parse("toy", Toy, given)


def test_with_defaults_changes_defaults_and_keeps_help_and_bounds():
    tuned = with_defaults(Toy, steps=9, mode="slow")
    assert parse("t", tuned, {}).steps == 9 and parse("t", tuned, {}).mode == "slow"
    assert {p.name: p.help for p in describe(tuned)} == {p.name: p.help for p in describe(Toy)}
    with pytest.raises(ConfigError, match="must be >= 1"):
        parse("t", tuned, {"steps": 0})
    with pytest.raises(TypeError, match="no parameter 'nope'"):
        with_defaults(Toy, nope=1)


def declarations():
    out = [(f"method {n}", methods.METHODS[n].Params) for n in methods.METHODS.names()]
    out += [(f"metric {n}", metrics.METRICS[n].Params) for n in metrics.METRICS.names()]
    out += [(f"featvis {n}", featvis.FEATVIS[n].Params) for n in featvis.FEATVIS.names()]
    out += [(f"dataset {n}", DATASETS[n].Params) for n in DATASETS.names()]
    return out


@pytest.mark.parametrize("owner,declaration", declarations(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_declared_parameter_has_help_and_its_default_passes_its_own_check(owner, declaration):
    if declaration is NoParams:
        return
    infos = describe(declaration)
    assert all(p.help for p in infos), f"{owner}: a parameter has no help"
    defaults = {p.name: p.default for p in infos}
    assert dataclasses.asdict(parse(owner, declaration, defaults)) == dataclasses.asdict(declaration())


def test_docs_parameter_tables_are_generated_from_the_declarations():
    assert (REPO / "docs" / "parameters.md").read_text() == catalog.as_markdown(), (
        "docs/parameters.md is out of date: run `.venv/bin/vislib list all --markdown > docs/parameters.md`")


def test_vislib_list_names_every_registered_entry():
    out = subprocess.run([sys.executable, "-m", "vislib.cli", "list", "all"], capture_output=True, text=True,
                         check=True).stdout
    for names in (methods.METHODS.names(), metrics.METRICS.names(), featvis.FEATVIS.names(), DATASETS.names()):
        for name in names:
            assert f"\n{name}" in "\n" + out
    assert "l2caf_specific" in out and "tolerance (float, default 15.0; >= 0)" in out
    assert "maxboxacc  [better: higher]  [dataset-level: yes]" in out


@pytest.fixture(scope="module")
def schema():
    return yaml.safe_load((REPO / "config" / "schema.yaml").read_text())


@pytest.fixture(scope="module")
def default_config():
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.update(shard_sise=10), "the config has no key 'shard_sise'. Did you mean 'shard_size'?"),
    (lambda c: c["experiments"]["demo"].update(metircs=[]), "experiments.demo has no key 'metircs'. Did you mean"),
    (lambda c: c["models"]["demonet"]["train"].update(epoch=3), "models.demonet.train has no key 'epoch'"),
    (lambda c: c["datasets"]["shapes"].update(limt=3), "datasets.shapes has no key 'limt'. Did you mean 'limit'"),
])
def test_unknown_keys_anywhere_are_rejected_with_the_closest_valid_key(schema, default_config, edit, message):
    config = copy.deepcopy(default_config)
    check_keys(config, schema)
    edit(config)
    with pytest.raises(ConfigError, match=message):
        check_keys(config, schema)


@pytest.mark.parametrize("edit,message", [
    (lambda c: c["metrics"].update(pointing_game={"tolerance": "abc"}),
     "metrics.pointing_game: metric 'pointing_game': parameter 'tolerance' must be float, got 'abc'"),
    (lambda c: c["methods"].update(gradcam={"lr": 1}), "methods.gradcam: method 'gradcam' has no parameter 'lr'"),
    (lambda c: c["datasets"]["shapes"]["params"].update(n_trian=5),
     "datasets.shapes.params: dataset kind 'shapes' params has no parameter 'n_trian'. Did you mean 'n_train'"),
    (lambda c: c["datasets"]["shapes"]["params"].update(image_size=16),
     "parameter 'image_size' must be >= 32, got 16"),
])
def test_parameter_values_are_checked_by_the_config_check(default_config, edit, message):
    config = copy.deepcopy(default_config)
    edit(config)
    with pytest.raises(ConfigError, match=message):
        check_config(config)


def test_the_readme_listing_commands_run_as_printed():
    lines = [line.split("#")[0].strip() for line in (REPO / "README.md").read_text().splitlines()
             if line.startswith(".venv/bin/vislib list") or line.startswith(".venv/bin/vislib layers")]
    assert len(lines) == 2
    for line in lines:
        command = line.split()
        command[0] = str(Path(sys.executable).with_name("vislib"))
        out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout
        assert ("layer4" in out) if "layers" in line else ("gradcam" in out and "l2caf_specific" in out)
