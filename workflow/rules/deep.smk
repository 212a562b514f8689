# 3D deep models of COVID-MTL (sections 4.3, 5.3-5.4): one training job per variant of
# Tables 3 and 4 and of the loss ablation; training jobs request a GPU (see profiles/slurm).

from covidmtl.deep.variants import VARIANTS as DEEP_VARIANTS

LUNG_VOLUMES = per_subject(f"{RESULTS}/lungseg/{{dataset}}/{{subject}}/lung_volume.nii.gz")


rule deep_train:
    input:
        unpack(deep_train_inputs),
    output:
        # checkpoint.pt is deliberately not an output: Snakemake would delete it when a job
        # fails, and it is what an interrupted training resumes from.
        model=f"{RESULTS}/deep/{{variant}}/model.pt",
        history=f"{RESULTS}/deep/{{variant}}/history.csv",
        predictions=f"{RESULTS}/deep/{{variant}}/predictions.csv",
        metrics=f"{RESULTS}/deep/{{variant}}/metrics.json",
    params:
        deep=params_json("deep"),
        out_dir=subpath(output.metrics, parent=True),
        features=lambda wildcards, input: f"--features {input.features}" if "features" in input.keys() else "",
        init=lambda wildcards, input: f"--init-from {input.init}" if "init" in input.keys() else "",
        seed=config["seed"],
    wildcard_constraints:
        variant="|".join(DEEP_VARIANTS),
    # the training process plus its data-loading workers (deep.train.num_workers)
    threads: max(2, config["deep"]["train"]["num_workers"] + 1)
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=720,
    conda:
        "../../envs/deep.yaml"
    log:
        f"{LOGS}/deep_train/{{variant}}.log",
    benchmark:
        f"{BENCH}/deep_train/{{variant}}.tsv"
    shell:
        "covidmtl deep-train --variant {wildcards.variant} --volume-files {input.volumes}"
        " --manifest {input.manifest} --split {input.split} {params.features} {params.init}"
        " --params {params.deep} --seed {params.seed} --threads {threads} --out-dir {params.out_dir}"
        " > {log} 2>&1"


rule deep_report:
    input:
        metrics=expand(rules.deep_train.output.metrics, variant=DEEP_VARIANTS),
        paper_values="config/paper_values.csv",
    output:
        metrics=f"{RESULTS}/deep/report/metrics_deep.csv",
        table3=report(
            f"{RESULTS}/deep/report/table3_deep.csv",
            caption="../report/deep_table3.rst",
            category="COVID-MTL",
            subcategory="Tables",
            labels={"item": "Table 3, deep rows", "content": "CT and NAT diagnosis, 3D models"},
        ),
        table4=report(
            f"{RESULTS}/deep/report/table4_deep.csv",
            caption="../report/deep_table4.rst",
            category="COVID-MTL",
            subcategory="Tables",
            labels={"item": "Table 4, deep rows", "content": "severity, 3D models"},
        ),
        figure4=report(
            f"{RESULTS}/figures/figure4_shift3d.png",
            caption="../report/figure4.rst",
            category="COVID-MTL",
            subcategory="Figures",
            labels={"item": "Figure 4", "content": "the effect of Shift3D"},
        ),
        figure4_pdf=f"{RESULTS}/figures/figure4_shift3d.pdf",
        figure9=report(
            f"{RESULTS}/figures/figure9_losses.png",
            caption="../report/figure9.rst",
            category="COVID-MTL",
            subcategory="Figures",
            labels={"item": "Figure 9", "content": "multitask loss functions"},
        ),
        figure9_pdf=f"{RESULTS}/figures/figure9_losses.pdf",
        figure10=report(
            f"{RESULTS}/figures/figure10_transfer.png",
            caption="../report/figure10.rst",
            category="COVID-MTL",
            subcategory="Figures",
            labels={"item": "Figure 10", "content": "transfer learning to severity"},
        ),
        figure10_pdf=f"{RESULTS}/figures/figure10_transfer.pdf",
    params:
        run_dirs=lambda wildcards, input: [os.path.dirname(p) for p in input.metrics],
        out_dir=subpath(output.metrics, parent=True),
        figures_dir=subpath(output.figure4, parent=True),
    conda:
        "../../envs/deep.yaml"
    log:
        f"{LOGS}/deep_report.log",
    benchmark:
        f"{BENCH}/deep_report.tsv"
    shell:
        "covidmtl deep-report --run-dirs {params.run_dirs} --out-dir {params.out_dir}"
        " --figures-dir {params.figures_dir} --paper-values {input.paper_values} > {log} 2>&1"


rule deep_cam:
    input:
        model=f"{RESULTS}/deep/mtl_shift_features/model.pt",
        predictions=f"{RESULTS}/deep/mtl_shift_features/predictions.csv",
        volumes=LUNG_VOLUMES,
        manifest=rules.manifest.output[0],
        split=rules.split.output[0],
        features=rules.features_merge.output.parquet,
    output:
        png=report(
            f"{RESULTS}/figures/figure7_cam.png",
            caption="../report/figure7.rst",
            category="COVID-MTL",
            subcategory="Figures",
            labels={"item": "Figure 7", "content": "class activation maps"},
        ),
        pdf=f"{RESULTS}/figures/figure7_cam.pdf",
        cases=f"{RESULTS}/figures/figure7_cases.csv",
    params:
        out_dir=subpath(output.png, parent=True),
    threads: 2
    resources:
        # CPU job; at the paper's 200x250x250 input a ResNet3D-34 backward pass for Grad-CAM
        # holds several GB of activations, more than the SLURM profile's 4 GB default
        mem_mb=16000,
    conda:
        "../../envs/deep.yaml"
    log:
        f"{LOGS}/deep_cam.log",
    benchmark:
        f"{BENCH}/deep_cam.tsv"
    shell:
        "covidmtl deep-cam --model {input.model} --predictions {input.predictions} --volume-files {input.volumes}"
        " --manifest {input.manifest} --split {input.split} --features {input.features} --task ct"
        " --threads {threads} --out-dir {params.out_dir} > {log} 2>&1"
