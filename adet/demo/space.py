"""``embedmask demo --write-space DIR``: a Hugging Face Space running the page, ready to push.

This package is not on PyPI (and ``adet`` there is another project), so the Space installs a wheel of it built into
DIR. The weights are a file in the Space (pushed with Git LFS) or an ``hf://`` address the Space downloads on start.
Spaces run ``app.py`` with Gradio preinstalled at the README's ``sdk_version`` and choose the host and port
themselves (GRADIO_SERVER_NAME, GRADIO_SERVER_PORT), so the app names neither.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import gradio

from adet.errors import PreflightError

APP = '''"""EmbedMask instance segmentation (written by `embedmask demo --write-space`)."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from adet.demo.page import LocalDetector, build_page  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WEIGHTS = {weights!r}
EXAMPLES = {examples!r}


def here(path: str) -> str:
    return path if "://" in path else os.path.join(HERE, path)


page = build_page(LocalDetector([here(w) for w in WEIGHTS], device="cpu"), examples=[here(e) for e in EXAMPLES])

if __name__ == "__main__":
    page.queue().launch()
'''

README = """---
title: EmbedMask
emoji: 🎭
colorFrom: indigo
colorTo: pink
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
pinned: false
---

# EmbedMask

EmbedMask instance segmentation ("EmbedMask: Embedding Coupling for One-stage Instance Segmentation", Ying et al.,
arXiv 1912.01954) on {weights}. Drop an image to see every instance's mask, box, class and score; move the
threshold, pick classes, download the overlay and the COCO JSON.

Made with `embedmask demo --write-space`. To publish:

```bash
cd {folder} && git init && git lfs install && git lfs track "*.pth" "*.whl"
git add . && git commit -m "EmbedMask demo"
git remote add origin https://huggingface.co/spaces/USER/NAME && git push -u origin main
```
"""


def project_root() -> str | None:
    """The source checkout this package runs from (a pyproject.toml next to ``adet/``), or None for an install."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return root if os.path.isfile(os.path.join(root, "pyproject.toml")) else None


def build_wheel(folder: str) -> str:
    """This package's wheel, built into ``folder`` from its source checkout."""
    root = project_root()
    if root is None:
        raise PreflightError("--write-space builds this package's wheel from its source checkout; run it from a "
                             "clone of the repository (pip install -e .)")
    for old in glob.glob(os.path.join(folder, "embedmask-*.whl")):
        os.remove(old)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", folder, root], capture_output=True, text=True)
    wheels = glob.glob(os.path.join(folder, "embedmask-*.whl"))
    if built.returncode != 0 or not wheels:
        raise PreflightError(f"building the wheel failed: {(built.stderr or built.stdout).strip().splitlines()[-1:]}")
    return wheels[0]


def write_space(folder: str, weights: list[str], config: str | None = None, examples: list[str] = ()) -> list[str]:
    """Writes the Space into ``folder`` (made if missing); returns lines saying what was written."""
    if config:
        raise PreflightError("--write-space takes checkpoints that carry their config (ours do); --config-file "
                             "does not apply")
    os.makedirs(os.path.join(folder, "weights"), exist_ok=True)
    written = []
    for path in weights:  # a file goes into the Space (Git LFS); hf:// and URLs are downloaded there on start
        if "://" in path:
            written.append(path)
        else:
            name = os.path.join("weights", os.path.basename(path))
            shutil.copyfile(path, os.path.join(folder, name))
            written.append(name)
    example_names = []
    if examples:
        os.makedirs(os.path.join(folder, "examples"), exist_ok=True)
        for path in examples:
            example_names.append(os.path.join("examples", os.path.basename(path)))
            shutil.copyfile(path, os.path.join(folder, example_names[-1]))
    wheel = os.path.basename(build_wheel(folder))
    extras = "[hub]" if any(w.startswith("hf://") for w in written) else ""
    with open(os.path.join(folder, "app.py"), "w") as f:
        f.write(APP.format(weights=written, examples=example_names))
    with open(os.path.join(folder, "requirements.txt"), "w") as f:
        # The app runs on the CPU (a free Space): PyTorch's CPU wheels, not the default CUDA ones (gigabytes).
        f.write(f"--extra-index-url https://download.pytorch.org/whl/cpu\n./{wheel}{extras}\n")
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write(README.format(gradio_version=gradio.__version__, weights=", ".join(written), folder=folder))
    with open(os.path.join(folder, ".gitattributes"), "w") as f:
        f.write("*.pth filter=lfs diff=lfs merge=lfs -text\n*.whl filter=lfs diff=lfs merge=lfs -text\n")
    return [f"wrote a Hugging Face Space into {folder}: app.py, requirements.txt ({wheel}{extras}), README.md "
            f"(sdk: gradio {gradio.__version__}), {', '.join(written)}",
            f"publish it: cd {folder} && git init && git lfs install && git add . && git commit -m demo && git push"]
