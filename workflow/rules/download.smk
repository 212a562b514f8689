# Raw data. The built-in synthetic cohort is "downloaded" by generating it; real datasets
# (issue: dataset adapters) add their download rules here. Every dataset ends in the
# `dataset_index` checkpoint, whose index.csv lists the subjects that curation reads.


rule synthetic_clinical:
    output:
        f"{RAW}/synthetic/clinical.csv",
    params:
        synthetic=params_json("synthetic"),
    conda:
        "../../envs/imaging.yaml"
    log:
        f"{LOGS}/synthetic_clinical.log",
    benchmark:
        f"{BENCH}/synthetic_clinical.tsv"
    shell:
        "covidmtl synth-clinical --params {params.synthetic} --out {output} > {log} 2>&1"


rule synthetic_subject:
    input:
        clinical=rules.synthetic_clinical.output,
    output:
        directory(f"{RAW}/synthetic/subjects/{{subject}}"),
    params:
        synthetic=params_json("synthetic"),
    conda:
        "../../envs/imaging.yaml"
    log:
        f"{LOGS}/synthetic_subject/{{subject}}.log",
    benchmark:
        f"{BENCH}/synthetic_subject/{{subject}}.tsv"
    shell:
        "covidmtl synth-subject --subject {wildcards.subject} --clinical {input.clinical}"
        " --params {params.synthetic} --out-dir {output} > {log} 2>&1"


rule download:
    input:
        registry=config["download"]["registry"],
    output:
        f"{RAW}/{{dataset}}/.complete",
    params:
        download=params_json("download"),
        out_dir=lambda wildcards, output: os.path.dirname(output[0]),
        mirror=lambda wildcards: f"--mirror {shlex.quote(config['mirror'])}" if config["mirror"] else "",
    conda:
        "../../envs/imaging.yaml"
    log:
        f"{LOGS}/download/{{dataset}}.log",
    benchmark:
        f"{BENCH}/download/{{dataset}}.tsv"
    shell:
        "covidmtl download --dataset {wildcards.dataset} --registry {input.registry} --out-dir {params.out_dir}"
        " --params {params.download} {params.mirror} --no-progress > {log} 2>&1"


checkpoint dataset_index:
    input:
        dataset_raw_inputs,
    output:
        index=f"{RAW}/{{dataset}}/index.csv",
    params:
        raw_dir=lambda wildcards: f"{RAW}/{wildcards.dataset}",
    conda:
        "../../envs/imaging.yaml"
    log:
        f"{LOGS}/dataset_index/{{dataset}}.log",
    benchmark:
        f"{BENCH}/dataset_index/{{dataset}}.tsv"
    shell:
        "covidmtl dataset-index --dataset {wildcards.dataset} --raw-dir {params.raw_dir}"
        " --out {output.index} > {log} 2>&1"
