# Lung radiomics (pyradiomics; COVID-MTL section 4.2): one job per subject, then one table.


rule features_extract:
    input:
        image=f"{RESULTS}/lungseg/{{dataset}}/{{subject}}/lung_volume.nii.gz",
        mask=f"{RESULTS}/lungseg/{{dataset}}/{{subject}}/lung_volume_mask.nii.gz",
        params_file=config["features"]["params_file"],
    output:
        f"{RESULTS}/features/subjects/{{dataset}}/{{subject}}.parquet",
    params:
        features=params_json("features"),
    resources:
        mem_mb=4000,
    conda:
        "../../envs/features.yaml"
    log:
        f"{LOGS}/features_extract/{{dataset}}/{{subject}}.log",
    benchmark:
        f"{BENCH}/features_extract/{{dataset}}/{{subject}}.tsv"
    shell:
        "covidmtl features-extract --subject {wildcards.subject} --image {input.image} --mask {input.mask}"
        " --params-file {input.params_file} --params {params.features} --out {output} > {log} 2>&1"


rule features_merge:
    input:
        features=per_subject(f"{RESULTS}/features/subjects/{{dataset}}/{{subject}}.parquet"),
        manifest=rules.manifest.output[0],
    output:
        parquet=f"{RESULTS}/features/features.parquet",
        csv=f"{RESULTS}/features/features.csv",
        diagnostics=f"{RESULTS}/features/features_diagnostics.csv",
        qc=f"{RESULTS}/features/qc.csv",
    params:
        features=params_json("features"),
        stem=lambda wildcards, output: output.parquet.removesuffix(".parquet"),
    conda:
        "../../envs/features.yaml"
    log:
        f"{LOGS}/features_merge.log",
    benchmark:
        f"{BENCH}/features_merge.tsv"
    shell:
        "covidmtl features-merge --inputs {input.features} --manifest {input.manifest}"
        " --out-stem {params.stem} --qc {output.qc} --params {params.features} > {log} 2>&1"
