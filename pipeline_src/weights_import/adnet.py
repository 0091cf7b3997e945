"""The ADNet authors' released checkpoint: which TensorFlow variable is which parameter of pipeline_src.models.adnet.

Facts from the authors' repository (zhuyeye/Attentive-Deblurring, the code the paper calls RDAN):
- `checkpoints/RDAN/checkpoints/deblur.model-675000.{index,data-00000-of-00001}` is the GoPro model (`adnet_gopro`)
  their README scores at about 31.22 dB "with python codes" (run_model.py's default `--steps 675000`). A TF1 Saver
  checkpoint (V2 bundle, read by tf_checkpoint.py): 687 tensors, of which 228 are the generator's `weights` and
  `biases` under `g_net/`; the rest are Adam's slots (`.../Adam`, `.../Adam_1`), `beta1_power`, `beta2_power`
  and the step (`Variable`), which an import leaves out.
- The generator (models/models.py `DEBLUR.generator`) builds one encoder-decoder and reuses it at every scale:
  enc1_1, enc2_1, enc3_1 (5x5 convs, the last two stride 2), RDAB blocks enc{1,2,3}_{2,3,4} and
  dec3_{3,2,1}, dec2_{3,2,1}, dec1_{3,2,1} in that order, transposed convs dec2_4 and dec1_4, output conv dec1_0.
  Each RDAB (util/util.py) holds conv2d-1, conv2d-2, blur_attention/conv2d-{1,2} and
  channel_attention/conv2d-{1,2}: our body.0, body.2, spatial.fc{1,2} and channel.{squeeze,excite}.
- Layouts: conv kernels HWIO, transposed-conv kernels H x W x out x in; both go to PyTorch by the permutation
  (3, 2, 0, 1). Biases as they are.
- The graph applies the channel gate after the spatial one (`attention_order: serial`) and resizes with TF1's
  `resize_images` (`resize: tf1`). With both, our model reproduces the authors' graph to 1e-6 on the reference
  in tests/weights_import/fixtures/adnet_official; with the paper's parallel gates or PyTorch's half-pixel
  resize the same weights miss it by 2e-3 and 9e-2.
- Protocol: run_model.py's test() feeds whole 720 x 1280 frames / 255 and truncates the output to uint8:
  `gopro_8bit`, whose 1280-px tile runs a GoPro frame whole.
- The repository's defocus model (`checkpoints/defocus/checkpoints/deblur.model-105000`, README about 25.22 dB on
  DPDD, "train_c and test_c": the combined view) is the same network and layout (`adnet_dpdd`). Its defocus()
  reads DPDD's 16-bit PNGs with scipy.misc.imread, i.e. Pillow, which keeps their high byte: protocol
  `dpdd_single_8bit_pil`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline_src.errors import CheckpointError
from pipeline_src.weights_import import IMPORTS, ReleasedWeights

REPOSITORY = "https://github.com/zhuyeye/Attentive-Deblurring"
COMMIT = "bcad6fbca113efaad9fa5c8bd3d5f6defc893457"  # 2021-06-29, the last; the GoPro files are unchanged since f491075
SCOPE = "g_net"
CONVERSION = ("TF checkpoint g_net/* -> state dict; conv HWIO and deconv HWOI kernels permuted (3, 2, 0, 1) to "
              "OIHW / IOHW; biases as they are; float32; attention_order serial, resize tf1; optimizer slots left out")
MODEL_ARGS = {"widths": [32, 64, 128], "blocks_per_group": 3, "kernel_size": 5, "reduction": 16,
              "attention_order": "serial", "resize": "tf1"}
OPTIMIZER_STATE = ("/Adam", "/Adam_1")
OPTIMIZER_SCALARS = {"beta1_power", "beta2_power", "Variable"}
RAB_PARTS = {"body.0": "conv2d-1", "body.2": "conv2d-2", "spatial.fc1": "blur_attention/conv2d-1",
             "spatial.fc2": "blur_attention/conv2d-2", "channel.squeeze": "channel_attention/conv2d-1",
             "channel.excite": "channel_attention/conv2d-2"}


def layer_names() -> dict[str, str]:
    """PyTorch module path -> the authors' variable scope, for every conv of the network (114 of them)."""
    names = {"net.enc1.0": "enc1_1", "net.enc2.0.1": "enc2_1", "net.enc3.0.1": "enc3_1",
             "net.dec3.1.0": "dec2_4", "net.dec2.1.0": "dec1_4", "net.dec1.1": "dec1_0"}
    blocks = {}
    for i in range(3):  # encoder blocks count up (enc1_2..4), decoder blocks down (dec3_3..1), as the graph runs
        blocks.update({f"net.enc1.2.{i}": f"enc1_{i + 2}", f"net.enc2.1.{i}": f"enc2_{i + 2}",
                       f"net.enc3.1.{i}": f"enc3_{i + 2}", f"net.dec3.0.{i}": f"dec3_{3 - i}",
                       f"net.dec2.0.{i}": f"dec2_{3 - i}", f"net.dec1.0.{i}": f"dec1_{3 - i}"})
    for module, scope in blocks.items():
        names.update({f"{module}.{part}": f"{scope}/{tf}" for part, tf in RAB_PARTS.items()})
    return names


def tf_layout(model) -> dict[str, tuple[str, tuple[int, ...]]]:
    """TF variable name -> (state-dict key, the TF shape it must have), from the model it loads into."""
    state = model.state_dict()
    layout = {}
    for module, scope in layer_names().items():
        w = tuple(state[f"{module}.weight"].shape)
        layout[f"{SCOPE}/{scope}/weights"] = (f"{module}.weight", (w[2], w[3], w[1], w[0]))
        layout[f"{SCOPE}/{scope}/biases"] = (f"{module}.bias", tuple(state[f"{module}.bias"].shape))
    return layout


def to_state_dict(checkpoint, model, path: Path) -> dict:
    """Read every generator variable (checked: present, shaped as the model needs, CRC, finite) and convert it."""
    import torch

    layout = tf_layout(model)
    extra = [n for n in checkpoint.entries
             if n not in layout and n not in OPTIMIZER_SCALARS and not n.endswith(OPTIMIZER_STATE)]
    if extra:
        raise CheckpointError(f"{path}: holds {extra[0]!r} ({len(extra)} variable(s) ADNet does not have): not an "
                              "ADNet checkpoint of the authors' generator")
    state = {}
    for tf_name, (key, shape) in layout.items():
        entry = checkpoint.entries.get(tf_name)
        if entry is None:
            raise CheckpointError(f"{path}: no variable {tf_name} (expected shape {shape}): not the authors' ADNet "
                                  "generator, or a checkpoint cut short")
        if tuple(entry.shape) != shape:
            raise CheckpointError(f"{path}: {tf_name} has shape {tuple(entry.shape)}, expected {shape}: another "
                                  "network's checkpoint")
        a = checkpoint.read(tf_name)
        if not np.isfinite(a).all():
            raise CheckpointError(f"{path}: {tf_name} holds NaN or infinite values; the file is damaged: fetch it "
                                  "again")
        kernel = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a
        state[key] = torch.from_numpy(np.ascontiguousarray(kernel, dtype=np.float32))
    return state


def predictions(model, x):
    """The finest scale's prediction before the model contract's clamp (the authors' graph does not clip)."""
    return model.predictions(x)[-1]


def _release(name: str, description: str, folder: str, step: int, trained_on: str, protocol: str,
             index_blob: str, data_blob: str) -> ReleasedWeights:
    path = f"checkpoints/{folder}/checkpoints/deblur.model-{step}"
    return ReleasedWeights(
        name=name, description=description, paper="adnet", recipe="adnet", protocol=protocol, trained_on=trained_on,
        model_name="adnet", model_args=dict(MODEL_ARGS), repository=REPOSITORY, repository_path=f"{path}.index",
        commit=COMMIT, git_blob=index_blob, to_state_dict=to_state_dict, conversion=CONVERSION,
        format="tf_checkpoint", raw_output=predictions, data_file=(f"{path}.data-00000-of-00001", data_blob))


# git object ids from the repository's tree at COMMIT (`git ls-tree bcad6fb checkpoints/*/checkpoints/`)
GOPRO = _release("adnet_gopro", "ADNet (RDAN) GoPro model, step 675000 (run_model.py's default)", "RDAN", 675000,
                 "gopro", "gopro_8bit", "920dfbd86927c68a12c09cd6e5225772c5a809fc",
                 "878d23aa4b4cd04ab50f1ff4543c71c94dced321")
DPDD = _release("adnet_dpdd", "ADNet defocus model on DPDD's combined view, step 105000 (README)", "defocus", 105000,
                "dpdd", "dpdd_single_8bit_pil", "79b9c1b4ac6ab2648feb9c93a0aacbdd60267763",
                "986711aae4d55d757d7abd72f2256d89ccc223c2")
RELEASES = (GOPRO, DPDD)
for _r in RELEASES:
    IMPORTS.register(_r.name)(lambda r=_r: r)
