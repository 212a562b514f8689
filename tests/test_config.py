import copy

import jsonschema
import pytest
import yaml

from covidmtl.config import REPO_ROOT, deep_update, load_config, load_schema, validate

CONFIG = REPO_ROOT / "config"


def test_schema_is_valid_and_documents_every_knob():
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)

    def walk(node, path):
        parent_default = node.get("default") if isinstance(node.get("default"), dict) else {}
        for name, sub in node.get("properties", {}).items():
            assert "description" in sub, f"{path}{name} has no description"
            if sub.get("type") != "object" or "properties" not in sub:
                assert "default" in sub or name in parent_default, f"{path}{name} has no default (the paper's value)"
            walk(sub, f"{path}{name}.")

    walk(schema, "")


@pytest.mark.parametrize("overlay", [None, "smoke.yaml", "paper.yaml"])
def test_config_levels_validate(overlay):
    files = [CONFIG / "config.yaml"] + ([CONFIG / overlay] if overlay else [])
    config = load_config(files)
    assert config["datasets"] == ["synthetic"]


def test_paper_overlay_restores_the_papers_values():
    """Every knob the demo shrinks is set back to the schema default (= paper value) in paper.yaml."""
    defaults = validate({})
    demo = yaml.safe_load((CONFIG / "config.yaml").read_text(encoding="utf-8"))
    paper = load_config([CONFIG / "config.yaml", CONFIG / "paper.yaml"])

    def leaves(node, prefix=()):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from leaves(value, prefix + (key,))
            else:
                yield prefix + (key,)

    for path in leaves(demo):
        if path[0] in {"seed", "datasets"}:
            continue
        expected, got = defaults, paper
        for key in path:
            expected, got = expected[key], got[key]
        assert got == expected, f"paper.yaml leaves {'.'.join(path)}={got}, paper value {expected}"


def test_smoke_is_smaller_than_demo():
    demo = load_config([CONFIG / "config.yaml"])
    smoke = load_config([CONFIG / "config.yaml", CONFIG / "smoke.yaml"])
    assert smoke["synthetic"]["n_subjects"] < demo["synthetic"]["n_subjects"]
    assert 60 <= demo["synthetic"]["n_subjects"] <= 120


def test_invalid_config_is_rejected():
    config = copy.deepcopy(yaml.safe_load((CONFIG / "config.yaml").read_text(encoding="utf-8")))
    bad = deep_update(config, {"split": {"test_fraction": 1.5}})
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
    with pytest.raises(jsonschema.ValidationError):
        validate(deep_update(config, {"no_such_knob": 1}))
