# Evaluation with each paper's protocol (config/protocols.yaml, named by the recipe), then the report.
# report(): `snakemake --report report.html` shows the results table, the plots and the side-by-side images,
# one category per paper (captions in workflow/report/).


rule evaluate:
    input:
        checkpoint=eval_checkpoint,
        manifest=eval_manifest,
        root=eval_root,
        weights="data/weights/status.json",
    output:
        metrics="data/metrics/{name}.json",
        record="data/metrics/{name}.record.json",
        per_image=report(
            "data/metrics/{name}.csv",
            caption="../report/per_image.rst",
            category=paper_of_evaluation,
            subcategory="{name}",
        ),
        images=report(
            directory("data/evaluate/{name}"),
            patterns=["{image}.png"],
            caption="../report/side_by_side.rst",
            category=paper_of_evaluation,
            subcategory="{name}",
        ),
    log:
        "logs/evaluate/{name}.log",
    benchmark:
        "benchmarks/evaluate/{name}.tsv"
    wildcard_constraints:
        name=one_of(config["evaluate"]),
    threads: JOB_THREADS
    conda:
        "../../environment.yml"
    shell:
        "python -m pipeline_src evaluate --checkpoint {input.checkpoint} --manifest {input.manifest} "
        "--split test --baselines --out {output.metrics} --record {output.record} "
        "--per-image {output.per_image} --images {output.images} > {log} 2>&1"


# The authors' imported weights, evaluated exactly like our models (the report puts them side by side).
use rule evaluate as evaluate_authors with:
    input:
        checkpoint=eval_checkpoint,
        manifest=eval_manifest,
        weights="data/weights/status.json",
    log:
        "logs/evaluate_authors/{name}.log",
    benchmark:
        "benchmarks/evaluate_authors/{name}.tsv"
    wildcard_constraints:
        name=one_of(config["authors_weights"]),


rule report:
    input:
        records=expand("data/metrics/{name}.record.json", name=evaluations()),
        per_image=expand("data/metrics/{name}.csv", name=evaluations()),
        published="config/published.yaml",
    output:
        results="data/report/results.md",
        rows=report(
            "data/report/rows.csv",
            caption="../report/results.rst",
            category="Results",
        ),
        plots=report(
            directory("data/report/plots"),
            patterns=["{evaluation}_bars.png", "{evaluation}_per_image.png"],
            caption="../report/plots.rst",
            category=paper_of_evaluation,
            subcategory=evaluation_name,
        ),
    log:
        "logs/report.log",
    conda:
        "../../environment.yml"
    shell:
        "python -m pipeline_src report --metrics-dir data/metrics --published {input.published} "
        "--out data/report > {log} 2>&1"
