import pytest
import torch

from cifar_s12 import device as runtime
from cifar_s12.dataset import CLASSES
from cifar_s12.runs.checkpoints import load_checkpoint, read_safetensors, save_safetensors
from cifar_s12.utils import UserError


def lightning_style(checkpoint_path, out_path):
    """What the Lightning module saves: weights under ``model.``, the recipe in hyper_parameters."""
    plain = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    state = {f"model.{k}": v for k, v in plain["state_dict"].items()}
    state["criterion.dummy"] = torch.zeros(1)  # other sub-modules of the LightningModule are not the network's
    torch.save({"epoch": 1, "global_step": 10, "pytorch-lightning_version": "2.5.0", "state_dict": state,
                "hyper_parameters": {"model_name": plain["model"], "model_kwargs": plain["model_kwargs"],
                                     "config": plain["config"], "classes": plain["classes"]}}, out_path)
    return out_path


def test_pt_and_lightning_ckpt_load_to_the_same_model(checkpoint, tmp_path, monkeypatch):
    pt = load_checkpoint(checkpoint)
    ckpt = load_checkpoint(lightning_style(checkpoint, tmp_path / "last.ckpt"))
    assert pt.classes == ckpt.classes == CLASSES and pt.model_name == ckpt.model_name == "custom_resnet"
    assert not pt.model.training and not ckpt.model.training
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(pt.model(x), ckpt.model(x), rtol=0, atol=0)
    assert pt.config["epochs"] == 2 and pt.config["precision"] == "auto"
    # Inference in the precision the trainer ran: the recipe's "auto" is bf16 on a CPU with bf16 instructions ...
    monkeypatch.setattr(runtime, "native_cpu_bf16", lambda: True)
    assert pt.runtime("cpu").dtype == torch.bfloat16
    pt.config["precision"] = "fp32"  # ... and a run made with --precision fp32 is read in fp32
    assert pt.runtime("cpu").dtype is None
    pt.config["precision"] = "fp16"  # a GPU run in fp16, read on a laptop: this CPU's own choice, not an error
    assert pt.runtime("cpu").dtype == torch.bfloat16


@pytest.mark.parametrize("content, message", [
    (b"hello, not a checkpoint", "is not a checkpoint"),
    (None, "does not exist"),
])
def test_files_that_are_not_checkpoints(tmp_path, content, message):
    path = tmp_path / "model.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_checkpoint(path)


def test_a_torch_file_without_model_and_classes_is_refused(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(UserError, match="not a cifar_s12 checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    torch.save(torch.zeros(3), tmp_path / "t.pt")
    with pytest.raises(UserError, match="not a checkpoint"):
        load_checkpoint(tmp_path / "t.pt")


def test_a_tampered_checkpoint_is_refused_not_a_traceback(checkpoint, tmp_path):
    torch.save({"format": "cifar_s12.checkpoint/1"}, tmp_path / "tag-only.pt")
    with pytest.raises(UserError, match="incomplete cifar_s12 checkpoint .*no model, model_kwargs"):
        load_checkpoint(tmp_path / "tag-only.pt")
    payload = torch.load(checkpoint, weights_only=True)
    payload["classes"] = ["a", "b", "c"]
    torch.save(payload, tmp_path / "three.pt")
    with pytest.raises(UserError, match="names 3 classes; the models here predict 10"):
        load_checkpoint(tmp_path / "three.pt")
    with pytest.raises(UserError, match="is a folder"):
        load_checkpoint(tmp_path)


def test_a_lightning_ckpt_with_other_weights_is_refused(checkpoint, tmp_path):
    payload = torch.load(lightning_style(checkpoint, tmp_path / "a.ckpt"), weights_only=True)
    payload["state_dict"] = {k: v for k, v in payload["state_dict"].items() if not k.startswith("model.fc")}
    torch.save(payload, tmp_path / "b.ckpt")
    with pytest.raises(UserError, match="do not fit model 'custom_resnet'.*fc.weight"):
        load_checkpoint(tmp_path / "b.ckpt")


def test_safetensors_weights_are_fp16_and_load_to_the_same_predictions(checkpoint, tmp_path):
    pt = load_checkpoint(checkpoint)
    path = tmp_path / "w.safetensors"
    save_safetensors(path, pt.model, pt.model_name, {"logit_scale": 0.125}, pt.config, pt.classes)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:  # what the file holds: every floating tensor in fp16
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16, torch.int64}  # (int: BN's step count)
    state, meta = read_safetensors(path)
    assert meta["model"] == "custom_resnet" and state.keys() == pt.model.state_dict().keys()
    shipped = load_checkpoint(path)
    assert shipped.classes == CLASSES and shipped.config == pt.config and not shipped.model.training
    # each weight is the original rounded to fp16, nothing else
    original = pt.model.state_dict()
    for key, value in shipped.model.state_dict().items():
        assert torch.equal(value, original[key].half().float() if value.is_floating_point() else original[key]), key
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        # fp16 storage rounds each weight to 11 significant bits: the same argmax, logits within fp16's rounding
        torch.testing.assert_close(shipped.model(x), pt.model(x), rtol=2e-2, atol=2e-3)
    assert shipped.model.prep[0].weight.dtype == torch.float32  # computed in fp32 (or autocast), not in fp16


def test_a_safetensors_file_of_something_else_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(UserError, match="not cifar_s12 weights"):
        load_checkpoint(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not at all")
    with pytest.raises(UserError, match="is not a safetensors file"):
        load_checkpoint(tmp_path / "junk.safetensors")


class _RunsCode:
    """Unpickling an instance calls ``pathlib.Path.touch`` on a file: what a malicious checkpoint would do."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.target),)


@pytest.mark.parametrize("name", ["model.pt", "last.ckpt"])
def test_a_checkpoint_whose_pickle_runs_code_is_refused_and_runs_nothing(tmp_path, name, capsys):
    marker = tmp_path / "code-ran"
    path = tmp_path / name
    torch.save({"format": "cifar_s12.checkpoint/1", "state_dict": {}, "evil": _RunsCode(marker)}, path)
    with pytest.raises(UserError, match=r"refused: it holds more than tensors .*could run code \(it names "):
        load_checkpoint(path)
    assert not marker.exists()
    # ... and through the CLI (predict, report, --resume): one error line, exit 2, still nothing created
    from cifar_s12.__main__ import main

    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    for args in (["predict", "--checkpoint", str(path), str(image)],
                 ["report", "--checkpoint", str(path), "--out", str(tmp_path / "report")],
                 ["train", "--trainer", "lightning", "--resume", str(path), "--out", str(tmp_path / "run")]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "could run code" in err, (args, err)
        assert not marker.exists()
