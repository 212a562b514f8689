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
