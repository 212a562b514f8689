# The papers' tables and figures that combine stages: COVID-MTL Tables 3 and 4 (RF,
# LightGBM and the 3D deep models, with the paper's numbers in a separate column) and
# Figure 3 (ROC curves per task).

# Models drawn in Figure 3: the baselines and the full COVID-MTL (the ablations would crowd it).
FIGURE3_DEEP = [v for v in DEEP_VARIANTS if v.split("_")[0] in {"resnet3d", "squeezenet3d", "shiftnet3d"}] + [
    "mtl_shift_features"
]


rule tables_3_4:
    input:
        classical=[rules.classical_train.output.rf, rules.classical_train.output.lgbm],
        deep=expand(rules.deep_train.output.predictions, variant=DEEP_VARIANTS),
        paper_values="config/paper_values.csv",
    output:
        table3=f"{RESULTS}/tables/table3.csv",
        table3_md=f"{RESULTS}/tables/table3.md",
        table4=f"{RESULTS}/tables/table4.csv",
        table4_md=f"{RESULTS}/tables/table4.md",
        metrics=f"{RESULTS}/tables/metrics.csv",
    params:
        out_dir=subpath(output.table3, parent=True),
    conda:
        "../../envs/features.yaml"
    log:
        f"{LOGS}/tables_3_4.log",
    benchmark:
        f"{BENCH}/tables_3_4.tsv"
    shell:
        "covidmtl classical-tables --predictions {input.classical} {input.deep}"
        " --paper-values {input.paper_values} --out-dir {params.out_dir} > {log} 2>&1"


rule figure3_roc:
    input:
        classical=[rules.classical_train.output.rf, rules.classical_train.output.lgbm],
        deep=expand(rules.deep_train.output.predictions, variant=FIGURE3_DEEP),
    output:
        png=f"{RESULTS}/figures/figure3_roc.png",
        pdf=f"{RESULTS}/figures/figure3_roc.pdf",
    params:
        classical=params_json("classical"),
    conda:
        "../../envs/features.yaml"
    log:
        f"{LOGS}/figure3_roc.log",
    benchmark:
        f"{BENCH}/figure3_roc.tsv"
    shell:
        "covidmtl roc-figure --predictions {input.classical} {input.deep} --params {params.classical}"
        " --out {output.png} > {log} 2>&1"
