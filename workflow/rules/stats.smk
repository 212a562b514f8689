# Feature selection and Welch's ANOVA (COVID-MTL section 5.5): Table 5, Figures 5, 6, 8.


rule stats_anova:
    input:
        features=rules.features_merge.output.parquet,
        importance=rules.classical_train.output.importance,
        split=rules.split.output[0],
    output:
        table5=report(
            f"{RESULTS}/tables/table5.csv",
            caption="../report/table5.rst",
            category="COVID-MTL",
            subcategory="Tables",
            labels={"item": "Table 5", "content": "Welch ANOVA of the selected features"},
        ),
        table5_md=f"{RESULTS}/tables/table5.md",
        selected=f"{RESULTS}/stats/selected_features.csv",
        anova=f"{RESULTS}/stats/anova_long.csv",
        qc=f"{RESULTS}/stats/qc.csv",
        figure5=report(
            f"{RESULTS}/figures/figure5.png",
            caption="../report/figure5.rst",
            category="COVID-MTL",
            subcategory="Figures",
            labels={"item": "Figure 5", "content": "significant features by group"},
        ),
        figure5_pdf=f"{RESULTS}/figures/figure5.pdf",
        figure6=report(
            f"{RESULTS}/figures/figure6.png",
            caption="../report/figure6.rst",
            category="COVID-MTL",
            subcategory="Figures",
            labels={"item": "Figure 6", "content": "clustering heat map"},
        ),
        figure6_pdf=f"{RESULTS}/figures/figure6.pdf",
        figure8=report(
            f"{RESULTS}/figures/figure8.png",
            caption="../report/figure8.rst",
            category="COVID-MTL",
            subcategory="Figures",
            labels={"item": "Figure 8", "content": "an infected and a normal case"},
        ),
        figure8_pdf=f"{RESULTS}/figures/figure8.pdf",
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
