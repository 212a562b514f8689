"""The config schema's defaults equal the defaults inside the package (one truth, two places)."""

from covidmtl.config import validate


def test_deep_section_matches_the_deep_config_dataclass():
    from covidmtl.deep.config import DeepConfig

    from_schema = validate({})["deep"]
    from_package = DeepConfig().to_dict()
    assert from_schema == from_package
    # and the package accepts what the schema fills in
    DeepConfig.from_dict(from_schema)


def test_feature_classical_stats_sections_match_package_defaults():
    from covidmtl.classical.models import DEFAULT_PARAMS as classical
    from covidmtl.features.radiomics import DEFAULT_PARAMS as features
    from covidmtl.stats.anova import DEFAULT_PARAMS as stats

    config = validate({})
    assert config["features"] == features
    assert config["classical"] == classical
    assert config["stats"] == stats


def test_every_deep_knob_is_documented():
    from covidmtl.deep.config import knob_table

    assert all(row["description"].strip() for row in knob_table())


def test_twod_section_matches_the_twod_config_dataclass():
    from covidmtl.twod.config import TwoDConfig

    from_schema = validate({})["twod"]
    assert from_schema == TwoDConfig().to_dict()
    TwoDConfig.from_dict(from_schema)


def test_lungseg_section_matches_the_lungseg_params_dataclass():
    import json

    from covidmtl.lungseg.params import LungSegParams

    from_schema = validate({})["lungseg"]
    # tuples become lists in JSON, as they do when the rule passes the section
    assert from_schema == json.loads(json.dumps(LungSegParams().to_dict()))
    LungSegParams.from_dict(from_schema)


def test_deepsc_section_matches_the_deepsc_config_dataclass():
    from covidmtl.deepsc.config import DeepSCConfig

    from_schema = validate({})["deepsc"]
    assert from_schema == DeepSCConfig().to_dict()
    DeepSCConfig.from_dict(from_schema)
