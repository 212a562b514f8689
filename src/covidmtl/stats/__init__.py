"""Feature selection, Welch's ANOVA (Table 5) and COVID-MTL's statistical figures
(Figures 5, 6 and 8) of the lung features (COVID-MTL section 5.5)."""
