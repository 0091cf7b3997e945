# Evaluation with each paper's protocol (config/protocols.yaml, named by the recipe), then the report.


def eval_job(wc):
    return config["evaluate"][wc.name]


rule evaluate:
    input:
        checkpoint=lambda wc: final_pt(eval_job(wc)),
        manifest=lambda wc: f"data/manifests/{eval_job(wc)['dataset']}.json",
        root=lambda wc: f"data/raw/{eval_job(wc)['dataset']}",
        weights="data/weights/status.json",
    output:
        metrics="data/metrics/{name}.json",
        per_image="data/metrics/{name}.csv",
        images=directory("data/metrics/{name}"),
    wildcard_constraints:
        name=r"[A-Za-z0-9_-]+",
    threads: 2
    shell:
        "{PY} evaluate --checkpoint {input.checkpoint} --manifest {input.manifest} --split test --baselines "
        "--out {output.metrics} --per-image {output.per_image} --images {output.images}"


rule report:
    input:
        metrics=expand("data/metrics/{name}.json", name=config["evaluate"]),
        per_image=expand("data/metrics/{name}.csv", name=config["evaluate"]),
        published="config/published.yaml",
    output:
        results="data/report/results.md",
        rows="data/report/rows.csv",
        plots=directory("data/report/plots"),
    shell:
        "{PY} report --metrics-dir data/metrics --published {input.published} --out data/report"
