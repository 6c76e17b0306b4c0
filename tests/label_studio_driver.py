"""Drives a running Label Studio as its users do, with its own client library (label-studio-sdk), from Label
Studio's virtual environment (this file imports nothing of ours): creates a project, uploads images, connects an ML
backend, asks it for predictions from the Data Manager ("Retrieve Predictions") and writes what Label Studio stored,
brush regions decoded by the SDK's own decoder.

    python label_studio_driver.py LS_URL TOKEN BACKEND_URL LABEL_CONFIG_FILE OUT.npz IMAGE...

OUT.npz holds ``predictions`` (JSON: one entry per stored prediction, with the uploaded image's original name) and
``mask_<i>_<j>`` (region j of prediction i, a brush region as an HxW bool array).
"""

import json
import os
import sys

import numpy as np
import requests
from label_studio_sdk.client import LabelStudio
from label_studio_sdk.converter.brush import decode_rle


def main(ls_url: str, token: str, backend_url: str, config_file: str, out: str, *images: str) -> None:
    ls = LabelStudio(base_url=ls_url, api_key=token)
    project = ls.projects.create(title=os.path.basename(config_file), label_config=open(config_file).read())
    # Uploading image files is a multipart POST (the SDK imports JSON tasks only; one field name per file, as Label
    # Studio keeps one file per field): Label Studio stores each file and makes a task
    # {"<the config's data key>": "/data/upload/<project>/<prefix>-<name>"}.
    files = [(f"file{k}", (os.path.basename(p), open(p, "rb"))) for k, p in enumerate(images)]
    uploaded = requests.post(f"{ls_url}/api/projects/{project.id}/import", headers={"Authorization": f"Token {token}"},
                             files=files, timeout=60)
    uploaded.raise_for_status()
    assert uploaded.json()["task_count"] == len(images), uploaded.text
    ls.ml.create(url=backend_url, project=project.id, title="EmbedMask")  # Settings > Model > Connect Model
    ls.actions.create(id="retrieve_tasks_predictions", project=project.id, selected_items={"all": True,
                                                                                            "excluded": []})
    tasks = {task.id: task.data for task in ls.tasks.list(project=project.id)}
    stored, arrays = [], {}
    for i, prediction in enumerate(ls.predictions.list(project=project.id)):
        source = next(iter(tasks[prediction.task].values()))  # "/data/upload/<project>/<prefix>-<name>"
        name = next(os.path.basename(p) for p in images if source.endswith("-" + os.path.basename(p)))
        for j, region in enumerate(prediction.result):
            if region["type"] == "brushlabels":
                height, width = region["original_height"], region["original_width"]
                rgba = np.asarray(decode_rle(region["value"].pop("rle"))).reshape(height, width, 4)
                arrays[f"mask_{i}_{j}"] = rgba[..., 3] > 0
        stored.append({"image": name, "source": source, "score": prediction.score,
                       "model_version": prediction.model_version, "result": prediction.result})
    np.savez_compressed(out, predictions=json.dumps(stored), **arrays)


if __name__ == "__main__":
    main(*sys.argv[1:])
