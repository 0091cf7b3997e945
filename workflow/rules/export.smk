# Export and deployment, per trained model named in config `export:`: ONNX (+ parity, op audit) ->
# FP16 / INT8 variants (+ quality gate) -> TensorRT engine report -> edge bundle.


def export_job(wc):
    return config["export"][wc.name]


def export_ckpt(wc):
    return final_pt(export_job(wc))


rule export_onnx:
    input:
        checkpoint=export_ckpt,
        manifest=lambda wc: f"data/manifests/{export_job(wc)['dataset']}.json",
    output:
        onnx="data/export/{name}/model.onnx",
        parity="data/export/{name}/parity.json",
        ops="data/export/{name}/ops.json",
    params:
        out="data/export/{name}",
    shell:
        "{PY} export-onnx --checkpoint {input.checkpoint} --out {params.out} --manifest {input.manifest}"


rule quantize:
    input:
        onnx="data/export/{name}/model.onnx",
        manifest=lambda wc: f"data/manifests/{export_job(wc)['dataset']}.json",
        patches=lambda wc: f"data/patches/{export_job(wc)['dataset']}",
    output:
        fp16="data/export/{name}/model_fp16.onnx",
        int8="data/export/{name}/model_int8.onnx",
        quality="data/export/{name}/quality.json",
    params:
        train_patches=lambda wc: f"data/patches/{export_job(wc)['dataset']}/train",
    threads: 2
    shell:
        "{PY} quantize --onnx {input.onnx} --manifest {input.manifest} --patches {params.train_patches}"


# Always in the DAG, so Snakemake and DVC hold the same jobs: the report is always written; the engine only
# where TensorRT and CUDA are present (engines: auto), demanded with engines: on, never with engines: off.
rule build_engine:
    input:
        onnx="data/export/{name}/model_{precision}.onnx",
        manifest=lambda wc: f"data/manifests/{export_job(wc)['dataset']}.json",
    output:
        "data/engines/{name}/build-report-{precision}.json",
    params:
        out="data/engines/{name}",
        when=config["engines"],
    wildcard_constraints:
        precision="fp16|int8",
    resources:
        gpu=1,
    shell:
        "{PY} build-engine --onnx {input.onnx} --out-dir {params.out} --manifest {input.manifest} "
        "--when {params.when}"


rule bundle:
    input:
        onnx="data/export/{name}/model.onnx",
        fp16="data/export/{name}/model_fp16.onnx",
        int8="data/export/{name}/model_int8.onnx",
        quality="data/export/{name}/quality.json",
        manifest=lambda wc: f"data/manifests/{export_job(wc)['dataset']}.json",
    output:
        directory("data/bundles/{name}"),
    params:
        export="data/export/{name}",
    shell:
        "{PY} bundle --export-dir {params.export} --out {output} --manifest {input.manifest}"
