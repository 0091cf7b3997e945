# Training: one job per (recipe, dataset, phase). Phase k > 1 starts from phase k-1's final.pt, which the
# train command finds beside its --out folder (input `after` makes the job wait for it).
# `gpu=1`: the one rule that needs a GPU. Locally the Snakefile caps such jobs at one at a time; the SLURM
# profile turns it into a GPU request (or drops it on clusters without GPU gres). threads feed torch's pool.


rule train:
    input:
        after=train_after,
        recipe="config/models/{recipe}.yaml",
        manifest="data/manifests/{dataset}.json",
        patches="data/patches/{dataset}",
        weights="data/weights/status.json",
    output:
        "data/runs/{recipe}/{dataset}/phase{phase}/final.pt",
    log:
        "logs/train/{recipe}/{dataset}/phase{phase}.log",
    benchmark:
        "benchmarks/train/{recipe}/{dataset}/phase{phase}.tsv"
    params:
        out=out_dir,
        preset=config["preset"],
        seed=config["seed"],
    wildcard_constraints:
        phase=r"\d+",
    threads: 2
    resources:
        gpu=1,
    conda:
        "../../environment.yml"
    shell:
        "python -m pipeline_src train --recipe {input.recipe} --phase {wildcards.phase} "
        "--dataset {wildcards.dataset} --manifest {input.manifest} --patches {input.patches} "
        "--out {params.out} --preset {params.preset} --seed {params.seed} > {log} 2>&1"
