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
        per_image=report(
            "data/metrics/{name}.csv",
            caption="../report/per_image.rst",
            category=paper_of_evaluation,
            subcategory="{name}",
        ),
        images=report(
            directory("data/metrics/{name}"),
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
        name=r"[A-Za-z0-9_-]+",
    threads: 2
    conda:
        "../../environment.yml"
    shell:
        "python -m pipeline_src evaluate --checkpoint {input.checkpoint} --manifest {input.manifest} "
        "--split test --baselines --out {output.metrics} --per-image {output.per_image} "
        "--images {output.images} > {log} 2>&1"


rule report:
    input:
        metrics=expand("data/metrics/{name}.json", name=config["evaluate"]),
        per_image=expand("data/metrics/{name}.csv", name=config["evaluate"]),
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
