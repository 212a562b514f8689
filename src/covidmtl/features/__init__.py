"""High-throughput lung features (COVID-MTL section 4.2): PyRadiomics extraction per
subject (:mod:`covidmtl.features.radiomics`) and the merged cohort table
(:mod:`covidmtl.features.merge`)."""

from covidmtl.features.radiomics import feature_columns, is_feature_column

__all__ = ["feature_columns", "is_feature_column"]
