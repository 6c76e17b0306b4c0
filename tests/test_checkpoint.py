import os
import pickle

import numpy as np
import pytest
import torch
import torchvision

from adet.checkpoint import CheckpointError, DetectionCheckpointer, WeightFileError
from adet.modeling import build_model

from .conftest import make_tiny_cfg


def fresh_model(seed=1, *overrides):
    torch.manual_seed(seed)
    return build_model(make_tiny_cfg(*overrides))


def test_good_checkpoint_in_official_and_bare_format(tmp_path, tiny_model):
    state = tiny_model.state_dict()
    official = dict(state)
    official["mask_pred.sizes_of_interest"] = torch.tensor([64, 128, 256, 512, 1024])  # official-only buffers
    official["mask_pred._iter"] = torch.zeros(1)
    torch.save({"model": official, "iteration": 7}, tmp_path / "official.pth")
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "bare_ddp.pth")
    for name in ("official.pth", "bare_ddp.pth"):
        model = fresh_model()
        extra = DetectionCheckpointer(model).load(str(tmp_path / name))
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert DetectionCheckpointer(fresh_model()).load(str(tmp_path / "official.pth"))["iteration"] == 7
    assert extra == {}


def test_partial_checkpoint_is_an_error_unless_not_strict(tmp_path, tiny_model):
    state = {k: v for k, v in tiny_model.state_dict().items() if not k.startswith("mask_branch.tower")}
    path = str(tmp_path / "partial.pth")
    torch.save({"model": state}, path)
    model = fresh_model()
    before = model.state_dict()["mask_branch.tower.4.weight"].clone()
    with pytest.raises(CheckpointError) as err:
        DetectionCheckpointer(model).load(path)
    assert "missing from the checkpoint" in str(err.value) and "mask_branch.tower.0.0.weight" in str(err.value)
    DetectionCheckpointer(model).load(path, strict=False)
    assert torch.equal(model.state_dict()["mask_branch.tower.4.weight"], before)  # left as initialised
    key = "proposal_generator.fcos_head.cls_logits.weight"
    assert torch.equal(model.state_dict()[key], state[key])


def test_wrong_shape_is_reported_with_both_shapes(tmp_path, tiny_model):
    state = dict(tiny_model.state_dict())
    state["proposal_generator.fcos_head.cls_logits.weight"] = torch.zeros(80, 64, 3, 3)
    path = str(tmp_path / "coco_classes.pth")
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match=r"tensors 1 of a different shape \(e.g. proposal_generator.fcos_head."
                                              r"cls_logits.weight: \(80, 64, 3, 3\) in the checkpoint, \(3, 64, 3, "
                                              r"3\) in the model\)") as error:
        DetectionCheckpointer(fresh_model()).load(path)
    assert "\n" not in str(error.value)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_checkpoint",))


def test_checkpoint_needing_code_execution_is_refused(tmp_path, tiny_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = str(tmp_path / "evil.pth")
    torch.save({"model": tiny_model.state_dict(), "extra": _Payload()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        DetectionCheckpointer(fresh_model()).load(path)
    assert not os.path.exists(tmp_path / "pwned_by_checkpoint")


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        DetectionCheckpointer(fresh_model()).load(str(tmp_path / "none.pth"))
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        DetectionCheckpointer(fresh_model()).load(str(tmp_path / "garbage.pth"))


def test_detectron2_url_resolves_locally_or_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WeightFileError) as err:
        DetectionCheckpointer(fresh_model()).load("detectron2://ImageNetPretrained/MSRA/R-50.pkl")
    message = str(err.value)
    assert "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl" in message
    assert os.path.join("models", "R-50.pkl") in message and "\n" not in message


def _to_c2_blobs(bottom_up_state):
    """detectron2 ResNet names -> Caffe2 MSRA blob names (the inverse of the loader's table)."""
    branch = {"shortcut": "branch1", "conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c"}
    suffix = {"weight": "w", "norm.weight": "bn_s", "norm.bias": "bn_b"}
    blobs = {"fc1000_w": np.zeros((10, 5), np.float32), "res2_0_branch2a_w_momentum": np.zeros(1, np.float32)}
    for name, value in bottom_up_state.items():
        if "running" in name:
            continue  # the MSRA files have no BN statistics
        if name.startswith("stem.conv1."):
            leaf = name[len("stem.conv1."):]
            blobs["conv1_w" if leaf == "weight" else f"res_conv1_{suffix[leaf]}"] = value.numpy()
        else:
            stage, block, conv, leaf = name.split(".", 3)
            blobs[f"{stage}_{block}_{branch[conv]}_{suffix[leaf]}"] = value.numpy()
    return blobs


def test_msra_pkl_initialises_the_backbone_only(tmp_path, tiny_model):
    source = tiny_model.backbone.bottom_up.state_dict()
    with open(tmp_path / "R-18.pkl", "wb") as f:
        pickle.dump({"blobs": _to_c2_blobs(source), "__author__": "Caffe2"}, f, protocol=2)
    model = fresh_model(seed=5)
    head_before = model.proposal_head.embed_conv.weight.clone()
    DetectionCheckpointer(model).load(str(tmp_path / "R-18.pkl"))
    loaded = model.backbone.bottom_up.state_dict()
    for name, value in source.items():
        if name.endswith("running_mean"):
            assert (loaded[name] == 0).all()
        elif name.endswith("running_var"):
            assert (loaded[name] == 1).all()
        else:
            assert torch.equal(loaded[name], value), name
    assert torch.equal(model.proposal_head.embed_conv.weight, head_before)


def test_malicious_pkl_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "R-50.pkl", "wb") as f:
        pickle.dump({"blobs": {"conv1_w": _Payload()}}, f, protocol=2)
    with pytest.raises(WeightFileError, match="not allowed"):
        DetectionCheckpointer(fresh_model()).load(str(tmp_path / "R-50.pkl"))
    assert not os.path.exists(tmp_path / "pwned_by_checkpoint")


def test_torchvision_resnet_gives_the_same_features(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).eval()
    for module in reference.modules():  # non-trivial BN statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    model = fresh_model(2, "MODEL.RESNETS.STRIDE_IN_1X1", False)
    DetectionCheckpointer(model).load(str(tmp_path / "resnet18.pth"))
    rgb = torch.randn(1, 3, 64, 64)
    expected = reference.layer4(reference.layer3(reference.layer2(reference.layer1(
        reference.maxpool(reference.relu(reference.bn1(reference.conv1(rgb))))))))
    ours = model.backbone.bottom_up(rgb.flip(1))["res5"]  # our stem reads BGR
    assert torch.allclose(ours, expected, atol=1e-4)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "resnet50.pth")
    with pytest.raises(WeightFileError, match="STRIDE_IN_1X1 False"):
        DetectionCheckpointer(fresh_model(0, "MODEL.RESNETS.DEPTH", 50)).load(str(tmp_path / "resnet50.pth"))


def test_save_is_atomic_and_round_trips(tmp_path, tiny_model):
    optimizer = torch.optim.SGD(tiny_model.parameters(), lr=0.1, momentum=0.9)
    checkpointer = DetectionCheckpointer(tiny_model, str(tmp_path), optimizer=optimizer)
    path = checkpointer.save("model_0000009", iteration=9)
    assert checkpointer.get_checkpoint_file() == path and sorted(os.listdir(tmp_path)) == [
        "last_checkpoint", "model_0000009.pth"]
    model = fresh_model()
    extra = DetectionCheckpointer(model, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 9
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tiny_model.state_dict().items())
