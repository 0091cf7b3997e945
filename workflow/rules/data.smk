# Data stages: synthesize (or fetch) -> index (manifest) -> patches; weights for the perceptual losses.


rule synthesize:
    output:
        directory("data/raw/{name}"),
    log:
        "logs/synthesize/{name}.log",
    # only the synthetic sets: a real dataset under data/raw/ comes from `fetch` (or by hand), not from here
    wildcard_constraints:
        name=one_of(config["synthesize"]),
    params:
        kind=synth_kind,
        preset=config["preset"],
        seed=config["seed"],
        workers=2,  # a fixed number, not {threads}: the command must not change with --cores (DVC runs the same)
    threads: JOB_THREADS
    priority: DATA_FIRST
    conda:
        "../../environment.yml"
    shell:
        "python -m pipeline_src synthesize {params.kind} --preset {params.preset} --seed {params.seed} "
        "--workers {params.workers} --out {output} > {log} 2>&1"


rule weights:
    output:
        "data/weights/status.json",
    log:
        "logs/weights.log",
    params:
        names=config["weights"],
    conda:
        "../../environment.yml"
    shell:
        "python -m pipeline_src weights --config config/config.yaml --out {output} > {log} 2>&1"


rule index:
    input:
        dataset_root,
    output:
        "data/manifests/{name}.json",
    log:
        "logs/index/{name}.log",
    params:
        layout=dataset_layout,
    priority: DATA_FIRST
    conda:
        "../../environment.yml"
    shell:
        "python -m pipeline_src index {wildcards.name} --layout {params.layout} --root {input} --out {output} "
        "> {log} 2>&1"


rule patches:
    input:
        "data/manifests/{name}.json",
    output:
        directory("data/patches/{name}"),
    log:
        "logs/patches/{name}.log",
    params:
        preset=config["preset"],
    threads: JOB_THREADS
    priority: DATA_FIRST
    conda:
        "../../environment.yml"
    shell:
        "python -m pipeline_src patches --manifest {input} --out {output} --preset {params.preset} > {log} 2>&1"
