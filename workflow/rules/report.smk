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
        table3=report(
            f"{RESULTS}/tables/table3.csv",
            caption="../report/table3.rst",
            category="COVID-MTL",
            subcategory="Tables",
            labels={"item": "Table 3", "content": "COVID-19 diagnosis (CT, NAT)"},
        ),
        table3_md=f"{RESULTS}/tables/table3.md",
        table4=report(
            f"{RESULTS}/tables/table4.csv",
            caption="../report/table4.rst",
            category="COVID-MTL",
            subcategory="Tables",
            labels={"item": "Table 4", "content": "severity"},
        ),
        table4_md=f"{RESULTS}/tables/table4.md",
        metrics=report(
            f"{RESULTS}/tables/metrics.csv",
            caption="../report/metrics_table.rst",
            category="COVID-MTL",
            subcategory="Tables",
            labels={"item": "Tables 3-4, all metrics", "content": "every model, task and metric"},
        ),
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
        png=report(
            f"{RESULTS}/figures/figure3_roc.png",
            caption="../report/figure3.rst",
            category="COVID-MTL",
            subcategory="Figures",
            labels={"item": "Figure 3", "content": "ROC curves"},
        ),
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


rule classification_metrics:
    input:
        classical=[rules.classical_train.output.rf, rules.classical_train.output.lgbm],
        deep=expand(rules.deep_train.output.predictions, variant=DEEP_VARIANTS),
    output:
        json=f"{RESULTS}/metrics/classification.json",
        roc=directory(f"{RESULTS}/plots/roc"),
    conda:
        "../../envs/features.yaml"
    log:
        f"{LOGS}/classification_metrics.log",
    benchmark:
        f"{BENCH}/classification_metrics.tsv"
    shell:
        "covidmtl metrics-export classification --predictions {input.classical} {input.deep}"
        " --out {output.json} --roc-dir {output.roc} > {log} 2>&1"
