import cv2
import numpy as np
import torch

from adet.cli.errors import run_cli
from adet.modeling import build_model

from .conftest import load_tool, make_tiny_cfg, shapes_image


def test_demo_on_a_folder_with_one_corrupt_image(tmp_path, capsys):
    cfg = make_tiny_cfg()
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict(), "class_names": ["cat", "dog", "bird"]}, tmp_path / "w.pth")
    (tmp_path / "tiny.yaml").write_text(cfg.dump())
    inputs = tmp_path / "images"
    inputs.mkdir()
    for i in range(2):
        cv2.imwrite(str(inputs / f"good{i}.jpg"), shapes_image(64 + 16 * i, 96, seed=i)[0])
    (inputs / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    demo = load_tool("demo/demo.py")
    code = run_cli(demo.main, ["--config-file", str(tmp_path / "tiny.yaml"), "--input", str(inputs), "--output",
                               str(tmp_path / "out"), "--confidence-threshold", "0.0",
                               "--opts", "MODEL.WEIGHTS", str(tmp_path / "w.pth")])
    assert code == 0
    out = capsys.readouterr()
    assert "corrupt.jpg" in out.out + out.err and "2 image(s) processed, 1 skipped" in out.out
    for i in range(2):
        drawn = cv2.imread(str(tmp_path / "out" / f"good{i}.jpg"))
        original = cv2.imread(str(inputs / f"good{i}.jpg"))
        assert drawn.shape == original.shape
        assert np.abs(drawn.astype(int) - original.astype(int)).mean() > 1  # masks and boxes were drawn


def test_demo_single_file_output_and_missing_input(tmp_path, capsys):
    cfg = make_tiny_cfg()
    torch.save({"model": build_model(cfg).state_dict()}, tmp_path / "w.pth")
    cfg.MODEL.WEIGHTS = str(tmp_path / "w.pth")
    (tmp_path / "tiny.yaml").write_text(cfg.dump())
    cv2.imwrite(str(tmp_path / "one.png"), shapes_image()[0])
    demo = load_tool("demo/demo.py")
    assert run_cli(demo.main, ["--config-file", str(tmp_path / "tiny.yaml"), "--input", str(tmp_path / "one.png"),
                               "--output", str(tmp_path / "result.png")]) == 0
    assert cv2.imread(str(tmp_path / "result.png")).shape == (96, 128, 3)
    assert run_cli(demo.main, ["--config-file", str(tmp_path / "tiny.yaml"), "--input", str(tmp_path / "*.gif")]) == 2
    assert "no such file, folder or matching images" in capsys.readouterr().err
