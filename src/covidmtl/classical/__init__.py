"""Classical baselines on the lung features (COVID-MTL section 5.2): Random Forest and
LightGBM per task (:mod:`.models`), test-set metrics and Tables 3-4 (:mod:`.metrics`),
Figure 3 ROC curves (:mod:`.figures`)."""
