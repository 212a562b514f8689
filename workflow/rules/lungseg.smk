# Unsupervised lung segmentation (classical threshold method refined by active contours,
# COVID-MTL Algorithm 1), masked lung volumes for the models, and Table 2 / Figure 2.


rule lungseg:
    input:
        ct=f"{RESULTS}/curated/{{dataset}}/{{subject}}/ct.nii.gz",
        masks=f"{RESULTS}/curated/{{dataset}}/{{subject}}/masks",
    output:
        classical=f"{RESULTS}/lungseg/{{dataset}}/{{subject}}/lung_classical.nii.gz",
        refined=f"{RESULTS}/lungseg/{{dataset}}/{{subject}}/lung_refined.nii.gz",
        volume=f"{RESULTS}/lungseg/{{dataset}}/{{subject}}/lung_volume.nii.gz",
        volume_mask=f"{RESULTS}/lungseg/{{dataset}}/{{subject}}/lung_volume_mask.nii.gz",
        metrics=f"{RESULTS}/lungseg/{{dataset}}/{{subject}}/metrics.json",
        qc=report(
            f"{RESULTS}/lungseg/{{dataset}}/{{subject}}/qc.png",
            caption="../report/lungseg_qc.rst",
            category="Lung segmentation QC",
            subcategory="{dataset}",
            labels={"subject": "{subject}"},
        ),
    params:
        lungseg=params_json("lungseg"),
        out_dir=subpath(output.metrics, parent=True),
        gt_lung=lambda wildcards, input: f"{input.masks}/lung.nii.gz",
    threads: 2
    resources:
        mem_mb=4000,
    conda:
        "../../envs/imaging.yaml"
    log:
        f"{LOGS}/lungseg/{{dataset}}/{{subject}}.log",
    benchmark:
        f"{BENCH}/lungseg/{{dataset}}/{{subject}}.tsv"
    shell:
        "covidmtl lungseg --subject {wildcards.subject} --ct {input.ct} --gt-lung {params.gt_lung}"
        " --params {params.lungseg} --threads {threads} --out-dir {params.out_dir} > {log} 2>&1"


rule lungseg_table2:
    input:
        metrics=per_subject(f"{RESULTS}/lungseg/{{dataset}}/{{subject}}/metrics.json"),
        manifest=rules.manifest.output[0],
    output:
        csv=report(
            f"{RESULTS}/tables/table2.csv",
            caption="../report/table2.rst",
            category="COVID-MTL",
            subcategory="Tables",
            labels={"item": "Table 2", "content": "lung segmentation quality"},
        ),
        md=f"{RESULTS}/tables/table2.md",
        per_subject=report(
            f"{RESULTS}/tables/table2_per_subject.csv",
            caption="../report/table2_per_subject.rst",
            category="COVID-MTL",
            subcategory="Tables",
            labels={"item": "Table 2 per subject", "content": "lung segmentation quality of each subject"},
        ),
    params:
        stem=lambda wildcards, output: output.csv.removesuffix(".csv"),
    conda:
        "../../envs/imaging.yaml"
    log:
        f"{LOGS}/lungseg_table2.log",
    benchmark:
        f"{BENCH}/lungseg_table2.tsv"
    shell:
        "covidmtl lungseg-table2 --metrics {input.metrics} --manifest {input.manifest} --out-stem {params.stem} > {log} 2>&1"


rule lungseg_figure2:
    input:
        subject_dirs=per_subject(f"{RESULTS}/lungseg/{{dataset}}/{{subject}}/metrics.json"),
        curated=per_subject(f"{RESULTS}/curated/{{dataset}}/{{subject}}/meta.json"),
    output:
        png=report(
            f"{RESULTS}/figures/figure2.png",
            caption="../report/figure2.rst",
            category="COVID-MTL",
            subcategory="Figures",
            labels={"item": "Figure 2", "content": "classical vs refined lung segmentation"},
        ),
        pdf=f"{RESULTS}/figures/figure2.pdf",
    params:
        subject_dirs=lambda wildcards, input: [os.path.dirname(p) for p in input.subject_dirs],
        curated_dirs=lambda wildcards, input: [os.path.dirname(p) for p in input.curated],
    conda:
        "../../envs/imaging.yaml"
    log:
        f"{LOGS}/lungseg_figure2.log",
    benchmark:
        f"{BENCH}/lungseg_figure2.tsv"
    shell:
        "covidmtl lungseg-figure2 --subject-dirs {params.subject_dirs} --curated-dirs {params.curated_dirs}"
        " --out {output.png} > {log} 2>&1"


rule lungseg_metrics:
    input:
        rules.lungseg_table2.output.per_subject,
    output:
        f"{RESULTS}/metrics/lungseg.json",
    conda:
        "../../envs/imaging.yaml"
    log:
        f"{LOGS}/lungseg_metrics.log",
    benchmark:
        f"{BENCH}/lungseg_metrics.tsv"
    shell:
        "covidmtl metrics-export segmentation --table {input} --columns dice jaccard --group-by method"
        " --out {output} > {log} 2>&1"
