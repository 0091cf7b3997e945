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
        final="data/runs/{recipe}/{dataset}/phase{phase}/final.pt",
        summary="data/runs/{recipe}/{dataset}/phase{phase}/phase.json",
        curves="data/metrics/train/{recipe}-{dataset}-phase{phase}.csv",
        loss="data/metrics/loss/{recipe}-{dataset}-phase{phase}.csv",
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
    threads: JOB_THREADS
    resources:
        gpu=1,
    conda:
        "../../environment.yml"
    shell:
        "python -m pipeline_src train --recipe {input.recipe} --phase {wildcards.phase} "
        "--dataset {wildcards.dataset} --manifest {input.manifest} --patches {input.patches} "
        "--out {params.out} --preset {params.preset} --seed {params.seed} --curves {output.curves} "
        "--loss-curve {output.loss} > {log} 2>&1"


# The authors' released weights (config `authors_weights`), imported exactly: a final.pt like a trained one.
rule import_weights:
    input:
        weights="data/weights/status.json",
    output:
        final="data/runs/authors/{weights}/final.pt",
        summary="data/runs/authors/{weights}/phase.json",
    log:
        "logs/import_weights/{weights}.log",
    conda:
        "../../environment.yml"
    shell:
        # reads the file(s) `fetch` puts in data/weights/ for this release (the registry's filename)
        "python -m pipeline_src import-weights {wildcards.weights} --out {output.final} > {log} 2>&1"
