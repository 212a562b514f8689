# Random Forest and LightGBM on the lung features (COVID-MTL section 5.2, first rows of
# Tables 3 and 4), and the combined Tables 3/4 and Figure 3 with the deep models' rows.


rule classical_train:
    input:
        features=rules.features_merge.output.parquet,
        split=rules.split.output[0],
    output:
        rf=f"{RESULTS}/classical/predictions_rf.csv",
        lgbm=f"{RESULTS}/classical/predictions_lgbm.csv",
        importance=f"{RESULTS}/classical/importance.csv",
        metrics=f"{RESULTS}/classical/metrics.csv",
        qc=f"{RESULTS}/classical/qc.csv",
    params:
        classical=params_json("classical"),
        out_dir=subpath(output.metrics, parent=True),
    threads: 2
    resources:
        mem_mb=4000,
    conda:
        "../../envs/features.yaml"
    log:
        f"{LOGS}/classical_train.log",
    benchmark:
        f"{BENCH}/classical_train.tsv"
    shell:
        "covidmtl classical-train --features {input.features} --split {input.split} --params {params.classical}"
        " --threads {threads} --out-dir {params.out_dir} > {log} 2>&1"
