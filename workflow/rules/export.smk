# Export and deployment, per trained model named in config `export:`: ONNX (+ parity, op audit) ->
# FP16 / INT8 variants (+ quality gate) -> TensorRT engine report -> edge bundle.


rule export_onnx:
    input:
        checkpoint=export_checkpoint,
        manifest=export_manifest,
    output:
        onnx="data/export/{name}/model.onnx",
        parity="data/export/{name}/parity.json",
        ops="data/export/{name}/ops.json",
    log:
        "logs/export_onnx/{name}.log",
    benchmark:
        "benchmarks/export_onnx/{name}.tsv"
    params:
        out=out_dir,
    conda:
        "../../environment.yml"
    shell:
        "python -m pipeline_src export-onnx --checkpoint {input.checkpoint} --out {params.out} "
        "--manifest {input.manifest} > {log} 2>&1"


rule quantize:
    input:
        onnx="data/export/{name}/model.onnx",
        manifest=export_manifest,
        patches=export_patches,
    # model_int8.onnx is written only when it passes the quality gate (quality.json says which): not an
    # output either orchestrator can require; the bundle ships it when it is there
    output:
        fp16="data/export/{name}/model_fp16.onnx",
        quality="data/export/{name}/quality.json",
        metrics="data/metrics/export/{name}.json",
    log:
        "logs/quantize/{name}.log",
    benchmark:
        "benchmarks/quantize/{name}.tsv"
    params:
        train_patches=train_patches,
        preset=config["preset"],
    threads: JOB_THREADS
    conda:
        "../../environment.yml"
    shell:
        "python -m pipeline_src quantize --onnx {input.onnx} --manifest {input.manifest} "
        "--patches {params.train_patches} --metrics {output.metrics} --preset {params.preset} > {log} 2>&1"


# Always in the DAG, so Snakemake and DVC hold the same jobs: the report is always written; the engine only
# where TensorRT and CUDA are present (engines: auto), demanded with engines: on, never with engines: off.
# No GPU in the rule: without TensorRT it only writes the report, and a cluster without GPUs must still run
# it. Profiles add `gpu` where a GPU is there to use (workflow/profiles/*).
rule build_engine:
    input:
        onnx="data/export/{name}/model_{precision}.onnx",
        manifest=export_manifest,
    output:
        "data/engines/{name}/build-report-{precision}.json",
    log:
        "logs/build_engine/{name}-{precision}.log",
    benchmark:
        "benchmarks/build_engine/{name}-{precision}.tsv"
    params:
        out=out_dir,
        when=config["engines"],
    wildcard_constraints:
        precision="fp16|int8",
    conda:
        "../../environment.yml"
    shell:
        "python -m pipeline_src build-engine --onnx {input.onnx} --out-dir {params.out} "
        "--manifest {input.manifest} --when {params.when} > {log} 2>&1"


rule bundle:
    input:
        onnx="data/export/{name}/model.onnx",
        fp16="data/export/{name}/model_fp16.onnx",
        quality="data/export/{name}/quality.json",
        manifest=export_manifest,
    output:
        directory("data/bundles/{name}"),
    log:
        "logs/bundle/{name}.log",
    benchmark:
        "benchmarks/bundle/{name}.tsv"
    params:
        export=export_dir,
    conda:
        "../../environment.yml"
    shell:
        "python -m pipeline_src bundle --export-dir {params.export} --out {output} "
        "--manifest {input.manifest} > {log} 2>&1"
