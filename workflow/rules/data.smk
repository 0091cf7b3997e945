# Data stages: synthesize (or fetch) -> index (manifest) -> patches; weights for the perceptual losses.


rule synthesize:
    output:
        directory("data/raw/{name}"),
    params:
        kind=lambda wc: config["synthesize"][wc.name]["kind"],
        preset=PRESET,
        seed=SEED,
        workers=2,  # a fixed number, not {threads}: the command must not change with --cores (DVC runs the same)
    threads: 2
    shell:
        "{PY} synthesize {params.kind} --preset {params.preset} --seed {params.seed} --workers {params.workers} "
        "--out {output}"


rule weights:
    output:
        "data/weights/status.json",
    params:
        names=config["weights"],
    shell:
        "{PY} weights --config config/config.yaml --out {output}"


rule index:
    input:
        lambda wc: config["datasets"][wc.name]["root"],
    output:
        "data/manifests/{name}.json",
    params:
        layout=lambda wc: config["datasets"][wc.name]["layout"],
    shell:
        "{PY} index {wildcards.name} --layout {params.layout} --root {input} --out {output}"


rule patches:
    input:
        "data/manifests/{name}.json",
    output:
        directory("data/patches/{name}"),
    params:
        preset=PRESET,
    threads: 2
    shell:
        "{PY} patches --manifest {input} --out {output} --preset {params.preset}"
