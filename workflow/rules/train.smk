# Training: one job per (recipe, dataset, phase). Phase k > 1 starts from phase k-1's final.pt, which the
# train command finds beside its --out folder (input `after` makes the job wait for it).
# `gpu=1` lets the default profile run one training at a time; threads feed torch's intra-op pool.


rule train:
    input:
        after=lambda wc: train_job(wc)["after"],
        recipe="config/models/{recipe}.yaml",
        manifest="data/manifests/{dataset}.json",
        patches="data/patches/{dataset}",
        weights="data/weights/status.json",
    output:
        "data/runs/{recipe}/{dataset}/phase{phase}/final.pt",
    params:
        out=lambda wc: run_dir(wc.recipe, wc.dataset, int(wc.phase)),
        preset=PRESET,
        seed=SEED,
    wildcard_constraints:
        phase=r"\d+",
    threads: 2
    resources:
        gpu=1,
    shell:
        "{PY} train --recipe {input.recipe} --phase {wildcards.phase} --dataset {wildcards.dataset} "
        "--manifest {input.manifest} --patches {input.patches} --out {params.out} "
        "--preset {params.preset} --seed {params.seed}"
