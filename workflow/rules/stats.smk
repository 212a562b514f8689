# Feature selection and Welch's ANOVA (COVID-MTL section 5.5): Table 5, Figures 5, 6, 8.


rule stats_anova:
    input:
        features=rules.features_merge.output.parquet,
        importance=rules.classical_train.output.importance,
        split=rules.split.output[0],
    output:
        table5=f"{RESULTS}/tables/table5.csv",
        table5_md=f"{RESULTS}/tables/table5.md",
        selected=f"{RESULTS}/stats/selected_features.csv",
        anova=f"{RESULTS}/stats/anova_long.csv",
        qc=f"{RESULTS}/stats/qc.csv",
        figure5=f"{RESULTS}/figures/figure5.png",
        figure6=f"{RESULTS}/figures/figure6.png",
        figure8=f"{RESULTS}/figures/figure8.png",
    params:
        stats=params_json("stats"),
        out_dir=subpath(output.selected, parent=True),
        tables_dir=subpath(output.table5, parent=True),
        figures_dir=subpath(output.figure5, parent=True),
    conda:
        "../../envs/stats.yaml"
    log:
        f"{LOGS}/stats_anova.log",
    benchmark:
        f"{BENCH}/stats_anova.tsv"
    shell:
        "covidmtl stats-anova --features {input.features} --importance {input.importance} --split {input.split}"
        " --params {params.stats} --out-dir {params.out_dir} --tables-dir {params.tables_dir}"
        " --figures-dir {params.figures_dir} > {log} 2>&1"
