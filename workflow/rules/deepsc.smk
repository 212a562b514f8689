# DeepSC-COVID (Wang et al.): joint 3D lesion segmentation and 3-class diagnosis, its
# ablations and baselines (Tables II and III, Figures 7-10) and the lesion findings.

from covidmtl.deepsc.variants import VARIANTS as DEEPSC_VARIANTS, same_as_full_model

# Variants equal to the full model under this config (by default lambda_ta_10 and
# multi_scale_ta) are not trained twice: the report takes their rows from `deepsc`.
DEEPSC_RUNS = [v for v in DEEPSC_VARIANTS if v not in same_as_full_model(config["deepsc"])]
# Joint variants sharing the full architecture fine-tune from one pre-trained model.
DEEPSC_FROM_PRETRAIN = [
    v
    for v, spec in DEEPSC_VARIANTS.items()
    if spec.architecture == "deepsc" and spec.joint and spec.finetune and spec.inception
]
CURATED_META = per_subject(f"{RESULTS}/curated/{{dataset}}/{{subject}}/meta.json")
REFINED_LUNGS = per_subject(f"{RESULTS}/lungseg/{{dataset}}/{{subject}}/lung_refined.nii.gz")


rule deepsc_train:
    input:
        manifest=rules.manifest.output[0],
        split=rules.split.output[0],
        curated=CURATED_META,
        lungs=REFINED_LUNGS,
        init=lambda wildcards: (
            [f"{RESULTS}/deepsc/pretrain/model.pt"] if wildcards.variant in DEEPSC_FROM_PRETRAIN else []
        ),
    output:
        # checkpoint.pt is not an output: it must survive a failed job to be resumed from.
        model=f"{RESULTS}/deepsc/{{variant}}/model.pt",
        history=f"{RESULTS}/deepsc/{{variant}}/history.csv",
        metrics=f"{RESULTS}/deepsc/{{variant}}/metrics.json",
        predictions=f"{RESULTS}/deepsc/{{variant}}/predictions.csv",
        segmentation=f"{RESULTS}/deepsc/{{variant}}/segmentation.csv",
        example=f"{RESULTS}/deepsc/{{variant}}/example.npz",
    params:
        deepsc=params_json("deepsc"),
        seed=config["seed"],
        lungseg_dir=f"{RESULTS}/lungseg",
        out_dir=subpath(output.metrics, parent=True),
        init=lambda wildcards, input: f"--init-from {input.init}" if input.init else "",
    wildcard_constraints:
        variant="|".join(DEEPSC_VARIANTS),
    # One torch thread: faster than two for these small 3D models on a busy CPU (benchmark).
    threads: 1
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=720,
    conda:
        "../../envs/deep.yaml"
    log:
        f"{LOGS}/deepsc_train/{{variant}}.log",
    benchmark:
        f"{BENCH}/deepsc_train/{{variant}}.tsv"
    shell:
        "covidmtl deepsc-train --variant {wildcards.variant} --manifest {input.manifest} --split {input.split}"
        " --lungseg-dir {params.lungseg_dir} {params.init} --params {params.deepsc} --seed {params.seed}"
        " --threads {threads} --out-dir {params.out_dir} > {log} 2>&1"


rule deepsc_report:
    input:
        runs=expand(rules.deepsc_train.output.metrics, variant=DEEPSC_RUNS),
        paper_values="config/paper_values.csv",
    output:
        table2=report(
            f"{RESULTS}/deepsc/report/table2_deepsc.csv",
            caption="../report/deepsc_table2.rst",
            category="DeepSC-COVID",
            subcategory="Tables",
            labels={"item": "Table II", "content": "diagnosis and lesion segmentation"},
        ),
        table3=report(
            f"{RESULTS}/deepsc/report/table3_deepsc.csv",
            caption="../report/deepsc_table3.rst",
            category="DeepSC-COVID",
            subcategory="Tables",
            labels={"item": "Table III", "content": "task-aware loss"},
        ),
        figure7=report(
            f"{RESULTS}/deepsc/report/figure7_roc.png",
            caption="../report/deepsc_figure7.rst",
            category="DeepSC-COVID",
            subcategory="Figures",
            labels={"item": "Figure 7", "content": "ROC curves"},
        ),
        figure8=report(
            f"{RESULTS}/deepsc/report/figure8_segmentation.png",
            caption="../report/deepsc_figure8.rst",
            category="DeepSC-COVID",
            subcategory="Figures",
            labels={"item": "Figure 8", "content": "lesion segmentation"},
        ),
        figure9=report(
            f"{RESULTS}/deepsc/report/figure9_lambda_ta.png",
            caption="../report/deepsc_figure9.rst",
            category="DeepSC-COVID",
            subcategory="Figures",
            labels={"item": "Figure 9", "content": "task-aware loss weight"},
        ),
        figure10=report(
            f"{RESULTS}/deepsc/report/figure10_evidence.png",
            caption="../report/deepsc_figure10.rst",
            category="DeepSC-COVID",
            subcategory="Figures",
            labels={"item": "Figure 10", "content": "lesion evidence"},
        ),
        # The tables' Markdown twins, the figures' PDF twins and every run's summary numbers.
        table2_md=f"{RESULTS}/deepsc/report/table2_deepsc.md",
        table3_md=f"{RESULTS}/deepsc/report/table3_deepsc.md",
        metrics=f"{RESULTS}/deepsc/report/metrics_deepsc.csv",
        figure7_pdf=f"{RESULTS}/deepsc/report/figure7_roc.pdf",
        figure8_pdf=f"{RESULTS}/deepsc/report/figure8_segmentation.pdf",
        figure9_pdf=f"{RESULTS}/deepsc/report/figure9_lambda_ta.pdf",
        figure10_pdf=f"{RESULTS}/deepsc/report/figure10_evidence.pdf",
    params:
        run_dirs=lambda wildcards, input: [os.path.dirname(p) for p in input.runs],
        out_dir=subpath(output.table2, parent=True),
    conda:
        "../../envs/deep.yaml"
    log:
        f"{LOGS}/deepsc_report.log",
    benchmark:
        f"{BENCH}/deepsc_report.tsv"
    shell:
        "covidmtl deepsc-report --run-dirs {params.run_dirs} --paper-values {input.paper_values}"
        " --out-dir {params.out_dir} > {log} 2>&1"


rule deepsc_findings:
    input:
        manifest=rules.manifest.output[0],
        lungs=REFINED_LUNGS,
    output:
        table=report(
            f"{RESULTS}/deepsc/findings/findings_table.csv",
            caption="../report/deepsc_findings_table.rst",
            category="DeepSC-COVID",
            subcategory="Tables",
            labels={"item": "Section III", "content": "lesion findings per class"},
        ),
        lesions=f"{RESULTS}/deepsc/findings/findings_lesions.csv",
        figure=report(
            f"{RESULTS}/deepsc/findings/figure1_findings.png",
            caption="../report/deepsc_figure1.rst",
            category="DeepSC-COVID",
            subcategory="Figures",
            labels={"item": "Section III", "content": "lesion findings per class"},
        ),
        table_md=f"{RESULTS}/deepsc/findings/findings_table.md",
        subjects=f"{RESULTS}/deepsc/findings/findings_subjects.csv",
        hu_histogram=f"{RESULTS}/deepsc/findings/findings_hu_histogram.csv",
        figure_pdf=f"{RESULTS}/deepsc/findings/figure1_findings.pdf",
    params:
        deepsc=params_json("deepsc"),
        lungseg_dir=f"{RESULTS}/lungseg",
        out_dir=subpath(output.table, parent=True),
    conda:
        "../../envs/deep.yaml"
    log:
        f"{LOGS}/deepsc_findings.log",
    benchmark:
        f"{BENCH}/deepsc_findings.tsv"
    shell:
        "covidmtl deepsc-findings --manifest {input.manifest} --lungseg-dir {params.lungseg_dir}"
        " --params {params.deepsc} --out-dir {params.out_dir} > {log} 2>&1"
