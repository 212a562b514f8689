# 2D multitask models on axial slices: Amyar et al. (binary and 3-class) and mask-guided
# attention (Maftouni et al.). One slice set and split (slices cut from the curated volumes
# plus the 2D datasets' images), then one training job per model and ablation; training
# jobs request a GPU like the 3D models.

from covidmtl.twod.variants import VARIANTS as TWOD_VARIANTS

TWOD_AMYAR = [v for v, spec in TWOD_VARIANTS.items() if spec.family == "amyar"]
# MGA Table 5's row for twod.mga.attention_stage is the `mga` run itself: not trained twice.
TWOD_MGA = [
    v
    for v, spec in TWOD_VARIANTS.items()
    if spec.family in {"segmenter", "classifier"} and v != f"mga_stage{config['twod']['mga']['attention_stage']}"
]
# MGA section 6.3: single-task (ResNet18 + CBAM) vs MGA over training-set sizes.
TWOD_SWEEP = ["resnet18_cbam", "mga"]
TWOD_RUN_FILES = ["model.pt", "history.csv", "metrics.json", "predictions.csv", "predictions_patient.csv",
                  "seg_metrics.csv", "seg_examples.npz"]


rule twod_volume_slices:
    input:
        manifest=rules.manifest.output[0],
        cts=per_subject(f"{RESULTS}/curated/{{dataset}}/{{subject}}/ct.nii.gz"),
    output:
        directory(f"{RESULTS}/twod/volume_slices"),
    params:
        twod=params_json("twod"),
        seed=config["seed"],
    conda:
        "../../envs/deep.yaml"
    log:
        f"{LOGS}/twod_volume_slices.log",
    benchmark:
        f"{BENCH}/twod_volume_slices.tsv"
    shell:
        "covidmtl twod-slices --manifest {input.manifest} --params {params.twod} --seed {params.seed}"
        " --out-dir {output} > {log} 2>&1"


# The slice index that every 2D run reads: the 2D datasets' images converted, merged with
# the volume slices, one patient-aware split over all of them (qc.csv lists unusable files).
rule twod_slices:
    input:
        # their image2d/slices2d rows; and the volume slices when the cohort has CT volumes
        indexes=dataset_indexes,
        volume_slices=lambda wildcards: (
            rules.twod_volume_slices.output[0]
            if read_indexes(dataset_indexes(), config["exclude_subjects"])["image_format"].isin(VOLUME_FORMATS).any()
            else []
        ),
    output:
        directory(f"{RESULTS}/twod/slices"),
    params:
        twod=params_json("twod"),
        seed=config["seed"],
        exclude=" ".join(config["exclude_subjects"]),
        volume_slices=lambda wildcards, input: (
            f"--volume-slices {input.volume_slices}/index.csv" if input.volume_slices else ""
        ),
    conda:
        "../../envs/deep.yaml"
    log:
        f"{LOGS}/twod_slices.log",
    benchmark:
        f"{BENCH}/twod_slices.tsv"
    shell:
        "covidmtl twod-index --index {input.indexes} {params.volume_slices} --exclude-subjects {params.exclude}"
        " --params {params.twod} --seed {params.seed} --out-dir {output} > {log} 2>&1"


rule twod_train:
    input:
        unpack(twod_train_inputs),
    output:
        # checkpoint.pt is not an output: it must survive a failed job to be resumed from.
        **{name.split(".")[0]: f"{RESULTS}/twod/runs/{{variant}}/{name}" for name in TWOD_RUN_FILES},
    params:
        twod=params_json("twod"),
        seed=config["seed"],
        out_dir=subpath(output.metrics, parent=True),
        segmenter=lambda wildcards, input: f"--segmenter {input.segmenter}" if "segmenter" in input.keys() else "",
    wildcard_constraints:
        variant="|".join(TWOD_VARIANTS),
    # One torch thread: these small 2D models slow down with more threads on a busy CPU.
    threads: 1
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=480,
    conda:
        "../../envs/deep.yaml"
    log:
        f"{LOGS}/twod_train/{{variant}}.log",
    benchmark:
        f"{BENCH}/twod_train/{{variant}}.tsv"
    shell:
        "covidmtl twod-train --variant {wildcards.variant} --slices-index {input.slices}/index.csv {params.segmenter}"
        " --params {params.twod} --seed {params.seed} --threads {threads} --out-dir {params.out_dir} > {log} 2>&1"


rule twod_train_size_sweep:
    input:
        unpack(twod_train_inputs),
    output:
        **{name.split(".")[0]: f"{RESULTS}/twod/sweep/{{variant}}_f{{fraction}}/{name}" for name in TWOD_RUN_FILES},
    params:
        twod=params_json("twod"),
        seed=config["seed"],
        out_dir=subpath(output.metrics, parent=True),
        segmenter=lambda wildcards, input: f"--segmenter {input.segmenter}" if "segmenter" in input.keys() else "",
    wildcard_constraints:
        variant="|".join(TWOD_SWEEP),
        fraction="[0-9.]+",
    threads: 1
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=480,
    conda:
        "../../envs/deep.yaml"
    log:
        f"{LOGS}/twod_train_size_sweep/{{variant}}_f{{fraction}}.log",
    benchmark:
        f"{BENCH}/twod_train_size_sweep/{{variant}}_f{{fraction}}.tsv"
    shell:
        "covidmtl twod-train --variant {wildcards.variant} --slices-index {input.slices}/index.csv {params.segmenter}"
        " --train-fraction {wildcards.fraction} --params {params.twod} --seed {params.seed} --threads {threads}"
        " --out-dir {params.out_dir} > {log} 2>&1"


rule twod_report_amyar:
    input:
        runs=twod_run_metrics(TWOD_AMYAR),
        paper_values="config/paper_values.csv",
    output:
        table2=report(
            f"{RESULTS}/twod/amyar/table2_segmentation.csv",
            caption="../report/amyar_table2.rst",
            category="Amyar et al.",
            subcategory="Tables",
            labels={"item": "Table 2", "content": "lesion segmentation"},
        ),
        table3=report(
            f"{RESULTS}/twod/amyar/table3_classification.csv",
            caption="../report/amyar_table3.rst",
            category="Amyar et al.",
            subcategory="Tables",
            labels={"item": "Table 3", "content": "classification"},
        ),
        figure6=report(
            f"{RESULTS}/twod/amyar/figure6_learning_curves.png",
            caption="../report/amyar_figure6.rst",
            category="Amyar et al.",
            subcategory="Figures",
            labels={"item": "Figure 6", "content": "learning curves"},
        ),
        figure7=report(
            f"{RESULTS}/twod/amyar/figure7_segmentation.png",
            caption="../report/amyar_figure7.rst",
            category="Amyar et al.",
            subcategory="Figures",
            labels={"item": "Figure 7", "content": "segmentation examples"},
        ),
        figure8=report(
            f"{RESULTS}/twod/amyar/figure8_roc_binary.png",
            caption="../report/amyar_figure8.rst",
            category="Amyar et al.",
            subcategory="Figures",
            labels={"item": "Figure 8", "content": "ROC curves, binary"},
        ),
        figure9=report(
            f"{RESULTS}/twod/amyar/figure9_roc_3class.png",
            caption="../report/amyar_figure9.rst",
            category="Amyar et al.",
            subcategory="Figures",
            labels={"item": "Figure 9", "content": "ROC curves, 3 classes"},
        ),
        figure10=report(
            f"{RESULTS}/twod/amyar/figure10_confusion.png",
            caption="../report/amyar_figure10.rst",
            category="Amyar et al.",
            subcategory="Figures",
            labels={"item": "Figure 10", "content": "confusion matrices"},
        ),
    params:
        run_dirs=lambda wildcards, input: [os.path.dirname(p) for p in input.runs],
        out_dir=subpath(output.table2, parent=True),
    conda:
        "../../envs/deep.yaml"
    log:
        f"{LOGS}/twod_report_amyar.log",
    benchmark:
        f"{BENCH}/twod_report_amyar.tsv"
    shell:
        "covidmtl twod-report-amyar --run-dirs {params.run_dirs} --paper-values {input.paper_values}"
        " --out-dir {params.out_dir} > {log} 2>&1"


rule twod_report_mga:
    input:
        runs=twod_run_metrics(TWOD_MGA),
        sweep=expand(
            f"{RESULTS}/twod/sweep/{{variant}}_f{{fraction}}/metrics.json",
            variant=TWOD_SWEEP,
            fraction=[f for f in config["twod"]["mga"]["size_sweep_fractions"] if f < 1],
        ),
        paper_values="config/paper_values.csv",
    output:
        table3=report(
            f"{RESULTS}/twod/mga/table3_segmentation.csv",
            caption="../report/mga_table3.rst",
            category="Mask-guided attention",
            subcategory="Tables",
            labels={"item": "Table 3", "content": "lesion segmentation"},
        ),
        table4=report(
            f"{RESULTS}/twod/mga/table4_classifiers.csv",
            caption="../report/mga_table4.rst",
            category="Mask-guided attention",
            subcategory="Tables",
            labels={"item": "Table 4", "content": "classifiers"},
        ),
        table5=report(
            f"{RESULTS}/twod/mga/table5_mga_stage.csv",
            caption="../report/mga_table5.rst",
            category="Mask-guided attention",
            subcategory="Tables",
            labels={"item": "Table 5", "content": "MGA stage"},
        ),
        sweep=report(
            f"{RESULTS}/twod/mga/size_sweep.csv",
            caption="../report/mga_size_sweep.rst",
            category="Mask-guided attention",
            subcategory="Tables",
            labels={"item": "Section 6.3", "content": "training-set size"},
        ),
        figure_sweep=report(
            f"{RESULTS}/twod/mga/figure_size_sweep.png",
            caption="../report/mga_figure_size_sweep.rst",
            category="Mask-guided attention",
            subcategory="Figures",
            labels={"item": "Section 6.3", "content": "training-set size"},
        ),
        figure_segmentation=report(
            f"{RESULTS}/twod/mga/figure_segmentation.png",
            caption="../report/mga_figure_segmentation.rst",
            category="Mask-guided attention",
            subcategory="Figures",
            labels={"item": "Segmentation", "content": "examples"},
        ),
    params:
        run_dirs=lambda wildcards, input: [os.path.dirname(p) for p in input.runs + input.sweep],
        out_dir=subpath(output.table3, parent=True),
    conda:
        "../../envs/deep.yaml"
    log:
        f"{LOGS}/twod_report_mga.log",
    benchmark:
        f"{BENCH}/twod_report_mga.tsv"
    shell:
        "covidmtl twod-report-mga --run-dirs {params.run_dirs} --paper-values {input.paper_values}"
        " --out-dir {params.out_dir} > {log} 2>&1"


rule twod_attribution:
    input:
        slices=rules.twod_slices.output[0],
        runs=twod_run_metrics(["resnet18_cbam", "mga"]),
    output:
        figure=report(
            f"{RESULTS}/twod/mga/figure10_attribution.png",
            caption="../report/mga_figure10.rst",
            category="Mask-guided attention",
            subcategory="Figures",
            labels={"item": "Figure 10", "content": "attribution maps"},
        ),
        in_mask=report(
            f"{RESULTS}/twod/mga/attribution_in_mask.csv",
            caption="../report/mga_attribution_in_mask.rst",
            category="Mask-guided attention",
            subcategory="Tables",
            labels={"item": "Figure 10 numbers", "content": "attribution inside the lesion"},
        ),
    params:
        twod=params_json("twod"),
        run_dirs=lambda wildcards, input: [os.path.dirname(p) for p in input.runs],
        out_dir=subpath(output.figure, parent=True),
    threads: 1
    conda:
        "../../envs/deep.yaml"
    log:
        f"{LOGS}/twod_attribution.log",
    benchmark:
        f"{BENCH}/twod_attribution.tsv"
    shell:
        "covidmtl twod-attrib --run-dirs {params.run_dirs} --slices-index {input.slices}/index.csv"
        " --params {params.twod} --threads {threads} --out-dir {params.out_dir} > {log} 2>&1"
