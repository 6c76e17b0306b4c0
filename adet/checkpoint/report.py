"""What loading a state dict into a model would do: loaded, missing, unexpected and wrong-shape entries."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def _names(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... and {len(keys) - limit} more" if len(keys) > limit else "")


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong_shape: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape)

    def loadable(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: state_dict[k] for k in self.loaded}

    def brief(self) -> str:
        """One line: the counts and the first problem."""
        parts = [f"{len(v)} {k}" for k, v in (("missing from the checkpoint", self.missing),
                                              ("not in the model", self.unexpected),
                                              ("of a different shape", self.wrong_shape)) if v]
        if self.wrong_shape:
            name, got, want = self.wrong_shape[0]
            first = f"e.g. {name}: {tuple(got)} in the checkpoint, {tuple(want)} in the model"
        else:
            first = f"e.g. {(self.missing or self.unexpected)[0]}"
        return f"tensors {', '.join(parts)} ({first})"

    def summary(self) -> str:
        lines = [f"  loaded: {len(self.loaded)} tensors"]
        if self.missing:
            lines.append(f"  missing from the checkpoint ({len(self.missing)}, left as initialised): "
                         f"{_names(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected in the checkpoint ({len(self.unexpected)}, ignored): {_names(self.unexpected)}")
        for name, got, want in self.wrong_shape[:12]:
            lines.append(f"  wrong shape: {name}: checkpoint {tuple(got)} vs model {tuple(want)}")
        if len(self.wrong_shape) > 12:
            lines.append(f"  ... and {len(self.wrong_shape) - 12} more of wrong shape")
        return "\n".join(lines)


def compare_state_dicts(checkpoint: dict[str, torch.Tensor], model: dict[str, torch.Tensor]) -> LoadReport:
    report = LoadReport()
    for name, value in checkpoint.items():
        if name not in model:
            report.unexpected.append(name)
        elif tuple(value.shape) != tuple(model[name].shape):
            report.wrong_shape.append((name, tuple(value.shape), tuple(model[name].shape)))
        else:
            report.loaded.append(name)
    report.missing = [name for name in model if name not in checkpoint]
    return report
