# Curation: one canonical grid per subject, then the manifest, the split and Table 1.


rule curate:
    input:
        index=f"{RAW}/{{dataset}}/index.csv",
    output:
        ct=f"{RESULTS}/curated/{{dataset}}/{{subject}}/ct.nii.gz",
        masks=directory(f"{RESULTS}/curated/{{dataset}}/{{subject}}/masks"),
        meta=f"{RESULTS}/curated/{{dataset}}/{{subject}}/meta.json",
    params:
        curation=params_json("curation"),
        out_dir=subpath(output.meta, parent=True),
    conda:
        "../../envs/imaging.yaml"
    log:
        f"{LOGS}/curate/{{dataset}}/{{subject}}.log",
    benchmark:
        f"{BENCH}/curate/{{dataset}}/{{subject}}.tsv"
    shell:
        "covidmtl curate --subject {wildcards.subject} --index {input.index}"
        " --params {params.curation} --out-dir {params.out_dir} > {log} 2>&1"


rule stage_plan:
    input:
        dataset_indexes,
    output:
        md=f"{RESULTS}/stage_plan.md",
        json=f"{RESULTS}/stage_plan.json",
    params:
        config=stage_plan_config(),
    conda:
        "../../envs/imaging.yaml"
    log:
        f"{LOGS}/stage_plan.log",
    benchmark:
        f"{BENCH}/stage_plan.tsv"
    shell:
        "covidmtl stage-plan --index {input} --config {params.config}"
        " --out-md {output.md} --out-json {output.json} > {log} 2>&1"


rule manifest:
    input:
        meta=per_subject(f"{RESULTS}/curated/{{dataset}}/{{subject}}/meta.json"),
    output:
        f"{RESULTS}/curated/manifest.csv",
    conda:
        "../../envs/imaging.yaml"
    log:
        f"{LOGS}/manifest.log",
    benchmark:
        f"{BENCH}/manifest.tsv"
    shell:
        "covidmtl manifest --meta {input.meta} --out {output} > {log} 2>&1"


rule split:
    input:
        manifest=rules.manifest.output,
    output:
        f"{RESULTS}/split/split.csv",
    params:
        split=params_json("split"),
    conda:
        "../../envs/imaging.yaml"
    log:
        f"{LOGS}/split.log",
    benchmark:
        f"{BENCH}/split.tsv"
    shell:
        "covidmtl split --manifest {input.manifest} --params {params.split} --out {output} > {log} 2>&1"


rule table1:
    input:
        manifest=rules.manifest.output,
        split=rules.split.output,
    output:
        csv=report(
            f"{RESULTS}/tables/table1.csv",
            caption="../report/table1.rst",
            category="COVID-MTL",
            subcategory="Tables",
            labels={"item": "Table 1", "content": "cohort characteristics"},
        ),
        md=f"{RESULTS}/tables/table1.md",
    params:
        stem=lambda wildcards, output: output.csv.removesuffix(".csv"),
    conda:
        "../../envs/imaging.yaml"
    log:
        f"{LOGS}/table1.log",
    benchmark:
        f"{BENCH}/table1.tsv"
    shell:
        "covidmtl table1 --manifest {input.manifest} --split {input.split} --out-stem {params.stem} > {log} 2>&1"


rule cohort_metrics:
    input:
        manifest=rules.manifest.output[0],
        split=rules.split.output[0],
    output:
        f"{RESULTS}/metrics/cohort.json",
    conda:
        "../../envs/imaging.yaml"
    log:
        f"{LOGS}/cohort_metrics.log",
    benchmark:
        f"{BENCH}/cohort_metrics.tsv"
    shell:
        "covidmtl metrics-export cohort --manifest {input.manifest} --split {input.split} --out {output} > {log} 2>&1"
