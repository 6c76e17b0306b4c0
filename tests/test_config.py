import os

import pytest
import yaml

from adet.config import ConfigError, get_cfg

from .conftest import FIXTURES, ROOT

CONFIGS = os.path.join(ROOT, "configs", "EmbedMask")


@pytest.mark.parametrize("name,depth,max_iter,steps", [
    ("MS_R_50_1x", 50, 90000, (60000, 80000)),
    ("MS_R_50_3x", 50, 270000, (210000, 250000)),
    ("MS_R_101_3x", 101, 270000, (210000, 250000)),
])
def test_official_configs_resolve_to_the_official_values(name, depth, max_iter, steps):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(CONFIGS, f"{name}.yaml"))
    assert cfg.MODEL.META_ARCHITECTURE == "EmbedMask"
    assert cfg.MODEL.RESNETS.DEPTH == depth
    assert cfg.SOLVER.MAX_ITER == max_iter and tuple(cfg.SOLVER.STEPS) == steps
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (640, 672, 704, 736, 768, 800)
    assert cfg.MODEL.FCOS.THRESH_WITH_CTR is True
    assert cfg.MODEL.EMBEDMASK.MAX_PROPOSALS == 500
    assert cfg.MODEL.EMBEDMASK.PROPOSAL_HEAD == "Conv1_Conv3"
    assert cfg.MODEL.EMBEDMASK.MASK_BRANCH.SEMANTIC_LOSS_ON is True
    assert cfg.OUTPUT_DIR == f"output/embedmask_{name}"


def _flat(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, prefix + key + "."))
        else:
            out[prefix + key] = value
    return out


def test_resolved_official_config_matches_ours_and_loads_silently(caplog):
    """The official run's fully resolved config: each of our keys is there with our value, and each of its other
    keys is one this model knowingly drops, holding a value under which EmbedMask behaves as it does anyway."""
    from adet.config import compat

    with open(os.path.join(FIXTURES, "config_R_50.yaml")) as f:
        official = _flat(yaml.safe_load(f))
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(CONFIGS, "MS_R_50_1x.yaml"))
    ours = _flat(yaml.safe_load(cfg.dump()))
    own = {"DETERMINISTIC", "DIST_TIMEOUT", "MODEL.INFERENCE_DTYPE", "SOLVER.AMP.PRECISION"} | {
        f"TEST.SLICE.{k}" for k in ("ENABLED", "SIZE", "OVERLAP", "FULL_IMAGE", "MATCH_THRESHOLD", "BATCH_SIZE")}
    assert set(ours) - set(official) == own  # ours (README)
    for key in own:
        ours.pop(key)
    assert sorted(k for k in ours if ours[k] != official[k]) == ["MODEL.DEVICE", "MODEL.WEIGHTS"]  # set by the run
    dropped = set(official) - set(ours)
    assert all(compat.is_known(k) for k in dropped) and len(dropped) > 250
    with caplog.at_level("WARNING"):
        loaded = get_cfg()
        loaded.merge_from_file(os.path.join(FIXTURES, "config_R_50.yaml"))
    assert caplog.records == []
    assert loaded.MODEL.DEVICE == "cpu" and loaded.SOLVER.WEIGHT_DECAY_BIAS is None
    assert loaded.dump() == cfg.dump().replace("DEVICE: cuda", "DEVICE: cpu").replace(
        "WEIGHTS: detectron2://ImageNetPretrained/MSRA/R-50.pkl", "WEIGHTS: ''")
    assert len(loaded.dump().splitlines()) < 200  # what config.yaml holds: only keys this model reads


def test_keys_without_effect_warn_and_unsupported_ones_fail(caplog):
    cfg = get_cfg()
    with caplog.at_level("WARNING"):
        cfg.merge_from_list(["VIS_PERIOD", "20", "TEST.PRECISE_BN.ENABLED", "True", "MODEL.BLENDMASK.ATTN_SIZE", "3",
                             "MODEL.MASK_ON", "True", "TEST.DETECTIONS_PER_IMAGE", "100"])
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 3  # MASK_ON True and DETECTIONS_PER_IMAGE 100 are what EmbedMask does anyway
    assert warned[0].startswith("command line: VIS_PERIOD 20 is not used by EmbedMask")
    assert "TEST.PRECISE_BN.ENABLED True" in warned[1] and "MODEL.BLENDMASK.ATTN_SIZE 3" in warned[2]
    for key, value, message in [("INPUT.CROP.ENABLED", "True", "random crops are not supported"),
                                ("MODEL.RESNETS.DEFORM_ON_PER_STAGE", "[False, True, True, True]", "deformable"),
                                ("DATALOADER.REPEAT_THRESHOLD", "0.1", "repeat-factor sampler")]:
        with pytest.raises(ConfigError, match=message):
            get_cfg().merge_from_list([key, value])
    assert "VIS_PERIOD" not in cfg.dump() and "BLENDMASK" not in cfg.dump()


def test_packaged_configs_resolve_by_name_from_anywhere(tmp_path, monkeypatch):
    from adet.model_zoo import get_config, get_config_file, list_configs

    monkeypatch.chdir(tmp_path)
    assert {"EmbedMask/MS_R_50_1x.yaml", "EmbedMask/MS_R_101_3x.yaml", "EmbedMask/Synthetic.yaml"} <= set(
        list_configs())
    assert get_config("EmbedMask/MS_R_101_3x.yaml").MODEL.RESNETS.DEPTH == 101
    assert get_config_file("configs/EmbedMask/MS_R_50_1x.yaml") == get_config_file("EmbedMask/MS_R_50_1x.yaml")
    with pytest.raises(ConfigError, match="did you mean 'EmbedMask/MS_R_50_1x.yaml'"):
        get_config_file("EmbedMask/MS_R50_1x.yaml")


def test_unknown_key_in_file_names_file_key_and_suggestion(tmp_path):
    path = tmp_path / "bad.yaml"
    base = os.path.join(CONFIGS, "Base-EmbedMask.yaml")
    path.write_text(f"_BASE_: {base}\nMODEL:\n  EMBEDMASK:\n    MAX_PROPOSAL: 3\n")
    with pytest.raises(ConfigError) as err:
        get_cfg().merge_from_file(str(path))
    message = str(err.value)
    assert str(path) in message and "'MODEL.EMBEDMASK.MAX_PROPOSAL'" in message
    assert "did you mean 'MODEL.EMBEDMASK.MAX_PROPOSALS'" in message
    assert "\n" not in message


def test_overrides_are_typed_and_checked():
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.BASE_LR", "1", "SOLVER.STEPS", "(10, 20)", "MODEL.WEIGHTS", "models/x.pth"])
    assert cfg.SOLVER.BASE_LR == 1.0 and isinstance(cfg.SOLVER.BASE_LR, float)
    assert tuple(cfg.SOLVER.STEPS) == (10, 20) and cfg.MODEL.WEIGHTS == "models/x.pth"
    with pytest.raises(ConfigError, match="did you mean 'SOLVER.BASE_LR'"):
        cfg.merge_from_list(["SOLVER.BASE_LRR", "0.1"])
    with pytest.raises(ConfigError, match="SOLVER.MAX_ITER expects an int"):
        cfg.merge_from_list(["SOLVER.MAX_ITER", "many"])
    with pytest.raises(ConfigError, match="odd"):
        cfg.merge_from_list(["SOLVER.MAX_ITER"])
    with pytest.raises(ConfigError, match="unknown config key 'MODEL'"):
        cfg.merge_from_list(["MODEL", "1"])


def test_missing_config_and_missing_base(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        get_cfg().merge_from_file(str(tmp_path / "nope.yaml"))
    path = tmp_path / "child.yaml"
    path.write_text('_BASE_: "missing-base.yaml"\n')
    with pytest.raises(ConfigError, match="missing-base.yaml does not exist"):
        get_cfg().merge_from_file(str(path))
    bad = tmp_path / "broken.yaml"
    bad.write_text("MODEL: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        get_cfg().merge_from_file(str(bad))


def test_defaults_are_the_official_base_config():
    """get_cfg() is Base-EmbedMask.yaml over detectron2/AdelaiDet defaults: merging that file changes nothing."""
    cfg = get_cfg()
    base = get_cfg()
    base.merge_from_file(os.path.join(CONFIGS, "Base-EmbedMask.yaml"))
    assert cfg.dump() == base.dump()
    assert cfg.MODEL.PIXEL_MEAN == [103.530, 116.280, 123.675] and cfg.MODEL.PIXEL_STD == [1.0, 1.0, 1.0]
    assert cfg.MODEL.META_ARCHITECTURE == "EmbedMask" and cfg.MODEL.EMBEDMASK.PROPOSAL_HEAD == "Conv1_Conv3"
    assert cfg.MODEL.EMBEDMASK.MAX_PROPOSALS == 500 and cfg.MODEL.FCOS.THRESH_WITH_CTR is True
    assert cfg.INPUT.MAX_SIZE_TEST == 1333 and cfg.SOLVER.BASE_LR == 0.01
    # get_cfg returns independent copies
    cfg.SOLVER.BASE_LR = 5.0
    assert get_cfg().SOLVER.BASE_LR == 0.01


def test_default_config_builds_the_released_r50_architecture():
    """Every tensor of the official R-50 state dict, same name and shape, and nothing else."""
    import json

    import torch

    from adet.checkpoint.official_names import convert_official_state_dict
    from adet.modeling import build_model

    with open(os.path.join(FIXTURES, "reference", "embedmask_R_50_state_dict.json")) as f:
        entries = json.load(f)
    official = convert_official_state_dict({e["name"]: torch.empty(e["shape"], device="meta") for e in entries})
    model = build_model(get_cfg(), device="meta")
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {k: tuple(v.shape) for k, v in
                                                                          official.items()}


@pytest.mark.parametrize("key,value,message", [
    ("MODEL.FCOS.LOC_LOSS_TYPE", "iou", "GIoU"),
    ("MODEL.FCOS.BOX_QUALITY", "iou", "centerness"),
    ("MODEL.PROPOSAL_GENERATOR.NAME", "RPN", "FCOS"),
    ("MODEL.FPN.NORM", "GN", "without normalisation"),
    ("DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler", "TrainingSampler"),
])
def test_keys_with_one_legal_value_accept_it_silently_and_refuse_others(key, value, message, caplog):
    from adet.config import compat

    neutral = compat.KEYS[key][0][0]
    with caplog.at_level("WARNING"):
        cfg = get_cfg()
        cfg.merge_from_list([key, repr(neutral) if not isinstance(neutral, str) else neutral])
    assert caplog.records == [] and key not in _flat(yaml.safe_load(cfg.dump()))
    with pytest.raises(ConfigError, match=f"{key} '{value}' is not used by EmbedMask: .*{message}"):
        get_cfg().merge_from_list([key, value])
